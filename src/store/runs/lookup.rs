//! Finding where a call's order_ids are stored, the same way on both
//! stores: which of them a location run may hold (by its filter), an
//! entry within a chunk, a pass over entries in key order, and what was
//! found, the latest entry of each order_id winning.

use std::collections::HashMap;

use super::filter::{self, KeyFilter};
use super::{Entry, Location, Run};
use crate::store::StoreResult;

/// Which of `ids` (sorted) a run may hold, by its stored `filter`: None
/// when it has none this version reads, so that it must be read through.
pub(crate) fn may_hold<'i>(
    filter: Option<&[u8]>,
    run: &Run,
    ids: &[&'i str],
) -> Option<Vec<&'i str>> {
    let filter = KeyFilter::decode(filter?)?;
    Some(
        ids.iter()
            .copied()
            .filter(|id| {
                id.as_bytes() >= run.least.as_slice()
                    && id.as_bytes() <= run.greatest.as_slice()
                    && filter.may_contain(filter::hash(id.as_bytes()))
            })
            .collect(),
    )
}

/// The entry for `key` in a chunk's `entries` (sorted by key), if any.
pub(crate) fn entry_in<'e>(entries: &'e [Entry], key: &[u8]) -> Option<&'e Entry> {
    entries
        .binary_search_by(|e| e.key.as_slice().cmp(key))
        .ok()
        .map(|i| &entries[i])
}

/// Where each order_id looked up so far is stored, with the sequence of
/// the entry that said so: a later entry overrides.
#[derive(Default)]
pub(crate) struct Found<'o>(HashMap<&'o str, (u64, Location)>);

impl<'o> Found<'o> {
    /// Takes `entry`, which is `id`'s, if it is newer than what was found
    /// for `id` so far.
    pub fn take(&mut self, id: &'o str, entry: &Entry) -> StoreResult<()> {
        if let Some(location) = &entry.value
            && self.0.get(id).is_none_or(|(seq, _)| entry.seq > *seq)
        {
            self.0.insert(id, (entry.seq, Location::decode(location)?));
        }
        Ok(())
    }

    /// Takes where storage from before runs has `id`: older than any run.
    pub fn take_legacy(&mut self, id: &'o str, at: Location) {
        self.0.entry(id).or_insert((0, at));
    }

    pub fn has(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }

    pub fn locations(self) -> HashMap<&'o str, Location> {
        self.0.into_iter().map(|(id, (_, at))| (id, at)).collect()
    }
}

/// One pass over location entries in key order, from a call's least
/// order_id on, matching them against the call's sorted order_ids.
pub(crate) struct Walk<'w, 'o> {
    ids: &'w [&'o str],
    greatest: &'w [u8],
    next: usize,
}

impl<'w, 'o> Walk<'w, 'o> {
    /// A pass for `ids` (sorted), the greatest of which is `greatest`.
    pub fn new(ids: &'w [&'o str], greatest: &'w [u8]) -> Self {
        Walk {
            ids,
            greatest,
            next: 0,
        }
    }

    /// Takes `entry`, the next in key order, into `found` if it is one
    /// of the order_ids: false once no later entry can be.
    pub fn step(&mut self, entry: &Entry, found: &mut Found<'o>) -> StoreResult<bool> {
        if entry.key.as_slice() > self.greatest {
            return Ok(false);
        }
        while self.next < self.ids.len() && self.ids[self.next].as_bytes() < entry.key.as_slice() {
            self.next += 1;
        }
        let Some(&id) = self.ids.get(self.next) else {
            return Ok(false);
        };
        if id.as_bytes() == entry.key.as_slice() {
            found.take(id, entry)?;
        }
        Ok(true)
    }
}
