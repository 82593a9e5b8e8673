//! Accepting connections. Every new connection gets a deadline to show it
//! is a real HTTP client: to finish its TLS handshake (with TLS) and send
//! its opening: the 24-byte HTTP/2 preface, or an HTTP/1.1 request line's
//! method (for the HTTP/JSON face). These waits run side by side, one task
//! each and at most [`MAX_PENDING`] at once, so a client that connects and
//! stalls holds up no one and is dropped when its time is up. The bytes
//! read are handed back to the HTTP server untouched. Established connections
//! are then kept honest by HTTP/2 and TCP keepalive (set on the server).
//!
//! The accepting task and every waiting connection's task belong to the
//! server's tracker and end when its stop token fires.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;
use tracing::debug;

use super::tls::TlsFiles;

/// The most connections that may be waiting for their deadline at once;
/// more are closed on arrival.
pub const MAX_PENDING: usize = 1024;

/// What every HTTP/2 connection starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection whose opening was read to check it, and is read again,
/// first, by the HTTP server.
pub struct Admitted<T> {
    inner: T,
    head: Vec<u8>,
    replayed: usize,
}

/// Whether `head` opens an HTTP/1.x request: a method of capital letters,
/// then a space.
fn opens_http1(head: &[u8]) -> bool {
    match head.iter().position(|b| *b == b' ') {
        Some(end) => (1..=16).contains(&end) && head[..end].iter().all(u8::is_ascii_uppercase),
        None => false,
    }
}

/// Waits for the opening of `stream`: the HTTP/2 preface, or an HTTP/1.x
/// method. At most the preface's length is read.
async fn read_preface<T: AsyncRead + Unpin>(mut stream: T) -> io::Result<Admitted<T>> {
    let mut head = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let still_http2 = PREFACE.starts_with(&head);
        if head.len() == PREFACE.len() || (!still_http2 && head.contains(&b' ')) {
            break;
        }
        let n = stream.read(&mut buf[..PREFACE.len() - head.len()]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    if head != PREFACE && !opens_http1(&head) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/2 or HTTP/1.1 connection",
        ));
    }
    Ok(Admitted {
        inner: stream,
        head,
        replayed: 0,
    })
}

impl<T: AsyncRead + Unpin> AsyncRead for Admitted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replayed < self.head.len() {
            let rest = &self.head[self.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Admitted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Admitted<T> {
    // The inner stream's, so that handlers find the peer (and its client
    // certificate) exactly where tonic puts them.
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Runs `prepare` on every accepted connection, within `timeout`, and
/// yields those that made it, until `stop` fires.
fn admitted<S, T, F, Fut>(
    tcp: S,
    prepare: F,
    timeout: Duration,
    tasks: TaskTracker,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<T>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    T: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let tracker = tasks.clone();
    tasks.spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let next = tokio::select! {
                // The server stopped listening.
                _ = tx.closed() => return,
                _ = stop.cancelled() => return,
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
            let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                debug!("too many connections waiting to start; closing a new one");
                continue;
            };
            let ready = prepare(stream);
            let tx = tx.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                let outcome = tokio::select! {
                    outcome = tokio::time::timeout(timeout, ready) => outcome,
                    _ = stop.cancelled() => return,
                };
                drop(permit);
                match outcome {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => debug!(error = %e, "connection dropped before its first call"),
                    Err(_) => debug!("connection dropped: it did not start in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Plain-text connections that sent the HTTP/2 preface within `timeout`.
pub fn plain<S>(
    tcp: S,
    timeout: Duration,
    tasks: TaskTracker,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Admitted<TcpStream>>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    admitted(tcp, read_preface, timeout, tasks, stop)
}

/// TLS connections that finished the handshake and sent the HTTP/2
/// preface within `timeout`, each with the certificates in force when it
/// arrived.
pub fn tls<S>(
    tcp: S,
    files: Arc<TlsFiles>,
    timeout: Duration,
    tasks: TaskTracker,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Admitted<TlsStream<TcpStream>>>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    admitted(
        tcp,
        move |stream: TcpStream| {
            let handshake = files.acceptor().accept(stream);
            async move { read_preface(handshake.await?).await }
        },
        timeout,
        tasks,
        stop,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preface_is_checked_and_handed_back() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest")
            .await
            .unwrap();
        let mut admitted = read_preface(server).await.unwrap();
        let mut all = vec![0u8; PREFACE.len() + 4];
        admitted.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..24], PREFACE);
        assert_eq!(&all[24..], b"rest");

        // HTTP/1.1, for the HTTP/JSON face, is handed back whole too.
        let (mut client, server) = tokio::io::duplex(64);
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut client, request)
            .await
            .unwrap();
        let mut admitted = read_preface(server).await.unwrap();
        let mut all = vec![0u8; request.len()];
        admitted.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, request);

        // Anything else is not let in.
        for junk in [
            &b"\x16\x03\x01 not http"[..],
            b"get / HTTP/1.1\r\n",
            b"XXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            tokio::io::AsyncWriteExt::write_all(&mut client, junk)
                .await
                .unwrap();
            assert!(read_preface(server).await.is_err(), "{junk:?}");
        }
    }
}
