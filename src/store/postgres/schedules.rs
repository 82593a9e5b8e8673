//! [`ScheduleStore`] on PostgreSQL (`longrun_schedules`): a write names
//! the revision it read, and a take leases due rows with `FOR UPDATE SKIP
//! LOCKED`, so that of several nodes exactly one handles a due schedule
//! until its hold ends. The revision and the hold live in columns (the
//! record's own copies are overridden on read), so a take rewrites no
//! record.

use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{PgStore, db};
use crate::model::Tenant;
use crate::model::schedule::Schedule;
use crate::store::codec::{from_micros, to_micros};
use crate::store::schedules::{decode, encode, wake_us};
use crate::store::{Expect, PutSchedule, ScheduleStore, StoreError, StoreResult};

/// Reads a row of `tenant, id, revision, wake_us, record`.
fn schedule_of(row: &PgRow) -> StoreResult<Schedule> {
    let tenant: String = row.try_get("tenant").map_err(db)?;
    let tenant = Tenant::from_stored(&tenant).map_err(StoreError::Corrupt)?;
    let id: String = row.try_get("id").map_err(db)?;
    let record: Vec<u8> = row.try_get("record").map_err(db)?;
    let mut schedule = decode(tenant, &id, &record)?;
    let revision: i64 = row.try_get("revision").map_err(db)?;
    schedule.revision = revision as u64;
    let wake: Option<i64> = row.try_get("wake_us").map_err(db)?;
    // A hold the record does not know of: its end is the row's wake time.
    if let Some(wake) = wake
        && schedule.due().is_some_and(|due| to_micros(due) < wake)
    {
        schedule.lease_until = Some(from_micros(wake));
    }
    Ok(schedule)
}

const COLUMNS: &str = "tenant, id, revision, wake_us, record";

#[async_trait]
impl ScheduleStore for PgStore {
    async fn put_schedule(
        &self,
        schedule: &Schedule,
        expect: Expect,
        _durable: bool,
    ) -> StoreResult<PutSchedule> {
        self.call(async {
            let tenant = schedule.tenant.as_str();
            let mut next = schedule.clone();
            match expect {
                Expect::Absent { max_per_tenant } => {
                    next.revision = 1;
                    let mut tx = self.pool().begin().await.map_err(db)?;
                    // Creates in one tenant take turns, so that the count
                    // holds.
                    sqlx::query(
                        "SELECT pg_advisory_xact_lock(hashtext('longrun_schedules:' || $1))",
                    )
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    let count: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM longrun_schedules WHERE tenant = $1",
                    )
                    .bind(tenant)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
                    if count as u64 >= max_per_tenant {
                        return Ok(PutSchedule::OverLimit);
                    }
                    let inserted = sqlx::query(
                        "INSERT INTO longrun_schedules (tenant, id, revision, wake_us, record) \
                         VALUES ($1, $2, 1, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(tenant)
                    .bind(&next.id)
                    .bind(wake_us(&next))
                    .bind(encode(&next))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?
                    .rows_affected();
                    tx.commit().await.map_err(db)?;
                    Ok(if inserted == 1 {
                        PutSchedule::Stored(Box::new(next))
                    } else {
                        PutSchedule::Exists
                    })
                }
                Expect::Revision(revision) => {
                    next.revision = revision + 1;
                    let updated = sqlx::query(
                        "UPDATE longrun_schedules SET revision = $3, wake_us = $4, record = $5 \
                         WHERE tenant = $1 AND id = $2 AND revision = $6",
                    )
                    .bind(tenant)
                    .bind(&next.id)
                    .bind(next.revision as i64)
                    .bind(wake_us(&next))
                    .bind(encode(&next))
                    .bind(revision as i64)
                    .execute(self.pool())
                    .await
                    .map_err(db)?
                    .rows_affected();
                    if updated == 1 {
                        return Ok(PutSchedule::Stored(Box::new(next)));
                    }
                    let exists: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM longrun_schedules \
                         WHERE tenant = $1 AND id = $2)",
                    )
                    .bind(tenant)
                    .bind(&next.id)
                    .fetch_one(self.pool())
                    .await
                    .map_err(db)?;
                    Ok(if exists {
                        PutSchedule::Stale
                    } else {
                        PutSchedule::Missing
                    })
                }
            }
        })
        .await
    }

    async fn get_schedule(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<Schedule>> {
        self.call(async {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM longrun_schedules WHERE tenant = $1 AND id = $2"
            ))
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
            row.as_ref().map(schedule_of).transpose()
        })
        .await
    }

    async fn list_schedules(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Schedule>> {
        self.call(async {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM longrun_schedules WHERE tenant = $1 AND id > $2 \
                 ORDER BY id LIMIT $3"
            ))
            .bind(tenant.as_str())
            .bind(after.unwrap_or(""))
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            rows.iter().map(schedule_of).collect()
        })
        .await
    }

    async fn delete_schedule(&self, tenant: &Tenant, id: &str) -> StoreResult<bool> {
        self.call(async {
            let deleted =
                sqlx::query("DELETE FROM longrun_schedules WHERE tenant = $1 AND id = $2")
                    .bind(tenant.as_str())
                    .bind(id)
                    .execute(self.pool())
                    .await
                    .map_err(db)?
                    .rows_affected();
            Ok(deleted == 1)
        })
        .await
    }

    async fn take_due_schedules(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<Schedule>> {
        self.call(async {
            let rows = sqlx::query(
                "UPDATE longrun_schedules s SET revision = s.revision + 1, wake_us = $2 \
                 FROM (SELECT tenant, id FROM longrun_schedules \
                       WHERE wake_us <= $1 ORDER BY wake_us LIMIT $3 \
                       FOR UPDATE SKIP LOCKED) due \
                 WHERE s.tenant = due.tenant AND s.id = due.id \
                 RETURNING s.tenant, s.id, s.revision, s.wake_us, s.record",
            )
            .bind(to_micros(now))
            .bind(to_micros(until))
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
            let mut taken = rows
                .iter()
                .map(schedule_of)
                .collect::<StoreResult<Vec<_>>>()?;
            for schedule in &mut taken {
                schedule.lease_until = Some(until);
            }
            Ok(taken)
        })
        .await
    }

    async fn next_schedule_due(&self) -> StoreResult<Option<SystemTime>> {
        self.call(async {
            let wake: Option<i64> = sqlx::query_scalar(
                "SELECT min(wake_us) FROM longrun_schedules WHERE wake_us IS NOT NULL",
            )
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
            Ok(wake.map(from_micros))
        })
        .await
    }
}
