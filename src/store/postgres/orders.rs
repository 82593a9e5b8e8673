//! [`OrderStore`] on PostgreSQL: a tenant's orders as sorted runs
//! (`store::runs`), a row per chunk of a few hundred orders, with each
//! family's runs listed in `longrun_order_runs` and each month's count in
//! `longrun_order_months`. A tenant's writes take turns on its row of
//! `longrun_order_tenants`, on every node; each call is one transaction:
//! where its orders are stored, its runs and the counts. Runs are merged
//! afterwards, in the background, each family by one node at a time, so
//! that an import's next call need not wait for them; a writer reading
//! the locations checks that no merge took a run it read meanwhile, and a
//! listing reads a page in one snapshot. Rows stored before runs
//! (`longrun_orders`) are read beside them and never written again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use sqlx::{PgConnection, PgPool, Row};

use super::{PgStore, db};
use crate::model::Tenant;
use crate::model::order::{Month, Order};
use crate::store::codec::decode_order;
use crate::store::runs::{self, Family, Found, Location, Walk, written};
use crate::store::{OrderCursor, OrderStore, PutOrders, StoreError, StoreResult};
use chunks::{Pending, Reader, add_run, after, has_legacy, manifest, month_number};

mod chunks;

/// How often a writer reads the locations again because a merge took a
/// run it was reading before it gives up.
const READ_ATTEMPTS: usize = 16;

/// Where each of `orders`' order_ids is stored now, for those that are.
/// `orders` holds each order_id once.
async fn locate<'o>(
    conn: &mut PgConnection,
    tenant: &str,
    orders: &'o [Order],
) -> StoreResult<HashMap<&'o str, Location>> {
    let Some((least, greatest)) = Order::id_range(orders) else {
        return Ok(HashMap::new());
    };
    for _ in 0..READ_ATTEMPTS {
        let runs: Vec<runs::Run> = manifest(conn, tenant, Family::Locations)
            .await?
            .into_iter()
            .filter(|run| run.overlaps(least.as_bytes(), greatest.as_bytes()))
            .collect();
        let found = read_locations(conn, tenant, orders, (least, greatest), &runs).await?;
        // A merge that committed meanwhile may have deleted a run read
        // here part way through: read again. (Merges delete only the runs
        // they replace, and numbers are never reused.)
        let now = manifest(conn, tenant, Family::Locations).await?;
        if runs
            .iter()
            .all(|read| now.iter().any(|run| run.id == read.id))
        {
            return Ok(found);
        }
    }
    Err(StoreError::Unavailable(
        "the order locations kept being merged while read; try again".into(),
    ))
}

/// Where `orders` (order_ids `least` to `greatest`) are stored, read
/// from location runs `overlapping` and the rows from before runs. A run
/// with a filter is read only in the chunks its filter may hold an
/// order_id in; the runs without one are read through their stretch.
async fn read_locations<'o>(
    conn: &mut PgConnection,
    tenant: &str,
    orders: &'o [Order],
    (least, greatest): (&str, &str),
    overlapping: &[runs::Run],
) -> StoreResult<HashMap<&'o str, Location>> {
    let mut found = Found::default();
    if !overlapping.is_empty() {
        let mut ids: Vec<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
        ids.sort_unstable();
        let numbers: Vec<i64> = overlapping.iter().map(|run| run.id as i64).collect();
        let filters = chunks::filters(conn, tenant, &numbers).await?;
        let mut wanted = Vec::new();
        let mut unfiltered = Vec::new();
        for run in overlapping {
            match runs::may_hold(filters.get(&run.id).map(Vec::as_slice), run, &ids) {
                Some(candidates) => {
                    wanted.extend(candidates.into_iter().map(|id| (run.id as i64, id)))
                }
                None => unfiltered.push(run.id as i64),
            }
        }
        if !wanted.is_empty() {
            let held = chunks::chunks_holding(conn, tenant, &wanted).await?;
            for (run, id) in wanted {
                if let Some(entry) = held
                    .get(&(run as u64))
                    .and_then(|entries| runs::entry_in(entries, id.as_bytes()))
                {
                    found.take(id, entry)?;
                }
            }
        }
        if !unfiltered.is_empty() {
            scan(
                conn,
                tenant,
                &ids,
                (least, greatest),
                &unfiltered,
                &mut found,
            )
            .await?;
        }
    }
    // Rows from before runs, for the order_ids the runs do not have.
    if has_legacy(conn, tenant, Family::Locations).await? {
        let mut missing: Vec<&str> = orders
            .iter()
            .map(|o| o.order_id.as_str())
            .filter(|id| !found.has(id))
            .collect();
        missing.sort_unstable();
        let rows = sqlx::query(
            "SELECT order_id, created_at FROM longrun_orders
              WHERE tenant = $1 AND order_id = ANY($2)",
        )
        .bind(tenant)
        .bind(&missing)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        for row in &rows {
            let order_id: String = row.try_get("order_id").map_err(db)?;
            let created_at: i64 = row.try_get("created_at").map_err(db)?;
            if let Ok(i) = missing.binary_search(&order_id.as_str()) {
                found.take_legacy(missing[i], Location::of(created_at));
            }
        }
    }
    Ok(found.locations())
}

