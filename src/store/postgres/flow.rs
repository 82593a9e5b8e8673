//! Flow control on PostgreSQL: limits in `longrun_limits`, what runs per
//! slot in `longrun_slots`, token buckets in `longrun_buckets`.
//!
//! A claim of a limited kind locks the kind's own slot row first, so that
//! claims of one kind take turns across nodes; it reads the rows of the
//! slots its candidates would take, lets [`Gate`] decide, and adds what it
//! took, all in its own transaction. The write that ends an attempt gives
//! its slots back in its transaction. Slot rows are locked in key order
//! everywhere, so two writers never wait on each other in a cycle. No
//! claim counts operation rows.

use std::collections::BTreeMap;
use std::time::SystemTime;

use sqlx::{Postgres, Row, Transaction};

use super::{PgStore, db, micros};
use crate::model::flow::{self, Bucket, Gate, SlotId, Usage, Waiting};
use crate::model::{Holds, KindLimits, Limit, LimitScope, Operation, OperationId};
use crate::store::codec::from_micros;
use crate::store::rules::Plan;
use crate::store::{StoreError, StoreResult, USAGE_ROWS};

type Tx<'a> = Transaction<'a, Postgres>;

/// A kind's limits, as stored.
pub(super) async fn kind_limits(
    conn: &mut sqlx::PgConnection,
    kind: &str,
) -> StoreResult<KindLimits> {
    let rows = sqlx::query(
        "SELECT kind, scope, concurrency, rates FROM longrun_limits
          WHERE kind = $1 ORDER BY scope",
    )
    .bind(kind)
    .fetch_all(conn)
    .await
    .map_err(db)?;
    Ok(KindLimits {
        limits: rows.iter().map(limit_of).collect::<StoreResult<_>>()?,
    })
}

fn limit_of(row: &sqlx::postgres::PgRow) -> StoreResult<Limit> {
    let scope: i16 = row.try_get("scope").map_err(db)?;
    let concurrency: Option<i32> = row.try_get("concurrency").map_err(db)?;
    let rates: String = row.try_get("rates").map_err(db)?;
    Ok(Limit {
        kind: row.try_get("kind").map_err(db)?,
        scope: LimitScope::from_code(scope)
            .ok_or_else(|| StoreError::Corrupt(format!("a limit of scope {scope}")))?,
        concurrency: concurrency.map(|n| n.max(1) as u32),
        rates: flow::parse_rates(&rates).map_err(StoreError::Corrupt)?,
    })
}

/// Reads what runs and what the buckets hold for `slots` into `usage`.
async fn load(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    slots: &[SlotId],
    usage: &mut Usage,
) -> StoreResult<()> {
    load_running(conn, kind, slots, usage).await?;
    load_buckets(conn, kind, slots, usage).await
}

fn columns(slots: &[SlotId]) -> (Vec<i16>, Vec<&str>) {
    slots.iter().map(|(s, k)| (s.code(), k.as_str())).unzip()
}

/// Reads what runs for `slots` into `usage`.
async fn load_running(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    slots: &[SlotId],
    usage: &mut Usage,
) -> StoreResult<()> {
    let (scopes, keys) = columns(slots);
    let rows = sqlx::query(
        "SELECT scope, key, running FROM longrun_slots
          WHERE kind = $1 AND (scope, key) IN (SELECT * FROM unnest($2::int2[], $3::text[]))",
    )
    .bind(kind)
    .bind(&scopes)
    .bind(&keys)
    .fetch_all(conn)
    .await
    .map_err(db)?;
    for row in rows {
        let (scope, key) = slot_of(&row)?;
        let running: i32 = row.try_get("running").map_err(db)?;
        usage.set_running(scope, &key, running.max(0) as u32);
    }
    Ok(())
}

/// Reads the buckets of `slots` into `usage`.
async fn load_buckets(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    slots: &[SlotId],
    usage: &mut Usage,
) -> StoreResult<()> {
    let (scopes, keys) = columns(slots);
    let rows = sqlx::query(
        "SELECT scope, key, rate, tokens, at_us FROM longrun_buckets
          WHERE kind = $1 AND (scope, key) IN (SELECT * FROM unnest($2::int2[], $3::text[]))",
    )
    .bind(kind)
    .bind(&scopes)
    .bind(&keys)
    .fetch_all(conn)
    .await
    .map_err(db)?;
    for row in rows {
        let (scope, key) = slot_of(&row)?;
        let rate: i16 = row.try_get("rate").map_err(db)?;
        let bucket = Bucket {
            tokens: row.try_get("tokens").map_err(db)?,
            at: from_micros(row.try_get("at_us").map_err(db)?),
        };
        usage.set_bucket(scope, rate.max(0) as usize, &key, bucket);
    }
    Ok(())
}

