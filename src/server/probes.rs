//! Whether the server can take work, told two ways: the gRPC health
//! service (per service name) and, for load balancers that speak plain
//! HTTP, `GET /healthz` (the process is up: always 200) and `GET /readyz`
//! (200 while SERVING, 503 otherwise: during recovery, while the store
//! cannot take writes, and from the start of a shutdown).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::warn;

use crate::grpc::auth::PROBE_PATHS as PATHS;
use crate::store::{Health, OperationStore};

/// How often the store's state is looked at, so that readiness follows the
/// disk and the database (both ways) without waiting for a write.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The server's readiness, as both faces report it.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    names: Vec<&'static str>,
    ready: watch::Sender<bool>,
}

impl Readiness {
    /// Reports through `reporter` for every one of `names`; not ready yet.
    pub fn new(reporter: HealthReporter, names: Vec<&'static str>) -> Self {
        Self {
            reporter,
            names,
            ready: watch::channel(false).0,
        }
    }

    /// Sets every service's status.
    pub async fn set(&self, status: ServingStatus) {
        self.ready.send_replace(status == ServingStatus::Serving);
        for name in &self.names {
            self.reporter.set_service_status(*name, status).await;
        }
    }

    /// The routes `/healthz` and `/readyz`.
    pub fn router(&self) -> Router {
        let ready = self.ready.subscribe();
        Router::new()
            .route(
                PATHS[0],
                get(|| async { answer(StatusCode::OK, "SERVING") }),
            )
            .route(
                PATHS[1],
                get(move || {
                    let serving = *ready.borrow();
                    async move {
                        if serving {
                            answer(StatusCode::OK, "SERVING")
                        } else {
                            answer(StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING")
                        }
                    }
                }),
            )
    }

    /// Keeps readiness in step with the store's: SERVING while it takes
    /// writes, NOT_SERVING while its disk is full or it cannot be reached
    /// (reads still work), until `stop` fires.
    pub async fn follow_store(self, ops: Arc<dyn OperationStore>, stop: CancellationToken) {
        let mut health = ops.health();
        loop {
            let now = *health.borrow_and_update();
            let status = match now {
                Health::Writable => ServingStatus::Serving,
                Health::Full => {
                    warn!("the store's disk is full: NOT_SERVING, new operations refused");
                    ServingStatus::NotServing
                }
                Health::Unavailable => {
                    warn!(
                        "the store cannot take writes (the database cannot be reached, or the disk failed): NOT_SERVING"
                    );
                    ServingStatus::NotServing
                }
            };
            self.set(status).await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = health.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(PROBE_EVERY) => ops.probe().await,
                }
            }
        }
    }
}

fn answer(status: StatusCode, word: &'static str) -> Response {
    let mut response = (status, format!("{{\"status\": \"{word}\"}}\n")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
