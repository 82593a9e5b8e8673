//! Sorted runs: how both stores keep a tenant's orders as a few large
//! values instead of a row or key per order.
//!
//! Each store's cost is counted in rows or keys, not bytes: sled copies a
//! B-tree leaf for every key it inserts, and PostgreSQL writes a tuple and
//! an index entry per row. So a call is written as runs: its entries
//! sorted and packed a few hundred to a chunk, one run per family (each
//! month's orders; the order_id locations). A run never changes once
//! written; entries of later runs override earlier ones by sequence
//! number, and a kill marks the place an order moved away from. A reader
//! merges a family's runs; runs of a family are merged tier by tier (see
//! [`plan`]) so that there are never more than a few per size, and each
//! entry is rewritten about once per tier it climbs.
//!
//! This module is the format and the rules, with no store in it: entries,
//! chunks, manifests, merging, which runs to merge, and what a call
//! writes ([`written`]). Each store keeps chunks and manifests its own way.

use std::collections::{BTreeMap, HashMap, VecDeque};

use prost::encoding::{decode_varint, encode_varint};

use crate::model::order::{Month, Order};
use crate::store::codec::encode_order;
use crate::store::{StoreError, StoreResult};
use filter::KeyFilter;
pub(crate) use lookup::{Found, Walk, entry_in, may_hold};

mod filter;
mod lookup;

/// The runs of one month's orders (by the month's key), or of the order_id
/// locations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    Month([u8; 6]),
    Locations,
}

impl Family {
    /// Whether this family's runs have filters: only the locations are
    /// looked up by key.
    pub fn filtered(self) -> bool {
        self == Family::Locations
    }

    /// The filter of a run of this family holding `entries`, encoded, if
    /// it has one.
    pub fn filter_of(self, entries: &[Entry]) -> Option<Vec<u8>> {
        if !self.filtered() {
            return None;
        }
        KeyFilter::build(entries.iter().map(|e| filter::hash(&e.key))).map(|f| f.encode())
    }
}

/// `order`'s position (`position_of`), for tests.
#[cfg(test)]
pub(crate) fn position(order: &Order) -> Vec<u8> {
    position_of(order.created_at, &order.order_id)
}

/// `created_at` as the first eight bytes of a position: the sign bit
/// flipped, so that signed times sort as unsigned bytes.
fn sortable(created_at: i64) -> [u8; 8] {
    ((created_at as u64) ^ (1 << 63)).to_be_bytes()
}

/// An order's position within its month, the key of its month entry:
/// created_at, then order_id, sorting as bytes.
pub(crate) fn position_of(created_at: i64, order_id: &str) -> Vec<u8> {
    [&sortable(created_at)[..], order_id.as_bytes()].concat()
}

/// The created_at and order_id of a position, if it is one.
pub(crate) fn unposition(position: &[u8]) -> Option<(i64, &str)> {
    let (time, id) = position.split_at_checked(8)?;
    let time = u64::from_be_bytes(time.try_into().ok()?) ^ (1 << 63);
    Some((time as i64, std::str::from_utf8(id).ok()?))
}

/// Where a stored order is: its month, and its `created_at` as the first
/// eight bytes of its position. The value of a location entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub month: [u8; 6],
    pub created: [u8; 8],
}

impl Location {
    /// Where an order created at `created_at` is.
    pub fn of(created_at: i64) -> Self {
        Location {
            month: Month::of_micros(created_at).key(),
            created: sortable(created_at),
        }
    }

