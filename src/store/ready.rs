//! The queue of claimable operations, for backends that keep it in memory
//! (sled). Rebuilt from the stored records at open, it is only an index:
//! the records stay the truth, and a claim still goes through
//! `Operation::apply`, which refuses anything no longer queued.
//!
//! Work is kept per kind, within a kind per priority (higher first), and
//! within a priority per tenant, oldest first. Taking work empties the
//! higher priorities first; within one it goes round the tenants that
//! have some, one operation each turn, so one tenant's backlog never
//! starves another's. Operations that
//! wait out a retry backoff sit apart until they are due.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use crate::model::{Operation, OperationId, State, Tenant};

/// How many operations wait to be claimed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// On the whole store.
    pub total: u64,
    /// Of the tenant asked about.
    pub tenant: u64,
}

/// Where one queued operation sits.
#[derive(Clone, Debug)]
struct Entry {
    kind: Arc<str>,
    tenant: Tenant,
    /// Set while it waits out a backoff.
    due: Option<SystemTime>,
    priority: i32,
}

/// The ready work of one kind, by priority, the highest first.
#[derive(Default)]
struct KindQueue {
    levels: BTreeMap<Reverse<i32>, Level>,
}

impl KindQueue {
    fn push(&mut self, priority: i32, tenant: &Tenant, id: OperationId) {
        self.levels
            .entry(Reverse(priority))
            .or_default()
            .push(tenant, id);
    }

    fn remove(&mut self, priority: i32, tenant: &Tenant, id: OperationId) {
        if let Some(level) = self.levels.get_mut(&Reverse(priority)) {
            level.remove(tenant, id);
            if level.waiting.is_empty() {
                self.levels.remove(&Reverse(priority));
            }
        }
    }

    /// Up to `n` operations, the highest priority first: of `tenant`
    /// alone, or of every tenant in turn.
    fn take(&mut self, tenant: Option<&Tenant>, n: usize, out: &mut Vec<OperationId>) {
        let start = out.len();
        let mut emptied = Vec::new();
        for (priority, level) in &mut self.levels {
            let left = n - (out.len() - start);
            if left == 0 {
                break;
            }
            match tenant {
                Some(tenant) => level.take_of(tenant, left, out),
                None => level.take(left, out),
            }
            if level.waiting.is_empty() {
                emptied.push(*priority);
            }
        }
        for priority in emptied {
            self.levels.remove(&priority);
        }
    }
}

/// The ready work of one kind at one priority.
#[derive(Default)]
struct Level {
    /// Tenants with ready work, in the order they are served.
    turn: VecDeque<Tenant>,
    /// Each tenant's ready operations, oldest first (ids sort by creation).
    waiting: HashMap<Tenant, BTreeSet<OperationId>>,
}

impl Level {
    fn push(&mut self, tenant: &Tenant, id: OperationId) {
        let set = self.waiting.entry(tenant.clone()).or_default();
        if set.is_empty() {
            self.turn.push_back(tenant.clone());
        }
        set.insert(id);
    }

    fn remove(&mut self, tenant: &Tenant, id: OperationId) {
        if let Some(set) = self.waiting.get_mut(tenant) {
            set.remove(&id);
            if set.is_empty() {
                self.waiting.remove(tenant);
                self.turn.retain(|t| t != tenant);
            }
        }
    }

    /// Up to `n` operations of `tenant` alone, oldest first.
    fn take_of(&mut self, tenant: &Tenant, n: usize, out: &mut Vec<OperationId>) {
        let Some(set) = self.waiting.get_mut(tenant) else {
            return;
        };
        let mut taken = 0;
        while taken < n
            && let Some(id) = set.pop_first()
        {
            out.push(id);
            taken += 1;
        }
        if set.is_empty() {
            self.waiting.remove(tenant);
            self.turn.retain(|t| t != tenant);
        }
    }

    /// Up to `n` operations, one per tenant per turn.
    fn take(&mut self, n: usize, out: &mut Vec<OperationId>) {
        let mut taken = 0;
        while taken < n {
            let Some(tenant) = self.turn.pop_front() else {
                return;
            };
            let Some(set) = self.waiting.get_mut(&tenant) else {
                continue;
            };
            if let Some(id) = set.pop_first() {
                out.push(id);
                taken += 1;
            }
            if set.is_empty() {
                self.waiting.remove(&tenant);
            } else {
                self.turn.push_back(tenant);
            }
        }
    }
}

