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
