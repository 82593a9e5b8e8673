//! Orders in sled: one tree per tenant, holding each month's orders and
//! the order_id locations as sorted runs (`runs`, keys in
//! `keys::orders`), a few hundred to a key, with per-month counts kept in
//! the same batch as each slice's runs. A call is applied in slices, as
//! sled stops the whole store for the length of a batch; once it is
//! stored, the runs it tipped over a tier are merged, in batches of their
//! own. Trees written before runs keep their key per order, read beside
//! the runs and never written again.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use sled::Tree;

use super::commit::{backend, disk};
use super::runs::{self, CHUNK_BYTES, Entry, Manifest, Merge, Run};
use super::{SledStore, keys, lock};
use crate::model::Tenant;
use crate::model::order::{Month, Order};
use crate::store::codec::{decode_order, encode_order};
use crate::store::{OrderCursor, OrderStore, PutOrders, StoreError, StoreResult};

/// Orders sled applies in one batch: their runs are a few hundred keys and
/// about two megabytes. sled applies every batch under a lock that all
/// reads and writes of the store wait on, operations' included, so one
/// batch is kept to a few milliseconds of work: a large import goes in
/// slices, and the rest of the store runs between them.
const SLICE_ORDERS: usize = 16_384;

/// Chunks a merge writes per batch, for the same reason.
const MERGE_CHUNKS: usize = 256;

/// Keys a batch deletes when a merge's inputs are cleared away.
const DELETE_KEYS: usize = 256;

/// How often a month listing is read again because a merge replaced runs
/// under it before it gives up (each merge takes a writer's turn, so
/// this is reached only by a store that merges without pause).
const READ_ATTEMPTS: usize = 64;

/// A month's count (0 when it has none).
fn read_count(tree: &Tree, count_key: &[u8]) -> StoreResult<u64> {
    match tree.get(count_key).map_err(disk)? {
        Some(v) => decode_count(&v),
        None => Ok(0),
    }
}

/// All orders of one tenant's tree: the sum of its month counts.
fn total_count(tree: &Tree) -> StoreResult<u64> {
    let mut total = 0u64;
    for entry in tree.scan_prefix([b'c']) {
        let (_, value) = entry.map_err(disk)?;
        total = total.saturating_add(decode_count(&value)?);
    }
    Ok(total)
}

fn decode_count(value: &[u8]) -> StoreResult<u64> {
    value
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("month count".into()))
}

/// The runs of one month's orders, or of the order_id locations.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Month([u8; 6]),
    Locations,
}

impl Family {
    fn manifest_key(self) -> Vec<u8> {
        match self {
            Family::Month(month) => keys::orders::month_manifest(&month),
            Family::Locations => keys::orders::ID_MANIFEST.to_vec(),
        }
    }

    /// The key of run `run`'s chunk starting at `first` (the run's prefix
    /// when `first` is empty).
    fn chunk_key(self, run: u64, first: &[u8]) -> Vec<u8> {
        match self {
            Family::Month(month) => keys::orders::month_chunk(&month, Some(run), first),
            Family::Locations => keys::orders::id_chunk(Some(run), first),
        }
    }

    fn manifest(self, tree: &Tree) -> StoreResult<Manifest> {
        match tree.get(self.manifest_key()).map_err(disk)? {
            Some(bytes) => Manifest::decode(&bytes),
            None => Ok(Manifest::default()),
        }
    }

