//! Delayed queueing: operations waiting out a retry backoff.
//!
//! One task sleeps until the earliest due time, then moves every due
//! operation to the run queue. The set is bounded by the operations the
//! server has accepted; the store holds each one's `not_before`, so a
//! restart rebuilds the set from there.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::OperationId;
use super::queue::Queue;

#[derive(Default)]
pub(crate) struct Schedule {
    due: Mutex<BTreeSet<(Instant, OperationId)>>,
    changed: Notify,
}

impl Schedule {
    /// Queues `id` at `not_before` (at once when that has passed).
    pub(crate) fn add(&self, id: OperationId, not_before: SystemTime) {
        let delay = not_before
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((Instant::now() + delay, id));
        self.changed.notify_one();
    }

    /// Moves due operations to `queue` until `stop` fires.
    pub(crate) async fn run(&self, queue: &Queue, stop: &CancellationToken) {
        loop {
            let next = {
                let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                while let Some(&(at, id)) = due.first() {
                    if at > now {
                        break;
                    }
                    due.pop_first();
                    queue.push_recovered(id);
                }
                due.first().map(|&(at, _)| at)
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