    /// From the value of a location entry: fourteen bytes.
    pub fn decode(bytes: &[u8]) -> StoreResult<Self> {
        let corrupt = || StoreError::Corrupt("order location".into());
        let (month, created) = bytes.split_at_checked(6).ok_or_else(corrupt)?;
        Ok(Location {
            month: month.try_into().map_err(|_| corrupt())?,
            created: created.try_into().map_err(|_| corrupt())?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        [&self.month[..], &self.created[..]].concat()
    }

    /// The position the order with `order_id` has here.
    pub fn position(&self, order_id: &str) -> Vec<u8> {
        [&self.created[..], order_id.as_bytes()].concat()
    }
}

/// What storing some orders as one run writes.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Each family's entries, unsorted.
    pub families: BTreeMap<Family, Vec<Entry>>,
    /// How each month's count of orders changes.
    pub counts: BTreeMap<[u8; 6], i64>,
}

/// The entries of run `run` storing `orders` (each order_id once), given
/// where those already stored are (`stored_at`): each order at its
/// position and its location; a kill where a moving order was.
pub(crate) fn written(orders: &[Order], stored_at: &HashMap<&str, Location>, run: u64) -> Written {
    let mut out = Written::default();
    let mut locations = Vec::with_capacity(orders.len());
    for order in orders {
        let here = Location::of(order.created_at);
        let month = here.month;
        match stored_at.get(order.order_id.as_str()) {
            Some(at) if *at == here => {}
            Some(at) => {
                // It moves: a kill where it was hides the old version.
                out.families
                    .entry(Family::Month(at.month))
                    .or_default()
                    .push(Entry {
                        key: at.position(&order.order_id),
                        seq: run,
                        value: None,
                    });
                *out.counts.entry(at.month).or_default() -= 1;
                *out.counts.entry(month).or_default() += 1;
            }
            None => *out.counts.entry(month).or_default() += 1,
        }
        locations.push(Entry {
            key: order.order_id.as_bytes().to_vec(),
            seq: run,
            value: Some(here.encode()),
        });
        out.families
            .entry(Family::Month(month))
            .or_default()
            .push(Entry {
                key: here.position(&order.order_id),
                seq: run,
                value: Some(encode_order(order)),
            });
    }
    if !locations.is_empty() {
        out.families.insert(Family::Locations, locations);
    }
    out
}

/// One entry of a run: a key written by run `seq`, with a value, or a kill
/// (`None`) hiding the key's earlier versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: Vec<u8>,
    pub seq: u64,
    pub value: Option<Vec<u8>>,
}

/// A chunk (one sled value, one PostgreSQL row) is closed once its
/// entries reach this many bytes. sled splits a leaf past 16 keys whatever
/// their size, and writes a leaf larger than a quarter of its 512 KiB
/// segment to a file of its own, rewritten whole on each change: 16 chunks
/// of this size stay in the log. On PostgreSQL a chunk fits a page.
pub(crate) const CHUNK_BYTES: usize = 6 * 1024;

/// What `entry` adds to a chunk's size, near enough.
pub(crate) fn size(entry: &Entry) -> usize {
    entry.key.len() + entry.value.as_ref().map_or(0, Vec::len) + 4
}

/// `entries` cut into chunks of about `CHUNK_BYTES` each.
pub(crate) fn chunks(entries: &[Entry]) -> impl Iterator<Item = &[Entry]> {
    chunks_of(entries, CHUNK_BYTES)
}

/// `entries` cut into chunks of about `bytes` each.
pub(crate) fn chunks_of(entries: &[Entry], limit: usize) -> impl Iterator<Item = &[Entry]> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let end = rest
            .iter()
            .position(|entry| {
                bytes += size(entry);
                bytes >= limit
            })
            .map_or(rest.len(), |last| last + 1);
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

/// A chunk's entries as one value: for each, the key's length and the key,
/// the sequence number, then 0 for a kill or the value's length plus one
/// and the value, all lengths and numbers as varints.
pub(crate) fn encode_chunk(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(size).sum::<usize>() + 8);
    for entry in entries {
        encode_varint(entry.key.len() as u64, &mut out);
        out.extend_from_slice(&entry.key);
        encode_varint(entry.seq, &mut out);
        match &entry.value {
            None => encode_varint(0, &mut out),
            Some(value) => {
                encode_varint(value.len() as u64 + 1, &mut out);
                out.extend_from_slice(value);
            }
        }
    }
    out
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("order run: {what}"))
}

/// Takes `len` bytes off the front of `buf`.
fn take<'a>(buf: &mut &'a [u8], len: u64, what: &str) -> StoreResult<&'a [u8]> {
    let len = usize::try_from(len).map_err(|_| corrupt(what))?;
    let (head, rest) = buf.split_at_checked(len).ok_or_else(|| corrupt(what))?;
    *buf = rest;
    Ok(head)
}

fn varint(buf: &mut &[u8], what: &str) -> StoreResult<u64> {
    decode_varint(buf).map_err(|_| corrupt(what))
}

