//! Claims on PostgreSQL: one kind at a time, one transaction each. The
//! claim statement picks the queued, due candidates (priorities first,
//! tenants in turn by weight, paused kinds and keys or tenants at their
//! limits left out) and locks them with `FOR UPDATE SKIP LOCKED`; a
//! limited kind's candidates then pass the gate (`flow.rs`); the rulebook
//! makes the claims, and the plan is written back.

use std::time::{Duration, SystemTime};

use super::commit::{Locked, SaveError, save};
use super::flow::Claiming;
use super::operations::BEGIN_LAZY;
use super::{PgStore, db, micros, operation};
use crate::model::{Edit, Holds, Operation, State};
use crate::store::rules::Rulebook;
use crate::store::{ClaimRequest, StoreResult};

/// How soon work whose batch stayed busy is claimed again.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// The queued, due operations of one kind, up to `$3`, the higher
/// priorities first and within one the tenants taking turns: the first
/// `weight` of every tenant (`$9`, `$10`; 1 unless listed), then the next,
/// and so on, each tenant's oldest first. The tenants are found by
/// skipping through the queue index rather than reading all of it; rows
/// another node is claiming are skipped. For a limited kind, keys and
/// tenants whose limits start nothing now are left out: at their
/// concurrency (`$5` per key, `$6` per tenant) or with a spent bucket
/// (`$7`, `$8`: each key rate's tokens per microsecond and burst; `$11`,
/// `$12` the same per tenant).
const CLAIM: &str = "
WITH RECURSIVE tenants(t) AS (
    (SELECT tenant FROM longrun_operations
      WHERE state = 1 AND kind = $1 AND ($4::text IS NULL OR tenant = $4)
      ORDER BY tenant LIMIT 1)
  UNION ALL
    SELECT (SELECT tenant FROM longrun_operations
             WHERE state = 1 AND kind = $1 AND tenant > tenants.t
               AND ($4::text IS NULL OR tenant = $4)
             ORDER BY tenant LIMIT 1)
      FROM tenants WHERE tenants.t IS NOT NULL
), picks AS (
    SELECT c.id FROM tenants CROSS JOIN LATERAL (
        SELECT o.id, o.priority, o.due_us,
               (row_number() OVER (PARTITION BY o.priority ORDER BY o.due_us, o.id) - 1)
                 / coalesce((SELECT w FROM unnest($9::text[], $10::int4[]) AS u(t, w)
                              WHERE u.t = tenants.t), 1) AS turn
          FROM longrun_operations o
         WHERE o.state = 1 AND o.kind = $1 AND o.tenant = tenants.t AND o.due_us <= $2
           AND ($5::int4 IS NULL OR o.concurrency_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM longrun_slots s
                 WHERE s.kind = $1 AND s.scope = 1 AND s.key = o.concurrency_key
                   AND s.running >= $5))
           AND (cardinality($7::float8[]) = 0 OR o.concurrency_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM longrun_buckets b
                 WHERE b.kind = $1 AND b.scope = 1 AND b.key = o.concurrency_key
                   AND least(($8::float8[])[b.rate + 1],
                             b.tokens + ($2 - b.at_us) * ($7::float8[])[b.rate + 1]) < 1))
         ORDER BY o.priority DESC, o.due_us, o.id LIMIT $3
    ) c
    WHERE tenants.t IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM longrun_paused_kinds WHERE kind = $1)
      AND ($6::int4 IS NULL OR NOT EXISTS (
           SELECT 1 FROM longrun_slots s
            WHERE s.kind = $1 AND s.scope = 2 AND s.key = tenants.t AND s.running >= $6))
      AND (cardinality($11::float8[]) = 0 OR NOT EXISTS (
           SELECT 1 FROM longrun_buckets b
            WHERE b.kind = $1 AND b.scope = 2 AND b.key = tenants.t
              AND least(($12::float8[])[b.rate + 1],
                        b.tokens + ($2 - b.at_us) * ($11::float8[])[b.rate + 1]) < 1))
    ORDER BY c.priority DESC, c.turn, c.due_us, c.id
    LIMIT $3
)
SELECT o.id, o.record, o.lease_holder, o.lease_expires_us
  FROM longrun_operations o
 WHERE o.id IN (SELECT id FROM picks) AND o.state = 1
 FOR UPDATE OF o SKIP LOCKED";

