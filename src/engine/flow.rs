//! Flow control, as the engine offers it: limits set by flag at start and
//! by the admin RPC while running (both kept in the store, so every node
//! enforces the same), tenants' weights, and why a queued operation waits.
//! The store's claim enforces the limits; this module checks what callers
//! ask for and explains the waits.

use std::collections::HashMap;
use std::sync::Arc;

use super::error::EngineError;
use super::{Engine, Inner};
use crate::model::flow::{self, Gate, MAX_KEY, Rate, Waiting};
use crate::model::{KindLimits, Limit, LimitScope, Operation, Scope, State, Tenant};

/// Where tenants' weights come from (the auth file): a tenant of weight 3
/// takes three operations per turn when tenants take turns; 1 unless set.
pub trait TenantWeights: Send + Sync + 'static {
    /// The tenants whose weight is not 1.
    fn weights(&self) -> Arc<HashMap<Tenant, u32>>;
}

/// A limit as a caller asks for it, before it is checked.
#[derive(Clone, Debug, Default)]
pub struct LimitRequest {
    pub kind: String,
    pub scope: Option<LimitScope>,
    /// At most this many at once; None for no concurrency limit.
    pub concurrency: Option<i64>,
    /// Stacked rates, each `COUNT/UNIT[:burst=N]`.
    pub rates: Vec<String>,
}

/// One limit of a kind and its use now.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitUse {
    pub limit: Limit,
    /// For the kind's own scope, how many run holding it; for keys and
    /// tenants, how many keys or tenants run as many as they may.
    pub running: u64,
    /// The busiest keys or tenants and how many each runs (for callers
    /// who see every tenant; the caller's own tenant otherwise).
    pub busiest: Vec<(String, u32)>,
    /// Whole tokens left now in each of the kind's own buckets.
    pub tokens: Vec<f64>,
}

impl Inner {
    /// The tenants' weights now.
    pub(crate) fn weights(&self) -> Arc<HashMap<Tenant, u32>> {
        self.config
            .weights
            .as_ref()
            .map(|w| w.weights())
            .unwrap_or_default()
    }
}

