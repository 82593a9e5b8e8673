//! Group commit: one fsync shared by every writer waiting for durability.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use super::backend;
use crate::store::{StoreError, StoreResult};

/// Shares one fsync among every writer waiting for durability.
///
/// A writer takes a ticket after its write is applied. A flush started after
/// that moment covers the write, so it records the highest ticket issued
/// when it began and, when done, releases every writer up to that ticket.
/// While one flush runs, later writers queue up behind it and the next flush
/// covers them all.
pub(super) struct GroupCommit {
    db: sled::Db,
    issued: AtomicU64,
    pub(super) flushes: AtomicU64,
    flushed: watch::Sender<u64>,
    running: tokio::sync::Mutex<()>,
}

/// The flushing turn of one writer. Handing it on releases the turn before
/// waking the queue: a woken writer whose ticket the flush did not cover
/// must find the turn free, or it would wait for a flush nobody starts.
struct Turn<'a> {
    commit: &'a GroupCommit,
    guard: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Turn<'_> {
    /// Ends the turn; `covered` is the highest ticket the flush made
    /// durable, or None when it failed.
    fn finish(mut self, covered: Option<u64>) {
        self.hand_on(covered);
    }

    fn hand_on(&mut self, covered: Option<u64>) {
        if self.guard.take().is_none() {
            return;
        }
        // Always wake the queue, so that after a failure (or a cancelled
        // flush) the next writer takes its own turn.
        self.commit.flushed.send_modify(|done| {
            if let Some(covered) = covered {
                *done = (*done).max(covered);
            }
        });
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.hand_on(None);
    }
}

impl GroupCommit {
    pub(super) fn new(db: sled::Db) -> Self {
        Self {
            db,
            issued: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flushed: watch::channel(0).0,
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) async fn sync(&self) -> StoreResult<()> {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.subscribe();
        loop {
            if *flushed.borrow_and_update() >= ticket {
                return Ok(());
            }
            if let Ok(guard) = self.running.try_lock() {
                if *self.flushed.borrow() >= ticket {
                    return Ok(());
                }
                let covers = self.issued.load(Ordering::SeqCst);
                // If this future is dropped mid-flush (a caller was
                // cancelled), the turn must still be handed on, or the
                // writers queued behind it would wait forever.
                let turn = Turn {
                    commit: self,
                    guard: Some(guard),
                };
                let db = self.db.clone();
                self.flushes.fetch_add(1, Ordering::Relaxed);
                let result = tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(backend)
                    .and_then(|r| r.map_err(backend));
                turn.finish(result.as_ref().ok().map(|_| covers));
                result?;
                continue;
            }
            if flushed.changed().await.is_err() {
                return Err(StoreError::Backend("store closed".into()));
            }
        }
    }
}
