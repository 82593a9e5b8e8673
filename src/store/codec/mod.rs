//! The byte encoding of stored records, for backends that store records as
//! blobs.
//!
//! Records are private protobuf messages, so fields can be added without
//! breaking data written by older versions. To keep them small, the id is
//! left out (it is the key), the long strings every record repeats (the
//! kind and the type URLs) are stored as numbers from a [`Strings`] table,
//! times after the creation time are stored as offsets from it, and the
//! request digest is kept only when a request_id needs it. Records written
//! before that (with the id, the strings and absolute times inline) still
//! decode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

mod batch;
use batch::{StoredRollup, StoredTally, load_rollup, load_tally, store_rollup, store_tally};

use super::{StoreError, StoreResult};
use crate::model::operation::ScheduleTick;
use crate::model::order::{Order, OrderStatus};
use crate::model::{
    Attempt, Code, Delivery, DeliveryState, FailedAttempt, Lease, Notification, Operation,
    OperationError, OperationId, Outcome, Payload, RequestId, State, Tenant, TraceContext,
};

/// Numbers for the strings records repeat.
pub(crate) trait Strings {
    /// The number of `text`, giving it one if it has none yet. Numbers
    /// start at 1.
    fn intern(&mut self, text: &str) -> u32;
    /// The string numbered `number`.
    fn resolve(&self, number: u32) -> Option<Arc<str>>;
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredOperation {
    /// Written by the first layout only; the key holds it now.
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) id: Vec<u8>,
    /// Written by the first layout only; now `kind_ref`.
    #[prost(string, tag = "2")]
    pub(crate) kind: String,
    #[prost(uint32, tag = "3")]
    state: u32,
    #[prost(uint32, tag = "4")]
    attempt: u32,
    #[prost(uint32, tag = "5")]
    progress_percent: u32,
    #[prost(string, tag = "6")]
    status_message: String,
    #[prost(bool, tag = "7")]
    requested_cancellation: bool,
    #[prost(int64, tag = "8")]
    pub(crate) create_time_us: i64,
    /// The first layout's absolute times; now the `_after_us` offsets.
    #[prost(int64, optional, tag = "9")]
    start_time_us: Option<i64>,
    #[prost(int64, tag = "10")]
    update_time_us: i64,
    #[prost(int64, optional, tag = "11")]
    end_time_us: Option<i64>,
    /// Written by the first layout only; now `request_type_ref`.
    #[prost(string, tag = "12")]
    pub(crate) request_type_url: String,
    #[prost(bytes = "bytes", tag = "13")]
    request_value: bytes::Bytes,
    #[prost(message, optional, tag = "14")]
    response: Option<StoredPayload>,
    #[prost(message, optional, tag = "15")]
    error: Option<StoredError>,
    #[prost(bytes = "vec", optional, tag = "16")]
    request_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", tag = "17")]
    request_digest: Vec<u8>,
    #[prost(uint64, tag = "18")]
    version: u64,
    #[prost(uint64, tag = "19")]
    timeout_us: u64,
    #[prost(int64, optional, tag = "20")]
    not_before_us: Option<i64>,
    #[prost(message, optional, tag = "21")]
    last_error: Option<StoredError>,
    #[prost(uint32, tag = "22")]
    max_attempts: u32,
    #[prost(message, optional, tag = "23")]
    notification: Option<StoredNotification>,
    #[prost(string, tag = "24")]
    tenant: String,
    #[prost(uint32, tag = "25")]
    kind_ref: u32,
    #[prost(uint32, tag = "26")]
    request_type_ref: u32,
    #[prost(sint64, optional, tag = "27")]
    start_after_us: Option<i64>,
    #[prost(sint64, tag = "28")]
    update_after_us: i64,
    #[prost(sint64, optional, tag = "29")]
    end_after_us: Option<i64>,
    #[prost(message, optional, tag = "30")]
    lease: Option<StoredLease>,
    #[prost(message, repeated, tag = "31")]
    failed_attempts: Vec<StoredAttempt>,
    #[prost(uint64, optional, tag = "32")]
    expected_run_us: Option<u64>,
    #[prost(sint64, optional, tag = "33")]
    expected_start_after_us: Option<i64>,
    #[prost(string, optional, tag = "34")]
    holder: Option<String>,
    #[prost(uint32, tag = "35")]
    stops: u32,
    #[prost(sint32, tag = "36")]
    priority: i32,
    #[prost(string, optional, tag = "37")]
    concurrency_key: Option<String>,
    #[prost(uint32, tag = "38")]
    holds: u32,
    #[prost(sint64, optional, tag = "39")]
    scheduled_start_after_us: Option<i64>,
    #[prost(sint64, optional, tag = "40")]
    expire_after_us: Option<i64>,
    #[prost(string, optional, tag = "41")]
    schedule: Option<String>,
    #[prost(sint64, optional, tag = "42")]
    scheduled_tick_us: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "43")]
    parent: Option<Vec<u8>>,
    #[prost(message, optional, tag = "44")]
    batch: Option<StoredRollup>,
    #[prost(message, optional, tag = "45")]
    bulk: Option<StoredTally>,
    #[prost(message, optional, tag = "46")]
    trace: Option<StoredTrace>,
}

