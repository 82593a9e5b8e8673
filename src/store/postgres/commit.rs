//! A batch of writes as one transaction.
//!
//! The rows the batch touches are locked and read first (`FOR UPDATE`),
//! so no other node changes them meanwhile: they are the rulebook's
//! [`View`]. Its plan goes back with one multi-row statement per kind of
//! change: inserts, updates, deletes, deliveries, and the notification the
//! other nodes follow. An update names the attempt and version it read, so
//! the database itself refuses a write under a superseded attempt.

use std::collections::HashMap;

use sqlx::{Connection, Postgres, Transaction};

use super::feed::Note;
use super::{OP_COLUMNS, db, micros, operation};
use crate::model::{Delivery, DeliveryState, Operation, OperationId, RequestId, State, Tenant};
use crate::store::codec::{Inline, encode, encode_delivery};
use crate::store::rules::{Plan, Step, View};
use crate::store::{Change, StoreError, StoreResult, Write};

/// The rows a batch locked and read: what the rulebook decides against.
#[derive(Default)]
pub(super) struct Locked {
    rows: HashMap<OperationId, Operation>,
    by_request: HashMap<(Tenant, RequestId), OperationId>,
}

impl Locked {
    /// Locks and reads the rows `writes` touch (and those holding the
    /// request_ids its creates name).
    pub(super) async fn load(
        tx: &mut Transaction<'_, Postgres>,
        writes: &[Write],
    ) -> StoreResult<Self> {
        let mut ids = Vec::new();
        let (mut tenants, mut request_ids) = (Vec::new(), Vec::new());
        for write in writes {
            match write {
                Write::Update { id, .. } | Write::Delete(id) | Write::Purge(id) => {
                    ids.push(uuid_of(id))
                }
                Write::SaveDelivery(delivery) => ids.push(uuid_of(&delivery.operation)),
                Write::Bulk(page) => {
                    ids.push(uuid_of(&page.claim.id));
                    ids.extend(page.items.iter().map(uuid_of));
                }
                Write::Create(op) => {
                    if let Some(parent) = op.parent {
                        ids.push(uuid_of(&parent));
                    }
                    if let Some(request_id) = op.request_id {
                        tenants.push(op.tenant.as_str().to_owned());
                        request_ids.push(uuid::Uuid::from_bytes(*request_id.as_bytes()));
                    }
                }
            }
        }
        let mut locked = Self::default();
        if ids.is_empty() && request_ids.is_empty() {
            return Ok(locked);
        }
        // With the batches they belong to, all the way up: a child's change
        // is rolled up into them in the same transaction. One statement
        // locks every row in id order, so batches never deadlock. Every
        // row is found by an index lookup of its own (a scalar subquery per
        // id or request, then `= ANY` of the ids): written as a join or an
        // `IN ... OR IN ...`, the planner scanned the whole table on every
        // commit.
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE wanted(id) AS (
                 SELECT unnest($1::uuid[])
               UNION
                 SELECT (SELECT o.parent FROM longrun_operations o WHERE o.id = w.id)
                   FROM wanted w WHERE w.id IS NOT NULL
             ), ids(id) AS (
                 SELECT id FROM wanted
               UNION
                 SELECT (SELECT o.id FROM longrun_operations o
                          WHERE o.tenant = u.t AND o.request_id = u.r
                            AND o.request_id IS NOT NULL)
                   FROM unnest($2::text[], $3::uuid[]) AS u(t, r)
             )
             SELECT {OP_COLUMNS} FROM longrun_operations
              WHERE id = ANY (ARRAY(SELECT id FROM ids WHERE id IS NOT NULL))
              ORDER BY id FOR UPDATE"
        ))
        .bind(&ids)
        .bind(&tenants)
        .bind(&request_ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
        for row in &rows {
            locked.take_in(operation(row)?);
        }
        Ok(locked)
    }

    /// Adds a locked row, as stored.
    pub(super) fn take_in(&mut self, op: Operation) {
        if let Some(request_id) = op.request_id {
            self.by_request
                .insert((op.tenant.clone(), request_id), op.id);
        }
        self.rows.insert(op.id, op);
    }
}

impl View for Locked {
    // The rulebook reads each operation once, so the row can be handed
    // over rather than copied.
    fn operation(&mut self, id: OperationId) -> StoreResult<Option<Operation>> {
        Ok(self.rows.remove(&id))
    }

