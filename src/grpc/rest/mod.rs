//! The HTTP/JSON face: every method the protos bind with `google.api.http`
//! (`binding`), served on the gRPC listener by calling the very same gRPC
//! services in-process (`bridge`), and documented as OpenAPI 3.1
//! (`openapi`) from the same bindings.
//!
//! A request finds its binding, passes the door (the same bearer tokens
//! and roles as gRPC: the bound gRPC method's role), becomes the method's
//! request message from its path, query and JSON body (the proto3 JSON
//! mapping), and its answer is written back as JSON, or the error as
//! Google's JSON error body (AIP-193) with the status's ErrorInfo and
//! BadRequest. The HTTP status comes from [`http_status`], the one mapping.
//!
//! Creates answer 202 Accepted with a `Location`; an operation that is not
//! done carries `Retry-After`; an `Idempotency-Key` header is the
//! request_id (malformed: 400; reused with another body: 409). Server
//! streams are Server-Sent Events, raw byte streams are downloads, and an
//! upload streams its body into a client stream as it arrives.

pub mod binding;
pub mod bridge;
pub mod openapi;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::{StreamExt, stream};
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use tonic::{Code, Status};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::warn;

use self::binding::{Binding, Bindings, Found, Shape};
use self::bridge::Bridge;
use super::auth::{admit_as, required_role};
use super::status::{body_too_slow, from_rpc, garbled, invalid_field, no_route, refused};
use crate::auth::{Authenticator, Principal, Role};
use crate::metrics::Metrics;
use crate::pb;
use crate::pb::google::longrunning::Operation;
use crate::pb::google::longrunning::operation::Result as OpResult;
use crate::pb::longrun::v1::{OperationChange, OperationMetadata, operation_change};

/// How often an idle event stream sends a comment, so that proxies and
/// clients see it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// What the face needs.
pub struct Rest {
    bridge: Bridge,
    auth: Arc<Authenticator>,
    pool: DescriptorPool,
    bindings: Bindings,
    metrics: Arc<Metrics>,
    max_body: usize,
    body_timeout: Duration,
    origins: Origins,
    allowed_hosts: Vec<String>,
    openapi: Bytes,
}

/// How the face is set up.
pub struct RestConfig {
    /// The encoded FileDescriptorSets of every service served: their
    /// annotations are the routes.
    pub descriptors: Vec<&'static [u8]>,
    /// The largest JSON body read, in bytes.
    pub max_body: usize,
    /// The longest a JSON body may take to arrive.
    pub body_timeout: Duration,
    /// Origins browsers may call from (CORS), besides the server's own;
    /// `*` for any.
    pub cors_origins: Vec<String>,
    /// Host names a server without authentication answers to, besides IP
    /// addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
}

/// The origins a browser may call from.
#[derive(Clone, Debug)]
enum Origins {
    /// Only the server's own.
    Own,
    /// The server's own and these.
    Listed(Vec<HeaderValue>),
    /// Any (`--cors-origin '*'`).
    Any,
}

impl Origins {
    fn parse(origins: &[String]) -> Result<Self, String> {
        if origins.is_empty() {
            return Ok(Origins::Own);
        }
        if origins.iter().any(|o| o == "*") {
            if origins.len() > 1 {
                return Err("'*' allows every origin; give it alone".into());
            }
            return Ok(Origins::Any);
        }
        let origin_like = |o: &str| {
            o.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.contains(['/', ' ', '*'])
            })
        };
        origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .ok()
                    .filter(|_| origin_like(o))
                    .ok_or_else(|| {
                        format!(
                            "{o:?} is not an origin: a scheme and a host, such as https://app.example.com"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Origins::Listed)
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Origins::Own => false,
            Origins::Listed(list) => list.contains(origin),
            Origins::Any => true,
        }
    }
}

