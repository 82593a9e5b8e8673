//! The write path: a batch of writes applied against an overlay of the
//! tree, so that each write sees those before it, then handed to sled as
//! one atomic `apply_batch`.
//!
//! Each write is decided whole before anything of it is staged, so a write
//! that is refused leaves no trace and the rest of the batch goes on.
//! Everything the batch changed is collected for the caller: the feed
//! announcements, and the operations whose place in the ready queue moved.
//!
//! Claims are lazy, so a claim is not written on its own: its record waits
//! in memory (`claimed`), where reads find it, and goes to disk with the
//! next commit, unless that commit writes a newer version first (a quick
//! task's finish), in which case the claim is never written at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use sled::{IVec, Tree};

use super::keys;
use super::recent::Recent;
use super::strings::Staged;
use crate::model::{Delivery, DeliveryState, Edit, Operation, OperationId, Transition};
use crate::store::codec::{decode, decode_delivery, encode, encode_delivery};
use crate::store::{Applied, Change, Created, StoreError, StoreResult, Write};

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

/// The tree as the batch so far would leave it.
struct Overlay<'a> {
    tree: &'a Tree,
    staged: BTreeMap<Vec<u8>, Option<IVec>>,
}

impl<'a> Overlay<'a> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<IVec>> {
        match self.staged.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.tree.get(key).map_err(backend),
        }
    }

    fn insert(&mut self, key: &[u8], value: impl Into<IVec>) {
        self.staged.insert(key.to_vec(), Some(value.into()));
    }

    fn remove(&mut self, key: &[u8]) {
        self.staged.insert(key.to_vec(), None);
    }

    /// The keys with `prefix`, stored or staged, as the batch would leave
    /// them.
    fn keys_with_prefix(&self, prefix: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
        let mut keys = std::collections::BTreeSet::new();
        for entry in self.tree.scan_prefix(prefix) {
            let (key, _) = entry.map_err(backend)?;
            keys.insert(key.to_vec());
        }
        let staged = self
            .staged
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        for (key, value) in staged {
            match value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        Ok(keys.into_iter().collect())
    }
}

/// What an operation's place in the ready queue became.
pub(super) enum Moved {
    /// It is queued now (again, or with another due time).
    Queued(Queued),
    /// It is not queued any more (claimed, done, or gone).
    Left(OperationId),
}

/// A queued operation, as the ready queue keeps it.
pub(super) struct Queued {
    pub(super) id: OperationId,
    pub(super) kind: String,
    pub(super) tenant: crate::model::Tenant,
    pub(super) due: Option<SystemTime>,
}

