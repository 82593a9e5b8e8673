//! The auth file: principals and per-tenant settings, in TOML.
//!
//! ```toml
//! [[principal]]
//! name = "alice"
//! tenant = "acme"
//! roles = ["writer"]
//! token_sha256 = "<64 hex digits: the SHA-256 of alice's token>"
//!
//! [[principal]]
//! name = "reporting.acme.internal"   # a client certificate's subject CN
//! tenant = "acme"
//! roles = ["reader"]
//!
//! [[principal]]
//! name = "thumbnailer"               # an outside worker
//! tenant = "acme"
//! roles = ["worker"]
//! kinds = ["images.resize"]          # what it may lease; "*" for any
//! token_sha256 = "..."
//!
//! [tenant.acme]
//! webhook_secrets = ["whsec_..."]    # the current one first
//! weight = 3                         # three starts per turn (default 1)
//! ```
//!
//! Parsing checks everything a typo could break (unknown keys, bad hex,
//! duplicate names or tokens, bad tenant names), so that a reload either
//! applies a whole, valid file or changes nothing.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::{Principal, Role};
use crate::model::Tenant;
use crate::webhook::Secret;

/// A principal as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    tenant: String,
    roles: Vec<Role>,
    #[serde(default)]
    token_sha256: Option<String>,
    /// With the worker role: the kinds it may lease.
    #[serde(default)]
    kinds: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(default)]
    webhook_secrets: Vec<String>,
    /// Its share of a kind's starts when tenants take turns (1 to 1000).
    #[serde(default)]
    weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    principal: Vec<RawPrincipal>,
    #[serde(default)]
    tenant: HashMap<String, RawTenant>,
}

/// A principal with the digest of its token, if it has one.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) principal: std::sync::Arc<Principal>,
    pub(crate) token_sha256: Option<[u8; 32]>,
}

/// A parsed, checked auth file.
#[derive(Debug, Default)]
pub struct AuthFile {
    pub(crate) entries: Vec<Entry>,
    pub(crate) webhook_secrets: HashMap<Tenant, Vec<Secret>>,
    /// The tenants whose weight is not 1.
    pub(crate) weights: std::sync::Arc<HashMap<Tenant, u32>>,
}

/// The largest weight a tenant may have.
pub const MAX_WEIGHT: u32 = 1000;

/// Why an auth file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthFileError(pub String);