/// Checks a concurrency key: at most [`MAX_KEY`] bytes.
pub(crate) fn check_key(key: Option<&str>) -> Result<(), EngineError> {
    match key {
        Some(key) if key.len() > MAX_KEY => Err(EngineError::invalid(
            "run.concurrency_key",
            format!(
                "the concurrency key is {} bytes; it may be at most {MAX_KEY}",
                key.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Turns what a caller asked for into a limit, naming the field at fault.
/// `kind` is the kind's full name, already checked.
fn limit_of(kind: String, request: &LimitRequest) -> Result<Limit, EngineError> {
    let scope = request.scope.ok_or_else(|| {
        EngineError::invalid(
            "scope",
            "say what the limit counts over: KIND, KEY or TENANT",
        )
    })?;
    let concurrency = match request.concurrency {
        None => None,
        Some(n) if n <= 0 => {
            return Err(EngineError::invalid(
                "concurrency",
                format!("{n} allows nothing; a concurrency limit must be at least 1"),
            ));
        }
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let rates = request
        .rates
        .iter()
        .map(|r| Rate::parse(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::invalid("rates", e))?;
    let limit = Limit {
        kind,
        scope,
        concurrency,
        rates,
    };
    limit
        .check()
        .map_err(|(field, message)| EngineError::invalid(field, message))?;
    Ok(limit)
}

impl Engine {
    /// Sets one limit of a kind (a built-in kind by full or short name, or
    /// a declared outside kind) on every node, replacing the one of the
    /// same scope.
    pub async fn set_limit(&self, request: &LimitRequest) -> Result<Limit, EngineError> {
        let kind = self.queue_kind(&request.kind)?;
        let limit = limit_of(kind, request)?;
        self.inner
            .ops
            .set_limit(&limit)
            .await
            .map_err(EngineError::from)?;
        self.inner.outside.wake();
        Ok(limit)
    }

    /// Removes a kind's limit of one scope; true when there was one.
    pub async fn clear_limit(&self, kind: &str, scope: LimitScope) -> Result<bool, EngineError> {
        let kind = self.queue_kind(kind)?;
        let had = self.kind_limits(&kind).await?.of(scope).is_some();
        let clear = Limit {
            kind,
            scope,
            concurrency: None,
            rates: Vec::new(),
        };
        self.inner
            .ops
            .set_limit(&clear)
            .await
            .map_err(EngineError::from)?;
        self.inner.outside.wake();
        Ok(had)
    }

    /// Every kind's limits.
    pub async fn limits(&self) -> Result<Vec<Limit>, EngineError> {
        self.inner.ops.limits().await.map_err(EngineError::from)
    }

    async fn kind_limits(&self, kind: &str) -> Result<KindLimits, EngineError> {
        let (limits, _) = self
            .inner
            .ops
            .usage(kind, Some(&[]))
            .await
            .map_err(EngineError::from)?;
        Ok(limits)
    }

    /// Every limited kind's limits and their use, as `scope` may see them.
    pub async fn limit_uses(
        &self,
        scope: &Scope,
    ) -> Result<HashMap<String, Vec<LimitUse>>, EngineError> {
        let mut kinds: Vec<String> = self.limits().await?.into_iter().map(|l| l.kind).collect();
        kinds.dedup();
        let now = self.inner.clock.now();
        let mut out = HashMap::new();
        for kind in kinds {
            let (limits, usage) = self
                .inner
                .ops
                .usage(&kind, None)
                .await
                .map_err(EngineError::from)?;
            let uses = limits
                .limits
                .iter()
                .map(|limit| {
                    let mine = |key: &str| match limit.scope {
                        LimitScope::Kind => false,
                        LimitScope::Key => *scope == Scope::All,
                        LimitScope::Tenant => {
                            Tenant::from_stored(key).is_ok_and(|t| scope.permits(&t))
                        }
                    };
                    let mut busiest: Vec<(String, u32)> = usage
                        .slots()
                        .filter(|(s, key, n)| *s == limit.scope && *n > 0 && mine(key))
                        .map(|(_, key, n)| (key.to_owned(), n))
                        .collect();
                    busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    let running = match (limit.scope, limit.concurrency) {
                        (LimitScope::Kind, _) => usage.running(LimitScope::Kind, "").into(),
                        (_, Some(max)) => usage
                            .slots()
                            .filter(|(s, _, n)| *s == limit.scope && *n >= max)
                            .count() as u64,
                        (_, None) => 0,
                    };
                    let tokens = match limit.scope {
                        LimitScope::Kind => limit
                            .rates
                            .iter()
                            .enumerate()
                            .map(|(i, rate)| {
                                usage
                                    .bucket(LimitScope::Kind, i, "")
                                    .map_or(f64::from(rate.burst), |b| b.level(rate, now).floor())
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    LimitUse {
                        limit: limit.clone(),
                        running,
                        busiest,
                        tokens,
                    }
                })
                .collect();
            out.insert(kind, uses);
        }
        Ok(out)
    }

    /// Sets the limits the operator gave by flag, at start.
    pub(crate) async fn set_configured_limits(&self) -> Result<(), EngineError> {
        for request in &self.inner.config.limits {
            let limit = limit_of(self.queue_kind(&request.kind)?, request)?;
            self.inner
                .ops
                .set_limit(&limit)
                .await
                .map_err(EngineError::from)?;
        }
        Ok(())
    }

    /// Why a queued operation has not started, when it can be told: its
    /// queue is paused, it waits out a backoff, or a limit holds it back.
    /// None for an operation that is not queued, or that should start at
    /// the next claim.
    pub async fn waiting(&self, op: &Operation) -> Option<Waiting> {
        if op.state != State::Queued {
            return None;
        }
        let now = self.inner.clock.now();
        let paused = self.inner.ops.paused().await.ok()?;
        if paused.contains(&op.kind) {
            return Some(Waiting::QueuePaused);
        }
        if let Some(until) = op.not_before.filter(|t| *t > now) {
            // Its first start, asked for later; or a retry's backoff.
            return Some(if op.scheduled_start == Some(until) {
                Waiting::Scheduled { until }
            } else {
                Waiting::Backoff { until }
            });
        }
        let slots: Vec<_> = LimitScope::ALL
            .into_iter()
            .filter_map(|scope| {
                flow::slot_key(scope, op.tenant.as_str(), op.concurrency_key.as_deref())
                    .map(|key| (scope, key.to_owned()))
            })
            .collect();
        let (limits, mut usage) = self.inner.ops.usage(&op.kind, Some(&slots)).await.ok()?;
        let gate = Gate {
            limits: &limits,
            usage: &mut usage,
        };
        if let Err((_, waiting)) =
            gate.check(op.tenant.as_str(), op.concurrency_key.as_deref(), now)
        {
            return Some(waiting);
        }
        match self.inner.slots.of(&op.kind) {
            Some((running, limit)) if running >= limit => Some(Waiting::KindConcurrency),
            _ => None,
        }
    }
}
