//! The HTTP/JSON face: the `google.api.http` bindings of the protos,
//! transcoded onto the very same gRPC services, on the same listener. A
//! route reads its JSON (the proto3 mapping), passes its own door (the same
//! bearer tokens and roles as gRPC), calls the service in-process as the
//! caller, and writes the answer as JSON, or the error as Google's JSON
//! error body (AIP-193) with the status's ErrorInfo and BadRequest.
//!
//! Creates answer 202 Accepted with a `Location`; an operation that is not
//! done carries `Retry-After`; an `Idempotency-Key` header is the
//! request_id (a malformed key is 400, a key reused with another body 422).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost::Message;
use serde::Deserialize;
use tonic::{Code, Status};

use super::auth::{Caller, admit_as};
use super::status::{invalid_field, no_route};
use super::{DiagnosticsService, OperationsService};
use crate::auth::{Authenticator, Principal, Role};
use crate::pb;
use crate::pb::google::longrunning::operations_server::Operations;
use crate::pb::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    Operation, WaitOperationRequest,
};
use crate::pb::longrun::v1::diagnostics_server::Diagnostics;
use crate::pb::longrun::v1::{OperationMetadata, SleepRequest};

/// The services the routes call.
pub struct Rest {
    pub operations: OperationsService,
    /// None when the Diagnostics service is off.
    pub diagnostics: Option<DiagnosticsService>,
    pub auth: Arc<Authenticator>,
}

/// The routes, to be merged with the gRPC services' router.
pub fn router(rest: Rest) -> Router {
    let sleep = rest.diagnostics.is_some();
    let router = Router::new().route("/v1/operations", get(list)).route(
        "/v1/operations/{tail}",
        get(get_operation).delete(delete).post(custom),
    );
    let router = if sleep {
        router.route("/v1/diagnostics:sleep", post(create_sleep))
    } else {
        router
    };
    router.with_state(Arc::new(rest))
}

type Shared = State<Arc<Rest>>;

/// A refusal: the error response to send instead (boxed, since a response
/// is large). A failed call's status becomes one with `?`.
struct Refused(Box<Response>);

impl Refused {
    /// `status` as its error body, under `http` when that is more exact
    /// than the mapped status.
    fn with(status: &Status, http: Option<StatusCode>) -> Self {
        Self(Box::new(error_body(status, http)))
    }
}

impl From<Status> for Refused {
    fn from(status: Status) -> Self {
        Self::with(&status, None)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// What a route answers.
type Answer = Result<Response, Refused>;

/// The empty message's JSON, as Cancel and Delete answer.
fn empty() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()
}

/// The HTTP status and canonical name of a gRPC code (the mapping of
/// google.rpc.Code), in one place.
pub fn http_status(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::Ok => (StatusCode::OK, "OK"),
        Code::Cancelled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "CANCELLED",
        ),
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
    }
}

/// A status as Google's JSON error body, under `http` (its mapped status
/// unless the caller has a more exact one).
fn error_body(status: &Status, http: Option<StatusCode>) -> Response {
    let (mapped, name) = http_status(status.code());
    let http = http.unwrap_or(mapped);
    let details = pb::google::rpc::Status::decode(status.details())
        .map(|rpc| pb::to_json(&rpc)["details"].clone())
        .ok()
        .filter(|d| d.is_array())
        .unwrap_or_else(|| serde_json::json!([]));
    let body = serde_json::json!({
        "error": {
            "code": http.as_u16(),
            "message": status.message(),
            "status": name,
            "details": details,
        }
    });
    let mut response = (http, axum::Json(body)).into_response();
    if let Some(retry) = retry_delay(status) {
        insert_retry_after(response.headers_mut(), retry);
    }
    response
}

/// The RetryInfo delay of a status, if it has one.
fn retry_delay(status: &Status) -> Option<Duration> {
    let rpc = pb::google::rpc::Status::decode(status.details()).ok()?;
    rpc.details.iter().find_map(|any| {
        let info = any.to_msg::<pb::google::rpc::RetryInfo>().ok()?;
        let delay = info.retry_delay?;
        Some(Duration::new(
            u64::try_from(delay.seconds).ok()?,
            u32::try_from(delay.nanos).ok()?,
        ))
    })
}

fn insert_retry_after(headers: &mut HeaderMap, delay: Duration) {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
}

/// A message as a JSON response.
fn json<M: Message + prost::Name>(code: StatusCode, message: &M) -> Response {
    (code, axum::Json(pb::to_json(message))).into_response()
}

/// How long a poller should wait before asking about `op` again, in whole
/// seconds, at least 1: the time its progress so far suggests is left, at
/// most a minute; 1 s when nothing is known yet.
fn retry_after(op: &Operation) -> Duration {
    let estimate = op
        .metadata
        .as_ref()
        .and_then(|any| any.to_msg::<OperationMetadata>().ok())
        .and_then(|meta| {
            let percent = u64::try_from(meta.progress_percent)
                .ok()
                .filter(|p| (1..100).contains(p))?;
            let started = meta.start_time?;
            let started =
                SystemTime::UNIX_EPOCH + Duration::new(u64::try_from(started.seconds).ok()?, 0);
            let elapsed = SystemTime::now().duration_since(started).ok()?;
            Some(elapsed.mul_f64((100 - percent) as f64 / percent as f64))
        });
    estimate
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// An operation's JSON, with `Retry-After` while it is not done.
fn operation_response(code: StatusCode, op: &Operation) -> Response {
    let mut response = json(code, op);
    if !op.done {
        insert_retry_after(response.headers_mut(), retry_after(op));
    }
    response
}

/// The caller of `request`, checked for `role` at the HTTP door.
fn door(rest: &Rest, request: &Request, role: Role) -> Result<Arc<Principal>, Refused> {
    admit_as(&rest.auth, request, role).map_err(Refused::from)
}

/// A gRPC request as `caller` makes it.
fn as_caller<T>(caller: &Arc<Principal>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(Caller(Arc::clone(caller)));
    request
}

/// `operations/{id}` from the `{id}` of a path.
fn operation_name(id: &str) -> String {
    format!("operations/{id}")
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default)]
    filter: String,
    #[serde(default)]
    page_size: Option<String>,
    #[serde(default)]
    page_token: String,
}