    /// Whether the tree holds entries of this family from before runs.
    fn has_legacy(self, tree: &Tree) -> StoreResult<bool> {
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

type Source = Box<dyn Iterator<Item = StoreResult<Entry>>>;

/// The entries of one run whose keys are `from` or later, in key order.
fn read_run(tree: &Tree, family: Family, run: u64, from: Option<&[u8]>) -> StoreResult<Source> {
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
fn read_legacy_month(tree: &Tree, month: [u8; 6], from: Option<&[u8]>) -> Source {
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

/// Where each of `orders`' order_ids is stored now (month and created_at),
/// for those that are. `orders` holds each order_id once.
fn locate<'o>(tree: &Tree, orders: &'o [Order]) -> StoreResult<HashMap<&'o str, Vec<u8>>> {
    let mut found: HashMap<&str, (u64, Vec<u8>)> = HashMap::new();
    let Some((least, greatest)) = Order::id_range(orders) else {
        return Ok(HashMap::new());
    };
    let (least, greatest) = (least.as_bytes(), greatest.as_bytes());
    let manifest = Family::Locations.manifest(tree)?;
    let mut ids: Vec<&str> = Vec::new();
    for run in manifest
        .live
        .iter()
        .filter(|run| run.overlaps(least, greatest))
    {
        if ids.is_empty() {
            ids = orders.iter().map(|o| o.order_id.as_str()).collect();
            ids.sort_unstable();
        }
        // Both sides in order_id order: one pass over the run's stretch.
        let mut next = 0;
        for entry in read_run(tree, Family::Locations, run.id, Some(least))? {
            let entry = entry?;
            if entry.key.as_slice() > greatest {
                break;
            }
            while next < ids.len() && ids[next].as_bytes() < entry.key.as_slice() {
                next += 1;
            }
            let Some(&id) = ids.get(next) else { break };
            if id.as_bytes() == entry.key.as_slice()
                && let Some(location) = entry.value
                && found.get(id).is_none_or(|(seq, _)| entry.seq > *seq)
            {
                found.insert(id, (entry.seq, location));
            }
        }
    }
    // A tree from before runs: one lookup for each order_id the runs do
    // not have, if it has any order_id in the range at all.
    let legacy = tree
        .range(keys::orders::legacy_by_id(least)..=keys::orders::legacy_by_id(greatest))
        .next()
        .transpose()
        .map_err(disk)?
        .is_some();
    if legacy {
        for order in orders {
            let id = order.order_id.as_str();
            if found.contains_key(id) {
                continue;
            }
            if let Some(key) = tree
                .get(keys::orders::legacy_by_id(id.as_bytes()))
                .map_err(disk)?
            {
                let location = key
                    .get(1..15)
                    .ok_or_else(|| StoreError::Corrupt("order_id index".into()))?;
                found.insert(id, (0, location.to_vec()));
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(id, (_, at))| (id, at.to_vec()))
        .collect())
}

/// The last row of each order_id of a call (the one that wins), in the
/// call's order.
fn last_of_each(orders: Vec<Order>) -> Vec<Order> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(orders.len());
    for (i, order) in orders.iter().enumerate() {
        last.insert(order.order_id.as_str(), i);
    }
    if last.len() == orders.len() {
        return orders;
    }
    let keep: Vec<bool> = {
        let mut keep = vec![false; orders.len()];
        for &i in last.values() {
            keep[i] = true;
        }
        keep
    };
    orders
        .into_iter()
        .zip(keep)
        .filter_map(|(order, keep)| keep.then_some(order))
        .collect()
}

/// Puts `chunk` in `batch` as a chunk of run `run` and empties it; returns
/// its last key.
fn write_chunk(
    batch: &mut sled::Batch,
    family: Family,
    run: u64,
    chunk: &mut Vec<Entry>,
) -> Vec<u8> {
    batch.insert(
        family.chunk_key(run, &chunk[0].key),
        runs::encode_chunk(chunk),
    );
    let last = chunk.last().map(|e| e.key.clone()).unwrap_or_default();
    chunk.clear();
    last
}

/// The runs of one tree while a writer holds its turn: the next run
/// number, and each family's manifest as read or last written.
struct Runs<'t> {
    tree: &'t Tree,
    next: u64,
    manifests: BTreeMap<Family, Manifest>,
}

impl<'t> Runs<'t> {
    fn open(tree: &'t Tree) -> StoreResult<Self> {
        let next = match tree.get(keys::orders::NEXT_RUN).map_err(disk)? {
            Some(v) => decode_count(&v)?,
            None => 1,
        };
        Ok(Runs {
            tree,
            next,
            manifests: BTreeMap::new(),
        })
    }