/// Finds `ids` (sorted) in location runs `runs` by reading their stretch
/// from `least` to `greatest`, merged: for runs stored without a filter.
async fn scan<'o>(
    conn: &mut PgConnection,
    tenant: &str,
    ids: &[&'o str],
    (least, greatest): (&str, &str),
    runs: &[i64],
    found: &mut Found<'o>,
) -> StoreResult<()> {
    let mut walk = Walk::new(ids, greatest.as_bytes());
    let from = Some(least.as_bytes().to_vec());
    let mut reader = Reader::new(tenant, Family::Locations, runs, false, from);
    loop {
        let window = reader.window(conn).await?;
        if window.is_empty() {
            return Ok(());
        }
        for entry in window {
            if !walk.step(&entry, found)? {
                return Ok(());
            }
        }
    }
}

/// Merges `family`'s runs until no tier is full, a merge per transaction,
/// unless another node is merging the family already.
async fn tidy(pool: &PgPool, tenant: &str, family: Family) -> StoreResult<()> {
    loop {
        let mut tx = pool.begin().await.map_err(db)?;
        // A merge loses nothing if its commit is lost: its inputs stay.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let ours: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext('longrun_order_runs:' || $1 || '/' || $2))",
        )
        .bind(tenant)
        .bind(chunks::family_name(family))
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if !ours {
            return Ok(());
        }
        let live = manifest(&mut tx, tenant, family).await?;
        let Some(inputs) = runs::plan(&live) else {
            return Ok(());
        };
        // Kills hide older versions; once every run is merged (and no row
        // from before runs is left under them), nothing is older. A run
        // written meanwhile is newer than all of them.
        let everything = inputs.len() == live.len() && !has_legacy(&mut tx, tenant, family).await?;
        let out: i64 = sqlx::query_scalar("SELECT nextval('longrun_order_run_numbers')")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let held = runs::held(&live, &inputs);
        chunks::merge(
            &mut tx,
            tenant,
            family,
            (&inputs, held),
            everything,
            out as u64,
        )
        .await?;
        tx.commit().await.map_err(db)?;
    }
}

/// Merges this node runs at once, each on a connection of its own: the
/// pool is left to everyone else however many tenants import.
const MERGES_AT_ONCE: usize = 2;

/// The families of each tenant this node is to merge, while a task of
/// its own merges them, and the turns of those tasks.
#[derive(Clone)]
pub(super) struct Merging(
    Arc<Mutex<HashMap<String, BTreeSet<Family>>>>,
    Arc<tokio::sync::Semaphore>,
);

impl Default for Merging {
    fn default() -> Self {
        Merging(
            Arc::default(),
            Arc::new(tokio::sync::Semaphore::new(MERGES_AT_ONCE)),
        )
    }
}

impl Merging {
    /// Adds `families` of `tenant` to merge: true when no task merges the
    /// tenant's runs yet, so that one must be started.
    fn queue(&self, tenant: &str, families: Vec<Family>) -> bool {
        let mut waiting = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queued) = waiting.get_mut(tenant) {
            queued.extend(families);
            return false;
        }
        waiting.insert(tenant.to_owned(), families.into_iter().collect());
        true
    }

    /// The next family of `tenant` to merge, or None, the task done.
    fn next(&self, tenant: &str) -> Option<Family> {
        let mut waiting = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let next = waiting.get_mut(tenant).and_then(BTreeSet::pop_first);
        if next.is_none() {
            waiting.remove(tenant);
        }
        next
    }
}

impl PgStore {
    /// Has `families` of `tenant` merged in the background: by the task
    /// merging the tenant's runs already, or by a new one. A merge the
    /// database could not take (unreachable, restarting) is tried again,
    /// waiting longer each time, until it is made or the store stops; one
    /// that failed otherwise is tried again after the tenant's next write.
    fn merge_later(&self, tenant: &str, families: Vec<Family>) {
        if !self.inner.merging.queue(tenant, families) {
            return;
        }
        let (pool, merging) = (self.pool().clone(), self.inner.merging.clone());
        let (tenant, stop) = (tenant.to_owned(), self.inner.stop.clone());
        self.inner.tasks.spawn(async move {
            while let Some(family) = merging.next(&tenant) {
                // Each try takes a turn of its own, so that one waiting
                // between tries holds none.
                let merge = || async {
                    let _turn = merging.1.acquire().await;
                    tidy(&pool, &tenant, family).await
                };
                let merged = tokio::select! {
                    merged = merge
                        .retry(merge_backoff())
                        .sleep(tokio::time::sleep)
                        .when(|e| matches!(e, StoreError::Unavailable(_)))
                        .notify(|e, wait| tracing::warn!(
                            tenant, error = %e, ?wait, "merging imported orders failed; trying again"
                        )) => merged,
                    () = stop.cancelled() => return,
                };
                if let Err(e) = merged {
                    tracing::warn!(tenant, error = %e, "merging imported orders failed; the next import retries");
                }
            }
        });
    }
}

