//! [`ScheduleStore`] on sled: each schedule is one record (`h`) and, while
//! it is due at all, one key of the due index (`H`, by due time). One
//! writer at a time compares revisions and moves both in one batch. A
//! scheduler's hold is kept in memory, not written: this process is the
//! store's only scheduler, so a take writes nothing.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;

use super::commit::{backend, disk};
use super::{SledStore, keys, lock};
use crate::model::Tenant;
use crate::model::schedule::Schedule;
use crate::store::codec::to_micros;
use crate::store::schedules::{decode, encode, wake_us};
use crate::store::{Expect, PutSchedule, ScheduleStore, StoreResult};

/// The schedules held by a take, until when.
pub(super) type Held = HashMap<(Tenant, String), SystemTime>;

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
        let mut held = lock(&self.inner.schedules);
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
        // Holds live in memory alone.
        let lease = next.lease_until.take();
        self.write_schedule(stored.as_ref(), &next)?;
        if lease.is_none() {
            held.remove(&(next.tenant.clone(), next.id.clone()));
        }
        drop(held);
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
            let mut held = lock(&store.inner.schedules);
            let Some(stored) = store.read_schedule(&tenant, &id)? else {
                return Ok(false);
            };
            held.remove(&(tenant.clone(), id.clone()));
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
            let mut held = lock(&store.inner.schedules);
            held.retain(|_, end| *end > now);
            let end = keys::schedules_due_by(to_micros(now));
            let mut taken = Vec::new();
            for key in store.inner.tree.range(vec![keys::SCHEDULE_DUE]..end).keys() {
                if taken.len() == limit {
                    break;
                }
                let key = key.map_err(backend)?;
                let Some((tenant, id)) = keys::schedule_of_due(&key) else {
                    continue;
                };
                let hold = (tenant, id);
                if held.contains_key(&hold) {
                    continue;
                }
                let Some(mut schedule) = store.read_schedule(&hold.0, &hold.1)? else {
                    // An index key whose record is gone.
                    store.inner.tree.remove(&key).map_err(disk)?;
                    continue;
                };
                schedule.lease_until = Some(until);
                held.insert(hold, until);
                taken.push(schedule);
            }
            Ok(taken)
        })
        .await
        .map_err(backend)?
    }

    async fn next_schedule_due(&self) -> StoreResult<Option<SystemTime>> {
        let held = lock(&self.inner.schedules);
        // The first schedule not held, or the first hold to end.
        let mut soonest = held.values().min().copied();
        for key in self.inner.tree.scan_prefix([keys::SCHEDULE_DUE]).keys() {
            let key = key.map_err(backend)?;
            if keys::schedule_of_due(&key).is_some_and(|hold| held.contains_key(&hold)) {
                continue;
            }
            let due = keys::time_of(&key[1..]);
            soonest = match (soonest, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            break;
        }
        Ok(soonest)
    }
}