impl AuthFile {
    /// Parses and checks the text of an auth file.
    pub fn parse(text: &str) -> Result<Self, AuthFileError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| AuthFileError(e.to_string()))?;
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        let mut entries = Vec::with_capacity(raw.principal.len());
        for (index, p) in raw.principal.into_iter().enumerate() {
            let at = |what: String| {
                AuthFileError(format!("principal {} ({:?}): {what}", index + 1, p.name))
            };
            if p.name.trim().is_empty()
                || p.name.len() > 256
                || p.name.chars().any(char::is_control)
            {
                return Err(at("name must be 1 to 256 printable characters".into()));
            }
            if !names.insert(p.name.clone()) {
                return Err(at("the name is used twice".into()));
            }
            let tenant = Tenant::named(&p.tenant).map_err(at)?;
            let role = p.roles.iter().copied().max().ok_or_else(|| {
                at("roles must name at least one of worker, reader, writer, admin".into())
            })?;
            let worker_kinds = match (p.roles.contains(&Role::Worker), p.kinds.is_empty()) {
                (true, true) => {
                    return Err(at(
                        "a worker lists the kinds it may lease: kinds = [\"resize\"], or [\"*\"] for any"
                            .into(),
                    ));
                }
                (true, false) => Some(p.kinds.clone()),
                (false, true) => None,
                (false, false) => {
                    return Err(at("kinds are for principals with the worker role".into()));
                }
            };
            let token_sha256 = match &p.token_sha256 {
                None => None,
                Some(hex_digest) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hex_digest.trim(), &mut digest).map_err(|_| {
                        at("token_sha256 must be 64 hex digits (the SHA-256 of the token)".into())
                    })?;
                    if !digests.insert(digest) {
                        return Err(at("the same token is given to two principals".into()));
                    }
                    Some(digest)
                }
            };
            entries.push(Entry {
                principal: std::sync::Arc::new(Principal {
                    name: p.name,
                    tenant,
                    role,
                    worker_kinds,
                }),
                token_sha256,
            });
        }
        let mut webhook_secrets = HashMap::new();
        let mut weights = HashMap::new();
        for (tenant, settings) in raw.tenant {
            let named = Tenant::named(&tenant)
                .map_err(|e| AuthFileError(format!("[tenant.{tenant}]: {e}")))?;
            match settings.weight {
                None | Some(1) => {}
                Some(w @ 2..=MAX_WEIGHT) => {
                    weights.insert(named.clone(), w);
                }
                Some(w) => {
                    return Err(AuthFileError(format!(
                        "[tenant.{tenant}] weight: {w} is not from 1 to {MAX_WEIGHT}"
                    )));
                }
            }
            if settings.webhook_secrets.is_empty() {
                continue;
            }
            let secrets = settings
                .webhook_secrets
                .iter()
                .map(|s| s.parse::<Secret>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AuthFileError(format!("[tenant.{tenant}] webhook_secrets: {e}")))?;
            webhook_secrets.insert(named, secrets);
        }
        Ok(Self {
            entries,
            webhook_secrets,
            weights: std::sync::Arc::new(weights),
        })
    }

    /// How many principals the file names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file names no principal.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_full_file_parses() {
        let file = AuthFile::parse(&format!(
            r#"
            [[principal]]
            name = "alice"
            tenant = "acme"
            roles = ["reader", "writer"]
            token_sha256 = "{DIGEST}"

            [[principal]]
            name = "cert-only"
            tenant = "acme"
            roles = ["reader"]

            [tenant.acme]
            webhook_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
            "#
        ))
        .unwrap();
        assert_eq!(file.len(), 2);
        assert_eq!(file.entries[0].principal.role, Role::Writer);
        assert!(file.entries[1].token_sha256.is_none());
        assert_eq!(
            file.webhook_secrets[&Tenant::named("acme").unwrap()].len(),
            1
        );
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        let principal = |body: &str| format!("[[principal]]\n{body}\n");
        let cases = [
            (
                principal(
                    r#"name = "a"
tenant = "acme"
roles = []"#,
                ),
                "roles",
            ),
            (
                principal(
                    r#"name = "a"
tenant = "Acme"
roles = ["reader"]"#,
                ),
                "tenant",
            ),
            (
                principal(
                    r#"name = "a"
tenant = "acme"
roles = ["root"]"#,
                ),
                "root",
            ),
            (
                principal(
                    r#"name = "a"
tenant = "acme"
roles = ["reader"]
token_sha256 = "abc""#,
                ),
                "64 hex",
            ),
            (
                principal(
                    r#"name = "a"
tenant = "acme"
roles = ["reader"]
password = "x""#,
                ),
                "password",
            ),
            (
                format!(
                    "{}{}",
                    principal(
                        r#"name = "a"
tenant = "acme"
roles = ["reader"]"#
                    ),
                    principal(
                        r#"name = "a"
tenant = "acme"
roles = ["reader"]"#
                    )
                ),
                "twice",
            ),
            (
                "[tenant.acme]\nwebhook_secrets = [\"whsec_!!\"]".to_owned(),
                "webhook_secrets",
            ),
            ("[tenant.acme]\nweight = 0".to_owned(), "weight"),
            ("[tenant.acme]\nweight = 1001".to_owned(), "weight"),
        ];
        for (text, expected) in cases {
            let error = AuthFile::parse(&text).unwrap_err();
            assert!(error.0.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn tenants_weights_are_kept_when_not_one() {
        let file =
            AuthFile::parse("[tenant.acme]\nweight = 3\n[tenant.globex]\nweight = 1\n").unwrap();
        let acme = Tenant::named("acme").unwrap();
        assert_eq!(file.weights.get(&acme), Some(&3));
        assert_eq!(file.weights.len(), 1);
    }
}
