//! Request limits that tonic enforces before a handler runs, reported the
//! way every other bad input is: INVALID_ARGUMENT with details.
//!
//! tonic refuses a message over the size limit with OUT_OF_RANGE and a bare
//! message. This response mapper, applied to every route, rewrites that
//! status in place.

// The http crate's request and response types: named apart from this
// crate's HTTP/JSON face (`src/http/`), which sits above this layer.
use ::http as http_crate;

use tonic::Status;
use tonic::body::Body;

use super::status::message_too_large;

const TOO_LARGE: &str = "message length too large";

/// Rewrites tonic's "message too large" status as INVALID_ARGUMENT with an
/// ErrorInfo (reason MESSAGE_TOO_LARGE) and a BadRequest; leaves every
/// other response alone.
pub fn explain_limit_errors(
    mut response: http_crate::Response<Body>,
) -> http_crate::Response<Body> {
    let is_out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if !is_out_of_range {
        return response;
    }
    let Some(original) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if !original.message().contains(TOO_LARGE) {
        return response;
    }
    let replacement = message_too_large(original.message());
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if replacement.add_header(headers).is_err() {
        // Keep the original status rather than send none.
        let _ = original.add_header(headers);
    }
    response
}
