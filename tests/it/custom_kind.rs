//! A kind defined outside the crate, as a library user would, runs through
//! the same engine and is followed through the standard gRPC API.

use std::time::Duration;

use crate::common::*;
use longrun::engine::{Code, FieldViolation};
use longrun::pb::google::longrunning::operation;
use longrun::pb::longrun::v1::State;
use longrun::{Registry, Task, TaskContext, TaskError};
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(bool, tag = "2")]
    panic: bool,
}

impl prost::Name for EchoRequest {
    const PACKAGE: &'static str = "test.v1";
    const NAME: &'static str = "EchoRequest";
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoResponse {
    #[prost(string, tag = "1")]
    text: String,
}

impl prost::Name for EchoResponse {
    const PACKAGE: &'static str = "test.v1";
    const NAME: &'static str = "EchoResponse";
}

struct Echo;

impl Task for Echo {
    type Request = EchoRequest;
    type Response = EchoResponse;
    const KIND: &'static str = "test.v1.Echo";

    fn validate(&self, request: &EchoRequest) -> Result<(), FieldViolation> {
        if request.text.is_empty() {
            return Err(FieldViolation::new("text", "text is required"));
        }
        Ok(())
    }

    async fn run(&self, ctx: TaskContext, request: EchoRequest) -> Result<EchoResponse, TaskError> {
        ctx.set_progress(50, "echoing");
        if request.panic {
            panic!("the echo task was asked to panic");
        }
        if request.text == "fail" {
            return Err(
                TaskError::new(Code::DataLoss, "ECHO_FAILED", "asked to fail")
                    .with_metadata("text", request.text),
            );
        }
        Ok(EchoResponse { text: request.text })
    }
}

async fn server() -> TestServer {
    let temp = tempfile::tempdir().unwrap();
    let mut registry = Registry::new();
    registry.register(Echo);
    let cfg = config(&temp.path().join("data"));
    let mut server = TestServer::start_registry(cfg, registry).await;
    server.keep(temp);
    server
}

#[tokio::test]
async fn a_custom_kind_runs_and_reports_through_operations() {
    let server = server().await;
    let request = EchoRequest {
        text: "hello".into(),
        panic: false,
    };
    let op = server
        .engine
        .submit::<Echo>(&request, Default::default())
        .await
        .unwrap();
    let done = wait_done(&server, &op.id.name()).await;
    assert_eq!(meta(&done).kind, "test.v1.Echo");
    assert_eq!(state(&done), State::Succeeded);
    let Some(operation::Result::Response(any)) = &done.result else {
        panic!("{done:?}");
    };
    assert_eq!(any.type_url, "type.googleapis.com/test.v1.EchoResponse");
    assert_eq!(
        EchoResponse::decode(any.value.as_slice()).unwrap().text,
        "hello"
    );
    server.stop().await;
}

#[tokio::test]
async fn validation_errors_and_task_errors_and_panics_are_reported() {
    let server = server().await;
    let err = server
        .engine
        .submit::<Echo>(&EchoRequest::default(), Default::default())
        .await
        .unwrap_err();
    let status = tonic::Status::from(err);
    assert_status(
        &status,
        tonic::Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("text"),
    );

    let failing = EchoRequest {
        text: "fail".into(),
        panic: false,
    };
    let op = server
        .engine
        .submit::<Echo>(&failing, Default::default())
        .await
        .unwrap();
    let done = wait_done(&server, &op.id.name()).await;
    assert_eq!(state(&done), State::Failed);
    assert_eq!(op_error(&done).code, Code::DataLoss.as_i32());

    let panicking = EchoRequest {
        text: "x".into(),
        panic: true,
    };
    let op = server
        .engine
        .submit::<Echo>(&panicking, Default::default())
        .await
        .unwrap();
    let done = wait_done(&server, &op.id.name()).await;
    assert_eq!(state(&done), State::Failed);
    assert_eq!(op_error(&done).code, Code::Internal.as_i32());
    assert!(op_error(&done).message.contains("panicked"));

    // The server is unharmed by the panic.
    let ok = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    assert_eq!(state(&wait_done(&server, &ok.name).await), State::Succeeded);
    server.stop().await;
}
