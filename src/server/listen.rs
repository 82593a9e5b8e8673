//! Accepting connections. Every new connection gets a deadline to show it
//! is a real HTTP client: to finish its TLS handshake (with TLS) and send
//! its opening: the 24-byte HTTP/2 preface, or an HTTP/1.1 request line's
//! method (for the HTTP/JSON face). These waits run side by side, one task
//! each, so a client that connects and stalls holds up no one and is
//! dropped when its time is up. The bytes read are handed back to the HTTP
//! server untouched. Established connections are then kept honest by
//! HTTP/2 and TCP keepalive (set on the server).
//!
//! The [`Gate`] bounds what one address can hold: connections waiting to
//! start are capped overall and per address, and when a cap is reached the
//! oldest waiting connection (of that address, or of all) is shed to make
//! room, so a flood of idle sockets delays nobody else's first call.
//! Connections in all (waiting or established) are capped overall and per
//! address too; a connection beyond those is closed on arrival unless a
//! waiting one of the same reach can be shed for it. Established
//! connections are never shed.
//!
//! The accepting task and every waiting connection's task belong to the
//! server's tracker and end when its stop token fires.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;
use tracing::debug;

use super::tls::TlsFiles;

/// The most connections that may be waiting to start at once.
pub const MAX_PENDING: usize = 1024;

/// The most connections one address may have waiting to start at once.
pub const MAX_PENDING_PER_ADDRESS: usize = 128;

/// How many connections the listener keeps, and how many one address may
/// hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections in all, waiting or established.
    pub total: usize,
    /// Connections of one client address.
    pub per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            total: 10_000,
            per_address: 1_000,
        }
    }
}

/// Who holds which connections: the waiting ones in arrival order (to
/// shed the oldest), and how many each address holds.
pub struct Gate {
    limits: ConnectionLimits,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    next: u64,
    /// Waiting connections, oldest first: their address and what sheds them.
    waiting: BTreeMap<u64, (IpAddr, CancellationToken)>,
    waiting_of: HashMap<IpAddr, usize>,
    open: usize,
    open_of: HashMap<IpAddr, usize>,
}

/// A connection's place at the gate; dropping it gives the place back.
pub struct Place {
    gate: Arc<Gate>,
    address: IpAddr,
    /// Its number while it waits to start.
    waiting: Option<u64>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        if let Some(number) = self.waiting.take() {
            state.left_waiting(number);
        }
        state.open = state.open.saturating_sub(1);
        if let Some(n) = state.open_of.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                state.open_of.remove(&self.address);
            }
        }
    }
}

impl Place {
    /// The connection started: it no longer counts as waiting (and can no
    /// longer be shed).
    fn started(&mut self) {
        if let Some(number) = self.waiting.take() {
            self.gate.lock().left_waiting(number);
        }
    }
}

impl GateState {
    fn left_waiting(&mut self, number: u64) {
        if let Some((address, _)) = self.waiting.remove(&number)
            && let Some(n) = self.waiting_of.get_mut(&address)
        {
            *n -= 1;
            if *n == 0 {
                self.waiting_of.remove(&address);
            }
        }
    }

    /// Sheds the oldest waiting connection, of `address` when given.
    fn shed_oldest(&mut self, address: Option<IpAddr>) -> bool {
        let oldest = self
            .waiting
            .iter()
            .find(|(_, (a, _))| address.is_none_or(|address| *a == address))
            .map(|(number, _)| *number);
        match oldest {
            Some(number) => {
                if let Some((_, shed)) = self.waiting.get(&number) {
                    shed.cancel();
                }
                self.left_waiting(number);
                true
            }
            None => false,
        }
    }
}

impl Gate {
    /// A gate with these limits.
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // Every critical section is a few map updates.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a new connection from `address` in, shedding waiting ones to
    /// make room; None when it must be closed. The token fires when it is
    /// shed while it waits.
    fn arrive(self: &Arc<Self>, address: IpAddr) -> Option<(Place, CancellationToken)> {
        let mut state = self.lock();
        let mine = state.open_of.get(&address).copied().unwrap_or(0);
        if mine >= self.limits.per_address && !state.shed_oldest(Some(address)) {
            return None;
        }
        if state.open >= self.limits.total && !state.shed_oldest(None) {
            return None;
        }
        // Places of shed connections are given back when their tasks end;
        // until then the counts may run a little over.
        if state.waiting_of.get(&address).copied().unwrap_or(0) >= MAX_PENDING_PER_ADDRESS {
            state.shed_oldest(Some(address));
        }
        if state.waiting.len() >= MAX_PENDING {
            state.shed_oldest(None);
        }
        let number = state.next;
        state.next += 1;
        let shed = CancellationToken::new();
        state.waiting.insert(number, (address, shed.clone()));
        *state.waiting_of.entry(address).or_default() += 1;
        state.open += 1;
        *state.open_of.entry(address).or_default() += 1;
        drop(state);
        let place = Place {
            gate: Arc::clone(self),
            address,
            waiting: Some(number),
        };
        Some((place, shed))
    }
}

/// What every HTTP/2 connection starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection whose opening was read to check it, and is read again,
/// first, by the HTTP server.
pub struct Admitted<T> {
    inner: T,
    head: Vec<u8>,
    replayed: usize,
    /// Its place at the gate, given back when the connection closes.
    place: Option<Place>,
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
        place: None,
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

/// Runs `prepare` on every accepted connection that `gate` lets in,
/// within `timeout`, and yields those that made it, until `stop` fires.
fn admitted<S, T, F, Fut>(
    tcp: S,
    prepare: F,
    timeout: Duration,
    gate: Arc<Gate>,
    tasks: TaskTracker,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Admitted<T>>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    T: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<Admitted<T>>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
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
            let Ok(peer) = stream.peer_addr() else {
                continue;
            };
            let Some((mut place, shed)) = gate.arrive(peer.ip()) else {
                debug!(peer = %peer.ip(), "too many connections from this address; closing a new one");
                continue;
            };
            let ready = prepare(stream);
            let tx = tx.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                let outcome = tokio::select! {
                    outcome = tokio::time::timeout(timeout, ready) => outcome,
                    _ = shed.cancelled() => {
                        return debug!("a waiting connection was shed for a newer one");
                    }
                    _ = stop.cancelled() => return,
                };
                match outcome {
                    Ok(Ok(mut stream)) => {
                        place.started();
                        stream.place = Some(place);
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
    gate: Arc<Gate>,
    tasks: TaskTracker,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Admitted<TcpStream>>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    admitted(tcp, read_preface, timeout, gate, tasks, stop)
}

/// TLS connections that finished the handshake and sent the HTTP/2
/// preface within `timeout`, each with the certificates in force when it
/// arrived.
pub fn tls<S>(
    tcp: S,
    files: Arc<TlsFiles>,
    timeout: Duration,
    gate: Arc<Gate>,
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
        gate,
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
