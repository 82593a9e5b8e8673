//! What one address can do to the listener: a flood of idle sockets that
//! never start delays nobody's first call (the oldest waiting ones are
//! shed), established connections keep working through it, and one
//! address cannot hold more connections than its share.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{PATIENCE, TestServer};

/// What every HTTP/2 connection starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind a loopback source address");
    socket.connect(server).await.expect("connect")
}

/// Whether the server closed `stream` (rather than sending something, or
/// nothing yet) within `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A health Check on a fresh connection.
async fn check(server: &TestServer) {
    tokio::time::timeout(PATIENCE, async {
        HealthClient::new(server.channel().await)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
    })
    .await
    .expect("a new client is served in time");
}

#[tokio::test]
async fn idle_sockets_from_one_address_shut_out_nobody() {
    let server = TestServer::start().await;
    // A client that connected before the flood.
    let mut before = HealthClient::new(server.channel().await);

    // More idle sockets than the server lets wait, from the same address
    // as every client of this test.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(connect_from("127.0.0.1", server.addr).await);
    }
    // A new client still gets in: it sheds the oldest idle socket.
    check(&server).await;
    // And the one that was already connected was never touched.
    before
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("an established connection keeps working");

    // From another address, the flood keeps only its own share waiting:
    // most of its sockets are shed at once, and clients elsewhere are
    // served throughout.
    let mut flood = Vec::new();
    for _ in 0..600 {
        flood.push(connect_from("127.0.0.2", server.addr).await);
    }
    check(&server).await;
    let mut shed = 0;
    for stream in &mut flood {
        if closed(stream, Duration::from_millis(50)).await {
            shed += 1;
        }
    }
    assert!(
        shed >= 600 - 128,
        "only {shed} of 600 idle sockets were shed"
    );
    drop(idle);
    server.stop().await;
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let server = TestServer::start_with(|c| {
        c.connections.total = 60;
        c.connections.per_address = 20;
    })
    .await;
    // Twenty established connections from one address: each sent the
    // preface and heard the server's settings.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from("127.0.0.2", server.addr).await;
        stream.write_all(PREFACE).await.unwrap();
        assert!(!closed(&mut stream, Duration::from_secs(5)).await);
        held.push(stream);
    }
    // The twenty-first from that address is closed on arrival.
    let mut extra = connect_from("127.0.0.2", server.addr).await;
    extra.write_all(PREFACE).await.unwrap();
    assert!(
        closed(&mut extra, PATIENCE).await,
        "a connection past the share was kept"
    );
    // Another address is served as before.
    check(&server).await;
    drop(held);
    server.stop().await;
}