impl Rest {
    /// The face over `grpc`, the router of the gRPC services alone.
    pub fn new(
        grpc: Router,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        config: &RestConfig,
    ) -> Result<Self, String> {
        let mut pool = DescriptorPool::new();
        for set in &config.descriptors {
            if let Err(e) = pool.decode_file_descriptor_set(*set) {
                warn!(error = %e, "a descriptor set could not be read; its HTTP routes are left out");
            }
        }
        let bindings = Bindings::from_pool(&pool);
        let openapi = Bytes::from(openapi::document(&bindings).to_string());
        Ok(Self {
            bridge: Bridge::new(grpc),
            auth,
            pool,
            bindings,
            metrics,
            max_body: config.max_body,
            body_timeout: config.body_timeout,
            origins: Origins::parse(&config.cors_origins)?,
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            openapi,
        })
    }
}

/// Marks every answer of the HTTP face: browsers must not guess another
/// content type than the one sent.
async fn no_sniffing(response: Response) -> Response {
    no_sniff(response)
}

fn no_sniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The routes, to be merged with the gRPC services' router.
pub fn router(rest: Rest) -> Router {
    let origins = rest.origins.clone();
    let router = Router::new()
        .route("/v1/openapi.json", get(openapi_document))
        .route("/v1/{*path}", any(serve))
        .with_state(Arc::new(rest))
        .layer(axum::middleware::map_response(no_sniffing));
    let allowed = match origins {
        Origins::Own => return router,
        Origins::Listed(origins) => AllowOrigin::list(origins),
        Origins::Any => AllowOrigin::any(),
    };
    router.layer(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
                header::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::LOCATION, header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
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

/// What a route answers.
type Answer = Result<Response, Refused>;

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

/// A status as Google's JSON error object, under `http`.
fn error_json(status: &Status, http: StatusCode) -> serde_json::Value {
    let details = pb::google::rpc::Status::decode(status.details())
        .map(|rpc| pb::to_json(&rpc)["details"].clone())
        .ok()
        .filter(|d| d.is_array())
        .unwrap_or_else(|| serde_json::json!([]));
    serde_json::json!({
        "error": {
            "code": http.as_u16(),
            "message": status.message(),
            "status": http_status(status.code()).1,
            "details": details,
        }
    })
}

/// A status as Google's JSON error body, under `http` (its mapped status
/// unless the caller has a more exact one).
fn error_body(status: &Status, http: Option<StatusCode>) -> Response {
    let http = http.unwrap_or(http_status(status.code()).0);
    let mut response = (http, axum::Json(error_json(status, http))).into_response();
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

/// How long a poller should wait before asking about `op` again, in whole
/// seconds, at least 1: until the operation's estimated end, at most a
/// minute; 1 s when nothing is known yet.
fn retry_after(op: &Operation) -> Duration {
    let estimate = op
        .metadata
        .as_ref()
        .and_then(|any| any.to_msg::<OperationMetadata>().ok())
        .and_then(|meta| pb::system_time(meta.estimated_end_time.as_ref()?))
        .and_then(|end| end.duration_since(SystemTime::now()).ok());
    estimate
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The version (change sequence) of an operation, from its metadata.
fn version(op: &Operation) -> Option<i64> {
    op.metadata
        .as_ref()
        .and_then(|any| any.to_msg::<OperationMetadata>().ok())
        .map(|meta| meta.version)
}

impl Rest {
    /// An encoded message of type `descriptor` as its JSON.
    fn to_json(&self, descriptor: &MessageDescriptor, bytes: &[u8]) -> serde_json::Value {
        DynamicMessage::decode(descriptor.clone(), bytes)
            .map(|m| pb::json::message(&m))
            .unwrap_or(serde_json::Value::Null)
    }

    /// The message an Any holds, decoded through the served descriptors.
    fn unpack(&self, any: &prost_types::Any) -> Option<DynamicMessage> {
        let name = any.type_url.rsplit('/').next()?;
        let descriptor = self.pool.get_message_by_name(name)?;
        DynamicMessage::decode(descriptor, any.value.as_slice()).ok()
    }

    /// An operation as JSON, `code`, with `Retry-After` while it is not
    /// done.
    fn operation(&self, code: StatusCode, op: &Operation, bytes: &[u8]) -> Response {
        let descriptor = self
            .pool
            .get_message_by_name("google.longrunning.Operation");
        let body = descriptor.map_or(serde_json::Value::Null, |d| self.to_json(&d, bytes));
        let mut response = (code, axum::Json(body)).into_response();
        if !op.done {
            insert_retry_after(response.headers_mut(), retry_after(op));
        }
        response
    }
}

async fn openapi_document(State(rest): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        rest.openapi.clone(),
    )
        .into_response()
}

/// Every `/v1/` request: finds its binding and answers through it.
async fn serve(State(rest): Shared, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if let Err(refused) = rest
        .check_host(&request)
        .and_then(|()| rest.check_origin(&request))
    {
        let response = *refused.0;
        rest.metrics
            .http(method.as_str(), "refused", response.status().as_u16());
        return response;
    }
    let (route, answer) = match rest.bindings.find(&method, &path) {
        Found::Route(binding, fields) => (
            binding.template.text(),
            route(&rest, binding, fields, request).await,
        ),
        Found::WrongMethod(allowed) => ("unmatched", Err(wrong_method(&allowed, &method, &path))),
        Found::None => (
            "unmatched",
            Err(no_route(format!("there is no route {method} {path}")).into()),
        ),
    };
    let response = answer.unwrap_or_else(|refused| *refused.0);
    rest.metrics
        .http(method.as_str(), route, response.status().as_u16());
    response
}

/// What answers a path nothing serves: 404 for an HTTP client, and
/// UNIMPLEMENTED for a gRPC one (as tonic would).
pub async fn unknown_path(request: Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    let path = request.uri().path();
    if grpc {
        let status = super::status::unimplemented(
            "UNKNOWN_METHOD",
            format!("this server has no method {path}"),
        );
        return status.into_http::<Body>().into_response();
    }
    not_found(path)
}

/// 404, and why, for an HTTP request of a path nothing serves over HTTP.
pub fn not_found(path: &str) -> Response {
    no_sniff(error_body(
        &no_route(format!("nothing is served at {path}")),
        None,
    ))
}

fn wrong_method(allowed: &[Method], method: &Method, path: &str) -> Refused {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut refused = Refused::with(
        &super::status::unimplemented(
            "METHOD_NOT_ALLOWED",
            format!("{path} takes {}, not {method}", names.join(" or ")),
        ),
        Some(StatusCode::METHOD_NOT_ALLOWED),
    );
    if let Ok(allow) = HeaderValue::from_str(&names.join(", ")) {
        refused.0.headers_mut().insert(header::ALLOW, allow);
    }
    refused
}

impl Rest {
    /// A server without authentication answers only to the names a browser
    /// of this machine or the operator uses: an IP address, `localhost`,
    /// or a name `--allowed-host` lists. A page that rebinds its own name
    /// to this server's address is refused, so it reads nothing.
    fn check_host(&self, request: &Request) -> Result<(), Refused> {
        if self.auth.is_enforcing() {
            return Ok(());
        }
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_ascii_lowercase();
        if host_allowed(&host, &self.allowed_hosts) {
            return Ok(());
        }
        Err(Refused::with(
            &refused(
                "HOST_NOT_ALLOWED",
                format!(
                    "this server runs without authentication and answers only to IP addresses, localhost and the names --allowed-host lists, not {host:?}"
                ),
            ),
            None,
        ))
    }

    /// A change asked from a page of another origin is refused unless
    /// `--cors-origin` allows that origin: a browser's cookies, client
    /// certificate or network position never vouch for another site.
    fn check_origin(&self, request: &Request) -> Result<(), Refused> {
        if matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        ) {
            return Ok(());
        }
        let Some(origin) = request.headers().get(header::ORIGIN) else {
            return Ok(());
        };
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| Some(authority) == host);
        if same || self.origins.allows(origin) {
            return Ok(());
        }
        Err(Refused::with(
            &refused(
                "CROSS_ORIGIN_REFUSED",
                format!(
                    "a change from the origin {origin:?} is refused; --cors-origin lists the origins that may call"
                ),
            ),
            None,
        ))
    }
}

/// Whether a server without authentication answers to `host` (a Host
/// header: a name or address, and perhaps a port).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // An IPv6 address: [::1]:50051.
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.iter().any(|a| a == name || a == host)
}

