//! `longrun webhook secret|verify|listen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use tokio_util::sync::CancellationToken;

use longrun::model::Tenant;
use longrun::store::postgres::{PgConfig, redacted};
use longrun::store::{Backend, PgStore};
use longrun::webhook::{
    Secret, load_or_create_secret, secret_file, shared_secret, tenant_secrets, verify,
};

/// Webhook commands.
#[derive(Debug, clap::Subcommand)]
pub enum WebhookCommand {
    /// Print the signing secret the server generated: in its data
    /// directory on sled, in the database on PostgreSQL (creating it if no
    /// server has run yet); with --tenant, the one that tenant's
    /// deliveries are signed with.
    Secret {
        #[command(flatten)]
        server: ServerSecret,
    },
    /// Check a delivery's signature, as a receiver would. Exits 0 when it
    /// is valid and 1 when it is not.
    Verify {
        /// The signing secret (whsec_...); repeat it during a rotation.
        #[arg(
            long,
            env = "LONGRUN_WEBHOOK_SECRET",
            value_delimiter = ',',
            required = true
        )]
        secret: Vec<Secret>,
        /// The webhook-id header.
        #[arg(long)]
        id: String,
        /// The webhook-timestamp header.
        #[arg(long)]
        timestamp: String,
        /// The webhook-signature header.
        #[arg(long)]
        signature: String,
        /// The file holding the raw body; - for standard input.
        #[arg(long, default_value = "-")]
        body: PathBuf,
        /// How old a delivery may be.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        tolerance: Duration,
    },
    /// Receive deliveries on this machine and print each, checking its
    /// signature: a receiver to try webhooks with (the server calls a
    /// loopback address only with --webhook-allow-private). Answers 204 to
    /// a valid delivery and 401 to one whose signature does not check.
    Listen {
        /// Where to listen; port 0 picks a free one (printed first).
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// The secret to check signatures with (whsec_...); repeat it
        /// during a rotation. Without it, the server's own secret is read
        /// as `longrun webhook secret` does.
        #[arg(long, env = "LONGRUN_WEBHOOK_SECRET", value_delimiter = ',')]
        secret: Vec<Secret>,
        #[command(flatten)]
        server: ServerSecret,
        /// Print each delivery's body too.
        #[arg(long)]
        body: bool,
        /// Stop after this many valid deliveries.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Where a server keeps the secret it signs with.
#[derive(Debug, clap::Args)]
pub struct ServerSecret {
    /// The server's data directory.
    #[arg(long, env = "LONGRUN_DATA_DIR", default_value = "./longrun-data")]
    data_dir: PathBuf,
    /// The server's store: sled, or the PostgreSQL URL its nodes share.
    #[arg(long, env = "LONGRUN_STORE", default_value = "sled")]
    store: Backend,
    /// The secret this tenant's deliveries are signed with: its own one,
    /// derived from the server's (unless the auth file gives it one).
    #[arg(long)]
    tenant: Option<Tenant>,
}

impl ServerSecret {
    /// The server's secret (created when no server has run yet), or the
    /// tenant's derived from it.
    async fn load(self) -> anyhow::Result<Secret> {
        let secret = match self.store {
            Backend::Sled => load_or_create_secret(&self.data_dir).with_context(|| {
                format!("cannot read {}", secret_file(&self.data_dir).display())
            })?,
            Backend::Postgres(url) => {
                let config = PgConfig {
                    pool_size: 2,
                    ..PgConfig::new(url.as_str())
                };
                let db = PgStore::open(&config)
                    .await
                    .with_context(|| format!("cannot open {}", redacted(&url)))?;
                shared_secret(&db)
                    .await
                    .context("cannot read the shared webhook secret")?
            }
        };
        Ok(match self.tenant {
            Some(tenant) => tenant_secrets(&[secret], &tenant).remove(0),
            None => secret,
        })
    }
}

pub(super) async fn run(cmd: WebhookCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WebhookCommand::Secret { server } => {
            say!("{}", server.load().await?);
            Ok(ExitCode::SUCCESS)
        }
        WebhookCommand::Verify {
            secret,
            id,
            timestamp,
            signature,
            body,
            tolerance,
        } => {
            let bytes = if body == std::path::Path::new("-") {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&body).with_context(|| format!("cannot read {}", body.display()))?
            };
            match verify(
                &secret,
                &id,
                &timestamp,
                &signature,
                &bytes,
                SystemTime::now(),
                tolerance,
            ) {
                Ok(()) => {
                    say!("valid");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    say!("invalid: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        WebhookCommand::Listen {
            listen,
            secret,
            server,
            body,
            count,
        } => {
            let secrets = if secret.is_empty() {
                vec![server.load().await?]
            } else {
                secret
            };
            self::listen(listen, secrets, body, count).await
        }
    }
}

/// What the receiver shares between deliveries.
struct Receiver {
    secrets: Vec<Secret>,
    show_body: bool,
    valid: AtomicU64,
    count: Option<u64>,
    done: CancellationToken,
}

async fn listen(
    addr: SocketAddr,
    secrets: Vec<Secret>,
    show_body: bool,
    count: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    say!("listening on http://{bound}/");
    let receiver = Arc::new(Receiver {
        secrets,
        show_body,
        valid: AtomicU64::new(0),
        count,
        done: CancellationToken::new(),
    });
    let done = receiver.done.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, bytes: Bytes| {
        let receiver = receiver.clone();
        async move { receiver.receive(&headers, &bytes) }
    });
    let stop = async move {
        tokio::select! {
            _ = done.cancelled() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("the receiver stopped")?;
    Ok(ExitCode::SUCCESS)
}

impl Receiver {
    /// Checks and prints one delivery.
    fn receive(&self, headers: &HeaderMap, bytes: &[u8]) -> StatusCode {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let checked = verify(
            &self.secrets,
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
            bytes,
            SystemTime::now(),
            Duration::from_secs(300),
        );
        let event: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let field = |pointer: &str| {
            event
                .pointer(pointer)
                .and_then(|v| v.as_str())
                .unwrap_or("?")
        };
        let verdict = match &checked {
            Ok(()) => "signature valid".to_owned(),
            Err(e) => format!("signature INVALID: {e}"),
        };
        say!(
            "{} {} {}: {verdict}",
            header("webhook-id"),
            field("/type"),
            field("/data/name"),
        );
        if self.show_body {
            say!("{}", String::from_utf8_lossy(bytes));
        }
        if checked.is_err() {
            return StatusCode::UNAUTHORIZED;
        }
        let valid = self.valid.fetch_add(1, Ordering::Relaxed) + 1;
        if self.count.is_some_and(|count| valid >= count) {
            self.done.cancel();
        }
        StatusCode::NO_CONTENT
    }
}
