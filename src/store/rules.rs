//! The rulebook: what a batch of writes does, decided once for every
//! backend.
//!
//! A backend hands the batch to a [`Rulebook`] together with a [`View`] of
//! what it stores (an operation by id, the operation holding a request_id)
//! and gets back a [`Plan`]: which operations to insert, update (fenced by
//! the attempt and version read) or remove, which request_id entries now
//! point where, the latest version of each webhook delivery to store, what
//! to announce on the feed, and whether the batch must be durable before
//! anyone hears of it. The backend only translates the plan into its own
//! form (keys for one sled batch, multi-row SQL) and applies it atomically.
//!
//! The rules, each in one place:
//! - a create whose request_id its tenant used before answers with that
//!   operation when the request was the same, and is refused
//!   ([`StoreError::RequestIdConflict`]) when it differed;
//! - every state change is the model's ([`Operation::creation`],
//!   [`Operation::apply`]), with the delivery it calls for;
//! - only a done operation is deleted, with its request_id entry (while it
//!   still names it) and its deliveries; a purge skips one that is not done;
//! - a delivery is kept only while its operation is;
//! - a bulk page applies its action to each item of the action's tenant
//!   that allows it, skips the rest, and records the counts on the
//!   action's operation in the same plan, or does nothing at all when the
//!   action's attempt is no longer current;
//! - claims, assignments and progress are lazy, everything else durable;
//! - each write sees those before it, and a refused write leaves nothing.
//!
//! **Invariant:** outside unit tests, only `model/` and this module call
//! the model's transition functions (`apply`, `creation`,
//! `check_deletable`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Applied, BulkPage, Change, Created, StoreError, StoreResult, Write};
use crate::model::{
    Attempt, BulkAction, Delivery, Edit, Holds, Mark, Operation, OperationId, Outcome, Rejection,
    RequestId, State, Tenant,
};

/// What the rulebook reads: the store as it was before the batch.
pub(crate) trait View {
    /// The stored operation with this id.
    fn operation(&mut self, id: OperationId) -> StoreResult<Option<Operation>>;

    /// The stored operation that holds `request_id` in `tenant`.
    fn request_holder(
        &mut self,
        tenant: &Tenant,
        request_id: RequestId,
    ) -> StoreResult<Option<OperationId>>;
}

/// A stored operation as the batch read it: what a fenced update names,
/// so that the store refuses it should the row have moved meanwhile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fence {
    pub attempt: Attempt,
    pub version: u64,
    pub state: State,
    /// The limit slots it held.
    pub holds: Holds,
}

impl Fence {
    fn of(op: &Operation) -> Self {
        Self {
            attempt: op.attempt,
            version: op.version,
            state: op.state,
            holds: op.holds,
        }
    }
}

/// What the batch does to one stored operation.
#[derive(Debug)]
pub(crate) enum Step {
    /// A new operation.
    Insert(Operation),
    /// A stored operation, read as `was`, becomes `op`.
    Update { was: Fence, op: Operation },
    /// A stored operation (as last read) goes, with its deliveries.
    Remove(Operation),
}

impl Step {
    /// The operation the step writes or removes.
    pub(crate) fn operation(&self) -> &Operation {
        match self {
            Step::Insert(op) | Step::Update { op, .. } | Step::Remove(op) => op,
        }
    }

    /// The limit slots the step gives back: those the operation held as
    /// read, once it no longer runs.
    pub(crate) fn released(&self) -> Holds {
        match self {
            Step::Update { was, op } if !was.holds.is_empty() && op.holds.is_empty() => was.holds,
            _ => Holds::NONE,
        }
    }

    /// Whether the step brings a done operation back (a retry).
    pub(crate) fn reopens(&self) -> bool {
        matches!(self, Step::Update { was, op } if was.state.is_terminal() && !op.is_done())
    }

    /// Whether the step ends the operation: it was not done before and is
    /// now.
    pub(crate) fn ends(&self) -> bool {
        match self {
            Step::Insert(op) => op.is_done(),
            Step::Update { was, op } => !was.state.is_terminal() && op.is_done(),
            Step::Remove(_) => false,
        }
    }
}

