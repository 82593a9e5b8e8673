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
//! BadRequest. The HTTP status comes from
//! [`http_status`](crate::grpc::status::http_status), the one mapping.
//!
//! Creates answer 202 Accepted with a `Location`; an operation that is not
//! done carries `Retry-After`; an `Idempotency-Key` header is the
//! request_id (malformed: 400; reused with another body: 409). Server
//! streams are Server-Sent Events, raw byte streams are downloads, and an
//! upload streams its body into a client stream as it arrives.

mod answers;
pub mod binding;
pub mod bridge;
mod door;
mod files;
pub mod openapi;
mod streams;
mod transcode;

use self::door::serve;
pub use self::door::unknown_path;
pub use self::streams::HEARTBEAT;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use prost_reflect::DescriptorPool;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::warn;

use self::binding::Bindings;
use self::bridge::Bridge;
use crate::auth::Authenticator;
use crate::metrics::Metrics;

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

/// The OpenAPI document of longrun's own services, as `GET
/// /v1/openapi.json` serves it on a server without custom kinds: what the
/// TypeScript client's types are generated from (`longrun openapi`).
pub fn openapi_json() -> String {
    let mut pool = DescriptorPool::new();
    for set in [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        if let Err(e) = pool.decode_file_descriptor_set(set) {
            warn!(error = %e, "a descriptor set could not be read");
        }
    }
    serde_json::to_string_pretty(&openapi::document(&Bindings::from_pool(&pool)))
        .unwrap_or_default()
}

impl Rest {
    /// The face over `grpc`, the router of the gRPC services alone, and
    /// `direct`, the unary methods it calls without the router.
    pub fn new(
        grpc: Router,
        direct: crate::grpc::direct::Direct,
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
            bridge: Bridge::new(grpc, direct),
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

async fn openapi_document(State(rest): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        rest.openapi.clone(),
    )
        .into_response()
}
