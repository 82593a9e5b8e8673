//! Accepting connections. Every new connection gets a deadline to show
//! it is a real client: to send its first bytes (plain text) or to finish
//! its TLS handshake. These waits run side by side, one task each, so a
//! client that connects and stalls holds up no one, and is dropped when
//! its time is up. Established connections are then kept honest by HTTP/2
//! and TCP keepalive (set on the server).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::tls::TlsFiles;

/// Runs `prepare` on every accepted connection, within `timeout`, and
/// yields those that made it.
fn admitted<S, T, F, Fut>(
    tcp: S,
    prepare: F,
    timeout: Duration,
) -> impl Stream<Item = io::Result<T>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    T: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let next = tokio::select! {
                // The server stopped listening.
                _ = tx.closed() => return,
                next = tcp.next() => next,
            };
            let stream = match next {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
                None => return,
            };
            let ready = prepare(stream);
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, ready).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => debug!(error = %e, "connection dropped before its first call"),
                    Err(_) => debug!("connection dropped: nothing arrived in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Plain-text connections that sent something within `timeout`.
pub fn plain<S>(tcp: S, timeout: Duration) -> impl Stream<Item = io::Result<TcpStream>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    admitted(
        tcp,
        |stream: TcpStream| async move {
            // Peeking waits for real data (readiness alone may be
            // spurious) and leaves it for the HTTP/2 server to read.
            match stream.peek(&mut [0u8; 1]).await? {
                0 => Err(io::ErrorKind::UnexpectedEof.into()),
                _ => Ok(stream),
            }
        },
        timeout,
    )
}

/// TLS connections whose handshake finished within `timeout`, each with
/// the certificates in force when it arrived.
pub fn tls<S>(
    tcp: S,
    files: Arc<TlsFiles>,
    timeout: Duration,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    admitted(
        tcp,
        move |stream: TcpStream| files.acceptor().accept(stream),
        timeout,
    )
}
