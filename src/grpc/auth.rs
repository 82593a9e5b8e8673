//! The door: every call except health and reflection is authenticated
//! here, checked against the role its method needs, and tagged with the
//! caller, before any handler runs. Handlers read the caller with
//! [`caller`] and record mutations with [`audit`].
//!
//! Methods are classed by path: the read methods below need `reader`;
//! every other protected method (creates, cancel, delete, and any service
//! an embedder adds) needs `writer`. A role that is too low is refused
//! before the target is looked at, so the refusal says nothing about
//! whether the target exists.

// The http crate's request and response types: named apart from this
// crate's HTTP/JSON face (`src/http/`), which sits above this layer.
use ::http as http_crate;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Request, Status};
use tower::{Layer, Service};
use tracing::info;

use super::status::{not_found, not_through_the_door, permission_denied, unauthenticated};
use crate::auth::{AuthError, Authenticator, Credentials, Principal, Role};
use crate::model::TraceContext;

/// Paths that need no credentials.
const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Methods a reader may call; everything else protected needs a writer.
const READ_METHODS: [&str; 14] = [
    "/google.longrunning.Operations/GetOperation",
    "/google.longrunning.Operations/ListOperations",
    "/google.longrunning.Operations/WaitOperation",
    "/longrun.v1.OperationWatcher/WatchOperation",
    "/longrun.v1.OperationWatcher/WatchOperations",
    "/longrun.v1.OperationWatcher/WatchChanges",
    "/longrun.v1.Console/GetCaller",
    "/longrun.v1.Console/GetQueueStats",
    "/longrun.v1.ReportService/GetReport",
    "/longrun.v1.ReportService/ReadReport",
    "/longrun.v1.Notifications/ListDeliveries",
    "/longrun.v1.Schedules/GetSchedule",
    "/longrun.v1.Schedules/ListSchedules",
    "/longrun.v1.Schedules/ListRuns",
];

/// Where the dashboard's page and assets are served; they hold no data
/// (the page calls the API with the user's token).
pub const DASHBOARD_PATHS: [&str; 2] = ["/", "/ui/"];

/// Where load balancers ask whether the server is up and ready; open to
/// all, over plain HTTP.
pub const PROBE_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Methods only workers (and admins) may call.
const WORKER_PREFIX: &str = "/longrun.v1.Workers/";

/// Services only an admin may call: they act on every tenant's work.
const ADMIN_PREFIX: &str = "/longrun.v1.Queues/";

/// Where the HTTP/JSON face lives; it checks its callers itself
/// (`rest`), with the same tokens and roles.
pub const REST_PREFIX: &str = "/v1/";

/// Whether `path` is served to plain HTTP clients: the HTTP/JSON face,
/// the dashboard and the readiness probes.
fn http_path(path: &str) -> bool {
    path.starts_with(REST_PREFIX)
        || path == DASHBOARD_PATHS[0]
        || path.starts_with(DASHBOARD_PATHS[1])
        || PROBE_PATHS.contains(&path)
}

/// The role `path` needs at this door; None when it is open to all, or
/// left to the HTTP/JSON face's own door.
pub fn required_role(path: &str) -> Option<Role> {
    if OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
        || path.starts_with(REST_PREFIX)
        || path == DASHBOARD_PATHS[0]
        || path.starts_with(DASHBOARD_PATHS[1])
    {
        None
    } else if READ_METHODS.contains(&path) {
        Some(Role::Reader)
    } else if path.starts_with(WORKER_PREFIX) {
        Some(Role::Worker)
    } else if path.starts_with(ADMIN_PREFIX) {
        Some(Role::Admin)
    } else {
        Some(Role::Writer)
    }
}

/// The caller's span, from the W3C `traceparent` and `tracestate` headers
/// (gRPC metadata, or the HTTP headers the HTTP/JSON face passes on);
/// None without one, or with a malformed one.
pub fn trace<T>(request: &Request<T>) -> Option<TraceContext> {
    let header = |name| request.metadata().get(name).and_then(|v| v.to_str().ok());
    crate::telemetry::from_headers(
        header(crate::telemetry::TRACEPARENT),
        header(crate::telemetry::TRACESTATE),
    )
}

/// The authenticated caller, as handlers find it in the request.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Principal>);

/// The caller of a call that passed the door. A request that did not pass
/// it (a service mounted some other way) is refused, never let through.
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| Arc::clone(&c.0))
        .ok_or_else(not_through_the_door)
}

/// The short method name of a gRPC path, for logs.
fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Records a mutating call as one structured event: who, for which tenant,
/// which call, on what, and how it ended.
pub fn audit<T>(caller: &Principal, rpc: &str, target: &str, result: &Result<T, Status>) {
    let outcome = match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    info!(
        target: "longrun::audit",
        principal = %caller.name,
        tenant = %caller.tenant,
        rpc = %rpc,
        // Debug formatting quotes and escapes what a caller sent.
        target_name = ?target,
        outcome = ?outcome,
        "audit"
    );
}