fn slot_of(row: &sqlx::postgres::PgRow) -> StoreResult<SlotId> {
    let scope: i16 = row.try_get("scope").map_err(db)?;
    let scope = LimitScope::from_code(scope)
        .ok_or_else(|| StoreError::Corrupt(format!("a slot of scope {scope}")))?;
    Ok((scope, row.try_get("key").map_err(db)?))
}

/// Adds `delta` to the running count of each slot in one statement,
/// which locks the rows in key order (the order of `deltas`), as every
/// writer of slot rows does, so that no two wait on each other in a
/// cycle. A key or tenant left with nothing running loses its row: one is
/// made again when it next runs, so the rows are as many as run.
async fn add_running(
    tx: &mut Tx<'_>,
    deltas: &BTreeMap<(String, i16, String), i32>,
) -> StoreResult<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut kinds = Vec::with_capacity(deltas.len());
    let mut scopes = Vec::with_capacity(deltas.len());
    let mut keys = Vec::with_capacity(deltas.len());
    let mut ns = Vec::with_capacity(deltas.len());
    for ((kind, scope, key), n) in deltas {
        kinds.push(kind.as_str());
        scopes.push(*scope);
        keys.push(key.as_str());
        ns.push(*n);
    }
    let emptied: Vec<(String, i16, String)> = sqlx::query_as(
        "INSERT INTO longrun_slots AS t (kind, scope, key, running)
         SELECT k, s, key, n
           FROM unnest($1::text[], $2::int2[], $3::text[], $4::int4[]) WITH ORDINALITY
             AS u(k, s, key, n, i)
         ORDER BY i
         ON CONFLICT (kind, scope, key)
         DO UPDATE SET running = greatest(t.running + EXCLUDED.running, 0)
         RETURNING t.kind, t.scope, t.key, t.running",
    )
    .bind(&kinds)
    .bind(&scopes)
    .bind(&keys)
    .bind(&ns)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?
    .into_iter()
    .filter_map(|(kind, scope, key, running): (String, i16, String, i32)| {
        (running <= 0 && scope != LimitScope::Kind.code()).then_some((kind, scope, key))
    })
    .collect();
    if !emptied.is_empty() {
        let (kinds, rest): (Vec<String>, Vec<(i16, String)>) =
            emptied.into_iter().map(|(k, s, key)| (k, (s, key))).unzip();
        let (scopes, keys): (Vec<i16>, Vec<String>) = rest.into_iter().unzip();
        sqlx::query(
            "DELETE FROM longrun_slots t
              USING unnest($1::text[], $2::int2[], $3::text[]) AS u(k, s, key)
              WHERE t.kind = u.k AND t.scope = u.s AND t.key = u.key AND t.running <= 0",
        )
        .bind(&kinds)
        .bind(&scopes)
        .bind(&keys)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    Ok(())
}

/// Gives back the slots of every operation `plan` stops running, and
/// returns those operations: the plan's notification then tells every node
/// that held-back work may start.
pub(super) async fn release(tx: &mut Tx<'_>, plan: &Plan) -> StoreResult<Vec<OperationId>> {
    let mut deltas = BTreeMap::new();
    let mut freed = Vec::new();
    for step in &plan.steps {
        let held = step.released();
        if !held.is_empty() {
            count(&mut deltas, step.operation(), held, -1);
            freed.push(step.operation().id);
        }
    }
    add_running(tx, &deltas).await?;
    Ok(freed)
}

/// Adds `by` to each slot `holds` names for `op`.
fn count(deltas: &mut BTreeMap<(String, i16, String), i32>, op: &Operation, holds: Holds, by: i32) {
    for scope in holds.scopes() {
        if let Some(slot) = flow::slot_key(scope, op.tenant.as_str(), op.concurrency_key.as_deref())
        {
            *deltas
                .entry((op.kind.clone(), scope.code(), slot.to_owned()))
                .or_insert(0) += by;
        }
    }
}

/// One claim's view of a limited kind: its limits, and what runs and the
/// buckets hold for the slots its candidates touch.
pub(super) struct Claiming {
    pub(super) limits: KindLimits,
    usage: Usage,
    /// When a spent rate fills again, if one held work back.
    pub(super) wake: Option<SystemTime>,
    /// Candidates the limits held back.
    pub(super) held_back: usize,
}

