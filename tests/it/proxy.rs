//! A TCP proxy that a test puts between longrun and its database, to cut,
//! stall and restore the link under load without touching the database
//! itself.
//!
//! - `Link::Up`: bytes flow both ways;
//! - `Link::Stalled`: connections stay open (new ones are accepted) but no
//!   byte moves, as when a network drops packets; what was held flows on
//!   once the link is up again;
//! - `Link::Cut`: every open connection is closed, and new ones are closed
//!   as they arrive, as when the database restarts.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The state of the proxied link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Up,
    Stalled,
    Cut,
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    accepting: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        // Ends every connection's task too.
        self.link.send_replace(Link::Cut);
    }
}

impl Proxy {
    /// Proxies 127.0.0.1:0 to `target`, with the link up.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (link, watching) = watch::channel(Link::Up);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watching.borrow() == Link::Cut {
                    continue;
                }
                tokio::spawn(pipe(client, target, watching.clone()));
            }
        });
        Self {
            addr,
            link,
            accepting,
        }
    }

    /// Sets the link's state.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// `url` (a postgres:// URL) with its host and port replaced by the
    /// proxy's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let user = authority.rsplit_once('@').map(|(user, _)| user);
        match user {
            Some(user) => format!("{scheme}://{user}@{}{path}", self.addr),
            None => format!("{scheme}://{}{path}", self.addr),
        }
    }
}

/// The host and port a postgres:// URL names.
pub fn target_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    host.replace("localhost", "127.0.0.1")
        .parse()
        .expect("a host:port")
}

async fn pipe(client: TcpStream, target: SocketAddr, link: watch::Receiver<Link>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // When either way ends (or the link is cut), both sockets close.
    tokio::select! {
        () = forward(client_read, server_write, link.clone()) => {}
        () = forward(server_read, client_write, link) => {}
    }
}

/// Copies `from` to `to`, holding bytes while the link is stalled, until
/// either side closes or the link is cut.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = link.wait_for(|l| *l == Link::Cut) => return,
        };
        match link.wait_for(|l| *l != Link::Stalled).await {
            Ok(l) if *l == Link::Up => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
