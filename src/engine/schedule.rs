//! Delayed queueing: operations waiting out a retry backoff.
//!
//! One task sleeps until the earliest due time, then moves every due
//! operation to the run queue. The set is bounded by the operations the
//! server has accepted; the store holds each one's `not_before`, so a
//! restart rebuilds the set from there.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::queue::Queue;
use crate::model::{OperationId, Tenant};

#[derive(Default)]
pub(crate) struct Schedule {
    due: Mutex<BTreeSet<(Instant, OperationId, Tenant)>>,
    changed: Notify,
}

impl Schedule {
    /// Queues `id` of `tenant` after `delay` (at once when it is zero).
    pub(crate) fn add(&self, id: OperationId, tenant: &Tenant, delay: Duration) {
        self.due.lock().unwrap_or_else(|e| e.into_inner()).insert((
            Instant::now() + delay,
            id,
            tenant.clone(),
        ));
        self.changed.notify_one();
    }

    /// Moves due operations to `queue` until `stop` fires.
    pub(crate) async fn run(&self, queue: &Queue, stop: &CancellationToken) {
        loop {
            let next = {
                let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                while let Some((at, _, _)) = due.first() {
                    if *at > now {
                        break;
                    }
                    if let Some((_, id, tenant)) = due.pop_first() {
                        queue.push_recovered(id, &tenant);
                    }
                }
                due.first().map(|(at, _, _)| *at)
            };
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = sleep => {}
            }
        }
    }
}
