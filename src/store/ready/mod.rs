//! The queue of claimable operations, for backends that keep it in memory
//! (sled). Rebuilt from the stored records at open, it is only an index:
//! the records stay the truth, and a claim still goes through
//! `Operation::apply`, which refuses anything no longer queued.
//!
//! Work is kept per kind, within a kind per priority (higher first),
//! within a priority per tenant, and within a tenant in lanes by
//! concurrency key, oldest first. Taking work empties the higher
//! priorities first; within one it goes round the tenants that have some,
//! as many operations each turn as the tenant's weight, so one tenant's
//! backlog never starves another's. Each candidate is put to the kind's
//! limits ([`Gate`]): a key at its limit has its lane set aside, a tenant
//! at its limit ends its turn, and a kind at its limit ends the take, so
//! a take does work in proportion to what it takes and the lanes it
//! skips, never to the backlog. Operations that wait out a retry backoff
//! sit apart until they are due.
//!
//! It also counts, per kind, the slots the running operations hold, and
//! keeps the token buckets: on sled the limits are exact in one process.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use crate::model::flow::{self, Gate, Usage};
use crate::model::{Holds, KindLimits, LimitScope, Operation, OperationId, State, Tenant};

/// A queued operation, as the index keeps it.
pub struct QueuedOp<'a> {
    pub id: OperationId,
    pub kind: &'a str,
    pub tenant: &'a Tenant,
    pub key: Option<&'a str>,
    /// Set while it waits out a backoff.
    pub due: Option<SystemTime>,
    pub priority: i32,
    /// When it expires unless started.
    pub expire: Option<SystemTime>,
}

impl<'a> QueuedOp<'a> {
    pub fn of(op: &'a Operation) -> Self {
        Self {
            id: op.id,
            kind: &op.kind,
            tenant: &op.tenant,
            key: op.concurrency_key.as_deref(),
            due: op.not_before,
            priority: op.priority,
            expire: op.expire_time,
        }
    }
}

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
    key: Lane,
    /// Set while it waits out a backoff.
    due: Option<SystemTime>,
    priority: i32,
    expire: Option<SystemTime>,
}

/// The concurrency key an operation is counted under, if any.
type Lane = Option<Arc<str>>;

/// What the limits say of the next candidate in line.
enum Verdict {
    Take(Holds),
    /// Its key may start nothing more now.
    ShutLane,
    /// Its tenant may start nothing more now.
    ShutTenant,
    /// The kind may start nothing more now.
    Stop,
}

/// Asks the gate of one kind, and remembers the earliest time a spent
/// rate fills again.
struct Admission<'a> {
    gate: Option<Gate<'a>>,
    now: SystemTime,
    wake: Option<SystemTime>,
}

impl Admission<'_> {
    fn ask(&mut self, tenant: &Tenant, key: Option<&str>) -> Verdict {
        let Some(gate) = &mut self.gate else {
            return Verdict::Take(Holds::NONE);
        };
        match gate.admit(tenant.as_str(), key, self.now) {
            Ok(holds) => Verdict::Take(holds),
            Err((scope, waiting)) => {
                if let Some(until) = waiting.until() {
                    self.wake = Some(self.wake.map_or(until, |w| w.min(until)));
                }
                match scope {
                    LimitScope::Kind => Verdict::Stop,
                    LimitScope::Key => Verdict::ShutLane,
                    LimitScope::Tenant => Verdict::ShutTenant,
                }
            }
        }
    }
}

/// The ready work of one kind, by priority, the highest first.
#[derive(Default)]
struct KindQueue {
    levels: BTreeMap<Reverse<i32>, Level>,
}

impl KindQueue {
    fn push(&mut self, entry: &Entry, id: OperationId) {
        self.levels
            .entry(Reverse(entry.priority))
            .or_default()
            .push(entry, id);
    }

    fn remove(&mut self, entry: &Entry, id: OperationId) {
        if let Some(level) = self.levels.get_mut(&Reverse(entry.priority)) {
            level.remove(entry, id);
            if level.waiting.is_empty() {
                self.levels.remove(&Reverse(entry.priority));
            }
        }
    }

    /// Up to `n` operations the limits admit, the highest priority first:
    /// of `tenant` alone, or of every tenant in turn.
    fn take(&mut self, ask: &mut Take<'_, '_>, n: usize) {
        let start = ask.out.len();
        let mut emptied = Vec::new();
        for (priority, level) in &mut self.levels {
            let left = n - (ask.out.len() - start);
            if left == 0 || ask.stopped {
                break;
            }
            level.take(ask, left);
            if level.waiting.is_empty() {
                emptied.push(*priority);
            }
        }
        for priority in emptied {
            self.levels.remove(&priority);
        }
    }
}