/// One announcement of the batch.
#[derive(Debug)]
pub(crate) struct Announce {
    pub change: Change,
    /// Whether the change wrote a pending webhook delivery.
    pub delivery: bool,
}

/// Where a request_id entry points once the batch is applied.
#[derive(Debug)]
pub(crate) struct RequestEntry {
    pub tenant: Tenant,
    pub request_id: RequestId,
    /// The operation holding it; None when the entry goes.
    pub holder: Option<OperationId>,
}

/// What a batch does, for a backend to apply atomically.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// One step per operation that changed, in the order first touched.
    pub steps: Vec<Step>,
    /// The request_id entries that changed.
    pub requests: Vec<RequestEntry>,
    /// The latest version of each delivery to store, none of an operation
    /// the batch removes.
    pub deliveries: Vec<Delivery>,
    /// What the feed announces once the batch is applied, in order.
    pub changes: Vec<Announce>,
    /// Whether the batch must be durable before its callers hear of it.
    pub durable: bool,
}

/// An operation as the batch leaves it.
enum Current {
    /// Read, not changed.
    Same(Operation),
    /// Created or changed by the batch.
    Changed(Operation),
    /// Removed by the batch; as it was last.
    Removed(Operation),
    /// Not stored.
    Missing,
}

struct Row {
    /// As stored before the batch; None for one the batch created.
    stored: Option<Fence>,
    current: Current,
}

impl Row {
    fn operation(&self) -> Option<&Operation> {
        match &self.current {
            Current::Same(op) | Current::Changed(op) => Some(op),
            Current::Removed(_) | Current::Missing => None,
        }
    }
}

/// Decides a batch, one write at a time, against a [`View`].
pub(crate) struct Rulebook<'v, V: View> {
    view: &'v mut V,
    now: SystemTime,
    rows: HashMap<OperationId, Row>,
    order: Vec<OperationId>,
    requests: HashMap<(Tenant, RequestId), Option<OperationId>>,
    changed_requests: Vec<(Tenant, RequestId)>,
    deliveries: Vec<Delivery>,
    changes: Vec<Announce>,
    durable: bool,
}

impl<'v, V: View> Rulebook<'v, V> {
    pub(crate) fn new(view: &'v mut V, now: SystemTime) -> Self {
        Self {
            view,
            now,
            rows: HashMap::new(),
            order: Vec::new(),
            requests: HashMap::new(),
            changed_requests: Vec::new(),
            deliveries: Vec::new(),
            changes: Vec::new(),
            durable: false,
        }
    }

    /// Decides one write: what it did, or why it was refused (leaving
    /// nothing of it in the plan).
    pub(crate) fn write(&mut self, write: &Write) -> StoreResult<Applied> {
        let applied = match write {
            Write::Create(op) => self.create(op).map(Applied::Created),
            Write::Update { id, edit } => self.update(*id, edit).map(Applied::Updated),
            Write::Delete(id) => {
                let op = self.read(*id)?.ok_or(StoreError::NotFound)?;
                op.check_deletable()?;
                self.remove(op)?;
                Ok(Applied::Deleted(true))
            }
            Write::Purge(id) => match self.read(*id)? {
                Some(op) if op.check_deletable().is_ok() => {
                    self.remove(op)?;
                    Ok(Applied::Deleted(true))
                }
                _ => Ok(Applied::Deleted(false)),
            },
            Write::SaveDelivery(delivery) => {
                // A delivery outlives its operation by nothing.
                if self.read(delivery.operation)?.is_some() {
                    self.deliveries.push(delivery.clone());
                    self.announce(Change::Delivery(delivery.operation), false);
                }
                Ok(Applied::DeliverySaved)
            }
            Write::Bulk(page) => self.bulk(page),
        }?;
        self.durable |= write.is_durable();
        Ok(applied)
    }

