//! The write path: the rulebook decides a batch against the tree (and the
//! records kept in memory), and its plan becomes keys for one atomic
//! `apply_batch`. Everything the batch changed is collected for the
//! caller: the feed announcements, and the operations whose place in the
//! ready queue moved.
//!
//! Claims are lazy, so a claim is not written on its own: its record waits
//! in memory (`claimed`), where reads find it, and goes to disk with the
//! next commit, unless that commit writes a newer version first (a quick
//! task's finish), in which case the claim is never written at all. A
//! claim that calls for a webhook delivery is written with it at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use sled::{IVec, Tree};

use super::keys;
use super::recent::Recent;
use super::strings::Staged;
use crate::model::{Delivery, DeliveryState, Operation, OperationId, RequestId, Tenant};
use crate::store::codec::{decode, decode_delivery, encode, encode_delivery};
use crate::store::ready::QueuedOp;
use crate::store::rules::{Plan, Step, View};
use crate::store::{Change, StoreError, StoreResult};

pub(super) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A failed write or flush: an I/O error is the disk failing, a state to
/// report; anything else is sled's own failure.
pub(super) fn disk(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(e) => StoreError::Unavailable(format!("the disk failed: {e}")),
        sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// What an operation's place in the ready queue became.
pub(super) enum Moved {
    /// It is queued now (again, or with another due time).
    Queued(Queued),
    /// It is not queued any more (claimed, done, or gone); true while it
    /// runs holding limit slots (which its claim counted).
    Left(OperationId, bool),
}

/// A queued operation, as the ready queue keeps it.
pub(super) struct Queued {
    pub(super) id: OperationId,
    pub(super) kind: String,
    pub(super) tenant: crate::model::Tenant,
    pub(super) key: Option<String>,
    pub(super) due: Option<SystemTime>,
    pub(super) priority: i32,
    pub(super) expire: Option<SystemTime>,
}

impl Queued {
    pub(super) fn as_queued(&self) -> QueuedOp<'_> {
        QueuedOp {
            id: self.id,
            kind: &self.kind,
            tenant: &self.tenant,
            key: self.key.as_deref(),
            due: self.due,
            priority: self.priority,
            expire: self.expire,
        }
    }
}

impl Moved {
    fn of(op: &Operation) -> Self {
        if op.state == crate::model::State::Queued {
            Moved::Queued(Queued {
                id: op.id,
                kind: op.kind.clone(),
                tenant: op.tenant.clone(),
                key: op.concurrency_key.clone(),
                due: op.not_before,
                priority: op.priority,
                expire: op.expire_time,
            })
        } else {
            Moved::Left(op.id, !op.holds.is_empty())
        }
    }
}

/// What is known of unfinished operations, kept under the apply lock.
#[derive(Default)]
pub(super) struct Applier {
    /// Every operation that is not done.
    pub(super) unfinished: BTreeSet<OperationId>,
    /// The low-water mark as stored: None before it is first written, then
    /// the lowest unfinished id (None within when there is none).
    pub(super) written: Option<Option<OperationId>>,
}

impl Applier {
    /// Takes in an applied batch's creates and ends, and the low-water mark
    /// it wrote.
    pub(super) fn applied(
        &mut self,
        created: &[OperationId],
        ended: &[OperationId],
        low_water: Option<Option<OperationId>>,
    ) {
        for id in created {
            self.unfinished.insert(*id);
        }
        for id in ended {
            self.unfinished.remove(id);
        }
        if let Some(low) = low_water {
            self.written = Some(low);
        }
    }
}

/// A staged batch, ready for sled.
pub(super) struct Finished {
    /// None when there is nothing to write (a claim kept in memory):
    /// sled is not called at all then.
    pub(super) writes: Option<sled::Batch>,
    /// Operations the batch created, and those it ended.
    pub(super) created: Vec<OperationId>,
    pub(super) ended: Vec<OperationId>,
    /// The low-water mark the batch wrote, if it wrote one.
    pub(super) low_water: Option<Option<OperationId>>,
    /// The strings the batch adds to the table.
    pub(super) strings: Vec<Arc<str>>,
    pub(super) changes: Vec<Change>,
    pub(super) moved: Vec<Moved>,
    pub(super) durable: bool,
}

