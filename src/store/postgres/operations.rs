//! [`OperationStore`] on PostgreSQL: commits through `commit`, claims
//! kind by kind through `claim`, and reads.

use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::Row;
use tokio::sync::{broadcast, watch};

use super::commit::{Locked, QueueMoves, SaveError, only_creates, save, save_new};
use super::held::HeldView;
use super::{OP_COLUMNS, PgStore, db, micros, operation};
use crate::model::flow::{SlotId, Usage};
use crate::model::{Attempt, Backlog, KindLimits, Limit, Operation, OperationId, State};
use crate::store::codec::from_micros;
use crate::store::rules::{Plan, Rulebook};
use crate::store::{
    Applied, Change, ClaimRequest, Claimed, Health, ListPage, ListQuery, OperationStore,
    QueueDepth, StoreError, StoreResult, Write,
};

/// How many times a batch is tried again after losing a request_id race.
const RACE_RETRIES: usize = 3;

impl PgStore {
    /// One try at a batch: its own transaction, committed or rolled back.
    /// The rows `writes` touch are locked and read, the rulebook decides,
    /// and its plan is written back.
    async fn try_commit(
        &self,
        writes: &[Write],
        now: SystemTime,
    ) -> Result<(Vec<StoreResult<Applied>>, Plan), SaveError> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(|e| SaveError::Store(db(e)))?;
        let mut locked = Locked::load(&mut tx, writes)
            .await
            .map_err(SaveError::Store)?;
        let mut book = Rulebook::new(&mut locked, now);
        let results: Vec<_> = writes.iter().map(|w| book.write(w)).collect();
        let plan = book.plan();
        if !plan.durable {
            // Claims and progress only: they need not wait for the WAL.
            lazy(&mut tx).await.map_err(SaveError::Store)?;
        }
        let moves = save(&mut tx, &plan, &self.inner.tag).await?;
        tx.commit().await.map_err(|e| SaveError::Store(db(e)))?;
        self.committed(&moves);
        Ok((results, plan))
    }

    /// One try at a batch of progress reports and finishes of rows this
    /// node holds (and creates that read nothing), decided against its
    /// copies (see `held`): no locking read. None, with nothing written,
    /// when a row moved since it was kept or the rulebook wanted more than
    /// the copies: the batch then goes the long way.
    async fn try_held(
        &self,
        writes: &[Write],
        mut view: HeldView,
        now: SystemTime,
    ) -> StoreResult<Option<(Vec<StoreResult<Applied>>, Plan)>> {
        let mut book = Rulebook::new(&mut view, now);
        let results: Vec<_> = writes.iter().map(|w| book.write(w)).collect();
        let plan = book.plan();
        if results.iter().any(Result::is_err) || !view.fenced(&plan) {
            return Ok(None);
        }
        let mut tx = if plan.durable {
            self.pool().begin().await
        } else {
            self.pool().begin_with(BEGIN_LAZY).await
        }
        .map_err(db)?;
        match save(&mut tx, &plan, &self.inner.tag).await {
            Ok(moves) => {
                tx.commit().await.map_err(db)?;
                self.committed(&moves);
                Ok(Some((results, plan)))
            }
            // Rolled back as `tx` drops. (Its creates name no request_id,
            // so a race for one cannot happen; were it to, the long way
            // would settle it.)
            Err(SaveError::Moved | SaveError::RequestIdRace) => Ok(None),
            Err(e) => Err(e.locked()),
        }
    }

    /// Commits a batch of creates alone in one statement, with nothing to
    /// read first (see [`save_new`]).
    async fn try_creates(
        &self,
        writes: &[Write],
        now: SystemTime,
    ) -> Result<(Vec<StoreResult<Applied>>, Plan), SaveError> {
        let mut nothing = Locked::default();
        let mut book = Rulebook::new(&mut nothing, now);
        let results: Vec<_> = writes.iter().map(|w| book.write(w)).collect();
        let plan = book.plan();
        let moves = save_new(self.pool(), &plan, &self.inner.tag).await?;
        self.committed(&moves);
        Ok((results, plan))
    }

    /// Takes in what a committed batch did to the queue.
    fn committed(&self, moves: &QueueMoves) {
        self.queue_moved(&moves.added, &moves.taken);
        if !moves.added.is_empty() || moves.released {
            self.bump_work();
        }
    }

    /// Announces a committed batch's changes on the local feed, and keeps
    /// the rows it leaves running (see `held`).
    pub(super) fn announce(&self, plan: Plan) {
        self.inner.held.keep(&plan);
        for announce in plan.changes {
            let _ = self.inner.feed.send(announce.change);
        }
    }

    async fn select(
        &self,
        sql: &str,
        bind: impl FnOnce(SqlQuery<'_>) -> SqlQuery<'_>,
    ) -> StoreResult<Vec<Operation>> {
        self.call(async {
            let rows = bind(sqlx::query(sql))
                .fetch_all(self.pool())
                .await
                .map_err(db)?;
            rows.iter().map(operation).collect()
        })
        .await
    }
}

type SqlQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Begins a transaction that commits without waiting for its WAL to reach
/// the disk (for claims and progress, which a crash may lose), in the
/// same round trip as its BEGIN.
pub(super) const BEGIN_LAZY: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// Lets the transaction commit without waiting for its WAL to reach the
/// disk, once it turns out to hold only lazy writes.
pub(super) async fn lazy(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> StoreResult<()> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// Every write of a failed batch fails alike.
fn all_failed(n: usize, e: &StoreError) -> Vec<StoreResult<Applied>> {
    (0..n).map(|_| Err(e.again())).collect()
}

#[async_trait]
impl OperationStore for PgStore {
    async fn commit(&self, writes: Vec<Write>, now: SystemTime) -> Vec<StoreResult<Applied>> {
        let n = writes.len();
        let committed = self
            .call(async {
                let mut tries = 0;
                // Creates alone take one round trip; should one meet a
                // request_id already stored, the batch goes the long way,
                // which reads it. Progress and finishes of the rows this
                // node runs are decided against its own copies, and go the
                // long way should one have moved.
                let mut creates = only_creates(&writes);
                if !creates
                    && let Some(view) = self.inner.held.take(&writes)
                    && let Some(done) = self.try_held(&writes, view, now).await?
                {
                    return Ok(done);
                }
                loop {
                    let tried = if creates {
                        self.try_creates(&writes, now).await
                    } else {
                        self.try_commit(&writes, now).await
                    };
                    match tried {
                        Ok(done) => return Ok(done),
                        Err(SaveError::RequestIdRace) if creates => creates = false,
                        Err(SaveError::RequestIdRace) if tries < RACE_RETRIES => tries += 1,
                        Err(SaveError::RequestIdRace) => {
                            return Err(StoreError::Backend(
                                "creates kept racing for a request_id".into(),
                            ));
                        }
                        Err(e @ (SaveError::Store(_) | SaveError::Moved)) => {
                            return Err(e.locked());
                        }
                    }
                }
            })
            .await;
        match committed {
            Ok((results, plan)) => {
                self.announce(plan);
                results
            }
            Err(e) => all_failed(n, &e),
        }
    }

    async fn claim(&self, request: &ClaimRequest, now: SystemTime) -> StoreResult<Claimed> {
        self.call(async {
            let mut claimed = Claimed::default();
            let mut short = Vec::new();
            let mut wake_at = None;
            // Most claims of a busy node find nothing: each slot a quick
            // task frees wakes the dispatcher, whose last claim took every
            // queued row already. One look at the queue index (is anything
            // of the kind queued, due or not?) spares those the claim's
            // transaction and statement, whose planning alone costs more.
            let wanted: Vec<&str> = request
                .wants
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(kind, _)| kind.as_str())
                .collect();
            if wanted.is_empty() {
                return Ok(claimed);
            }
            let queued: Vec<String> = sqlx::query_scalar(
                "SELECT k FROM unnest($1::text[]) AS k
                  WHERE EXISTS (SELECT 1 FROM longrun_operations WHERE state = 1 AND kind = k)",
            )
            .bind(&wanted)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            // A paused kind is skipped by CLAIM itself: the statement reads
            // the pause as of its own start, so a claim that begins after a
            // pause is stored never takes the kind, on any node.
            for (kind, n) in &request.wants {
                if *n == 0 || !queued.contains(kind) {
                    continue;
                }
                let got = self.claim_kind(kind, *n, request, now).await?;
                if got.operations.len() < *n {
                    short.push(kind.clone());
                }
                claimed.more |= got.held_back && !got.operations.is_empty();
                if let Some(wake) = got.wake {
                    wake_at = Some(wake_at.map_or(wake, |w: SystemTime| w.min(wake)));
                }
                claimed.operations.extend(got.operations);
            }
            if !short.is_empty() {
                let row = sqlx::query(
                    "SELECT min(due_us) AS due FROM longrun_operations
                      WHERE state = 1 AND kind = ANY($1) AND due_us > $2",
                )
                .bind(&short)
                .bind(micros(now))
                .fetch_one(self.pool())
                .await
                .map_err(db)?;
                let due: Option<i64> = row.try_get("due").map_err(db)?;
                claimed.next_due = due.map(from_micros);
            }
            if let Some(wake) = wake_at {
                claimed.next_due = Some(claimed.next_due.map_or(wake, |d| d.min(wake)));
            }
            Ok(claimed)
        })
        .await
    }

    fn queued(&self, tenant: &crate::model::Tenant) -> QueueDepth {
        self.queue_depth(tenant)
    }

    fn work(&self) -> watch::Receiver<u64> {
        self.inner.work.subscribe()
    }

    async fn get(&self, id: OperationId) -> StoreResult<Option<Operation>> {
        self.call(async {
            let row = sqlx::query(&format!(
                "SELECT {OP_COLUMNS} FROM longrun_operations WHERE id = $1"
            ))
            .bind(uuid::Uuid::from_bytes(*id.as_bytes()))
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
            row.as_ref().map(operation).transpose()
        })
        .await
    }

    async fn get_many(&self, ids: &[OperationId]) -> StoreResult<Vec<Option<Operation>>> {
        let wanted: Vec<uuid::Uuid> = ids
            .iter()
            .map(|id| uuid::Uuid::from_bytes(*id.as_bytes()))
            .collect();
        self.call(async {
            let rows = sqlx::query(&format!(
                "SELECT {OP_COLUMNS} FROM longrun_operations WHERE id = ANY ($1)"
            ))
            .bind(&wanted)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let op = operation(row)?;
                found.insert(op.id, op);
            }
            Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
        })
        .await
    }

    async fn list(&self, query: ListQuery<'_>) -> StoreResult<ListPage> {
        let after = query.after.map(|id| uuid::Uuid::from_bytes(*id.as_bytes()));
        let tenant = query.tenant.map(|t| t.as_str().to_owned());
        let budget = i64::try_from(query.scan_budget.max(1)).unwrap_or(i64::MAX);
        let parent = query
            .parent
            .map(|id| uuid::Uuid::from_bytes(*id.as_bytes()));
        self.call(async {
            // One more than the budget, to know whether more follow. A
            // batch's children come through their index.
            let rows = sqlx::query(&format!(
                "SELECT {OP_COLUMNS} FROM longrun_operations
                  WHERE ($1::uuid IS NULL OR id < $1) AND ($2::text IS NULL OR tenant = $2)
                    AND ($4::uuid IS NULL OR parent = $4)
                  ORDER BY id DESC LIMIT $3"
            ))
            .bind(after)
            .bind(tenant)
            .bind(budget + 1)
            .bind(parent)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            let mut page = ListPage::default();
            let mut last = None;
            for (scanned, row) in rows.iter().enumerate() {
                if page.operations.len() >= query.limit || scanned >= query.scan_budget {
                    page.resume_after = last;
                    return Ok(page);
                }
                let op = operation(row)?;
                last = Some(op.id);
                if query.filter.matches(&op) {
                    page.operations.push(op);
                }
            }
            Ok(page)
        })
        .await
    }

    async fn unfinished(&self) -> StoreResult<Vec<Operation>> {
        self.select(
            &format!(
                "SELECT {OP_COLUMNS} FROM longrun_operations WHERE ended_us IS NULL ORDER BY id"
            ),
            |q| q,
        )
        .await
    }

    async fn open_batches(
        &self,
        after: Option<OperationId>,
        limit: usize,
    ) -> StoreResult<Vec<Operation>> {
        let after = after.map(|id| uuid::Uuid::from_bytes(*id.as_bytes()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.select(
            &format!(
                "SELECT {OP_COLUMNS} FROM longrun_operations
                  WHERE kind = 'longrun.v1.Batch' AND ended_us IS NULL
                    AND ($1::uuid IS NULL OR id > $1)
                  ORDER BY id LIMIT $2"
            ),
            |q| q.bind(after).bind(limit),
        )
        .await
    }

    async fn backlog(&self, tenant: Option<&crate::model::Tenant>) -> StoreResult<Vec<Backlog>> {
        // Counted in the database over the unfinished rows. The oldest is
        // the least id (a UUIDv7 carries its creation time, and its text
        // sorts as its bytes do); PostgreSQL has no min() of uuid.
        let tenant = tenant.map(|t| t.as_str().to_owned());
        self.call(async {
            let rows = sqlx::query(
                "SELECT kind, state, count(*) AS n, min(id::text) AS oldest
                   FROM longrun_operations
                  WHERE ended_us IS NULL AND ($1::text IS NULL OR tenant = $1)
                  GROUP BY kind, state ORDER BY kind, state",
            )
            .bind(tenant)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            rows.iter()
                .map(|row| {
                    let state: i16 = row.try_get("state").map_err(db)?;
                    let state = u8::try_from(state)
                        .ok()
                        .and_then(State::from_u8)
                        .ok_or_else(|| StoreError::Corrupt(format!("unknown state {state}")))?;
                    let count: i64 = row.try_get("n").map_err(db)?;
                    let oldest: Option<String> = row.try_get("oldest").map_err(db)?;
                    Ok(Backlog {
                        kind: row.try_get("kind").map_err(db)?,
                        state: state.as_str(),
                        count: u64::try_from(count).unwrap_or(0),
                        oldest: oldest
                            .and_then(|id| uuid::Uuid::parse_str(&id).ok())
                            .and_then(|id| id.get_timestamp())
                            .map(|t| {
                                let (seconds, nanos) = t.to_unix();
                                SystemTime::UNIX_EPOCH + std::time::Duration::new(seconds, nanos)
                            }),
                    })
                })
                .collect()
        })
        .await
    }

    async fn expired(&self, ended_before: SystemTime, limit: usize) -> StoreResult<Vec<Operation>> {
        // One node sweeps at a time: the sweep is held under a lease that
        // its holder renews each time it asks.
        let now = SystemTime::now();
        let held = self
            .call(async {
                sqlx::query(
                    "INSERT INTO longrun_sweeps (name, holder, until_us) VALUES ('retention', $1, $2)
                     ON CONFLICT (name) DO UPDATE SET holder = $1, until_us = $2
                       WHERE longrun_sweeps.holder = $1 OR longrun_sweeps.until_us < $3
                     RETURNING holder",
                )
                .bind(&self.inner.tag)
                .bind(micros(now + SWEEP_LEASE))
                .bind(micros(now))
                .fetch_optional(self.pool())
                .await
                .map_err(db)
            })
            .await?;
        if held.is_none() {
            return Ok(Vec::new());
        }
        self.select(
            &format!(
                "SELECT {OP_COLUMNS} FROM longrun_operations
                  WHERE ended_us IS NOT NULL AND ended_us < $1 LIMIT $2"
            ),
            |q| {
                q.bind(micros(ended_before))
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            },
        )
        .await
    }

    async fn flush(&self) -> StoreResult<()> {
        // Every durable commit waited for its WAL; the lazy ones (claims,
        // progress) are flushed by the next durable one.
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.feed.subscribe()
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    async fn probe(&self) {
        // The answer (or its absence) sets health.
        let _ = self
            .call(async {
                sqlx::query("SELECT 1")
                    .execute(self.pool())
                    .await
                    .map_err(db)
            })
            .await;
    }

    fn parallel_commits(&self) -> usize {
        PARALLEL_COMMITS
    }

    fn shared(&self) -> bool {
        true
    }

    async fn set_paused(&self, kind: &str, paused: bool) -> StoreResult<()> {
        self.call(async {
            if paused {
                sqlx::query(
                    "INSERT INTO longrun_paused_kinds (kind) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(kind)
                .execute(self.pool())
                .await
                .map_err(db)?;
                return Ok(());
            }
            // Resumed: every node's claimer wakes for the kind's queue.
            let payload = format!("{} {}", self.inner.tag, super::feed::RESUMED);
            sqlx::query(
                "WITH gone AS (DELETE FROM longrun_paused_kinds WHERE kind = $1)
                 SELECT pg_notify($2, $3)",
            )
            .bind(kind)
            .bind(super::feed::CHANNEL)
            .bind(payload)
            .execute(self.pool())
            .await
            .map_err(db)?;
            self.inner.work.send_modify(|n| *n = n.wrapping_add(1));
            Ok(())
        })
        .await
    }

    async fn expiring(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> StoreResult<(Vec<OperationId>, Option<SystemTime>)> {
        self.call(async {
            let expired: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM longrun_operations
                  WHERE state = 1 AND expire_us IS NOT NULL AND expire_us <= $1
                  ORDER BY expire_us LIMIT $2",
            )
            .bind(micros(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT min(expire_us) FROM longrun_operations
                  WHERE state = 1 AND expire_us IS NOT NULL AND expire_us > $1",
            )
            .bind(micros(now))
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
            Ok((
                expired
                    .into_iter()
                    .map(|id| OperationId::from_bytes(*id.as_bytes()))
                    .collect(),
                next.map(from_micros),
            ))
        })
        .await
    }

    async fn set_limit(&self, limit: &Limit) -> StoreResult<()> {
        self.call(self.save_limit(limit)).await
    }

    async fn limits(&self) -> StoreResult<Vec<Limit>> {
        self.call(self.all_limits()).await
    }

    async fn usage(
        &self,
        kind: &str,
        slots: Option<&[SlotId]>,
    ) -> StoreResult<(KindLimits, Usage)> {
        self.call(self.kind_usage(kind, slots)).await
    }

    async fn paused(&self) -> StoreResult<Vec<String>> {
        self.call(async {
            sqlx::query_scalar("SELECT kind FROM longrun_paused_kinds ORDER BY kind")
                .fetch_all(self.pool())
                .await
                .map_err(db)
        })
        .await
    }

    async fn renew(
        &self,
        holder: &str,
        held: &[(OperationId, Attempt)],
        until: SystemTime,
    ) -> StoreResult<Vec<OperationId>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = held
            .iter()
            .map(|(id, _)| uuid::Uuid::from_bytes(*id.as_bytes()))
            .collect();
        let attempts: Vec<i32> = held
            .iter()
            .map(|(_, a)| i32::try_from(a.get()).unwrap_or(i32::MAX))
            .collect();
        self.call(async {
            // Rows are locked in id order, as commits lock them, so that a
            // renewal and a commit never wait on each other in a cycle.
            let rows = sqlx::query(
                "UPDATE longrun_operations SET lease_expires_us = $2
                  WHERE id IN (SELECT o.id FROM longrun_operations o
                                JOIN unnest($3::uuid[], $4::int4[]) AS h(id, attempt)
                                  ON o.id = h.id AND o.attempt = h.attempt
                               WHERE o.lease_holder = $1 AND o.ended_us IS NULL
                               ORDER BY o.id FOR UPDATE)
                  RETURNING id",
            )
            .bind(holder)
            .bind(micros(until))
            .bind(&ids)
            .bind(&attempts)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            let renewed = rows
                .iter()
                .map(|row| {
                    let id: uuid::Uuid = row.try_get("id").map_err(db)?;
                    Ok(OperationId::from_bytes(*id.as_bytes()))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            self.inner
                .held
                .renewed(&renewed, from_micros(micros(until)));
            Ok(renewed)
        })
        .await
    }

    async fn lapsed(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Operation>> {
        self.select(
            &format!(
                "SELECT {OP_COLUMNS} FROM longrun_operations
                  WHERE lease_expires_us < $1 AND ended_us IS NULL ORDER BY lease_expires_us LIMIT $2"
            ),
            |q| {
                q.bind(micros(now))
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            },
        )
        .await
    }
}

/// Batches a node commits at once: their WAL flushes are shared.
const PARALLEL_COMMITS: usize = 4;

/// How long one node holds the retention sweep without asking again.
const SWEEP_LEASE: std::time::Duration = std::time::Duration::from_secs(60);