    /// Claims `id` with `edit` if it is still claimable: the operation now
    /// RUNNING, or None (gone, or no longer queued).
    pub(crate) fn claim(&mut self, id: OperationId, edit: &Edit) -> StoreResult<Option<Operation>> {
        if self.read(id)?.is_none() {
            return Ok(None);
        }
        match self.update(id, edit) {
            Ok(op) => Ok(Some(op)),
            Err(StoreError::Rejected(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The plan of everything decided.
    pub(crate) fn plan(self) -> Plan {
        let mut rows = self.rows;
        let steps = self
            .order
            .iter()
            .filter_map(|id| {
                let row = rows.remove(id)?;
                match (row.stored, row.current) {
                    (None, Current::Changed(op)) => Some(Step::Insert(op)),
                    (Some(was), Current::Changed(op)) => Some(Step::Update { was, op }),
                    (Some(_), Current::Removed(op)) => Some(Step::Remove(op)),
                    _ => None,
                }
            })
            .collect();
        let requests = self
            .changed_requests
            .into_iter()
            .map(|key| {
                let holder = self.requests.get(&key).copied().flatten();
                RequestEntry {
                    tenant: key.0,
                    request_id: key.1,
                    holder,
                }
            })
            .collect();
        // The latest version of each delivery, in the order first seen.
        let mut latest: HashMap<uuid::Uuid, usize> = HashMap::new();
        let mut deliveries: Vec<Delivery> = Vec::new();
        for delivery in self.deliveries {
            match latest.entry(delivery.id) {
                Entry::Occupied(at) => deliveries[*at.get()] = delivery,
                Entry::Vacant(slot) => {
                    slot.insert(deliveries.len());
                    deliveries.push(delivery);
                }
            }
        }
        Plan {
            steps,
            requests,
            deliveries,
            changes: self.changes,
            durable: self.durable,
        }
    }

    /// An operation as the batch so far leaves it.
    fn read(&mut self, id: OperationId) -> StoreResult<Option<Operation>> {
        if let Some(row) = self.rows.get(&id) {
            return Ok(row.operation().cloned());
        }
        let stored = self.view.operation(id)?;
        let row = Row {
            stored: stored.as_ref().map(Fence::of),
            current: match &stored {
                Some(op) => Current::Same(op.clone()),
                None => Current::Missing,
            },
        };
        self.rows.insert(id, row);
        self.order.push(id);
        Ok(stored)
    }

    /// The operation holding `request_id` in `tenant`, as the batch so far
    /// leaves it.
    fn holder(
        &mut self,
        tenant: &Tenant,
        request_id: RequestId,
    ) -> StoreResult<Option<OperationId>> {
        let key = (tenant.clone(), request_id);
        if let Some(holder) = self.requests.get(&key) {
            return Ok(*holder);
        }
        let holder = self.view.request_holder(tenant, request_id)?;
        self.requests.insert(key, holder);
        Ok(holder)
    }

    fn point(&mut self, tenant: &Tenant, request_id: RequestId, holder: Option<OperationId>) {
        let key = (tenant.clone(), request_id);
        if !self.changed_requests.contains(&key) {
            self.changed_requests.push(key.clone());
        }
        self.requests.insert(key, holder);
    }

    fn announce(&mut self, change: Change, delivery: bool) {
        self.changes.push(Announce { change, delivery });
    }

    /// Stores `op` as the batch now leaves it.
    fn set(&mut self, op: Operation) {
        let id = op.id;
        match self.rows.get_mut(&id) {
            Some(row) => row.current = Current::Changed(op),
            None => {
                self.rows.insert(
                    id,
                    Row {
                        stored: None,
                        current: Current::Changed(op),
                    },
                );
                self.order.push(id);
            }
        }
    }

    fn create(&mut self, op: &Operation) -> StoreResult<Created> {
        if let Some(request_id) = op.request_id
            && let Some(holder) = self.holder(&op.tenant, request_id)?
            && let Some(existing) = self.read(holder)?
        {
            if existing.request_digest == op.request_digest {
                return Ok(Created::Existing(existing));
            }
            return Err(StoreError::RequestIdConflict {
                request_id: request_id.to_string(),
                existing: existing.id,
            });
        }
        // A batch that takes no more children refuses it, before anything
        // of it is in the plan; one being cancelled takes it cancelled.
        let born = match op.parent {
            Some(parent) => match self.read(parent)? {
                Some(parent) => parent.admit(op, self.now)?,
                None => None,
            },
            None => None,
        };
        let op = born.as_ref().unwrap_or(op);
        self.roll_up(None, op)?;
        let transition = op.creation(op.create_time);
        let delivery = transition.delivery.is_some();
        if let Some(d) = transition.delivery {
            self.deliveries.push(d);
        }
        if let Some(request_id) = op.request_id {
            self.point(&op.tenant, request_id, Some(op.id));
        }
        self.set(op.clone());
        self.announce(Change::Updated(Arc::new(op.clone())), delivery);
        Ok(Created::New(op.clone()))
    }

    /// Applies an edit: the operation as it now is (unchanged when the
    /// edit changed nothing).
    fn update(&mut self, id: OperationId, edit: &Edit) -> StoreResult<Operation> {
        let current = self.read(id)?.ok_or(StoreError::NotFound)?;
        let Some(transition) = current.apply(edit, self.now)? else {
            return Ok(current);
        };
        let next = transition.operation;
        self.roll_up(Some(&current), &next)?;
        let delivery = transition.delivery.is_some();
        if let Some(d) = transition.delivery {
            self.deliveries.push(d);
        }
        self.set(next.clone());
        self.announce(Change::Updated(Arc::new(next.clone())), delivery);
        Ok(next)
    }

    /// Carries a child's change (from `before`, None when it is new) to
    /// its parent, in the same plan: the parent's counts are never
    /// recomputed from the children. A parent that is gone is left alone.
    fn roll_up(&mut self, before: Option<&Operation>, after: &Operation) -> StoreResult<()> {
        let Some(parent) = after.parent else {
            return Ok(());
        };
        let (was, now) = (before.map(Mark::of), Mark::of(after));
        if was == Some(now) {
            return Ok(());
        }
        let error = match &after.outcome {
            Some(Outcome::Error(error)) => Some(error.clone()),
            _ => None,
        };
        let edit = Edit::Child {
            child: after.id,
            before: was,
            after: now,
            error,
            expected: match before {
                None => after.estimated_end(after.create_time),
                Some(_) => None,
            },
        };
        match self.update(parent, &edit) {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound) if before.is_some() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies a bulk page: checks the action's attempt first, so that a
    /// stale one leaves nothing, then each item, then the tally.
    fn bulk(&mut self, page: &BulkPage) -> StoreResult<Applied> {
        let id = page.claim.id;
        let action = self.read(id)?.ok_or(StoreError::NotFound)?;
        let owns = action.attempt == page.claim.attempt
            && matches!(action.state, State::Running | State::Cancelling);
        if !owns {
            return Err(Rejection::Stale {
                held: page.claim.attempt,
            }
            .into());
        }
        let mut tally = page.tally.clone();
        let mut changed = Vec::new();
        for &item in &page.items {
            let done = match self.read(item)? {
                Some(op) if op.tenant == action.tenant && item != id => match page.action {
                    BulkAction::Cancel => self.changed_by(item, &Edit::Cancel)?,
                    BulkAction::Retry => self.changed_by(item, &Edit::Retry)?,
                    BulkAction::Delete if op.check_deletable().is_ok() => {
                        self.remove(op.clone())?;
                        Some(op)
                    }
                    BulkAction::Delete => None,
                },
                _ => None,
            };
            match done {
                Some(op) => {
                    tally.changed += 1;
                    changed.push(op);
                }
                None => tally.skipped += 1,
            }
        }
        let edit = Edit::Tally {
            claim: page.claim,
            action: page.action,
            tally: Box::new(tally),
        };
        let operation = self.update(id, &edit)?;
        Ok(Applied::Bulk { operation, changed })
    }

    /// The item as `edit` left it, or None when the edit was refused or
    /// changed nothing.
    fn changed_by(&mut self, id: OperationId, edit: &Edit) -> StoreResult<Option<Operation>> {
        let before = self.read(id)?.map(|op| op.version);
        match self.update(id, edit) {
            Ok(op) if Some(op.version) != before => Ok(Some(op)),
            Ok(_) | Err(StoreError::Rejected(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a done operation, its request_id entry while it still names
    /// it, and its deliveries.
    fn remove(&mut self, op: Operation) -> StoreResult<()> {
        let id = op.id;
        if let Some(request_id) = op.request_id
            && self.holder(&op.tenant, request_id)? == Some(id)
        {
            self.point(&op.tenant, request_id, None);
        }
        self.deliveries.retain(|d| d.operation != id);
        if let Some(row) = self.rows.get_mut(&id) {
            row.current = Current::Removed(op);
        }
        self.announce(Change::Deleted(id), false);
        Ok(())
    }
}

/// Checks that `op` may be deleted, before anything outside the store is
/// let go of: the rule a [`Write::Delete`] applies.
pub(crate) fn check_delete(op: &Operation) -> StoreResult<()> {
    op.check_deletable().map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limits, Payload};

    /// A view over a map, counting reads.
    #[derive(Default)]
    struct Map {
        ops: HashMap<OperationId, Operation>,
        reads: usize,
    }

    impl View for Map {
        fn operation(&mut self, id: OperationId) -> StoreResult<Option<Operation>> {
            self.reads += 1;
            Ok(self.ops.get(&id).cloned())
        }

        fn request_holder(
            &mut self,
            tenant: &Tenant,
            request_id: RequestId,
        ) -> StoreResult<Option<OperationId>> {
            self.reads += 1;
            Ok(self
                .ops
                .values()
                .find(|op| op.tenant == *tenant && op.request_id == Some(request_id))
                .map(|op| op.id))
        }
    }

    fn op(request_id: Option<RequestId>, digest: u8) -> Operation {
        Operation::new(
            "k",
            Payload::default(),
            request_id,
            [digest; 32],
            Limits::default(),
            Tenant::default(),
            SystemTime::now(),
        )
    }

    #[test]
    fn a_create_then_its_delete_in_one_batch_leaves_no_step() {
        let mut view = Map::default();
        let now = SystemTime::now();
        let mut book = Rulebook::new(&mut view, now);
        let new = op(None, 1);
        book.write(&Write::Create(new.clone())).unwrap();
        book.write(&Write::Update {
            id: new.id,
            edit: Edit::Cancel,
        })
        .unwrap();
        book.write(&Write::Delete(new.id)).unwrap();
        let plan = book.plan();
        assert!(plan.steps.is_empty(), "{:?}", plan.steps);
        assert_eq!(plan.changes.len(), 3);
        assert!(plan.durable);
    }

    #[test]
    fn a_refused_write_leaves_nothing_and_the_next_sees_the_ones_before() {
        let mut view = Map::default();
        let stored = op(None, 1);
        view.ops.insert(stored.id, stored.clone());
        let now = SystemTime::now();
        let mut book = Rulebook::new(&mut view, now);
        // Not done: the delete is refused.
        assert!(book.write(&Write::Delete(stored.id)).is_err());
        book.write(&Write::Update {
            id: stored.id,
            edit: Edit::Cancel,
        })
        .unwrap();
        // Cancelled now (it was queued), so done: deletable.
        book.write(&Write::Delete(stored.id)).unwrap();
        let plan = book.plan();
        assert_eq!(plan.steps.len(), 1);
        assert!(matches!(&plan.steps[0], Step::Remove(op) if op.state == State::Cancelled));
    }

    #[test]
    fn a_request_id_is_looked_up_once_and_freed_by_its_delete() {
        let mut view = Map::default();
        let request_id = RequestId::from_bytes([9; 16]);
        let now = SystemTime::now();
        let mut book = Rulebook::new(&mut view, now);
        let first = op(Some(request_id), 1);
        book.write(&Write::Create(first.clone())).unwrap();
        match book.write(&Write::Create(op(Some(request_id), 1))).unwrap() {
            Applied::Created(Created::Existing(existing)) => assert_eq!(existing.id, first.id),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            book.write(&Write::Create(op(Some(request_id), 2))),
            Err(StoreError::RequestIdConflict { .. })
        ));
        let plan = book.plan();
        assert_eq!(plan.requests.len(), 1);
        assert_eq!(plan.requests[0].holder, Some(first.id));
        assert_eq!(view.reads, 1, "one lookup of the request_id");
    }
}
