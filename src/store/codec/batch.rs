//! The stored forms of what groups of operations keep on one: a batch
//! parent's roll-up and a bulk action's tally.

use super::{StoredError, corrupt, from_micros, id16, load_error, store_error, to_micros};
use crate::model::{ChildFailure, OperationId, Policy, Rollup, Tally};
use crate::store::StoreResult;

/// A batch parent's roll-up of its children.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredRollup {
    #[prost(uint32, tag = "1")]
    policy: u32,
    #[prost(uint32, tag = "2")]
    depth: u32,
    #[prost(uint64, tag = "3")]
    total: u64,
    #[prost(uint64, repeated, tag = "4")]
    counts: Vec<u64>,
    #[prost(uint64, tag = "5")]
    progress: u64,
    #[prost(bool, tag = "6")]
    sealed: bool,
    #[prost(bool, tag = "7")]
    failing: bool,
    #[prost(message, repeated, tag = "8")]
    failures: Vec<StoredFailure>,
    #[prost(sint64, optional, tag = "9")]
    first_start_us: Option<i64>,
    #[prost(sint64, optional, tag = "10")]
    expected_end_us: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredFailure {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    error: Option<StoredError>,
}

pub(super) fn store_rollup(r: &Rollup) -> StoredRollup {
    StoredRollup {
        policy: match r.policy {
            Policy::WaitAll => 0,
            Policy::FailFast => 1,
        },
        depth: r.depth,
        total: r.total,
        counts: r.counts.to_vec(),
        progress: r.progress,
        sealed: r.sealed,
        failing: r.failing,
        failures: r
            .failures
            .iter()
            .map(|f| StoredFailure {
                id: f.id.as_bytes().to_vec(),
                error: Some(store_error(&f.error)),
            })
            .collect(),
        first_start_us: r.first_start.map(to_micros),
        expected_end_us: r.expected_end.map(to_micros),
    }
}

pub(super) fn load_rollup(s: StoredRollup) -> StoreResult<Rollup> {
    let mut counts = [0; 6];
    if s.counts.len() != counts.len() {
        return Err(corrupt("a batch's counts"));
    }
    counts.copy_from_slice(&s.counts);
    Ok(Rollup {
        policy: match s.policy {
            0 => Policy::WaitAll,
            1 => Policy::FailFast,
            _ => return Err(corrupt("unknown batch policy")),
        },
        depth: s.depth,
        total: s.total,
        counts,
        progress: s.progress,
        sealed: s.sealed,
        failing: s.failing,
        failures: s
            .failures
            .into_iter()
            .map(|f| {
                Ok(ChildFailure {
                    id: OperationId::from_bytes(id16(&f.id, "a failed child's id")?),
                    error: load_error(f.error.ok_or_else(|| corrupt("a failed child's error"))?)?,
                })
            })
            .collect::<StoreResult<_>>()?,
        first_start: s.first_start_us.map(from_micros),
        expected_end: s.expected_end_us.map(from_micros),
    })
}

/// A bulk action's tally.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredTally {
    #[prost(uint64, tag = "1")]
    total: u64,
    #[prost(bytes = "vec", optional, tag = "2")]
    cursor: Option<Vec<u8>>,
    #[prost(bool, tag = "3")]
    walked: bool,
    #[prost(uint64, tag = "4")]
    matched: u64,
    #[prost(uint64, tag = "5")]
    changed: u64,
    #[prost(uint64, tag = "6")]
    skipped: u64,
}

pub(super) fn store_tally(t: &Tally) -> StoredTally {
    StoredTally {
        total: t.total,
        cursor: t.cursor.map(|c| c.as_bytes().to_vec()),
        walked: t.walked,
        matched: t.matched,
        changed: t.changed,
        skipped: t.skipped,
    }
}

pub(super) fn load_tally(s: StoredTally) -> StoreResult<Tally> {
    Ok(Tally {
        total: s.total,
        cursor: match s.cursor {
            Some(bytes) => Some(OperationId::from_bytes(id16(&bytes, "a bulk cursor")?)),
            None => None,
        },
        walked: s.walked,
        matched: s.matched,
        changed: s.changed,
        skipped: s.skipped,
    })
}
