//! Schedules as stored: what a schedule write expects to find and what it
//! did, and the byte encoding of a schedule record (a private protobuf
//! message, as for operations) that both backends keep.

use std::time::{Duration, SystemTime};

use prost::Message;

use super::codec::{
    StoredError, StoredNotification, from_micros, load_error, store_error, to_micros,
};
use super::{StoreError, StoreResult};
use crate::model::schedule::{Overlap, RunTemplate, Schedule, ScheduleRun};
use crate::model::{Notification, OperationId, Payload, State, Tenant, When};

/// What a schedule write expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No schedule of that id, and fewer than this many in the tenant.
    Absent { max_per_tenant: u64 },
    /// The schedule at this revision.
    Revision(u64),
}

/// What a schedule write did.
#[derive(Clone, Debug, PartialEq)]
pub enum PutSchedule {
    /// Stored, as it now is (at its new revision).
    Stored(Box<Schedule>),
    /// `Absent` found one of that id.
    Exists,
    /// `Absent` found the tenant at its limit.
    OverLimit,
    /// `Revision` found another revision.
    Stale,
    /// `Revision` found none.
    Missing,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredSchedule {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    payload_type: String,
    #[prost(bytes = "vec", tag = "3")]
    payload_value: Vec<u8>,
    #[prost(int32, tag = "4")]
    priority: i32,
    #[prost(string, optional, tag = "5")]
    concurrency_key: Option<String>,
    #[prost(uint64, optional, tag = "6")]
    start_delay_us: Option<u64>,
    #[prost(uint64, optional, tag = "7")]
    ttl_us: Option<u64>,
    #[prost(uint64, optional, tag = "8")]
    timeout_us: Option<u64>,
    #[prost(uint32, optional, tag = "9")]
    max_attempts: Option<u32>,
    #[prost(message, optional, tag = "10")]
    notification: Option<StoredNotification>,
    #[prost(string, tag = "11")]
    cron: String,
    #[prost(string, tag = "12")]
    zone: String,
    #[prost(uint64, tag = "13")]
    interval_us: u64,
    #[prost(uint64, tag = "14")]
    jitter_us: u64,
    #[prost(uint32, tag = "15")]
    overlap: u32,
    #[prost(uint64, tag = "16")]
    catch_up_window_us: u64,
    #[prost(bool, tag = "17")]
    catch_up_latest_only: bool,
    #[prost(bool, tag = "18")]
    paused: bool,
    #[prost(int64, tag = "19")]
    create_time_us: i64,
    #[prost(int64, tag = "20")]
    update_time_us: i64,
    #[prost(int64, optional, tag = "21")]
    next_tick_us: Option<i64>,
    #[prost(int64, optional, tag = "22")]
    buffered_us: Option<i64>,
    #[prost(int64, optional, tag = "23")]
    recheck_us: Option<i64>,
    #[prost(message, repeated, tag = "24")]
    recent: Vec<StoredRun>,
    #[prost(message, optional, tag = "25")]
    last_error: Option<StoredError>,
    #[prost(uint64, tag = "26")]
    skipped: u64,
    #[prost(uint64, tag = "27")]
    revision: u64,
    #[prost(int64, optional, tag = "28")]
    lease_until_us: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredRun {
    #[prost(bytes = "vec", tag = "1")]
    operation: Vec<u8>,
    #[prost(int64, tag = "2")]
    tick_us: i64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn overlap_number(overlap: Overlap) -> u32 {
    match overlap {
        Overlap::Skip => 0,
        Overlap::BufferOne => 1,
        Overlap::AllowAll => 2,
        Overlap::CancelPrevious => 3,
    }
}

/// Encodes a schedule (its tenant and id are the key).
pub(crate) fn encode(s: &Schedule) -> Vec<u8> {
    StoredSchedule {
        kind: s.kind.clone(),
        payload_type: s.payload.type_url.clone(),
        payload_value: s.payload.value.to_vec(),
        priority: s.run.priority,
        concurrency_key: s.run.concurrency_key.clone(),
        start_delay_us: s.run.start_delay.map(micros),
        ttl_us: s.run.ttl.map(micros),
        timeout_us: s.run.timeout.map(micros),
        max_attempts: s.run.max_attempts,
        notification: s.run.notification.as_ref().map(|n| StoredNotification {
            callback_url: n.callback_url.clone(),
            states: n.states.iter().map(|s| u32::from(s.as_u8())).collect(),
        }),
        cron: s.when.expression().unwrap_or_default().to_owned(),
        zone: s.when.zone().unwrap_or_default().to_owned(),
        interval_us: s.when.interval().map_or(0, micros),
        jitter_us: micros(s.jitter),
        overlap: overlap_number(s.overlap),
        catch_up_window_us: micros(s.catch_up_window),
        catch_up_latest_only: s.catch_up_latest_only,
        paused: s.paused,
        create_time_us: to_micros(s.create_time),
        update_time_us: to_micros(s.update_time),
        next_tick_us: s.next_tick.map(to_micros),
        buffered_us: s.buffered.map(to_micros),
        recheck_us: s.recheck.map(to_micros),
        recent: s
            .recent
            .iter()
            .map(|r| StoredRun {
                operation: r.operation.as_bytes().to_vec(),
                tick_us: to_micros(r.tick),
            })
            .collect(),
        last_error: s.last_error.as_ref().map(store_error),
        skipped: s.skipped,
        revision: s.revision,
        lease_until_us: s.lease_until.map(to_micros),
    }
    .encode_to_vec()
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// Decodes a schedule stored under `tenant` and `id`.
pub(crate) fn decode(tenant: Tenant, id: &str, bytes: &[u8]) -> StoreResult<Schedule> {
    let s = StoredSchedule::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    let when = if s.cron.is_empty() {
        When::every(Duration::from_micros(s.interval_us))
    } else {
        When::stored_cron(&s.cron, &s.zone)
    }
    .map_err(|e| corrupt(format!("schedule {id}: {}", e.message)))?;
    let overlap = match s.overlap {
        0 => Overlap::Skip,
        1 => Overlap::BufferOne,
        2 => Overlap::AllowAll,
        3 => Overlap::CancelPrevious,
        _ => return Err(corrupt("unknown overlap policy")),
    };
    let notification = match s.notification {
        Some(n) => Some(Notification {
            callback_url: n.callback_url,
            states: n
                .states
                .into_iter()
                .map(|v| {
                    u8::try_from(v)
                        .ok()
                        .and_then(State::from_u8)
                        .ok_or_else(|| corrupt("notification state"))
                })
                .collect::<StoreResult<_>>()?,
        }),
        None => None,
    };
    let recent = s
        .recent
        .into_iter()
        .map(|r| {
            let bytes: [u8; 16] = r
                .operation
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("schedule run id"))?;
            Ok(ScheduleRun {
                operation: OperationId::from_bytes(bytes),
                tick: from_micros(r.tick_us),
            })
        })
        .collect::<StoreResult<_>>()?;
    Ok(Schedule {
        tenant,
        id: id.to_owned(),
        kind: s.kind,
        payload: Payload {
            type_url: s.payload_type,
            value: s.payload_value.into(),
        },
        run: RunTemplate {
            priority: s.priority,
            concurrency_key: s.concurrency_key,
            start_delay: s.start_delay_us.map(Duration::from_micros),
            ttl: s.ttl_us.map(Duration::from_micros),
            timeout: s.timeout_us.map(Duration::from_micros),
            max_attempts: s.max_attempts,
            notification,
        },
        when,
        jitter: Duration::from_micros(s.jitter_us),
        overlap,
        catch_up_window: Duration::from_micros(s.catch_up_window_us),
        catch_up_latest_only: s.catch_up_latest_only,
        paused: s.paused,
        create_time: from_micros(s.create_time_us),
        update_time: from_micros(s.update_time_us),
        next_tick: s.next_tick_us.map(from_micros),
        buffered: s.buffered_us.map(from_micros),
        recheck: s.recheck_us.map(from_micros),
        recent,
        last_error: s.last_error.map(load_error).transpose()?,
        skipped: s.skipped,
        revision: s.revision,
        lease_until: s.lease_until_us.map(from_micros),
    })
}

/// The time a schedule is indexed under, in microseconds: when a
/// scheduler may next take it (its due time, or its lease's end if that
/// is later); None when it is not due at all (paused, or its clock ended).
pub(crate) fn wake_us(s: &Schedule) -> Option<i64> {
    let due = s.due()?;
    let wake: SystemTime = match s.lease_until {
        Some(lease) if lease > due => lease,
        _ => due,
    };
    Some(to_micros(wake))
}