/// What one claim of one kind took.
#[derive(Default)]
pub(super) struct KindClaim {
    pub(super) operations: Vec<Operation>,
    /// Candidates its limits held back: there may be more to take.
    pub(super) held_back: bool,
    /// When a spent rate fills again.
    pub(super) wake: Option<SystemTime>,
}

impl PgStore {
    pub(super) async fn claim_kind(
        &self,
        kind: &str,
        n: usize,
        request: &ClaimRequest,
        now: SystemTime,
    ) -> StoreResult<KindClaim> {
        // A claim is lazy: a crash loses it, and recovery treats it as
        // never made.
        let mut tx = self.pool().begin_with(BEGIN_LAZY).await.map_err(db)?;
        let mut gate = match Claiming::begin(&mut tx, kind, now).await? {
            None => None,
            Some(Ok(gate)) => Some(gate),
            Some(Err(wake)) => {
                return Ok(KindClaim {
                    wake,
                    ..KindClaim::default()
                });
            }
        };
        let filters = gate.as_ref().map(Claiming::filters).unwrap_or_default();
        let (weighed, weights): (Vec<&str>, Vec<i32>) = request
            .weights
            .iter()
            .map(|(t, w)| (t.as_str(), (*w).clamp(1, 1_000) as i32))
            .unzip();
        let rows = sqlx::query(CLAIM)
            .bind(kind)
            .bind(micros(now))
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .bind(request.tenant.as_ref().map(|t| t.as_str().to_owned()))
            .bind(filters.key)
            .bind(filters.tenant)
            .bind(&filters.key_rates.0)
            .bind(&filters.key_rates.1)
            .bind(&weighed)
            .bind(&weights)
            .bind(&filters.tenant_rates.0)
            .bind(&filters.tenant_rates.1)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        if rows.is_empty() {
            return Ok(KindClaim::default());
        }
        let candidates = rows
            .iter()
            .map(operation)
            .collect::<StoreResult<Vec<_>>>()?;
        let picks: Vec<(usize, Holds)> = match &mut gate {
            Some(gate) => gate.admit(&mut tx, &candidates, now).await?,
            None => (0..candidates.len()).map(|i| (i, Holds::NONE)).collect(),
        };
        let mut locked = Locked::default();
        let mut candidates: Vec<Option<Operation>> = candidates.into_iter().map(Some).collect();
        let mut picked = Vec::with_capacity(picks.len());
        let mut holds_of = std::collections::HashMap::with_capacity(picks.len());
        for (i, holds) in picks {
            if let Some(op) = candidates[i].take() {
                holds_of.insert(op.id, holds);
                picked.push(op);
            }
        }
        // A batch's child is claimed with its batch locked (the claim
        // rolls up into it), waiting its turn for a busy batch up to a
        // bound; one whose batch stayed busy waits for a later claim.
        let busy = locked.lock_parents(&mut tx, &mut picked).await?;
        let mut ids = Vec::with_capacity(picked.len());
        for op in picked {
            ids.push((op.id, holds_of.remove(&op.id).unwrap_or(Holds::NONE)));
            locked.take_in(op);
        }
        let mut book = Rulebook::new(&mut locked, now);
        let mut claimed = Vec::with_capacity(ids.len());
        for (id, holds) in ids {
            let edit = Edit::Claim {
                lease: request.lease.clone(),
                by: request.by.clone(),
                holds,
            };
            // One past its expire time ends instead: it is written, not run.
            if let Some(op) = book
                .claim(id, &edit)?
                .filter(|op| op.state == State::Running)
            {
                claimed.push(op);
            }
        }
        if let Some(gate) = &gate {
            gate.taken(&mut tx, kind, &claimed, now).await?;
        }
        let plan = book.plan();
        let moves = save(&mut tx, &plan, &self.inner.tag)
            .await
            .map_err(SaveError::locked)?;
        tx.commit().await.map_err(db)?;
        self.queue_moved(&moves.added, &moves.taken);
        self.announce(plan);
        // Work skipped only because its batch was busy in another
        // transaction is tried again shortly, even when nothing was taken.
        let retry_busy = (busy > 0 && claimed.is_empty()).then(|| now + BUSY_RETRY);
        let held_back = busy > 0 || gate.as_ref().is_some_and(|g| g.held_back > 0);
        let wake = match (gate.and_then(|g| g.wake), retry_busy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(KindClaim {
            operations: claimed,
            held_back,
            wake,
        })
    }
}