/// An operation's trace context.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredTrace {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(bool, tag = "3")]
    sampled: bool,
    #[prost(string, tag = "4")]
    state: String,
}

/// An attempt that ended without ending its operation; times are offsets
/// from the operation's creation.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredAttempt {
    #[prost(uint32, tag = "1")]
    attempt: u32,
    #[prost(sint64, optional, tag = "2")]
    start_after_us: Option<i64>,
    #[prost(sint64, tag = "3")]
    end_after_us: i64,
    #[prost(message, optional, tag = "4")]
    error: Option<StoredError>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredLease {
    #[prost(string, tag = "1")]
    holder: String,
    #[prost(int64, tag = "2")]
    expires_us: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredNotification {
    #[prost(string, tag = "1")]
    pub(super) callback_url: String,
    #[prost(uint32, repeated, tag = "2")]
    pub(super) states: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredPayload {
    /// Written by the first layout only; now `type_ref`.
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: bytes::Bytes,
    #[prost(uint32, tag = "3")]
    type_ref: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredError {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(string, tag = "3")]
    reason: String,
    #[prost(btree_map = "string, string", tag = "4")]
    metadata: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredDelivery {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    event: u32,
    #[prost(bytes = "vec", tag = "3")]
    snapshot: Vec<u8>,
    #[prost(string, tag = "4")]
    callback_url: String,
    #[prost(int64, tag = "5")]
    create_time_us: i64,
    #[prost(uint32, tag = "6")]
    state: u32,
    #[prost(uint32, tag = "7")]
    attempts: u32,
    #[prost(int64, optional, tag = "8")]
    next_attempt_us: Option<i64>,
    #[prost(uint32, tag = "9")]
    last_status_code: u32,
    #[prost(string, tag = "10")]
    last_error: String,
    /// The operation's id; the snapshot leaves it out.
    #[prost(bytes = "vec", tag = "11")]
    operation: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredOrder {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(int64, tag = "2")]
    created_at_us: i64,
    #[prost(string, tag = "3")]
    customer_id: String,
    #[prost(uint32, tag = "4")]
    status: u32,
    #[prost(int64, tag = "5")]
    amount_cents: i64,
}

pub(crate) fn to_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_micros(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn id16(bytes: &[u8], what: &str) -> StoreResult<[u8; 16]> {
    bytes.try_into().map_err(|_| corrupt(what))
}

fn state_of(value: u32, what: &str) -> StoreResult<State> {
    u8::try_from(value)
        .ok()
        .and_then(State::from_u8)
        .ok_or_else(|| corrupt(what))
}

/// A string stored inline (first layout) or by number.
fn text(inline: String, number: u32, strings: &impl Strings, what: &str) -> StoreResult<String> {
    if number == 0 {
        return Ok(inline);
    }
    strings
        .resolve(number)
        .map(|s| s.to_string())
        .ok_or_else(|| corrupt(what))
}

pub(super) fn store_error(e: &OperationError) -> StoredError {
    StoredError {
        code: e.code.as_i32(),
        message: e.message.clone(),
        reason: e.reason.clone(),
        metadata: e.metadata.clone(),
    }
}

pub(super) fn load_error(e: StoredError) -> StoreResult<OperationError> {
    Ok(OperationError {
        code: Code::from_i32(e.code).ok_or_else(|| corrupt("unknown error code"))?,
        message: e.message,
        reason: e.reason,
        metadata: e.metadata,
    })
}

/// Strings kept inline in every record, for a backend without a string
/// table (its records are decoded the way the first layout's are).
pub(crate) struct Inline;

impl Strings for Inline {
    fn intern(&mut self, _text: &str) -> u32 {
        0
    }

    fn resolve(&self, _number: u32) -> Option<Arc<str>> {
        None
    }
}

/// The text to store inline: none when the string table numbered it.
fn inline(number: u32, text: &str) -> String {
    if number == 0 {
        text.to_owned()
    } else {
        String::new()
    }
}

/// Encodes an operation (without its id, which is the key).
pub(crate) fn encode(op: &Operation, strings: &mut impl Strings) -> Vec<u8> {
    let (response, error) = match &op.outcome {
        None => (None, None),
        Some(Outcome::Response(p)) => (
            Some({
                let type_ref = strings.intern(&p.type_url);
                StoredPayload {
                    type_url: inline(type_ref, &p.type_url),
                    value: p.value.clone(),
                    type_ref,
                }
            }),
            None,
        ),
        Some(Outcome::Error(e)) => (None, Some(store_error(e))),
    };
    let created = to_micros(op.create_time);
    let after = |time: SystemTime| to_micros(time) - created;
    let kind_ref = strings.intern(&op.kind);
    let request_type_ref = strings.intern(&op.request.type_url);
    StoredOperation {
        state: u32::from(op.state.as_u8()),
        attempt: op.attempt.get(),
        progress_percent: op.progress_percent,
        status_message: op.status_message.clone(),
        requested_cancellation: op.requested_cancellation,
        create_time_us: created,
        start_after_us: op.start_time.map(after),
        update_after_us: after(op.update_time),
        end_after_us: op.end_time.map(after),
        request_value: op.request.value.clone(),
        response,
        error,
        request_id: op.request_id.map(|r| r.as_bytes().to_vec()),
        request_digest: if op.request_id.is_some() {
            op.request_digest.to_vec()
        } else {
            Vec::new()
        },
        version: op.version,
        timeout_us: u64::try_from(op.timeout.as_micros()).unwrap_or(u64::MAX),
        not_before_us: op.not_before.map(to_micros),
        last_error: op.last_error.as_ref().map(store_error),
        max_attempts: op.max_attempts,
        notification: op.notification.as_ref().map(|n| StoredNotification {
            callback_url: n.callback_url.clone(),
            states: n.states.iter().map(|s| u32::from(s.as_u8())).collect(),
        }),
        tenant: op.tenant.as_str().to_owned(),
        kind_ref,
        kind: inline(kind_ref, &op.kind),
        request_type_ref,
        request_type_url: inline(request_type_ref, &op.request.type_url),
        lease: op.lease.as_ref().map(|l| StoredLease {
            holder: l.holder.clone(),
            expires_us: to_micros(l.expires),
        }),
        failed_attempts: op
            .failed_attempts
            .iter()
            .map(|a| StoredAttempt {
                attempt: a.attempt.get(),
                start_after_us: a.start_time.map(after),
                end_after_us: after(a.end_time),
                error: Some(store_error(&a.error)),
            })
            .collect(),
        expected_run_us: op
            .expected_run
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        expected_start_after_us: op.expected_start.map(after),
        holder: op.holder.clone(),
        stops: op.stops,
        priority: op.priority,
        concurrency_key: op.concurrency_key.clone(),
        holds: u32::from(op.holds.bits()),
        scheduled_start_after_us: op.scheduled_start.map(after),
        expire_after_us: op.expire_time.map(after),
        schedule: op.schedule.as_ref().map(|s| s.id.clone()),
        scheduled_tick_us: op.schedule.as_ref().map(|s| to_micros(s.tick)),
        parent: op.parent.map(|p| p.as_bytes().to_vec()),
        batch: op.batch.as_deref().map(store_rollup),
        bulk: op.bulk.as_deref().map(store_tally),
        trace: op.trace.as_deref().map(|t| StoredTrace {
            trace_id: t.trace_id.to_vec(),
            span_id: t.span_id.to_vec(),
            sampled: t.sampled,
            state: t.state.clone(),
        }),
        ..StoredOperation::default()
    }
    .encode_to_vec()
}

/// Decodes the stored operation `id`, refusing anything inconsistent.
pub(crate) fn decode(
    id: OperationId,
    bytes: &[u8],
    strings: &impl Strings,
) -> StoreResult<Operation> {
    let s = StoredOperation::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    from_stored(id, s, strings)
}

pub(crate) fn from_stored(
    id: OperationId,
    s: StoredOperation,
    strings: &impl Strings,
) -> StoreResult<Operation> {
    let state = state_of(s.state, "unknown state")?;
    let outcome = match (s.response, s.error) {
        (None, None) => None,
        (Some(p), None) => Some(Outcome::Response(Payload {
            type_url: text(p.type_url, p.type_ref, strings, "response type")?,
            value: p.value,
        })),
        (None, Some(e)) => Some(Outcome::Error(load_error(e)?)),
        (Some(_), Some(_)) => return Err(corrupt("both response and error are set")),
    };
    if outcome.is_some() != state.is_terminal() {
        return Err(corrupt("outcome does not match state"));
    }
    let request_digest: [u8; 32] = match s.request_digest.len() {
        0 => [0; 32],
        _ => s
            .request_digest
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("request digest"))?,
    };
    let created = s.create_time_us;
    // Offsets from the creation time, or (first layout) absolute times.
    let time = |offset: Option<i64>, absolute: Option<i64>| match offset {
        Some(offset) => Some(from_micros(created + offset)),
        None => absolute.map(from_micros),
    };
    Ok(Operation {
        id,
        kind: text(s.kind, s.kind_ref, strings, "kind")?,
        state,
        attempt: Attempt::new(s.attempt),
        progress_percent: s.progress_percent,
        status_message: s.status_message,
        requested_cancellation: s.requested_cancellation,
        create_time: from_micros(created),
        start_time: time(s.start_after_us, s.start_time_us),
        // The first layout's absolute time, never written since.
        update_time: if s.update_time_us != 0 {
            from_micros(s.update_time_us)
        } else {
            from_micros(created + s.update_after_us)
        },
        end_time: time(s.end_after_us, s.end_time_us),
        request: Payload {
            type_url: text(
                s.request_type_url,
                s.request_type_ref,
                strings,
                "request type",
            )?,
            value: s.request_value,
        },
        outcome,
        request_id: match s.request_id {
            Some(r) => Some(RequestId::from_bytes(id16(&r, "request id")?)),
            None => None,
        },
        request_digest,
        version: s.version,
        timeout: Duration::from_micros(s.timeout_us),
        not_before: s.not_before_us.map(from_micros),
        last_error: s.last_error.map(load_error).transpose()?,
        failed_attempts: s
            .failed_attempts
            .into_iter()
            .map(|a| {
                Ok(FailedAttempt {
                    attempt: Attempt::new(a.attempt),
                    start_time: a.start_after_us.map(|o| from_micros(created + o)),
                    end_time: from_micros(created + a.end_after_us),
                    error: load_error(
                        a.error
                            .ok_or_else(|| corrupt("an attempt without its error"))?,
                    )?,
                })
            })
            .collect::<StoreResult<_>>()?,
        max_attempts: s.max_attempts,
        expected_run: s.expected_run_us.map(Duration::from_micros),
        expected_start: s.expected_start_after_us.map(|o| from_micros(created + o)),
        holder: s.holder,
        stops: s.stops,
        priority: s.priority,
        concurrency_key: s.concurrency_key,
        holds: crate::model::Holds::from_bits(u8::try_from(s.holds).unwrap_or(0)),
        scheduled_start: s.scheduled_start_after_us.map(|o| from_micros(created + o)),
        expire_time: s.expire_after_us.map(|o| from_micros(created + o)),
        schedule: match (s.schedule, s.scheduled_tick_us) {
            (Some(id), Some(tick)) => Some(ScheduleTick {
                id,
                tick: from_micros(tick),
            }),
            _ => None,
        },
        parent: match s.parent {
            Some(bytes) => Some(OperationId::from_bytes(id16(&bytes, "a parent's id")?)),
            None => None,
        },
        batch: match s.batch {
            Some(r) => Some(Box::new(load_rollup(r)?)),
            None => None,
        },
        bulk: match s.bulk {
            Some(t) => Some(Box::new(load_tally(t)?)),
            None => None,
        },
        trace: match s.trace {
            Some(t) => Some(Box::new(TraceContext {
                trace_id: t.trace_id.try_into().map_err(|_| corrupt("a trace id"))?,
                span_id: t.span_id.try_into().map_err(|_| corrupt("a span id"))?,
                sampled: t.sampled,
                state: t.state,
            })),
            None => None,
        },
        notification: match s.notification {
            Some(n) => Some(Notification {
                callback_url: n.callback_url,
                states: n
                    .states
                    .into_iter()
                    .map(|v| state_of(v, "notification state"))
                    .collect::<StoreResult<_>>()?,
            }),
            None => None,
        },
        tenant: Tenant::from_stored(&s.tenant).map_err(StoreError::Corrupt)?,
        lease: s.lease.map(|l| Lease {
            holder: l.holder,
            expires: from_micros(l.expires_us),
        }),
    })
}

/// Encodes an outbox entry.
pub(crate) fn encode_delivery(d: &Delivery, strings: &mut impl Strings) -> Vec<u8> {
    StoredDelivery {
        id: d.id.as_bytes().to_vec(),
        event: u32::from(d.event.as_u8()),
        snapshot: encode(&d.snapshot, strings),
        callback_url: d.callback_url.clone(),
        create_time_us: to_micros(d.create_time),
        state: u32::from(d.state.as_u8()),
        attempts: d.attempts,
        next_attempt_us: d.next_attempt.map(to_micros),
        last_status_code: u32::from(d.last_status_code),
        last_error: d.last_error.clone(),
        operation: d.operation.as_bytes().to_vec(),
    }
    .encode_to_vec()
}

/// Decodes an outbox entry.
pub(crate) fn decode_delivery(bytes: &[u8], strings: &impl Strings) -> StoreResult<Delivery> {
    let s = StoredDelivery::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let snapshot = StoredOperation::decode(s.snapshot.as_slice())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // The first layout kept the id in the snapshot, not beside it.
    let operation = OperationId::from_bytes(id16(
        if s.operation.is_empty() {
            &snapshot.id
        } else {
            &s.operation
        },
        "delivery operation",
    )?);
    let snapshot = from_stored(operation, snapshot, strings)?;
    Ok(Delivery {
        id: uuid::Uuid::from_bytes(id16(&s.id, "delivery id")?),
        operation,
        event: state_of(s.event, "delivery event")?,
        snapshot,
        callback_url: s.callback_url,
        create_time: from_micros(s.create_time_us),
        state: u8::try_from(s.state)
            .ok()
            .and_then(DeliveryState::from_u8)
            .ok_or_else(|| corrupt("delivery state"))?,
        attempts: s.attempts,
        next_attempt: s.next_attempt_us.map(from_micros),
        last_status_code: u16::try_from(s.last_status_code).unwrap_or(0),
        last_error: s.last_error,
    })
}

/// Encodes an order for storage.
pub(crate) fn encode_order(order: &Order) -> Vec<u8> {
    StoredOrder {
        order_id: order.order_id.clone(),
        created_at_us: order.created_at,
        customer_id: order.customer_id.clone(),
        status: u32::from(order.status.as_u8()),
        amount_cents: order.amount_cents,
    }
    .encode_to_vec()
}

/// Decodes a stored order.
pub(crate) fn decode_order(bytes: &[u8]) -> StoreResult<Order> {
    let s = StoredOrder::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Order {
        order_id: s.order_id,
        created_at: s.created_at_us,
        customer_id: s.customer_id,
        status: u8::try_from(s.status)
            .ok()
            .and_then(OrderStatus::from_u8)
            .ok_or_else(|| corrupt("unknown order status"))?,
        amount_cents: s.amount_cents,
    })
}

/// Records as the first layout wrote them, for tests of reading and
/// migrating old data directories.
#[cfg(test)]
pub(crate) mod first_layout;
