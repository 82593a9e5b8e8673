//! The Prometheus scrape endpoint: `GET /metrics` on its own listener
//! (`--metrics-listen`, loopback by default), so that metrics need no
//! credentials and are not exposed where the API is. A scrape first asks
//! the store what is unfinished and how the limits are used, for the queue
//! and limit gauges, then renders.

use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::engine::Engine;
use crate::metrics::{CONTENT_TYPE, LimitGauge};
use crate::model::Scope;

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, engine: Engine, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(engine);
    let stopped = async move { stop.cancelled().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        warn!(error = %e, "the metrics listener failed");
    }
}

async fn scrape(State(engine): State<Engine>) -> Response {
    let metrics = engine.metrics();
    match engine.backlog().await {
        Ok((backlog, paused)) => metrics.set_backlog(&backlog, &paused, SystemTime::now()),
        // The rest is still worth a scrape; the queue gauges keep their
        // last values.
        Err(e) => warn!(error = %e, "could not count the backlog for metrics"),
    }
    match engine.limit_uses(&Scope::All).await {
        Ok(uses) => {
            let gauges: Vec<LimitGauge> = uses
                .into_iter()
                .flat_map(|(kind, uses)| {
                    uses.into_iter().map(move |used| LimitGauge {
                        kind: kind.clone(),
                        scope: used.limit.scope.as_str(),
                        in_use: used.running,
                        tokens: used
                            .limit
                            .rates
                            .iter()
                            .map(ToString::to_string)
                            .zip(used.tokens)
                            .collect(),
                    })
                })
                .collect();
            metrics.set_limits(&gauges);
        }
        Err(e) => warn!(error = %e, "could not read the limits for metrics"),
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        metrics.render(),
    )
        .into_response()
}
