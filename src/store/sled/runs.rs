//! Sorted runs: how an orders tree keeps many entries in few sled keys.
//!
//! sled copies a B-tree leaf for every key it inserts, so its cost is
//! counted in keys, not bytes. An order tree therefore writes each slice
//! of a call as runs: its entries sorted and packed a few hundred to a
//! value, one run per family (each month's orders; the order_id
//! locations). A run never changes once written; entries of later runs
//! override earlier ones by sequence number, and a kill marks the place an
//! order moved away from. A reader merges a family's runs; runs of a
//! family are merged tier by tier (see [`plan`]) so that there are never
//! more than a few per size, and each entry is rewritten about once per
//! tier it climbs.
//!
//! This module is the format and the rules, with no sled in it: entries,
//! chunks, manifests, merging, and which runs to merge.

use std::collections::VecDeque;

use prost::encoding::{decode_varint, encode_varint};

use crate::store::{StoreError, StoreResult};

/// One entry of a run: a key written by run `seq`, with a value, or a kill
/// (`None`) hiding the key's earlier versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub key: Vec<u8>,
    pub seq: u64,
    pub value: Option<Vec<u8>>,
}

/// A chunk (one sled value) is closed once its entries reach this many
/// bytes. sled splits a leaf past 16 keys whatever their size, and writes
/// a leaf larger than a quarter of its 512 KiB segment to a file of its
/// own, rewritten whole on each change: 16 chunks of this size stay in
/// the log.
pub(super) const CHUNK_BYTES: usize = 6 * 1024;

/// What `entry` adds to a chunk's size, near enough.
pub(super) fn size(entry: &Entry) -> usize {
    entry.key.len() + entry.value.as_ref().map_or(0, Vec::len) + 4
}

/// `entries` cut into chunks of about `CHUNK_BYTES` each.
pub(super) fn chunks(entries: &[Entry]) -> impl Iterator<Item = &[Entry]> {
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
                bytes >= CHUNK_BYTES
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
pub(super) fn encode_chunk(entries: &[Entry]) -> Vec<u8> {
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
pub(super) fn decode_chunk(mut buf: &[u8]) -> StoreResult<VecDeque<Entry>> {
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
pub(super) struct Run {
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
pub(super) struct Manifest {
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

/// Runs of similar size are merged once there are this many of them.
const FANOUT: usize = 8;

/// A run's tier: runs within a factor of `FANOUT` of each other in size
/// share one.
fn tier(entries: u64) -> u32 {
    (63 - entries.max(1).leading_zeros()) / FANOUT.ilog2()
}

/// The runs to merge next, if any tier holds `FANOUT` or more (the
/// smallest such tier first).
pub(super) fn plan(live: &[Run]) -> Option<Vec<u64>> {
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
pub(super) struct Merge<I> {
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
mod tests {
    use super::*;

    fn put(key: &str, seq: u64, value: &str) -> Entry {
        Entry {
            key: key.into(),
            seq,
            value: Some(value.into()),
        }
    }

    fn kill(key: &str, seq: u64) -> Entry {
        Entry {
            key: key.into(),
            seq,
            value: None,
        }
    }

    fn source(entries: Vec<Entry>) -> std::vec::IntoIter<StoreResult<Entry>> {
        entries.into_iter().map(Ok).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn a_chunk_reads_back_as_written_and_damage_is_reported() {
        let entries = vec![put("a", 1, ""), kill("b", 7), put("c", 300, "xyz")];
        let bytes = encode_chunk(&entries);
        assert_eq!(Vec::from(decode_chunk(&bytes).unwrap()), entries);
        assert!(decode_chunk(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_chunk(&[0x80]).is_err());
    }

    #[test]
    fn chunks_close_at_their_size_and_keep_every_entry() {
        let entries: Vec<Entry> = (0..1000)
            .map(|i| put(&format!("{i:04}"), 1, "0123456789"))
            .collect();
        let chunks: Vec<&[Entry]> = chunks(&entries).collect();
        // 18 bytes an entry: 342 to a chunk.
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [342, 342, 316]
        );
        assert_eq!(chunks.concat(), entries);
        assert_eq!(super::chunks(&[]).count(), 0);
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let manifest = Manifest {
            live: vec![Run {
                id: 9,
                entries: 1000,
                least: b"a".to_vec(),
                greatest: b"zz".to_vec(),
            }],
            stale: vec![3, 4],
        };
        assert_eq!(Manifest::decode(&manifest.encode()).unwrap(), manifest);
        assert_eq!(Manifest::decode(&[]).ok(), None);
        let mut trailing = manifest.encode();
        trailing.push(0);
        assert!(Manifest::decode(&trailing).is_err());
    }

    #[test]
    fn the_latest_version_of_each_key_wins_kills_included() {
        let old = source(vec![
            put("a", 1, "a1"),
            put("b", 1, "b1"),
            put("d", 1, "d1"),
        ]);
        let new = source(vec![kill("a", 2), put("b", 2, "b2"), put("c", 2, "c2")]);
        let merged: Vec<Entry> = Merge::new(vec![new, old]).map(Result::unwrap).collect();
        assert_eq!(
            merged,
            vec![
                kill("a", 2),
                put("b", 2, "b2"),
                put("c", 2, "c2"),
                put("d", 1, "d1")
            ]
        );
        // A later write over a kill brings the key back.
        let merged: Vec<Entry> = Merge::new(vec![
            source(vec![kill("a", 2)]),
            source(vec![put("a", 3, "a3")]),
        ])
        .map(Result::unwrap)
        .collect();
        assert_eq!(merged, vec![put("a", 3, "a3")]);
    }

    #[test]
    fn a_tier_is_merged_once_it_holds_eight_runs() {
        let run = |id, entries| Run {
            id,
            entries,
            least: vec![0],
            greatest: vec![1],
        };
        // 512 to 4,095 entries share a tier; 5,000 is the next one up.
        let mut live = vec![run(1, 5000)];
        live.extend((2..9).map(|id| run(id, 400 * id + 100)));
        assert_eq!(plan(&live), None);
        live.push(run(9, 4095));
        assert_eq!(plan(&live), Some((2..10).collect()));
        assert_eq!(plan(&[]), None);
    }
}