    /// A new run number; `batch` stores the next one.
    fn take(&mut self, batch: &mut sled::Batch) -> u64 {
        let run = self.next;
        self.next += 1;
        batch.insert(keys::orders::NEXT_RUN, &self.next.to_be_bytes());
        run
    }

    fn manifest(&mut self, family: Family) -> StoreResult<&mut Manifest> {
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
    fn add(
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
    fn merge(&mut self, family: Family, inputs: &[u64]) -> StoreResult<()> {
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
        let mut chunk: Vec<Entry> = Vec::new();
        let (mut chunks, mut bytes) = (0, 0);
        let (mut entries, mut least, mut greatest) = (0u64, Vec::new(), Vec::new());
        for entry in Merge::new(sources) {
            let entry = entry?;
            if everything && entry.value.is_none() {
                continue;
            }
            if entries == 0 {
                least = entry.key.clone();
            }
            entries += 1;
            bytes += runs::size(&entry);
            chunk.push(entry);
            if bytes >= CHUNK_BYTES {
                greatest = write_chunk(&mut batch, family, out, &mut chunk);
                (chunks, bytes) = (chunks + 1, 0);
                if chunks % MERGE_CHUNKS == 0 {
                    tree.apply_batch(std::mem::take(&mut batch)).map_err(disk)?;
                }
            }
        }
        if !chunk.is_empty() {
            greatest = write_chunk(&mut batch, family, out, &mut chunk);
        }
        manifest.live.retain(|run| !inputs.contains(&run.id));
        if entries > 0 {
            manifest.live.push(Run {
                id: out,
                entries,
                least,
                greatest,
            });
        }
        manifest.stale.retain(|&run| run != out);
        manifest.stale.extend_from_slice(inputs);
        self.set_manifest(&mut batch, family, manifest);
        tree.apply_batch(batch).map_err(disk)
    }

    /// Deletes the chunks of `family`'s stale runs, a batch at a time; the
    /// batch deleting a run's last chunks takes it off the list.
    fn clear_stale(&mut self, family: Family) -> StoreResult<()> {
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

impl SledStore {
    /// The order tree of `tenant`, created on its first write (sled keeps
    /// opened trees, so this is a lookup after the first call).
    fn orders_tree(&self, tenant: &Tenant) -> StoreResult<Tree> {
        self.inner
            .db
            .open_tree(keys::orders::tree_name(tenant))
            .map_err(disk)
    }

    /// The order tree of `tenant` if it has ever stored an order: reading
    /// creates nothing.
    fn existing_orders_tree(&self, tenant: &Tenant) -> StoreResult<Option<Tree>> {
        let name = keys::orders::tree_name(tenant);
        if !self
            .inner
            .db
            .tree_names()
            .iter()
            .any(|existing| existing.as_ref() == name.as_bytes())
        {
            return Ok(None);
        }
        self.orders_tree(tenant).map(Some)
    }

    fn put_orders_blocking(
        &self,
        tenant: &Tenant,
        orders: Vec<Order>,
        limit: Option<u64>,
    ) -> StoreResult<PutOrders> {
        let tree = &self.orders_tree(tenant)?;
        let _turn = lock(&self.inner.orders_writer);
        let orders = last_of_each(orders);
        // Where each stored order_id is, all worked out before anything is
        // written, under the writer's turn.
        let stored_at = locate(tree, &orders)?;
        let added = (orders.len() - stored_at.len()) as u64;
        // Checked under the writer's turn, so concurrent imports of one
        // tenant cannot both pass it.
        if let Some(limit) = limit
            && added > 0
        {
            let stored = total_count(tree)?;
            if stored.saturating_add(added) > limit {
                return Ok(PutOrders::OverLimit { stored });
            }
        }
        let mut runs = Runs::open(tree)?;
        let mut counts = MonthCounts::default();
        for slice in orders.chunks(SLICE_ORDERS) {
            let mut batch = sled::Batch::default();
            let run = runs.take(&mut batch);
            let mut months: BTreeMap<[u8; 6], Vec<Entry>> = BTreeMap::new();
            let mut locations = Vec::with_capacity(slice.len());
            let mut touched = Vec::new();
            for order in slice {
                let month = order.month().key();
                let position = keys::orders::position(order);
                match stored_at.get(order.order_id.as_str()) {
                    Some(at) if at[..6] == month && at[6..] == position[..8] => {}
                    Some(at) => {
                        // It moves: a kill where it was hides the old version.
                        let old_month: [u8; 6] = at[..6]
                            .try_into()
                            .map_err(|_| StoreError::Corrupt("order location".into()))?;
                        let old = [&at[6..], order.order_id.as_bytes()].concat();
                        months.entry(old_month).or_default().push(Entry {
                            key: old,
                            seq: run,
                            value: None,
                        });
                        counts.add(tree, &old_month, -1, &mut touched)?;
                        counts.add(tree, &month, 1, &mut touched)?;
                    }
                    None => counts.add(tree, &month, 1, &mut touched)?,
                }
                locations.push(Entry {
                    key: order.order_id.as_bytes().to_vec(),
                    seq: run,
                    value: Some(keys::orders::location(&month, &position)),
                });
                months.entry(month).or_default().push(Entry {
                    key: position,
                    seq: run,
                    value: Some(encode_order(order)),
                });
            }
            for (month, entries) in months {
                runs.add(&mut batch, Family::Month(month), run, entries)?;
            }
            runs.add(&mut batch, Family::Locations, run, locations)?;
            for month in touched {
                batch.insert(
                    keys::orders::count(&month),
                    &counts.of(&month).to_be_bytes(),
                );
            }
            tree.apply_batch(batch).map_err(disk)?;
        }
        let families: Vec<Family> = runs.manifests.keys().copied().collect();
        for family in families {
            runs.tidy(family)?;
        }
        Ok(PutOrders::Stored)
    }
}

/// Up to `limit` orders of `month` after position `after`: every run of
/// the month merged, each position's latest version, kills left out.
fn month_page_blocking(
    tree: &Tree,
    month: Month,
    after: Option<&[u8]>,
    limit: usize,
) -> StoreResult<(Vec<Order>, Option<OrderCursor>)> {
    let family = Family::Month(month.key());
    for _ in 0..READ_ATTEMPTS {
        let manifest = family.manifest(tree)?;
        let mut sources = manifest
            .live
            .iter()
            .map(|run| read_run(tree, family, run.id, after))
            .collect::<StoreResult<Vec<_>>>()?;
        sources.push(read_legacy_month(tree, month.key(), after));
        let mut orders = Vec::with_capacity(limit.min(65_536));
        let mut last = None;
        for entry in Merge::new(sources) {
            if orders.len() == limit {
                break;
            }
            let entry = entry?;
            if after.is_some_and(|after| entry.key.as_slice() <= after) {
                continue;
            }
            if let Some(value) = entry.value {
                orders.push(decode_order(&value)?);
                last = Some(entry.key);
            }
        }
        // A merge that replaced a run read here may have deleted some
        // of its chunks meanwhile: read again. (Runs added meanwhile
        // change nothing read.)
        let now = family.manifest(tree)?;
        if manifest.live.iter().all(|run| now.is_live(run.id)) {
            let cursor = if orders.len() == limit {
                last.map(OrderCursor)
            } else {
                None
            };
            return Ok((orders, cursor));
        }
    }
    Err(StoreError::Unavailable(
        "the month's orders kept being rearranged while read; try again".into(),
    ))
}

/// The month counts a call changes, each read once.
#[derive(Default)]
struct MonthCounts(HashMap<[u8; 6], u64>);

impl MonthCounts {
    /// Adds `delta` to `month`'s count and notes the month in `touched`.
    fn add(
        &mut self,
        tree: &Tree,
        month: &[u8; 6],
        delta: i64,
        touched: &mut Vec<[u8; 6]>,
    ) -> StoreResult<()> {
        let count = match self.0.get_mut(month) {
            Some(count) => count,
            None => {
                let stored = read_count(tree, &keys::orders::count(month))?;
                self.0.entry(*month).or_insert(stored)
            }
        };
        *count = count.saturating_add_signed(delta);
        if !touched.contains(month) {
            touched.push(*month);
        }
        Ok(())
    }

    fn of(&self, month: &[u8; 6]) -> u64 {
        self.0.get(month).copied().unwrap_or(0)
    }
}

#[async_trait]
impl OrderStore for SledStore {
    async fn put_orders(
        &self,
        tenant: &Tenant,
        orders: Vec<Order>,
        limit: Option<u64>,
    ) -> StoreResult<PutOrders> {
        let store = self.clone();
        let tenant = tenant.clone();
        tokio::task::spawn_blocking(move || store.put_orders_blocking(&tenant, orders, limit))
            .await
            .map_err(backend)?
    }

    async fn month_count(&self, tenant: &Tenant, month: Month) -> StoreResult<u64> {
        match self.existing_orders_tree(tenant)? {
            Some(tree) => read_count(&tree, &keys::orders::count(&month.key())),
            None => Ok(0),
        }
    }

    async fn month_page(
        &self,
        tenant: &Tenant,
        month: Month,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Order>, Option<OrderCursor>)> {
        let Some(tree) = self.existing_orders_tree(tenant)? else {
            return Ok((Vec::new(), None));
        };
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        tokio::task::spawn_blocking(move || {
            let after = after.map(|OrderCursor(position)| position);
            month_page_blocking(&tree, month, after.as_deref(), limit)
        })
        .await
        .map_err(backend)?
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::order::OrderStatus;
    use crate::store::SyncMode;

    fn store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SyncMode::Always).unwrap();
        (dir, store)
    }

    fn order(id: &str, month: u8, day: i64, amount: i64) -> Order {
        let start = Month::new(2024, month).unwrap().start_micros();
        Order {
            order_id: id.into(),
            created_at: start + day * 86_400_000_000,
            customer_id: "c".into(),
            status: OrderStatus::Placed,
            amount_cents: amount,
        }
    }

    /// Every order of `month`, read `page` at a time.
    fn listing(store: &SledStore, tenant: &Tenant, month: Month, page: usize) -> Vec<Order> {
        let tree = store.orders_tree(tenant).unwrap();
        let mut all = Vec::new();
        let mut cursor: Option<OrderCursor> = None;
        loop {
            let after = cursor.as_ref().map(|c| c.0.as_slice());
            let (orders, next) = month_page_blocking(&tree, month, after, page).unwrap();
            assert!(orders.len() <= page);
            all.extend(orders);
            match next {
                Some(next) => cursor = Some(next),
                None => return all,
            }
        }
    }

    /// The orders a model of the store holds in `month`, in listing order.
    fn expected(model: &HashMap<String, Order>, month: Month) -> Vec<Order> {
        let mut orders: Vec<Order> = model
            .values()
            .filter(|o| o.month() == month)
            .cloned()
            .collect();
        orders.sort_by(|a, b| (a.created_at, &a.order_id).cmp(&(b.created_at, &b.order_id)));
        orders
    }

    fn check(store: &SledStore, tenant: &Tenant, model: &HashMap<String, Order>) {
        let total: u64 = (1..=3)
            .map(|m| {
                let month = Month::new(2024, m).unwrap();
                let want = expected(model, month);
                assert_eq!(listing(store, tenant, month, 97), want, "month {m}");
                let tree = store.orders_tree(tenant).unwrap();
                let count = read_count(&tree, &keys::orders::count(&month.key())).unwrap();
                assert_eq!(count, want.len() as u64, "count of month {m}");
                count
            })
            .sum();
        assert_eq!(total, model.len() as u64);
    }

    #[test]
    fn many_calls_with_moves_and_merges_read_as_a_plain_map_would() {
        let (_dir, store) = store();
        let tenant = Tenant::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut model: HashMap<String, Order> = HashMap::new();
        for call in 0..40 {
            // Mostly small calls (so runs pile up and merge), one past a
            // slice; ids from a pool small enough to be replaced often,
            // some twice in one call.
            let size = if call == 20 {
                5000
            } else {
                rng.random_range(1..400)
            };
            let orders: Vec<Order> = (0..size)
                .map(|_| {
                    let id = format!("o{:05}", rng.random_range(0..3000));
                    order(
                        &id,
                        rng.random_range(1..=3),
                        rng.random_range(0..28),
                        rng.random_range(0..1000),
                    )
                })
                .collect();
            for o in &orders {
                model.insert(o.order_id.clone(), o.clone());
            }
            let put = store.put_orders_blocking(&tenant, orders, None).unwrap();
            assert_eq!(put, PutOrders::Stored);
            if call % 8 == 7 {
                check(&store, &tenant, &model);
            }
        }
        check(&store, &tenant, &model);
        // Merging kept every tier short, and left no stale run behind.
        let tree = store.orders_tree(&tenant).unwrap();
        for family in [
            Family::Month(Month::new(2024, 1).unwrap().key()),
            Family::Locations,
        ] {
            let manifest = family.manifest(&tree).unwrap();
            assert!(manifest.live.len() < 16, "{} runs", manifest.live.len());
            assert!(manifest.stale.is_empty());
            assert_eq!(runs::plan(&manifest.live), None);
        }
    }

    #[test]
    fn orders_stored_before_runs_are_read_replaced_and_counted() {
        let (_dir, store) = store();
        let tenant = Tenant::default();
        let tree = store.orders_tree(&tenant).unwrap();
        // As the layout before runs wrote them: a key per order and one
        // per order_id.
        let old = [
            order("a", 1, 3, 1),
            order("b", 1, 5, 2),
            order("c", 2, 1, 3),
        ];
        for o in &old {
            let key = keys::orders::legacy_order(o);
            tree.insert(
                keys::orders::legacy_by_id(o.order_id.as_bytes()),
                key.as_slice(),
            )
            .unwrap();
            tree.insert(key, encode_order(o)).unwrap();
        }
        for (month, n) in [(1u8, 2u64), (2, 1)] {
            let key = keys::orders::count(&Month::new(2024, month).unwrap().key());
            tree.insert(key, &n.to_be_bytes()).unwrap();
        }
        let mut model: HashMap<String, Order> = old
            .iter()
            .map(|o| (o.order_id.clone(), o.clone()))
            .collect();
        check(&store, &tenant, &model);
        // "a" moves to March, "b" stays where it is with a new amount, "c"
        // moves within February, "d" is new.
        let new = vec![
            order("a", 3, 1, 10),
            order("b", 1, 5, 20),
            order("c", 2, 9, 30),
            order("d", 1, 4, 40),
        ];
        for o in &new {
            model.insert(o.order_id.clone(), o.clone());
        }
        assert_eq!(
            store.put_orders_blocking(&tenant, new, Some(4)).unwrap(),
            PutOrders::Stored
        );
        check(&store, &tenant, &model);
        // The limit sees the old orders too.
        assert_eq!(
            store
                .put_orders_blocking(&tenant, vec![order("e", 1, 1, 1)], Some(4))
                .unwrap(),
            PutOrders::OverLimit { stored: 4 }
        );
        // Merging every run of January keeps the kill of the old "a": the
        // key from before runs is still under it.
        let january = Family::Month(Month::new(2024, 1).unwrap().key());
        let mut runs = Runs::open(&tree).unwrap();
        let live: Vec<u64> = runs
            .manifest(january)
            .unwrap()
            .live
            .iter()
            .map(|r| r.id)
            .collect();
        runs.merge(january, &live).unwrap();
        runs.clear_stale(january).unwrap();
        check(&store, &tenant, &model);
    }

    #[test]
    fn a_merge_cut_short_is_cleared_by_the_next_writer() {
        let (_dir, store) = store();
        let tenant = Tenant::default();
        let tree = store.orders_tree(&tenant).unwrap();
        let orders: Vec<Order> = (0..10).map(|i| order(&format!("o{i}"), 1, i, i)).collect();
        store
            .put_orders_blocking(&tenant, orders.clone(), None)
            .unwrap();
        // As a crash would leave it: a merge's first batch, listing its
        // output as stale, with one chunk written.
        let january = Family::Month(Month::new(2024, 1).unwrap().key());
        let mut manifest = january.manifest(&tree).unwrap();
        manifest.stale.push(99);
        let stray = vec![Entry {
            key: keys::orders::position(&order("zz", 1, 1, 1)),
            seq: 99,
            value: Some(encode_order(&order("zz", 1, 1, 1))),
        }];
        tree.insert(
            january.chunk_key(99, &stray[0].key),
            runs::encode_chunk(&stray),
        )
        .unwrap();
        tree.insert(january.manifest_key(), manifest.encode())
            .unwrap();
        // Readers never see it.
        let month = Month::new(2024, 1).unwrap();
        assert_eq!(listing(&store, &tenant, month, 4), orders);
        store
            .put_orders_blocking(&tenant, vec![order("o0", 1, 0, 100)], None)
            .unwrap();
        assert!(january.manifest(&tree).unwrap().stale.is_empty());
        assert_eq!(tree.scan_prefix(january.chunk_key(99, &[])).count(), 0);
    }

    #[test]
    fn a_listing_read_beside_merges_misses_nothing_and_repeats_nothing() {
        use std::collections::HashSet;
        use std::sync::{Arc, Mutex};
        let (_dir, store) = store();
        let tenant = Tenant::default();
        let month = Month::new(2024, 1).unwrap();
        // Each order_id keeps its place, so that whatever was stored
        // before a listing began is in it exactly once, however the runs
        // under it are merged meanwhile.
        let at = |i: u32| order(&format!("o{i:04}"), 1, i64::from(i % 28), 1);
        let stored = Arc::new(Mutex::new(HashSet::new()));
        let reader = {
            let (store, tenant, stored) = (store.clone(), tenant.clone(), stored.clone());
            std::thread::spawn(move || {
                for _ in 0..150 {
                    let before: HashSet<String> = lock(&stored).clone();
                    let all = listing(&store, &tenant, month, 50);
                    assert!(all.windows(2).all(|w| {
                        (w[0].created_at, &w[0].order_id) < (w[1].created_at, &w[1].order_id)
                    }));
                    let listed: HashSet<String> = all.iter().map(|o| o.order_id.clone()).collect();
                    assert!(listed.is_superset(&before));
                }
            })
        };
        let mut rng = StdRng::seed_from_u64(3);
        while !reader.is_finished() {
            let ids: Vec<u32> = (0..100).map(|_| rng.random_range(0..2000)).collect();
            let orders = ids.iter().map(|&i| at(i)).collect();
            store.put_orders_blocking(&tenant, orders, None).unwrap();
            lock(&stored).extend(ids.iter().map(|&i| format!("o{i:04}")));
        }
        reader.join().unwrap();
    }
}
