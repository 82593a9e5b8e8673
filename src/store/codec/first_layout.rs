//! Records as the first layout wrote them (the id, strings and absolute
//! times inline), for tests of reading and migrating old data directories.

use super::*;

/// An operation record with the id, strings and absolute times inline.
pub(crate) fn encode(op: &Operation) -> Vec<u8> {
    let (response, error) = match &op.outcome {
        None => (None, None),
        Some(Outcome::Response(p)) => (
            Some(StoredPayload {
                type_url: p.type_url.clone(),
                value: p.value.clone(),
                type_ref: 0,
            }),
            None,
        ),
        Some(Outcome::Error(e)) => (None, Some(store_error(e))),
    };
    StoredOperation {
        id: op.id.as_bytes().to_vec(),
        kind: op.kind.clone(),
        state: u32::from(op.state.as_u8()),
        attempt: op.attempt.get(),
        progress_percent: op.progress_percent,
        status_message: op.status_message.clone(),
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
        max_attempts: op.max_attempts,
        tenant: op.tenant.as_str().to_owned(),
        requested_cancellation: op.requested_cancellation,
        not_before_us: op.not_before.map(to_micros),
        last_error: op.last_error.as_ref().map(store_error),
        notification: op.notification.as_ref().map(|n| StoredNotification {
            callback_url: n.callback_url.clone(),
            states: n.states.iter().map(|s| u32::from(s.as_u8())).collect(),
        }),
        ..StoredOperation::default()
    }
    .encode_to_vec()
}

/// A delivery record, its snapshot in the first layout too.
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
        operation: Vec::new(),
    }
    .encode_to_vec()
}
