//! Webhooks: signed POSTs of an operation's state changes, from the
//! durable outbox, with retries.
//!
//! - `sign`: Standard Webhooks signing and the `verify` function receivers
//!   (and `longrun webhook verify`) use;
//! - `guard`: the SSRF guard on callback URLs;
//! - `deliver`: the background deliverer.

pub mod deliver;
pub mod guard;
pub mod sign;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::sign::{Secret, VerifyError, sign, verify};
use crate::model::Tenant;
use crate::store::{SettledStore, StoreError, StoreResult};

/// The name the shared signing secret is kept under in a [`SettledStore`].
const SHARED_SECRET: &str = "webhook-signing-secret";

/// The signing secret every node of a shared store uses when none is
/// given: created by whichever node asks first, and kept in the store.
pub async fn shared_secret(secrets: &dyn SettledStore) -> StoreResult<Secret> {
    let initial = Secret::generate().to_string();
    let kept = secrets.settle(SHARED_SECRET, initial.as_bytes()).await?;
    String::from_utf8_lossy(&kept)
        .trim()
        .parse()
        .map_err(|e: String| StoreError::Corrupt(format!("the shared webhook secret: {e}")))
}

/// The secrets a tenant's deliveries are signed with when the auth file
/// gives it none of its own: derived from the server's (one per secret in
/// force, so rotations carry over), so that no tenant can forge another's
/// deliveries. The default tenant (a server without an auth file) signs
/// with the server's secrets themselves.
pub fn tenant_secrets(server: &[Secret], tenant: &Tenant) -> Vec<Secret> {
    if tenant.is_default() {
        return server.to_vec();
    }
    let purpose = format!("longrun webhook secret of tenant {}", tenant.as_str());
    server
        .iter()
        .map(|secret| secret.derive(purpose.as_bytes()))
        .collect()
}

/// The retry schedule after the first attempt, as the Standard Webhooks
/// spec recommends: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub fn default_schedule() -> Vec<Duration> {
    [5, 300, 1800, 7200, 18_000, 36_000, 36_000]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

/// How webhooks are sent.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Signing secrets: the current one first, then any being rotated out.
    pub secrets: Vec<Secret>,
    /// Whether callbacks may reach loopback and private addresses.
    pub allow_private: bool,
    /// How long one POST may take.
    pub timeout: Duration,
    /// The delays before each retry; attempts are one more than its length.
    pub schedule: Vec<Duration>,
}

/// Secrets of tenants that sign with their own, looked up per delivery so
/// that a reloaded auth file takes effect at once.
pub trait TenantSecrets: Send + Sync + 'static {
    /// The secrets of `tenant`, current first; None to use the server's.
    fn secrets_for(&self, tenant: &Tenant) -> Option<Vec<Secret>>;
}

/// The file a generated secret is kept in, inside the data directory.
pub fn secret_file(data_dir: &Path) -> PathBuf {
    data_dir.join("webhook-secret")
}

/// Reads the data directory's secret, creating one (readable by the owner
/// only) on first use.
pub fn load_or_create_secret(data_dir: &Path) -> std::io::Result<Secret> {
    let path = secret_file(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .parse()
            .map_err(|e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let secret = Secret::generate();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&path)?;
            std::io::Write::write_all(&mut file, format!("{secret}\n").as_bytes())?;
            file.sync_all()?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}
