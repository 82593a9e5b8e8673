//! Counts every gRPC call by method and status code in the metrics. The
//! code is read where gRPC puts it: in the response headers of a call that
//! failed at once, otherwise in the trailers at the end of the body.
//! Requests that are not gRPC (the HTTP/JSON face counts its own) pass by.

// The http crate's request and response types: named apart from this
// crate's HTTP/JSON face (`src/http/`), which sits above this layer.
use ::http as http_crate;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use http_crate::HeaderMap;
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service};

use super::status::http_status;
use crate::metrics::Metrics;

/// Wraps a service with [`Metered`].
#[derive(Clone)]
pub struct MeteredLayer {
    metrics: Arc<Metrics>,
}

impl MeteredLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// A service whose gRPC calls are counted.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The canonical name of the code in `headers`' grpc-status, if any.
fn code_in(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(http_status(Code::from_i32(value.parse().ok()?)).1)
}

impl<S, B> Service<http_crate::Request<B>> for Metered<S>
where
    S: Service<http_crate::Request<B>, Response = http_crate::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http_crate::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http_crate::Request<B>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http_crate::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        let method = grpc.then(|| request.uri().path().to_owned());
        let metrics = Arc::clone(&self.metrics);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let Some(method) = method else {
                return Ok(response);
            };
            if let Some(code) = code_in(response.headers()) {
                metrics.grpc(&method, code);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let mut method = Some(method);
            let body = body.map_frame(move |frame| {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(method) = method.take()
                {
                    metrics.grpc(&method, code_in(trailers).unwrap_or("UNKNOWN"));
                }
                frame
            });
            Ok(http_crate::Response::from_parts(parts, Body::new(body)))
        })
    }
}