/// The waits between tries at a merge the database could not take.
fn merge_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
}

#[async_trait]
impl OrderStore for PgStore {
    async fn put_orders(
        &self,
        tenant: &Tenant,
        orders: Vec<Order>,
        limit: Option<u64>,
    ) -> StoreResult<PutOrders> {
        if orders.is_empty() {
            return Ok(PutOrders::Stored);
        }
        let orders = Order::last_of_each(orders);
        let name = tenant.as_str();
        let mut tx = self.pool().begin().await.map_err(db)?;
        // Orders need only be durable by the next flush (see OrderStore),
        // and on PostgreSQL the next durable commit (the import's finish)
        // flushes the WAL up to itself: a batch need not wait for its own.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // The tenant's turn: its row, locked until the commit.
        let turn = sqlx::query(
            "INSERT INTO longrun_order_tenants AS t (tenant, stored) VALUES ($1, 0)
             ON CONFLICT (tenant) DO UPDATE SET stored = t.stored
             RETURNING stored, nextval('longrun_order_run_numbers') AS run",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let stored = u64::try_from(turn.try_get::<i64, _>("stored").map_err(db)?).unwrap_or(0);
        let run = u64::try_from(turn.try_get::<i64, _>("run").map_err(db)?).unwrap_or(1);

        let stored_at = locate(&mut tx, name, &orders).await?;
        let added = (orders.len() - stored_at.len()) as u64;
        if let Some(limit) = limit
            && added > 0
            && stored.saturating_add(added) > limit
        {
            tx.rollback().await.map_err(db)?;
            return Ok(PutOrders::OverLimit { stored });
        }

        let out = written(&orders, &stored_at, run);
        let mut pending = Pending::new(name);
        let families: Vec<Family> = out.families.keys().copied().collect();
        for (family, entries) in out.families {
            add_run(&mut tx, &mut pending, family, run, entries).await?;
        }
        pending.flush(&mut tx).await?;
        let (months, deltas): (Vec<i32>, Vec<i64>) = out
            .counts
            .iter()
            .map(|(month, delta)| (month_number(month), *delta))
            .unzip();
        sqlx::query(
            "INSERT INTO longrun_order_months AS m (tenant, month, stored)
             SELECT $1, * FROM unnest($2::int4[], $3::int8[])
             ON CONFLICT (tenant, month) DO UPDATE SET stored = m.stored + EXCLUDED.stored",
        )
        .bind(name)
        .bind(&months)
        .bind(&deltas)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("UPDATE longrun_order_tenants SET stored = stored + $2 WHERE tenant = $1")
            .bind(name)
            .bind(added as i64)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.merge_later(name, families);
        Ok(PutOrders::Stored)
    }

    async fn month_count(&self, tenant: &Tenant, month: Month) -> StoreResult<u64> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT stored FROM longrun_order_months WHERE tenant = $1 AND month = $2",
        )
        .bind(tenant.as_str())
        .bind(month_number(&month.key()))
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    async fn month_page(
        &self,
        tenant: &Tenant,
        month: Month,
        cursor: Option<OrderCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Order>, Option<OrderCursor>)> {
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        let family = Family::Month(month.key());
        // One snapshot for the page: a merge committed meanwhile cannot
        // take runs away between its queries.
        let mut tx = self.pool().begin().await.map_err(db)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let live: Vec<i64> = manifest(&mut tx, tenant.as_str(), family)
            .await?
            .iter()
            .map(|run| run.id as i64)
            .collect();
        let legacy = has_legacy(&mut tx, tenant.as_str(), family).await?;
        let from = cursor.as_ref().map(|OrderCursor(at)| after(at));
        // A chunk holds about 150 orders.
        let chunks = i64::try_from(limit / 128 + 1).unwrap_or(i64::MAX);
        let mut reader = Reader::new(tenant.as_str(), family, &live, legacy, from).paged(chunks);
        let mut orders = Vec::with_capacity(limit.min(65_536));
        let mut last = None;
        'read: loop {
            let window = reader.window(&mut tx).await?;
            if window.is_empty() {
                break;
            }
            for entry in window {
                if orders.len() == limit {
                    break 'read;
                }
                if let Some(value) = entry.value {
                    orders.push(decode_order(&value)?);
                    last = Some(entry.key);
                }
            }
        }
        tx.commit().await.map_err(db)?;
        let next = if orders.len() == limit {
            last.map(OrderCursor)
        } else {
            None
        };
        Ok((orders, next))
    }
}

#[cfg(test)]
mod tests {
    use super::chunks::month_number;

    #[test]
    fn a_month_key_reads_as_its_number() {
        let key = crate::model::order::Month::new(2024, 3).unwrap().key();
        assert_eq!(month_number(&key), 202_403);
    }
}
