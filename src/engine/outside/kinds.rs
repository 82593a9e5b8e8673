//! Declarations of outside kinds: what a kind is (attempts, timeout,
//! concurrency, lease), whom the declaration is for, and where it is kept.
//!
//! A worker of one tenant declares a kind for that tenant alone; an
//! admin's worker and the server's `--outside-kind` flag declare it for
//! every tenant. A declaration for everyone stands over a tenant's of the
//! same name, and within an owner the first declaration stands. Every
//! value is bounded, so no declaration can make a kind's operations fail
//! at once or hold work forever. Declarations are kept in the store, so
//! they survive restarts and every node of a shared store knows them.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tracing::warn;

use super::Roster;
use super::task::OutsideTask;
use crate::engine::error::EngineError;
use crate::engine::task::{Kind, TaskPolicy};
use crate::engine::{Engine, Inner};
use crate::model::{Reason, Scope, Tenant};

/// How long a lease lasts without a heartbeat, unless the kind says.
pub const DEFAULT_WORKER_LEASE: Duration = Duration::from_secs(30);

/// The most outside kinds one server keeps.
pub const MAX_OUTSIDE_KINDS: usize = 1024;

/// The most outside kinds one tenant may declare.
pub const MAX_KINDS_PER_TENANT: usize = 128;

/// The bounds of every declared value.
const ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=100;
const TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
const LEASE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
const MAX_CONCURRENCY: usize = 100_000;

/// A kind served by outside workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindSpec {
    pub name: String,
    /// The most attempts an operation gets, counting the first.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub attempt_timeout: Duration,
    /// The most operations of the kind leased at once on this server;
    /// None for no limit beyond the workers' credits.
    pub concurrency: Option<usize>,
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
}

impl KindSpec {
    /// A kind with the defaults: 3 attempts, an hour each, 30 s leases.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(3600),
            concurrency: None,
            lease: DEFAULT_WORKER_LEASE,
        }
    }

    /// Checks the name and that every value is within its bounds.
    pub(super) fn check(&self) -> Result<(), EngineError> {
        let name = &self.name;
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(EngineError::invalid(
                "kind",
                format!("{name:?} is not a kind name: 1 to 128 letters, digits, '.', '-' and '_'"),
            ));
        }
        let human = |d: &Duration| humantime::format_duration(*d).to_string();
        if !ATTEMPTS.contains(&self.max_attempts) {
            return Err(EngineError::invalid(
                "max_attempts",
                format!(
                    "a kind allows {} to {} attempts",
                    ATTEMPTS.start(),
                    ATTEMPTS.end()
                ),
            ));
        }
        if !TIMEOUT.contains(&self.attempt_timeout) {
            return Err(EngineError::invalid(
                "attempt_timeout",
                format!(
                    "an attempt's timeout is {} to {}",
                    human(TIMEOUT.start()),
                    human(TIMEOUT.end())
                ),
            ));
        }
        if !LEASE.contains(&self.lease) {
            return Err(EngineError::invalid(
                "lease_duration",
                format!(
                    "a lease lasts {} to {}",
                    human(LEASE.start()),
                    human(LEASE.end())
                ),
            ));
        }
        if self
            .concurrency
            .is_some_and(|n| n == 0 || n > MAX_CONCURRENCY)
        {
            return Err(EngineError::invalid(
                "concurrency",
                format!("a kind's concurrency is 1 to {MAX_CONCURRENCY}"),
            ));
        }
        Ok(())
    }
}

/// Whom a declaration is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// Every tenant: declared by the server's configuration or an admin.
    Everyone,
    /// One tenant, whose worker declared it.
    Tenant(Tenant),
}

impl Owner {
    /// The key a declaration of `name` is kept under in the store.
    fn key(&self, name: &str) -> String {
        match self {
            Owner::Everyone => format!("{DECLARED}:{name}"),
            Owner::Tenant(tenant) => format!("{DECLARED}@{}:{name}", tenant.as_str()),
        }
    }

    /// The owner and name a stored key names.
    fn parse(key: &str) -> Option<(Owner, &str)> {
        let rest = key.strip_prefix(DECLARED)?;
        if let Some(name) = rest.strip_prefix(':') {
            return Some((Owner::Everyone, name));
        }
        let (tenant, name) = rest.strip_prefix('@')?.split_once(':')?;
        Some((Owner::Tenant(Tenant::from_stored(tenant).ok()?), name))
    }
}

/// Where declarations are kept in the store, before the owner and name.
const DECLARED: &str = "outside-kind";

/// A declared kind, with how much of it is leased here.
pub(crate) struct Declared {
    pub(crate) spec: KindSpec,
    pub(crate) kind: Kind,
    pub(crate) leased: AtomicUsize,
}