/// Every queued operation of a store, by kind, tenant and due time.
#[derive(Default)]
pub struct Ready {
    entries: HashMap<OperationId, Entry>,
    kinds: HashMap<Arc<str>, KindQueue>,
    /// Operations waiting out a backoff, by due time.
    delayed: BTreeSet<(SystemTime, OperationId)>,
    tenants: HashMap<Tenant, u64>,
    /// How many of each kind are queued (ready or delayed).
    per_kind: HashMap<Arc<str>, u64>,
}

impl Ready {
    /// Brings the index in step with an operation's state: a queued one
    /// is added (or moved), anything else is taken out.
    pub fn track(&mut self, op: &Operation) {
        if op.state == State::Queued {
            self.queue(op.id, &op.kind, &op.tenant, op.not_before, op.priority);
        } else {
            self.remove(op.id);
        }
    }

    /// Takes an operation out, whatever its state (deleted, say).
    pub fn remove(&mut self, id: OperationId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        match entry.due {
            Some(due) => {
                self.delayed.remove(&(due, id));
            }
            None => {
                if let Some(queue) = self.kinds.get_mut(&entry.kind) {
                    queue.remove(entry.priority, &entry.tenant, id);
                }
            }
        }
        self.uncount(&entry);
    }

    fn uncount(&mut self, entry: &Entry) {
        if let Some(count) = self.tenants.get_mut(&entry.tenant) {
            *count -= 1;
            if *count == 0 {
                self.tenants.remove(&entry.tenant);
            }
        }
        if let Some(count) = self.per_kind.get_mut(&entry.kind) {
            *count = count.saturating_sub(1);
        }
    }

    /// Puts a queued operation of `kind` and `tenant` in line at its
    /// `priority`: at once, or when `due` comes.
    pub fn queue(
        &mut self,
        id: OperationId,
        kind: &str,
        tenant: &Tenant,
        due: Option<SystemTime>,
        priority: i32,
    ) {
        self.remove(id);
        let kind = match self.kinds.get_key_value(kind) {
            Some((kind, _)) => Arc::clone(kind),
            None => Arc::from(kind),
        };
        let entry = Entry {
            kind: Arc::clone(&kind),
            tenant: tenant.clone(),
            due,
            priority,
        };
        match due {
            Some(due) => {
                self.delayed.insert((due, id));
            }
            None => self
                .kinds
                .entry(kind)
                .or_default()
                .push(priority, tenant, id),
        }
        *self.tenants.entry(tenant.clone()).or_insert(0) += 1;
        *self.per_kind.entry(Arc::clone(&entry.kind)).or_insert(0) += 1;
        self.entries.insert(id, entry);
    }

    /// Moves every delayed operation due by `now` to its kind's queue.
    fn promote(&mut self, now: SystemTime) {
        while let Some(&(due, id)) = self.delayed.first() {
            if due > now {
                return;
            }
            self.delayed.pop_first();
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.due = None;
                let (kind, tenant) = (Arc::clone(&entry.kind), entry.tenant.clone());
                let priority = entry.priority;
                self.kinds
                    .entry(kind)
                    .or_default()
                    .push(priority, &tenant, id);
            }
        }
    }

    /// Takes up to the wanted number of due operations of each kind, and
    /// forgets them: the caller claims them next. Within a kind, the
    /// higher priorities go first, and within one, tenants take turns.
    pub fn take(
        &mut self,
        wants: &[(String, usize)],
        tenant: Option<&Tenant>,
        now: SystemTime,
    ) -> Vec<OperationId> {
        self.promote(now);
        let mut out = Vec::new();
        for (kind, n) in wants {
            if let Some(queue) = self.kinds.get_mut(kind.as_str()) {
                let from = out.len();
                queue.take(tenant, *n, &mut out);
                for id in &out[from..] {
                    if let Some(entry) = self.entries.remove(id) {
                        self.uncount(&entry);
                    }
                }
            }
        }
        out
    }

    /// How many operations of `kind` are ready or waiting out a backoff.
    pub fn depth_of_kind(&self, kind: &str) -> u64 {
        self.per_kind.get(kind).copied().unwrap_or(0)
    }

    /// When the earliest delayed operation is due.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.delayed.first().map(|(due, _)| *due)
    }

    /// How many operations are queued, in all and for `tenant`.
    pub fn depth(&self, tenant: &Tenant) -> QueueDepth {
        QueueDepth {
            total: self.entries.len() as u64,
            tenant: self.tenants.get(tenant).copied().unwrap_or(0),
        }
    }
}
