//! Orders in sled, as a plain map of them would hold them: many calls with
//! moves and merges, trees from before runs, merges cut short, and listings
//! beside merges.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::model::order::OrderStatus;
use crate::store::SyncMode;
use crate::store::codec::encode_order;
use crate::store::runs::{self, Entry};

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
    calls_with_moves_and_merges(false);
}

#[test]
fn location_runs_with_and_without_filters_read_alike() {
    // Runs written before filters have none: every other call's are
    // taken away, so that runs with and without meet in reads and merges.
    calls_with_moves_and_merges(true);
}

fn calls_with_moves_and_merges(strip_filters: bool) {
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
        if strip_filters && call % 2 == 0 {
            let tree = store.orders_tree(&tenant).unwrap();
            for key in tree.scan_prefix(b"f").keys() {
                tree.remove(key.unwrap()).unwrap();
            }
        }
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
    // Every location run written or merged since has its filter, and no
    // filter is left of a run merged away.
    let filters: Vec<Vec<u8>> = tree
        .scan_prefix(b"f")
        .keys()
        .map(|key| key.unwrap().to_vec())
        .collect();
    let live = Family::Locations.manifest(&tree).unwrap().live;
    assert!(filters.iter().all(|key| {
        live.iter()
            .any(|run| key.starts_with(&keys::orders::id_filter(run.id, None)))
    }));
    if !strip_filters {
        assert!(
            live.iter()
                .all(|run| read_filter(&tree, run.id).unwrap().is_some())
        );
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
        key: runs::position(&order("zz", 1, 1, 1)),
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

#[test]
fn a_call_over_many_months_is_sliced_by_months_too() {
    // 1,000 orders, each in a month of its own; the first moves from
    // yet another.
    let orders: Vec<Order> = (0..1000)
        .map(|i| {
            let mut o = order(&format!("o{i}"), 1, 0, 1);
            o.created_at = Month::new(2000 + i / 12, (i % 12) as u8 + 1)
                .unwrap()
                .start_micros();
            o
        })
        .collect();
    let stored_at = HashMap::from([(
        "o0",
        Location {
            month: *b"199912",
            created: [0; 8],
        },
    )]);
    let cut = slices(&orders, &stored_at);
    assert_eq!(cut.concat(), orders);
    for slice in &cut {
        let mut months: Vec<[u8; 6]> = slice.iter().map(|o| o.month().key()).collect();
        months.extend(
            slice
                .iter()
                .filter(|o| o.order_id == "o0")
                .map(|_| *b"199912"),
        );
        months.sort_unstable();
        months.dedup();
        assert!(months.len() <= SLICE_MONTHS, "{} months", months.len());
    }
    // Few months: slices of SLICE_ORDERS orders.
    let many: Vec<Order> = (0..40_000)
        .map(|i| order(&format!("p{i}"), 1, 0, 1))
        .collect();
    let lengths: Vec<usize> = slices(&many, &HashMap::new())
        .iter()
        .map(|s| s.len())
        .collect();
    assert_eq!(
        lengths,
        [SLICE_ORDERS, SLICE_ORDERS, 40_000 - 2 * SLICE_ORDERS]
    );

    // And stored, each month holds its own.
    let (_dir, store) = store();
    let tenant = Tenant::default();
    store
        .put_orders_blocking(&tenant, orders.clone(), None)
        .unwrap();
    for o in orders.iter().step_by(97) {
        assert_eq!(listing(&store, &tenant, o.month(), 10), vec![o.clone()]);
    }
}

#[test]
fn a_damaged_location_is_reported_not_sliced() {
    let at = Location::decode(b"20240300000000").unwrap();
    assert_eq!((at.month, at.created), (*b"202403", *b"00000000"));
    for bad in [&b""[..], b"202403", b"2024030000000", b"202403000000000"] {
        assert!(matches!(Location::decode(bad), Err(StoreError::Corrupt(_))));
    }
}

#[test]
fn a_large_filter_is_stored_in_parts_and_read_whole() {
    let (_dir, store) = store();
    let tree = store.orders_tree(&Tenant::default()).unwrap();
    let filter: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let mut batch = sled::Batch::default();
    families::put_filter(&tree, &mut batch, 7, &filter).unwrap();
    // Every part but the last is in already; the last comes with the batch.
    assert_eq!(
        tree.scan_prefix(keys::orders::id_filter(7, None)).count(),
        2
    );
    tree.apply_batch(batch).unwrap();
    assert_eq!(
        tree.scan_prefix(keys::orders::id_filter(7, None)).count(),
        3
    );
    assert_eq!(read_filter(&tree, 7).unwrap(), Some(filter));
    assert_eq!(read_filter(&tree, 8).unwrap(), None);
}