    fn request_holder(
        &mut self,
        tenant: &Tenant,
        request_id: RequestId,
    ) -> StoreResult<Option<OperationId>> {
        Ok(self.by_request.get(&(tenant.clone(), request_id)).copied())
    }
}

impl Locked {
    /// Locks the batches the claimed `candidates` belong to, all the way
    /// up: the candidates that are left, their batch being busy, are not
    /// claimed this time (the count returned).
    ///
    /// A busy batch is waited for, in its row's queue of waiters, so that
    /// every node gets its turn on a batch two others keep busy with
    /// their claims and ends (skipping it instead left a third node out
    /// every time). The wait is bounded by [`PARENT_WAIT`], in a savepoint:
    /// the claim already holds its candidates, and a commit locks a batch
    /// before its children, so the two can wait for each other; the claim
    /// is the one that gives up, keeping the rest of its work.
    pub(super) async fn lock_parents(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
        candidates: &mut Vec<Operation>,
    ) -> StoreResult<usize> {
        let parents: Vec<uuid::Uuid> = candidates
            .iter()
            .filter_map(|op| op.parent.as_ref().map(uuid_of))
            .collect();
        if parents.is_empty() {
            return Ok(0);
        }
        let mut waiting = Connection::begin(&mut **tx).await.map_err(db)?;
        let before: String = sqlx::query_scalar(
            "SELECT before FROM
               (SELECT current_setting('lock_timeout') AS before OFFSET 0) b,
               LATERAL (SELECT set_config('lock_timeout', $1, true) WHERE b.before IS NOT NULL) s",
        )
        .bind(PARENT_WAIT)
        .fetch_one(&mut *waiting)
        .await
        .map_err(db)?;
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE up(id) AS (
                 SELECT unnest($1::uuid[])
               UNION
                 SELECT (SELECT o.parent FROM longrun_operations o WHERE o.id = up.id)
                   FROM up WHERE up.id IS NOT NULL
             )
             SELECT {OP_COLUMNS} FROM longrun_operations
              WHERE id = ANY (ARRAY(SELECT id FROM up WHERE id IS NOT NULL))
              ORDER BY id FOR UPDATE"
        ))
        .bind(&parents)
        .fetch_all(&mut *waiting)
        .await;
        let rows = match rows {
            Ok(rows) => {
                sqlx::query("SELECT set_config('lock_timeout', $1, true)")
                    .bind(&before)
                    .execute(&mut *waiting)
                    .await
                    .map_err(db)?;
                waiting.commit().await.map_err(db)?;
                rows
            }
            // Gave up waiting (lock_not_available), or caught in a cycle
            // (deadlock_detected): the savepoint's rollback lets go of what
            // it locked and of its lock_timeout.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("55P03" | "40P01")) =>
            {
                waiting.rollback().await.map_err(db)?;
                Vec::new()
            }
            Err(e) => return Err(db(e)),
        };
        for row in &rows {
            self.take_in(operation(row)?);
        }
        let before = candidates.len();
        let rows = &self.rows;
        candidates.retain(|op| {
            let mut parent = op.parent;
            while let Some(id) = parent {
                match rows.get(&id) {
                    Some(p) => parent = p.parent,
                    None => return false,
                }
            }
            true
        });
        Ok(before - candidates.len())
    }
}

/// How long a claim waits for a batch another transaction holds: longer
/// than a commit holds one, and shorter than PostgreSQL's deadlock check
/// (a second by default), so that a claim in a cycle with a commit gives up
/// before the commit is made to.
const PARENT_WAIT: &str = "100ms";

/// What a committed batch did to the queue of claimable work.
#[derive(Default)]
pub(super) struct QueueMoves {
    pub(super) added: Vec<Tenant>,
    pub(super) taken: Vec<Tenant>,
    /// Limit slots were given back: held-back work may start.
    pub(super) released: bool,
}

/// The notification of a plan's changes, for the other nodes; `freed`
/// are the operations that gave limit slots back.
fn notes(plan: &Plan, freed: &[OperationId]) -> Vec<Note> {
    plan.changes
        .iter()
        .filter_map(|announce| match &announce.change {
            Change::Updated(op) => Some(Note::of(op, announce.delivery, freed.contains(&op.id))),
            Change::Deleted(id) => Some(Note::deleted(*id)),
            _ => None,
        })
        .collect()
}