async fn list(State(rest): Shared, Query(params): Query<ListParams>, request: Request) -> Answer {
    let caller = door(&rest, &request, Role::Reader)?;
    let page_size = match params.page_size.as_deref().map(str::parse::<i32>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Err(invalid_field("page_size", "page_size must be a whole number").into());
        }
    };
    let message = ListOperationsRequest {
        name: "operations".into(),
        filter: params.filter,
        page_size,
        page_token: params.page_token,
        return_partial_success: false,
    };
    let page = rest
        .operations
        .list_operations(as_caller(&caller, message))
        .await?;
    Ok(json(StatusCode::OK, page.get_ref()))
}

async fn get_operation(State(rest): Shared, Path(tail): Path<String>, request: Request) -> Answer {
    let caller = door(&rest, &request, Role::Reader)?;
    let message = GetOperationRequest {
        name: operation_name(&tail),
    };
    let op = rest
        .operations
        .get_operation(as_caller(&caller, message))
        .await?;
    // Always 200 with the operation: Google's REST clients rely on it.
    Ok(operation_response(StatusCode::OK, op.get_ref()))
}

async fn delete(State(rest): Shared, Path(tail): Path<String>, request: Request) -> Answer {
    let caller = door(&rest, &request, Role::Writer)?;
    let message = DeleteOperationRequest {
        name: operation_name(&tail),
    };
    rest.operations
        .delete_operation(as_caller(&caller, message))
        .await?;
    Ok(empty())
}

/// `POST /v1/operations/{id}:cancel` and `:wait`.
async fn custom(State(rest): Shared, Path(tail): Path<String>, request: Request) -> Answer {
    let Some((id, verb)) = tail.rsplit_once(':') else {
        return Err(Refused::with(
            &no_route(format!("no POST route for /v1/operations/{tail}")),
            Some(StatusCode::METHOD_NOT_ALLOWED),
        ));
    };
    let name = operation_name(id);
    match verb {
        "cancel" => {
            let caller = door(&rest, &request, Role::Writer)?;
            let message = CancelOperationRequest { name };
            rest.operations
                .cancel_operation(as_caller(&caller, message))
                .await?;
            Ok(empty())
        }
        "wait" => {
            let caller = door(&rest, &request, Role::Reader)?;
            let mut message = parse::<WaitOperationRequest>(&body_of(request).await?)?;
            message.name = name;
            let op = rest
                .operations
                .wait_operation(as_caller(&caller, message))
                .await?;
            Ok(operation_response(StatusCode::OK, op.get_ref()))
        }
        other => Err(no_route(format!("operations have no :{other} method")).into()),
    }
}

/// The largest JSON body a route reads.
const MAX_JSON_BODY: usize = 1 << 20;

async fn body_of(request: Request) -> Result<Bytes, Refused> {
    axum::body::to_bytes(request.into_body(), MAX_JSON_BODY)
        .await
        .map_err(|e| {
            Refused::with(
                &invalid_field("body", format!("the body could not be read: {e}")),
                Some(StatusCode::PAYLOAD_TOO_LARGE),
            )
        })
}

/// A request message from a JSON body; an empty body is the empty message.
fn parse<M: Message + prost::Name + Default>(body: &[u8]) -> Result<M, Refused> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(M::default());
    }
    pb::from_json(body)
        .map_err(|e| invalid_field("body", format!("the body is not a {}: {e}", M::NAME)).into())
}

/// The request_id an `Idempotency-Key` header names: a UUID, quoted as a
/// structured-field string or bare.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refused> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let malformed = || {
        Refused::from(invalid_field(
            "Idempotency-Key",
            "Idempotency-Key must be a UUID, e.g. \"4b5e7a1c-0d3f-4e2a-9b8c-1f2e3d4c5b6a\"",
        ))
    };
    let text = value.to_str().map_err(|_| malformed())?.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if uuid::Uuid::parse_str(text).is_err() {
        return Err(malformed());
    }
    Ok(Some(text.to_owned()))
}

/// Answers a create: 202 with a `Location` and the operation, or the
/// error; a reused Idempotency-Key with another body is 422.
fn created(result: Result<tonic::Response<Operation>, Status>, keyed: bool) -> Answer {
    let op = match result {
        Ok(response) => response.into_inner(),
        Err(status) if keyed && status.code() == Code::AlreadyExists => {
            return Err(Refused::with(
                &status,
                Some(StatusCode::UNPROCESSABLE_ENTITY),
            ));
        }
        Err(status) => return Err(status.into()),
    };
    let mut response = operation_response(StatusCode::ACCEPTED, &op);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/{}", op.name)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn create_sleep(State(rest): Shared, request: Request) -> Answer {
    let caller = door(&rest, &request, Role::Writer)?;
    let key = idempotency_key(request.headers())?;
    let mut message = parse::<SleepRequest>(&body_of(request).await?)?;
    if let Some(key) = &key {
        message.request_id.clone_from(key);
    }
    let Some(diagnostics) = &rest.diagnostics else {
        return Err(no_route("the Diagnostics service is off").into());
    };
    created(
        diagnostics.sleep(as_caller(&caller, message)).await,
        key.is_some(),
    )
}