impl Claiming {
    /// Starts a claim of `kind`: reads its limits and, when it has some,
    /// locks its own slot row (claims of the kind take turns across
    /// nodes) and reads the whole kind's use. None when the kind is not
    /// limited, and Err(wake) when its own limits start nothing now.
    pub(super) async fn begin(
        tx: &mut Tx<'_>,
        kind: &str,
        now: SystemTime,
    ) -> StoreResult<Option<Result<Self, Option<SystemTime>>>> {
        let limits = kind_limits(tx, kind).await?;
        if limits.is_empty() {
            return Ok(None);
        }
        // The kind's own row, made when missing, locked (claims of the kind
        // take turns on it, on every node) and read, in one statement.
        let running: i32 = sqlx::query_scalar(
            "INSERT INTO longrun_slots AS t (kind, scope, key, running) VALUES ($1, 0, '', 0)
             ON CONFLICT (kind, scope, key) DO UPDATE SET running = t.running
             RETURNING t.running",
        )
        .bind(kind)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
        let mut usage = Usage::default();
        usage.set_running(LimitScope::Kind, "", running.max(0) as u32);
        if limits.rated(LimitScope::Kind) {
            let whole = (LimitScope::Kind, String::new());
            load_buckets(tx, kind, std::slice::from_ref(&whole), &mut usage).await?;
        }
        let kind_only = KindLimits {
            limits: limits.of(LimitScope::Kind).into_iter().cloned().collect(),
        };
        let gate = Gate {
            limits: &kind_only,
            usage: &mut usage,
        };
        if let Err((_, waiting)) = gate.check("", None, now) {
            return Ok(Some(Err(waiting.until())));
        }
        Ok(Some(Ok(Self {
            limits,
            usage,
            wake: None,
            held_back: 0,
        })))
    }

    /// The values the claim statement binds to leave out keys and tenants
    /// whose limits start nothing now: the key and tenant concurrencies,
    /// and each scope's rates as tokens per microsecond and bursts.
    pub(super) fn filters(&self) -> Filters {
        let rates = |scope| {
            self.limits
                .of(scope)
                .map(|l| {
                    l.rates
                        .iter()
                        .map(|r| (r.per_micro(), f64::from(r.burst)))
                        .unzip()
                })
                .unwrap_or_default()
        };
        Filters {
            key: self.limits.concurrency(LimitScope::Key).map(|n| n as i32),
            tenant: self
                .limits
                .concurrency(LimitScope::Tenant)
                .map(|n| n as i32),
            key_rates: rates(LimitScope::Key),
            tenant_rates: rates(LimitScope::Tenant),
        }
    }

    /// Decides which of `candidates`, in order, may start, with the holds
    /// of each admitted one, by its index. [`Claiming::taken`] writes back
    /// what the claim took.
    pub(super) async fn admit(
        &mut self,
        tx: &mut Tx<'_>,
        candidates: &[Operation],
        now: SystemTime,
    ) -> StoreResult<Vec<(usize, Holds)>> {
        let Some(kind) = candidates.first().map(|op| op.kind.clone()) else {
            return Ok(Vec::new());
        };
        let mut slots: Vec<SlotId> = Vec::new();
        for op in candidates {
            for limit in &self.limits.limits {
                if limit.scope == LimitScope::Kind {
                    continue;
                }
                if let Some(slot) = flow::slot_key(
                    limit.scope,
                    op.tenant.as_str(),
                    op.concurrency_key.as_deref(),
                ) {
                    slots.push((limit.scope, slot.to_owned()));
                }
            }
        }
        slots.sort();
        slots.dedup();
        let counted = |scope| self.limits.concurrency(scope).is_some();
        if !slots.is_empty() && (counted(LimitScope::Key) || counted(LimitScope::Tenant)) {
            load_running(tx, &kind, &slots, &mut self.usage).await?;
        }
        if !slots.is_empty()
            && (self.limits.rated(LimitScope::Key) || self.limits.rated(LimitScope::Tenant))
        {
            load_buckets(tx, &kind, &slots, &mut self.usage).await?;
        }
        let mut gate = Gate {
            limits: &self.limits,
            usage: &mut self.usage,
        };
        let mut admitted = Vec::new();
        for (i, op) in candidates.iter().enumerate() {
            match gate.admit(op.tenant.as_str(), op.concurrency_key.as_deref(), now) {
                Ok(holds) => admitted.push((i, holds)),
                Err((_, waiting)) => {
                    self.held_back += 1;
                    if let Waiting::RateLimited { until } = waiting {
                        self.wake = Some(self.wake.map_or(until, |w| w.min(until)));
                    }
                }
            }
        }
        Ok(admitted)
    }

