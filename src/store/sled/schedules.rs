//! [`ScheduleStore`] on sled: each schedule is one record (`h`) and, while
//! it is due at all, one key of the due index (`H`, by wake time). One
//! writer at a time compares revisions and moves both in one batch.

use std::time::SystemTime;

use async_trait::async_trait;

use super::commit::{backend, disk};
use super::{SledStore, keys, lock};
use crate::model::Tenant;
use crate::model::schedule::Schedule;
use crate::store::codec::to_micros;
use crate::store::schedules::{decode, encode, wake_us};
use crate::store::{Expect, PutSchedule, ScheduleStore, StoreResult};

impl SledStore {
    fn read_schedule(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<Schedule>> {
        match self
            .inner
            .tree
            .get(keys::schedule(tenant, id))
            .map_err(backend)?
        {
            Some(bytes) => decode(tenant.clone(), id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `next` in place of `previous` (record and due index) in one
    /// batch. The caller holds the schedule writer's lock.
    fn write_schedule(&self, previous: Option<&Schedule>, next: &Schedule) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        if let Some(wake) = previous.and_then(wake_us) {
            batch.remove(keys::schedule_due(wake, &next.tenant, &next.id));
        }
        if let Some(wake) = wake_us(next) {
            batch.insert(keys::schedule_due(wake, &next.tenant, &next.id), &[]);
        }
        batch.insert(keys::schedule(&next.tenant, &next.id), encode(next));
        self.inner.tree.apply_batch(batch).map_err(disk)
    }

    fn put_blocking(
        &self,
        schedule: &Schedule,
        expect: Expect,
        durable: bool,
    ) -> StoreResult<PutSchedule> {
        let _writer = lock(&self.inner.schedules_writer);
        let stored = self.read_schedule(&schedule.tenant, &schedule.id)?;
        let revision = match (expect, &stored) {
            (Expect::Absent { .. }, Some(_)) => return Ok(PutSchedule::Exists),
            (Expect::Absent { max_per_tenant }, None) => {
                let count = self
                    .inner
                    .tree
                    .scan_prefix(keys::schedules_of(&schedule.tenant))
                    .keys()
                    .take(usize::try_from(max_per_tenant).unwrap_or(usize::MAX))
                    .count() as u64;
                if count >= max_per_tenant {
                    return Ok(PutSchedule::OverLimit);
                }
                1
            }
            (Expect::Revision(_), None) => return Ok(PutSchedule::Missing),
            (Expect::Revision(r), Some(s)) if s.revision != r => return Ok(PutSchedule::Stale),
            (Expect::Revision(r), Some(_)) => r + 1,
        };
        let mut next = schedule.clone();
        next.revision = revision;
        self.write_schedule(stored.as_ref(), &next)?;
        if durable {
            self.sync()?;
        }
        Ok(PutSchedule::Stored(Box::new(next)))
    }
}

#[async_trait]
impl ScheduleStore for SledStore {
    async fn put_schedule(
        &self,
        schedule: &Schedule,
        expect: Expect,
        durable: bool,
    ) -> StoreResult<PutSchedule> {
        let store = self.clone();
        let schedule = schedule.clone();
        tokio::task::spawn_blocking(move || store.put_blocking(&schedule, expect, durable))
            .await
            .map_err(backend)?
    }

    async fn get_schedule(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<Schedule>> {
        self.read_schedule(tenant, id)
    }

    async fn list_schedules(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Schedule>> {
        let prefix = keys::schedules_of(tenant);
        let start = match after {
            // Just past `after`: its key with a zero byte appended.
            Some(id) => {
                let mut key = keys::schedule(tenant, id);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let mut found = Vec::new();
        for entry in self.inner.tree.range(start..) {
            let (key, value) = entry.map_err(backend)?;
            if !key.starts_with(&prefix) || found.len() == limit {
                break;
            }
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            found.push(decode(tenant.clone(), &id, &value)?);
        }
        Ok(found)
    }

    async fn delete_schedule(&self, tenant: &Tenant, id: &str) -> StoreResult<bool> {
        let store = self.clone();
        let (tenant, id) = (tenant.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || {
            let _writer = lock(&store.inner.schedules_writer);
            let Some(stored) = store.read_schedule(&tenant, &id)? else {
                return Ok(false);
            };
            let mut batch = sled::Batch::default();
            if let Some(wake) = wake_us(&stored) {
                batch.remove(keys::schedule_due(wake, &tenant, &id));
            }
            batch.remove(keys::schedule(&tenant, &id));
            store.inner.tree.apply_batch(batch).map_err(disk)?;
            store.sync()?;
            Ok(true)
        })
        .await
        .map_err(backend)?
    }

    async fn take_due_schedules(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<Schedule>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _writer = lock(&store.inner.schedules_writer);
            let end = keys::schedules_due_by(to_micros(now));
            let mut taken = Vec::new();
            let due: Vec<_> = store
                .inner
                .tree
                .range(vec![keys::SCHEDULE_DUE]..end)
                .keys()
                .take(limit)
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            for key in due {
                let Some((tenant, id)) = keys::schedule_of_due(&key) else {
                    continue;
                };
                let Some(stored) = store.read_schedule(&tenant, &id)? else {
                    // An index key whose record is gone: drop it.
                    store.inner.tree.remove(key).map_err(disk)?;
                    continue;
                };
                let mut held = stored.clone();
                held.lease_until = Some(until);
                held.revision += 1;
                store.write_schedule(Some(&stored), &held)?;
                taken.push(held);
            }
            Ok(taken)
        })
        .await
        .map_err(backend)?
    }

    async fn next_schedule_due(&self) -> StoreResult<Option<SystemTime>> {
        let first = self
            .inner
            .tree
            .scan_prefix([keys::SCHEDULE_DUE])
            .keys()
            .next()
            .transpose()
            .map_err(backend)?;
        Ok(first.and_then(|key| keys::time_of(&key[1..])))
    }
}
