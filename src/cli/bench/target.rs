//! The server under test: started as a child process, or given by address.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use super::Common;
use crate::cli::client::{Connection, Token};

/// A server to drive.
pub struct Target {
    /// Its address, `http://host:port`.
    pub url: String,
    /// The bearer token calls carry, if the server wants one.
    token: Option<String>,
    child: Option<Child>,
    data_dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Connects to `--server`, or starts `longrun serve` with `extra` flags
    /// on a fresh temporary directory.
    pub async fn start(common: &Common, extra: &[String]) -> anyhow::Result<Self> {
        if let Some(server) = &common.server {
            let url = if server.contains("://") {
                server.clone()
            } else {
                format!("http://{server}")
            };
            return Ok(Self {
                url,
                token: common.token.clone(),
                child: None,
                data_dir: None,
            });
        }
        let dir = tempfile::tempdir().context("temporary data directory")?;
        let token = common.auth.then(longrun::auth::token::generate);
        let mut command = Command::new(std::env::current_exe()?);
        if let Some(token) = &token {
            let file = dir.path().join("auth.toml");
            std::fs::write(
                &file,
                format!(
                    "[[principal]]\nname = \"bench\"\ntenant = \"bench\"\nroles = [\"writer\"]\ntoken_sha256 = \"{}\"\n",
                    longrun::auth::token::digest_hex(token)
                ),
            )
            .context("write the auth file")?;
            command.args(["serve", "--auth-file"]).arg(file);
        } else {
            command.arg("serve");
        }
        command
            .args(["--listen", "127.0.0.1:0", "--sync", &common.sync])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .env("LONGRUN_LOG", "warn,longrun::server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for concurrency in &common.server_concurrency {
            command.args(["--concurrency", concurrency]);
        }
        let mut child = command.spawn().context("start longrun serve")?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let address = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, address)) = line.split_once("listening on ") {
                    return Ok(address.trim().to_owned());
                }
                eprintln!("server: {line}");
            }
            bail!("the server exited before listening")
        })
        .await
        .context("the server did not start within a minute")??;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("server: {line}");
            }
        });
        Ok(Self {
            url: format!("http://{address}"),
            token,
            child: Some(child),
            data_dir: Some(dir),
        })
    }

    /// `count` connections to the server.
    pub async fn channels(&self, count: usize) -> anyhow::Result<Vec<Connection>> {
        let token = Token::new(self.token.as_deref())?;
        let mut out = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            let channel = Endpoint::from_shared(self.url.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connect to {}", self.url))?;
            out.push(InterceptedService::new(channel, token.clone()));
        }
        Ok(out)
    }

    /// The started server's resident memory, in bytes (Linux only).
    pub fn rss(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The started server's peak resident memory so far, in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The started server's data directory.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_ref().map(|d| d.path())
    }

    /// Bytes on disk under the data directory.
    pub fn disk_usage(&self) -> Option<u64> {
        self.data_dir().map(dir_size)
    }
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Formats a byte count for people.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
