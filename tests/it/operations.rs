//! The Operations service over real gRPC: Get, List, Cancel, Delete, Wait,
//! and the create rules of Diagnostics.Sleep.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::*;
use longrun::pb::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    WaitOperationRequest, operation,
};
use longrun::pb::google::rpc::ErrorInfo;
use longrun::pb::longrun::v1::{SleepResponse, State};
use prost::{Message, Name};
use tonic::Code;

fn get(name: &str) -> GetOperationRequest {
    GetOperationRequest { name: name.into() }
}

fn list(filter: &str, page_size: i32, token: &str) -> ListOperationsRequest {
    ListOperationsRequest {
        name: "operations".into(),
        filter: filter.into(),
        page_size,
        page_token: token.into(),
        return_partial_success: false,
    }
}

#[tokio::test]
async fn get_unknown_is_not_found_and_malformed_is_invalid() {
    let server = TestServer::start().await;
    let mut ops = server.operations().await;
    let unknown = ops
        .get_operation(get("operations/0190b2d4-7d7c-7f7e-8000-000000000000"))
        .await
        .unwrap_err();
    assert_status(&unknown, Code::NotFound, "NOT_FOUND", None);
    for bad in [
        "",
        "operations/",
        "operations/nope",
        "jobs/1",
        &"x".repeat(5000),
    ] {
        let err = ops.get_operation(get(bad)).await.unwrap_err();
        assert_status(
            &err,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("name"),
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_sleep_succeeds_with_a_typed_response_and_full_progress() {
    let server = TestServer::start().await;
    let created = start_sleep(&server, sleep(Duration::from_millis(200), 4)).await;
    assert!(!created.done);
    assert!(created.name.starts_with("operations/"));
    assert_eq!(meta(&created).kind, "longrun.v1.Diagnostics.Sleep");

    let done = wait_done(&server, &created.name).await;
    let m = meta(&done);
    assert_eq!(state(&done), State::Succeeded);
    assert_eq!(m.progress_percent, 100);
    assert_eq!(m.attempt, 1);
    assert!(m.start_time.is_some() && m.end_time.is_some() && m.update_time.is_some());
    let Some(operation::Result::Response(any)) = &done.result else {
        panic!("expected a response: {done:?}");
    };
    assert_eq!(any.type_url, "type.googleapis.com/longrun.v1.SleepResponse");
    assert_eq!(any.type_url, SleepResponse::type_url());
    let response = SleepResponse::decode(any.value.as_slice()).unwrap();
    assert_eq!(response.steps, 4);
    assert_eq!(response.slept.unwrap().nanos, 200_000_000);

    // Get agrees with Wait.
    let got = server
        .operations()
        .await
        .get_operation(get(&created.name))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, done);
    server.stop().await;
}

#[tokio::test]
async fn a_failing_sleep_ends_with_the_code_and_error_info() {
    let server = TestServer::start().await;
    let mut request = sleep(Duration::ZERO, 1);
    request.fail_code = Code::Unavailable as i32;
    let created = start_sleep(&server, request).await;
    let done = wait_done(&server, &created.name).await;
    assert_eq!(state(&done), State::Failed);
    let error = op_error(&done);
    assert_eq!(error.code, Code::Unavailable as i32);
    let info = error
        .details
        .iter()
        .find(|d| d.type_url == "type.googleapis.com/google.rpc.ErrorInfo")
        .map(|d| ErrorInfo::decode(d.value.as_slice()).unwrap())
        .expect("ErrorInfo detail");
    assert_eq!(info.reason, "REQUESTED_FAILURE");
    assert_eq!(info.domain, "longrun");
    server.stop().await;
}

#[tokio::test]
async fn bad_sleep_requests_are_rejected_with_field_violations() {
    let server = TestServer::start().await;
    let mut diag = server.diagnostics().await;
    let mut negative = sleep(Duration::ZERO, 1);
    negative.duration = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    let mut steps = sleep(Duration::ZERO, 1);
    steps.steps = -3;
    let mut code = sleep(Duration::ZERO, 1);
    code.fail_code = 99;
    let mut long = sleep(Duration::from_secs(3 * 24 * 3600), 1);
    long.steps = 1;
    let mut rid = sleep(Duration::ZERO, 1);
    rid.request_id = "not-a-uuid".into();
    for (request, field) in [
        (negative, "duration"),
        (steps, "steps"),
        (code, "fail_code"),
        (long, "duration"),
        (rid, "request_id"),
    ] {
        let err = diag.sleep(request).await.unwrap_err();
        assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT", Some(field));
    }
    // Nothing was created by the refused calls.
    let page = server
        .operations()
        .await
        .list_operations(list("", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(page.operations.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn request_ids_make_creates_idempotent() {
    let server = TestServer::start().await;
    let mut request = sleep(Duration::ZERO, 1);
    request.request_id = "5f0c6a56-2a0e-4a3c-9a0e-2f1d6c1b9e11".into();
    let first = start_sleep(&server, request.clone()).await;
    let second = start_sleep(&server, request.clone()).await;
    assert_eq!(first.name, second.name);

    request.steps = 2;
    let err = server.diagnostics().await.sleep(request).await.unwrap_err();
    assert_status(&err, Code::AlreadyExists, "REQUEST_ID_CONFLICT", None);
    assert!(err.message().contains("different request"), "{err:?}");

    // Concurrent duplicates make exactly one operation.
    let mut request = sleep(Duration::ZERO, 1);
    request.request_id = "0d7b8f8e-7f1c-4d9e-8c55-2b7ab1b6f0a2".into();
    let mut joins = Vec::new();
    for _ in 0..16 {
        let mut diag = server.diagnostics().await;
        let request = request.clone();
        joins.push(tokio::spawn(async move {
            diag.sleep(request).await.unwrap().into_inner().name
        }));
    }
    let mut names = HashSet::new();
    for j in joins {
        names.insert(j.await.unwrap());
    }
    assert_eq!(names.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn list_pages_newest_first_with_signed_tokens() {
    let server = TestServer::start().await;
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(start_sleep(&server, sleep(Duration::ZERO, 1)).await.name);
    }
    let mut ops = server.operations().await;

    // Both spellings of the collection work.
    for name in ["", "operations"] {
        let mut req = list("", 0, "");
        req.name = name.into();
        let page = ops.list_operations(req).await.unwrap().into_inner();
        assert_eq!(page.operations.len(), 7);
        assert!(page.next_page_token.is_empty());
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = ops
            .list_operations(list("", 3, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.operations.len() <= 3);
        seen.extend(page.operations.into_iter().map(|o| o.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    server.stop().await;
}

#[tokio::test]
async fn list_rejects_bad_arguments() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    }
    let mut ops = server.operations().await;

    let err = ops.list_operations(list("", -1, "")).await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_size"),
    );

    let mut wrong_parent = list("", 0, "");
    wrong_parent.name = "projects/x".into();
    let err = ops.list_operations(wrong_parent).await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("name"),
    );

    let err = ops
        .list_operations(list("", 0, "bm90IGEgdG9rZW4"))
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );

    let err = ops
        .list_operations(list("state = SLEEPING", 0, ""))
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter"),
    );
    assert!(err.message().contains("unknown state"), "{err:?}");

    let err = ops
        .list_operations(list(&"done = true AND ".repeat(100), 0, ""))
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter"),
    );

    // A real token, replayed with another filter.
    let page = ops
        .list_operations(list("", 1, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let err = ops
        .list_operations(list("done = true", 1, &page.next_page_token))
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );
    assert!(err.message().contains("different filter"), "{err:?}");

    // A tampered token.
    let mut tampered = page.next_page_token.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let err = ops
        .list_operations(list("", 1, &String::from_utf8(tampered).unwrap()))
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );

    let mut partial = list("", 0, "");
    partial.return_partial_success = true;
    let err = ops.list_operations(partial).await.unwrap_err();
    assert_status(
        &err,
        Code::Unimplemented,
        "PARTIAL_SUCCESS_UNSUPPORTED",
        None,
    );
    server.stop().await;
}

#[tokio::test]
async fn list_page_size_defaults_to_50_and_is_capped_at_1000() {
    let server = TestServer::start().await;
    let mut joins = Vec::new();
    for chunk in 0..20 {
        let mut diag = server.diagnostics().await;
        joins.push(tokio::spawn(async move {
            // 23 + 19 * 52 = 1011 operations.
            for _ in 0..(if chunk == 0 { 23 } else { 52 }) {
                diag.sleep(sleep(Duration::ZERO, 1)).await.unwrap();
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let mut ops = server.operations().await;
    let page = ops
        .list_operations(list("", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.operations.len(), 50);
    let page = ops
        .list_operations(list("", 5000, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.operations.len(), 1000);
    assert!(!page.next_page_token.is_empty());
    let rest = ops
        .list_operations(list("", 5000, &page.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.operations.len(), 11);
    assert!(rest.next_page_token.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn list_filters_by_done_state_kind_and_create_time() {
    let server = TestServer::start_with(one_sleep_at_a_time).await;
    let finished = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    wait_done(&server, &finished.name).await;
    let before_running = time::OffsetDateTime::now_utc();
    let running = start_sleep(&server, sleep(Duration::from_secs(60), 1)).await;
    wait_state(&server, &running.name, State::Running).await;
    let queued = start_sleep(&server, sleep(Duration::from_secs(60), 1)).await;

    let mut ops = server.operations().await;
    let mut names = async |filter: &str| -> Vec<String> {
        ops.list_operations(list(filter, 0, ""))
            .await
            .unwrap()
            .into_inner()
            .operations
            .into_iter()
            .map(|o| o.name)
            .collect()
    };
    assert_eq!(names("done = true").await, vec![finished.name.clone()]);
    assert_eq!(
        names("done = false").await,
        vec![queued.name.clone(), running.name.clone()]
    );
    assert_eq!(names("state = RUNNING").await, vec![running.name.clone()]);
    assert_eq!(names("state = QUEUED").await, vec![queued.name.clone()]);
    assert_eq!(
        names(r#"kind = "longrun.v1.Diagnostics.Sleep" AND done = true"#).await,
        vec![finished.name.clone()]
    );
    assert!(names(r#"kind = "other.Kind""#).await.is_empty());
    let since = before_running
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(
        names(&format!("create_time > \"{since}\"")).await,
        vec![queued.name.clone(), running.name.clone()]
    );

    for name in [&queued.name, &running.name] {
        ops.cancel_operation(CancelOperationRequest { name: name.clone() })
            .await
            .unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn cancel_ends_queued_at_once_and_stops_running_tasks() {
    let server = TestServer::start_with(one_sleep_at_a_time).await;
    let running = start_sleep(&server, sleep(Duration::from_secs(300), 300)).await;
    wait_state(&server, &running.name, State::Running).await;
    let queued = start_sleep(&server, sleep(Duration::from_secs(1), 1)).await;
    let mut ops = server.operations().await;

    // Queued: done at once with CANCELLED.
    ops.cancel_operation(CancelOperationRequest {
        name: queued.name.clone(),
    })
    .await
    .unwrap();
    let got = ops
        .get_operation(get(&queued.name))
        .await
        .unwrap()
        .into_inner();
    assert!(got.done);
    assert_eq!(state(&got), State::Cancelled);
    assert_eq!(op_error(&got).code, Code::Cancelled as i32);
    assert!(meta(&got).requested_cancellation);

    // Running: CANCELLING with the flag, then CANCELLED once the task stops.
    ops.cancel_operation(CancelOperationRequest {
        name: running.name.clone(),
    })
    .await
    .unwrap();
    let got = ops
        .get_operation(get(&running.name))
        .await
        .unwrap()
        .into_inner();
    assert!(meta(&got).requested_cancellation);
    assert!(matches!(state(&got), State::Cancelling | State::Cancelled));
    let done = wait_done(&server, &running.name).await;
    assert_eq!(state(&done), State::Cancelled);
    assert_eq!(op_error(&done).code, Code::Cancelled as i32);

    // Cancelling again is fine.
    ops.cancel_operation(CancelOperationRequest {
        name: running.name.clone(),
    })
    .await
    .unwrap();

    // A succeeded operation can't be cancelled.
    let ok = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    wait_done(&server, &ok.name).await;
    let err = ops
        .cancel_operation(CancelOperationRequest {
            name: ok.name.clone(),
        })
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::FailedPrecondition,
        "OPERATION_ALREADY_DONE",
        None,
    );

    let err = ops
        .cancel_operation(CancelOperationRequest {
            name: "operations/0190b2d4-7d7c-7f7e-8000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    server.stop().await;
}

#[tokio::test]
async fn delete_removes_done_operations_only() {
    let server = TestServer::start().await;
    let mut ops = server.operations().await;
    let running = start_sleep(&server, sleep(Duration::from_secs(300), 10)).await;
    let err = ops
        .delete_operation(DeleteOperationRequest {
            name: running.name.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "OPERATION_NOT_DONE", None);
    assert!(err.message().contains("cancel it first"), "{err:?}");
    // Still there, still running.
    let still = ops
        .get_operation(get(&running.name))
        .await
        .unwrap()
        .into_inner();
    assert!(!still.done);

    ops.cancel_operation(CancelOperationRequest {
        name: running.name.clone(),
    })
    .await
    .unwrap();
    wait_done(&server, &running.name).await;
    ops.delete_operation(DeleteOperationRequest {
        name: running.name.clone(),
    })
    .await
    .unwrap();
    let err = ops.get_operation(get(&running.name)).await.unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    let err = ops
        .delete_operation(DeleteOperationRequest {
            name: running.name.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    server.stop().await;
}

#[tokio::test]
async fn wait_returns_when_done_or_at_the_timeout() {
    let server = TestServer::start().await;
    let mut ops = server.operations().await;

    // Times out with the latest state.
    let long = start_sleep(&server, sleep(Duration::from_secs(300), 10)).await;
    let started = Instant::now();
    let op = ops
        .wait_operation(WaitOperationRequest {
            name: long.name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 300_000_000,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!op.done);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The call's own deadline wins over a longer timeout: the reply comes
    // before it, not DEADLINE_EXCEEDED.
    let mut request = tonic::Request::new(WaitOperationRequest {
        name: long.name.clone(),
        timeout: Some(prost_types::Duration {
            seconds: 120,
            nanos: 0,
        }),
    });
    request.set_timeout(Duration::from_millis(800));
    let op = ops.wait_operation(request).await.unwrap().into_inner();
    assert!(!op.done);

    // Returns as soon as the operation is done.
    let short = start_sleep(&server, sleep(Duration::from_millis(100), 1)).await;
    let op = ops
        .wait_operation(WaitOperationRequest {
            name: short.name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(op.done);

    let err = ops
        .wait_operation(WaitOperationRequest {
            name: "operations/0190b2d4-7d7c-7f7e-8000-000000000000".into(),
            timeout: None,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    let err = ops
        .wait_operation(WaitOperationRequest {
            name: long.name.clone(),
            timeout: Some(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("timeout"),
    );

    ops.cancel_operation(CancelOperationRequest { name: long.name })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_operation_shows_what_it_was_asked_who_runs_it_and_that_shutdowns_do_not_count() {
    let temp = tempfile::tempdir().unwrap();
    let cfg = config(temp.path());
    let server = TestServer::start_config(cfg.clone()).await;
    let op = start_sleep(&server, sleep(std::time::Duration::from_secs(60), 2)).await;
    let running = wait_state(&server, &op.name, State::Running).await;
    let m = meta(&running);
    let request = m.request.as_ref().expect("the request is shown");
    assert_eq!(
        request.type_url,
        "type.googleapis.com/longrun.v1.SleepRequest"
    );
    let asked = longrun::pb::longrun::v1::SleepRequest::decode(request.value.as_slice()).unwrap();
    assert_eq!(asked.duration.unwrap().seconds, 60);
    assert!(m.request_size_bytes > 0);
    assert!(!m.holder.is_empty(), "who runs it");
    assert_eq!((m.attempt, m.stopped_attempts), (1, 0));
    server.stop().await;

    // A restart stops the attempt and runs it again: that stop does not
    // count against the operation's attempts.
    let mut server = TestServer::start_config(cfg).await;
    server.keep(temp);
    let again = wait_state(&server, &op.name, State::Running).await;
    let m = meta(&again);
    assert_eq!((m.attempt, m.stopped_attempts), (2, 1), "{m:?}");
    assert_eq!(m.max_attempts, 3);
    server.stop().await;
}
