//! [`OrderStore`] on PostgreSQL: a batch none of whose order_ids is stored
//! yet is copied straight into the table; one that may replace stored
//! orders arrives by COPY into a staging table and is merged in one
//! statement. Each tenant's count of orders is
//! a row updated last in the batch's transaction, so concurrent imports of
//! one tenant merge side by side and still cannot both pass its limit.

use std::fmt::Write as _;

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, db};
use crate::model::Tenant;
use crate::model::order::{Month, Order};
use crate::store::codec::{decode_order, encode_order};
use crate::store::{OrderCursor, OrderStore, PutOrders, StoreError, StoreResult};

/// A month as the table keeps it: year × 100 + month.
fn month_number(month: Month) -> i32 {
    month.year() * 100 + i32::from(month.month())
}

/// Appends `text` to a COPY line, escaped for the text format.
fn escaped(line: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => line.push_str("\\\\"),
            '\t' => line.push_str("\\t"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c => line.push(c),
        }
    }
}

/// `orders` (each order_id once) as rows of COPY's text format: for the
/// staging table, or, given the tenant, for `longrun_orders` itself, in
/// order_id order.
fn copy_text(orders: &[Order], tenant: Option<&Tenant>) -> String {
    let mut kept: Vec<&Order> = orders.iter().collect();
    if tenant.is_some() {
        // Bytes order, as the column's "C" collation.
        kept.sort_unstable_by(|a, b| a.order_id.cmp(&b.order_id));
    }
    let mut text = String::with_capacity(kept.len() * 112);
    for order in kept {
        if let Some(tenant) = tenant {
            escaped(&mut text, tenant.as_str());
            text.push('\t');
        }
        escaped(&mut text, &order.order_id);
        let month = month_number(Month::of_micros(order.created_at));
        let _ = write!(text, "\t{month}\t{}\t\\\\x", order.created_at);
        text.push_str(&hex::encode(encode_order(order)));
        text.push('\n');
    }
    text
}

/// A month listing's position: `created_at`, then the order_id.
fn cursor(order: &Order) -> OrderCursor {
    let mut bytes = order.created_at.to_be_bytes().to_vec();
    bytes.extend_from_slice(order.order_id.as_bytes());
    OrderCursor(bytes)
}

fn uncursor(cursor: &OrderCursor) -> StoreResult<(i64, String)> {
    let bad = || StoreError::Corrupt("order cursor".into());
    let (time, id) = cursor.0.split_at_checked(8).ok_or_else(bad)?;
    let time = i64::from_be_bytes(time.try_into().map_err(|_| bad())?);
    Ok((time, String::from_utf8(id.to_vec()).map_err(|_| bad())?))
}

/// Copies `orders`, none of whose order_ids was stored when probed,
/// straight into the table: how many, or None, having undone the copy (a
/// savepoint), when another call stored some of them meanwhile. Rows go
/// in order_id order, so that calls storing the same orders at once lock
/// them in one order and never deadlock.
async fn copy_new(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &Tenant,
    orders: &[Order],
) -> StoreResult<Option<i64>> {
    let mut attempt = sqlx::Acquire::begin(&mut *tx).await.map_err(db)?;
    let copied = copy_in(
        &mut attempt,
        "COPY longrun_orders (tenant, order_id, month, created_at, record) FROM STDIN",
        &copy_text(orders, Some(tenant)),
    )
    .await;
    match copied {
        Ok(rows) => {
            attempt.commit().await.map_err(db)?;
            Ok(Some(i64::try_from(rows).unwrap_or(i64::MAX)))
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            attempt.rollback().await.map_err(db)?;
            Ok(None)
        }
        Err(e) => Err(db(e)),
    }
}