/// Whether `request` says its body is of the media type `wanted`
/// (`application/json` also takes `application/...+json`).
fn has_media_type(request: &Request, wanted: &str) -> Option<bool> {
    let value = request.headers().get(header::CONTENT_TYPE)?;
    let media = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    Some(
        media == wanted
            || (wanted == "application/json"
                && media.starts_with("application/")
                && media.ends_with("+json")),
    )
}

/// A request whose body is not of the type the route reads.
fn wrong_media_type(wanted: &str) -> Refused {
    Refused::with(
        &invalid_field(
            "Content-Type",
            format!("this route reads {wanted}; send Content-Type: {wanted}"),
        ),
        Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
    )
}

/// The caller of `request`, checked at the door for the role the bound
/// gRPC method needs.
fn door(rest: &Rest, request: &Request, binding: &Binding) -> Result<Arc<Principal>, Refused> {
    let role = required_role(&binding.grpc_path()).unwrap_or(Role::Writer);
    admit_as(&rest.auth, request, role).map_err(Refused::from)
}

async fn route(
    rest: &Rest,
    binding: &Binding,
    fields: Vec<(String, String)>,
    request: Request,
) -> Answer {
    let caller = door(rest, &request, binding)?;
    let key = idempotency_key(request.headers())?;
    let query = request.uri().query().map(str::to_owned);
    // A body is read only as the type the route expects, so that a form
    // or a text/plain request from another site is never taken for one.
    match binding.shape {
        Shape::Upload if has_media_type(&request, "text/csv") != Some(true) => {
            return Err(wrong_media_type("text/csv"));
        }
        Shape::Upload => {}
        _ if has_media_type(&request, "application/json") == Some(false) => {
            return Err(wrong_media_type("application/json"));
        }
        _ => {}
    }
    let typed = request.headers().contains_key(header::CONTENT_TYPE);
    if binding.shape == Shape::Upload {
        let first = message(binding, &fields, query.as_deref(), &[], key.as_deref())?;
        return upload(rest, binding, &caller, first, request).await;
    }
    // A reconnecting event stream sends the last event's id: a cursor to
    // resume after, for a method that takes one, else a version to skip
    // to.
    let resumes = binding
        .rpc
        .input()
        .get_field_by_name("resume_after")
        .is_some();
    let resume = request
        .headers()
        .get("last-event-id")
        .filter(|_| resumes)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
    let last_event = if resumes {
        None
    } else {
        last_event_id(request.headers())?
    };
    let body = if binding.body.is_empty() {
        Bytes::new()
    } else {
        body_of(request, rest.max_body, rest.body_timeout).await?
    };
    // A body without a type is not read as JSON either; no body at all
    // (a bare POST to :cancel) needs none.
    if !typed && !body.iter().all(u8::is_ascii_whitespace) {
        return Err(wrong_media_type("application/json"));
    }
    let mut fields = fields;
    if let Some(resume) = resume {
        fields.push(("resume_after".to_owned(), resume));
    }
    let message = message(binding, &fields, query.as_deref(), &body, key.as_deref())?;
    let path = binding.grpc_path();
    match binding.shape {
        Shape::Unary | Shape::Upload => {
            let answer = rest.bridge.unary(&caller, &path, message).await;
            answered(rest, binding, answer)
        }
        Shape::Result => result(rest, &caller, &path, message).await,
        Shape::Download => download(rest, binding, &caller, &fields, message).await,
        Shape::Events => events(rest, binding, &caller, message, last_event).await,
    }
}

