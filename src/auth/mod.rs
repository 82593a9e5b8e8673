//! Who is calling: principals, roles, and the authenticator that maps a
//! bearer token or a client certificate to a principal.
//!
//! - `file`: the TOML auth file, parsed and checked whole;
//! - `token`: new tokens and their digests.
//!
//! Tokens are never stored or logged: the file holds SHA-256 digests, a
//! presented token is hashed, and the digest is compared with every
//! principal's in constant time. The authenticator is shared and swapped
//! whole on reload (SIGHUP), so a call sees the old file or the new one.

pub mod file;
pub mod token;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use self::file::{AuthFile, AuthFileError};
use crate::engine::TenantWeights;
use crate::model::{Reason, Scope, Tenant};
use crate::webhook::{Secret, TenantSecrets};

/// What a principal may do. Each role from reader on includes the ones
/// before it; `worker` stands apart: it may only lease the kinds listed for
/// it (and it may be combined with another role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Leases, runs and completes operations of its kinds in its tenant
    /// (the Workers service), and nothing else.
    Worker,
    /// Read operations and reports of its tenant.
    Reader,
    /// Reader, plus create, cancel and delete in its tenant.
    Writer,
    /// Writer across every tenant.
    Admin,
}

impl Role {
    /// The name used in the auth file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "worker" => Ok(Role::Worker),
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}; expected worker, reader, writer or admin"
            )),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    /// The tenant it works in; what it creates belongs to this tenant.
    pub tenant: Tenant,
    /// Its highest role.
    pub role: Role,
    /// With the worker role: the kinds it may lease ("*" for any).
    pub worker_kinds: Option<Vec<String>>,
}

impl Principal {
    /// The caller of a server that runs without authentication: an admin of
    /// the default tenant.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            tenant: Tenant::default_tenant(),
            role: Role::Admin,
            worker_kinds: None,
        }
    }

    /// Whether it may act as a worker at all.
    pub fn is_worker(&self) -> bool {
        self.role == Role::Admin || self.worker_kinds.is_some()
    }

    /// Whether it may lease operations of `kind`.
    pub fn may_serve(&self, kind: &str) -> bool {
        self.role == Role::Admin
            || self
                .worker_kinds
                .as_ref()
                .is_some_and(|kinds| kinds.iter().any(|k| k == kind || k == "*"))
    }

    /// Whether it has what `needed` asks: the worker role stands apart,
    /// the others include the ones below them.
    pub fn has(&self, needed: Role) -> bool {
        match needed {
            Role::Worker => self.is_worker(),
            _ => self.role >= needed,
        }
    }

    /// The operations it may reach.
    pub fn scope(&self) -> Scope {
        match self.role {
            Role::Admin => Scope::All,
            _ => Scope::Tenant(self.tenant.clone()),
        }
    }
}

/// What a caller presented.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The token of an `authorization: Bearer` header.
    pub bearer: Option<&'a str>,
    /// The subject CN of a verified client certificate.
    pub client_cn: Option<&'a str>,
}

/// Why a caller was not recognised. The messages never echo what was
/// presented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this call needs credentials: an `authorization: Bearer <token>` header or a client certificate"
    )]
    Missing,
    #[error("the token is not valid")]
    UnknownToken,
    #[error("the client certificate names no principal")]
    UnknownCertificate,
}

impl AuthError {
    /// The ErrorInfo reason.
    pub fn reason(&self) -> Reason {
        match self {
            AuthError::Missing => Reason::CredentialsMissing,
            AuthError::UnknownToken => Reason::TokenInvalid,
            AuthError::UnknownCertificate => Reason::CertificateUnknown,
        }
    }
}

/// Maps credentials to principals. Without an auth file every caller is
/// [`Principal::anonymous`].
pub struct Authenticator {
    path: Option<PathBuf>,
    enforcing: bool,
    current: RwLock<Arc<AuthFile>>,
    anonymous: Arc<Principal>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why the auth file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("auth file {path}: {message}")]
pub struct LoadError {
    pub path: String,
    pub message: String,
}

fn load(path: &Path) -> Result<AuthFile, LoadError> {
    let failed = |message: String| LoadError {
        path: path.display().to_string(),
        message,
    };
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path)
        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o004 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the auth file is readable by every user; it may hold webhook secrets (chmod 600 it)"
        );
    }
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    AuthFile::parse(&text).map_err(|e| failed(e.0))
}

impl Authenticator {
    /// Lets every caller in as [`Principal::anonymous`].
    pub fn open() -> Self {
        Self {
            path: None,
            enforcing: false,
            current: RwLock::default(),
            anonymous: Arc::new(Principal::anonymous()),
        }
    }