/// The name of the operation a create call returned, for the audit log.
pub fn created_name(
    result: &Result<tonic::Response<crate::pb::google::longrunning::Operation>, Status>,
) -> &str {
    match result {
        Ok(response) => &response.get_ref().name,
        Err(_) => "",
    }
}

/// The subject CN of the verified client certificate, if one was shown.
fn client_cn<B>(request: &http_crate::Request<B>) -> Option<String> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The token of an `authorization: Bearer` header. A header that is there
/// but malformed counts as a wrong token, not a missing one.
fn bearer<B>(request: &http_crate::Request<B>) -> Result<Option<&str>, AuthError> {
    let Some(value) = request.headers().get(http_crate::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| AuthError::UnknownToken)?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(AuthError::UnknownToken),
    }
}

/// A call refused at the door, and by whom when that is known.
struct Refusal {
    principal: Option<Arc<Principal>>,
    status: Status,
}

/// Decides whether a call may go on, and as whom: the refusal is the
/// status to answer with.
pub(crate) fn admit_as<B>(
    auth: &Authenticator,
    request: &http_crate::Request<B>,
    needed: Role,
) -> Result<Arc<Principal>, Status> {
    admit(auth, request, needed).map_err(|r| r.status)
}

/// Decides whether a call may go on, and as whom.
fn admit<B>(
    auth: &Authenticator,
    request: &http_crate::Request<B>,
    needed: Role,
) -> Result<Arc<Principal>, Refusal> {
    let anonymous = |e: AuthError| Refusal {
        principal: None,
        status: unauthenticated(&e),
    };
    let principal = if auth.is_enforcing() {
        let bearer = bearer(request).map_err(anonymous)?;
        // A token decides alone; the certificate is read only without one.
        let cn = if bearer.is_none() {
            client_cn(request)
        } else {
            None
        };
        auth.authenticate(Credentials {
            bearer,
            client_cn: cn.as_deref(),
        })
    } else {
        auth.authenticate(Credentials::default())
    }
    .map_err(anonymous)?;
    if !principal.has(needed) {
        return Err(Refusal {
            status: permission_denied(&principal, needed),
            principal: Some(principal),
        });
    }
    Ok(principal)
}

/// Puts the door in front of a service.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// Authenticates with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<http_crate::Request<B>> for AuthService<S>
where
    S: Service<http_crate::Request<B>, Response = http_crate::Response<Body>>,
{
    type Response = http_crate::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http_crate::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let grpc = request
            .headers()
            .get(http_crate::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            // An HTTP client: the HTTP face, the dashboard and the probes
            // answer it (the face with a door of its own); no other path
            // is served over plain HTTP.
            if http_path(path) {
                return Either::Left(self.inner.call(request));
            }
            let (parts, body) = not_found(path).into_parts();
            return Either::Right(ready(Ok(http_crate::Response::from_parts(
                parts,
                Body::new(body),
            ))));
        }
        let Some(needed) = required_role(path) else {
            return Either::Left(self.inner.call(request));
        };
        match admit(&self.auth, &request, needed) {
            Ok(principal) => {
                request.extensions_mut().insert(Caller(principal));
                Either::Left(self.inner.call(request))
            }
            Err(Refusal { principal, status }) => {
                if needed >= Role::Writer {
                    let (name, tenant) = principal
                        .as_deref()
                        .map_or(("-", "-"), |p| (p.name.as_str(), p.tenant.as_str()));
                    info!(
                        target: "longrun::audit",
                        principal = %name,
                        tenant = %tenant,
                        rpc = %method(path),
                        outcome = ?status.code(),
                        "audit"
                    );
                }
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_classed_by_path() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_role("/google.longrunning.Operations/GetOperation"),
            Some(Role::Reader)
        );
        assert_eq!(
            required_role("/google.longrunning.Operations/CancelOperation"),
            Some(Role::Writer)
        );
        assert_eq!(required_role("/acme.Custom/Anything"), Some(Role::Writer));
        // A look-alike of an open path is not open.
        assert_eq!(
            required_role("/grpc.health.v1.HealthX/Check"),
            Some(Role::Writer)
        );
    }

    #[test]
    fn bearer_headers_are_read_strictly() {
        let request = |value: &str| {
            http_crate::Request::builder()
                .header("authorization", value)
                .body(())
                .unwrap()
        };
        assert_eq!(bearer(&request("Bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer(&request("bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer(&request("Basic abc")), Err(AuthError::UnknownToken));
        assert_eq!(bearer(&request("Bearer ")), Err(AuthError::UnknownToken));
        assert_eq!(bearer(&http_crate::Request::new(())), Ok(None));
    }
}