/// Reads a JSON body of at most `limit` bytes, within `within`.
async fn body_of(request: Request, limit: usize, within: Duration) -> Result<Bytes, Refused> {
    let read = axum::body::to_bytes(request.into_body(), limit);
    match tokio::time::timeout(within, read).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(Refused::with(
            &invalid_field("body", format!("the body could not be read: {e}")),
            Some(StatusCode::PAYLOAD_TOO_LARGE),
        )),
        Err(_) => Err(Refused::with(
            &body_too_slow(within),
            Some(StatusCode::REQUEST_TIMEOUT),
        )),
    }
}

/// The bound method's request message, encoded: from the path's fields,
/// the query parameters, the JSON body and the Idempotency-Key.
fn message(
    binding: &Binding,
    fields: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
    key: Option<&str>,
) -> Result<Bytes, Refused> {
    let input = binding.rpc.input();
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let mut object = serde_json::Map::new();
    match binding.body.as_str() {
        "" => {}
        "*" if blank => {}
        "*" => match serde_json::from_slice(body) {
            Ok(serde_json::Value::Object(map)) => object = map,
            Ok(_) => return Err(invalid_field("body", "the body must be a JSON object").into()),
            Err(e) => {
                return Err(invalid_field("body", format!("the body is not JSON: {e}")).into());
            }
        },
        field => {
            if !blank && let Some(descriptor) = input.get_field_by_name(field) {
                let value = serde_json::from_slice(body).map_err(|e| {
                    Refused::from(invalid_field("body", format!("the body is not JSON: {e}")))
                })?;
                object.insert(descriptor.json_name().to_owned(), value);
            }
        }
    }
    if let Some(query) = query {
        let pairs: Vec<(String, String)> =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
                &format!("/?{query}").parse().unwrap_or_default(),
            )
            .map(|q| q.0)
            .map_err(|e| Refused::from(invalid_field("query", e.body_text())))?;
        for (name, value) in pairs {
            let Some(field) = input
                .get_field_by_name(&name)
                .or_else(|| input.get_field_by_json_name(&name))
                .filter(|_| binding.body != "*")
            else {
                return Err(invalid_field(
                    &name,
                    format!("{} takes no query parameter {name:?}", binding.rpc.name()),
                )
                .into());
            };
            let value = match (field.kind(), value.as_str()) {
                (prost_reflect::Kind::Bool, "true") => serde_json::Value::Bool(true),
                (prost_reflect::Kind::Bool, "false") => serde_json::Value::Bool(false),
                _ => serde_json::Value::String(value),
            };
            // Each parameter is checked alone, so that a bad one is named.
            let mut alone = serde_json::Map::new();
            let single = if field.is_list() {
                serde_json::Value::Array(vec![value.clone()])
            } else {
                value.clone()
            };
            alone.insert(field.json_name().to_owned(), single);
            if let Err(e) =
                DynamicMessage::deserialize(input.clone(), serde_json::Value::Object(alone))
            {
                return Err(invalid_field(&name, format!("{name}: {e}")).into());
            }
            let slot = object.entry(field.json_name().to_owned());
            if field.is_list() {
                let list = slot.or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let serde_json::Value::Array(items) = list {
                    items.push(value);
                }
            } else {
                *slot.or_insert(serde_json::Value::Null) = value;
            }
        }
    }
    for (field, value) in fields {
        if let Some(descriptor) = input.get_field_by_name(field) {
            object.insert(
                descriptor.json_name().to_owned(),
                serde_json::Value::String(value.clone()),
            );
        }
    }
    if let (Some(key), Some(field)) = (key, input.get_field_by_name("request_id")) {
        object.insert(
            field.json_name().to_owned(),
            serde_json::Value::String(key.to_owned()),
        );
    }
    let message =
        DynamicMessage::deserialize(input, serde_json::Value::Object(object)).map_err(|e| {
            Refused::from(invalid_field(
                "body",
                format!("not a valid {}: {e}", binding.rpc.input().name()),
            ))
        })?;
    Ok(message.encode_to_vec().into())
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

