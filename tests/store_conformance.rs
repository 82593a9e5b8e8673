//! One conformance suite for the Store trait, instantiated per backend. A
//! new backend adds one `conformance!` line and must pass every case.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use longrun::engine::operation::{
    Claim, Finish, Limits, Operation, OrphanRetry, Outcome, Payload, Progress, Rejection,
};
use longrun::engine::{Filter, OperationError, RequestId, State};
use longrun::store::{Change, Created, Durability, DynStore, ListQuery, StoreError};

fn new_op(kind: &str, request_id: Option<RequestId>, digest: u8) -> Operation {
    Operation::new(
        kind,
        Payload {
            type_url: "type.googleapis.com/test.Request".into(),
            value: vec![digest].into(),
        },
        request_id,
        [digest; 32],
        Limits {
            timeout: Duration::from_secs(60),
            max_attempts: 3,
        },
        SystemTime::now(),
    )
}

fn done(outcome: Outcome) -> Finish {
    Finish::Done {
        outcome,
        progress: None,
    }
}

fn ok() -> Outcome {
    Outcome::Response(Payload {
        type_url: "type.googleapis.com/test.Response".into(),
        value: vec![7].into(),
    })
}

async fn created(store: &DynStore, op: Operation) -> Operation {
    match store.create(op).await.unwrap() {
        Created::New(op) => op,
        Created::Existing(op) => panic!("unexpectedly existing: {op:?}"),
    }
}

async fn claim(store: &DynStore, op: &Operation) -> (Operation, Claim) {
    let running = store
        .claim(op.id, Durability::Durable)
        .await
        .unwrap()
        .expect("claimable");
    let claim = Claim {
        id: running.id,
        attempt: running.attempt,
    };
    (running, claim)
}

pub async fn create_then_get(store: DynStore) {
    let op = created(&store, new_op("k", None, 1)).await;
    assert_eq!(store.get(op.id).await.unwrap(), Some(op.clone()));
    assert_eq!(
        store
            .get(longrun::engine::OperationId::generate())
            .await
            .unwrap(),
        None
    );
}

pub async fn request_ids_dedupe_and_conflict(store: DynStore) {
    let rid: RequestId = "8a1f7c1e-9a55-4a49-bb1e-3f6f1b7f2c10".parse().unwrap();
    let first = created(&store, new_op("k", Some(rid), 1)).await;
    match store.create(new_op("k", Some(rid), 1)).await.unwrap() {
        Created::Existing(op) => assert_eq!(op.id, first.id),
        Created::New(op) => panic!("duplicate created {op:?}"),
    }
    match store.create(new_op("k", Some(rid), 2)).await {
        Err(StoreError::RequestIdConflict { existing, .. }) => assert_eq!(existing, first.id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Concurrent duplicates: exactly one new operation.
    let rid: RequestId = "0f4b8d4e-1c39-4a8e-9b3f-7d3c2a1e5f60".parse().unwrap();
    let mut joins = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        joins.push(tokio::spawn(async move {
            store.create(new_op("k", Some(rid), 3)).await.unwrap()
        }));
    }
    let mut new = 0;
    let mut ids = std::collections::HashSet::new();
    for j in joins {
        let c = j.await.unwrap();
        if let Created::New(_) = c {
            new += 1;
        }
        ids.insert(match c {
            Created::New(op) | Created::Existing(op) => op.id,
        });
    }
    assert_eq!(new, 1);
    assert_eq!(ids.len(), 1);
}

pub async fn request_ids_are_per_tenant(store: DynStore) {
    let rid: RequestId = "5d0c9a3b-2e71-4f6a-8c1d-9b7e3f2a4c58".parse().unwrap();
    let of = |tenant: &str, digest: u8| {
        let mut op = new_op("k", Some(rid), digest);
        op.tenant = tenant.into();
        op
    };
    let acme = created(&store, of("acme", 1)).await;
    // Another tenant's same key, even with another request, is its own.
    let globex = created(&store, of("globex", 2)).await;
    assert_ne!(acme.id, globex.id);
    assert_eq!(
        store.get(globex.id).await.unwrap().unwrap().tenant,
        "globex"
    );
    for (tenant, digest, first) in [("acme", 1, &acme), ("globex", 2, &globex)] {
        match store.create(of(tenant, digest)).await.unwrap() {
            Created::Existing(op) => assert_eq!(op.id, first.id),
            Created::New(op) => panic!("duplicate created {op:?}"),
        }
    }
}

pub async fn a_tenants_listing_sees_only_its_own(store: DynStore) {
    let mut mine = Vec::new();
    for i in 0..6u8 {
        let mut op = new_op("k", None, i);
        op.tenant = if i % 2 == 0 { "acme" } else { "globex" }.into();
        let op = created(&store, op).await;
        if i % 2 == 0 {
            mine.push(op.id);
        }
    }
    mine.reverse();
    let mut filter = Filter::parse("").unwrap();
    filter.restrict_to_tenant("acme");
    // Page by one with a small scan budget: every page and every resume
    // point is acme's.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(ListQuery {
                after,
                tenant: Some("acme"),
                filter: &filter,
                limit: 1,
                scan_budget: 1,
            })
            .await
            .unwrap();
        for op in &page.operations {
            assert_eq!(op.tenant, "acme");
            seen.push(op.id);
        }
        match page.resume_after {
            Some(id) => {
                assert!(mine.contains(&id), "resumes at another tenant's {id}");
                after = Some(id);
            }
            None => break,
        }
    }
    assert_eq!(seen, mine);
}