/// Records claimed but not written yet.
pub(super) type Claimed = HashMap<OperationId, Operation>;

/// The tree as it was before the batch, with the records kept in memory:
/// what the rulebook reads.
pub(super) struct SledView<'v, 's> {
    pub(super) tree: &'v Tree,
    pub(super) strings: &'v Staged<'s>,
    pub(super) claimed: &'v Claimed,
    pub(super) recent: &'v Recent,
}

impl View for SledView<'_, '_> {
    fn operation(&mut self, id: OperationId) -> StoreResult<Option<Operation>> {
        if let Some(op) = self.claimed.get(&id) {
            return Ok(Some(op.clone()));
        }
        if let Some(op) = self.recent.get(&id) {
            return Ok(Some(Operation::clone(&op)));
        }
        match self.tree.get(keys::op(id)).map_err(backend)? {
            Some(bytes) => decode(id, &bytes, self.strings).map(Some),
            None => Ok(None),
        }
    }

    fn request_holder(
        &mut self,
        tenant: &Tenant,
        request_id: RequestId,
    ) -> StoreResult<Option<OperationId>> {
        let key = keys::request_id(tenant, request_id);
        Ok(self
            .tree
            .get(key)
            .map_err(backend)?
            .and_then(|id| keys::id_at_end(&id)))
    }
}

/// Turns a plan into keys for one sled batch.
pub(super) struct Staging<'a> {
    tree: &'a Tree,
    strings: Staged<'a>,
    staged: BTreeMap<Vec<u8>, Option<IVec>>,
    created: Vec<OperationId>,
    ended: Vec<OperationId>,
    moved: Vec<Moved>,
}

impl<'a> Staging<'a> {
    pub(super) fn new(tree: &'a Tree, strings: Staged<'a>) -> Self {
        Self {
            tree,
            strings,
            staged: BTreeMap::new(),
            created: Vec::new(),
            ended: Vec::new(),
            moved: Vec::new(),
        }
    }

    fn insert(&mut self, key: &[u8], value: impl Into<IVec>) {
        self.staged.insert(key.to_vec(), Some(value.into()));
    }

    fn remove(&mut self, key: &[u8]) {
        self.staged.insert(key.to_vec(), None);
    }

    /// Stages `plan`, except the steps `lazy` keeps in memory (claims that
    /// call for no delivery), which go to `claimed` instead.
    pub(super) fn plan(
        &mut self,
        plan: &Plan,
        claimed: &mut Claimed,
        lazy: bool,
    ) -> StoreResult<()> {
        for step in &plan.steps {
            let op = step.operation();
            self.moved.push(match step {
                Step::Remove(op) => Moved::Left(op.id, false),
                Step::Insert(op) | Step::Update { op, .. } => Moved::of(op),
            });
            if step.ends() {
                self.ended.push(op.id);
            }
            match step {
                // A claim waits in memory; an end (an expiry met by a claim)
                // is written.
                Step::Update { op, .. }
                    if lazy
                        && !step.ends()
                        && !plan.deliveries.iter().any(|d| d.operation == op.id) =>
                {
                    claimed.insert(op.id, op.clone());
                }
                Step::Insert(op) => {
                    self.created.push(op.id);
                    self.record(op);
                    if let Some(key) = keys::by_tenant(op) {
                        self.insert(&key, &[]);
                    }
                    if let Some(key) = keys::child(op) {
                        self.insert(&key, &[]);
                    }
                }
                Step::Update { op, .. } => {
                    if step.reopens() {
                        // Retried: unfinished again, as if new.
                        self.created.push(op.id);
                    }
                    self.record(op);
                }
                Step::Remove(op) => self.remove_operation(op)?,
            }
        }
        for entry in &plan.requests {
            let key = keys::request_id(&entry.tenant, entry.request_id);
            match entry.holder {
                Some(id) => self.insert(&key, id.as_bytes()),
                None => self.remove(&key),
            }
        }
        for delivery in &plan.deliveries {
            self.delivery(delivery)?;
        }
        Ok(())
    }