/// Stages `orders` in a temporary table for the merge.
async fn stage(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    orders: &[Order],
) -> StoreResult<()> {
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS longrun_orders_stage
           (order_id text, month integer, created_at bigint, record bytea)
         ON COMMIT DELETE ROWS",
    )
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    copy_in(
        tx,
        "COPY longrun_orders_stage FROM STDIN",
        &copy_text(orders, None),
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Runs `statement`, a COPY FROM STDIN, with `text` as its rows: how many
/// it stored. A copy that fails partway is abandoned (CopyFail as it
/// drops), and its error returned as it came.
async fn copy_in(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    text: &str,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(text.as_bytes()).await?;
    copy.finish().await
}

/// Merges the staged rows, replacing the stored orders with their
/// order_ids (in order_id order, as `copy_new`): how many were new.
async fn merge(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &Tenant,
) -> StoreResult<i64> {
    sqlx::query(
        "WITH merged AS (
            INSERT INTO longrun_orders (tenant, order_id, month, created_at, record)
            SELECT $1, order_id, month, created_at, record FROM longrun_orders_stage
             ORDER BY order_id COLLATE \"C\"
            ON CONFLICT (tenant, order_id) DO UPDATE SET month = EXCLUDED.month,
               created_at = EXCLUDED.created_at, record = EXCLUDED.record
            RETURNING (xmax = 0) AS inserted)
         SELECT count(*) FILTER (WHERE inserted) AS added FROM merged",
    )
    .bind(tenant.as_str())
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?
    .try_get("added")
    .map_err(db)
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
        // One statement may not touch a row twice: the last row of each
        // order_id wins.
        let orders = Order::last_of_each(orders);
        let mut tx = self.pool().begin().await.map_err(db)?;
        // Orders need only be durable by the next flush (see OrderStore),
        // and on PostgreSQL the next durable commit (the import's finish)
        // flushes the WAL up to itself: a batch need not wait for its own.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // When no stored order of the tenant lies between the call's least
        // and greatest order_id (a file of new, ascending ids, say), none
        // is stored, and the rows are copied straight in, with no staging
        // and no conflict checks. Should another call store some of the
        // same ids meanwhile, the copy fails on them and is undone (a
        // savepoint), and the merge runs.
        let (least, greatest) = Order::id_range(&orders).unwrap_or_default();
        let fresh = !sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM longrun_orders
                             WHERE tenant = $1 AND order_id BETWEEN $2 AND $3)",
        )
        .bind(tenant.as_str())
        .bind(least)
        .bind(greatest)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let copied = match fresh {
            true => copy_new(&mut tx, tenant, &orders).await?,
            false => None,
        };
        let added = match copied {
            Some(added) => added,
            None => {
                stage(&mut tx, &orders).await?;
                merge(&mut tx, tenant).await?
            }
        };
        // The tenant's count is locked last, after the merge, so that calls
        // of one tenant on disjoint orders merge side by side; its holder
        // waits for nothing more before it commits. Concurrent calls cannot
        // both pass the limit: each checks the count its own update made.
        let total: i64 = sqlx::query(
            "INSERT INTO longrun_order_tenants AS t (tenant, stored) VALUES ($1, $2)
             ON CONFLICT (tenant) DO UPDATE SET stored = t.stored + EXCLUDED.stored
             RETURNING stored",
        )
        .bind(tenant.as_str())
        .bind(added)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?
        .try_get("stored")
        .map_err(db)?;
        let total = u64::try_from(total).unwrap_or(0);
        if let Some(limit) = limit
            && added > 0
            && total > limit
        {
            tx.rollback().await.map_err(db)?;
            return Ok(PutOrders::OverLimit {
                stored: total.saturating_sub(added as u64),
            });
        }
        tx.commit().await.map_err(db)?;
        Ok(PutOrders::Stored)
    }

    /// Each call merges on a connection of its own, which PostgreSQL runs
    /// on a core of its own: as many as this machine has cores (a guess
    /// at the database's), up to 4, and no more than a quarter of the pool.
    /// More than the cores made imports slower when measured.
    fn writers(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = self.pool().options().get_max_connections() as usize;
        cores.min(4).min(pool / 4).max(1)
    }

    async fn month_count(&self, tenant: &Tenant, month: Month) -> StoreResult<u64> {
        let n: i64 = sqlx::query(
            "SELECT count(*) AS n FROM longrun_orders WHERE tenant = $1 AND month = $2",
        )
        .bind(tenant.as_str())
        .bind(month_number(month))
        .fetch_one(self.pool())
        .await
        .map_err(db)?
        .try_get("n")
        .map_err(db)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn month_page(
        &self,
        tenant: &Tenant,
        month: Month,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Order>, Option<OrderCursor>)> {
        let (after_time, after_id) = match &after {
            Some(c) => {
                let (t, id) = uncursor(c)?;
                (Some(t), Some(id))
            }
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT record FROM longrun_orders
              WHERE tenant = $1 AND month = $2
                AND ($3::int8 IS NULL OR (created_at, order_id) > ($3, $4::text))
              ORDER BY created_at, order_id LIMIT $5",
        )
        .bind(tenant.as_str())
        .bind(month_number(month))
        .bind(after_time)
        .bind(after_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let mut orders = Vec::with_capacity(rows.len());
        for row in &rows {
            let record: Vec<u8> = row.try_get("record").map_err(db)?;
            orders.push(decode_order(&record)?);
        }
        let next = (orders.len() == limit)
            .then(|| orders.last().map(cursor))
            .flatten();
        Ok((orders, next))
    }
}
