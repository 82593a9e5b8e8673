//! [`OutboxStore`] on PostgreSQL. Deliveries are written by commits; a
//! node takes due ones under a lease (their due time moved forward), so
//! each is sent by one node, and by another only if the first goes quiet.

use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, db, micros};
use crate::model::{Delivery, OperationId};
use crate::store::codec::{Inline, decode_delivery, from_micros};
use crate::store::{DeliveryTake, OutboxStore, StoreResult};

fn deliveries(rows: &[sqlx::postgres::PgRow]) -> StoreResult<Vec<Delivery>> {
    rows.iter()
        .map(|row| {
            let record: Vec<u8> = row.try_get("record").map_err(db)?;
            decode_delivery(&record, &Inline)
        })
        .collect()
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn due_deliveries(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Delivery>> {
        self.call(async {
            let rows = sqlx::query(
                "SELECT record FROM longrun_deliveries
                  WHERE due_us IS NOT NULL AND due_us <= $1 ORDER BY due_us, id LIMIT $2",
            )
            .bind(micros(now))
            .bind(limit_of(limit))
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            deliveries(&rows)
        })
        .await
    }

    async fn take_deliveries(
        &self,
        now: SystemTime,
        take: &DeliveryTake,
    ) -> StoreResult<Vec<Delivery>> {
        let skip: Vec<uuid::Uuid> = take.in_flight.iter().copied().collect();
        let (busy, counts): (Vec<String>, Vec<i64>) = take
            .busy
            .iter()
            .map(|(t, n)| (t.as_str().to_owned(), limit_of(*n)))
            .unzip();
        self.call(async {
            // The tenants with due deliveries, found by skipping through the
            // index; then the first of each, the second of each, and so on,
            // each tenant up to its room ($6, less what it has in flight:
            // $5 and $7). Another node taking the same row meanwhile
            // re-checks its due time under the row's lock and leaves it.
            let rows = sqlx::query(
                "WITH RECURSIVE tenants(t) AS (
                    (SELECT tenant FROM longrun_deliveries
                      WHERE due_us IS NOT NULL AND due_us <= $1
                      ORDER BY tenant LIMIT 1)
                  UNION ALL
                    SELECT (SELECT tenant FROM longrun_deliveries
                             WHERE due_us IS NOT NULL AND due_us <= $1 AND tenant > tenants.t
                             ORDER BY tenant LIMIT 1)
                      FROM tenants WHERE tenants.t IS NOT NULL
                ), rooms AS (
                    SELECT tenants.t, $6 - coalesce(b.n, 0) AS room
                      FROM tenants LEFT JOIN unnest($5::text[], $7::int8[]) AS b(t, n)
                        ON b.t = tenants.t
                     WHERE tenants.t IS NOT NULL
                ), picks AS (
                    SELECT c.id FROM rooms CROSS JOIN LATERAL (
                        SELECT id, due_us, row_number() OVER (ORDER BY due_us, id) AS turn
                          FROM longrun_deliveries
                         WHERE tenant = rooms.t AND due_us IS NOT NULL AND due_us <= $1
                           AND NOT (id = ANY($4))
                         ORDER BY due_us, id LIMIT $6
                    ) c
                    WHERE c.turn <= rooms.room
                    ORDER BY c.turn, c.due_us, c.id
                    LIMIT $2
                )
                UPDATE longrun_deliveries SET due_us = $3
                 WHERE id IN (SELECT id FROM picks) AND due_us IS NOT NULL AND due_us <= $1
                RETURNING record",
            )
            .bind(micros(now))
            .bind(limit_of(take.limit))
            .bind(micros(now + take.lease))
            .bind(&skip)
            .bind(&busy)
            .bind(limit_of(take.per_tenant))
            .bind(&counts)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            deliveries(&rows)
        })
        .await
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<SystemTime>> {
        self.call(async {
            let row = sqlx::query(
                "SELECT min(due_us) AS due FROM longrun_deliveries WHERE due_us IS NOT NULL",
            )
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
            let due: Option<i64> = row.try_get("due").map_err(db)?;
            Ok(due.map(from_micros))
        })
        .await
    }

    async fn deliveries(&self, id: OperationId) -> StoreResult<Vec<Delivery>> {
        self.call(async {
            let rows = sqlx::query(
                "SELECT record FROM longrun_deliveries WHERE operation = $1 ORDER BY id",
            )
            .bind(uuid::Uuid::from_bytes(*id.as_bytes()))
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            deliveries(&rows)
        })
        .await
    }
}