/// The `Last-Event-ID` a reconnecting event stream sends.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, Refused> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            invalid_field(
                "Last-Event-ID",
                "Last-Event-ID must be the id of an event this stream sent",
            )
            .into()
        })
}

/// A unary answer: JSON; an operation with `Retry-After` while not done,
/// and 202 with a `Location` when the method created it. (A reused
/// Idempotency-Key with another body is ALREADY_EXISTS: 409.)
fn answered(rest: &Rest, binding: &Binding, answer: Result<Bytes, Status>) -> Answer {
    let bytes = answer?;
    let output = binding.rpc.output();
    if output.full_name() != Operation::full_name() {
        return Ok((StatusCode::OK, axum::Json(rest.to_json(&output, &bytes))).into_response());
    }
    let op = Operation::decode(bytes.as_ref())
        .map_err(|e| garbled(format!("an undecodable operation: {e}")))?;
    if !binding.creates() {
        // Always 200 with the operation: Google's REST clients rely on it.
        return Ok(rest.operation(StatusCode::OK, &op, &bytes));
    }
    let mut response = rest.operation(StatusCode::ACCEPTED, &op, &bytes);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/{}", op.name)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The status monitor: 202 while the operation runs, 303 to its result
/// resource's download, 200 with a response that names none, or the
/// error's own status and body.
async fn result(rest: &Rest, caller: &Arc<Principal>, path: &str, message: Bytes) -> Answer {
    let bytes = rest.bridge.unary(caller, path, message).await?;
    let op = Operation::decode(bytes.as_ref())
        .map_err(|e| garbled(format!("an undecodable operation: {e}")))?;
    if !op.done {
        return Ok(rest.operation(StatusCode::ACCEPTED, &op, &bytes));
    }
    let response = match &op.result {
        Some(OpResult::Error(error)) => return Err(failed(&op.name, error).into()),
        Some(OpResult::Response(any)) => rest.unpack(any),
        None => None,
    };
    let Some(response) = response else {
        return Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response());
    };
    let download = response
        .get_field_by_name("name")
        .and_then(|name| name.as_str().map(|n| format!("/v1/{n}:download")))
        .filter(|target| {
            matches!(
                rest.bindings.find(&Method::GET, target),
                Found::Route(b, _) if b.shape == Shape::Download
            )
        });
    match download {
        Some(target) => {
            let mut see_other = StatusCode::SEE_OTHER.into_response();
            if let Ok(location) = HeaderValue::from_str(&target) {
                see_other.headers_mut().insert(header::LOCATION, location);
            }
            Ok(see_other)
        }
        None => Ok((StatusCode::OK, axum::Json(pb::json::message(&response))).into_response()),
    }
}