/// Writes `plan` in `tx`, and says what it did to the queue. Fails (so
/// that the caller rolls back) when a row changed under the batch, or when
/// a create lost its request_id to a create committed meanwhile by another
/// node: a retry of the whole batch then sees that operation.
pub(super) async fn save(
    tx: &mut Transaction<'_, Postgres>,
    plan: &Plan,
    tag: &str,
) -> Result<QueueMoves, SaveError> {
    let mut moves = QueueMoves::default();
    let (mut created, mut updated, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for step in &plan.steps {
        match step {
            Step::Insert(op) => created.push(op),
            Step::Update { was, op } => updated.push((was, op)),
            Step::Remove(op) => deleted.push(uuid_of(&op.id)),
        }
    }
    if !created.is_empty() {
        let columns = Columns::of(&created);
        let query = sqlx::query(concat!(insert_operations!(), " ON CONFLICT DO NOTHING"));
        let inserted = columns
            .bind_all(query)
            .execute(&mut **tx)
            .await
            .map_err(|e| SaveError::Store(db(e)))?;
        if inserted.rows_affected() != created.len() as u64 {
            return Err(SaveError::RequestIdRace);
        }
        moves.added = queued_tenants(&created);
    }
    if !updated.is_empty() {
        let ops: Vec<&Operation> = updated.iter().map(|(_, op)| *op).collect();
        let columns = Columns::of(&ops);
        let (was_attempt, was_version): (Vec<i32>, Vec<i64>) = updated
            .iter()
            .map(|(was, _)| (was.attempt.get() as i32, was.version as i64))
            .unzip();
        // `o.id = ANY` lets the planner look each row up by its key; joined
        // with a large array alone, it scanned the table instead. Within
        // one attempt a lease's expiry only grows (renewals write it
        // alone), so a change decided against an older copy of the row
        // (see `held`) keeps the later one.
        let query = sqlx::query(
            "UPDATE longrun_operations o SET
                state = u.state, due_us = u.due_us, ended_us = u.ended_us,
                lease_holder = u.lease_holder,
                lease_expires_us = CASE WHEN u.attempt = o.attempt
                    AND u.lease_expires_us IS NOT NULL
                    THEN greatest(o.lease_expires_us, u.lease_expires_us)
                    ELSE u.lease_expires_us END,
                attempt = u.attempt, version = u.version, record = u.record
             FROM unnest($1::uuid[], $2::int4[], $3::int8[], $4::int2[], $5::int8[],
                $6::int8[], $7::text[], $8::int8[], $9::int4[], $10::int8[], $11::bytea[])
                AS u(id, was_attempt, was_version, state, due_us, ended_us,
                     lease_holder, lease_expires_us, attempt, version, record)
             WHERE o.id = u.id AND o.attempt = u.was_attempt AND o.version = u.was_version
               AND o.id = ANY ($1::uuid[])",
        );
        let query = columns.bind_changing(
            query
                .bind(&columns.id)
                .bind(&was_attempt)
                .bind(&was_version),
        );
        let done = query
            .execute(&mut **tx)
            .await
            .map_err(|e| SaveError::Store(db(e)))?;
        if done.rows_affected() != updated.len() as u64 {
            return Err(SaveError::Moved);
        }
        for (was, op) in &updated {
            match (was.state == State::Queued, op.state == State::Queued) {
                (false, true) => moves.added.push(op.tenant.clone()),
                (true, false) => moves.taken.push(op.tenant.clone()),
                _ => {}
            }
        }
    }
    if !deleted.is_empty() {
        sqlx::query("DELETE FROM longrun_deliveries WHERE operation = ANY($1)")
            .bind(&deleted)
            .execute(&mut **tx)
            .await
            .map_err(|e| SaveError::Store(db(e)))?;
        sqlx::query("DELETE FROM longrun_operations WHERE id = ANY($1)")
            .bind(&deleted)
            .execute(&mut **tx)
            .await
            .map_err(|e| SaveError::Store(db(e)))?;
    }
    if !plan.deliveries.is_empty() {
        let d = DeliveryColumns::of(&plan.deliveries);
        sqlx::query(
            "INSERT INTO longrun_deliveries (id, operation, due_us, record, tenant)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::bytea[], $5::text[])
             ON CONFLICT (id) DO UPDATE SET due_us = EXCLUDED.due_us, record = EXCLUDED.record",
        )
        .bind(&d.id)
        .bind(&d.operation)
        .bind(&d.due_us)
        .bind(&d.record)
        .bind(&d.tenant)
        .execute(&mut **tx)
        .await
        .map_err(|e| SaveError::Store(db(e)))?;
    }
    let freed = super::flow::release(tx, plan)
        .await
        .map_err(SaveError::Store)?;
    moves.released = !freed.is_empty();
    super::feed::notify(tx, tag, &notes(plan, &freed))
        .await
        .map_err(SaveError::Store)?;
    Ok(moves)
}

/// Whether a batch only creates, none of them a batch's child (whose
/// parent it changes), so that [`save_new`] can write it in one
/// statement.
pub(super) fn only_creates(writes: &[Write]) -> bool {
    writes
        .iter()
        .all(|w| matches!(w, Write::Create(op) if op.parent.is_none()))
}

/// Writes the plan of a batch of creates decided over nothing read (see
/// [`only_creates`]) as one statement, which is its own transaction: the
/// operations, their deliveries and the notification, in one round trip.
/// A request_id already stored fails the whole statement
/// ([`SaveError::RequestIdRace`]), and the caller goes the long way, which
/// reads it.
pub(super) async fn save_new(
    pool: &sqlx::PgPool,
    plan: &Plan,
    tag: &str,
) -> Result<QueueMoves, SaveError> {
    let created: Vec<&Operation> = plan.steps.iter().map(Step::operation).collect();
    let columns = Columns::of(&created);
    let d = DeliveryColumns::of(&plan.deliveries);
    let payloads = super::feed::payloads(tag, &notes(plan, &[]));
    let query = sqlx::query(concat!(
        "WITH new_operations AS (",
        insert_operations!(),
        " RETURNING 1
         ), new_deliveries AS (
            INSERT INTO longrun_deliveries (id, operation, due_us, record, tenant)
             SELECT * FROM unnest($17::uuid[], $18::uuid[], $19::int8[], $20::bytea[], $23::text[])
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM new_operations) AS operations,
                (SELECT count(*) FROM new_deliveries) AS deliveries,
                (SELECT count(pg_notify($21, p)) FROM unnest($22::text[]) AS p) AS notes",
    ));
    let query = columns
        .bind_all(query)
        .bind(&d.id)
        .bind(&d.operation)
        .bind(&d.due_us)
        .bind(&d.record)
        .bind(super::feed::CHANNEL)
        .bind(&payloads)
        .bind(&d.tenant);
    match query.fetch_one(pool).await {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(SaveError::RequestIdRace);
        }
        Err(e) => return Err(SaveError::Store(db(e))),
    }
    Ok(QueueMoves {
        added: queued_tenants(&created),
        taken: Vec::new(),
        released: false,
    })
}

