//! `longrun webhook secret|verify`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use longrun::webhook::{Secret, load_or_create_secret, secret_file, verify};

/// Webhook commands.
#[derive(Debug, clap::Subcommand)]
pub enum WebhookCommand {
    /// Print the signing secret the server generated in its data directory
    /// (creating it if the server has not run yet).
    Secret {
        /// The server's data directory.
        #[arg(long, env = "LONGRUN_DATA_DIR", default_value = "./longrun-data")]
        data_dir: PathBuf,
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
        WebhookCommand::Secret { data_dir } => {
            let secret = load_or_create_secret(&data_dir)
                .with_context(|| format!("cannot read {}", secret_file(&data_dir).display()))?;
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
