//! TLS and mTLS over real connections, with certificates made at test time
//! (rcgen): tokens over TLS, client certificates naming principals,
//! certificates from strangers, and reloading the server's certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use longrun::pb::google::longrunning::ListOperationsRequest;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::server::tls::TlsPaths;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate and key (PEM) signed by `ca`.
fn leaf(ca: &Ca, cn: &str, client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names = if client {
        Vec::new()
    } else {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    };
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, &**ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Installs a server certificate signed by `ca` at the server's paths.
fn install_server_cert(dir: &Path, ca: &Ca) -> (PathBuf, PathBuf) {
    let (cert, key) = leaf(ca, "longrun test server", false);
    (
        write(dir, "server.pem", &cert),
        write(dir, "server.key", &key),
    )
}

/// A TLS channel trusting `ca`, optionally presenting a client certificate.
async fn connect(
    server: &TestServer,
    ca: &Ca,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(PATIENCE)
        .connect()
        .await
}

async fn list(channel: Channel, token: Option<&str>) -> Code {
    let mut ops = OperationsClient::new(InterceptedService::new(
        channel,
        Bearer(token.map(str::to_owned)),
    ));
    match ops.list_operations(ListOperationsRequest::default()).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// What a client sees when the connection itself fails (tonic maps such
/// errors to UNAVAILABLE or UNKNOWN), as opposed to an answer from the
/// server.
fn is_transport_failure(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown)
}

struct Setup {
    server: TestServer,
    ca: Ca,
    writer: Person,
    dir: tempfile::TempDir,
}

async fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("longrun test CA");
    let (cert, key) = install_server_cert(dir.path(), &ca);
    let client_ca = write(dir.path(), "client-ca.pem", &ca.pem());
    let writer = Person::new("alice", "acme", "writer");
    let bot = Person {
        name: "bot.acme",
        tenant: "acme",
        role: "reader",
        token: None,
    };
    let auth = write(dir.path(), "auth.toml", &auth_toml(&[&writer, &bot], ""));
    let server = TestServer::start_with(|c| {
        c.auth_file = Some(auth);
        c.tls = Some(TlsPaths {
            cert,
            key,
            client_ca: Some(client_ca),
        });
    })
    .await;
    Setup {
        server,
        ca,
        writer,
        dir,
    }
}

#[tokio::test]
async fn tokens_work_over_tls_and_client_certificates_name_principals() {
    let s = start().await;

    // Health is open, over TLS too.
    let channel = connect(&s.server, &s.ca, None).await.unwrap();
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(list(channel.clone(), None).await, Code::Unauthenticated);
    assert_eq!(list(channel.clone(), s.writer.token()).await, Code::Ok);
    let mut diagnostics = DiagnosticsClient::new(InterceptedService::new(
        channel,
        Bearer(s.writer.token().map(str::to_owned)),
    ));
    diagnostics
        .sleep(sleep(Duration::ZERO, 1))
        .await
        .expect("a writer creates over TLS");

    // A certificate whose CN is a principal needs no token, and carries
    // that principal's role.
    let bot = connect(&s.server, &s.ca, Some(leaf(&s.ca, "bot.acme", true)))
        .await
        .unwrap();
    assert_eq!(list(bot.clone(), None).await, Code::Ok);
    let status = DiagnosticsClient::new(bot)
        .sleep(sleep(Duration::ZERO, 1))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "ROLE_TOO_LOW", None);

    // A good certificate that names nobody.
    let stranger = connect(&s.server, &s.ca, Some(leaf(&s.ca, "stranger", true)))
        .await
        .unwrap();
    assert_eq!(list(stranger, None).await, Code::Unauthenticated);
}