/// The status a failed (or cancelled) operation's `:result` answers with:
/// its own error, with its ErrorInfo saying that it is the operation's
/// outcome (`operation` and `operation_state` in its metadata), so that a
/// NOT_FOUND the work ended with is told from a missing operation.
fn failed(name: &str, error: &pb::google::rpc::Status) -> Status {
    use pb::google::rpc::ErrorInfo;
    let mut error = error.clone();
    let state = if error.code == Code::Cancelled as i32 {
        "CANCELLED"
    } else {
        "FAILED"
    };
    let info_at = error
        .details
        .iter()
        .position(|d| d.type_url == ErrorInfo::type_url());
    let mut info = info_at
        .and_then(|at| ErrorInfo::decode(error.details[at].value.as_slice()).ok())
        .unwrap_or_else(|| ErrorInfo {
            reason: "OPERATION_FAILED".into(),
            domain: super::status::DOMAIN.into(),
            ..ErrorInfo::default()
        });
    info.metadata.insert("operation".into(), name.to_owned());
    info.metadata.insert("operation_state".into(), state.into());
    let packed = prost_types::Any {
        type_url: ErrorInfo::type_url(),
        value: info.encode_to_vec(),
    };
    match info_at {
        Some(at) => error.details[at] = packed,
        None => error.details.insert(0, packed),
    }
    from_rpc(&error)
}

