//! The runs of an orders tree in sled: each family's manifest, reading a
//! run from a position, writing a slice's runs, and merging and clearing
//! them away (the format and the rules are `runs`'s).

use std::collections::BTreeMap;

use sled::Tree;

use super::decode_u64;
use crate::store::StoreResult;
use crate::store::runs::{self, CHUNK_BYTES, Entry, Family, Manifest, Merge, MergedRun, Run};
use crate::store::sled::commit::disk;
use crate::store::sled::keys;

/// Chunks a merge writes per batch: sled applies every batch under a lock
/// the whole store waits on, so a merge goes in batches about as long as
/// an import's slices.
const MERGE_CHUNKS: usize = 256;

/// Keys a batch deletes when a merge's inputs are cleared away.
const DELETE_KEYS: usize = 256;

/// Where a family's runs are in an orders tree.
impl Family {
    pub(super) fn manifest_key(self) -> Vec<u8> {
        match self {
            Family::Month(month) => keys::orders::month_manifest(&month),
            Family::Locations => keys::orders::ID_MANIFEST.to_vec(),
        }
    }

    /// The key of run `run`'s chunk starting at `first` (the run's prefix
    /// when `first` is empty).
    pub(super) fn chunk_key(self, run: u64, first: &[u8]) -> Vec<u8> {
        match self {
            Family::Month(month) => keys::orders::month_chunk(&month, run, first),
            Family::Locations => keys::orders::id_chunk(run, first),
        }
    }

    /// The prefix of run `run`'s filter parts, for a family whose runs
    /// have one.
    pub(super) fn filter_prefix(self, run: u64) -> Option<Vec<u8>> {
        self.filtered().then(|| keys::orders::id_filter(run, None))
    }

    pub(super) fn manifest(self, tree: &Tree) -> StoreResult<Manifest> {
        match tree.get(self.manifest_key()).map_err(disk)? {
            Some(bytes) => Manifest::decode(&bytes),
            None => Ok(Manifest::default()),
        }
    }

    /// Whether the tree holds entries of this family from before runs.
    pub(super) fn has_legacy(self, tree: &Tree) -> StoreResult<bool> {
        let prefix = match self {
            Family::Month(month) => keys::orders::legacy_month(&month),
            Family::Locations => keys::orders::legacy_by_id(&[]),
        };
        Ok(tree
            .scan_prefix(prefix)
            .next()
            .transpose()
            .map_err(disk)?
            .is_some())
    }
}

pub(super) type Source = Box<dyn Iterator<Item = StoreResult<Entry>>>;

