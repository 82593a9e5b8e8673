//! Calls the server's own gRPC services in-process. A unary method of
//! longrun's own services is called directly (`grpc::direct`: the handler
//! with its decoded request, no frames); any other method (streams,
//! embedders' services) as a gRPC client would over the wire but without
//! one: the request is encoded, framed and handed to the services' router,
//! and the answer decoded from its frames and trailers. Either way the HTTP
//! face runs exactly the code a gRPC call runs, with the same validation,
//! statuses and details, for every bound method.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use futures_util::Stream;
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::{Request, Status};

use crate::auth::Principal;
use crate::grpc::auth::Caller;
use crate::grpc::direct::Direct;

/// Messages as their encoded bytes: the bridge's payloads are encoded
/// and decoded by the caller, from and to JSON.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The largest message the bridge reads back.
const MAX_ANSWER: usize = 64 << 20;

/// The caller's W3C trace headers (`traceparent`, `tracestate`), passed on
/// to the service as gRPC metadata, so that a create over HTTP continues
/// the caller's trace as one over gRPC does.
#[derive(Clone, Debug, Default)]
pub struct TraceHeaders(
    Vec<(
        &'static str,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )>,
);

impl TraceHeaders {
    /// The trace headers among `headers`.
    pub fn of(headers: &http::HeaderMap) -> Self {
        Self(
            ["traceparent", "tracestate"]
                .into_iter()
                .filter_map(|name| {
                    let value = headers.get(name)?.to_str().ok()?;
                    Some((name, value.parse().ok()?))
                })
                .collect(),
        )
    }
}

/// A client of the server's gRPC services.
#[derive(Clone)]
pub struct Bridge {
    router: axum::Router,
    direct: Arc<Direct>,
}

impl Bridge {
    /// Calls into `router`, the gRPC services alone, or straight into
    /// `direct`'s methods.
    pub fn new(router: axum::Router, direct: Direct) -> Self {
        Self {
            router,
            direct: Arc::new(direct),
        }
    }

    /// A client of the router, ready for a call (the router always is).
    async fn client(&self) -> tonic::client::Grpc<axum::Router> {
        let mut client =
            tonic::client::Grpc::new(self.router.clone()).max_decoding_message_size(MAX_ANSWER);
        client.ready().await.unwrap_or_else(|e| match e {});
        client
    }

    fn request<T>(caller: &Arc<Principal>, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(Caller(Arc::clone(caller)));
        request
    }

    fn traced<T>(caller: &Arc<Principal>, message: T, trace: &TraceHeaders) -> Request<T> {
        let mut request = Self::request(caller, message);
        for (name, value) in &trace.0 {
            request.metadata_mut().insert(*name, value.clone());
        }
        request
    }

    fn path(path: &str) -> Result<PathAndQuery, Status> {
        PathAndQuery::try_from(path).map_err(|_| crate::grpc::status::no_route(path))
    }

    /// A unary call of `path` as `caller`.
    pub async fn unary(
        &self,
        caller: &Arc<Principal>,
        path: &str,
        message: Bytes,
        trace: &TraceHeaders,
    ) -> Result<Bytes, Status> {
        let request = Self::traced(caller, message, trace);
        if let Some(call) = self.direct.get(path) {
            return call(request).await;
        }
        let answer = self
            .client()
            .await
            .unary(request, Self::path(path)?, Raw)
            .await?;
        Ok(answer.into_inner())
    }

    /// A server-streaming call of `path` as `caller`.
    pub async fn server_streaming(
        &self,
        caller: &Arc<Principal>,
        path: &str,
        message: Bytes,
    ) -> Result<Streaming<Bytes>, Status> {
        let answer = self
            .client()
            .await
            .server_streaming(Self::request(caller, message), Self::path(path)?, Raw)
            .await?;
        Ok(answer.into_inner())
    }

    /// A client-streaming call of `path` as `caller`.
    pub async fn client_streaming(
        &self,
        caller: &Arc<Principal>,
        path: &str,
        messages: impl Stream<Item = Bytes> + Send + 'static,
        trace: &TraceHeaders,
    ) -> Result<Bytes, Status> {
        let answer = self
            .client()
            .await
            .client_streaming(
                Self::traced(caller, messages, trace),
                Self::path(path)?,
                Raw,
            )
            .await?;
        Ok(answer.into_inner())
    }
}
