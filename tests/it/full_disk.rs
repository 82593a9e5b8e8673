//! A full disk is a state, not an internal error: on a real, small tmpfs,
//! creates are refused with UNAVAILABLE and STORAGE_FULL (and a RetryInfo),
//! reads and cancels keep working, health is NOT_SERVING until there is room
//! again, and a server started on a full disk serves reads.
//!
//! Mounting a tmpfs needs root. Without it the test says loudly that it was
//! skipped; `LONGRUN_TEST_TMPFS_REQUIRED=1` (set by `.ci/run`) makes that a
//! failure instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use longrun::pb::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest,
};
use longrun::pb::longrun::v1::State;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

const DISK_MIB: u64 = 64;
const RESERVE_MIB: u64 = 16;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("LONGRUN_TEST_TMPFS_REQUIRED").as_deref() != Ok("1"),
                    "a tmpfs could not be mounted, and LONGRUN_TEST_TMPFS_REQUIRED=1: {why}"
                );
                eprintln!(
                    "\n*** SKIPPED full_disk: a tmpfs could not be mounted (root is needed): {why}\n"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk until `leave_mib` MiB are free, with one file.
    fn fill(&self, leave_mib: u64) -> PathBuf {
        let stats = rustix::fs::statvfs(self.path()).unwrap();
        let free = stats.f_bavail * stats.f_frsize;
        let size = free.saturating_sub(leave_mib * 1024 * 1024);
        let filler = self.path().join("filler");
        let file = std::fs::File::create(&filler).unwrap();
        // A tmpfs holds what is written, so write it rather than make a
        // sparse file.
        let chunk = vec![0u8; 1024 * 1024];
        let mut left = size;
        let mut writer = std::io::BufWriter::new(file);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut writer, &chunk[..n]).unwrap();
            left -= n as u64;
        }
        std::io::Write::flush(&mut writer).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn small_disk_config(dir: &Path) -> longrun::ServerConfig {
    let mut config = config(&dir.join("data"));
    config.sled.min_free_bytes = RESERVE_MIB * 1024 * 1024;
    // A small cache keeps sled's own files small on a 64 MiB disk.
    config.sled.cache_bytes = 8 * 1024 * 1024;
    config
}

/// Waits until the server's overall health is `wanted`.
async fn wait_health(server: &TestServer, wanted: ServingStatus) {
    let mut health = HealthClient::new(server.channel().await);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, async {
        while let Some(item) = stream.next().await {
            if item.unwrap().status == wanted as i32 {
                return;
            }
        }
        panic!("the health stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("health never became {wanted:?}"));
}

fn assert_storage_full(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "STORAGE_FULL");
    assert!(details.retry_info().unwrap().retry_delay.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_creates_keeps_reads_and_recovers() {
    let Some(disk) = Tmpfs::mount(DISK_MIB) else {
        return;
    };
    let server = TestServer::start_config(small_disk_config(disk.path())).await;
    let running = start_sleep(&server, sleep(Duration::from_secs(300), 1)).await;
    wait_state(&server, &running.name, State::Running).await;
    let finished = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    let finished = wait_done(&server, &finished.name).await;

    // Below the reserve, above a quarter of it.
    let filler = disk.fill(RESERVE_MIB / 2);
    wait_health(&server, ServingStatus::NotServing).await;
    let refused = server
        .diagnostics()
        .await
        .sleep(sleep(Duration::ZERO, 1))
        .await
        .unwrap_err();
    assert_storage_full(&refused);

    // Reads work.
    let mut ops = server.operations().await;
    let got = ops
        .get_operation(GetOperationRequest {
            name: finished.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, finished);
    let listed = ops
        .list_operations(ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.operations.len(), 2);
    // Work already accepted can still end: a cancel and the attempt's
    // result are written.
    ops.cancel_operation(CancelOperationRequest {
        name: running.name.clone(),
    })
    .await
    .unwrap();
    let cancelled = wait_done(&server, &running.name).await;
    assert_eq!(state(&cancelled), State::Cancelled);

    // Room again: SERVING, and creates go through.
    std::fs::remove_file(&filler).unwrap();
    wait_health(&server, ServingStatus::Serving).await;
    let again = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    wait_done(&server, &again.name).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_on_a_full_disk_serves_reads() {
    let Some(disk) = Tmpfs::mount(DISK_MIB) else {
        return;
    };
    let config = small_disk_config(disk.path());
    let server = TestServer::start_config(config.clone()).await;
    let done = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    let done = wait_done(&server, &done.name).await;
    let queued = start_sleep(&server, sleep(Duration::from_secs(300), 1)).await;
    server.stop().await;

    let filler = disk.fill(RESERVE_MIB / 2);
    let server = TestServer::start_unready(config).await;
    wait_health(&server, ServingStatus::NotServing).await;
    let mut ops = server.operations().await;
    let got = ops
        .get_operation(GetOperationRequest {
            name: done.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, done);
    let refused = server
        .diagnostics()
        .await
        .sleep(sleep(Duration::ZERO, 1))
        .await
        .unwrap_err();
    assert_storage_full(&refused);

    // Room again: it serves, and the work it held runs.
    std::fs::remove_file(&filler).unwrap();
    wait_health(&server, ServingStatus::Serving).await;
    wait_state(&server, &queued.name, State::Running).await;
    server.stop().await;
}