impl Moved {
    fn of(op: &Operation) -> Self {
        if op.state == crate::model::State::Queued {
            Moved::Queued(Queued {
                id: op.id,
                kind: op.kind.clone(),
                tenant: op.tenant.clone(),
                due: op.not_before,
            })
        } else {
            Moved::Left(op.id)
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
    pub(super) writes: sled::Batch,
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

/// One batch being applied.
pub(super) struct Batch<'a> {
    overlay: Overlay<'a>,
    strings: Staged<'a>,
    claimed: &'a mut Claimed,
    recent: &'a Recent,
    applier: &'a Applier,
    created: Vec<OperationId>,
    ended: Vec<OperationId>,
    now: SystemTime,
    /// What the feed announces once the batch is committed.
    changes: Vec<Change>,
    /// Operations whose place in the ready queue may have moved.
    moved: Vec<Moved>,
    /// Whether a write that succeeded must be made durable.
    durable: bool,
}

impl<'a> Batch<'a> {
    pub(super) fn new(
        tree: &'a Tree,
        strings: Staged<'a>,
        claimed: &'a mut Claimed,
        recent: &'a Recent,
        applier: &'a Applier,
        now: SystemTime,
    ) -> Self {
        Self {
            overlay: Overlay {
                tree,
                staged: BTreeMap::new(),
            },
            strings,
            claimed,
            recent,
            applier,
            created: Vec::new(),
            ended: Vec::new(),
            now,
            changes: Vec::new(),
            moved: Vec::new(),
            durable: false,
        }
    }

    /// Applies one write, or refuses it leaving nothing staged.
    pub(super) fn write(&mut self, write: Write) -> StoreResult<Applied> {
        let durable = write.is_durable();
        let applied = match write {
            Write::Create(op) => self.create(op).map(Applied::Created),
            Write::Update { id, edit } => {
                self.update(id, &edit).map(|(op, _)| Applied::Updated(op))
            }
            Write::Delete(id) => {
                let op = self.read(id)?.ok_or(StoreError::NotFound)?;
                op.check_deletable()?;
                self.remove(&op)?;
                Ok(Applied::Deleted(true))
            }
            Write::Purge(id) => match self.read(id)? {
                Some(op) if op.check_deletable().is_ok() => {
                    self.remove(&op)?;
                    Ok(Applied::Deleted(true))
                }
                _ => Ok(Applied::Deleted(false)),
            },
            Write::SaveDelivery(delivery) => {
                self.save_delivery(&delivery)?;
                self.changes.push(Change::Delivery(delivery.operation));
                Ok(Applied::DeliverySaved)
            }
        }?;
        self.durable |= durable;
        Ok(applied)
    }

    /// A claim of an operation taken from the ready queue: its record, now
    /// RUNNING, or None when it is no longer claimable. The record waits in
    /// memory for the next commit, unless the claim calls for a webhook
    /// delivery, which is staged with it as any change is.
    pub(super) fn claim(&mut self, id: OperationId, edit: &Edit) -> StoreResult<Option<Operation>> {
        let current = match self.read(id)? {
            Some(op) => op,
            None => return Ok(None),
        };
        let Ok(Some(transition)) = current.apply(edit, self.now) else {
            return Ok(None);
        };
        if transition.delivery.is_some() {
            return self.update(id, edit).map(|(op, _)| Some(op));
        }
        let op = transition.operation;
        self.moved.push(Moved::of(&op));
        self.changes.push(Change::Updated(Arc::new(op.clone())));
        self.claimed.insert(id, op.clone());
        Ok(Some(op))
    }

    /// The staged writes, with the batch's new strings, for sled. With
    /// `claims`, the claims waiting in memory are written too, unless the
    /// batch already writes a newer version of their records.
    pub(super) fn finish(mut self, claims: bool) -> Finished {
        if claims {
            // Left in the map until the batch is applied: if it fails, the
            // claims are still there to read and to write next time.
            for (id, op) in self.claimed.iter() {
                let key = keys::op(*id);
                if !self.overlay.staged.contains_key(key.as_slice()) {
                    let record = encode(op, &mut self.strings);
                    self.overlay.insert(&key, record);
                }
            }
        }
        let added: Vec<(u32, String)> = self
            .strings
            .added()
            .map(|(n, s)| (n, s.to_owned()))
            .collect();
        for (number, text) in added {
            self.overlay.insert(&keys::string(number), text.as_bytes());
        }
        let low_water = self.low_water();
        if let Some(low) = low_water {
            let value = low.map_or_else(Vec::new, |id| id.as_bytes().to_vec());
            self.overlay.insert(keys::LOW_WATER, value);
        }
        let mut batch = sled::Batch::default();
        for (key, value) in self.overlay.staged {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        Finished {
            writes: batch,
            created: self.created,
            ended: self.ended,
            low_water,
            strings: self.strings.into_added(),
            changes: self.changes,
            moved: self.moved,
            durable: self.durable,
        }
    }

    /// The low-water mark after this batch, when it differs from the one
    /// stored: the lowest id that is not done once the batch is applied.
    fn low_water(&self) -> Option<Option<OperationId>> {
        let ended: HashSet<&OperationId> = self.ended.iter().collect();
        let left = self
            .applier
            .unfinished
            .iter()
            .find(|id| !ended.contains(id))
            .copied();
        let new = self
            .created
            .iter()
            .filter(|id| !ended.contains(id))
            .min()
            .copied();
        let low = match (left, new) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (self.applier.written != Some(low)).then_some(low)
    }

    /// An operation as the batch so far leaves it: staged, claimed in
    /// memory, recently written, or stored.
    fn read(&self, id: OperationId) -> StoreResult<Option<Operation>> {
        let key = keys::op(id);
        if !self.overlay.staged.contains_key(key.as_slice()) {
            if let Some(op) = self.claimed.get(&id) {
                return Ok(Some(op.clone()));
            }
            if let Some(op) = self.recent.get(&id) {
                return Ok(Some(Operation::clone(&op)));
            }
        }
        match self.overlay.get(&key)? {
            Some(bytes) => decode(id, &bytes, &self.strings).map(Some),
            None => Ok(None),
        }
    }

    fn create(&mut self, op: Operation) -> StoreResult<Created> {
        let request_key = keys::request_id(&op);
        if let (Some(request_id), Some(key)) = (op.request_id, &request_key)
            && let Some(existing) = self.overlay.get(key)?
            && let Some(id) = keys::id_at_end(&existing)
            && let Some(existing) = self.read(id)?
        {
            if existing.request_digest == op.request_digest {
                return Ok(Created::Existing(existing));
            }
            return Err(StoreError::RequestIdConflict {
                request_id: request_id.to_string(),
                existing: existing.id,
            });
        }
        let transition = op.creation(op.create_time);
        let record = encode(&op, &mut self.strings);
        self.overlay.insert(&keys::op(op.id), record);
        self.created.push(op.id);
        if let Some(key) = request_key {
            self.overlay.insert(&key, op.id.as_bytes());
        }
        if let Some(key) = keys::by_tenant(&op) {
            self.overlay.insert(&key, &[]);
        }
        if let Some(delivery) = &transition.delivery {
            self.save_delivery(delivery)?;
        }
        self.moved.push(Moved::of(&op));
        self.changes.push(Change::Updated(Arc::new(op.clone())));
        Ok(Created::New(op))
    }

    /// Applies an edit; returns the operation as it now is, and whether it
    /// changed.
    fn update(&mut self, id: OperationId, edit: &Edit) -> StoreResult<(Operation, bool)> {
        let current = self.read(id)?.ok_or(StoreError::NotFound)?;
        let Some(Transition {
            operation: next,
            delivery,
        }) = current.apply(edit, self.now)?
        else {
            return Ok((current, false));
        };
        let record = encode(&next, &mut self.strings);
        self.overlay.insert(&keys::op(id), record);
        if let Some(delivery) = &delivery {
            self.save_delivery(delivery)?;
        }
        if !current.is_done() && next.is_done() {
            self.ended.push(id);
        }
        self.moved.push(Moved::of(&next));
        self.changes.push(Change::Updated(Arc::new(next.clone())));
        Ok((next, true))
    }

    /// Removes a done operation with its index entries and deliveries.
    fn remove(&mut self, op: &Operation) -> StoreResult<()> {
        self.overlay.remove(&keys::op(op.id));
        if let Some(key) = keys::request_id(op) {
            // Only if it still names this operation.
            if self.overlay.get(&key)?.as_deref() == Some(op.id.as_bytes()) {
                self.overlay.remove(&key);
            }
        }
        if let Some(key) = keys::by_tenant(op) {
            self.overlay.remove(&key);
        }
        for key in self.overlay.keys_with_prefix(&keys::deliveries_of(op.id))? {
            let record = keys::delivery_of(&key);
            if let Some(bytes) = self.overlay.get(&record)?
                && let Ok(d) = decode_delivery(&bytes, &self.strings)
                && let Some(due) = keys::due(&d)
            {
                self.overlay.remove(&due);
            }
            self.overlay.remove(&record);
            self.overlay.remove(&key);
        }
        self.changes.push(Change::Deleted(op.id));
        self.moved.push(Moved::Left(op.id));
        Ok(())
    }

    /// Stores a delivery, replacing its earlier version and keeping the due
    /// index in step.
    fn save_delivery(&mut self, delivery: &Delivery) -> StoreResult<()> {
        let record = keys::delivery(delivery);
        if let Some(old) = self.overlay.get(&record)? {
            let old = decode_delivery(&old, &self.strings)?;
            if let Some(due) = keys::due(&old) {
                self.overlay.remove(&due);
            }
        }
        let encoded = encode_delivery(delivery, &mut self.strings);
        self.overlay.insert(&record, encoded);
        if delivery.state == DeliveryState::Pending
            && let Some(due) = keys::due(delivery)
        {
            self.overlay.insert(&due, &[]);
        }
        self.overlay.insert(&keys::of_operation(delivery), &[]);
        Ok(())
    }
}