/// The entries of a chunk, in the order written.
pub(crate) fn decode_chunk(mut buf: &[u8]) -> StoreResult<VecDeque<Entry>> {
    let mut entries = VecDeque::new();
    while !buf.is_empty() {
        let len = varint(&mut buf, "key length")?;
        let key = take(&mut buf, len, "key")?.to_vec();
        let seq = varint(&mut buf, "sequence")?;
        let value = match varint(&mut buf, "value length")? {
            0 => None,
            n => Some(take(&mut buf, n - 1, "value")?.to_vec()),
        };
        entries.push_back(Entry { key, seq, value });
    }
    Ok(entries)
}

/// A live run as its family's manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub id: u64,
    pub entries: u64,
    /// Its least and greatest keys (empty when it has no entries).
    pub least: Vec<u8>,
    pub greatest: Vec<u8>,
}

impl Run {
    /// Whether some key of the run may lie in `least..=greatest`.
    pub fn overlaps(&self, least: &[u8], greatest: &[u8]) -> bool {
        self.entries > 0 && self.least.as_slice() <= greatest && least <= self.greatest.as_slice()
    }
}

/// A family's runs: the live ones, oldest first, and the stale ones,
/// whose chunks may still be stored but are read by no one (inputs of a
/// merge that has replaced them, or the output of a merge cut short),
/// to be deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub live: Vec<Run>,
    pub stale: Vec<u64>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_varint(self.live.len() as u64, &mut out);
        for run in &self.live {
            encode_varint(run.id, &mut out);
            encode_varint(run.entries, &mut out);
            for key in [&run.least, &run.greatest] {
                encode_varint(key.len() as u64, &mut out);
                out.extend_from_slice(key);
            }
        }
        encode_varint(self.stale.len() as u64, &mut out);
        for id in &self.stale {
            encode_varint(*id, &mut out);
        }
        out
    }

    pub fn decode(mut buf: &[u8]) -> StoreResult<Manifest> {
        let buf = &mut buf;
        let mut manifest = Manifest::default();
        for _ in 0..varint(buf, "live runs")? {
            let id = varint(buf, "run id")?;
            let entries = varint(buf, "run size")?;
            let len = varint(buf, "run bounds")?;
            let least = take(buf, len, "run bounds")?.to_vec();
            let len = varint(buf, "run bounds")?;
            let greatest = take(buf, len, "run bounds")?.to_vec();
            manifest.live.push(Run {
                id,
                entries,
                least,
                greatest,
            });
        }
        for _ in 0..varint(buf, "stale runs")? {
            manifest.stale.push(varint(buf, "run id")?);
        }
        if !buf.is_empty() {
            return Err(corrupt("manifest has trailing bytes"));
        }
        Ok(manifest)
    }

    pub fn is_live(&self, id: u64) -> bool {
        self.live.iter().any(|run| run.id == id)
    }
}

/// A merge's output run, written from the merged entries in key order:
/// it closes a chunk each time the entries reach `chunk_bytes`, and keeps
/// what the manifest lists. When the merge takes in everything its family
/// holds, kills are left out: nothing older is left for them to hide.
pub(crate) struct MergedRun {
    listed: Run,
    chunk: Vec<Entry>,
    bytes: usize,
    chunk_bytes: usize,
    everything: bool,
    /// Its filter, filled as entries come, when it is to have one.
    filter: Option<KeyFilter>,
}

impl MergedRun {
    /// The output run `id` of a merge of `family`'s runs, which hold
    /// `inputs` entries between them (what its filter is sized for).
    pub fn new(id: u64, family: Family, inputs: u64, chunk_bytes: usize, everything: bool) -> Self {
        MergedRun {
            listed: Run {
                id,
                entries: 0,
                least: Vec::new(),
                greatest: Vec::new(),
            },
            chunk: Vec::new(),
            bytes: 0,
            chunk_bytes,
            everything,
            filter: family
                .filtered()
                .then(|| KeyFilter::with_capacity(inputs))
                .flatten(),
        }
    }

