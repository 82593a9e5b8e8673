//! The dashboard in a real browser: tests/browser/dashboard.mjs drives
//! Debian's Chromium with playwright-core against two real servers (one
//! open, one with an auth file), and takes screenshots at 1280×800 and at
//! a phone's width into target/screenshots/. It needs node with
//! tests/browser's packages and Chromium; `.ci/run` installs them and sets
//! LONGRUN_TEST_BROWSER_REQUIRED=1, without which a missing browser skips
//! the test loudly.

use std::path::Path;

use crate::common::{Person, TestServer, auth_toml};

/// Whether the browser test can run here.
fn browser_ready(root: &Path) -> bool {
    let chromium = std::env::var("LONGRUN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists()
        && root
            .join("tests/browser/node_modules/playwright-core")
            .exists();
    if !ready {
        assert!(
            std::env::var("LONGRUN_TEST_BROWSER_REQUIRED").as_deref() != Ok("1"),
            "no Chromium at {chromium} or no tests/browser/node_modules, and LONGRUN_TEST_BROWSER_REQUIRED=1"
        );
        eprintln!(
            "SKIPPED: the dashboard's browser test needs Chromium and `npm ci --prefix tests/browser`"
        );
    }
    ready
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser_ready(root) {
        return;
    }
    let open = TestServer::start_with(|c| {
        c.trace_url_template = Some("https://jaeger.example/trace/{trace_id}".into());
    })
    .await;
    let reader = Person::new("rita", "acme", "reader");
    let writer = Person::new("alice", "acme", "writer");
    let secured = TestServer::start_with_auth(&auth_toml(&[&reader, &writer], ""), |_| {}).await;

    let shots = root.join("target/screenshots");
    let output = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/dashboard.mjs"))
        .arg(format!("http://{}", open.addr))
        .arg(format!("http://{}", secured.addr))
        .arg(reader.token().unwrap())
        .arg(writer.token().unwrap())
        .arg(&shots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(180), output)
        .await
        .expect("the browser test finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all steps passed"), "{stdout}\n{stderr}");
    for shot in [
        "operations-1280x800.png",
        "detail-1280x800.png",
        "detail-390x844.png",
        "queues-1280x800.png",
        "operations-390x844.png",
        "queues-390x844.png",
        "login-1280x800.png",
    ] {
        assert!(shots.join(shot).exists(), "no screenshot {shot}");
    }
    open.stop().await;
    secured.stop().await;
}
