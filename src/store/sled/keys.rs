//! Key layouts, in one place.
//!
//! Operations, their indexes, the outbox, the string table and secrets
//! share one tree, so that one sled batch updates any of them atomically.
//! The first byte says what a key is:
//! - `o` id: the operation record;
//! - `l`: the low-water mark, the lowest id of an operation that is not
//!   done (empty when every operation is done), so that opening the store
//!   reads only the records from there on;
//! - `r` request_id(16) tenant: the idempotency key, to the operation id;
//! - `t` tenant 0 id: every operation of a named tenant, so that one
//!   tenant's listing reads only its own;
//! - `d` delivery id: a webhook delivery;
//! - `q` due(8) delivery id: pending deliveries by due time;
//! - `w` operation id, delivery id: deliveries by operation;
//! - `s` number(4): a string of the table records refer to;
//! - `m` name: a settled value;
//! - `p` kind: a paused kind (empty value);
//! - `c` kind 0 scope(1): a limit of a kind, its value
//!   `CONCURRENCY|RATES` (either may be empty);
//! - `h` tenant 0 id: a schedule;
//! - `H` wake(8) tenant 0 id: the schedules that come due, by time;
//! - `k` parent(16) child(16): a batch's children, oldest first;
//! - `b` id: the batches not done yet (their parents).
//!
//! Ids are 16-byte UUIDv7s, so key order is creation order; times are 8
//! big-endian bytes of microseconds, so byte order is time order. An
//! operation's whole life writes its record twice (created, done) and
//! deletes it once; there is no per-operation index of what is unfinished
//! or expired: both are the oldest records, read from the front. Orders
//! keep trees of their own (one per tenant), laid out in `orders`.

use std::time::SystemTime;

use crate::model::flow;
use crate::model::{Delivery, Limit, LimitScope, Operation, OperationId, RequestId, Tenant};

/// The tree everything but orders lives in.
pub(super) const TREE: &str = "longrun";

pub(super) const OP: u8 = b'o';
pub(super) const BY_TENANT: u8 = b't';
pub(super) const LOW_WATER: &[u8] = b"l";
pub(super) const DELIVERY: u8 = b'd';
pub(super) const DUE: u8 = b'q';
pub(super) const STRING: u8 = b's';
pub(super) const PAUSED: u8 = b'p';
pub(super) const LIMIT: u8 = b'c';
pub(super) const SCHEDULE: u8 = b'h';
pub(super) const SCHEDULE_DUE: u8 = b'H';
pub(super) const CHILD: u8 = b'k';
pub(super) const OPEN_BATCH: u8 = b'b';

/// Where the children of `parent` start.
pub(super) fn children_of(parent: OperationId) -> [u8; 17] {
    with_id(CHILD, parent)
}

/// A child's entry under its parent.
pub(super) fn child(op: &Operation) -> Option<[u8; 33]> {
    let parent = op.parent?;
    let mut key = [0; 33];
    key[..17].copy_from_slice(&children_of(parent));
    key[17..].copy_from_slice(op.id.as_bytes());
    Some(key)
}

/// A batch not done yet.
pub(super) fn open_batch(id: OperationId) -> [u8; 17] {
    with_id(OPEN_BATCH, id)
}

/// Where a tenant's schedules start.
pub(super) fn schedules_of(tenant: &Tenant) -> Vec<u8> {
    let mut key = vec![SCHEDULE];
    key.extend_from_slice(tenant.as_str().as_bytes());
    key.push(0);
    key
}

/// A schedule's record.
pub(super) fn schedule(tenant: &Tenant, id: &str) -> Vec<u8> {
    let mut key = schedules_of(tenant);
    key.extend_from_slice(id.as_bytes());
    key
}

/// A schedule's place in the due index, at `wake_us`.
pub(super) fn schedule_due(wake_us: i64, tenant: &Tenant, id: &str) -> Vec<u8> {
    let mut key = vec![SCHEDULE_DUE];
    key.extend_from_slice(&(wake_us.max(0) as u64).to_be_bytes());
    key.extend_from_slice(&schedule(tenant, id)[1..]);
    key
}

/// Just past the due-index keys of every schedule due by `wake_us`.
pub(super) fn schedules_due_by(wake_us: i64) -> Vec<u8> {
    let mut key = vec![SCHEDULE_DUE];
    key.extend_from_slice(&(wake_us.max(0) as u64 + 1).to_be_bytes());
    key
}