/// The media type of a file format named by an enum value.
fn media_type(format: &str) -> &'static str {
    match format {
        "CSV" => "text/csv; charset=utf-8",
        "JSON" => "application/json",
        "PDF" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// A download: the stream's bytes as the body. Its type, length and
/// checksum come from the resource's record, the GET of the same path
/// without the verb, when there is one (a report's file has its report).
async fn download(
    rest: &Rest,
    binding: &Binding,
    caller: &Arc<Principal>,
    fields: &[(String, String)],
    message: Bytes,
) -> Answer {
    let mut headers = HeaderMap::new();
    let resource = fields.first().map(|(_, v)| format!("/v1/{v}"));
    if let Some(Found::Route(record, _)) = resource
        .as_deref()
        .map(|r| rest.bindings.find(&Method::GET, r))
        && record.shape == Shape::Unary
    {
        let bytes = rest
            .bridge
            .unary(caller, &record.grpc_path(), message.clone())
            .await?;
        if let Ok(record) = DynamicMessage::decode(record.rpc.output(), bytes.as_ref()) {
            describe_file(&record, &mut headers);
        }
    }
    let output = binding.rpc.output();
    let chunks = rest
        .bridge
        .server_streaming(caller, &binding.grpc_path(), message)
        .await?;
    let body = Body::from_stream(chunks.map(move |chunk| {
        let chunk = chunk?;
        let message = DynamicMessage::decode(output.clone(), chunk.as_ref())
            .map_err(|e| garbled(format!("an undecodable chunk: {e}")))?;
        Ok::<_, Status>(
            message
                .fields()
                .find_map(|(_, v)| v.as_bytes().cloned())
                .unwrap_or_default(),
        )
    }));
    let mut response = (StatusCode::OK, body).into_response();
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    response.headers_mut().extend(headers);
    Ok(response)
}

/// Headers for a file from its record: `format` gives the type,
/// `size_bytes` the length, `sha256` the ETag.
fn describe_file(record: &DynamicMessage, headers: &mut HeaderMap) {
    let descriptor = record.descriptor();
    if let Some(field) = descriptor.get_field_by_name("format")
        && let prost_reflect::Kind::Enum(kind) = field.kind()
        && let Some(number) = record.get_field(&field).as_enum_number()
        && let Some(value) = kind.get_value(number)
    {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(media_type(value.name())),
        );
        let extension = value.name().to_ascii_lowercase();
        let stem = record
            .get_field_by_name("name")
            .and_then(|n| n.as_str().map(|s| s.replace('/', "-")))
            .unwrap_or_else(|| "file".into());
        if let Ok(value) =
            HeaderValue::from_str(&format!("attachment; filename=\"{stem}.{extension}\""))
        {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    if let Some(Value::I64(size)) = record
        .get_field_by_name("size_bytes")
        .map(std::borrow::Cow::into_owned)
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if let Some(sha) = record
        .get_field_by_name("sha256")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|s| !s.is_empty())
        && let Ok(value) = HeaderValue::from_str(&format!("\"{sha}\""))
    {
        headers.insert(header::ETAG, value);
    }
}

/// A server stream as Server-Sent Events: one event per message, an
/// operation's with its version as the id (events at or below
/// `last_event` are skipped: the client has them), an `error` event if the
/// stream fails, and a heartbeat comment every [`HEARTBEAT`].
async fn events(
    rest: &Rest,
    binding: &Binding,
    caller: &Arc<Principal>,
    message: Bytes,
    last_event: Option<i64>,
) -> Answer {
    let messages = rest
        .bridge
        .server_streaming(caller, &binding.grpc_path(), message)
        .await?;
    let output = binding.rpc.output();
    let operations = output.full_name() == Operation::full_name();
    let changes = output.full_name() == OperationChange::full_name();
    let pool = rest.pool.clone();
    let events = messages.filter_map(move |item| {
        let event = match item {
            Ok(bytes) if changes => Some(change_event(&pool, &bytes)),
            Ok(bytes) => {
                let id = operations
                    .then(|| Operation::decode(bytes.as_ref()).ok())
                    .flatten()
                    .as_ref()
                    .and_then(version);
                if let (Some(id), Some(last)) = (id, last_event)
                    && id <= last
                {
                    None
                } else {
                    let json = pool
                        .get_message_by_name(output.full_name())
                        .and_then(|d| DynamicMessage::decode(d, bytes.as_ref()).ok())
                        .map(|m| pb::json::message(&m).to_string())
                        .unwrap_or_else(|| "null".into());
                    let event = Event::default().data(json);
                    Some(match id {
                        Some(id) => event.id(id.to_string()),
                        None => event,
                    })
                }
            }
            Err(status) => {
                let http = http_status(status.code()).0;
                Some(
                    Event::default()
                        .event("error")
                        .data(error_json(&status, http).to_string()),
                )
            }
        };
        std::future::ready(event.map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}

/// A change of a stream of all changes as an event: its cursor as the id,
/// its type as the event's name (none for an update: a plain message), the
/// operation as the data.
fn change_event(pool: &DescriptorPool, bytes: &[u8]) -> Event {
    let Ok(change) = OperationChange::decode(bytes) else {
        return Event::default()
            .event("error")
            .data(r#"{"error": {"message": "an undecodable change"}}"#);
    };
    // An update is a plain message (what EventSource's onmessage hears);
    // the others are named.
    let r#type =
        operation_change::Type::try_from(change.r#type).unwrap_or(operation_change::Type::Updated);
    let data = change
        .operation
        .as_ref()
        .and_then(|op| {
            let descriptor = pool.get_message_by_name(Operation::full_name().as_str())?;
            DynamicMessage::decode(descriptor, op.encode_to_vec().as_slice()).ok()
        })
        .map_or_else(|| "{}".to_owned(), |m| pb::json::message(&m).to_string());
    let event = Event::default().id(change.cursor).data(data);
    match r#type {
        operation_change::Type::Updated | operation_change::Type::Unspecified => event,
        named => event.event(named.as_str_name().to_ascii_lowercase()),
    }
}

/// An upload: `first` (the request's fields) and then one message per
/// piece of the body, as it arrives, into the bound client stream. A body
/// that breaks off fails the call, so a cut-off upload is never taken for
/// a whole one.
async fn upload(
    rest: &Rest,
    binding: &Binding,
    caller: &Arc<Principal>,
    first: Bytes,
    request: Request,
) -> Answer {
    let input = binding.rpc.input();
    let Some(field) = input.get_field_by_name(&binding.body) else {
        return Err(no_route("the upload's body field is gone").into());
    };
    let (broke, broken) = tokio::sync::oneshot::channel::<String>();
    let pieces = request.into_body().into_data_stream();
    let messages = stream::unfold((pieces, Some(broke)), move |(mut pieces, mut broke)| {
        let input = input.clone();
        let field = field.clone();
        async move {
            match pieces.next().await {
                Some(Ok(piece)) => {
                    let mut message = DynamicMessage::new(input);
                    message.set_field(&field, Value::Bytes(piece));
                    Some((Bytes::from(message.encode_to_vec()), (pieces, broke)))
                }
                Some(Err(e)) => {
                    if let Some(broke) = broke.take() {
                        let _ = broke.send(e.to_string());
                    }
                    // Never ends: the call is dropped instead.
                    std::future::pending().await
                }
                None => None,
            }
        }
    });
    let messages = stream::once(std::future::ready(first)).chain(messages);
    let path = binding.grpc_path();
    let call = rest.bridge.client_streaming(caller, &path, messages);
    tokio::select! {
        answer = call => answered(rest, binding, answer),
        Ok(error) = broken => Err(Refused::with(
            &invalid_field("body", format!("the upload broke off: {error}")),
            None,
        )),
    }
}