/// Every declaration this server knows.
#[derive(Default)]
pub(crate) struct Declarations {
    map: Mutex<HashMap<(Owner, String), Arc<Declared>>>,
}

impl Declarations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Owner, String), Arc<Declared>>> {
        // Each critical section is a lookup or an insert.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The declaration that governs `tenant`'s operations of `name`: the
    /// one for everyone, else the tenant's own.
    pub(crate) fn find(&self, tenant: &Tenant, name: &str) -> Option<Arc<Declared>> {
        let map = self.lock();
        map.get(&(Owner::Everyone, name.to_owned()))
            .or_else(|| map.get(&(Owner::Tenant(tenant.clone()), name.to_owned())))
            .cloned()
    }

    /// The declaration of `name` that `owner` would use.
    pub(crate) fn governing(&self, owner: &Owner, name: &str) -> Option<Arc<Declared>> {
        match owner {
            Owner::Tenant(tenant) => self.find(tenant, name),
            Owner::Everyone => self
                .lock()
                .get(&(Owner::Everyone, name.to_owned()))
                .cloned(),
        }
    }

    /// Whether any owner declared `name`.
    pub(crate) fn anyone_declared(&self, name: &str) -> bool {
        self.lock().keys().any(|(_, n)| n == name)
    }

    /// The declarations `scope` may see, by name: everyone's and its
    /// tenant's (all of them for a scope over all tenants).
    pub(crate) fn visible(&self, scope: &Scope) -> Vec<KindSpec> {
        let mut specs: Vec<KindSpec> = self
            .lock()
            .iter()
            .filter(|((owner, _), _)| match owner {
                Owner::Everyone => true,
                Owner::Tenant(tenant) => scope.permits(tenant),
            })
            .map(|(_, d)| d.spec.clone())
            .collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs.dedup_by(|a, b| a.name == b.name);
        specs
    }

    /// Adds a declaration unless `owner` already has one of the name (or
    /// one for everyone stands over it); returns the standing one.
    fn insert(
        &self,
        hub: Weak<Roster>,
        owner: Owner,
        spec: KindSpec,
    ) -> Result<Arc<Declared>, EngineError> {
        let mut map = self.lock();
        let standing = map
            .get(&(Owner::Everyone, spec.name.clone()))
            .or_else(|| map.get(&(owner.clone(), spec.name.clone())));
        if let Some(standing) = standing {
            return Ok(Arc::clone(standing));
        }
        let full = |message: String| EngineError::ResourceExhausted {
            reason: Reason::TooManyKinds,
            message,
            retry_after: Duration::from_secs(60),
        };
        if map.len() >= MAX_OUTSIDE_KINDS {
            return Err(full(format!(
                "this server keeps at most {MAX_OUTSIDE_KINDS} outside kinds"
            )));
        }
        if let Owner::Tenant(_) = &owner
            && map.keys().filter(|(o, _)| *o == owner).count() >= MAX_KINDS_PER_TENANT
        {
            return Err(full(format!(
                "a tenant declares at most {MAX_KINDS_PER_TENANT} outside kinds"
            )));
        }
        let policy = TaskPolicy {
            retry_safe: true,
            max_attempts: spec.max_attempts,
            timeout: spec.attempt_timeout,
            concurrency: spec.concurrency.unwrap_or(usize::MAX),
            ..TaskPolicy::default()
        };
        let declared = Arc::new(Declared {
            kind: Kind {
                task: Arc::new(OutsideTask { hub }),
                policy,
                short_name: None,
            },
            spec: spec.clone(),
            leased: AtomicUsize::new(0),
        });
        map.insert((owner, spec.name), Arc::clone(&declared));
        Ok(declared)
    }
}

impl Inner {
    /// Adds a declaration to what this node knows.
    fn declare_here(&self, owner: Owner, spec: KindSpec) -> Result<Arc<Declared>, EngineError> {
        let hub = Arc::downgrade(&self.outside);
        self.outside.kinds.insert(hub, owner, spec)
    }
}

impl Engine {
    /// Declares an outside kind for `owner`. The first declaration of a
    /// name stands, across restarts and across the nodes of a shared
    /// store, and one for everyone stands over a tenant's; the standing
    /// one is returned, with whether this call made it.
    pub async fn declare_kind(
        &self,
        owner: Owner,
        spec: KindSpec,
    ) -> Result<(KindSpec, bool), EngineError> {
        let inner = &self.inner;
        if inner.registry.contains(&spec.name) {
            return Err(EngineError::FailedPrecondition {
                reason: Reason::KindIsBuiltIn,
                message: format!("{} is a built-in kind, not an outside one", spec.name),
            });
        }
        spec.check()?;
        if let Some(standing) = inner.outside.kinds.governing(&owner, &spec.name) {
            return Ok((standing.spec.clone(), false));
        }
        // Another node may have declared it meanwhile: the store decides.
        if let Some(standing) = self.load_declaration(&owner, &spec.name).await? {
            return Ok((standing.spec.clone(), false));
        }
        let stored = inner
            .settled
            .settle(&owner.key(&spec.name), &encode(&spec))
            .await
            .map_err(EngineError::from)?;
        let standing = decode(&spec.name, &stored).unwrap_or(spec.clone());
        let made = standing == spec;
        let declared = inner.declare_here(owner, standing)?;
        Ok((declared.spec.clone(), made))
    }

