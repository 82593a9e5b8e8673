//! Every change of every operation this node sees, in one ordered log, for
//! the streams of all changes a console follows (`WatchChanges`).
//!
//! Each change gets a cursor: this process's epoch and a sequence number.
//! The last changes are kept (at most [`KEPT`], and [`KEPT_BYTES`] of
//! records), so a stream that reconnects with the cursor it saw last is
//! first sent what it missed; one whose cursor is gone (too old, from
//! before a restart, or from another node) is told to start over
//! ([`ChangeType::Resync`]), as is one that falls too far behind.
//!
//! A filtered stream also hears when an operation leaves its filter (a
//! running one that ends, for `done = false`): the log remembers the last
//! state it saw of each operation (the latest [`REMEMBERED`]), and a change
//! whose operation no longer matches is sent as [`ChangeType::Left`] when
//! the earlier state matched. When the earlier state is not known (a
//! change another node made, or one long forgotten) and the filter looks
//! at what changes (state, done, update time), it is sent as `Left` too:
//! a console drops what it does not show anyway.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::{Engine, EngineError, WatchPermit};
use crate::model::{Filter, Operation, OperationId, Scope, State, Tenant};

/// The most changes kept for streams that reconnect.
pub const KEPT: usize = 10_000;
/// The most bytes of records kept for them.
pub const KEPT_BYTES: usize = 64 * 1024 * 1024;
/// How many operations' last states are remembered.
const REMEMBERED: usize = 100_000;
/// How many changes a live stream may fall behind before it must start
/// over.
const BEHIND: usize = 4096;

/// What a change did, as a stream sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    /// The operation was created or changed, and matches the filter.
    Updated,
    /// The operation changed so that it no longer matches the filter.
    Left,
    /// The operation was deleted.
    Deleted,
    /// Changes were missed: list the operations again.
    Resync,
}

/// One change as a stream sends it.
#[derive(Clone, Debug)]
pub struct StreamedChange {
    /// Where it sits in the stream.
    pub cursor: String,
    pub change: ChangeType,
    /// The operation as the change left it; for a deletion, only its id is
    /// meaningful; none for a resync.
    pub operation: Option<Arc<Operation>>,
    /// The operation's id (for a deletion, all there is).
    pub id: Option<OperationId>,
}

/// What the log knows of an operation's state before a change.
#[derive(Clone, Debug)]
struct Seen {
    tenant: Tenant,
    state: State,
    update_time: SystemTime,
}

/// One entry of the log.
#[derive(Debug)]
enum What {
    /// A change made here: the operation as it now is, and what it was.
    Updated {
        op: Arc<Operation>,
        was: Option<Seen>,
    },
    /// A change another node made: each stream reads it.
    Elsewhere(OperationId),
    Deleted {
        id: OperationId,
        was: Option<Seen>,
    },
    Resync,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    what: What,
}

impl Entry {
    fn bytes(&self) -> usize {
        match &self.what {
            What::Updated { op, .. } => op.size_hint(),
            _ => 64,
        }
    }
}

#[derive(Default)]
struct Log {
    next: u64,
    kept: VecDeque<Arc<Entry>>,
    kept_bytes: usize,
    seen: HashMap<OperationId, Seen>,
    seen_order: VecDeque<OperationId>,
}

/// The log; one per engine.
pub(crate) struct ChangeLog {
    /// Tells this process's cursors from any other's.
    epoch: u64,
    log: Mutex<Log>,
    tx: broadcast::Sender<Arc<Entry>>,
}

impl Default for ChangeLog {
    fn default() -> Self {
        Self {
            epoch: rand::random::<u64>() >> 1,
            log: Mutex::default(),
            tx: broadcast::channel(BEHIND).0,
        }
    }
}

impl ChangeLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // Each critical section appends or copies a few entries.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cursor(&self, seq: u64) -> String {
        format!("{:016x}-{seq}", self.epoch)
    }

    /// Reads a cursor of this process; None for another's, or nonsense.
    fn parse(&self, cursor: &str) -> Option<u64> {
        let (epoch, seq) = cursor.split_once('-')?;
        (u64::from_str_radix(epoch, 16).ok()? == self.epoch)
            .then(|| seq.parse().ok())
            .flatten()
    }

    fn append(&self, what: What) {
        let mut log = self.lock();
        let seq = log.next;
        log.next += 1;
        let entry = Arc::new(Entry { seq, what });
        log.kept_bytes += entry.bytes();
        log.kept.push_back(Arc::clone(&entry));
        while log.kept.len() > KEPT || log.kept_bytes > KEPT_BYTES {
            let Some(old) = log.kept.pop_front() else {
                break;
            };
            log.kept_bytes -= old.bytes();
        }
        // Sent under the lock, so that a stream that subscribes under it
        // sees every entry once: in what it copies, or on the channel.
        let _ = self.tx.send(entry);
    }

    /// Takes in a change made on this node.
    pub(crate) fn updated(&self, op: Arc<Operation>) {
        let was = self.remember(
            op.id,
            Some(Seen {
                tenant: op.tenant.clone(),
                state: op.state,
                update_time: op.update_time,
            }),
        );
        self.append(What::Updated { op, was });
    }

    /// Takes in a deletion made on this node.
    pub(crate) fn deleted(&self, id: OperationId) {
        let was = self.remember(id, None);
        self.append(What::Deleted { id, was });
    }

    /// Takes in a change another node made.
    pub(crate) fn elsewhere(&self, id: OperationId) {
        self.remember(id, None);
        self.append(What::Elsewhere(id));
    }

    /// Takes in that changes may have been missed.
    pub(crate) fn resync(&self) {
        self.append(What::Resync);
    }

    /// Remembers `now` (or forgets) what `id` is, returning what it was.
    fn remember(&self, id: OperationId, now: Option<Seen>) -> Option<Seen> {
        let mut log = self.lock();
        let was = match now {
            Some(now) => {
                let was = log.seen.insert(id, now);
                if was.is_none() {
                    log.seen_order.push_back(id);
                    while log.seen.len() > REMEMBERED {
                        let Some(oldest) = log.seen_order.pop_front() else {
                            break;
                        };
                        log.seen.remove(&oldest);
                    }
                }
                was
            }
            None => log.seen.remove(&id),
        };
        // Ids forgotten above stay in the order queue until they come up;
        // bound it too.
        if log.seen_order.len() > 2 * REMEMBERED {
            let seen = std::mem::take(&mut log.seen);
            log.seen_order.retain(|id| seen.contains_key(id));
            log.seen = seen;
        }
        was
    }
}

