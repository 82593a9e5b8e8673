//! Orders on PostgreSQL across the change to runs: rows stored one per
//! order before it are counted by the migration, read beside the runs,
//! replaced, moved and merged over, and the runs stay few, even when the
//! database goes away in the middle of a merge.

use sqlx::Connection;

use crate::proxy::{Link, Proxy, target_of};

use longrun::model::Tenant;
use longrun::model::order::{Month, Order, OrderStatus};
use longrun::store::postgres::PgConfig;
use longrun::store::{OrderStore, PgStore, PutOrders};

/// An order as the table before runs stored it (the store's own record
/// format, written out here as the wire contract it is).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredOrder {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(int64, tag = "2")]
    created_at_us: i64,
    #[prost(string, tag = "3")]
    customer_id: String,
    #[prost(uint32, tag = "4")]
    status: u32,
    #[prost(int64, tag = "5")]
    amount_cents: i64,
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

async fn all(store: &PgStore, tenant: &Tenant, month: u8) -> Vec<Order> {
    let month = Month::new(2024, month).unwrap();
    let (mut orders, mut cursor) = (Vec::new(), None);
    loop {
        let (page, next) = store.month_page(tenant, month, cursor, 64).await.unwrap();
        orders.extend(page);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let count = store.month_count(tenant, month).await.unwrap();
    assert_eq!(count, orders.len() as u64, "count of month {month}");
    orders
}

fn ids(orders: &[Order]) -> Vec<&str> {
    orders.iter().map(|o| o.order_id.as_str()).collect()
}

#[tokio::test]
async fn orders_stored_before_runs_are_counted_read_replaced_and_merged_over() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let config = PgConfig::new(db.url.clone());
    drop(PgStore::open(&config).await.unwrap());

    // Back to the schema before runs, holding 300 orders in March.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for statement in [
        "DROP TABLE longrun_order_runs, longrun_order_chunks, longrun_order_months",
        "DROP SEQUENCE longrun_order_run_numbers",
        "DELETE FROM _sqlx_migrations WHERE version >= 11",
        "INSERT INTO longrun_order_tenants (tenant, stored) VALUES ('acme', 300)",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    for i in 0..300 {
        let o = order(&format!("o{i:04}"), 3, i % 28, i);
        let record = StoredOrder {
            order_id: o.order_id.clone(),
            created_at_us: o.created_at,
            customer_id: o.customer_id.clone(),
            status: 1,
            amount_cents: o.amount_cents,
        };
        sqlx::query(
            "INSERT INTO longrun_orders (tenant, order_id, month, created_at, record)
             VALUES ('acme', $1, 202403, $2, $3)",
        )
        .bind(&o.order_id)
        .bind(o.created_at)
        .bind(prost::Message::encode_to_vec(&record))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let store = PgStore::open(&config).await.unwrap();
    let acme = Tenant::named("acme").unwrap();
    assert_eq!(all(&store, &acme, 3).await.len(), 300);

    // The first 100 move to April, the next 50 change in place, and 50
    // new ones arrive; the limit counts only the new.
    let mut orders: Vec<Order> = (0..100)
        .map(|i| order(&format!("o{i:04}"), 4, 1, i))
        .collect();
    orders.extend((100..150).map(|i| order(&format!("o{i:04}"), 3, i % 28, 5000 + i)));
    orders.extend((0..50).map(|i| order(&format!("n{i:04}"), 3, 27, i)));
    let put = store.put_orders(&acme, orders, Some(350)).await.unwrap();
    assert_eq!(put, PutOrders::Stored);
    let over = vec![order("x", 3, 1, 1)];
    let put = store.put_orders(&acme, over, Some(350)).await.unwrap();
    assert_eq!(put, PutOrders::OverLimit { stored: 350 });

    // Twenty calls, each moving one more March order to April: the runs
    // of both months merge over the rows from before, kills kept.
    for i in 150..170 {
        let put = store
            .put_orders(&acme, vec![order(&format!("o{i:04}"), 4, 2, i)], None)
            .await
            .unwrap();
        assert_eq!(put, PutOrders::Stored);
    }
    let march = all(&store, &acme, 3).await;
    let april = all(&store, &acme, 4).await;
    let moved = |id: &str| ("o0000".."o0100").contains(&id) || ("o0150".."o0170").contains(&id);
    assert_eq!(march.len(), 230);
    assert!(ids(&march).iter().all(|id| !moved(id)));
    let new = ids(&march).iter().filter(|id| id.starts_with('n')).count();
    assert_eq!(new, 50);
    let changed = march.iter().find(|o| o.order_id == "o0120").unwrap();
    assert_eq!(changed.amount_cents, 5120);
    assert_eq!(april.len(), 120);
    assert!(ids(&april).iter().all(|id| moved(id)));

    // Location runs written before filters have none: with every other
    // run's taken away, ten orders that moved to April (found through the
    // runs, not the rows from before) move back.
    sqlx::query("UPDATE longrun_order_runs SET filter = NULL WHERE family = 'ids' AND run % 2 = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let filtered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM longrun_order_runs WHERE family = 'ids' AND filter IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(filtered > 0);
    let back: Vec<Order> = (150..160)
        .map(|i| order(&format!("o{i:04}"), 3, 3, i))
        .collect();
    let put = store.put_orders(&acme, back, None).await.unwrap();
    assert_eq!(put, PutOrders::Stored);
    assert_eq!(all(&store, &acme, 3).await.len(), 240);
    let april = all(&store, &acme, 4).await;
    assert_eq!(april.len(), 110);
    assert!(!ids(&april).contains(&"o0155"));

    // Merging, in the background, leaves no family with eight runs of
    // one tier.
    runs_settle(&mut conn).await;
}

/// Waits until merging, in the background, leaves no family with eight
/// runs of one tier (sizes within a factor of eight). Nothing announces a
/// merge, so the table is polled until then.
async fn runs_settle(conn: &mut sqlx::PgConnection) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut polls = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        polls.tick().await;
        let most: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(n), 0) FROM
               (SELECT count(*) AS n FROM longrun_order_runs
                 GROUP BY tenant, family,
                          (length(ltrim(greatest(entries, 1)::bit(64)::text, '0')) - 1) / 3) AS f",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if most < 8 {
            assert!(most >= 1);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{most} runs in one tier of a family"
        );
    }
}