    /// Takes the next entry: a chunk to store, when this one closes it.
    pub fn push(&mut self, entry: Entry) -> Option<Vec<Entry>> {
        if self.everything && entry.value.is_none() {
            return None;
        }
        if self.listed.entries == 0 {
            self.listed.least = entry.key.clone();
        }
        self.listed.entries += 1;
        if let Some(filter) = &mut self.filter {
            filter.insert(filter::hash(&entry.key));
        }
        self.bytes += size(&entry);
        self.chunk.push(entry);
        (self.bytes >= self.chunk_bytes).then(|| self.close())
    }

    fn close(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        let chunk = std::mem::take(&mut self.chunk);
        if let Some(last) = chunk.last() {
            self.listed.greatest = last.key.clone();
        }
        chunk
    }

    /// The last chunk (if entries are left over), the run as its
    /// manifest lists it (None when it holds nothing), and its filter's
    /// bytes, if it has one.
    pub fn finish(mut self) -> (Option<Vec<Entry>>, Option<Run>, Option<Vec<u8>>) {
        let last = (!self.chunk.is_empty()).then(|| self.close());
        let listed = (self.listed.entries > 0).then_some(self.listed);
        let filter = self.filter.filter(|_| listed.is_some()).map(|f| f.encode());
        (last, listed, filter)
    }
}

/// How many entries runs `inputs` of `live` hold between them: what a
/// merge of them writes at most.
pub(crate) fn held(live: &[Run], inputs: &[u64]) -> u64 {
    live.iter()
        .filter(|run| inputs.contains(&run.id))
        .map(|run| run.entries)
        .sum()
}

/// Runs of similar size are merged once there are this many of them.
const FANOUT: usize = 8;

/// A run's tier: runs within a factor of `FANOUT` of each other in size
/// share one.
fn tier(entries: u64) -> u32 {
    (63 - entries.max(1).leading_zeros()) / FANOUT.ilog2()
}

/// The runs to merge next, if any tier holds `FANOUT` or more (the
/// smallest such tier first).
pub(crate) fn plan(live: &[Run]) -> Option<Vec<u64>> {
    let mut tiers: Vec<u32> = live.iter().map(|run| tier(run.entries)).collect();
    tiers.sort_unstable();
    tiers.dedup();
    tiers.into_iter().find_map(|t| {
        let members: Vec<u64> = live
            .iter()
            .filter(|run| tier(run.entries) == t)
            .map(|run| run.id)
            .collect();
        (members.len() >= FANOUT).then_some(members)
    })
}

/// Several sources of entries, each in key order, merged into the winning
/// entry of each key: the one with the highest sequence number (kills
/// included; the caller decides what a kill means to it).
pub(crate) struct Merge<I> {
    sources: Vec<I>,
    heads: Vec<Option<Entry>>,
    started: bool,
}

impl<I: Iterator<Item = StoreResult<Entry>>> Merge<I> {
    pub fn new(sources: Vec<I>) -> Self {
        let heads = sources.iter().map(|_| None).collect();
        Merge {
            sources,
            heads,
            started: false,
        }
    }

    fn advance(&mut self, i: usize) -> StoreResult<()> {
        self.heads[i] = self.sources[i].next().transpose()?;
        Ok(())
    }

    fn step(&mut self) -> StoreResult<Option<Entry>> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                self.advance(i)?;
            }
        }
        // The head with the least key starts the group; every head with
        // that key joins it, and the highest sequence number wins.
        let least = (0..self.heads.len())
            .filter(|&i| self.heads[i].is_some())
            .min_by(|&a, &b| {
                let key = |i: usize| self.heads[i].as_ref().map(|e| &e.key);
                key(a).cmp(&key(b))
            });
        let Some(least) = least else {
            return Ok(None);
        };
        let mut winner = self.heads[least].take().expect("chosen as present");
        self.advance(least)?;
        for i in 0..self.heads.len() {
            // A source may hold one key more than once (it never should; a
            // damaged run is read as best it can be): take all of them.
            while self.heads[i].as_ref().is_some_and(|e| e.key == winner.key) {
                let entry = self.heads[i].take().expect("checked above");
                if entry.seq > winner.seq {
                    winner = entry;
                }
                self.advance(i)?;
            }
        }
        Ok(Some(winner))
    }
}

impl<I: Iterator<Item = StoreResult<Entry>>> Iterator for Merge<I> {
    type Item = StoreResult<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

#[cfg(test)]
mod tests;
