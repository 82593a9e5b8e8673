//! Routes and the door: every `/v1/` request finds its binding, passes the
//! host and origin checks and the same bearer tokens and roles as gRPC,
//! and is handed to the part of the face that answers its shape; a path
//! nothing serves answers 404 (or UNIMPLEMENTED to a gRPC client).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::answers::{Answer, Refused, answered, result};
use super::binding::{Binding, Found, Shape};
use super::bridge::TraceHeaders;
use super::files::{download, upload};
use super::streams::events;
use super::transcode::{body_of, idempotency_key, last_event_id, message};
use super::{Rest, Shared};
use crate::auth::{Principal, Role};
use crate::grpc::auth::{admit_as, required_role};
use crate::grpc::status::{invalid_field, no_route, refused};
use crate::model::Reason;

/// Every `/v1/` request: finds its binding and answers through it.
pub(super) async fn serve(State(rest): Shared, request: Request) -> Response {
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
        let status = crate::grpc::status::unimplemented(
            Reason::UnknownMethod,
            format!("this server has no method {path}"),
        );
        return status.into_http::<Body>().into_response();
    }
    crate::grpc::status::not_found(path).map(Body::from)
}

pub(super) fn wrong_method(allowed: &[Method], method: &Method, path: &str) -> Refused {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut refused = Refused::with(
        &crate::grpc::status::unimplemented(
            Reason::MethodNotAllowed,
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
    pub(super) fn check_host(&self, request: &Request) -> Result<(), Refused> {
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
                Reason::HostNotAllowed,
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
    pub(super) fn check_origin(&self, request: &Request) -> Result<(), Refused> {
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
                Reason::CrossOriginRefused,
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
pub(super) fn host_allowed(host: &str, allowed: &[String]) -> bool {
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
pub(super) fn has_media_type(request: &Request, wanted: &str) -> Option<bool> {
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
pub(super) fn wrong_media_type(wanted: &str) -> Refused {
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
pub(super) fn door(
    rest: &Rest,
    request: &Request,
    binding: &Binding,
) -> Result<Arc<Principal>, Refused> {
    let role = required_role(binding.grpc_path()).unwrap_or(Role::Writer);
    admit_as(&rest.auth, request, role).map_err(Refused::from)
}

pub(super) async fn route(
    rest: &Rest,
    binding: &Binding,
    fields: Vec<(String, String)>,
    request: Request,
) -> Answer {
    let caller = door(rest, &request, binding)?;
    let key = idempotency_key(request.headers())?;
    let trace = TraceHeaders::of(request.headers());
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
            let answer = rest.bridge.unary(&caller, path, message, &trace).await;
            answered(rest, binding, answer)
        }
        Shape::Result => result(rest, &caller, path, message).await,
        Shape::Download => download(rest, binding, &caller, &fields, message).await,
        Shape::Events => events(rest, binding, &caller, message, last_event).await,
    }
}