/// The entries of one run whose keys are `from` or later, in key order.
pub(super) fn read_run(
    tree: &Tree,
    family: Family,
    run: u64,
    from: Option<&[u8]>,
) -> StoreResult<Source> {
    let prefix = family.chunk_key(run, &[]);
    // The chunk holding `from` is the last one starting at or before it.
    let start = match from {
        Some(from) => tree
            .range(prefix.clone()..=family.chunk_key(run, from))
            .next_back()
            .transpose()
            .map_err(disk)?
            .map_or_else(|| prefix.clone(), |(key, _)| key.to_vec()),
        None => prefix.clone(),
    };
    let from = from.map(<[u8]>::to_vec);
    let chunks = tree.range(start..).take_while(move |chunk| {
        chunk
            .as_ref()
            .map_or(true, |(key, _)| key.starts_with(&prefix))
    });
    let entries = chunks.flat_map(|chunk| {
        let entries = chunk
            .map_err(disk)
            .and_then(|(_, value)| runs::decode_chunk(&value));
        match entries {
            Ok(entries) => Box::new(entries.into_iter().map(Ok)) as Source,
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    });
    Ok(Box::new(entries.filter(move |entry| {
        match (entry, &from) {
            (Ok(entry), Some(from)) => entry.key >= *from,
            _ => true,
        }
    })))
}

/// A month's orders from before runs, from position `from` on: entries of
/// sequence 0, older than every run.
pub(super) fn read_legacy_month(tree: &Tree, month: [u8; 6], from: Option<&[u8]>) -> Source {
    let prefix = keys::orders::legacy_month(&month);
    let start = [prefix.as_slice(), from.unwrap_or_default()].concat();
    Box::new(
        tree.range(start..)
            .take_while(move |item| {
                item.as_ref()
                    .map_or(true, |(key, _)| key.starts_with(&prefix))
            })
            .map(|item| {
                let (key, value) = item.map_err(disk)?;
                Ok(Entry {
                    key: key.get(7..).unwrap_or_default().to_vec(),
                    seq: 0,
                    value: Some(value.to_vec()),
                })
            }),
    )
}

/// The most bytes of a filter in one value, and so in one batch: sled
/// applies every batch under a lock all the store waits on, and a large
/// run's filter is megabytes.
const FILTER_PART: usize = 256 << 10;

/// Writes location run `run`'s `filter` in parts: every part but the last
/// in a batch of its own, the last in `batch` (which lists the run).
pub(super) fn put_filter(
    tree: &Tree,
    batch: &mut sled::Batch,
    run: u64,
    filter: &[u8],
) -> StoreResult<()> {
    let parts: Vec<&[u8]> = filter.chunks(FILTER_PART).collect();
    for (i, part) in parts.iter().enumerate() {
        let key = keys::orders::id_filter(run, Some(i as u32));
        if i + 1 == parts.len() {
            batch.insert(key, *part);
        } else {
            tree.insert(key, *part).map_err(disk)?;
        }
    }
    Ok(())
}

/// Location run `run`'s filter, its parts joined, if it has one.
pub(super) fn read_filter(tree: &Tree, run: u64) -> StoreResult<Option<Vec<u8>>> {
    let mut filter = Vec::new();
    for part in tree
        .scan_prefix(keys::orders::id_filter(run, None))
        .values()
    {
        filter.extend_from_slice(&part.map_err(disk)?);
    }
    Ok((!filter.is_empty()).then_some(filter))
}

/// The runs of one tree while a writer holds its turn: the next run
/// number, and each family's manifest as read or last written.
pub(super) struct Runs<'t> {
    tree: &'t Tree,
    next: u64,
    manifests: BTreeMap<Family, Manifest>,
}

impl<'t> Runs<'t> {
    pub(super) fn open(tree: &'t Tree) -> StoreResult<Self> {
        let next = match tree.get(keys::orders::NEXT_RUN).map_err(disk)? {
            Some(v) => decode_u64(&v, "next run number")?,
            None => 1,
        };
        Ok(Runs {
            tree,
            next,
            manifests: BTreeMap::new(),
        })
    }

    /// A new run number; `batch` stores the next one.
    pub(super) fn take(&mut self, batch: &mut sled::Batch) -> u64 {
        let run = self.next;
        self.next += 1;
        batch.insert(keys::orders::NEXT_RUN, &self.next.to_be_bytes());
        run
    }

    pub(super) fn manifest(&mut self, family: Family) -> StoreResult<&mut Manifest> {
        if !self.manifests.contains_key(&family) {
            let manifest = family.manifest(self.tree)?;
            self.manifests.insert(family, manifest);
        }
        Ok(self.manifests.get_mut(&family).expect("inserted above"))
    }

    /// Puts `manifest` in `batch` and keeps it as the family's.
    fn set_manifest(&mut self, batch: &mut sled::Batch, family: Family, manifest: Manifest) {
        batch.insert(family.manifest_key(), manifest.encode());
        self.manifests.insert(family, manifest);
    }

    /// Adds run `run` of `family`, holding `entries`, to `batch`.
    pub(super) fn add(
        &mut self,
        batch: &mut sled::Batch,
        family: Family,
        run: u64,
        mut entries: Vec<Entry>,
    ) -> StoreResult<()> {
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        for chunk in runs::chunks(&entries) {
            batch.insert(
                family.chunk_key(run, &chunk[0].key),
                runs::encode_chunk(chunk),
            );
        }
        if let Some(filter) = family.filter_of(&entries) {
            put_filter(self.tree, batch, run, &filter)?;
        }
        let mut manifest = self.manifest(family)?.clone();
        manifest.live.push(Run {
            id: run,
            entries: entries.len() as u64,
            least: entries.first().map(|e| e.key.clone()).unwrap_or_default(),
            greatest: entries.last().map(|e| e.key.clone()).unwrap_or_default(),
        });
        self.set_manifest(batch, family, manifest);
        Ok(())
    }