/// The changes of every operation a caller may see that match a filter.
pub struct ChangeStream {
    engine: Engine,
    feed: broadcast::Receiver<Arc<Entry>>,
    /// What was missed, to be sent first.
    missed: VecDeque<Arc<Entry>>,
    /// Whether the stream must first tell its client to start over.
    start_over: bool,
    scope: Scope,
    filter: Filter,
    last: u64,
    /// Counts the stream against its tenant's watch limit.
    _permit: WatchPermit,
}

impl ChangeStream {
    /// The next change to send; an error when the server is stopping.
    pub async fn next(&mut self) -> Result<StreamedChange, EngineError> {
        let log = &self.engine.inner.changes;
        loop {
            if std::mem::take(&mut self.start_over) {
                return Ok(StreamedChange {
                    cursor: log.cursor(self.last),
                    change: ChangeType::Resync,
                    operation: None,
                    id: None,
                });
            }
            let entry = match self.missed.pop_front() {
                Some(entry) => entry,
                None => tokio::select! {
                    () = self.engine.inner.shutdown.cancelled() => return Err(EngineError::ShuttingDown),
                    entry = self.feed.recv() => match entry {
                        Ok(entry) => entry,
                        Err(RecvError::Lagged(_)) => {
                            // Too far behind: start over from the newest.
                            self.feed = self.feed.resubscribe();
                            self.start_over = true;
                            continue;
                        }
                        Err(RecvError::Closed) => return Err(EngineError::ShuttingDown),
                    },
                },
            };
            self.last = entry.seq;
            if let Some(change) = self.judge(&entry).await {
                return Ok(change);
            }
        }
    }

    /// What `entry` means to this stream, if anything.
    async fn judge(&self, entry: &Entry) -> Option<StreamedChange> {
        let cursor = self.engine.inner.changes.cursor(entry.seq);
        let sent = |change, op: Option<Arc<Operation>>, id| {
            Some(StreamedChange {
                cursor: cursor.clone(),
                change,
                operation: op,
                id,
            })
        };
        let (op, was) = match &entry.what {
            What::Resync => return sent(ChangeType::Resync, None, None),
            What::Deleted { id, was } => {
                let visible = match (&self.scope, was) {
                    (Scope::All, _) => true,
                    (scope, Some(was)) => scope.permits(&was.tenant),
                    (_, None) => false,
                };
                return visible
                    .then(|| sent(ChangeType::Deleted, None, Some(*id)))
                    .flatten();
            }
            What::Updated { op, was } => (Arc::clone(op), was.clone()),
            What::Elsewhere(id) => match self.engine.get(&self.scope, *id).await {
                Ok(op) => (Arc::new(op), None),
                // Gone, or another tenant's.
                Err(_) => return None,
            },
        };
        if !self.scope.permits(&op.tenant) {
            return None;
        }
        let id = Some(op.id);
        if self.filter.matches(&op) {
            return sent(ChangeType::Updated, Some(op), id);
        }
        let left = match was {
            Some(was) => self.filter.matches_as(&op, was.state, was.update_time),
            None => self.filter.follows_changes(),
        };
        left.then(|| sent(ChangeType::Left, Some(op), id)).flatten()
    }
}

impl Engine {
    /// Follows every change of the operations `scope` covers that match
    /// `filter` (the List filter): from `resume_after` (a cursor this
    /// stream sent) when given, else from now. Counts against the tenant's
    /// watch limit.
    pub fn watch_changes(
        &self,
        scope: Scope,
        tenant: &Tenant,
        filter: &str,
        resume_after: Option<&str>,
    ) -> Result<ChangeStream, EngineError> {
        if filter.len() > super::MAX_FILTER_LEN {
            return Err(EngineError::invalid(
                "filter",
                format!(
                    "filter is {} bytes long; the limit is {}",
                    filter.len(),
                    super::MAX_FILTER_LEN
                ),
            ));
        }
        let filter =
            Filter::parse(filter).map_err(|e| EngineError::invalid("filter", e.to_string()))?;
        let permit = self.watch_permit(tenant)?;
        let log = &self.inner.changes;
        let state = log.lock();
        let feed = log.tx.subscribe();
        let newest = state.next.saturating_sub(1);
        let (missed, start_over, last) = match resume_after.filter(|c| !c.is_empty()) {
            None => (VecDeque::new(), false, newest),
            Some(cursor) => match log.parse(cursor) {
                // Everything after it is still kept.
                Some(seq)
                    if seq <= newest
                        && state.kept.front().is_none_or(|first| first.seq <= seq + 1) =>
                {
                    let missed = state.kept.iter().filter(|e| e.seq > seq).cloned().collect();
                    (missed, false, seq)
                }
                _ => (VecDeque::new(), true, newest),
            },
        };
        drop(state);
        Ok(ChangeStream {
            engine: self.clone(),
            feed,
            missed,
            start_over,
            scope,
            filter,
            last,
            _permit: permit,
        })
    }
}
