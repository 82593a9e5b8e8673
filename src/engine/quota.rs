//! Per-tenant limits on abuse: a token bucket on creates and a cap on
//! concurrent watch streams. (The cap on queued operations lives in the
//! run queue, which already counts them.)

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::EngineError;
use crate::metrics::WatchGauge;
use crate::model::{Reason, Tenant};

/// Concurrent Watch streams and WaitOperation calls a tenant may have by
/// default.
pub const DEFAULT_MAX_WATCHES: usize = 10_000;

/// What each tenant may use. `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantQuotas {
    /// Creates per second, sustained.
    pub creates_per_second: Option<NonZeroU32>,
    /// Creates allowed in one burst; defaults to one second's worth.
    pub create_burst: Option<NonZeroU32>,
    /// Operations waiting for a worker.
    pub max_queued: Option<usize>,
    /// Concurrent Watch streams and WaitOperation calls.
    pub max_watches: Option<usize>,
}

impl Default for TenantQuotas {
    /// No create rate or queue cap of its own (the server's queue bound
    /// applies), and [`DEFAULT_MAX_WATCHES`] watches.
    fn default() -> Self {
        Self {
            creates_per_second: None,
            create_burst: None,
            max_queued: None,
            max_watches: Some(DEFAULT_MAX_WATCHES),
        }
    }
}

pub(crate) struct Quotas {
    creates: Option<DefaultKeyedRateLimiter<Tenant>>,
    clock: DefaultClock,
    max_watches: Option<usize>,
    watches: Mutex<HashMap<Tenant, usize>>,
}

impl Quotas {
    pub(crate) fn new(quotas: &TenantQuotas) -> Arc<Self> {
        let creates = quotas.creates_per_second.map(|rate| {
            let burst = quotas.create_burst.unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Arc::new(Self {
            creates,
            clock: DefaultClock::default(),
            max_watches: quotas.max_watches,
            watches: Mutex::default(),
        })
    }

    /// Takes one create from `tenant`'s bucket.
    pub(crate) fn create(&self, tenant: &Tenant) -> Result<(), EngineError> {
        let Some(limiter) = &self.creates else {
            return Ok(());
        };
        limiter.check_key(tenant).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            EngineError::ResourceExhausted {
                reason: Reason::RateLimited,
                message: format!(
                    "too many creates from this tenant; retry in {} ms",
                    wait.as_millis().max(1)
                ),
                retry_after: wait.max(Duration::from_millis(1)),
            }
        })
    }

    /// Counts one more watch stream of `tenant` until the permit is
    /// dropped.
    pub(crate) fn watch(self: &Arc<Self>, tenant: &Tenant) -> Result<WatchPermit, EngineError> {
        if self.max_watches.is_none() {
            return Ok(WatchPermit {
                counted: None,
                gauge: None,
            });
        }
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let count = watches.entry(tenant.clone()).or_insert(0);
        if self.max_watches.is_some_and(|max| *count >= max) {
            return Err(EngineError::ResourceExhausted {
                reason: Reason::TooManyWatches,
                message: format!(
                    "this tenant already follows {count} operations (Watch streams and WaitOperation calls), its limit; end one first"
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        *count += 1;
        Ok(WatchPermit {
            counted: Some((Arc::clone(self), tenant.clone())),
            gauge: None,
        })
    }
}

/// One open watch stream (or long poll), counted against its tenant while
/// it lives, when there is a limit to count against.
pub struct WatchPermit {
    counted: Option<(Arc<Quotas>, Tenant)>,
    /// Shows the stream in the metrics while it lives.
    pub(crate) gauge: Option<WatchGauge>,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let Some((quotas, tenant)) = &self.counted else {
            return;
        };
        let mut watches = quotas.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = watches.get_mut(tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                watches.remove(tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Tenant {
        Tenant::named(name).unwrap()
    }

    #[test]
    fn the_create_bucket_is_per_tenant() {
        let quotas = Quotas::new(&TenantQuotas {
            creates_per_second: NonZeroU32::new(1),
            create_burst: NonZeroU32::new(2),
            ..TenantQuotas::default()
        });
        assert!(quotas.create(&t("a")).is_ok());
        assert!(quotas.create(&t("a")).is_ok());
        match quotas.create(&t("a")) {
            Err(EngineError::ResourceExhausted { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
        assert!(quotas.create(&t("b")).is_ok());
    }

    #[test]
    fn watch_permits_are_given_back_on_drop() {
        let quotas = Quotas::new(&TenantQuotas {
            max_watches: Some(1),
            ..TenantQuotas::default()
        });
        let permit = quotas.watch(&t("a")).unwrap();
        assert!(quotas.watch(&t("a")).is_err());
        assert!(quotas.watch(&t("b")).is_ok());
        drop(permit);
        assert!(quotas.watch(&t("a")).is_ok());
    }
}
