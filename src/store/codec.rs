//! The byte encoding of stored operations, shared by every backend that
//! stores records as blobs.
//!
//! It is a private protobuf message, so fields can be added later without
//! breaking data written by older versions.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::{StoreError, StoreResult};
use crate::model::order::{Order, OrderStatus};
use crate::model::{
    Code, Delivery, DeliveryState, Notification, Operation, OperationError, OperationId, Outcome,
    Payload, RequestId, State, Tenant,
};

#[derive(Clone, PartialEq, prost::Message)]
struct StoredOperation {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(string, tag = "2")]
    kind: String,
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
    create_time_us: i64,
    #[prost(int64, optional, tag = "9")]
    start_time_us: Option<i64>,
    #[prost(int64, tag = "10")]
    update_time_us: i64,
    #[prost(int64, optional, tag = "11")]
    end_time_us: Option<i64>,
    #[prost(string, tag = "12")]
    request_type_url: String,
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
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredNotification {
    #[prost(string, tag = "1")]
    callback_url: String,
    #[prost(uint32, repeated, tag = "2")]
    states: Vec<u32>,
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
}

/// Encodes an outbox entry.
pub(crate) fn encode_delivery(d: &Delivery) -> Vec<u8> {
    StoredDelivery {
        id: d.id.as_bytes().to_vec(),
        event: u32::from(d.event.as_u8()),
        snapshot: encode(&d.snapshot),
        callback_url: d.callback_url.clone(),
        create_time_us: to_micros(d.create_time),
        state: u32::from(d.state.as_u8()),
        attempts: d.attempts,
        next_attempt_us: d.next_attempt.map(to_micros),
        last_status_code: u32::from(d.last_status_code),
        last_error: d.last_error.clone(),
    }
    .encode_to_vec()
}

/// Decodes an outbox entry.
pub(crate) fn decode_delivery(bytes: &[u8]) -> StoreResult<Delivery> {
    let s = StoredDelivery::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let snapshot = decode(&s.snapshot)?;
    Ok(Delivery {
        id: uuid::Uuid::from_bytes(id16(&s.id, "delivery id")?),
        operation: snapshot.id,
        event: u8::try_from(s.event)
            .ok()
            .and_then(State::from_u8)
            .ok_or_else(|| corrupt("delivery event"))?,
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

#[derive(Clone, PartialEq, prost::Message)]
struct StoredPayload {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: bytes::Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredError {
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

fn to_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn from_micros(micros: i64) -> SystemTime {
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

/// Encodes an operation for storage.
pub(crate) fn encode(op: &Operation) -> Vec<u8> {
    let (response, error) = match &op.outcome {
        None => (None, None),
        Some(Outcome::Response(p)) => (
            Some(StoredPayload {
                type_url: p.type_url.clone(),
                value: p.value.clone(),
            }),
            None,
        ),
        Some(Outcome::Error(e)) => (None, Some(store_error(e))),
    };
    StoredOperation {
        id: op.id.as_bytes().to_vec(),
        kind: op.kind.clone(),
        state: u32::from(op.state.as_u8()),
        attempt: op.attempt,
        progress_percent: op.progress_percent,
        status_message: op.status_message.clone(),
        requested_cancellation: op.requested_cancellation,
        create_time_us: to_micros(op.create_time),
        start_time_us: op.start_time.map(to_micros),
        update_time_us: to_micros(op.update_time),
        end_time_us: op.end_time.map(to_micros),
        request_type_url: op.request.type_url.clone(),
        request_value: op.request.value.clone(),
        response,
        error,
        request_id: op.request_id.map(|r| r.as_bytes().to_vec()),
        request_digest: op.request_digest.to_vec(),
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
    }
    .encode_to_vec()
}

fn store_error(e: &OperationError) -> StoredError {
    StoredError {
        code: e.code.as_i32(),
        message: e.message.clone(),
        reason: e.reason.clone(),
        metadata: e.metadata.clone(),
    }
}

fn load_error(e: StoredError) -> StoreResult<OperationError> {
    Ok(OperationError {
        code: Code::from_i32(e.code).ok_or_else(|| corrupt("unknown error code"))?,
        message: e.message,
        reason: e.reason,
        metadata: e.metadata,
    })
}

/// Decodes a stored operation, refusing anything inconsistent.
pub(crate) fn decode(bytes: &[u8]) -> StoreResult<Operation> {
    let s = StoredOperation::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let state = u8::try_from(s.state)
        .ok()
        .and_then(State::from_u8)
        .ok_or_else(|| corrupt("unknown state"))?;
    let outcome = match (s.response, s.error) {
        (None, None) => None,
        (Some(p), None) => Some(Outcome::Response(Payload {
            type_url: p.type_url,
            value: p.value,
        })),
        (None, Some(e)) => Some(Outcome::Error(load_error(e)?)),
        (Some(_), Some(_)) => return Err(corrupt("both response and error are set")),
    };
    if outcome.is_some() != state.is_terminal() {
        return Err(corrupt("outcome does not match state"));
    }
    let digest: [u8; 32] = s
        .request_digest
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("request digest"))?;
    Ok(Operation {
        id: OperationId::from_bytes(id16(&s.id, "operation id")?),
        kind: s.kind,
        state,
        attempt: s.attempt,
        progress_percent: s.progress_percent,
        status_message: s.status_message,
        requested_cancellation: s.requested_cancellation,
        create_time: from_micros(s.create_time_us),
        start_time: s.start_time_us.map(from_micros),
        update_time: from_micros(s.update_time_us),
        end_time: s.end_time_us.map(from_micros),
        request: Payload {
            type_url: s.request_type_url,
            value: s.request_value,
        },
        outcome,
        request_id: match s.request_id {
            Some(r) => Some(RequestId::from_bytes(id16(&r, "request id")?)),
            None => None,
        },
        request_digest: digest,
        version: s.version,
        timeout: Duration::from_micros(s.timeout_us),
        not_before: s.not_before_us.map(from_micros),
        last_error: s.last_error.map(load_error).transpose()?,
        max_attempts: s.max_attempts,
        notification: match s.notification {
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
        },
        tenant: Tenant::from_stored(&s.tenant).map_err(StoreError::Corrupt)?,
    })
}
