//! Orders in sled: one tree per tenant, keyed month, `created_at` and
//! `order_id` (see `keys::orders`), with per-month counts kept in the same
//! batch as the orders; a call is applied in slices of a few milliseconds'
//! work each, as sled stops the whole store for the length of a batch.

use async_trait::async_trait;
use sled::Tree;

use super::commit::backend;
use super::{SledStore, keys, lock};
use crate::model::Tenant;
use crate::model::order::{Month, Order};
use crate::store::codec::{decode_order, encode_order};
use crate::store::{OrderCursor, OrderStore, PutOrders, StoreError, StoreResult};

/// A month's order count (0 when it has none).
fn read_count(tree: &Tree, count_key: &[u8]) -> StoreResult<u64> {
    match tree.get(count_key).map_err(backend)? {
        Some(v) => decode_count(&v),
        None => Ok(0),
    }
}

/// All orders of one tenant's tree: the sum of its month counts.
fn total_count(tree: &Tree) -> StoreResult<u64> {
    let mut total = 0u64;
    for entry in tree.scan_prefix([b'c']) {
        let (_, value) = entry.map_err(backend)?;
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

impl SledStore {
    /// The order tree of `tenant`, created on its first write (sled keeps
    /// opened trees, so this is a lookup after the first call).
    fn orders_tree(&self, tenant: &Tenant) -> StoreResult<Tree> {
        self.inner
            .db
            .open_tree(keys::orders::tree_name(tenant))
            .map_err(backend)
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
        use std::collections::HashMap;
        let tree = &self.orders_tree(tenant)?;
        let _turn = lock(&self.inner.orders_writer);
        // A file of new, ascending ids (say) has no stored order_id within
        // its range: one probe instead of a lookup per order.
        let fresh = match Order::id_range(&orders) {
            Some((least, greatest)) => tree
                .range(keys::orders::by_id(least)..=keys::orders::by_id(greatest))
                .next()
                .transpose()
                .map_err(backend)?
                .is_none(),
            None => true,
        };
        // Where each order goes and which key it replaces, all worked out
        // before anything is written (an order_id seen earlier in the call
        // replaces the key it was placed at then: `placed` holds the index
        // of its latest placement).
        let mut placed: HashMap<&str, usize> = HashMap::with_capacity(orders.len());
        let mut placements: Vec<Placement> = Vec::with_capacity(orders.len());
        let mut added = 0u64;
        for order in &orders {
            let key = keys::orders::order(order);
            let id_key = keys::orders::by_id(&order.order_id);
            let previous = match placed.get(order.order_id.as_str()) {
                Some(&earlier) => Some(placements[earlier].key.clone()),
                None if fresh => None,
                None => tree.get(&id_key).map_err(backend)?.map(|v| v.to_vec()),
            };
            added += u64::from(previous.is_none());
            placed.insert(&order.order_id, placements.len());
            placements.push(Placement {
                key,
                id_key,
                previous,
            });
        }
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
        let mut counts = MonthCounts::default();
        for (orders, placements) in orders
            .chunks(SLICE_ORDERS)
            .zip(placements.chunks(SLICE_ORDERS))
        {
            let mut batch = sled::Batch::default();
            let mut touched = Vec::new();
            for (order, placement) in orders.iter().zip(placements) {
                let month = keys::orders::month_of(&placement.key);
                match &placement.previous {
                    Some(old) if *old == placement.key => {}
                    Some(old) => {
                        batch.remove(old.as_slice());
                        let old_month = keys::orders::month_of(old);
                        counts.add(tree, old_month, -1, &mut touched)?;
                        counts.add(tree, month, 1, &mut touched)?;
                    }
                    None => counts.add(tree, month, 1, &mut touched)?,
                }
                batch.insert(placement.key.as_slice(), encode_order(order));
                batch.insert(placement.id_key.as_slice(), placement.key.as_slice());
            }
            for month in touched {
                batch.insert(
                    keys::orders::count(&month),
                    &counts.of(&month).to_be_bytes(),
                );
            }
            tree.apply_batch(batch).map_err(backend)?;
        }
        Ok(PutOrders::Stored)
    }
}

/// Orders sled applies in one batch. sled applies every batch under a
/// lock that all reads and writes of the store wait on, operations'
/// included, so one batch is kept to a few milliseconds of work: a large
/// import goes in slices, and the rest of the store runs between them.
const SLICE_ORDERS: usize = 128;

/// Where one order of a call goes.
struct Placement {
    /// Its key under its month.
    key: Vec<u8>,
    /// Its order_id's key.
    id_key: Vec<u8>,
    /// The key it replaces, if its order_id was stored.
    previous: Option<Vec<u8>>,
}

/// The month counts a call changes, each read once.
#[derive(Default)]
struct MonthCounts(std::collections::HashMap<Vec<u8>, u64>);

impl MonthCounts {
    /// Adds `delta` to `month`'s count and notes the month in `touched`.
    fn add(
        &mut self,
        tree: &Tree,
        month: &[u8],
        delta: i64,
        touched: &mut Vec<Vec<u8>>,
    ) -> StoreResult<()> {
        let count = match self.0.get_mut(month) {
            Some(count) => count,
            None => {
                let stored = read_count(tree, &keys::orders::count(month))?;
                self.0.entry(month.to_vec()).or_insert(stored)
            }
        };
        *count = count.saturating_add_signed(delta);
        if !touched.iter().any(|m| m.as_slice() == month) {
            touched.push(month.to_vec());
        }
        Ok(())
    }

    fn of(&self, month: &[u8]) -> u64 {
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
        use std::ops::Bound;
        let Some(tree) = self.existing_orders_tree(tenant)? else {
            return Ok((Vec::new(), None));
        };
        tokio::task::spawn_blocking(move || {
            let start = match after {
                Some(OrderCursor(key)) => Bound::Excluded(key),
                None => Bound::Included(keys::orders::month_start(month)),
            };
            let end = Bound::Excluded(keys::orders::month_start(month.next()));
            let mut orders = Vec::with_capacity(limit.min(65_536));
            let mut last = None;
            for entry in tree.range::<Vec<u8>, _>((start, end)).take(limit) {
                let (key, value) = entry.map_err(backend)?;
                orders.push(decode_order(&value)?);
                last = Some(key);
            }
            let cursor = if orders.len() == limit {
                last.map(|k| OrderCursor(k.to_vec()))
            } else {
                None
            };
            Ok((orders, cursor))
        })
        .await
        .map_err(backend)?
    }
}