/// Why saving a batch failed.
pub(super) enum SaveError {
    /// A concurrent create took a request_id first: retry the batch.
    RequestIdRace,
    /// A row was not at the attempt and version the plan was decided
    /// against: it moved after it was read.
    Moved,
    Store(StoreError),
}

impl SaveError {
    /// The failure of a batch that read its rows under lock, where
    /// neither race can happen.
    pub(super) fn locked(self) -> StoreError {
        match self {
            SaveError::Store(e) => e,
            SaveError::RequestIdRace => {
                StoreError::Backend("a create lost its request_id under lock".into())
            }
            SaveError::Moved => {
                StoreError::Backend("an operation changed under a batch that held its lock".into())
            }
        }
    }
}

fn uuid_of(id: &OperationId) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*id.as_bytes())
}

/// When a delivery is due, while it is pending.
pub(super) fn due_of(d: &Delivery) -> Option<i64> {
    (d.state == DeliveryState::Pending).then(|| micros(d.next_attempt.unwrap_or(d.create_time)))
}

/// Deliveries as columns, for `unnest`.
struct DeliveryColumns {
    id: Vec<uuid::Uuid>,
    operation: Vec<uuid::Uuid>,
    due_us: Vec<Option<i64>>,
    record: Vec<Vec<u8>>,
    tenant: Vec<String>,
}

impl DeliveryColumns {
    /// The plan's deliveries (one version of each) as columns.
    fn of(deliveries: &[Delivery]) -> Self {
        Self {
            id: deliveries.iter().map(|d| d.id).collect(),
            operation: deliveries.iter().map(|d| uuid_of(&d.operation)).collect(),
            due_us: deliveries.iter().map(due_of).collect(),
            record: deliveries
                .iter()
                .map(|d| encode_delivery(d, &mut Inline))
                .collect(),
            tenant: deliveries
                .iter()
                .map(|d| d.snapshot.tenant.as_str().to_owned())
                .collect(),
        }
    }
}

