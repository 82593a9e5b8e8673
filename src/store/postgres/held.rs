//! The operations this node is running, as it last wrote them.
//!
//! Most writes after a claim are the claimed operation's own progress
//! reports and its finish. Instead of locking and reading its row again
//! (a statement that took about a third of the statement time PostgreSQL
//! logged per operation), a batch made only of such writes is decided
//! against the copy kept here.
//! That is safe because the update names the attempt and version it was
//! decided against, and every change of a row, by any node, moves its
//! version: a row that moved meanwhile (another node recovered it, a
//! sweep ended it) makes the update miss, and the batch is rolled back
//! and goes the long way, which locks and reads. Lease renewals move only
//! the lease's expiry column: the copies take them in, and an update
//! within one attempt never moves the expiry back (see `commit::save`), so
//! a renewal that races a batch decided against an older copy still
//! holds.
//!
//! Bounded: at most [`MAX_HELD`] rows, none larger than
//! [`MAX_HELD_BYTES`] by [`Operation::size_hint`] and its request. A copy
//! this node never writes again (its operation finished through another
//! node) stays until the rows fill up; then all are forgotten at once. A
//! row not held only costs the long way.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::model::{Edit, Operation, OperationId, RequestId, State, Tenant};
use crate::store::rules::{Plan, Step, View};
use crate::store::{StoreResult, Write};

/// The most rows kept.
const MAX_HELD: usize = 16_384;
/// The largest row kept.
const MAX_HELD_BYTES: usize = 64 * 1024;

/// The rows of the operations this node runs; see the module's header.
#[derive(Default)]
pub(super) struct Held {
    rows: Mutex<HashMap<OperationId, Operation>>,
}

impl Held {
    /// Takes out the rows a batch updates, when it only reports progress on
    /// and finishes held rows (edits that read neither the lease nor
    /// anything beyond the row), beside creates that read nothing (no
    /// request_id, no batch): what it is then decided against. Taken rows
    /// are no longer held, so a second batch of the same operation in
    /// flight at once goes the long way and waits for this one's lock.
    pub(super) fn take(&self, writes: &[Write]) -> Option<HeldView> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let mut updates = 0;
        let all_held = writes.iter().all(|w| match w {
            Write::Update {
                id,
                edit: Edit::Progress { .. } | Edit::Finish { .. },
            } => {
                updates += 1;
                rows.contains_key(id)
            }
            Write::Create(op) => op.parent.is_none() && op.request_id.is_none(),
            _ => false,
        });
        if !all_held || updates == 0 {
            return None;
        }
        let mut taken = HashMap::with_capacity(writes.len());
        for write in writes {
            if let Write::Update { id, .. } = write
                && let Some(op) = rows.remove(id)
            {
                taken.insert(*id, op);
            }
        }
        Some(HeldView {
            rows: taken,
            read: Vec::with_capacity(writes.len()),
            missed: false,
        })
    }

    /// Takes in a committed plan: the running operations it leaves are
    /// held (unless a later version already is), the rest forgotten.
    pub(super) fn keep(&self, plan: &Plan) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        for step in &plan.steps {
            let op = step.operation();
            let wanted = !matches!(step, Step::Remove(_)) && worth_holding(op);
            if !wanted {
                rows.remove(&op.id);
                continue;
            }
            if rows.len() >= MAX_HELD && !rows.contains_key(&op.id) {
                // Full, likely of copies nobody writes here any more.
                rows.clear();
            }
            match rows.entry(op.id) {
                Entry::Occupied(held) if held.get().version >= op.version => {}
                Entry::Occupied(mut held) => *held.get_mut() = op.clone(),
                Entry::Vacant(free) => {
                    free.insert(op.clone());
                }
            }
        }
    }

    /// Takes in a renewal: the held leases of `ids` run until `until`.
    pub(super) fn renewed(&self, ids: &[OperationId], until: SystemTime) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(lease) = rows.get_mut(id).and_then(|op| op.lease.as_mut()) {
                lease.expires = until;
            }
        }
    }
}

/// Whether a written operation is worth holding: one that runs (its next
/// writes are its own), outside any batch (a child's writes roll up into
/// rows that are not held), and small.
fn worth_holding(op: &Operation) -> bool {
    matches!(op.state, State::Running | State::Cancelling)
        && op.parent.is_none()
        && op.size_hint() + op.request.value.len() <= MAX_HELD_BYTES
}

/// The held rows a batch is decided against. Reading anything else marks
/// it missed: the plan is then thrown away and the batch goes the long
/// way.
pub(super) struct HeldView {
    rows: HashMap<OperationId, Operation>,
    /// The rows handed to the rulebook.
    read: Vec<OperationId>,
    missed: bool,
}

