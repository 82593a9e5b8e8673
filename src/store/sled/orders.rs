//! Orders in sled: one tree per tenant, holding each month's orders and
//! the order_id locations as sorted runs (`runs`, keys in
//! `keys::orders`), a few hundred to a key, with per-month counts kept in
//! the same batch as each slice's runs. A call is applied in slices, as
//! sled stops the whole store for the length of a batch; once it is
//! stored, the runs it tipped over a tier are merged, in batches of their
//! own. Trees written before runs keep their key per order, read beside
//! the runs and never written again.

use std::collections::HashMap;

use async_trait::async_trait;
use sled::Tree;

use super::commit::{backend, disk};
use super::{SledStore, keys, lock};
use crate::model::Tenant;
use crate::model::order::{Month, Order};
use crate::store::codec::decode_order;
use crate::store::runs::{self, Entry, Family, Found, Location, Merge, Walk, written};
use crate::store::{OrderCursor, OrderStore, PutOrders, StoreError, StoreResult};
use families::{Runs, read_filter, read_legacy_month, read_run};

mod families;

/// Orders sled applies in one batch: their runs are a few hundred keys and
/// about two megabytes. sled applies every batch under a lock that all
/// reads and writes of the store wait on, operations' included, so one
/// batch is kept to a few milliseconds of work: a large import goes in
/// slices, and the rest of the store runs between them.
const SLICE_ORDERS: usize = 16_384;

/// A slice also ends before an order that would take it past this many
/// months (one that moves counts the month it leaves too): each month is
/// a run, a manifest and a count in the slice's batch, and a file spread
/// over thousands of months must still make short batches.
const SLICE_MONTHS: usize = 64;

/// How often a month listing is read again because a merge replaced runs
/// under it before it gives up (each merge takes a writer's turn, so
/// this is reached only by a store that merges without pause).
const READ_ATTEMPTS: usize = 64;

/// A month's count (0 when it has none).
fn read_count(tree: &Tree, count_key: &[u8]) -> StoreResult<u64> {
    match tree.get(count_key).map_err(disk)? {
        Some(v) => decode_u64(&v, "month count"),
        None => Ok(0),
    }
}

/// All orders of one tenant's tree: the sum of its month counts.
fn total_count(tree: &Tree) -> StoreResult<u64> {
    let mut total = 0u64;
    for entry in tree.scan_prefix([b'c']) {
        let (_, value) = entry.map_err(disk)?;
        total = total.saturating_add(decode_u64(&value, "month count")?);
    }
    Ok(total)
}

/// A stored u64 (big-endian): a month count, or the next run number.
fn decode_u64(value: &[u8], what: &str) -> StoreResult<u64> {
    value
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(what.into()))
}

/// Where each of `orders`' order_ids is stored now, for those that are.
/// `orders` holds each order_id once.
fn locate<'o>(tree: &Tree, orders: &'o [Order]) -> StoreResult<HashMap<&'o str, Location>> {
    let mut found = Found::default();
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
        let filter = read_filter(tree, run.id)?;
        match runs::may_hold(filter.as_deref(), run, &ids) {
            Some(candidates) => look_up(tree, run.id, &candidates, &mut found)?,
            None => scan(tree, run.id, &ids, (least, greatest), &mut found)?,
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
            if found.has(id) {
                continue;
            }
            if let Some(key) = tree
                .get(keys::orders::legacy_by_id(id.as_bytes()))
                .map_err(disk)?
            {
                let location = key.get(1..15).unwrap_or_default();
                found.take_legacy(id, Location::decode(location)?);
            }
        }
    }
    Ok(found.locations())
}

/// Looks `candidates` (sorted; those the run's filter may hold) up in
/// location run `run`, reading only the chunks they fall in, each once.
fn look_up<'o>(
    tree: &Tree,
    run: u64,
    candidates: &[&'o str],
    found: &mut Found<'o>,
) -> StoreResult<()> {
    let prefix = Family::Locations.chunk_key(run, &[]);
    let mut chunk: Vec<Entry> = Vec::new();
    for &id in candidates {
        let past = chunk
            .last()
            .is_none_or(|last| id.as_bytes() > last.key.as_slice());
        if past {
            // The chunk holding `id` is the last one starting at or before it.
            chunk = match tree
                .range(prefix.clone()..=Family::Locations.chunk_key(run, id.as_bytes()))
                .next_back()
                .transpose()
                .map_err(disk)?
            {
                Some((_, value)) => runs::decode_chunk(&value)?.into(),
                None => continue,
            };
        }
        if let Some(entry) = runs::entry_in(&chunk, id.as_bytes()) {
            found.take(id, entry)?;
        }
    }
    Ok(())
}

/// Finds `ids` (sorted) in location run `run` by reading its stretch from
/// `least` to `greatest`: for a run stored without a filter.
fn scan<'o>(
    tree: &Tree,
    run: u64,
    ids: &[&'o str],
    (least, greatest): (&[u8], &[u8]),
    found: &mut Found<'o>,
) -> StoreResult<()> {
    let mut walk = Walk::new(ids, greatest);
    for entry in read_run(tree, Family::Locations, run, Some(least))? {
        if !walk.step(&entry?, found)? {
            break;
        }
    }
    Ok(())
}

/// `orders` cut into slices of at most `SLICE_ORDERS` orders and
/// `SLICE_MONTHS` months; `stored_at` says where moving orders were.
fn slices<'o>(orders: &'o [Order], stored_at: &HashMap<&str, Location>) -> Vec<&'o [Order]> {
    let mut slices = Vec::new();
    let (mut start, mut months) = (0, Vec::<[u8; 6]>::new());
    for (i, order) in orders.iter().enumerate() {
        let mut touched = vec![order.month().key()];
        touched.extend(stored_at.get(order.order_id.as_str()).map(|at| at.month));
        touched.dedup();
        let new = touched.iter().filter(|m| !months.contains(m)).count();
        if i > start && (i - start == SLICE_ORDERS || months.len() + new > SLICE_MONTHS) {
            slices.push(&orders[start..i]);
            start = i;
            months.clear();
        }
        for month in touched {
            if !months.contains(&month) {
                months.push(month);
            }
        }
    }
    if start < orders.len() {
        slices.push(&orders[start..]);
    }
    slices
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
        let orders = Order::last_of_each(orders);
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
        for slice in slices(&orders, &stored_at) {
            let mut batch = sled::Batch::default();
            let run = runs.take(&mut batch);
            let out = written(slice, &stored_at, run);
            for (family, entries) in out.families {
                runs.add(&mut batch, family, run, entries)?;
            }
            for (month, delta) in out.counts {
                let count = counts.add(tree, &month, delta)?;
                batch.insert(keys::orders::count(&month), &count.to_be_bytes());
            }
            tree.apply_batch(batch).map_err(disk)?;
        }
        runs.tidy_all()?;
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
    /// Adds `delta` to `month`'s count: the count now.
    fn add(&mut self, tree: &Tree, month: &[u8; 6], delta: i64) -> StoreResult<u64> {
        let count = match self.0.get_mut(month) {
            Some(count) => count,
            None => {
                let stored = read_count(tree, &keys::orders::count(month))?;
                self.0.entry(*month).or_insert(stored)
            }
        };
        *count = count.saturating_add_signed(delta);
        Ok(*count)
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
mod tests;