#[tokio::test]
async fn strangers_certificates_and_plain_text_are_turned_away() {
    let s = start().await;
    // Signed by a CA the server does not trust: the handshake fails, so
    // either the connection or its first call does.
    let rogue = ca("rogue CA");
    // (TLS 1.3 reports the refusal on the first call, as a transport
    // error: it never reaches the door, which would answer UNAUTHENTICATED.)
    let refused = match connect(&s.server, &s.ca, Some(leaf(&rogue, "bot.acme", true))).await {
        Err(_) => true,
        Ok(channel) => is_transport_failure(list(channel, None).await),
    };
    assert!(refused, "a certificate from an unknown CA was accepted");

    // Plain HTTP/2 to the TLS port gets nowhere either.
    let plain = Endpoint::from_shared(format!("http://{}", s.server.addr))
        .unwrap()
        .connect_timeout(PATIENCE)
        .connect()
        .await;
    if let Ok(channel) = plain {
        let code = list(channel, s.writer.token()).await;
        assert!(is_transport_failure(code), "{code:?}");
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_a_reload() {
    let s = start().await;
    let renewed_by = ca("next year's CA");
    // Not yet: the server still presents the old certificate.
    let early = match connect(&s.server, &renewed_by, None).await {
        Err(_) => Code::Unavailable,
        Ok(channel) => list(channel, s.writer.token()).await,
    };
    assert!(is_transport_failure(early), "{early:?}");

    install_server_cert(s.dir.path(), &renewed_by);
    s.server.reloader.reload();
    let channel = connect(&s.server, &renewed_by, None).await.unwrap();
    assert_eq!(list(channel, s.writer.token()).await, Code::Ok);

    // A broken file on reload keeps the certificate in force.
    write(s.dir.path(), "server.pem", "not a certificate");
    s.server.reloader.reload();
    let channel = connect(&s.server, &renewed_by, None).await.unwrap();
    assert_eq!(list(channel, s.writer.token()).await, Code::Ok);
}

#[tokio::test]
async fn the_cli_connects_with_a_ca_and_a_token_or_a_client_certificate() {
    let s = start().await;
    let ca = write(s.dir.path(), "ca.pem", &s.ca.pem());
    let (cert, key) = leaf(&s.ca, "bot.acme", true);
    let cert = write(s.dir.path(), "bot.pem", &cert);
    let key = write(s.dir.path(), "bot.key", &key);
    let server = format!("https://127.0.0.1:{}", s.server.addr.port());
    let run = |args: Vec<std::ffi::OsString>, token: Option<String>| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"));
            command
                .args(["ops", "list", "--server", &server])
                .args(args);
            command.env_remove("LONGRUN_TOKEN");
            if let Some(token) = token {
                command.env("LONGRUN_TOKEN", token);
            }
            command.output().unwrap()
        })
    };
    let with_token = run(
        vec!["--ca".into(), ca.clone().into()],
        s.writer.token().map(str::to_owned),
    )
    .await
    .unwrap();
    assert!(with_token.status.success(), "{with_token:?}");
    let with_cert = run(
        vec![
            "--ca".into(),
            ca.clone().into(),
            "--cert".into(),
            cert.into(),
            "--key".into(),
            key.into(),
        ],
        None,
    )
    .await
    .unwrap();
    assert!(with_cert.status.success(), "{with_cert:?}");
    let neither = run(vec!["--ca".into(), ca.into()], None).await.unwrap();
    assert_eq!(neither.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&neither.stderr).contains("Unauthenticated"));
}

#[tokio::test]
async fn the_http_face_is_served_over_tls_to_http1_and_http2_clients() {
    let s = start().await;
    let root = reqwest::Certificate::from_pem(s.ca.pem().as_bytes()).unwrap();
    let url = format!("https://localhost:{}/v1/operations", s.server.addr.port());
    for (http1, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let builder = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .resolve("localhost", s.server.addr);
        let client = if http1 { builder.http1_only() } else { builder }
            .build()
            .unwrap();
        let response = client
            .get(&url)
            .bearer_auth(s.writer.token().unwrap())
            .send()
            .await
            .expect("the HTTP face answers over TLS");
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let anonymous = client.get(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_browsers_client_certificate_does_not_vouch_for_another_sites_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("longrun test CA");
    let (cert, key) = install_server_cert(dir.path(), &ca);
    let client_ca = write(dir.path(), "client-ca.pem", &ca.pem());
    let person = Person {
        name: "alice.acme",
        tenant: "acme",
        role: "writer",
        token: None,
    };
    let auth = write(dir.path(), "auth.toml", &auth_toml(&[&person], ""));
    let server = TestServer::start_with(|c| {
        c.auth_file = Some(auth);
        c.tls = Some(TlsPaths {
            cert,
            key,
            client_ca: Some(client_ca),
        });
    })
    .await;
    let (cert, key) = leaf(&ca, "alice.acme", true);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
        .resolve("localhost", server.addr)
        .http1_only()
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/v1/diagnostics:sleep",
        server.addr.port()
    );
    let body = r#"{"duration": "0s"}"#;
    // What a form on another site makes the browser send, certificate and
    // all: refused.
    let forged = client
        .post(&url)
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example.com")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::FORBIDDEN);
    let forged = client
        .post(&url)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The certificate's own JSON request is served.
    let made = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), reqwest::StatusCode::ACCEPTED);
    server.stop().await;
}
