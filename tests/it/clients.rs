//! The client libraries' own tests, against a real server started here:
//! the Python client's pytest suite (clients/python/tests), with the
//! client installed in the test venv by `.ci/run`.

use crate::common::*;

#[tokio::test]
async fn the_python_client_passes_its_tests_against_the_server() {
    let Some(python) = crate::workers::python() else {
        return;
    };
    let server = TestServer::start().await;
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python/tests");
    let output = tokio::process::Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", tests])
        .env("LONGRUN_SERVER", server.addr.to_string())
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "pytest failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}

/// A free port on loopback, for a server that must come back where it was.
async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn serve_at(dir: &std::path::Path, port: u16) -> tokio::process::Child {
    let listen = format!("127.0.0.1:{port}");
    serve_binary(dir, &listen, &["--metrics-listen", "off"])
        .await
        .0
}

#[tokio::test]
async fn a_python_watch_survives_a_server_restart_and_ends_with_the_final_state() {
    let Some(python) = crate::workers::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let mut server = serve_at(dir.path(), port).await;
    // The script creates a sleep, says its name, then follows it to its end
    // and prints the last state it saw.
    let script = r#"
import sys
from longrun_client import Client
client = Client(sys.argv[1])
op = client.sleep(3.0, steps=30)
print(op.name, flush=True)
for state in op.watch():
    pass
print("final", state.state, state.progress_percent, flush=True)
"#;
    let mut watcher = tokio::process::Command::new(python)
        .args(["-c", script, &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    let name = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the script made its operation")
        .unwrap()
        .unwrap();
    assert!(name.starts_with("operations/"), "{name}");
    // Down while the watch is open; the work is taken again after the
    // restart, and the watch, opened again, ends with it.
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    let mut server = serve_at(dir.path(), port).await;
    let last = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the watch ended")
        .unwrap()
        .unwrap();
    assert_eq!(last, "final SUCCEEDED 100");
    assert!(watcher.wait().await.unwrap().success());
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}

/// The Python example against `server`, with short leases and slow steps.
async fn python_worker(python: &str, server: &TestServer) -> tokio::process::Child {
    let args = ["--lease-seconds", "2", "--step-seconds", "1"];
    python_example(python, &server.addr.to_string(), &args, &[]).await
}

#[tokio::test]
async fn a_decorated_python_worker_killed_midway_is_replaced_and_the_work_finishes_once() {
    let Some(python) = crate::workers::python() else {
        return;
    };
    let server = TestServer::start().await;
    let mut first = python_worker(&python, &server).await;
    let op = crate::workers::enqueue(&server, None, "text.reverse", "hello").await;
    // Killed once it is working on it (it reported progress).
    let mut watch = server
        .watcher()
        .await
        .watch_operation(longrun::pb::longrun::v1::WatchOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, async {
        use tokio_stream::StreamExt;
        while let Some(seen) = watch.next().await {
            if meta(&seen.unwrap()).progress_percent > 0 {
                return;
            }
        }
        panic!("the watch ended first");
    })
    .await
    .expect("the first worker started on it");
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    // Its lease lapses; a new worker process takes the next attempt.
    let _second = python_worker(&python, &server).await;
    let done = wait_done(&server, &op.name).await;
    assert_eq!(crate::workers::response_text(&done), "olleh");
    assert_eq!(meta(&done).attempt, 2);
    server.stop().await;
}

#[tokio::test]
async fn the_typescript_client_passes_its_tests_against_the_server() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript");
    if !root.join("dist/index.js").exists() {
        assert!(
            std::env::var("LONGRUN_TEST_CLIENTS_REQUIRED").as_deref() != Ok("1"),
            "clients/typescript is not built, and LONGRUN_TEST_CLIENTS_REQUIRED=1"
        );
        eprintln!("SKIPPED: build clients/typescript (npm ci --prefix clients/typescript)");
        return;
    }
    let server = TestServer::start().await;
    let output = tokio::process::Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&root)
        .env("LONGRUN_URL", server.url())
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "node --test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}
