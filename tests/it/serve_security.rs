//! The real binary's security behaviour: it will not serve open beyond
//! loopback, tokens made with `longrun auth token` work from the CLI, and
//! SIGHUP reloads the auth file (keeping the old one when the new one is
//! broken).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(60);

fn longrun() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_longrun"));
    command.kill_on_drop(true);
    command
}

/// `longrun auth token`: (the TOML entry, the token).
async fn make_token(name: &str, tenant: &str, role: &str) -> (String, String) {
    let out = longrun()
        .args([
            "auth", "token", "--name", name, "--tenant", tenant, "--role", role,
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let token = stderr
        .lines()
        .find(|l| l.starts_with("lr_"))
        .expect("token on stderr")
        .to_owned();
    let entry = String::from_utf8(out.stdout).unwrap();
    assert!(!entry.contains(&token), "the token must not reach the file");
    (entry, token)
}

/// A running `longrun serve` and the lines of its log.
struct Served {
    child: Child,
    address: String,
    log: mpsc::UnboundedReceiver<String>,
}

impl Served {
    async fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = longrun()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args(extra)
            .env("LONGRUN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, log) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut served = Self {
            child,
            address: String::new(),
            log,
        };
        let line = served.wait_for("listening on ").await;
        served.address = line
            .split_once("listening on ")
            .unwrap()
            .1
            .trim()
            .to_owned();
        served
    }

    /// Waits for a log line containing `text`, and returns it.
    async fn wait_for(&mut self, text: &str) -> String {
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.log.recv().await {
                if line.contains(text) {
                    return line;
                }
            }
            panic!("the server exited before logging {text:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {text:?} in the log in time"))
    }

    fn hangup(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Runs a client command against this server with `token`.
    async fn client(&self, token: &str, args: &[&str]) -> Output {
        longrun()
            .args(args)
            .env("LONGRUN_SERVER", &self.address)
            .env("LONGRUN_TOKEN", token)
            .output()
            .await
            .unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn it_refuses_to_serve_open_beyond_loopback_unless_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let out = longrun()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("--insecure-no-auth"), "{text}");
    assert!(text.contains("--auth-file"), "{text}");

    // Told to, it serves.
    let mut child = longrun()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure-no-auth",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("LONGRUN_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::common::wait_for_line(
        child.stderr.take().unwrap(),
        PATIENCE,
        "the server to say it listens",
        |line| line.contains("listening on ").then_some(()),
    )
    .await;
}

#[tokio::test]
async fn tokens_from_auth_token_work_and_sighup_reloads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (alice_entry, alice) = make_token("alice", "acme", "writer").await;
    let (bob_entry, bob) = make_token("bob", "acme", "reader").await;
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, &alice_entry).unwrap();
    let auth_arg = auth.to_str().unwrap().to_owned();
    let mut served = Served::start(dir.path(), &["--auth-file", &auth_arg]).await;

    let created = served.client(&alice, &["sleep", "0s", "--wait"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    // The create is in the audit log, and the token is not.
    let audit = served.wait_for("longrun::audit").await;
    for field in [
        "principal=alice",
        "tenant=acme",
        "rpc=Sleep",
        "target_name=\"operations/",
        "outcome=Ok",
    ] {
        assert!(audit.contains(field), "{field} missing from {audit}");
    }
    assert!(!audit.contains(&alice));
    let refused = served.client(&bob, &["ops", "list"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("Unauthenticated"),
        "{}",
        stderr(&refused)
    );
    assert!(!stderr(&refused).contains(&bob), "a token was echoed");

    // Bob joins and Alice leaves, without a restart.
    std::fs::write(&auth, &bob_entry).unwrap();
    served.hangup();
    served.wait_for("auth file reloaded").await;
    let listed = served.client(&bob, &["ops", "list"]).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let gone = served.client(&alice, &["ops", "list"]).await;
    assert!(
        stderr(&gone).contains("Unauthenticated"),
        "{}",
        stderr(&gone)
    );

    // A broken file is refused and the one in force kept.
    std::fs::write(&auth, "[[principal]]\nname = ").unwrap();
    served.hangup();
    served.wait_for("keeping the auth file in force").await;
    let still = served.client(&bob, &["ops", "list"]).await;
    assert!(still.status.success(), "{}", stderr(&still));
}

#[tokio::test]
async fn a_workers_kind_declaration_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let out = longrun()
        .args(["auth", "token", "--name", "upper", "--tenant", "acme"])
        .args(["--role", "worker", "--kind", "text.upper"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("lr_"))
        .unwrap()
        .to_owned();
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, out.stdout).unwrap();
    let auth_arg = auth.to_str().unwrap().to_owned();
    let mut served = Served::start(dir.path(), &["--auth-file", &auth_arg]).await;
    let _worker = longrun()
        .args(["worker", "--kind", "text.upper", "--", "cat"])
        .env("LONGRUN_SERVER", &served.address)
        .env("LONGRUN_TOKEN", &token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let audit = served.wait_for("rpc=DeclareKind").await;
    for field in [
        "principal=upper",
        "tenant=acme",
        "target_name=\"text.upper\"",
        "outcome=Ok",
    ] {
        assert!(audit.contains(field), "{field} missing from {audit}");
    }
}