/// The tenant and id a due-index key names.
pub(super) fn schedule_of_due(key: &[u8]) -> Option<(Tenant, String)> {
    let rest = key.get(9..)?;
    let split = rest.iter().position(|b| *b == 0)?;
    let tenant = Tenant::from_stored(std::str::from_utf8(&rest[..split]).ok()?).ok()?;
    let id = std::str::from_utf8(&rest[split + 1..]).ok()?.to_owned();
    Some((tenant, id))
}

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

/// The id at the end of a key.
pub(super) fn id_at_end(key: &[u8]) -> Option<OperationId> {
    let start = key.len().checked_sub(16)?;
    Some(OperationId::from_bytes(key[start..].try_into().ok()?))
}

fn with_id(prefix: u8, id: OperationId) -> [u8; 17] {
    let mut key = [prefix; 17];
    key[1..].copy_from_slice(id.as_bytes());
    key
}

/// The record of an operation.
pub(super) fn op(id: OperationId) -> [u8; 17] {
    with_id(OP, id)
}

/// The idempotency key of an operation, with its tenant, so that tenants
/// never share request_ids.
pub(super) fn request_id(tenant: &Tenant, request_id: RequestId) -> Vec<u8> {
    let tenant = tenant.as_str();
    let mut key = Vec::with_capacity(17 + tenant.len());
    key.push(b'r');
    key.extend_from_slice(request_id.as_bytes());
    key.extend_from_slice(tenant.as_bytes());
    key
}

/// The `t` key of an operation; None for the default tenant, which is only
/// ever listed whole.
pub(super) fn by_tenant(op: &Operation) -> Option<Vec<u8>> {
    if op.tenant.is_default() {
        return None;
    }
    let mut key = tenant_prefix(&op.tenant);
    key.extend_from_slice(op.id.as_bytes());
    Some(key)
}

/// Where a tenant's `t` keys start: the name and a zero byte (which no
/// tenant name contains).
pub(super) fn tenant_prefix(tenant: &Tenant) -> Vec<u8> {
    let name = tenant.as_str();
    let mut key = Vec::with_capacity(name.len() + 18);
    key.push(BY_TENANT);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// The record of a delivery.
pub(super) fn delivery(d: &Delivery) -> [u8; 17] {
    let mut key = [DELIVERY; 17];
    key[1..].copy_from_slice(d.id.as_bytes());
    key
}

/// The `q` key of a pending delivery.
pub(super) fn due(d: &Delivery) -> Option<[u8; 25]> {
    let mut key = [DUE; 25];
    key[1..9].copy_from_slice(&time_key(d.next_attempt?));
    key[9..].copy_from_slice(d.id.as_bytes());
    Some(key)
}

/// The end of the `q` keys due by `now`.
pub(super) fn due_by(now: SystemTime) -> [u8; 25] {
    let mut key = [0xff; 25];
    key[0] = DUE;
    key[1..9].copy_from_slice(&time_key(now));
    key
}

/// The `w` key of a delivery: its operation, then its id.
pub(super) fn of_operation(d: &Delivery) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[..17].copy_from_slice(&deliveries_of(d.operation));
    key[17..].copy_from_slice(d.id.as_bytes());
    key
}

/// The prefix of an operation's `w` keys.
pub(super) fn deliveries_of(id: OperationId) -> [u8; 17] {
    with_id(b'w', id)
}

/// The delivery record a `q` or `w` key points at: both end with its id.
pub(super) fn delivery_of(index_key: &[u8]) -> [u8; 17] {
    let mut key = [DELIVERY; 17];
    key[1..].copy_from_slice(&index_key[index_key.len() - 16..]);
    key
}

/// The entry of string number `number`.
pub(super) fn string(number: u32) -> [u8; 5] {
    let mut key = [STRING; 5];
    key[1..].copy_from_slice(&number.to_be_bytes());
    key
}

/// A secret.
/// A limit of a kind.
pub(super) fn limit(kind: &str, scope: LimitScope) -> Vec<u8> {
    [&[LIMIT], kind.as_bytes(), &[0, scope.code() as u8]].concat()
}

/// The value a limit is stored as.
pub(super) fn limit_value(limit: &Limit) -> Vec<u8> {
    let concurrency = limit.concurrency.map(|n| n.to_string()).unwrap_or_default();
    format!("{concurrency}|{}", flow::format_rates(&limit.rates)).into_bytes()
}