    /// Reads the auth file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let file = load(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            enforcing: true,
            current: RwLock::new(Arc::new(file)),
            anonymous: Arc::new(Principal::anonymous()),
        })
    }

    /// Uses an already parsed file (tests, embedders); it cannot be
    /// reloaded.
    pub fn from_parsed(file: AuthFile) -> Self {
        Self {
            path: None,
            enforcing: true,
            current: RwLock::new(Arc::new(file)),
            anonymous: Arc::new(Principal::anonymous()),
        }
    }

    /// True when callers must authenticate.
    pub fn is_enforcing(&self) -> bool {
        self.enforcing
    }

    fn file(&self) -> Arc<AuthFile> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the auth file again. On any error the file in use is kept.
    /// Returns how many principals the new file names; None when there is
    /// no file to read.
    pub fn reload(&self) -> Result<Option<usize>, LoadError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let file = load(path)?;
        let count = file.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(file);
        Ok(Some(count))
    }

    /// Finds the principal `credentials` stand for. A bearer token, when
    /// given, decides alone: a wrong token is refused even with a good
    /// certificate.
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Result<Arc<Principal>, AuthError> {
        if !self.is_enforcing() {
            return Ok(Arc::clone(&self.anonymous));
        }
        let file = self.file();
        if let Some(token) = credentials.bearer {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Look at every entry, so the time taken does not depend on
            // which one (if any) matches.
            let mut found = None;
            for entry in &file.entries {
                if let Some(expected) = &entry.token_sha256
                    && bool::from(expected.ct_eq(&digest))
                {
                    found = Some(Arc::clone(&entry.principal));
                }
            }
            return found.ok_or(AuthError::UnknownToken);
        }
        if let Some(cn) = credentials.client_cn {
            return file
                .entries
                .iter()
                .find(|entry| entry.principal.name == cn)
                .map(|entry| Arc::clone(&entry.principal))
                .ok_or(AuthError::UnknownCertificate);
        }
        Err(AuthError::Missing)
    }
}

impl TenantWeights for Authenticator {
    fn weights(&self) -> Arc<HashMap<Tenant, u32>> {
        Arc::clone(&self.file().weights)
    }
}

impl TenantSecrets for Authenticator {
    fn secrets_for(&self, tenant: &Tenant) -> Option<Vec<Secret>> {
        self.file().webhook_secrets.get(tenant).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> (Authenticator, String) {
        let token = token::generate();
        let file = AuthFile::parse(&format!(
            "[[principal]]\nname = \"alice\"\ntenant = \"acme\"\nroles = [\"writer\"]\ntoken_sha256 = \"{}\"\n\
             [[principal]]\nname = \"bot.acme\"\ntenant = \"acme\"\nroles = [\"reader\"]\n",
            token::digest_hex(&token)
        ))
        .unwrap();
        (Authenticator::from_parsed(file), token)
    }

    #[test]
    fn tokens_and_certificates_name_principals() {
        let (auth, token) = authenticator();
        let alice = auth
            .authenticate(Credentials {
                bearer: Some(&token),
                client_cn: None,
            })
            .unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Writer));
        assert_eq!(alice.scope(), Scope::Tenant(Tenant::named("acme").unwrap()));
        let bot = auth
            .authenticate(Credentials {
                bearer: None,
                client_cn: Some("bot.acme"),
            })
            .unwrap();
        assert_eq!(bot.role, Role::Reader);
    }

    #[test]
    fn anything_else_is_refused() {
        let (auth, token) = authenticator();
        let refused = |bearer, client_cn| {
            auth.authenticate(Credentials { bearer, client_cn })
                .unwrap_err()
        };
        assert_eq!(refused(None, None), AuthError::Missing);
        assert_eq!(refused(Some("nope"), None), AuthError::UnknownToken);
        assert_eq!(refused(Some(""), None), AuthError::UnknownToken);
        assert_eq!(
            refused(None, Some("mallory")),
            AuthError::UnknownCertificate
        );
        // A bad token is not rescued by a good certificate.
        assert_eq!(
            refused(Some("nope"), Some("bot.acme")),
            AuthError::UnknownToken
        );
        assert!(
            auth.authenticate(Credentials {
                bearer: Some(&token),
                client_cn: Some("mallory"),
            })
            .is_ok()
        );
    }

    #[test]
    fn without_a_file_everyone_is_the_anonymous_admin() {
        let auth = Authenticator::open();
        let caller = auth.authenticate(Credentials::default()).unwrap();
        assert_eq!(*caller, Principal::anonymous());
        assert_eq!(caller.scope(), Scope::All);
    }
}