    /// Tidies (`tidy`) every family this writer has read or written.
    pub(super) fn tidy_all(&mut self) -> StoreResult<()> {
        let families: Vec<Family> = self.manifests.keys().copied().collect();
        families
            .into_iter()
            .try_for_each(|family| self.tidy(family))
    }

    /// Deletes the chunks of `family`'s stale runs, then merges its runs
    /// until no tier is full.
    fn tidy(&mut self, family: Family) -> StoreResult<()> {
        self.clear_stale(family)?;
        while let Some(inputs) = runs::plan(&self.manifest(family)?.live) {
            self.merge(family, &inputs)?;
            self.clear_stale(family)?;
        }
        Ok(())
    }

    /// Merges runs `inputs` of `family` into one new run. Its chunks are
    /// written in batches, the run listed as stale until the last one
    /// swaps it in for its inputs: a merge cut short leaves only a stale
    /// run, which the next writer clears away.
    pub(super) fn merge(&mut self, family: Family, inputs: &[u64]) -> StoreResult<()> {
        let tree = self.tree;
        let mut manifest = self.manifest(family)?.clone();
        // Kills hide older versions; once every run is merged (and no
        // key from before runs is left under them), nothing is older.
        let everything = inputs.len() == manifest.live.len() && !family.has_legacy(tree)?;
        let mut batch = sled::Batch::default();
        let out = self.take(&mut batch);
        manifest.stale.push(out);
        self.set_manifest(&mut batch, family, manifest.clone());

        let sources = inputs
            .iter()
            .map(|&run| read_run(tree, family, run, None))
            .collect::<StoreResult<Vec<_>>>()?;
        let held = runs::held(&manifest.live, inputs);
        let mut merged = MergedRun::new(out, family, held, CHUNK_BYTES, everything);
        let mut chunks = 0;
        for entry in Merge::new(sources) {
            if let Some(chunk) = merged.push(entry?) {
                batch.insert(
                    family.chunk_key(out, &chunk[0].key),
                    runs::encode_chunk(&chunk),
                );
                chunks += 1;
                if chunks % MERGE_CHUNKS == 0 {
                    tree.apply_batch(std::mem::take(&mut batch)).map_err(disk)?;
                }
            }
        }
        let (last, listed, filter) = merged.finish();
        if let Some(chunk) = last {
            batch.insert(
                family.chunk_key(out, &chunk[0].key),
                runs::encode_chunk(&chunk),
            );
        }
        if let Some(filter) = filter {
            put_filter(tree, &mut batch, out, &filter)?;
        }
        manifest.live.retain(|run| !inputs.contains(&run.id));
        manifest.live.extend(listed);
        manifest.stale.retain(|&run| run != out);
        manifest.stale.extend_from_slice(inputs);
        self.set_manifest(&mut batch, family, manifest);
        tree.apply_batch(batch).map_err(disk)
    }

    /// Deletes the chunks of `family`'s stale runs, a batch at a time; the
    /// batch deleting a run's last chunks takes it off the list.
    pub(super) fn clear_stale(&mut self, family: Family) -> StoreResult<()> {
        let tree = self.tree;
        while let Some(&run) = self.manifest(family)?.stale.first() {
            loop {
                let chunks = tree
                    .scan_prefix(family.chunk_key(run, &[]))
                    .keys()
                    .take(DELETE_KEYS)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(disk)?;
                let mut batch = sled::Batch::default();
                for key in &chunks {
                    batch.remove(key);
                }
                let done = chunks.len() < DELETE_KEYS;
                if done {
                    if let Some(prefix) = family.filter_prefix(run) {
                        for key in tree.scan_prefix(prefix).keys() {
                            batch.remove(key.map_err(disk)?);
                        }
                    }
                    let mut manifest = self.manifest(family)?.clone();
                    manifest.stale.retain(|&stale| stale != run);
                    self.set_manifest(&mut batch, family, manifest);
                }
                tree.apply_batch(batch).map_err(disk)?;
                if done {
                    break;
                }
            }
        }
        Ok(())
    }
}