/// The tenants of the operations among `created` that wait in the queue.
fn queued_tenants(created: &[&Operation]) -> Vec<Tenant> {
    created
        .iter()
        .filter(|op| op.state == State::Queued)
        .map(|op| op.tenant.clone())
        .collect()
}

/// Inserts operations from the sixteen column arrays [`Columns::bind_all`]
/// binds as $1..$16 (a macro, so that statements can `concat!` it).
macro_rules! insert_operations {
    () => {
        "INSERT INTO longrun_operations
           (id, tenant, kind, request_id, state, due_us, ended_us,
            lease_holder, lease_expires_us, attempt, version, record, priority,
            concurrency_key, expire_us, parent)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[],
            $5::int2[], $6::int8[], $7::int8[], $8::text[], $9::int8[],
            $10::int4[], $11::int8[], $12::bytea[], $13::int4[], $14::text[], $15::int8[],
            $16::uuid[])"
    };
}
use insert_operations;

/// Operations as columns, for `unnest`.
struct Columns {
    id: Vec<uuid::Uuid>,
    tenant: Vec<String>,
    kind: Vec<String>,
    state: Vec<i16>,
    request_id: Vec<Option<uuid::Uuid>>,
    due_us: Vec<i64>,
    ended_us: Vec<Option<i64>>,
    lease_holder: Vec<Option<String>>,
    lease_expires_us: Vec<Option<i64>>,
    attempt: Vec<i32>,
    version: Vec<i64>,
    record: Vec<Vec<u8>>,
    /// Fixed at the insert, as are the key and expiry: no update moves
    /// them.
    priority: Vec<i32>,
    concurrency_key: Vec<Option<String>>,
    expire_us: Vec<Option<i64>>,
    parent: Vec<Option<uuid::Uuid>>,
}

type Query<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl Columns {
    /// Binds every column, as [`insert_operations`] reads them.
    fn bind_all<'q>(&'q self, query: Query<'q>) -> Query<'q> {
        self.bind_changing(
            query
                .bind(&self.id)
                .bind(&self.tenant)
                .bind(&self.kind)
                .bind(&self.request_id),
        )
        .bind(&self.priority)
        .bind(&self.concurrency_key)
        .bind(&self.expire_us)
        .bind(&self.parent)
    }

    /// Binds the columns a change may move, state to record, in that order.
    fn bind_changing<'q>(&'q self, query: Query<'q>) -> Query<'q> {
        query
            .bind(&self.state)
            .bind(&self.due_us)
            .bind(&self.ended_us)
            .bind(&self.lease_holder)
            .bind(&self.lease_expires_us)
            .bind(&self.attempt)
            .bind(&self.version)
            .bind(&self.record)
    }

    fn of(ops: &[&Operation]) -> Self {
        let n = ops.len();
        let mut c = Columns {
            id: Vec::with_capacity(n),
            tenant: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            request_id: Vec::with_capacity(n),
            due_us: Vec::with_capacity(n),
            ended_us: Vec::with_capacity(n),
            lease_holder: Vec::with_capacity(n),
            lease_expires_us: Vec::with_capacity(n),
            attempt: Vec::with_capacity(n),
            version: Vec::with_capacity(n),
            record: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
            concurrency_key: Vec::with_capacity(n),
            expire_us: Vec::with_capacity(n),
            parent: Vec::with_capacity(n),
        };
        for op in ops {
            c.id.push(uuid_of(&op.id));
            c.tenant.push(op.tenant.as_str().to_owned());
            c.kind.push(op.kind.clone());
            c.state.push(i16::from(op.state.as_u8()));
            c.request_id
                .push(op.request_id.map(|r| uuid::Uuid::from_bytes(*r.as_bytes())));
            c.due_us.push(op.not_before.map_or(0, micros));
            c.ended_us.push(op.end_time.map(micros));
            c.lease_holder
                .push(op.lease.as_ref().map(|l| l.holder.clone()));
            c.lease_expires_us
                .push(op.lease.as_ref().map(|l| micros(l.expires)));
            c.attempt.push(op.attempt.get() as i32);
            c.version.push(op.version as i64);
            c.record.push(encode(op, &mut Inline));
            c.priority.push(op.priority);
            c.concurrency_key.push(op.concurrency_key.clone());
            c.expire_us.push(op.expire_time.map(micros));
            c.parent.push(op.parent.as_ref().map(uuid_of));
        }
        c
    }
}
