//! Key layouts of the sled trees, in one place.
//!
//! Ids are 16-byte UUIDv7s, so key order is creation order; times are 8
//! big-endian bytes of microseconds, so byte order is time order.

use std::time::SystemTime;

use crate::model::order::{Month, Order};
use crate::model::{Operation, OperationId, Tenant};

/// A time as 8 big-endian bytes of microseconds.
pub(super) fn time_key(time: SystemTime) -> [u8; 8] {
    let micros = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    micros.to_be_bytes()
}

/// The inverse of [`time_key`].
pub(super) fn time_of(key: &[u8]) -> Option<SystemTime> {
    let micros = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros))
}

/// The `expiry` key of a done operation: end time, then id.
pub(super) fn expiry(op: &Operation) -> Option<[u8; 24]> {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&time_key(op.end_time?));
    key[8..].copy_from_slice(op.id.as_bytes());
    Some(key)
}

/// The id at the end of an `expiry` key.
pub(super) fn expiry_id(key: &[u8]) -> Option<OperationId> {
    Some(OperationId::from_bytes(key.get(8..24)?.try_into().ok()?))
}

/// The `request_ids` key of an operation: its key's 16 bytes, then its
/// tenant's name, so that tenants never share idempotency keys. (The
/// default tenant's keys are the bare 16 bytes.)
pub(super) fn request_id(op: &Operation) -> Option<Vec<u8>> {
    let request_id = op.request_id?;
    let tenant = op.tenant.as_str();
    let mut key = Vec::with_capacity(16 + tenant.len());
    key.extend_from_slice(request_id.as_bytes());
    key.extend_from_slice(tenant.as_bytes());
    Some(key)
}

/// The `by_tenant` key of an operation; None for the default tenant, which
/// is only ever listed whole.
pub(super) fn by_tenant(op: &Operation) -> Option<Vec<u8>> {
    if op.tenant.is_default() {
        return None;
    }
    let mut key = tenant_prefix(&op.tenant);
    key.extend_from_slice(op.id.as_bytes());
    Some(key)
}

/// Where a tenant's `by_tenant` keys start: the name and a zero byte
/// (which no tenant name contains).
pub(super) fn tenant_prefix(tenant: &Tenant) -> Vec<u8> {
    let name = tenant.as_str();
    let mut key = Vec::with_capacity(name.len() + 17);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// Keys of the `outbox` tree:
/// - `d` delivery id: the delivery;
/// - `q` due time(8) delivery id: pending deliveries by due time;
/// - `o` operation id delivery id: deliveries by operation.
pub(super) mod outbox {
    use crate::model::{Delivery, OperationId};

    pub(in crate::store::sled) fn record(d: &Delivery) -> Vec<u8> {
        [b"d".as_slice(), d.id.as_bytes()].concat()
    }

    pub(in crate::store::sled) fn due(d: &Delivery) -> Option<Vec<u8>> {
        let at = d.next_attempt?;
        Some([b"q".as_slice(), &super::time_key(at), d.id.as_bytes()].concat())
    }

    /// Every `q` key due by `now`, and none after: the end of a range.
    pub(in crate::store::sled) fn due_by(now: std::time::SystemTime) -> Vec<u8> {
        [b"q".as_slice(), &super::time_key(now), &[0xff; 16]].concat()
    }

    pub(in crate::store::sled) fn by_operation(d: &Delivery) -> Vec<u8> {
        [operation_prefix(d.operation).as_slice(), d.id.as_bytes()].concat()
    }

    /// The prefix of an operation's `o` keys.
    pub(in crate::store::sled) fn operation_prefix(id: OperationId) -> Vec<u8> {
        [b"o".as_slice(), id.as_bytes()].concat()
    }

    /// The record key a `q` or `o` index key points at: both end with the
    /// delivery id.
    pub(in crate::store::sled) fn record_of(index_key: &[u8]) -> Vec<u8> {
        [b"d".as_slice(), &index_key[index_key.len() - 16..]].concat()
    }

    /// The due time of a `q` key.
    pub(in crate::store::sled) fn due_time(key: &[u8]) -> Option<std::time::SystemTime> {
        super::time_of(key.get(1..)?)
    }
}

/// Keys of an orders tree. Three kinds share it, so that one sled batch
/// updates them together:
/// - `m` month(6) created_at(8) order_id: the order;
/// - `i` order_id: the `m` key the order is stored under;
/// - `c` month(6): how many orders the month has (u64, big-endian).
pub(super) mod orders {
    use super::{Month, Order};

    pub(in crate::store::sled) fn order(order: &Order) -> Vec<u8> {
        let mut key = Vec::with_capacity(15 + order.order_id.len());
        key.push(b'm');
        key.extend_from_slice(&order.month().key());
        // Flipping the sign bit makes signed times sort as unsigned bytes.
        key.extend_from_slice(&((order.created_at as u64) ^ (1 << 63)).to_be_bytes());
        key.extend_from_slice(order.order_id.as_bytes());
        key
    }

    pub(in crate::store::sled) fn month_start(month: Month) -> Vec<u8> {
        let mut key = vec![b'm'];
        key.extend_from_slice(&month.key());
        key
    }

    pub(in crate::store::sled) fn by_id(order_id: &str) -> Vec<u8> {
        let mut key = vec![b'i'];
        key.extend_from_slice(order_id.as_bytes());
        key
    }

    pub(in crate::store::sled) fn count(month_key: &[u8]) -> Vec<u8> {
        let mut key = vec![b'c'];
        key.extend_from_slice(month_key);
        key
    }

    /// The month part of an `m` key.
    pub(in crate::store::sled) fn month_of(order_key: &[u8]) -> &[u8] {
        &order_key[1..7]
    }

    /// The name of `tenant`'s order tree; the default tenant has the
    /// original `orders` tree.
    pub(in crate::store::sled) fn tree_name(tenant: &crate::model::Tenant) -> String {
        if tenant.is_default() {
            "orders".to_owned()
        } else {
            format!("orders/{tenant}")
        }
    }
}

/// Secrets in the `meta` tree.
pub(super) fn secret(name: &str) -> Vec<u8> {
    format!("secret/{name}").into_bytes()
}