    fn record(&mut self, op: &Operation) {
        let record = encode(op, &mut self.strings);
        self.insert(&keys::op(op.id), record);
        if op.is_batch() {
            let key = keys::open_batch(op.id);
            if op.is_done() {
                self.remove(&key);
            } else {
                self.insert(&key, &[]);
            }
        }
    }

    /// Removes a record with its tenant entry and its stored deliveries.
    fn remove_operation(&mut self, op: &Operation) -> StoreResult<()> {
        self.remove(&keys::op(op.id));
        if let Some(key) = keys::by_tenant(op) {
            self.remove(&key);
        }
        if let Some(key) = keys::child(op) {
            self.remove(&key);
        }
        if op.is_batch() {
            self.remove(&keys::open_batch(op.id));
        }
        for entry in self.tree.scan_prefix(keys::deliveries_of(op.id)) {
            let (key, _) = entry.map_err(backend)?;
            let record = keys::delivery_of(&key);
            if let Some(bytes) = self.tree.get(record).map_err(backend)?
                && let Ok(d) = decode_delivery(&bytes, &self.strings)
                && let Some(due) = keys::due(&d)
            {
                self.remove(&due);
            }
            self.remove(&record);
            self.remove(&key);
        }
        Ok(())
    }

    /// Stores a delivery over its stored version, keeping the due index in
    /// step.
    fn delivery(&mut self, delivery: &Delivery) -> StoreResult<()> {
        let record = keys::delivery(delivery);
        if let Some(old) = self.tree.get(record).map_err(backend)? {
            let old = decode_delivery(&old, &self.strings)?;
            if let Some(due) = keys::due(&old) {
                self.remove(&due);
            }
        }
        let encoded = encode_delivery(delivery, &mut self.strings);
        self.insert(&record, encoded);
        if delivery.state == DeliveryState::Pending
            && let Some(due) = keys::due(delivery)
        {
            self.insert(&due, &[]);
        }
        self.insert(&keys::of_operation(delivery), &[]);
        Ok(())
    }

    /// The staged batch for sled, with the batch's new strings. With
    /// `claims`, the claims waiting in memory are written too, unless the
    /// batch already writes a newer version of their records.
    pub(super) fn finish(
        mut self,
        plan: Plan,
        claims: Option<&Claimed>,
        applier: &Applier,
    ) -> Finished {
        // Left in the map until the batch is applied: if it fails, the
        // claims are still there to read and to write next time.
        for (id, op) in claims.into_iter().flatten() {
            let key = keys::op(*id);
            if !self.staged.contains_key(key.as_slice()) {
                self.record(op);
            }
        }
        let added: Vec<(u32, String)> = self
            .strings
            .added()
            .map(|(n, s)| (n, s.to_owned()))
            .collect();
        for (number, text) in added {
            self.insert(&keys::string(number), text.as_bytes());
        }
        let low_water = low_water(applier, &self.created, &self.ended);
        if let Some(low) = low_water {
            let value = low.map_or_else(Vec::new, |id| id.as_bytes().to_vec());
            self.insert(keys::LOW_WATER, value);
        }
        let writes = (!self.staged.is_empty()).then(|| {
            let mut batch = sled::Batch::default();
            for (key, value) in self.staged {
                match value {
                    Some(value) => batch.insert(key, value),
                    None => batch.remove(key),
                }
            }
            batch
        });
        Finished {
            writes,
            created: self.created,
            ended: self.ended,
            low_water,
            strings: self.strings.into_added(),
            changes: plan.changes.into_iter().map(|a| a.change).collect(),
            moved: self.moved,
            durable: plan.durable,
        }
    }
}

/// The low-water mark after a batch that created and ended these, when it
/// differs from the one stored: the lowest id that is not done once the
/// batch is applied.
fn low_water(
    applier: &Applier,
    created: &[OperationId],
    ended: &[OperationId],
) -> Option<Option<OperationId>> {
    let ended: HashSet<&OperationId> = ended.iter().collect();
    let left = applier
        .unfinished
        .iter()
        .find(|id| !ended.contains(id))
        .copied();
    let new = created
        .iter()
        .filter(|id| !ended.contains(id))
        .min()
        .copied();
    let low = match (left, new) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (applier.written != Some(low)).then_some(low)
}
