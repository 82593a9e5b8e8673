//! [`OutboxStore`] on PostgreSQL. Deliveries are written by commits; a
//! node takes due ones under a lease (their due time moved forward), so
//! each is sent by one node, and by another only if the first goes quiet.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::Row;

use super::{PgStore, db, micros};
use crate::model::{Delivery, OperationId};
use crate::store::codec::{Inline, decode_delivery, from_micros};
use crate::store::{OutboxStore, StoreResult};

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
        limit: usize,
        in_flight: &HashSet<uuid::Uuid>,
        lease: Duration,
    ) -> StoreResult<Vec<Delivery>> {
        let skip: Vec<uuid::Uuid> = in_flight.iter().copied().collect();
        self.call(async {
            let rows = sqlx::query(
                "UPDATE longrun_deliveries SET due_us = $3
                  WHERE id IN (SELECT id FROM longrun_deliveries
                                WHERE due_us IS NOT NULL AND due_us <= $1 AND NOT (id = ANY($4))
                                ORDER BY due_us, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                  RETURNING record",
            )
            .bind(micros(now))
            .bind(limit_of(limit))
            .bind(micros(now + lease))
            .bind(&skip)
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