/// Reads a stored limit back.
pub(super) fn limit_of(key: &[u8], value: &[u8]) -> Option<Limit> {
    let rest = key.get(1..)?;
    let (&code, kind) = rest.split_last()?;
    let kind = kind.strip_suffix(&[0])?;
    let value = std::str::from_utf8(value).ok()?;
    let (concurrency, rates) = value.split_once('|')?;
    Some(Limit {
        kind: std::str::from_utf8(kind).ok()?.to_owned(),
        scope: LimitScope::from_code(i16::from(code))?,
        concurrency: match concurrency {
            "" => None,
            n => Some(n.parse().ok()?),
        },
        rates: flow::parse_rates(rates).ok()?,
    })
}

/// A paused kind.
pub(super) fn paused(kind: &str) -> Vec<u8> {
    [&[PAUSED], kind.as_bytes()].concat()
}

pub(super) fn secret(name: &str) -> Vec<u8> {
    [b"m".as_slice(), name.as_bytes()].concat()
}

/// Keys of an orders tree. Its kinds share one tree, so that one sled
/// batch updates them together. Orders are kept in sorted runs (see
/// `runs`), a few hundred to a key:
/// - `r` month(6) run(8) first: a chunk of the month's orders in run
///   `run`, by position (created_at(8) order_id), `first` being its first
///   entry's position; each entry's value is the encoded order;
/// - `j` run(8) first: a chunk of order_id locations in run `run`, by
///   order_id; each value is the month(6) and created_at(8) it is at;
/// - `f` run(8) part(4): the filter of location run `run`
///   (`runs::filter`) in parts of at most 256 KiB, the last written with
///   the batch that lists the run;
/// - `M` month(6) and `I`: the manifests of the month's runs and of the
///   location runs;
/// - `s`: the next run number (u64, big-endian);
/// - `c` month(6): how many orders the month has (u64, big-endian).
///
/// Trees written before runs keep a key per order, read as they are and
/// never written again: `m` month(6) position: the order, and `i`
/// order_id: the `m` key it is under.
pub(super) mod orders {
    use crate::model::Tenant;

    /// The chunk of a month's run `run` that starts at `first` (the run's
    /// prefix when `first` is empty).
    pub(in crate::store::sled) fn month_chunk(month: &[u8], run: u64, first: &[u8]) -> Vec<u8> {
        [b"r".as_slice(), month, &run.to_be_bytes(), first].concat()
    }

    /// The chunk of location run `run` that starts at `first` (the run's
    /// prefix when `first` is empty).
    pub(in crate::store::sled) fn id_chunk(run: u64, first: &[u8]) -> Vec<u8> {
        [b"j".as_slice(), &run.to_be_bytes(), first].concat()
    }

    /// Part `part` of the filter of location run `run`; the run's prefix
    /// when `part` is None.
    pub(in crate::store::sled) fn id_filter(run: u64, part: Option<u32>) -> Vec<u8> {
        let part = part.map(u32::to_be_bytes);
        [
            b"f".as_slice(),
            &run.to_be_bytes(),
            part.as_ref().map_or(&[], |p| p.as_slice()),
        ]
        .concat()
    }

    pub(in crate::store::sled) fn month_manifest(month: &[u8]) -> Vec<u8> {
        [b"M".as_slice(), month].concat()
    }

    pub(in crate::store::sled) const ID_MANIFEST: &[u8] = b"I";

    pub(in crate::store::sled) const NEXT_RUN: &[u8] = b"s";

    /// The `m` key of an order in a tree written before runs.
    #[cfg(test)]
    pub(in crate::store::sled) fn legacy_order(order: &crate::model::order::Order) -> Vec<u8> {
        [
            b"m".as_slice(),
            &order.month().key(),
            &crate::store::runs::position(order),
        ]
        .concat()
    }

    pub(in crate::store::sled) fn legacy_month(month: &[u8]) -> Vec<u8> {
        [b"m".as_slice(), month].concat()
    }

    pub(in crate::store::sled) fn legacy_by_id(order_id: &[u8]) -> Vec<u8> {
        [b"i".as_slice(), order_id].concat()
    }

    pub(in crate::store::sled) fn count(month: &[u8]) -> Vec<u8> {
        [b"c".as_slice(), month].concat()
    }

    /// The name of `tenant`'s order tree; the default tenant's is `orders`.
    pub(in crate::store::sled) fn tree_name(tenant: &Tenant) -> String {
        if tenant.is_default() {
            "orders".to_owned()
        } else {
            format!("orders/{tenant}")
        }
    }
}