#[tokio::test]
async fn a_merge_cut_off_from_the_database_is_made_once_it_is_back() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let proxy = Proxy::start(target_of(&db.url)).await;
    let store = PgStore::open(&PgConfig::new(proxy.url(&db.url)))
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let own: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let acme = Tenant::named("acme").unwrap();
    // Seven calls make seven runs of one tier in each family; the eighth
    // fills the tier, and its merge runs after the call.
    for i in 0..7 {
        let put = store
            .put_orders(&acme, vec![order(&format!("o{i}"), 3, i, i)], None)
            .await
            .unwrap();
        assert_eq!(put, PutOrders::Stored);
    }
    // The merge deletes the runs it merged: held here, it waits for them.
    let mut holding = conn.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM longrun_order_runs FOR SHARE")
        .execute(&mut *holding)
        .await
        .unwrap();
    let put = store
        .put_orders(&acme, vec![order("o7", 3, 7, 7)], None)
        .await
        .unwrap();
    assert_eq!(put, PutOrders::Stored);
    let mut watcher = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let waiting = "SELECT count(*) > 0 FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'
                      AND pid <> $1";
    until(&mut watcher, waiting, own, "the merge waits").await;
    // The database goes away under the merge: the link is cut, and the
    // store's sessions end (one waiting for a lock would not notice the
    // cut by itself, and would keep the merge's hold on the family).
    proxy.set(Link::Cut);
    let others = "FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> $1";
    sqlx::query(&format!("SELECT pg_terminate_backend(pid) {others}"))
        .bind(own)
        .execute(&mut watcher)
        .await
        .unwrap();
    // Ending a session takes a moment; until it has, it keeps the merge's
    // hold on the family, and a merge tried meanwhile leaves the family
    // to it. No session comes back while the link is cut.
    let gone = format!("SELECT count(*) = 0 {others}");
    until(&mut watcher, &gone, own, "the sessions end").await;
    holding.rollback().await.unwrap();
    proxy.set(Link::Up);
    // No call follows: the merge is tried again by itself.
    runs_settle(&mut conn).await;
    assert_eq!(all(&store, &acme, 3).await.len(), 8);
}

/// Polls `query` (a boolean, of the sessions other than `own`, `$1`)
/// until it holds, for at most 30 seconds.
async fn until(conn: &mut sqlx::PgConnection, query: &str, own: i32, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut polls = tokio::time::interval(std::time::Duration::from_millis(10));
    loop {
        polls.tick().await;
        let held: bool = sqlx::query_scalar(query)
            .bind(own)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        if held {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
    }
}
