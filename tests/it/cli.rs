//! The `longrun` binary's client commands against a real server.

use std::process::Output;

use tokio::io::AsyncBufReadExt as _;

use crate::common::*;

/// Runs the binary with `args` against `server`, off the async runtime.
pub(crate) async fn longrun(server: &TestServer, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let url = server.url();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(&args)
            .env("LONGRUN_SERVER", url)
            .output()
            .expect("run longrun")
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn sleep_wait_prints_the_finished_operation_as_json() {
    let server = TestServer::start().await;
    let out = longrun(
        &server,
        &[
            "sleep", "50ms", "--steps", "2", "--wait", "--output", "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(json["done"], true);
    assert_eq!(
        json["metadata"]["@type"],
        "type.googleapis.com/longrun.v1.OperationMetadata"
    );
    assert_eq!(json["metadata"]["state"], "SUCCEEDED");
    assert_eq!(json["metadata"]["progressPercent"], 100);
    assert_eq!(
        json["response"]["@type"],
        "type.googleapis.com/longrun.v1.SleepResponse"
    );
    assert_eq!(json["response"]["steps"], 2);

    // get and list see it too.
    let name = json["name"].as_str().unwrap().to_owned();
    let get = longrun(&server, &["ops", "get", &name]).await;
    assert!(get.status.success());
    assert!(stdout(&get).contains("SUCCEEDED"), "{get:?}");
    let list = longrun(&server, &["ops", "list", "--filter", "done = true"]).await;
    assert!(list.status.success());
    assert!(stdout(&list).contains(&name));
    server.stop().await;
}

#[tokio::test]
async fn watch_exits_non_zero_when_the_operation_fails() {
    let server = TestServer::start().await;
    let out = longrun(&server, &["sleep", "20ms", "--fail-code", "13", "--watch"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("Internal"), "{out:?}");

    let out = longrun(&server, &["sleep", "20ms", "--watch", "--output", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let last = stdout(&out).lines().last().unwrap().to_owned();
    let json: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(json["done"], true);
    server.stop().await;
}

#[tokio::test]
async fn errors_are_explained_and_exit_with_2() {
    let server = TestServer::start().await;
    let out = longrun(&server, &["ops", "get", "operations/nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("is not a name"), "{err}");

    let unknown = "operations/0190b2d4-7d7c-7f7e-8000-000000000000";
    let out = longrun(&server, &["ops", "cancel", unknown]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("NotFound"));

    let out = longrun(&server, &["sleep", "1s", "--fail-code", "40"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("fail_code"), "{out:?}");
    server.stop().await;
}

#[tokio::test]
async fn cancel_wait_and_delete_from_the_command_line() {
    let server = TestServer::start().await;
    let op = start_sleep(&server, sleep(std::time::Duration::from_secs(300), 1)).await;
    let name = op.name.clone();
    let out = longrun(&server, &["ops", "cancel", &name]).await;
    assert!(out.status.success(), "{out:?}");
    let out = longrun(&server, &["ops", "wait", &name, "--output", "json"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled operation is not a success"
    );
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["error"]["code"], 1);
    let out = longrun(&server, &["ops", "delete", &name]).await;
    assert!(out.status.success(), "{out:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_readme_demo_generate_import_report_download() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("orders.csv");
    let out = dir.path().join("march.csv");
    let (csv_arg, out_arg) = (csv.to_str().unwrap(), out.to_str().unwrap());

    let gen_args = [
        "orders",
        "generate",
        "--count",
        "5000",
        "--months",
        "2024-01..2024-04",
        "--seed",
        "42",
        "--out",
        csv_arg,
    ];
    let generated = longrun(&server, &gen_args).await;
    assert!(generated.status.success(), "{generated:?}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 5001);

    let imported = longrun(&server, &["orders", "import", csv_arg, "--watch"]).await;
    assert!(imported.status.success(), "{imported:?}");
    assert!(stdout(&imported).contains("SUCCEEDED"), "{imported:?}");

    let report = longrun(
        &server,
        &[
            "report", "create", "--month", "2024-03", "--format", "csv", "--out", out_arg,
            "--output", "json",
        ],
    )
    .await;
    assert!(report.status.success(), "{report:?}");
    let march = text.lines().filter(|l| l.contains(",2024-03-")).count();
    let written = std::fs::read_to_string(&out).unwrap();
    // Header, one line per order, TOTAL.
    assert_eq!(written.lines().count(), march + 2);

    let json: serde_json::Value = serde_json::from_str(stdout(&report).trim()).unwrap();
    let name = json["response"]["name"].as_str().unwrap().to_owned();
    let again = dir.path().join("again.csv");
    let read = longrun(
        &server,
        &["report", "read", &name, "--out", again.to_str().unwrap()],
    )
    .await;
    assert!(read.status.success(), "{read:?}");
    assert_eq!(std::fs::read(&again).unwrap(), written.into_bytes());

    let pdf = dir.path().join("march.pdf");
    let report = longrun(
        &server,
        &[
            "report",
            "create",
            "--month",
            "2024-03",
            "--format",
            "pdf",
            "--out",
            pdf.to_str().unwrap(),
        ],
    )
    .await;
    assert!(report.status.success(), "{report:?}");
    assert!(std::fs::read(&pdf).unwrap().starts_with(b"%PDF-"));
    server.stop().await;
}

#[tokio::test]
async fn exit_codes_and_names_say_what_happened() {
    let server = TestServer::start().await;
    // A wait that runs out: its own code, and a readable duration.
    let op = start_sleep(&server, sleep(std::time::Duration::from_secs(300), 1)).await;
    let out = longrun(&server, &["ops", "wait", &op.name, "--timeout", "1s"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = stderr(&out);
    let took = err.split("still running after ").nth(1).unwrap().trim();
    assert!(
        took.starts_with("1.") && took.ends_with('s') && !took.contains(' '),
        "{err}"
    );
    // A bare id is a name; the JSON is the operation alone.
    let bare = &op.name["operations/".len()..];
    let out = longrun(&server, &["ops", "get", bare, "--output", "json"]).await;
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["name"], op.name.as_str());
    assert!(json.get("deliveries").is_none(), "{json}");
    let out = longrun(&server, &["ops", "get", bare]).await;
    assert!(stdout(&out).contains("webhooks:  none"), "{out:?}");
    let out = longrun(&server, &["ops", "cancel", bare]).await;
    assert!(out.status.success(), "{out:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_import_that_skipped_rows_says_so_and_exits_4() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("orders.csv");
    std::fs::write(
        &csv,
        "order_id,created_at,customer_id,status,amount_cents\n\
         o-1,2024-03-01T00:00:00Z,c-1,placed,100\n\
         o-2,yesterday,c-2,placed,100\n",
    )
    .unwrap();
    let out = longrun(
        &server,
        &["orders", "import", csv.to_str().unwrap(), "--wait"],
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("imported 1 rows, skipped 1 malformed"),
        "{err}"
    );
    assert!(err.contains("row 3: created_at"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn reports_are_listed_read_with_their_checksum_and_piped() {
    let server = TestServer::start().await;
    let made = longrun(
        &server,
        &[
            "report", "create", "--month", "2024-05", "--wait", "--output", "json",
        ],
    )
    .await;
    assert!(made.status.success(), "{made:?}");
    let json: serde_json::Value = serde_json::from_str(stdout(&made).trim()).unwrap();
    let name = json["response"]["name"].as_str().unwrap().to_owned();
    let sha = json["response"]["sha256"].as_str().unwrap().to_owned();
    let list = longrun(&server, &["report", "list"]).await;
    assert!(stdout(&list).contains(&name), "{list:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("may.csv");
    let read = longrun(
        &server,
        &["report", "read", &name, "--out", file.to_str().unwrap()],
    )
    .await;
    assert!(read.status.success(), "{read:?}");
    assert!(stderr(&read).contains(&sha), "{read:?}");
    // To a pipe whose reader stops early: no complaint.
    let url = server.url();
    let piped = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "'{}' report read {name} --out - | head -c 5",
                env!("CARGO_BIN_EXE_longrun")
            ))
            .env("LONGRUN_SERVER", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(stdout(&piped), "order");
    assert!(!stderr(&piped).contains("Broken pipe"), "{piped:?}");
    server.stop().await;
}

#[tokio::test]
async fn ctrl_c_stops_following_and_says_the_operation_goes_on() {
    let server = TestServer::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["sleep", "30s", "--watch"])
        .env("LONGRUN_SERVER", server.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let name = wait_for_line(stderr, PATIENCE, "the name being followed", |line| {
        line.strip_prefix("following ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    })
    .await;
    assert!(name.starts_with("operations/"), "{name}");
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    // It is still running.
    let op = server
        .operations()
        .await
        .get_operation(longrun::pb::google::longrunning::GetOperationRequest { name })
        .await
        .unwrap()
        .into_inner();
    assert!(!op.done);
    server.stop().await;
}

#[tokio::test]
async fn webhook_listen_receives_and_checks_a_delivery() {
    let secret = longrun::webhook::Secret::generate();
    let server = TestServer::start_with(|c| {
        c.webhooks.secrets = vec![secret.clone()];
        c.webhooks.allow_private = true;
    })
    .await;
    let mut listener = tokio::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args([
            "webhook",
            "listen",
            "--listen",
            "127.0.0.1:0",
            "--count",
            "1",
        ])
        .env("LONGRUN_WEBHOOK_SECRET", secret.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(listener.stdout.take().unwrap()).lines();
    let next = async |lines: &mut tokio::io::Lines<_>| {
        tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line")
    };
    let url = next(&mut lines)
        .await
        .strip_prefix("listening on ")
        .expect("the address first")
        .to_owned();

    // A forged delivery is refused, and said to be forged.
    let forged = reqwest::Client::new()
        .post(&url)
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", "1")
        .header("webhook-signature", "v1,AAAA")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let line = next(&mut lines).await;
    assert!(
        line.contains("msg_forged") && line.contains("INVALID"),
        "{line}"
    );

    // The server's delivery checks, and the listener stops after it.
    let out = longrun(&server, &["sleep", "0s", "--notify", &url, "--wait"]).await;
    assert!(out.status.success(), "{out:?}");
    let line = next(&mut lines).await;
    assert!(
        line.contains("operation.succeeded operations/") && line.ends_with("signature valid"),
        "{line}"
    );
    let status = tokio::time::timeout(PATIENCE, listener.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    server.stop().await;
}

#[tokio::test]
async fn schedules_are_made_shown_run_paused_and_refused_from_the_command_line() {
    let server = TestServer::start().await;
    let made = longrun(
        &server,
        &[
            "schedule",
            "create",
            "nightly",
            "--kind",
            "sleep",
            "--sleep",
            "10ms",
            "--cron",
            "0 3 * * *",
            "--tz",
            "Europe/Berlin",
            "--overlap",
            "buffer-one",
        ],
    )
    .await;
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(
        stdout(&made).contains("nightly: every day at 03:00 Europe/Berlin (active)"),
        "{}",
        stdout(&made)
    );
    assert!(stdout(&made).contains("BUFFER_ONE"));
    let run = longrun(&server, &["schedule", "run", "nightly", "--output", "json"]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    let op: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(op["metadata"]["schedule"], "schedules/nightly");
    let runs = longrun(&server, &["schedule", "runs", "nightly"]).await;
    assert!(stdout(&runs).contains(op["name"].as_str().unwrap()));
    let updated = longrun(
        &server,
        &["schedule", "update", "nightly", "--every", "15m"],
    )
    .await;
    assert!(
        stdout(&updated).contains("every 15 minutes"),
        "{}",
        stdout(&updated)
    );
    let paused = longrun(&server, &["schedule", "pause", "nightly"]).await;
    assert!(stdout(&paused).contains("(paused)"), "{}", stdout(&paused));
    let bad = longrun(
        &server,
        &[
            "schedule",
            "create",
            "bad",
            "--kind",
            "sleep",
            "--cron",
            "0 3 * * *",
            "--tz",
            "Nowhere/City",
        ],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("time_zone"), "{}", stderr(&bad));
    let gone = longrun(&server, &["schedule", "delete", "nightly"]).await;
    assert!(gone.status.success());
    let list = longrun(&server, &["schedule", "list"]).await;
    assert!(stdout(&list).is_empty(), "{}", stdout(&list));
}

#[tokio::test]
async fn batches_and_bulk_actions_from_the_command_line() {
    let server = TestServer::start_with(|c| c.sleep_policy.max_attempts = 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("children.jsonl");
    let sleep = r#"{"kind": "longrun.v1.Diagnostics.Sleep", "payload": {"@type": "type.googleapis.com/longrun.v1.SleepRequest", "duration": "0s"}}"#;
    let failing = r#"{"kind": "longrun.v1.Diagnostics.Sleep", "payload": {"@type": "type.googleapis.com/longrun.v1.SleepRequest", "failAttempts": 1}}"#;
    let mut lines = vec!["# three children, one failing once".to_owned()];
    lines.extend([sleep, sleep, failing].map(str::to_owned));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file = file.to_str().unwrap();

    let out = longrun(
        &server,
        &[
            "batch", "create", "--file", file, "--wait", "--output", "json",
        ],
    )
    .await;
    // The batch failed: one child did.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let batch: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(batch["metadata"]["batch"]["succeeded"], "2");
    assert_eq!(batch["metadata"]["batch"]["failed"], "1");
    let failures = &batch["error"]["details"][1]["failures"];
    let failed = failures[0]["name"].as_str().unwrap().to_owned();

    // Retried by name, it passes, and the batch with it.
    let out = longrun(&server, &["ops", "retry", &failed]).await;
    assert!(out.status.success(), "{out:?}");
    let parent = batch["name"].as_str().unwrap();
    let done = wait_done(&server, &failed).await;
    assert_eq!(state(&done), longrun::pb::longrun::v1::State::Succeeded);
    let out = longrun(&server, &["ops", "wait", parent]).await;
    assert!(out.status.success(), "{out:?}");

    // A bad line is named, and no batch is made.
    std::fs::write(
        dir.path().join("bad.jsonl"),
        format!("{sleep}\n{{\"kind\": 3}}\n"),
    )
    .unwrap();
    let bad = dir.path().join("bad.jsonl");
    let out = longrun(
        &server,
        &["batch", "create", "--file", bad.to_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.jsonl:2"), "{}", stderr(&out));

    // A bulk delete over a filter, followed to its end.
    let out = longrun(
        &server,
        &[
            "ops",
            "delete",
            "--filter",
            &format!("parent = \"{parent}\""),
            "--wait",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let bulk: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(bulk["response"]["changed"], "3");
    let out = longrun(&server, &["ops", "cancel"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a name or --filter is needed: {out:?}"
    );
    server.stop().await;
}