    /// Writes back what the claim took: the slots of the operations that
    /// now run (not of those that expired instead), and the tokens.
    pub(super) async fn taken(
        &self,
        tx: &mut Tx<'_>,
        kind: &str,
        running: &[Operation],
        now: SystemTime,
    ) -> StoreResult<()> {
        let mut deltas = BTreeMap::new();
        for op in running {
            count(&mut deltas, op, op.holds, 1);
        }
        add_running(tx, &deltas).await?;
        self.save_buckets(tx, kind, now).await
    }

    /// Writes the buckets this claim took tokens from.
    async fn save_buckets(&self, tx: &mut Tx<'_>, kind: &str, now: SystemTime) -> StoreResult<()> {
        let touched: Vec<_> = self.usage.buckets().filter(|(.., b)| b.at == now).collect();
        if touched.is_empty() {
            return Ok(());
        }
        let mut scopes = Vec::new();
        let mut keys = Vec::new();
        let mut rates = Vec::new();
        let mut tokens = Vec::new();
        for (scope, rate, key, bucket) in touched {
            scopes.push(scope.code());
            keys.push(key);
            rates.push(rate as i16);
            tokens.push(bucket.tokens);
        }
        sqlx::query(
            "INSERT INTO longrun_buckets (kind, scope, key, rate, tokens, at_us)
             SELECT $1, s, k, r, t, $6
               FROM unnest($2::int2[], $3::text[], $4::int2[], $5::float8[]) AS u(s, k, r, t)
             ON CONFLICT (kind, scope, key, rate)
             DO UPDATE SET tokens = EXCLUDED.tokens, at_us = EXCLUDED.at_us",
        )
        .bind(kind)
        .bind(&scopes)
        .bind(&keys)
        .bind(&rates)
        .bind(&tokens)
        .bind(micros(now))
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(())
    }
}

/// What the claim statement binds for a limited kind.
#[derive(Default)]
pub(super) struct Filters {
    pub(super) key: Option<i32>,
    pub(super) tenant: Option<i32>,
    pub(super) key_rates: (Vec<f64>, Vec<f64>),
    pub(super) tenant_rates: (Vec<f64>, Vec<f64>),
}

impl PgStore {
    pub(super) async fn save_limit(&self, limit: &Limit) -> StoreResult<()> {
        let clear = limit.concurrency.is_none() && limit.rates.is_empty();
        let sql = if clear {
            "WITH gone AS (DELETE FROM longrun_limits WHERE kind = $1 AND scope = $2)
             SELECT pg_notify($5, $6)"
        } else {
            "WITH set AS (
                INSERT INTO longrun_limits (kind, scope, concurrency, rates)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (kind, scope)
                DO UPDATE SET concurrency = EXCLUDED.concurrency, rates = EXCLUDED.rates)
             SELECT pg_notify($5, $6)"
        };
        // Every node's claimer wakes: a limit raised may let work start.
        sqlx::query(sql)
            .bind(&limit.kind)
            .bind(limit.scope.code())
            .bind(limit.concurrency.map(|n| n.min(i32::MAX as u32) as i32))
            .bind(flow::format_rates(&limit.rates))
            .bind(super::feed::CHANNEL)
            .bind(format!("{} {}", self.inner.tag, super::feed::RESUMED))
            .execute(self.pool())
            .await
            .map_err(db)?;
        self.bump_work();
        Ok(())
    }

    pub(super) async fn all_limits(&self) -> StoreResult<Vec<Limit>> {
        let rows = sqlx::query(
            "SELECT kind, scope, concurrency, rates FROM longrun_limits ORDER BY kind, scope",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        rows.iter().map(limit_of).collect()
    }

    pub(super) async fn kind_usage(
        &self,
        kind: &str,
        slots: Option<&[SlotId]>,
    ) -> StoreResult<(KindLimits, Usage)> {
        let mut conn = self.pool().acquire().await.map_err(db)?;
        let limits = kind_limits(&mut conn, kind).await?;
        let mut usage = Usage::default();
        if limits.is_empty() {
            // Nothing counts against a kind without limits.
            return Ok((limits, usage));
        }
        match slots {
            Some(slots) => load(&mut conn, kind, slots, &mut usage).await?,
            None => {
                let rows = sqlx::query(
                    "SELECT scope, key FROM longrun_slots WHERE kind = $1 AND running > 0
                     ORDER BY running DESC, scope, key LIMIT $2",
                )
                .bind(kind)
                .bind(USAGE_ROWS as i64)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
                let mut slots = rows.iter().map(slot_of).collect::<StoreResult<Vec<_>>>()?;
                slots.push((LimitScope::Kind, String::new()));
                load(&mut conn, kind, &slots, &mut usage).await?;
            }
        }
        Ok((limits, usage))
    }
}