/// One take's state: who may take, the limits, and what was taken.
struct Take<'a, 'g> {
    tenant: Option<&'a Tenant>,
    weights: &'a HashMap<Tenant, u32>,
    admission: Admission<'g>,
    out: Vec<(OperationId, Holds)>,
    /// Set once the kind may start nothing more.
    stopped: bool,
}

/// One tenant's ready operations at one priority, in lanes by key.
#[derive(Default)]
struct Lanes {
    lanes: HashMap<Lane, BTreeSet<OperationId>>,
    /// The first of every lane, oldest first (ids sort by creation).
    heads: BTreeSet<(OperationId, Lane)>,
}

impl Lanes {
    fn push(&mut self, key: &Lane, id: OperationId) {
        let lane = self.lanes.entry(key.clone()).or_default();
        let head = lane.first().copied();
        lane.insert(id);
        if head.is_none_or(|h| id < h) {
            if let Some(h) = head {
                self.heads.remove(&(h, key.clone()));
            }
            self.heads.insert((id, key.clone()));
        }
    }

    fn remove(&mut self, key: &Lane, id: OperationId) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        if !lane.remove(&id) {
            return;
        }
        if self.heads.remove(&(id, key.clone())) {
            match lane.first() {
                Some(next) => {
                    self.heads.insert((*next, key.clone()));
                }
                None => {
                    self.lanes.remove(key);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// The oldest operation whose lane the limits admit. Lanes they shut
    /// are set aside in `shut` for the rest of the take.
    fn pop(
        &mut self,
        tenant: &Tenant,
        admission: &mut Admission<'_>,
        shut: &mut Vec<(OperationId, Lane)>,
    ) -> Result<Option<(OperationId, Holds)>, Verdict> {
        while let Some((id, key)) = self.heads.pop_first() {
            match admission.ask(tenant, key.as_deref()) {
                Verdict::Take(holds) => {
                    let lane = self.lanes.get_mut(&key).expect("a head has its lane");
                    lane.pop_first();
                    match lane.first() {
                        Some(next) => {
                            self.heads.insert((*next, key));
                        }
                        None => {
                            self.lanes.remove(&key);
                        }
                    }
                    return Ok(Some((id, holds)));
                }
                Verdict::ShutLane => shut.push((id, key)),
                other => {
                    self.heads.insert((id, key));
                    return Err(other);
                }
            }
        }
        Ok(None)
    }
}

/// The ready work of one kind at one priority.
#[derive(Default)]
struct Level {
    /// Tenants with ready work, in the order they are served.
    turn: VecDeque<Tenant>,
    /// Each tenant's ready operations.
    waiting: HashMap<Tenant, Lanes>,
}

impl Level {
    fn push(&mut self, entry: &Entry, id: OperationId) {
        let lanes = self.waiting.entry(entry.tenant.clone()).or_default();
        if lanes.is_empty() {
            self.turn.push_back(entry.tenant.clone());
        }
        lanes.push(&entry.key, id);
    }

    fn remove(&mut self, entry: &Entry, id: OperationId) {
        if let Some(lanes) = self.waiting.get_mut(&entry.tenant) {
            lanes.remove(&entry.key, id);
            if lanes.is_empty() {
                self.waiting.remove(&entry.tenant);
                self.turn.retain(|t| t != &entry.tenant);
            }
        }
    }

    /// Up to `n` operations: of one tenant, oldest first, or of every
    /// tenant in turn, each taking as many per turn as its weight.
    fn take(&mut self, ask: &mut Take<'_, '_>, n: usize) {
        let mut taken = 0;
        // Tenants whose turn is over for this take, and lanes set aside.
        let mut done: Vec<Tenant> = Vec::new();
        let mut shut: HashMap<Tenant, Vec<(OperationId, Lane)>> = HashMap::new();
        let alone = ask.tenant.cloned();
        while taken < n && !ask.stopped {
            let tenant = match &alone {
                Some(t) if self.waiting.contains_key(t) && done.is_empty() => t.clone(),
                Some(_) => break,
                None => match self.turn.pop_front() {
                    Some(t) => t,
                    None => break,
                },
            };
            let weight = match &alone {
                Some(_) => n,
                None => ask.weights.get(&tenant).copied().unwrap_or(1).max(1) as usize,
            };
            let Some(lanes) = self.waiting.get_mut(&tenant) else {
                continue;
            };
            let set_aside = shut.entry(tenant.clone()).or_default();
            let mut got = 0;
            let mut over = false;
            while got < weight && taken < n {
                match lanes.pop(&tenant, &mut ask.admission, set_aside) {
                    Ok(Some(pick)) => {
                        ask.out.push(pick);
                        got += 1;
                        taken += 1;
                    }
                    Ok(None) | Err(Verdict::ShutTenant) => {
                        over = true;
                        break;
                    }
                    Err(_) => {
                        ask.stopped = true;
                        break;
                    }
                }
            }
            if lanes.is_empty() && set_aside.is_empty() {
                self.waiting.remove(&tenant);
                shut.remove(&tenant);
                if alone.is_some() {
                    self.turn.retain(|t| t != &tenant);
                    break;
                }
            } else if over || ask.stopped {
                done.push(tenant);
            } else if alone.is_none() {
                self.turn.push_back(tenant);
            }
        }
        // Lanes and tenants set aside come back in line, in their order.
        for (tenant, lanes) in shut {
            if let Some(waiting) = self.waiting.get_mut(&tenant) {
                waiting.heads.extend(lanes);
            }
        }
        for tenant in done {
            let empty = self.waiting.get(&tenant).is_none_or(Lanes::is_empty);
            if empty {
                self.waiting.remove(&tenant);
                self.turn.retain(|t| t != &tenant);
            } else if alone.is_none() {
                self.turn.push_back(tenant);
            }
        }
    }
}

/// What a running operation holds of its kind's limits.
#[derive(Clone, Debug)]
pub struct Held {
    pub kind: Arc<str>,
    pub tenant: Tenant,
    pub key: Option<Arc<str>>,
    pub holds: Holds,
}

impl Held {
    /// What `op` holds, if anything.
    pub fn of(op: &Operation) -> Option<Self> {
        (!op.holds.is_empty()).then(|| Held {
            kind: Arc::from(op.kind.as_str()),
            tenant: op.tenant.clone(),
            key: op.concurrency_key.as_deref().map(Arc::from),
            holds: op.holds,
        })
    }
}

/// Every queued operation of a store, by kind, tenant and due time, and
/// the limits of each kind with what runs against them.
#[derive(Default)]
pub struct Ready {
    entries: HashMap<OperationId, Entry>,
    kinds: HashMap<Arc<str>, KindQueue>,
    /// Operations waiting out a backoff, by due time.
    delayed: BTreeSet<(SystemTime, OperationId)>,
    tenants: HashMap<Tenant, u64>,
    /// How many of each kind are queued (ready or delayed).
    per_kind: HashMap<Arc<str>, u64>,
    /// Each kind's limits, as stored.
    limits: HashMap<String, KindLimits>,
    /// What runs and what the buckets hold, by kind.
    usage: HashMap<String, Usage>,
    /// The running operations that hold slots, and what they hold.
    holding: HashMap<OperationId, Held>,
    /// Queued operations that expire unless started, by expire time.
    expiring: BTreeSet<(SystemTime, OperationId)>,
}

impl Ready {
    /// Brings the index in step with an operation's state: a queued one
    /// is added (or moved), anything else is taken out, and the slots it
    /// holds are counted while it runs.
    pub fn track(&mut self, op: &Operation) {
        if op.state == State::Queued {
            self.queue(QueuedOp::of(op));
        } else {
            self.left(op.id, Held::of(op));
        }
    }

    /// An operation is no longer queued: it runs holding `held`, or it is
    /// done or gone. Returns whether it gave slots back.
    pub fn left(&mut self, id: OperationId, held: Option<Held>) -> bool {
        self.remove(id);
        match held {
            Some(held) => {
                if !self.holding.contains_key(&id) {
                    let usage = self.usage.entry(held.kind.to_string()).or_default();
                    for scope in held.holds.scopes() {
                        if let Some(slot) =
                            flow::slot_key(scope, held.tenant.as_str(), held.key.as_deref())
                        {
                            usage.add_running(scope, slot, 1);
                        }
                    }
                    self.holding.insert(id, held);
                }
                false
            }
            None => match self.holding.remove(&id) {
                Some(held) => {
                    if let Some(usage) = self.usage.get_mut(&*held.kind) {
                        flow::release(usage, held.holds, held.tenant.as_str(), held.key.as_deref());
                    }
                    true
                }
                None => false,
            },
        }
    }

    /// Sets a kind's limits (none when `limits` is empty).
    pub fn set_limits(&mut self, kind: &str, limits: KindLimits) {
        if limits.is_empty() {
            self.limits.remove(kind);
        } else {
            self.limits.insert(kind.to_owned(), limits);
        }
    }

    /// Every kind's limits.
    pub fn limits(&self) -> impl Iterator<Item = &KindLimits> {
        self.limits.values()
    }

    /// A kind's limits and what runs against them.
    pub fn flow(&self, kind: &str) -> (KindLimits, Usage) {
        (
            self.limits.get(kind).cloned().unwrap_or_default(),
            self.usage.get(kind).cloned().unwrap_or_default(),
        )
    }

    /// Takes an operation out of the queue, whatever its state (deleted,
    /// say).
    pub fn remove(&mut self, id: OperationId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        if let Some(at) = entry.expire {
            self.expiring.remove(&(at, id));
        }
        match entry.due {
            Some(due) => {
                self.delayed.remove(&(due, id));
            }
            None => {
                if let Some(queue) = self.kinds.get_mut(&entry.kind) {
                    queue.remove(&entry, id);
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

    /// Puts a queued operation in line at its priority: at once, or when
    /// it comes due.
    pub fn queue(&mut self, op: QueuedOp<'_>) {
        self.left(op.id, None);
        let kind = match self.kinds.get_key_value(op.kind) {
            Some((kind, _)) => Arc::clone(kind),
            None => Arc::from(op.kind),
        };
        let entry = Entry {
            kind: Arc::clone(&kind),
            tenant: op.tenant.clone(),
            key: op.key.map(Arc::from),
            due: op.due,
            priority: op.priority,
            expire: op.expire,
        };
        if let Some(at) = op.expire {
            self.expiring.insert((at, op.id));
        }
        match op.due {
            Some(due) => {
                self.delayed.insert((due, op.id));
            }
            None => self.kinds.entry(kind).or_default().push(&entry, op.id),
        }
        *self.tenants.entry(op.tenant.clone()).or_insert(0) += 1;
        *self.per_kind.entry(Arc::clone(&entry.kind)).or_insert(0) += 1;
        self.entries.insert(op.id, entry);
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
                let entry = entry.clone();
                self.kinds
                    .entry(Arc::clone(&entry.kind))
                    .or_default()
                    .push(&entry, id);
            }
        }
    }

    /// Takes up to the wanted number of due operations of each kind that
    /// its limits admit, counts the slots and tokens they take, and forgets
    /// them: the caller claims them next. Within a kind, the higher
    /// priorities go first, and within one, tenants take turns, each as
    /// many per turn as its weight. Also says when a spent rate fills
    /// again.
    pub fn take(
        &mut self,
        wants: &[(String, usize)],
        tenant: Option<&Tenant>,
        weights: &HashMap<Tenant, u32>,
        now: SystemTime,
    ) -> (Vec<(OperationId, Holds)>, Option<SystemTime>) {
        self.promote(now);
        let mut out = Vec::new();
        let mut wake: Option<SystemTime> = None;
        for (kind, n) in wants {
            let Some(queue) = self.kinds.get_mut(kind.as_str()) else {
                continue;
            };
            let gate = match self.limits.get(kind.as_str()) {
                Some(limits) => Some(Gate {
                    limits,
                    usage: self.usage.entry(kind.clone()).or_default(),
                }),
                None => None,
            };
            let mut ask = Take {
                tenant,
                weights,
                admission: Admission {
                    gate,
                    now,
                    wake: None,
                },
                out: std::mem::take(&mut out),
                stopped: false,
            };
            let from = ask.out.len();
            queue.take(&mut ask, *n);
            if let Some(w) = ask.admission.wake {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
            out = ask.out;
            for (id, holds) in &out[from..] {
                if let Some(entry) = self.entries.remove(id) {
                    self.uncount(&entry);
                    if let Some(at) = entry.expire {
                        self.expiring.remove(&(at, *id));
                    }
                    // The gate counted its slots: note them, so that the
                    // claim's record (or its failure) finds them.
                    if !holds.is_empty() {
                        let held = Held {
                            kind: entry.kind,
                            tenant: entry.tenant,
                            key: entry.key,
                            holds: *holds,
                        };
                        self.holding.insert(*id, held);
                    }
                }
            }
        }
        (out, wake)
    }

    /// How many operations of `kind` are ready or waiting out a backoff.
    pub fn depth_of_kind(&self, kind: &str) -> u64 {
        self.per_kind.get(kind).copied().unwrap_or(0)
    }

    /// Up to `limit` queued operations expired by `now`, and when the next
    /// one expires.
    pub fn expiring(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> (Vec<OperationId>, Option<SystemTime>) {
        let expired = self
            .expiring
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        let next = self
            .expiring
            .iter()
            .find(|(at, _)| *at > now)
            .map(|(at, _)| *at);
        (expired, next)
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

#[cfg(test)]
mod tests;