    /// Reads the declarations of `name` that would govern `owner` from the
    /// store into this node (one for everyone first).
    async fn load_declaration(
        &self,
        owner: &Owner,
        name: &str,
    ) -> Result<Option<Arc<Declared>>, EngineError> {
        let mut owners = vec![Owner::Everyone];
        if let Owner::Tenant(_) = owner {
            owners.push(owner.clone());
        }
        for candidate in owners {
            let key = candidate.key(name);
            let stored = self
                .inner
                .settled
                .settled(&key)
                .await
                .map_err(EngineError::from)?;
            if let Some(spec) = stored
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| decode(name, v))
            {
                return self.inner.declare_here(candidate, spec).map(Some);
            }
        }
        Ok(None)
    }

    /// Declares the outside kinds the store remembers.
    pub(crate) async fn load_declared_kinds(&self) -> Result<(), EngineError> {
        let stored = self
            .inner
            .settled
            .settled(DECLARED)
            .await
            .map_err(EngineError::from)?;
        for (key, value) in stored {
            let Some((owner, name)) = Owner::parse(&key) else {
                continue;
            };
            match decode(name, &value) {
                Some(spec) if !self.inner.registry.contains(name) => {
                    self.inner.declare_here(owner, spec)?;
                }
                Some(_) => {}
                None => warn!(
                    kind = name,
                    "a stored kind declaration is unreadable; skipped"
                ),
            }
        }
        Ok(())
    }

    /// Whether `tenant` may create operations of the outside kind `name`:
    /// it is declared for everyone or for `tenant`, here or in the store
    /// (a worker of another node may have declared it since this one
    /// opened).
    pub async fn find_outside_kind(
        &self,
        tenant: &Tenant,
        name: &str,
    ) -> Result<bool, EngineError> {
        if self.inner.outside.kinds.find(tenant, name).is_some() {
            return Ok(true);
        }
        let owner = Owner::Tenant(tenant.clone());
        Ok(self.load_declaration(&owner, name).await?.is_some())
    }

    /// The outside kinds `scope` may see: those declared for everyone, and
    /// its tenant's.
    pub fn outside_kinds(&self, scope: &Scope) -> Vec<KindSpec> {
        self.inner.outside.kinds.visible(scope)
    }
}

/// A declaration as stored: JSON, so that it can gain fields.
fn encode(spec: &KindSpec) -> Vec<u8> {
    serde_json::json!({
        "max_attempts": spec.max_attempts,
        "attempt_timeout_ms": u64::try_from(spec.attempt_timeout.as_millis()).unwrap_or(u64::MAX),
        "concurrency": spec.concurrency,
        "lease_ms": u64::try_from(spec.lease.as_millis()).unwrap_or(u64::MAX),
    })
    .to_string()
    .into_bytes()
}

fn decode(name: &str, bytes: &[u8]) -> Option<KindSpec> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(KindSpec {
        name: name.to_owned(),
        max_attempts: u32::try_from(value["max_attempts"].as_u64()?).ok()?,
        attempt_timeout: Duration::from_millis(value["attempt_timeout_ms"].as_u64()?),
        concurrency: value["concurrency"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok()),
        lease: Duration::from_millis(value["lease_ms"].as_u64()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_owner() {
        let acme = Tenant::named("acme").unwrap();
        for (owner, name) in [
            (Owner::Everyone, "images.resize"),
            (Owner::Tenant(acme), "text.upper"),
            (Owner::Tenant(Tenant::default_tenant()), "a"),
        ] {
            let key = owner.key(name);
            assert_eq!(Owner::parse(&key), Some((owner, name)), "{key}");
        }
        assert_eq!(Owner::parse("page-token-key"), None);
    }

    #[test]
    fn declared_values_are_bounded() {
        let ok = KindSpec::new("k");
        assert!(ok.check().is_ok());
        for bad in [
            KindSpec {
                attempt_timeout: Duration::from_millis(1),
                ..ok.clone()
            },
            KindSpec {
                max_attempts: 0,
                ..ok.clone()
            },
            KindSpec {
                max_attempts: 1000,
                ..ok.clone()
            },
            KindSpec {
                lease: Duration::from_secs(86_400),
                ..ok.clone()
            },
            KindSpec {
                concurrency: Some(10_000_000),
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