pub async fn claims_fence_stale_attempts(store: DynStore) {
    let op = created(&store, new_op("k", None, 1)).await;
    let (running, first) = claim(&store, &op).await;
    assert_eq!(running.state, State::Running);
    assert_eq!(running.attempt, 1);
    // A running operation can't be claimed twice.
    assert!(
        store
            .claim(op.id, Durability::Lazy)
            .await
            .unwrap()
            .is_none()
    );

    // Release it (as on shutdown) and claim again: attempt 2.
    store.finish(first, Finish::Release).await.unwrap();
    let (_, second) = claim(&store, &op).await;
    assert_eq!(second.attempt, 2);

    // The stale claim can write nothing.
    let stale_progress = store
        .progress(
            first,
            Progress {
                percent: 90,
                message: "old".into(),
            },
        )
        .await;
    assert!(matches!(
        stale_progress,
        Err(StoreError::Rejected(Rejection::Stale { .. }))
    ));
    let stale_finish = store.finish(first, done(ok())).await;
    assert!(matches!(
        stale_finish,
        Err(StoreError::Rejected(Rejection::Stale { .. }))
    ));

    // The current one can; progress never goes down.
    store
        .progress(
            second,
            Progress {
                percent: 40,
                message: "a".into(),
            },
        )
        .await
        .unwrap();
    let after = store
        .progress(
            second,
            Progress {
                percent: 10,
                message: "b".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(after.progress_percent, 40);
    assert_eq!(after.status_message, "b");
    let finished = store.finish(second, done(ok())).await.unwrap();
    assert_eq!(finished.state, State::Succeeded);
    assert_eq!(finished.progress_percent, 100);
    assert!(finished.end_time.is_some());
    // Nothing overwrites a finished result.
    assert!(store.finish(second, done(ok())).await.is_err());
    assert!(
        store
            .claim(op.id, Durability::Lazy)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn cancel_and_delete_follow_the_rules(store: DynStore) {
    let queued = created(&store, new_op("k", None, 1)).await;
    let cancelled = store.cancel(queued.id).await.unwrap();
    assert_eq!(cancelled.state, State::Cancelled);
    assert!(cancelled.requested_cancellation);
    assert!(matches!(
        cancelled.outcome,
        Some(Outcome::Error(OperationError {
            code: longrun::engine::Code::Cancelled,
            ..
        }))
    ));
    // Idempotent.
    assert_eq!(
        store.cancel(queued.id).await.unwrap().version,
        cancelled.version
    );

    let running = created(&store, new_op("k", None, 2)).await;
    let (_, c) = claim(&store, &running).await;
    let cancelling = store.cancel(running.id).await.unwrap();
    assert_eq!(cancelling.state, State::Cancelling);
    assert!(matches!(
        store.delete(running.id).await,
        Err(StoreError::Rejected(Rejection::Precondition { .. }))
    ));
    // The attempt still owns it and ends it.
    let ended = store
        .finish(c, done(Outcome::Error(OperationError::cancelled())))
        .await
        .unwrap();
    assert_eq!(ended.state, State::Cancelled);
    store.delete(running.id).await.unwrap();
    assert_eq!(store.get(running.id).await.unwrap(), None);
    assert!(matches!(
        store.delete(running.id).await,
        Err(StoreError::NotFound)
    ));

    let succeeded = created(&store, new_op("k", None, 3)).await;
    let (_, c) = claim(&store, &succeeded).await;
    store.finish(c, done(ok())).await.unwrap();
    assert!(matches!(
        store.cancel(succeeded.id).await,
        Err(StoreError::Rejected(Rejection::Precondition { .. }))
    ));
}

pub async fn list_is_newest_first_filtered_and_bounded(store: DynStore) {
    let mut ids = Vec::new();
    for i in 0..10u8 {
        let op = created(
            &store,
            new_op(if i % 2 == 0 { "even" } else { "odd" }, None, i),
        )
        .await;
        ids.push(op.id);
    }
    let all = Filter::default();
    let page = store
        .list(ListQuery {
            tenant: None,
            after: None,
            filter: &all,
            limit: 4,
            scan_budget: 100,
        })
        .await
        .unwrap();
    let got: Vec<_> = page.operations.iter().map(|o| o.id).collect();
    assert_eq!(got, vec![ids[9], ids[8], ids[7], ids[6]]);
    assert_eq!(page.resume_after, Some(ids[6]));
    let page = store
        .list(ListQuery {
            tenant: None,
            after: Some(ids[6]),
            filter: &all,
            limit: 10,
            scan_budget: 100,
        })
        .await
        .unwrap();
    assert_eq!(page.operations.len(), 6);
    assert_eq!(page.resume_after, None);

    let even = Filter::parse("kind = even").unwrap();
    let page = store
        .list(ListQuery {
            tenant: None,
            after: None,
            filter: &even,
            limit: 10,
            scan_budget: 100,
        })
        .await
        .unwrap();
    assert_eq!(page.operations.len(), 5);
    assert!(page.operations.iter().all(|o| o.kind == "even"));

    // A small scan budget returns a short page with a resume point.
    let page = store
        .list(ListQuery {
            tenant: None,
            after: None,
            filter: &even,
            limit: 10,
            scan_budget: 3,
        })
        .await
        .unwrap();
    let got: Vec<_> = page.operations.iter().map(|o| o.id).collect();
    assert_eq!(got, vec![ids[8]]);
    assert_eq!(page.resume_after, Some(ids[7]));
}

pub async fn unfinished_and_orphans(store: DynStore) {
    let queued = created(&store, new_op("k", None, 1)).await;
    let running = created(&store, new_op("k", None, 2)).await;
    let (_, _claim) = claim(&store, &running).await;
    let finished = created(&store, new_op("k", None, 3)).await;
    let (_, c) = claim(&store, &finished).await;
    store.finish(c, done(ok())).await.unwrap();

    let mut unfinished: Vec<_> = store
        .unfinished()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    unfinished.sort();
    let mut expected = vec![queued.id, running.id];
    expected.sort();
    assert_eq!(unfinished, expected);

    let recovered = store
        .recover_orphan(running.id, OrphanRetry::Allowed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recovered.state, State::Queued);
    let (again, _) = claim(&store, &recovered).await;
    assert_eq!(again.attempt, 2);
}

pub async fn the_feed_announces_every_change(store: DynStore) {
    let mut feed = store.subscribe();
    let op = created(&store, new_op("k", None, 1)).await;
    let (_, c) = claim(&store, &op).await;
    store.finish(c, done(ok())).await.unwrap();
    store.delete(op.id).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(feed.recv().await.unwrap());
    }
    let states: Vec<String> = seen
        .iter()
        .map(|c| match c {
            Change::Updated(op) => op.state.to_string(),
            Change::Deleted(_) => "DELETED".into(),
            Change::Delivery(_) => "DELIVERY".into(),
        })
        .collect();
    assert_eq!(states, ["QUEUED", "RUNNING", "SUCCEEDED", "DELETED"]);
    // Versions grow with every change.
    let versions: Vec<u64> = seen
        .iter()
        .filter_map(|c| match c {
            Change::Updated(op) => Some(op.version),
            _ => None,
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
}

pub async fn secrets_are_created_once(store: DynStore) {
    let a = store.secret("s", b"first").await.unwrap();
    let b = store.secret("s", b"second").await.unwrap();
    assert_eq!(a, b"first");
    assert_eq!(b, b"first");
}

/// Writes, closes the store, reopens it, and checks everything is there.
pub async fn survives_reopen(open: impl Fn(&Path) -> DynStore, dir: &Path) {
    let (op, finished_op) = {
        let store = open(dir);
        let op = created(&store, new_op("k", None, 1)).await;
        let finished = created(&store, new_op("k", None, 2)).await;
        let (_, c) = claim(&store, &finished).await;
        let finished = store.finish(c, done(ok())).await.unwrap();
        (op, finished)
    };
    let store = open(dir);
    assert_eq!(store.get(op.id).await.unwrap(), Some(op));
    assert_eq!(store.get(finished_op.id).await.unwrap(), Some(finished_op));
}

macro_rules! conformance {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            fn fresh() -> (tempfile::TempDir, DynStore) {
                let dir = tempfile::tempdir().unwrap();
                let store = ($open)(dir.path());
                (dir, store)
            }

            #[tokio::test]
            async fn create_then_get() {
                let (_d, s) = fresh();
                super::create_then_get(s).await;
            }
            #[tokio::test]
            async fn request_ids_dedupe_and_conflict() {
                let (_d, s) = fresh();
                super::request_ids_dedupe_and_conflict(s).await;
            }
            #[tokio::test]
            async fn request_ids_are_per_tenant() {
                let (_d, s) = fresh();
                super::request_ids_are_per_tenant(s).await;
            }
            #[tokio::test]
            async fn a_tenants_listing_sees_only_its_own() {
                let (_d, s) = fresh();
                super::a_tenants_listing_sees_only_its_own(s).await;
            }
            #[tokio::test]
            async fn claims_fence_stale_attempts() {
                let (_d, s) = fresh();
                super::claims_fence_stale_attempts(s).await;
            }
            #[tokio::test]
            async fn cancel_and_delete_follow_the_rules() {
                let (_d, s) = fresh();
                super::cancel_and_delete_follow_the_rules(s).await;
            }
            #[tokio::test]
            async fn list_is_newest_first_filtered_and_bounded() {
                let (_d, s) = fresh();
                super::list_is_newest_first_filtered_and_bounded(s).await;
            }
            #[tokio::test]
            async fn unfinished_and_orphans() {
                let (_d, s) = fresh();
                super::unfinished_and_orphans(s).await;
            }
            #[tokio::test]
            async fn the_feed_announces_every_change() {
                let (_d, s) = fresh();
                super::the_feed_announces_every_change(s).await;
            }
            #[tokio::test]
            async fn secrets_are_created_once() {
                let (_d, s) = fresh();
                super::secrets_are_created_once(s).await;
            }
            #[tokio::test]
            async fn survives_reopen() {
                let dir = tempfile::tempdir().unwrap();
                super::survives_reopen($open, dir.path()).await;
            }
        }
    };
}

/// Concurrent durable writers share flushes instead of paying one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_group_commit_shares_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let sled =
        longrun::store::SledStore::open(dir.path(), longrun::store::SyncMode::Always).unwrap();
    let store: DynStore = Arc::new(sled.clone());
    let before = sled.flushes();
    let writers = 200;
    let mut joins = Vec::new();
    for i in 0..writers {
        let store = Arc::clone(&store);
        joins.push(tokio::spawn(async move {
            created(&store, new_op("k", None, i as u8)).await;
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let flushes = sled.flushes() - before;
    assert!(flushes >= 1);
    assert!(
        flushes < writers / 2,
        "{flushes} flushes for {writers} concurrent creates"
    );
}

conformance!(sled, |dir: &Path| -> DynStore {
    // sled lets go of its directory lock from its own threads, a moment
    // after the last handle is dropped, and announces nothing; a reopen
    // right after a close may have to try again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match longrun::store::SledStore::open(dir, longrun::store::SyncMode::Always) {
            Ok(store) => return Arc::new(store),
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::yield_now()
            }
            Err(e) => panic!("open sled: {e}"),
        }
    }
});
