//! `longrun webhook secret|verify`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;

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
        /// The server's data directory.
        #[arg(long, env = "LONGRUN_DATA_DIR", default_value = "./longrun-data")]
        data_dir: PathBuf,
        /// The server's store: sled, or the PostgreSQL URL its nodes share.
        #[arg(long, env = "LONGRUN_STORE", default_value = "sled")]
        store: Backend,
        /// Print the secret this tenant's deliveries are signed with: its
        /// own one, derived from the server's (unless the auth file gives
        /// it one).
        #[arg(long)]
        tenant: Option<Tenant>,
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
}

pub(super) async fn run(cmd: WebhookCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WebhookCommand::Secret {
            data_dir,
            store,
            tenant,
        } => {
            let secret = match store {
                Backend::Sled => load_or_create_secret(&data_dir)
                    .with_context(|| format!("cannot read {}", secret_file(&data_dir).display()))?,
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
            let secret = match tenant {
                Some(tenant) => tenant_secrets(&[secret], &tenant).remove(0),
                None => secret,
            };
            say!("{secret}");
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
    }
}
