//! The committer: the one owner of the store's writes.
//!
//! Callers hand it writes and await their results. One task takes
//! everything that is waiting, commits it as one batch (atomic, and made
//! durable once), then answers every caller; the store publishes the
//! changes. The batch is whatever waited, not a timer's worth: a lone write
//! goes at once, and under load the batch grows by itself while the
//! previous one is on its way to disk. A store that takes concurrent
//! commits (PostgreSQL) gets a few batches in flight at once while they
//! are small, and half as many once they have grown (see [`Parallelism`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::Clock;
use crate::metrics::Metrics;
use crate::store::{Applied, OperationStore, StoreError, StoreResult, Write};

/// The most writes in one batch; more wait for the next.
pub const MAX_BATCH: usize = 4096;
/// Writes that may wait for the committer; callers wait beyond it.
const QUEUE: usize = 16 * 1024;

struct Pending {
    write: Write,
    /// None when the caller does not wait for the result.
    reply: Option<oneshot::Sender<StoreResult<Applied>>>,
}

/// A handle to hand writes to the committer; cheap to clone.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Pending>,
    stats: Arc<Stats>,
}

/// What the committer has done so far.
#[derive(Default)]
pub(crate) struct Stats {
    batches: AtomicU64,
    writes: AtomicU64,
}

impl Stats {
    /// Batches committed, and the writes in them.
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

impl Committer {
    /// Starts the committer over `store` on `tasks`, stamping each batch
    /// with `clock`'s time. When `stop` fires it commits what is already
    /// waiting and ends; writes handed over later fail as closed.
    pub(crate) fn start(
        store: Arc<dyn OperationStore>,
        clock: Clock,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        tasks.spawn(run(rx, store, clock, metrics, stop, Arc::clone(&stats)));
        Self { tx, stats }
    }

    /// Batches committed so far, and the writes in them.
    pub(crate) fn stats(&self) -> (u64, u64) {
        self.stats.get()
    }

    /// Commits one write and returns what it did.
    pub(crate) async fn write(&self, write: Write) -> StoreResult<Applied> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send(Pending {
                write,
                reply: Some(reply),
            })
            .await
            .map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }

    /// Commits several writes (in one batch when they fit) and returns
    /// what each did, in order.
    pub(crate) async fn write_all(&self, writes: Vec<Write>) -> Vec<StoreResult<Applied>> {
        let mut waiting = Vec::with_capacity(writes.len());
        for write in writes {
            let (reply, result) = oneshot::channel();
            let sent = self
                .tx
                .send(Pending {
                    write,
                    reply: Some(reply),
                })
                .await;
            waiting.push(sent.ok().map(|()| result));
        }
        let mut results = Vec::with_capacity(waiting.len());
        for result in waiting {
            results.push(match result {
                Some(result) => result.await.unwrap_or_else(|_| Err(closed())),
                None => Err(closed()),
            });
        }
        results
    }

    /// Hands over a write whose result nobody waits for (progress).
    pub(crate) fn write_and_forget(&self, write: Write) {
        if self.tx.try_send(Pending { write, reply: None }).is_err() {
            debug!("committer busy or closed; a lazy write was dropped");
        }
    }
}

fn closed() -> StoreError {
    StoreError::Backend("the store is closed".into())
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    store: Arc<dyn OperationStore>,
    clock: Clock,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    stats: Arc<Stats>,
) {
    // A store that takes concurrent commits (a database server) gets
    // several batches at once, so that their flushes are shared (as many
    // as `Parallelism` allows); a batch still holds everything that waited
    // when it was taken.
    let mut parallelism = Parallelism::new(store.parallel_commits());
    let mut in_flight = FuturesUnordered::new();
    let mut stopping = false;
    loop {
        if in_flight.len() >= parallelism.allowed() {
            in_flight.next().await;
            continue;
        }
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if stopping {
            while batch.len() < MAX_BATCH
                && let Ok(pending) = rx.try_recv()
            {
                batch.push(pending);
            }
            if batch.is_empty() {
                // Dropping the receiver fails every later write as closed.
                while in_flight.next().await.is_some() {}
                return;
            }
        } else {
            tokio::select! {
                // recv_many is cancel-safe: nothing is taken when another
                // branch wins.
                received = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 {
                        while in_flight.next().await.is_some() {}
                        return;
                    }
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                _ = stop.cancelled() => {
                    stopping = true;
                    continue;
                }
            }
        }
        parallelism.took(batch.len());
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        in_flight.push(commit(batch, &*store, &clock, &metrics));
    }
}

/// How many batches may be in flight at once. While writes trickle in,
/// the store's whole allowance goes, so that small batches wait for their
/// flushes side by side. Once batches are large on average the committer
/// is busy, and each transaction's own cost in the database's CPU is the
/// limit: half as many then go, each larger (BENCHMARKS.md, "sixth
/// session"). The mean is smoothed over several batches, so one small
/// batch between large ones does not double the count.
struct Parallelism {
    most: usize,
    mean_batch: f64,
}

impl Parallelism {
    /// Batches this large on average mean the committer is busy.
    const LARGE_BATCH: f64 = 8.0;
    /// How many recent batches the mean gives weight to.
    const SMOOTHING: f64 = 8.0;

    fn new(most: usize) -> Self {
        Self {
            most: most.max(1),
            mean_batch: 0.0,
        }
    }

    fn allowed(&self) -> usize {
        if self.mean_batch >= Self::LARGE_BATCH {
            self.most.div_ceil(2)
        } else {
            self.most
        }
    }

    fn took(&mut self, batch: usize) {
        self.mean_batch += (batch as f64 - self.mean_batch) / Self::SMOOTHING;
    }
}

async fn commit(batch: Vec<Pending>, store: &dyn OperationStore, clock: &Clock, metrics: &Metrics) {
    let (writes, replies): (Vec<Write>, Vec<_>) =
        batch.into_iter().map(|p| (p.write, p.reply)).unzip();
    let size = writes.len();
    let began = std::time::Instant::now();
    let results = store.commit(writes, clock.now()).await;
    metrics.commit(size, began.elapsed());
    for (reply, result) in replies.into_iter().zip(results) {
        if let Some(reply) = reply {
            // A caller that gave up is not an error.
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Parallelism;

    #[test]
    fn small_batches_use_the_whole_allowance_and_large_ones_half() {
        let mut p = Parallelism::new(4);
        assert_eq!(p.allowed(), 4);
        for _ in 0..50 {
            p.took(1);
        }
        assert_eq!(p.allowed(), 4, "writes trickling in go side by side");
        for _ in 0..3 {
            p.took(40);
        }
        assert_eq!(p.allowed(), 2, "large batches go two at a time");
        p.took(1);
        assert_eq!(p.allowed(), 2, "one small batch between large ones");
        for _ in 0..30 {
            p.took(2);
        }
        assert_eq!(p.allowed(), 4, "back to trickling");
    }

    #[test]
    fn a_store_that_commits_one_batch_at_a_time_keeps_one() {
        for most in [0, 1] {
            let mut p = Parallelism::new(most);
            assert_eq!(p.allowed(), 1);
            p.took(4096);
            assert_eq!(p.allowed(), 1);
        }
        let mut p = Parallelism::new(3);
        p.took(4096);
        assert_eq!(p.allowed(), 2);
    }
}