impl HeldView {
    /// Whether `plan` may be written as decided: the rulebook read only
    /// held rows, and updates every one it read, so that the update's
    /// fence checks each copy it was decided against. (A copy that only
    /// answered, a refusal say, is checked by nothing: the long way then
    /// decides again.)
    pub(super) fn fenced(&self, plan: &Plan) -> bool {
        !self.missed
            && self.read.iter().all(|id| {
                plan.steps
                    .iter()
                    .any(|step| matches!(step, Step::Update { op, .. } if op.id == *id))
            })
    }
}

impl View for HeldView {
    fn operation(&mut self, id: OperationId) -> StoreResult<Option<Operation>> {
        let op = self.rows.remove(&id);
        match &op {
            Some(_) => self.read.push(id),
            None => self.missed = true,
        }
        Ok(op)
    }

    fn request_holder(
        &mut self,
        _tenant: &Tenant,
        _request_id: RequestId,
    ) -> StoreResult<Option<OperationId>> {
        self.missed = true;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::model::{Claim, Payload, Progress};
    use crate::store::rules::Fence;

    fn running(at: SystemTime) -> Operation {
        let mut op = Operation::new(
            "k",
            Payload::default(),
            None,
            [0; 32],
            Default::default(),
            Tenant::default_tenant(),
            at,
        );
        op.state = State::Running;
        op
    }

    fn updated(op: &Operation) -> Step {
        Step::Update {
            was: Fence {
                attempt: op.attempt,
                version: op.version - 1,
                state: State::Queued,
                holds: op.holds,
            },
            op: op.clone(),
        }
    }

    fn plan(steps: Vec<Step>) -> Plan {
        Plan {
            steps,
            requests: Vec::new(),
            deliveries: Vec::new(),
            changes: Vec::new(),
            durable: false,
        }
    }

    fn progress_of(op: &Operation) -> Write {
        Write::Update {
            id: op.id,
            edit: Edit::Progress {
                claim: Claim::of(op),
                progress: Progress::default(),
            },
        }
    }

    fn len(held: &Held) -> usize {
        held.rows.lock().unwrap().len()
    }

    #[test]
    fn keeps_running_rows_and_their_latest_version_only() {
        let held = Held::default();
        let mut op = running(SystemTime::now());
        op.version = 3;
        held.keep(&plan(vec![updated(&op)]));
        let mut older = op.clone();
        older.version = 2;
        held.keep(&plan(vec![updated(&older)]));
        let view = held.take(&[progress_of(&op)]).expect("held");
        assert_eq!(view.rows[&op.id].version, 3);
        // Taken rows are no longer held: a second batch goes the long way.
        assert!(held.take(&[progress_of(&op)]).is_none());

        held.keep(&plan(vec![updated(&op)]));
        let mut done = op.clone();
        done.state = State::Succeeded;
        done.version = 4;
        held.keep(&plan(vec![updated(&done)]));
        assert_eq!(len(&held), 0, "a row that stopped running is forgotten");
    }

    #[test]
    fn only_batches_of_held_progress_finishes_and_plain_creates_are_taken() {
        let held = Held::default();
        let op = running(SystemTime::now());
        held.keep(&plan(vec![updated(&op)]));
        let mut keyed = running(SystemTime::now() + Duration::from_millis(1));
        keyed.request_id = Some(RequestId::from_bytes([7; 16]));
        let cancel = Write::Update {
            id: op.id,
            edit: Edit::Cancel,
        };
        assert!(held.take(&[cancel]).is_none());
        assert!(
            held.take(&[Write::Create(running(SystemTime::now()))])
                .is_none()
        );
        assert!(
            held.take(&[progress_of(&op), Write::Create(keyed)])
                .is_none()
        );
        assert!(
            held.take(&[progress_of(&op), Write::Create(running(SystemTime::now()))])
                .is_some()
        );
    }

    #[test]
    fn never_holds_more_than_its_bound() {
        let held = Held::default();
        let start = SystemTime::now();
        let mut big = running(start);
        big.request.value = vec![0; MAX_HELD_BYTES].into();
        held.keep(&plan(vec![updated(&big)]));
        assert_eq!(len(&held), 0, "too large to hold");
        for i in 0..=MAX_HELD as u64 {
            let op = running(start + Duration::from_micros(i + 1));
            held.keep(&plan(vec![updated(&op)]));
            assert!(len(&held) <= MAX_HELD);
        }
        assert_eq!(len(&held), 1, "full: all forgotten, then the newest kept");
    }
}
