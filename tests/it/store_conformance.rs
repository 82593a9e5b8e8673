//! One conformance suite for every storage trait, instantiated per backend.
//!
//! Each case is a function over a backend's [`Stores`]; the `conformance!`
//! macro instantiates every case for one backend, so a new backend adds one
//! line and must pass all of them: operations (every edit, batches with
//! refused writes, batch claims by kind and tenant, retries coming due,
//! leases, listing, recovery, retention, the feed), the webhook outbox,
//! secrets, orders and files. (A batch cut short by a crash is `crash`'s.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use longrun::model::BulkAction;
use longrun::model::order::{Month, Order, OrderStatus};
use longrun::model::{
    Attempt, Claim, Code, DeliveryState, Edit, Filter, Finish, Holds, Lease, Limit, LimitScope,
    Limits, Notification, Operation, OperationError, OrphanRetry, Outcome, Payload, Policy,
    Progress, Rejection, RequestId, State, Tally, Tenant,
};
use longrun::store::{
    Applied, BulkPage, Change, ClaimRequest, Created, ListQuery, OperationStore, PutOrders,
    StoreError, Stores, Write,
};

/// One write per commit, as most cases need; the batch cases commit
/// several at once.
trait OneWrite {
    async fn one(&self, write: Write, now: SystemTime) -> Result<Applied, StoreError>;

    async fn create(&self, op: Operation) -> Result<Created, StoreError>;

    async fn update(
        &self,
        id: longrun::model::OperationId,
        edit: Edit,
        now: SystemTime,
    ) -> Result<Operation, StoreError> {
        match self.one(Write::Update { id, edit }, now).await? {
            Applied::Updated(op) => Ok(op),
            other => panic!("an update answered {other:?}"),
        }
    }

    async fn delete(&self, id: longrun::model::OperationId) -> Result<(), StoreError> {
        self.one(Write::Delete(id), SystemTime::now())
            .await
            .map(|_| ())
    }

    async fn save_delivery(&self, delivery: &longrun::model::Delivery) -> Result<(), StoreError> {
        self.one(Write::SaveDelivery(delivery.clone()), SystemTime::now())
            .await
            .map(|_| ())
    }

    /// Purges in one batch; returns how many were removed.
    async fn purge(&self, ids: &[longrun::model::OperationId]) -> Result<usize, StoreError>;
}

impl OneWrite for Arc<dyn OperationStore> {
    async fn create(&self, op: Operation) -> Result<Created, StoreError> {
        create_in(self, op).await
    }

    async fn one(&self, write: Write, now: SystemTime) -> Result<Applied, StoreError> {
        self.commit(vec![write], now)
            .await
            .pop()
            .expect("one result per write")
    }

    async fn purge(&self, ids: &[longrun::model::OperationId]) -> Result<usize, StoreError> {
        let writes = ids.iter().map(|id| Write::Purge(*id)).collect();
        let mut purged = 0;
        for result in self.commit(writes, SystemTime::now()).await {
            if let Applied::Deleted(true) = result? {
                purged += 1;
            }
        }
        Ok(purged)
    }
}

fn tenant(name: &str) -> Tenant {
    Tenant::named(name).unwrap()
}

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
        Tenant::default_tenant(),
        SystemTime::now(),
    )
}

/// A time as whole microseconds since the epoch, the precision stores keep.
fn micros(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn ok() -> Outcome {
    Outcome::Response(Payload {
        type_url: "type.googleapis.com/test.Response".into(),
        value: vec![7].into(),
    })
}

fn done(outcome: Outcome) -> Finish {
    Finish::Done {
        outcome,
        progress: None,
    }
}

/// Creates in a commit of its own (a free function, so that spawned tasks
/// can call it).
async fn create_in(ops: &Arc<dyn OperationStore>, op: Operation) -> Result<Created, StoreError> {
    match ops
        .commit(vec![Write::Create(op)], SystemTime::now())
        .await
        .remove(0)?
    {
        Applied::Created(created) => Ok(created),
        other => panic!("a create answered {other:?}"),
    }
}

async fn created(s: &Stores, op: Operation) -> Operation {
    match create_in(&s.operations, op).await.unwrap() {
        Created::New(op) => op,
        Created::Existing(op) => panic!("unexpectedly existing: {op:?}"),
    }
}

async fn edit(s: &Stores, op: &Operation, edit: Edit) -> Result<Operation, StoreError> {
    s.operations.update(op.id, edit, SystemTime::now()).await
}

async fn claim(s: &Stores, op: &Operation) -> (Operation, Claim) {
    let running = edit(
        s,
        op,
        Edit::Claim {
            lease: None,
            by: None,
            holds: Holds::NONE,
        },
    )
    .await
    .expect("claimable");
    (running.clone(), Claim::of(&running))
}

async fn finish(s: &Stores, claim: Claim, finish: Finish) -> Result<Operation, StoreError> {
    s.operations
        .update(claim.id, Edit::Finish { claim, finish }, SystemTime::now())
        .await
}

async fn progress(
    s: &Stores,
    claim: Claim,
    percent: u32,
    message: &str,
) -> Result<Operation, StoreError> {
    let progress = Progress {
        percent,
        message: message.into(),
    };
    s.operations
        .update(
            claim.id,
            Edit::Progress { claim, progress },
            SystemTime::now(),
        )
        .await
}

pub async fn create_then_get(s: Stores) {
    let op = created(&s, new_op("k", None, 1)).await;
    assert_eq!(s.operations.get(op.id).await.unwrap(), Some(op.clone()));
    let missing = longrun::model::OperationId::generate();
    assert_eq!(s.operations.get(missing).await.unwrap(), None);
    assert!(matches!(
        s.operations
            .update(missing, Edit::Cancel, SystemTime::now())
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn several_are_read_at_once_in_the_order_asked(s: Stores) {
    let first = created(&s, new_op("k", None, 1)).await;
    let second = created(&s, new_op("k", None, 2)).await;
    let missing = longrun::model::OperationId::generate();
    let got = s
        .operations
        .get_many(&[second.id, missing, first.id, second.id])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Some(second.clone()), None, Some(first), Some(second)]
    );
    assert!(s.operations.get_many(&[]).await.unwrap().is_empty());
}

pub async fn request_ids_dedupe_and_conflict(s: Stores) {
    let rid: RequestId = "8a1f7c1e-9a55-4a49-bb1e-3f6f1b7f2c10".parse().unwrap();
    let first = created(&s, new_op("k", Some(rid), 1)).await;
    match s
        .operations
        .create(new_op("k", Some(rid), 1))
        .await
        .unwrap()
    {
        Created::Existing(op) => assert_eq!(op.id, first.id),
        Created::New(op) => panic!("duplicate created {op:?}"),
    }
    match s.operations.create(new_op("k", Some(rid), 2)).await {
        Err(StoreError::RequestIdConflict { existing, .. }) => assert_eq!(existing, first.id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Concurrent duplicates: exactly one new operation.
    let rid: RequestId = "0f4b8d4e-1c39-4a8e-9b3f-7d3c2a1e5f60".parse().unwrap();
    let mut joins = Vec::new();
    for _ in 0..8 {
        let ops = Arc::clone(&s.operations);
        joins.push(tokio::spawn(async move {
            create_in(&ops, new_op("k", Some(rid), 3)).await.unwrap()
        }));
    }
    let mut new = 0;
    let mut ids = HashSet::new();
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

pub async fn request_ids_are_per_tenant(s: Stores) {
    let rid: RequestId = "5d0c9a3b-2e71-4f6a-8c1d-9b7e3f2a4c58".parse().unwrap();
    let of = |name: &str, digest: u8| {
        let mut op = new_op("k", Some(rid), digest);
        op.tenant = tenant(name);
        op
    };
    let acme = created(&s, of("acme", 1)).await;
    // Another tenant's same key, even with another request, is its own.
    let globex = created(&s, of("globex", 2)).await;
    assert_ne!(acme.id, globex.id);
    let stored = s.operations.get(globex.id).await.unwrap().unwrap();
    assert_eq!(stored.tenant, tenant("globex"));
    for (name, digest, first) in [("acme", 1, &acme), ("globex", 2, &globex)] {
        match s.operations.create(of(name, digest)).await.unwrap() {
            Created::Existing(op) => assert_eq!(op.id, first.id),
            Created::New(op) => panic!("duplicate created {op:?}"),
        }
    }
}

pub async fn a_tenants_listing_sees_only_its_own(s: Stores) {
    let acme = tenant("acme");
    let mut mine = Vec::new();
    for i in 0..6u8 {
        let mut op = new_op("k", None, i);
        op.tenant = tenant(if i % 2 == 0 { "acme" } else { "globex" });
        let op = created(&s, op).await;
        if i % 2 == 0 {
            mine.push(op.id);
        }
    }
    mine.reverse();
    let mut filter = Filter::parse("").unwrap();
    filter.restrict_to_tenant(&acme);
    // Page by one with a small scan budget: every page and every resume
    // point is acme's.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .operations
            .list(ListQuery {
                parent: None,
                after,
                tenant: Some(&acme),
                filter: &filter,
                limit: 1,
                scan_budget: 1,
            })
            .await
            .unwrap();
        for op in &page.operations {
            assert_eq!(op.tenant, acme);
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

pub async fn claims_fence_stale_attempts(s: Stores) {
    let op = created(&s, new_op("k", None, 1)).await;
    let (running, first) = claim(&s, &op).await;
    assert_eq!(running.state, State::Running);
    assert_eq!(running.attempt.get(), 1);
    assert!(running.start_time.is_some());
    // A running operation can't be claimed twice.
    assert!(matches!(
        edit(
            &s,
            &op,
            Edit::Claim {
                lease: None,
                by: None,
                holds: Holds::NONE,
            }
        )
        .await,
        Err(StoreError::Rejected(Rejection::Precondition { .. }))
    ));

    // Release it (as on shutdown) and claim again: attempt 2.
    let released = finish(&s, first, Finish::Release).await.unwrap();
    assert_eq!(released.state, State::Queued);
    let (_, second) = claim(&s, &op).await;
    assert_eq!(second.attempt.get(), 2);

    // The stale claim can write nothing.
    assert!(matches!(
        progress(&s, first, 90, "old").await,
        Err(StoreError::Rejected(Rejection::Stale { .. }))
    ));
    assert!(matches!(
        finish(&s, first, done(ok())).await,
        Err(StoreError::Rejected(Rejection::Stale { .. }))
    ));

    // The current one can; progress never goes down.
    progress(&s, second, 40, "a").await.unwrap();
    let after = progress(&s, second, 10, "b").await.unwrap();
    assert_eq!(after.progress_percent, 40);
    assert_eq!(after.status_message, "b");
    let finished = finish(&s, second, done(ok())).await.unwrap();
    assert_eq!(finished.state, State::Succeeded);
    assert_eq!(finished.progress_percent, 100);
    assert!(finished.end_time.is_some());
    assert_eq!(s.operations.get(op.id).await.unwrap(), Some(finished));
    // Nothing overwrites a finished result.
    assert!(finish(&s, second, done(ok())).await.is_err());
    assert!(
        edit(
            &s,
            &op,
            Edit::Claim {
                lease: None,
                by: None,
                holds: Holds::NONE,
            }
        )
        .await
        .is_err()
    );
}

pub async fn retries_wait_for_their_time(s: Stores) {
    let op = created(&s, new_op("k", None, 1)).await;
    let (_, c) = claim(&s, &op).await;
    let at = SystemTime::now() + Duration::from_secs(30);
    let error = OperationError::new(Code::Unavailable, "FLAKY", "try again");
    let retry = Finish::Retry {
        error: error.clone(),
        not_before: at,
    };
    let queued = finish(&s, c, retry).await.unwrap();
    assert_eq!(queued.state, State::Queued);
    assert_eq!(queued.last_error, Some(error));
    let stored = s.operations.get(op.id).await.unwrap().unwrap();
    assert_eq!(
        stored.not_before,
        Some(longrun::model::to_micros_precision(at))
    );
    // The next claim is attempt 2 and clears the wait.
    let (again, _) = claim(&s, &op).await;
    assert_eq!(again.attempt.get(), 2);
    assert_eq!(again.not_before, None);
}

pub async fn cancel_and_delete_follow_the_rules(s: Stores) {
    let queued = created(&s, new_op("k", None, 1)).await;
    let cancelled = edit(&s, &queued, Edit::Cancel).await.unwrap();
    assert_eq!(cancelled.state, State::Cancelled);
    assert!(cancelled.requested_cancellation);
    assert!(matches!(
        cancelled.outcome,
        Some(Outcome::Error(OperationError {
            code: Code::Cancelled,
            ..
        }))
    ));
    // Idempotent: a second cancel changes nothing.
    let again = edit(&s, &queued, Edit::Cancel).await.unwrap();
    assert_eq!(again.version, cancelled.version);

    let running = created(&s, new_op("k", None, 2)).await;
    let (_, c) = claim(&s, &running).await;
    let cancelling = edit(&s, &running, Edit::Cancel).await.unwrap();
    assert_eq!(cancelling.state, State::Cancelling);
    assert!(matches!(
        s.operations.delete(running.id).await,
        Err(StoreError::Rejected(Rejection::Precondition { .. }))
    ));
    // The attempt still owns it and ends it.
    let ended = finish(&s, c, done(Outcome::Error(OperationError::cancelled())))
        .await
        .unwrap();
    assert_eq!(ended.state, State::Cancelled);
    s.operations.delete(running.id).await.unwrap();
    assert_eq!(s.operations.get(running.id).await.unwrap(), None);
    assert!(matches!(
        s.operations.delete(running.id).await,
        Err(StoreError::NotFound)
    ));

    let succeeded = created(&s, new_op("k", None, 3)).await;
    let (_, c) = claim(&s, &succeeded).await;
    finish(&s, c, done(ok())).await.unwrap();
    assert!(matches!(
        edit(&s, &succeeded, Edit::Cancel).await,
        Err(StoreError::Rejected(Rejection::Precondition { .. }))
    ));
}

pub async fn list_is_newest_first_filtered_and_bounded(s: Stores) {
    let mut ids = Vec::new();
    for i in 0..10u8 {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(created(&s, new_op(kind, None, i)).await.id);
    }
    let all = Filter::default();
    let list = |after, filter, limit, scan_budget| {
        s.operations.list(ListQuery {
            parent: None,
            tenant: None,
            after,
            filter,
            limit,
            scan_budget,
        })
    };
    let page = list(None, &all, 4, 100).await.unwrap();
    let got: Vec<_> = page.operations.iter().map(|o| o.id).collect();
    assert_eq!(got, vec![ids[9], ids[8], ids[7], ids[6]]);
    assert_eq!(page.resume_after, Some(ids[6]));
    let page = list(Some(ids[6]), &all, 10, 100).await.unwrap();
    assert_eq!(page.operations.len(), 6);
    assert_eq!(page.resume_after, None);

    let even = Filter::parse("kind = even").unwrap();
    let page = list(None, &even, 10, 100).await.unwrap();
    assert_eq!(page.operations.len(), 5);
    assert!(page.operations.iter().all(|o| o.kind == "even"));

    // A small scan budget returns a short page with a resume point.
    let page = list(None, &even, 10, 3).await.unwrap();
    let got: Vec<_> = page.operations.iter().map(|o| o.id).collect();
    assert_eq!(got, vec![ids[8]]);
    assert_eq!(page.resume_after, Some(ids[7]));
}

pub async fn unfinished_and_orphans(s: Stores) {
    let queued = created(&s, new_op("k", None, 1)).await;
    let running = created(&s, new_op("k", None, 2)).await;
    claim(&s, &running).await;
    let unsafe_running = created(&s, new_op("k", None, 4)).await;
    claim(&s, &unsafe_running).await;
    let finished = created(&s, new_op("k", None, 3)).await;
    let (_, c) = claim(&s, &finished).await;
    finish(&s, c, done(ok())).await.unwrap();

    let mut unfinished: Vec<_> = s
        .operations
        .unfinished()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    unfinished.sort();
    let mut expected = vec![queued.id, running.id, unsafe_running.id];
    expected.sort();
    assert_eq!(unfinished, expected);

    let recovered = edit(&s, &running, Edit::RecoverOrphan(OrphanRetry::Allowed))
        .await
        .unwrap();
    assert_eq!(recovered.state, State::Queued);
    let (again, _) = claim(&s, &recovered).await;
    assert_eq!(again.attempt.get(), 2);

    let refused = OrphanRetry::Refused("not safe to run twice".into());
    let aborted = edit(&s, &unsafe_running, Edit::RecoverOrphan(refused.clone()))
        .await
        .unwrap();
    assert_eq!(aborted.state, State::Failed);
    assert!(matches!(
        &aborted.outcome,
        Some(Outcome::Error(e)) if e.code == Code::Aborted && e.reason == "ATTEMPT_INTERRUPTED"
    ));
    // What is not orphaned is left alone.
    let untouched = edit(&s, &queued, Edit::RecoverOrphan(refused))
        .await
        .unwrap();
    assert_eq!(untouched, queued);
}

pub async fn the_feed_announces_every_change(s: Stores) {
    let mut feed = s.operations.subscribe();
    let op = created(&s, new_op("k", None, 1)).await;
    let (_, c) = claim(&s, &op).await;
    progress(&s, c, 50, "half").await.unwrap();
    finish(&s, c, done(ok())).await.unwrap();
    s.operations.delete(op.id).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(feed.recv().await.unwrap());
    }
    let states: Vec<String> = seen
        .iter()
        .map(|c| match c {
            Change::Updated(op) => op.state.to_string(),
            Change::Deleted(_) => "DELETED".into(),
            Change::Delivery(_) => "DELIVERY".into(),
            // Only another process's changes come as these.
            Change::Elsewhere { .. } => "ELSEWHERE".into(),
            Change::Resync => "RESYNC".into(),
        })
        .collect();
    assert_eq!(
        states,
        ["QUEUED", "RUNNING", "RUNNING", "SUCCEEDED", "DELETED"]
    );
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

/// Finishes a new operation and returns it as stored.
async fn finished_op(s: &Stores, digest: u8, request_id: Option<RequestId>) -> Operation {
    let op = created(s, new_op("k", request_id, digest)).await;
    let (_, c) = claim(s, &op).await;
    finish(s, c, done(ok())).await.unwrap()
}

pub async fn expired_lists_what_ended_before_the_cutoff(s: Stores) {
    let start = SystemTime::now();
    let at = |seconds: u64| start + Duration::from_secs(seconds);
    let ended_at = |digest: u8, time: SystemTime| {
        let s = s.clone();
        async move {
            let op = created(&s, new_op("k", None, digest)).await;
            let (_, claim) = claim(&s, &op).await;
            let edit = Edit::Finish {
                claim,
                finish: done(ok()),
            };
            s.operations.update(op.id, edit, time).await.unwrap()
        }
    };
    // Finished out of order.
    let second = ended_at(1, at(20)).await;
    let first = ended_at(2, at(10)).await;
    let running = created(&s, new_op("k", None, 3)).await;
    claim(&s, &running).await;
    ended_at(4, at(40)).await;

    let expired = |cutoff, limit| {
        let s = s.clone();
        async move {
            s.operations
                .expired(cutoff, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.id)
                .collect::<Vec<_>>()
        }
    };
    // Nothing running, nothing that ended after the cutoff.
    let mut found = expired(at(30), 10).await;
    found.sort();
    let mut wanted = vec![first.id, second.id];
    wanted.sort();
    assert_eq!(found, wanted);
    let one = expired(at(30), 1).await;
    assert!(one.len() == 1 && wanted.contains(&one[0]), "{one:?}");
    assert!(expired(at(5), 10).await.is_empty());
}

pub async fn purge_deletes_done_operations_and_skips_the_rest(s: Stores) {
    let rid: RequestId = "7c2e5a1b-3d4f-4e6a-9b8c-1a2b3c4d5e6f".parse().unwrap();
    let done_op = finished_op(&s, 1, Some(rid)).await;
    let running = created(&s, new_op("k", None, 2)).await;
    claim(&s, &running).await;
    let missing = longrun::model::OperationId::generate();
    let mut feed = s.operations.subscribe();

    let purged = s
        .operations
        .purge(&[done_op.id, running.id, missing])
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(s.operations.get(done_op.id).await.unwrap(), None);
    assert!(s.operations.get(running.id).await.unwrap().is_some());
    assert!(matches!(feed.recv().await.unwrap(), Change::Deleted(id) if id == done_op.id));
    // Gone from the retention index and from the idempotency keys: the same
    // request_id makes a new operation.
    let far = SystemTime::now() + Duration::from_secs(3600);
    assert!(s.operations.expired(far, 10).await.unwrap().is_empty());
    let again = created(&s, new_op("k", Some(rid), 1)).await;
    assert_ne!(again.id, done_op.id);
    assert_eq!(s.operations.purge(&[]).await.unwrap(), 0);
}

pub async fn flush_makes_lazy_writes_durable(s: Stores, reopen: impl AsyncFn() -> Stores) {
    let op = created(&s, new_op("k", None, 1)).await;
    let (_, c) = claim(&s, &op).await;
    let reported = progress(&s, c, 30, "a third").await.unwrap();
    s.operations.flush().await.unwrap();
    drop(s);
    let s = reopen().await;
    assert_eq!(s.operations.get(op.id).await.unwrap(), Some(reported));
}

/// An operation whose webhook wants `states` (empty: the final ones).
fn notified(digest: u8, states: Vec<State>) -> Operation {
    let mut op = new_op("k", None, digest);
    op.notification = Some(Notification {
        callback_url: "https://example.com/hook".into(),
        states,
    });
    op
}

pub async fn transitions_fill_the_outbox(s: Stores) {
    let before = SystemTime::now() - Duration::from_secs(1);
    // Wants every change of state it goes through here.
    let op = created(
        &s,
        notified(1, vec![State::Queued, State::Running, State::Succeeded]),
    )
    .await;
    let quiet = created(&s, new_op("k", None, 2)).await;
    let finals = created(&s, notified(3, Vec::new())).await;
    let (_, c) = claim(&s, &op).await;
    // Progress changes no state: no delivery.
    progress(&s, c, 50, "half").await.unwrap();
    finish(&s, c, done(ok())).await.unwrap();
    let (_, c) = claim(&s, &quiet).await;
    finish(&s, c, done(ok())).await.unwrap();
    let (_, c) = claim(&s, &finals).await;

    let events: Vec<State> = s
        .outbox
        .deliveries(op.id)
        .await
        .unwrap()
        .iter()
        .map(|d| d.event)
        .collect();
    assert_eq!(events, [State::Queued, State::Running, State::Succeeded]);
    assert!(s.outbox.deliveries(quiet.id).await.unwrap().is_empty());
    // Only the final state, and it has not come yet.
    assert!(s.outbox.deliveries(finals.id).await.unwrap().is_empty());
    finish(&s, c, done(Outcome::Error(OperationError::cancelled())))
        .await
        .unwrap();
    let last = s.outbox.deliveries(finals.id).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].event, State::Cancelled);
    assert_eq!(last[0].snapshot.state, State::Cancelled);
    assert_eq!(last[0].state, DeliveryState::Pending);

    // All four are due, oldest due first, and a limit is a limit.
    let due = s
        .outbox
        .due_deliveries(SystemTime::now(), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 4);
    assert!(
        due.windows(2)
            .all(|w| w[0].next_attempt <= w[1].next_attempt)
    );
    assert_eq!(
        s.outbox
            .due_deliveries(SystemTime::now(), 2)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        s.outbox
            .due_deliveries(before, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.outbox.next_delivery_due().await.unwrap(),
        due[0].next_attempt
    );
}

pub async fn saved_deliveries_move_through_the_due_index(s: Stores) {
    let op = created(&s, notified(1, vec![State::Queued])).await;
    let mut delivery = s.outbox.deliveries(op.id).await.unwrap().remove(0);
    let mut feed = s.operations.subscribe();

    // A failed attempt: pending again, due later.
    let later = SystemTime::now() + Duration::from_secs(300);
    delivery.attempts = 1;
    delivery.last_status_code = 503;
    delivery.last_error = "the receiver answered 503".into();
    delivery.next_attempt = Some(later);
    s.operations.save_delivery(&delivery).await.unwrap();
    assert!(matches!(feed.recv().await.unwrap(), Change::Delivery(id) if id == op.id));
    assert!(
        s.outbox
            .due_deliveries(SystemTime::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due_then = s.outbox.due_deliveries(later, 10).await.unwrap();
    assert_eq!(due_then.len(), 1);
    assert_eq!(due_then[0].attempts, 1);
    let next = s.outbox.next_delivery_due().await.unwrap().unwrap();
    assert_eq!(micros(next), micros(later));

    // Delivered: due never again, still listed.
    delivery.attempts = 2;
    delivery.state = DeliveryState::Delivered;
    delivery.last_status_code = 200;
    delivery.next_attempt = None;
    s.operations.save_delivery(&delivery).await.unwrap();
    assert!(s.outbox.due_deliveries(later, 10).await.unwrap().is_empty());
    assert_eq!(s.outbox.next_delivery_due().await.unwrap(), None);
    let listed = s.outbox.deliveries(op.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, DeliveryState::Delivered);
    assert_eq!(listed[0].attempts, 2);
}

pub async fn deleting_an_operation_drops_its_deliveries(s: Stores) {
    let op = created(&s, notified(1, Vec::new())).await;
    let (_, c) = claim(&s, &op).await;
    finish(&s, c, done(ok())).await.unwrap();
    assert_eq!(s.outbox.deliveries(op.id).await.unwrap().len(), 1);
    s.operations.delete(op.id).await.unwrap();
    assert!(s.outbox.deliveries(op.id).await.unwrap().is_empty());
    assert!(
        s.outbox
            .due_deliveries(SystemTime::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let purged = created(&s, notified(2, Vec::new())).await;
    let (_, c) = claim(&s, &purged).await;
    finish(&s, c, done(ok())).await.unwrap();
    s.operations.purge(&[purged.id]).await.unwrap();
    assert!(s.outbox.deliveries(purged.id).await.unwrap().is_empty());
    assert_eq!(s.outbox.next_delivery_due().await.unwrap(), None);
}

pub async fn settled_values_are_written_once(s: Stores) {
    let a = s.settled.settle("s", b"first").await.unwrap();
    let b = s.settled.settle("s", b"second").await.unwrap();
    assert_eq!(a, b"first");
    assert_eq!(b, b"first");
    // Racing first uses agree on one value.
    let mut joins = Vec::new();
    for i in 0..8u8 {
        let settled = Arc::clone(&s.settled);
        joins.push(tokio::spawn(async move {
            settled.settle("race", &[i]).await.unwrap()
        }));
    }
    let mut values = HashSet::new();
    for j in joins {
        values.insert(j.await.unwrap());
    }
    assert_eq!(values.len(), 1);
}

pub async fn the_queue_depth_counts_what_waits(s: Stores) {
    let (a, b) = (tenant("depth-a"), tenant("depth-b"));
    assert_eq!(s.operations.queued(&a).total, 0);
    for i in 0..3u8 {
        created(&s, of_tenant("x", Some("depth-a"), i)).await;
    }
    created(&s, of_tenant("y", Some("depth-b"), 9)).await;
    let depth = s.operations.queued(&a);
    assert_eq!((depth.total, depth.tenant), (4, 3));
    assert_eq!(s.operations.queued(&b).tenant, 1);
    // A backend that counts by kind without a query says so exactly.
    if let Some(n) = s.operations.queued_of_kind("x") {
        assert_eq!(n, 3);
        assert_eq!(s.operations.queued_of_kind("y"), Some(1));
        assert_eq!(s.operations.queued_of_kind("none"), Some(0));
    }

    let claimed = s
        .operations
        .claim(&wants(&[("x", 2)]), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(claimed.operations.len(), 2);
    let depth = s.operations.queued(&a);
    assert_eq!((depth.total, depth.tenant), (2, 1));
    if let Some(n) = s.operations.queued_of_kind("x") {
        assert_eq!(n, 1);
    }
}

pub async fn the_backlog_counts_unfinished_work_by_kind_and_state(s: Stores) {
    let first = created(&s, of_tenant("x", Some("log-a"), 1)).await;
    created(&s, of_tenant("x", Some("log-a"), 2)).await;
    created(&s, of_tenant("y", Some("log-b"), 3)).await;
    let ended = created(&s, of_tenant("z", Some("log-b"), 4)).await;
    let (_, c) = claim(&s, &ended).await;
    finish(&s, c, done(ok())).await.unwrap();
    let claimed = s
        .operations
        .claim(&wants(&[("x", 1)]), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(claimed.operations[0].id, first.id, "the oldest first");

    let count = |rows: &[longrun::model::Backlog], kind: &str, state: State| {
        rows.iter()
            .find(|r| r.kind == kind && r.state == state.as_str())
            .map_or(0, |r| r.count)
    };
    let all = s.operations.backlog(None).await.unwrap();
    assert_eq!(count(&all, "x", State::Queued), 1);
    assert_eq!(count(&all, "x", State::Running), 1);
    assert_eq!(count(&all, "y", State::Queued), 1);
    assert!(
        all.iter().all(|r| r.kind != "z"),
        "an ended operation is not backlog: {all:?}"
    );
    // The oldest's creation time, to the millisecond (a backend may read
    // it from the id, which keeps milliseconds).
    let millis = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let running = all
        .iter()
        .find(|r| r.kind == "x" && r.state == State::Running.as_str())
        .unwrap();
    assert_eq!(running.oldest.map(millis), Some(millis(first.create_time)));

    let of_b = s.operations.backlog(Some(&tenant("log-b"))).await.unwrap();
    assert_eq!(of_b.len(), 1, "{of_b:?}");
    assert_eq!((of_b[0].kind.as_str(), of_b[0].count), ("y", 1));
}

pub async fn a_healthy_store_says_so_and_a_probe_keeps_it(s: Stores) {
    let health = s.operations.health();
    assert_eq!(*health.borrow(), longrun::store::Health::Writable);
    s.operations.probe().await;
    assert_eq!(
        *s.operations.health().borrow(),
        longrun::store::Health::Writable
    );
    // Whatever a backend commits at once, it is at least one batch.
    assert!(s.operations.parallel_commits() >= 1);
}

pub async fn leases_are_renewed_by_their_holder_and_lapse(s: Stores) {
    let op = created(&s, new_op("k", None, 1)).await;
    let other = created(&s, new_op("k", None, 2)).await;
    let now = SystemTime::now();
    let (_, request) = leased_by_node_a(2, now);
    let claimed = s.operations.claim(&request, now).await.unwrap();
    assert_eq!(claimed.operations.len(), 2);
    let held: Vec<_> = claimed
        .operations
        .iter()
        .map(|o| (o.id, o.attempt))
        .collect();
    let until = now + Duration::from_secs(60);

    if !s.operations.shared() {
        // One process: nothing lapses, and every hold renews.
        let renewed = s.operations.renew("node-a", &held, until).await.unwrap();
        assert_eq!(renewed.len(), 2);
        let far = now + Duration::from_secs(3600);
        assert!(s.operations.lapsed(far, 10).await.unwrap().is_empty());
        return;
    }

    // Only the holder renews, and only the attempts it holds.
    assert!(
        s.operations
            .renew("node-b", &held, until)
            .await
            .unwrap()
            .is_empty()
    );
    let stale = [(op.id, Attempt::new(7))];
    assert!(
        s.operations
            .renew("node-a", &stale, until)
            .await
            .unwrap()
            .is_empty()
    );
    let renewed = s
        .operations
        .renew("node-a", &held[..1], until)
        .await
        .unwrap();
    assert_eq!(renewed, vec![held[0].0]);
    let stored = s.operations.get(held[0].0).await.unwrap().unwrap();
    assert_eq!(stored.lease.map(|l| micros(l.expires)), Some(micros(until)));

    // Before the first lease runs out nothing has lapsed; after it, the
    // unrenewed one has, and after the renewed one's end both have.
    assert!(s.operations.lapsed(now, 10).await.unwrap().is_empty());
    let between = now + Duration::from_secs(45);
    let lapsed = s.operations.lapsed(between, 10).await.unwrap();
    assert_eq!(lapsed.len(), 1, "{lapsed:?}");
    assert_eq!(lapsed[0].id, held[1].0);
    assert_eq!(lapsed[0].state, State::Running);
    let after = now + Duration::from_secs(90);
    let ids: HashSet<_> = s
        .operations
        .lapsed(after, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, HashSet::from([op.id, other.id]));
    assert_eq!(s.operations.lapsed(after, 1).await.unwrap().len(), 1);
}

/// A running operation's progress and finish never undo what happened to
/// it meanwhile. (PostgreSQL decides a node's writes to the rows it runs
/// against its own last copy of them; here another node asks for
/// cancellation and the holder renews its lease between two reports.)
pub async fn a_running_operations_writes_keep_what_changed_meanwhile(
    s: Stores,
    reopen: impl AsyncFn() -> Stores,
) {
    let op = created(&s, new_op("k", None, 1)).await;
    let now = SystemTime::now();
    let (lease, request) = leased_by_node_a(1, now);
    let claimed = s.operations.claim(&request, now).await.unwrap();
    let claim = Claim::of(&claimed.operations[0]);
    let first = progress(&s, claim, 10, "first").await.unwrap();
    assert_eq!(first.progress_percent, 10);
    let shared = s.operations.shared();
    // One process alone has no other node, and keeps no lease.
    let other = if shared { Some(reopen().await) } else { None };
    if let Some(other) = &other {
        let cancelling = edit(other, &first, Edit::Cancel).await.unwrap();
        assert_eq!(cancelling.state, State::Cancelling);
    }
    let second = progress(&s, claim, 20, "second").await.unwrap();
    assert_eq!(second.progress_percent, 20);
    assert_eq!(second.requested_cancellation, shared);

    // A renewal moves the lease alone; the next report keeps it.
    let until = lease.expires + Duration::from_secs(60);
    let renewed = s
        .operations
        .renew("node-a", &[(op.id, claim.attempt)], until)
        .await
        .unwrap();
    assert_eq!(renewed, vec![op.id]);
    let third = progress(&s, claim, 30, "third").await.unwrap();
    let stored = s.operations.get(op.id).await.unwrap().unwrap();
    assert_eq!(stored, third);
    assert_eq!(stored.progress_percent, 30);
    assert_eq!(stored.requested_cancellation, shared);
    if let Some(other) = &other {
        assert_eq!(stored.lease.map(|l| micros(l.expires)), Some(micros(until)));
        // A renewal the writing node has not seen (as if it committed
        // while the report was on its way) holds too.
        let later = until + Duration::from_secs(60);
        let renewed = other
            .operations
            .renew("node-a", &[(op.id, claim.attempt)], later)
            .await
            .unwrap();
        assert_eq!(renewed, vec![op.id]);
        progress(&s, claim, 35, "fourth").await.unwrap();
        let stored = s.operations.get(op.id).await.unwrap().unwrap();
        assert_eq!(stored.progress_percent, 35);
        assert_eq!(stored.lease.map(|l| micros(l.expires)), Some(micros(later)));
    }
    let done = finish(&s, claim, done(ok())).await.unwrap();
    assert!(done.is_done());
    assert_eq!(s.operations.get(op.id).await.unwrap().unwrap(), done);
    // The ended attempt is stale everywhere.
    let late = progress(&s, claim, 40, "late").await.unwrap_err();
    assert!(matches!(late, StoreError::Rejected(_)), "{late:?}");
}

/// A delivery for `op`, due now.
async fn due_delivery(s: &Stores, digest: u8, tenant_name: &str) -> longrun::model::Delivery {
    let mut op = notified(digest, Vec::new());
    op.tenant = tenant(tenant_name);
    let op = created(s, op).await;
    let (_, c) = claim(s, &op).await;
    finish(s, c, done(ok())).await.unwrap();
    s.outbox.deliveries(op.id).await.unwrap().remove(0)
}

pub async fn deliveries_are_taken_oldest_first_within_each_tenants_room(s: Stores) {
    let a1 = due_delivery(&s, 1, "take-a").await;
    let a2 = due_delivery(&s, 2, "take-a").await;
    let b1 = due_delivery(&s, 3, "take-b").await;
    let take = |limit, per_tenant| longrun::store::DeliveryTake {
        limit,
        per_tenant,
        busy: Default::default(),
        in_flight: Default::default(),
        lease: Duration::from_secs(60),
    };
    let now = SystemTime::now() + Duration::from_secs(1);

    // One of each tenant at most: a1 and b1, not a2.
    let taken = s.outbox.take_deliveries(now, &take(10, 1)).await.unwrap();
    let ids: HashSet<_> = taken.iter().map(|d| d.id).collect();
    assert_eq!(ids, HashSet::from([a1.id, b1.id]));

    // What this taker sends already is not taken again; a tenant that is
    // busy has no room.
    let mut next = take(10, 1);
    next.in_flight = ids.clone();
    next.busy.insert(tenant("take-b"), 1);
    let taken = s.outbox.take_deliveries(now, &next).await.unwrap();
    assert_eq!(taken.iter().map(|d| d.id).collect::<Vec<_>>(), vec![a2.id]);

    // The limit holds.
    let mut one = take(1, 10);
    one.in_flight = HashSet::from([a1.id, a2.id, b1.id]);
    assert!(
        s.outbox
            .take_deliveries(now, &one)
            .await
            .unwrap()
            .is_empty()
    );
    if s.operations.shared() {
        // Another taker finds each taken delivery held for the lease.
        assert!(
            s.outbox
                .take_deliveries(now, &take(10, 10))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

pub async fn settled_values_are_listed_by_prefix(s: Stores) {
    s.settled.settle("kind:a", b"1").await.unwrap();
    s.settled.settle("kind:b", b"2").await.unwrap();
    s.settled.settle("other", b"3").await.unwrap();
    let mut listed = s.settled.settled("kind:").await.unwrap();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("kind:a".to_owned(), b"1".to_vec()),
            ("kind:b".to_owned(), b"2".to_vec()),
        ]
    );
    assert!(s.settled.settled("none:").await.unwrap().is_empty());
}

/// `len` bytes of a pattern that differs with `seed`, so that a chunk out
/// of place shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Writes `bytes` as `name` in pieces of odd sizes, without finishing.
async fn written(s: &Stores, name: &str, bytes: &[u8]) -> Box<dyn longrun::store::FileWriter> {
    let mut writer = s.files.create(name).await.unwrap();
    for piece in bytes.chunks(300_007) {
        writer.write(piece).await.unwrap();
    }
    writer
}

/// The whole of `name`, or None; checks the size and the chunk bound.
async fn read_whole(s: &Stores, name: &str) -> Option<Vec<u8>> {
    use futures_util::StreamExt;
    let mut file = s.files.open(name).await.unwrap()?;
    let mut bytes = Vec::new();
    while let Some(chunk) = file.chunks.next().await {
        let chunk = chunk.unwrap();
        assert!(!chunk.is_empty() && chunk.len() <= longrun::store::files::READ_CHUNK);
        bytes.extend_from_slice(&chunk);
    }
    assert_eq!(bytes.len() as u64, file.size);
    Some(bytes)
}

pub async fn files_appear_whole_when_finished_and_replace_whole(s: Stores) {
    let name = "reports/0191e2a4-7c1e-7000-8000-000000000001.csv";
    let first = pattern(2_500_000, 1);
    let writer = written(&s, name, &first).await;
    assert!(
        read_whole(&s, name).await.is_none(),
        "visible before finish"
    );
    assert_eq!(writer.finish().await.unwrap(), first.len() as u64);
    assert!(read_whole(&s, name).await.unwrap() == first);

    // A second write of the name: the first stays until it finishes.
    let second = pattern(1_048_576, 2);
    let writer = written(&s, name, &second).await;
    assert!(read_whole(&s, name).await.unwrap() == first);
    writer.finish().await.unwrap();
    assert!(read_whole(&s, name).await.unwrap() == second);

    // An empty file is a file.
    let empty = "uploads/empty.csv";
    s.files.create(empty).await.unwrap().finish().await.unwrap();
    assert_eq!(read_whole(&s, empty).await.unwrap(), Vec::<u8>::new());

    s.files.remove(name).await.unwrap();
    assert!(read_whole(&s, name).await.is_none());
    s.files.remove(name).await.unwrap();
    assert!(read_whole(&s, "reports/never.csv").await.is_none());
}

pub async fn an_abandoned_file_leaves_nothing_visible(s: Stores) {
    let name = "uploads/abandoned.csv";
    drop(written(&s, name, &pattern(1_500_000, 3)).await);
    assert!(read_whole(&s, name).await.is_none());
    // Removing the name clears whatever the abandoned write left.
    s.files.remove(name).await.unwrap();
    let kept = pattern(10, 4);
    written(&s, name, &kept).await.finish().await.unwrap();
    assert!(read_whole(&s, name).await.unwrap() == kept);
}

pub async fn file_names_are_checked(s: Stores) {
    for bad in [
        "",
        "../etc/passwd",
        "reports/../x",
        "/abs",
        "a//b",
        "reports/.hidden",
        "a b",
    ] {
        assert!(s.files.create(bad).await.is_err(), "{bad:?} was accepted");
        assert!(s.files.open(bad).await.is_err(), "{bad:?} was opened");
    }
}

pub async fn files_survive_reopen(s: Stores, reopen: impl AsyncFn() -> Stores) {
    let name = "reports/kept.json";
    let bytes = pattern(1_200_000, 5);
    written(&s, name, &bytes).await.finish().await.unwrap();
    drop(s);
    let s = reopen().await;
    assert!(read_whole(&s, name).await.unwrap() == bytes);
}

fn order(id: &str, created: &str, status: OrderStatus, amount: i64) -> Order {
    let at = time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .unwrap();
    Order {
        order_id: id.into(),
        created_at: (at.unix_timestamp_nanos() / 1000) as i64,
        customer_id: format!("c-{id}"),
        status,
        amount_cents: amount,
    }
}

pub async fn orders_are_kept_by_month_in_order(s: Stores) {
    let acme = tenant("acme");
    let march: Month = "2024-03".parse().unwrap();
    let april: Month = "2024-04".parse().unwrap();
    let orders = vec![
        order("b", "2024-03-02T00:00:00Z", OrderStatus::Placed, 10),
        order("a", "2024-03-02T00:00:00Z", OrderStatus::Approved, 20),
        order("c", "2024-03-01T12:00:00Z", OrderStatus::Delivered, 30),
        order("d", "2024-04-01T00:00:00Z", OrderStatus::Cancelled, 40),
    ];
    let put = s.orders.put_orders(&acme, orders, None).await.unwrap();
    assert_eq!(put, PutOrders::Stored);
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 3);
    assert_eq!(s.orders.month_count(&acme, april).await.unwrap(), 1);

    // In created_at, then order_id order, a page at a time.
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = s.orders.month_page(&acme, march, cursor, 2).await.unwrap();
        ids.extend(page.into_iter().map(|o| o.order_id));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(ids, ["c", "a", "b"]);
    let (april_orders, _) = s.orders.month_page(&acme, april, None, 10).await.unwrap();
    assert_eq!(april_orders.len(), 1);
    assert_eq!(april_orders[0].status, OrderStatus::Cancelled);
    assert_eq!(april_orders[0].amount_cents, 40);
}

pub async fn an_order_id_is_replaced_wherever_it_was(s: Stores) {
    let acme = tenant("acme");
    let march: Month = "2024-03".parse().unwrap();
    let may: Month = "2024-05".parse().unwrap();
    s.orders
        .put_orders(
            &acme,
            vec![order("x", "2024-03-05T00:00:00Z", OrderStatus::Placed, 1)],
            None,
        )
        .await
        .unwrap();
    // The same order_id again, moved to May: March loses it.
    s.orders
        .put_orders(
            &acme,
            vec![order(
                "x",
                "2024-05-05T00:00:00Z",
                OrderStatus::Delivered,
                2,
            )],
            None,
        )
        .await
        .unwrap();
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 0);
    assert_eq!(s.orders.month_count(&acme, may).await.unwrap(), 1);
    let (in_may, _) = s.orders.month_page(&acme, may, None, 10).await.unwrap();
    assert_eq!(in_may[0].amount_cents, 2);
    assert!(
        s.orders
            .month_page(&acme, march, None, 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
}

pub async fn the_order_limit_holds_whole_batches(s: Stores) {
    let acme = tenant("acme");
    let march: Month = "2024-03".parse().unwrap();
    let batch = |ids: &[&str]| {
        ids.iter()
            .map(|id| order(id, "2024-03-01T00:00:00Z", OrderStatus::Placed, 1))
            .collect::<Vec<_>>()
    };
    let put = s
        .orders
        .put_orders(&acme, batch(&["1", "2"]), Some(3))
        .await;
    assert_eq!(put.unwrap(), PutOrders::Stored);
    // Two more would make four: nothing of the batch is stored.
    let put = s
        .orders
        .put_orders(&acme, batch(&["3", "4"]), Some(3))
        .await;
    assert_eq!(put.unwrap(), PutOrders::OverLimit { stored: 2 });
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 2);
    // Replacements at the limit still fit.
    let put = s
        .orders
        .put_orders(&acme, batch(&["1", "2", "3"]), Some(3))
        .await;
    assert_eq!(put.unwrap(), PutOrders::Stored);
    let put = s
        .orders
        .put_orders(&acme, batch(&["1", "2"]), Some(3))
        .await;
    assert_eq!(put.unwrap(), PutOrders::Stored);
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 3);
}

pub async fn a_large_call_keeps_counts_and_the_last_of_each_order_id(s: Stores) {
    let acme = tenant("acme");
    let (march, april): (Month, Month) = ("2024-03".parse().unwrap(), "2024-04".parse().unwrap());
    // 1,000 orders in March, then the first 300 of them again, moved to
    // April, and the first 100 a third time, back to March: more than a
    // store takes in one slice, with an order_id's rows far apart.
    let mut orders: Vec<Order> = (0..1000)
        .map(|i| {
            order(
                &format!("o{i:04}"),
                "2024-03-10T00:00:00Z",
                OrderStatus::Placed,
                i,
            )
        })
        .collect();
    orders.extend((0..300).map(|i| {
        order(
            &format!("o{i:04}"),
            "2024-04-10T00:00:00Z",
            OrderStatus::Approved,
            10_000 + i,
        )
    }));
    orders.extend((0..100).map(|i| {
        order(
            &format!("o{i:04}"),
            "2024-03-01T00:00:00Z",
            OrderStatus::Delivered,
            20_000 + i,
        )
    }));
    let put = s
        .orders
        .put_orders(&acme, orders, Some(1000))
        .await
        .unwrap();
    assert_eq!(put, PutOrders::Stored);
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 800);
    assert_eq!(s.orders.month_count(&acme, april).await.unwrap(), 200);
    let (in_march, _) = s.orders.month_page(&acme, march, None, 2000).await.unwrap();
    assert_eq!(in_march.len(), 800);
    // The third rows come first (the 1st of March), then the untouched ones.
    assert_eq!(in_march[0].amount_cents, 20_000);
    assert_eq!(in_march[99].amount_cents, 20_099);
    assert_eq!(in_march[100].order_id, "o0300");
    let (in_april, _) = s.orders.month_page(&acme, april, None, 2000).await.unwrap();
    assert_eq!(in_april.len(), 200);
    assert_eq!(in_april[0].order_id, "o0100");
    assert_eq!(in_april[0].amount_cents, 10_100);

    // New ids on either side of one stored order, which moves to April:
    // the stored one is found though the ends of the call are new.
    let mut orders: Vec<Order> = (0..50)
        .map(|i| {
            order(
                &format!("n{i:04}"),
                "2024-04-20T00:00:00Z",
                OrderStatus::Placed,
                i,
            )
        })
        .collect();
    orders.push(order(
        "o0500",
        "2024-04-21T00:00:00Z",
        OrderStatus::Placed,
        1,
    ));
    orders.push(order(
        "p0000",
        "2024-04-20T00:00:00Z",
        OrderStatus::Placed,
        1,
    ));
    let put = s
        .orders
        .put_orders(&acme, orders, Some(1052))
        .await
        .unwrap();
    assert_eq!(put, PutOrders::Stored);
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 799);
    assert_eq!(s.orders.month_count(&acme, april).await.unwrap(), 252);
}

/// Every order of `month`, read `page` at a time.
async fn listing(s: &Stores, tenant: &Tenant, month: Month, page: usize) -> Vec<Order> {
    let (mut all, mut cursor) = (Vec::new(), None);
    loop {
        let (orders, next) = s
            .orders
            .month_page(tenant, month, cursor, page)
            .await
            .unwrap();
        assert!(orders.len() <= page);
        all.extend(orders);
        match next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

pub async fn many_calls_with_moves_and_merges_read_as_a_plain_map_would(s: Stores) {
    use rand::{Rng, SeedableRng};
    let acme = tenant("acme");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut model: std::collections::HashMap<String, Order> = Default::default();
    for call in 0..40 {
        // Mostly small calls, so that runs pile up and merge; ids from a
        // pool small enough to be replaced often, some twice in a call.
        let size = if call == 20 {
            5000
        } else {
            rng.random_range(1..400)
        };
        let orders: Vec<Order> = (0..size)
            .map(|_| {
                let created = format!(
                    "2024-0{}-{:02}T00:00:00Z",
                    rng.random_range(1..=3),
                    rng.random_range(1..=28)
                );
                let id = format!("o{:05}", rng.random_range(0..3000));
                order(
                    &id,
                    &created,
                    OrderStatus::Placed,
                    rng.random_range(0..1000),
                )
            })
            .collect();
        for o in &orders {
            model.insert(o.order_id.clone(), o.clone());
        }
        let put = s.orders.put_orders(&acme, orders, None).await.unwrap();
        assert_eq!(put, PutOrders::Stored);
        if call % 8 != 7 && call != 39 {
            continue;
        }
        for m in 1..=3 {
            let month = Month::new(2024, m).unwrap();
            let mut want: Vec<Order> = model
                .values()
                .filter(|o| o.month() == month)
                .cloned()
                .collect();
            want.sort_by(|a, b| (a.created_at, &a.order_id).cmp(&(b.created_at, &b.order_id)));
            assert_eq!(
                listing(&s, &acme, month, 97).await,
                want,
                "call {call}, month {m}"
            );
            let count = s.orders.month_count(&acme, month).await.unwrap();
            assert_eq!(count, want.len() as u64, "call {call}, count of month {m}");
        }
    }
}

/// Each of `calls` as a put_orders call of its own, all at once; their
/// results in order.
async fn put_at_once(
    s: &Stores,
    tenant: &Tenant,
    calls: Vec<Vec<Order>>,
    limit: Option<u64>,
) -> Vec<PutOrders> {
    let puts = calls.into_iter().map(|orders| {
        let (s, tenant) = (s.clone(), tenant.clone());
        tokio::spawn(async move { s.orders.put_orders(&tenant, orders, limit).await })
    });
    futures_util::future::join_all(puts)
        .await
        .into_iter()
        .map(|put| put.unwrap().unwrap())
        .collect()
}

pub async fn calls_of_one_tenant_at_once_share_its_limit(s: Stores) {
    let acme = tenant("acme");
    let march: Month = "2024-03".parse().unwrap();
    let batch = |from: i64, to: i64, reverse: bool| {
        let mut orders: Vec<Order> = (from..to)
            .map(|i| {
                order(
                    &format!("p{i:04}"),
                    "2024-03-01T00:00:00Z",
                    OrderStatus::Placed,
                    i,
                )
            })
            .collect();
        if reverse {
            orders.reverse();
        }
        orders
    };
    // The same 400 orders in opposite orders, eight times at once: all are
    // stored (replacements), none waits forever on another.
    let calls = (0..8).map(|i| batch(0, 400, i % 2 == 1)).collect();
    for put in put_at_once(&s, &acme, calls, None).await {
        assert_eq!(put, PutOrders::Stored);
    }
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 400);
    // Two calls of 300 new orders each, at once, against a limit of 999:
    // exactly one fits.
    let calls = vec![batch(1000, 1300, false), batch(2000, 2300, false)];
    let puts = put_at_once(&s, &acme, calls, Some(999)).await;
    assert!(puts.contains(&PutOrders::Stored), "{puts:?}");
    assert!(
        puts.contains(&PutOrders::OverLimit { stored: 700 }),
        "{puts:?}"
    );
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 700);
}

pub async fn each_tenants_orders_are_apart(s: Stores) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let march: Month = "2024-03".parse().unwrap();
    let one = || {
        vec![order(
            "same-id",
            "2024-03-01T00:00:00Z",
            OrderStatus::Placed,
            5,
        )]
    };
    s.orders.put_orders(&acme, one(), None).await.unwrap();
    s.orders
        .put_orders(&Tenant::default_tenant(), one(), None)
        .await
        .unwrap();
    // The same order_id in two tenants is two orders.
    assert_eq!(s.orders.month_count(&acme, march).await.unwrap(), 1);
    assert_eq!(
        s.orders
            .month_count(&Tenant::default_tenant(), march)
            .await
            .unwrap(),
        1
    );
    // A tenant that never stored anything reads nothing.
    assert_eq!(s.orders.month_count(&globex, march).await.unwrap(), 0);
    let (none, cursor) = s.orders.month_page(&globex, march, None, 10).await.unwrap();
    assert!(none.is_empty() && cursor.is_none());
}

pub async fn a_batch_commits_what_it_can_and_refuses_the_rest(s: Stores) {
    let existing = created(&s, new_op("k", None, 9)).await;
    let rid: RequestId = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d".parse().unwrap();
    let a = new_op("k", Some(rid), 1);
    let c = new_op("k", None, 3);
    let missing = longrun::model::OperationId::generate();
    let stale = Claim {
        id: existing.id,
        attempt: Attempt::new(7),
    };
    let mut feed = s.operations.subscribe();
    let results = s
        .operations
        .commit(
            vec![
                Write::Create(a.clone()),
                Write::Update {
                    id: missing,
                    edit: Edit::Cancel,
                },
                // The same key with another request, in the same batch.
                Write::Create(new_op("k", Some(rid), 2)),
                Write::Update {
                    id: existing.id,
                    edit: Edit::Finish {
                        claim: stale,
                        finish: done(ok()),
                    },
                },
                // Sees the create earlier in the batch.
                Write::Update {
                    id: a.id,
                    edit: Edit::Cancel,
                },
                Write::Delete(existing.id),
                Write::Purge(missing),
                Write::Create(c.clone()),
            ],
            SystemTime::now(),
        )
        .await;
    assert_eq!(results.len(), 8);
    let mut results = results.into_iter();
    let mut next = || results.next().unwrap();
    assert!(matches!(next(), Ok(Applied::Created(Created::New(op))) if op.id == a.id));
    assert!(matches!(next(), Err(StoreError::NotFound)));
    assert!(
        matches!(next(), Err(StoreError::RequestIdConflict { existing, .. }) if existing == a.id)
    );
    assert!(matches!(
        next(),
        Err(StoreError::Rejected(Rejection::Stale { held }))
            if held == Attempt::new(7)
    ));
    assert!(matches!(next(), Ok(Applied::Updated(op)) if op.state == State::Cancelled));
    assert!(matches!(
        next(),
        Err(StoreError::Rejected(Rejection::Precondition { .. }))
    ));
    assert!(matches!(next(), Ok(Applied::Deleted(false))));
    assert!(matches!(next(), Ok(Applied::Created(Created::New(op))) if op.id == c.id));

    // What succeeded is stored; what was refused changed nothing.
    let stored_a = s.operations.get(a.id).await.unwrap().unwrap();
    assert_eq!(stored_a.state, State::Cancelled);
    assert!(s.operations.get(c.id).await.unwrap().is_some());
    assert_eq!(s.operations.get(existing.id).await.unwrap(), Some(existing));
    assert_eq!(s.operations.get(missing).await.unwrap(), None);
    // The feed tells the batch's changes, in order.
    let mut seen = Vec::new();
    for _ in 0..3 {
        match feed.recv().await.unwrap() {
            Change::Updated(op) => seen.push((op.id, op.state)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            (a.id, State::Queued),
            (a.id, State::Cancelled),
            (c.id, State::Queued)
        ]
    );
}

fn of_tenant(kind: &str, tenant_name: Option<&str>, digest: u8) -> Operation {
    let mut op = new_op(kind, None, digest);
    if let Some(name) = tenant_name {
        op.tenant = tenant(name);
    }
    op
}

fn wants(list: &[(&str, usize)]) -> ClaimRequest {
    ClaimRequest {
        wants: list.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
        ..ClaimRequest::default()
    }
}

fn keyed(kind: &str, key: Option<&str>, digest: u8) -> Operation {
    let mut op = new_op(kind, None, digest);
    op.concurrency_key = key.map(str::to_owned);
    op
}

fn limit(kind: &str, scope: LimitScope, concurrency: Option<u32>, rates: &str) -> Limit {
    Limit {
        kind: kind.into(),
        scope,
        concurrency,
        rates: longrun::model::flow::parse_rates(rates).unwrap(),
    }
}

/// The concurrency keys of claimed operations, sorted.
fn keys_of(claimed: &[Operation]) -> Vec<Option<String>> {
    let mut keys: Vec<_> = claimed
        .iter()
        .map(|op| op.concurrency_key.clone())
        .collect();
    keys.sort();
    keys
}

pub async fn limits_hold_claims_back_until_slots_come_back(
    s: Stores,
    reopen: impl AsyncFn() -> Stores,
) {
    let per_key = limit("lim", LimitScope::Key, Some(1), "");
    let per_tenant = limit("lim", LimitScope::Tenant, Some(3), "");
    s.operations.set_limit(&per_tenant).await.unwrap();
    s.operations.set_limit(&per_key).await.unwrap();
    assert_eq!(
        s.operations.limits().await.unwrap(),
        vec![per_key.clone(), per_tenant.clone()]
    );
    for (i, key) in [Some("a"), Some("a"), Some("a"), Some("b"), Some("b"), None]
        .into_iter()
        .enumerate()
    {
        created(&s, keyed("lim", key, i as u8 + 1)).await;
    }
    // One per key, and the one without a key: the tenant's three.
    let first = s
        .operations
        .claim(&wants(&[("lim", 10)]), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(
        keys_of(&first.operations),
        vec![None, Some("a".into()), Some("b".into())]
    );
    let a = first
        .operations
        .iter()
        .find(|op| op.concurrency_key.as_deref() == Some("a"))
        .unwrap();
    assert!(a.holds.has(LimitScope::Key) && a.holds.has(LimitScope::Tenant));
    let none = s
        .operations
        .claim(&wants(&[("lim", 10)]), SystemTime::now())
        .await
        .unwrap();
    assert!(none.operations.is_empty(), "{:?}", none.operations);
    let (_, usage) = s.operations.usage("lim", None).await.unwrap();
    assert_eq!(usage.running(LimitScope::Key, "a"), 1);
    assert_eq!(usage.running(LimitScope::Tenant, ""), 3);

    // What runs is counted again after a reopen (of claims made durable:
    // a lazy claim lost in a crash is queued again, holding nothing).
    s.operations.flush().await.unwrap();
    drop(s);
    let s = reopen().await;
    let slots = [(LimitScope::Key, "a".to_owned())];
    let (limits, usage) = s.operations.usage("lim", Some(&slots)).await.unwrap();
    assert_eq!(limits.limits, vec![per_key.clone(), per_tenant]);
    assert_eq!(usage.running(LimitScope::Key, "a"), 1);
    assert!(
        s.operations
            .claim(&wants(&[("lim", 10)]), SystemTime::now())
            .await
            .unwrap()
            .operations
            .is_empty()
    );

    // Its end gives the slots back: the next of key "a" starts, and work
    // held back wakes the claimers.
    let mut work = s.operations.work();
    work.borrow_and_update();
    let a = s.operations.get(a.id).await.unwrap().unwrap();
    finish(&s, Claim::of(&a), done(ok())).await.unwrap();
    assert!(work.has_changed().unwrap());
    let next = s
        .operations
        .claim(&wants(&[("lim", 10)]), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(keys_of(&next.operations), vec![Some("a".into())]);

    // Removed, a limit holds nothing back.
    s.operations
        .set_limit(&limit("lim", LimitScope::Tenant, None, ""))
        .await
        .unwrap();
    s.operations
        .set_limit(&limit("lim", LimitScope::Key, None, ""))
        .await
        .unwrap();
    assert!(s.operations.limits().await.unwrap().is_empty());
    let rest = s
        .operations
        .claim(&wants(&[("lim", 10)]), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(rest.operations.len(), 2);
}

pub async fn queued_work_past_its_expire_time_ends_without_running(s: Stores) {
    let now = SystemTime::now();
    let mut soon = new_op("exp", None, 1);
    soon.expire_time = Some(longrun::model::to_micros_precision(
        now + Duration::from_secs(1),
    ));
    let soon = created(&s, soon).await;
    let mut later = new_op("exp", None, 2);
    later.expire_time = Some(longrun::model::to_micros_precision(
        now + Duration::from_secs(60),
    ));
    created(&s, later).await;
    // Nothing has expired yet; the next one to is `soon`.
    let (expired, next) = s.operations.expiring(now, 10).await.unwrap();
    assert!(expired.is_empty());
    assert_eq!(next, soon.expire_time);
    // Past its time, the sweep finds it, and a claim ends it instead of
    // starting it.
    let after = now + Duration::from_secs(2);
    let (expired, _) = s.operations.expiring(after, 10).await.unwrap();
    assert_eq!(expired, vec![soon.id]);
    let claimed = s
        .operations
        .claim(&wants(&[("exp", 10)]), after)
        .await
        .unwrap();
    assert_eq!(claimed.operations.len(), 1, "only the one not expired runs");
    assert_ne!(claimed.operations[0].id, soon.id);
    let ended = s.operations.get(soon.id).await.unwrap().unwrap();
    assert_eq!(ended.state, State::Failed);
    assert_eq!(ended.attempt, Attempt::NONE, "it never ran");
    let (expired, _) = s.operations.expiring(after, 10).await.unwrap();
    assert!(expired.is_empty(), "an ended operation expires no more");
}

pub async fn a_rate_limit_starts_work_as_its_bucket_fills(s: Stores) {
    s.operations
        .set_limit(&limit("rated", LimitScope::Kind, None, "2/s"))
        .await
        .unwrap();
    for i in 0..5 {
        created(&s, new_op("rated", None, i + 1)).await;
    }
    let now = SystemTime::now();
    let first = s
        .operations
        .claim(&wants(&[("rated", 10)]), now)
        .await
        .unwrap();
    assert_eq!(first.operations.len(), 2, "the burst");
    // The next token is due in half a second, and the claim says so.
    let due = first.next_due.expect("a wake-up for the next token");
    let wait = due.duration_since(now).unwrap();
    assert!(
        wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    let early = s
        .operations
        .claim(&wants(&[("rated", 10)]), now + Duration::from_millis(100))
        .await
        .unwrap();
    assert!(early.operations.is_empty());
    let later = s
        .operations
        .claim(&wants(&[("rated", 10)]), now + Duration::from_millis(600))
        .await
        .unwrap();
    assert_eq!(later.operations.len(), 1);
}

pub async fn a_paused_kind_is_claimed_by_nobody_until_resumed(
    s: Stores,
    reopen: impl AsyncFn() -> Stores,
) {
    created(&s, new_op("held", None, 1)).await;
    created(&s, new_op("free", None, 2)).await;
    s.operations.set_paused("held", true).await.unwrap();
    s.operations.set_paused("held", true).await.unwrap();
    assert_eq!(
        s.operations.paused().await.unwrap(),
        vec!["held".to_owned()]
    );
    let claimed = s
        .operations
        .claim(&wants(&[("held", 5), ("free", 5)]), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(claimed.operations.len(), 1);
    assert_eq!(claimed.operations[0].kind, "free");

    // Stored: a reopened store (another node, a restart) holds it too.
    drop(s);
    let s = reopen().await;
    assert_eq!(
        s.operations.paused().await.unwrap(),
        vec!["held".to_owned()]
    );
    let claimed = s
        .operations
        .claim(&wants(&[("held", 5)]), SystemTime::now())
        .await
        .unwrap();
    assert!(claimed.operations.is_empty());

    // Resuming wakes the claimers and frees the queue.
    let mut work = s.operations.work();
    work.borrow_and_update();
    s.operations.set_paused("held", false).await.unwrap();
    assert!(work.has_changed().unwrap());
    assert!(s.operations.paused().await.unwrap().is_empty());
    let claimed = s
        .operations
        .claim(&wants(&[("held", 5)]), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(claimed.operations.len(), 1);
    assert_eq!(claimed.operations[0].kind, "held");
}

pub async fn claims_take_the_higher_priority_first(s: Stores) {
    let with = |priority: i32, tenant_name: &str, digest: u8| {
        let mut op = of_tenant("p", Some(tenant_name), digest);
        op.priority = priority;
        op
    };
    let a_low = created(&s, with(0, "pa", 1)).await;
    let b_low = created(&s, with(0, "pb", 2)).await;
    let a_least = created(&s, with(-1, "pa", 3)).await;
    let b_high = created(&s, with(5, "pb", 4)).await;
    let a_high = created(&s, with(5, "pa", 5)).await;
    // The highest first, the oldest of them first.
    let first = s
        .operations
        .claim(&wants(&[("p", 1)]), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(first.operations[0].id, b_high.id);
    assert_eq!(first.operations[0].priority, 5);
    // Then the rest of that priority, then the default in tenants' turns,
    // then below it. (Which ones a claim takes is the contract; the order
    // within one claim's answer is not.)
    let claim = async |n| -> HashSet<longrun::model::OperationId> {
        s.operations
            .claim(&wants(&[("p", n)]), SystemTime::now())
            .await
            .unwrap()
            .operations
            .into_iter()
            .map(|op| op.id)
            .collect()
    };
    assert_eq!(claim(1).await, HashSet::from([a_high.id]));
    assert_eq!(claim(2).await, HashSet::from([a_low.id, b_low.id]));
    assert_eq!(claim(5).await, HashSet::from([a_least.id]));
}

pub async fn a_claim_for_one_tenant_takes_only_its_work(s: Stores) {
    let mut of_a = Vec::new();
    for i in 0..3u8 {
        of_a.push(created(&s, of_tenant("x", Some("a"), i)).await.id);
    }
    for i in 0..3u8 {
        created(&s, of_tenant("x", Some("b"), 10 + i)).await;
    }
    let now = SystemTime::now();
    let mut request = wants(&[("x", 10)]);
    request.tenant = Some(tenant("a"));
    let claimed = s.operations.claim(&request, now).await.unwrap();
    let ids: Vec<_> = claimed.operations.iter().map(|o| o.id).collect();
    assert_eq!(ids, of_a, "a's work, oldest first, and nothing of b's");
    assert_eq!(s.operations.queued(&tenant("b")).tenant, 3);
    let again = s.operations.claim(&request, now).await.unwrap();
    assert!(again.operations.is_empty());
    // Without the filter, b's work is there to take.
    let rest = s.operations.claim(&wants(&[("x", 10)]), now).await.unwrap();
    assert_eq!(rest.operations.len(), 3);
    assert!(rest.operations.iter().all(|o| o.tenant == tenant("b")));
}

pub async fn claims_take_work_by_kind_with_tenants_in_turn(s: Stores) {
    let mut work = s.operations.work();
    work.borrow_and_update();
    let mut of_a = Vec::new();
    for i in 0..6u8 {
        of_a.push(created(&s, of_tenant("x", Some("a"), i)).await.id);
    }
    assert!(work.has_changed().unwrap(), "a create signals new work");
    let mut of_b = Vec::new();
    for i in 0..2u8 {
        of_b.push(created(&s, of_tenant("x", Some("b"), 10 + i)).await.id);
    }
    for i in 0..3u8 {
        created(&s, of_tenant("y", None, 20 + i)).await;
    }
    let depth = s.operations.queued(&tenant("a"));
    assert_eq!((depth.total, depth.tenant), (11, 6));

    // Four of x: the tenants take turns, each oldest first.
    let now = SystemTime::now();
    let claimed = s.operations.claim(&wants(&[("x", 4)]), now).await.unwrap();
    let ids: Vec<_> = claimed.operations.iter().map(|o| o.id).collect();
    assert_eq!(ids.len(), 4);
    let mine = |tenant_ids: &[longrun::model::OperationId]| {
        ids.iter()
            .filter(|id| tenant_ids.contains(id))
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(mine(&of_a), of_a[..2]);
    assert_eq!(mine(&of_b), of_b[..]);
    for op in &claimed.operations {
        assert_eq!((op.state, op.attempt.get()), (State::Running, 1));
        assert_eq!(s.operations.get(op.id).await.unwrap().as_ref(), Some(op));
    }
    assert_eq!(s.operations.queued(&tenant("a")).tenant, 4);

    // More than there is: what is left of x, and one y; other kinds wait.
    let claimed = s
        .operations
        .claim(&wants(&[("x", 10), ("y", 1)]), now)
        .await
        .unwrap();
    let kinds: Vec<_> = claimed.operations.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "x").count(), 4);
    assert_eq!(kinds.iter().filter(|k| **k == "y").count(), 1);
    let empty = s
        .operations
        .claim(&wants(&[("x", 10), ("z", 5)]), now)
        .await
        .unwrap();
    assert!(empty.operations.is_empty());
    assert_eq!(s.operations.queued(&Tenant::default_tenant()).total, 2);
}

pub async fn claims_wait_for_retries_to_come_due(s: Stores) {
    let op = created(&s, new_op("k", None, 1)).await;
    let now = SystemTime::now();
    let first = s.operations.claim(&wants(&[("k", 5)]), now).await.unwrap();
    assert_eq!(first.operations.len(), 1);
    let at = now + Duration::from_secs(60);
    let retry = Finish::Retry {
        error: OperationError::new(Code::Unavailable, "FLAKY", "try again"),
        not_before: at,
    };
    finish(&s, Claim::of(&first.operations[0]), retry)
        .await
        .unwrap();
    let early = s.operations.claim(&wants(&[("k", 5)]), now).await.unwrap();
    assert!(early.operations.is_empty());
    let due = early.next_due.expect("a retry is waiting");
    assert_eq!(micros(due), micros(at));
    // Queued all along, and counted as such.
    assert_eq!(s.operations.queued(&Tenant::default_tenant()).total, 1);
    let later = s
        .operations
        .claim(&wants(&[("k", 5)]), at + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(later.operations.len(), 1);
    assert_eq!(later.operations[0].id, op.id);
    assert_eq!(later.operations[0].attempt.get(), 2);
}

/// A claim of up to `n` operations of kind "k" by node-a, under a lease
/// of 30 s from `now`, and that lease.
fn leased_by_node_a(n: usize, now: SystemTime) -> (Lease, ClaimRequest) {
    let lease = Lease {
        holder: "node-a".into(),
        expires: longrun::model::to_micros_precision(now + Duration::from_secs(30)),
    };
    let request = ClaimRequest {
        wants: vec![("k".into(), n)],
        lease: Some(lease.clone()),
        by: Some("node-a".into()),
        ..ClaimRequest::default()
    };
    (lease, request)
}

pub async fn a_leased_claim_records_and_drops_its_lease(s: Stores) {
    let op = created(&s, new_op("k", None, 1)).await;
    let now = SystemTime::now();
    let (lease, request) = leased_by_node_a(1, now);
    let claimed = s.operations.claim(&request, now).await.unwrap();
    assert_eq!(claimed.operations[0].lease, Some(lease.clone()));
    assert_eq!(claimed.operations[0].holder.as_deref(), Some("node-a"));
    let stored = s.operations.get(op.id).await.unwrap().unwrap();
    assert_eq!(stored.lease, Some(lease));
    let released = finish(&s, Claim::of(&stored), Finish::Release)
        .await
        .unwrap();
    assert_eq!(released.lease, None);
    assert_eq!(released.state, State::Queued);
    let again = s.operations.claim(&wants(&[("k", 1)]), now).await.unwrap();
    assert_eq!(again.operations[0].attempt.get(), 2);
    assert_eq!(again.operations[0].lease, None);
}

pub async fn claims_and_cancels_leave_the_queue_consistent(s: Stores) {
    let cancelled = created(&s, new_op("k", None, 1)).await;
    let kept = created(&s, new_op("k", None, 2)).await;
    edit(&s, &cancelled, Edit::Cancel).await.unwrap();
    assert_eq!(s.operations.queued(&Tenant::default_tenant()).total, 1);
    let claimed = s
        .operations
        .claim(&wants(&[("k", 10)]), SystemTime::now())
        .await
        .unwrap();
    let ids: Vec<_> = claimed.operations.iter().map(|o| o.id).collect();
    assert_eq!(ids, [kept.id]);
    assert_eq!(s.operations.queued(&Tenant::default_tenant()).total, 0);
}

/// Queued work survives a reopen, still claimable in order.
pub async fn the_queue_is_rebuilt_at_open(s: Stores, reopen: impl AsyncFn() -> Stores) {
    let first = created(&s, new_op("k", None, 1)).await;
    let second = created(&s, new_op("k", None, 2)).await;
    let running = created(&s, new_op("k", None, 3)).await;
    claim(&s, &running).await;
    s.operations.flush().await.unwrap();
    drop(s);
    let s = reopen().await;
    assert_eq!(s.operations.queued(&Tenant::default_tenant()).total, 2);
    let claimed = s
        .operations
        .claim(&wants(&[("k", 10)]), SystemTime::now())
        .await
        .unwrap();
    let ids: Vec<_> = claimed.operations.iter().map(|o| o.id).collect();
    assert_eq!(ids, [first.id, second.id]);
}

/// Writes, closes the store, reopens it, and checks everything is there.
pub async fn survives_reopen(s: Stores, reopen: impl AsyncFn() -> Stores) {
    let op = created(&s, notified(1, Vec::new())).await;
    let finished = finished_op(&s, 2, None).await;
    let secret = s.settled.settle("kept", b"value").await.unwrap();
    s.orders
        .put_orders(
            &tenant("acme"),
            vec![order("o", "2024-03-01T00:00:00Z", OrderStatus::Placed, 1)],
            None,
        )
        .await
        .unwrap();
    s.operations.flush().await.unwrap();
    drop(s);
    let s = reopen().await;
    assert_eq!(s.operations.get(op.id).await.unwrap(), Some(op));
    assert_eq!(s.operations.get(finished.id).await.unwrap(), Some(finished));
    assert_eq!(s.settled.settle("kept", b"other").await.unwrap(), secret);
    let march: Month = "2024-03".parse().unwrap();
    assert_eq!(
        s.orders.month_count(&tenant("acme"), march).await.unwrap(),
        1
    );
    let all = Filter::default();
    let listed = s
        .operations
        .list(ListQuery {
            parent: None,
            after: None,
            tenant: None,
            filter: &all,
            limit: 10,
            scan_budget: 100,
        })
        .await
        .unwrap();
    assert_eq!(listed.operations.len(), 2);
}

// Schedules.

fn a_schedule(tenant: &Tenant, id: &str, due_in: Duration) -> longrun::model::Schedule {
    use longrun::model::schedule::{Overlap, RunTemplate, Schedule};
    let now = longrun::model::to_micros_precision(SystemTime::now());
    let mut s = Schedule::new(
        tenant.clone(),
        id,
        "k",
        longrun::model::Payload {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![1, 2, 3].into(),
        },
        longrun::model::When::cron("0 3 * * *", "Europe/Berlin").unwrap(),
        now,
    );
    s.run = RunTemplate {
        priority: 2,
        concurrency_key: Some("key".into()),
        start_delay: Some(Duration::from_secs(5)),
        ttl: Some(Duration::from_secs(60)),
        timeout: None,
        max_attempts: Some(3),
        notification: None,
    };
    s.jitter = Duration::from_secs(1);
    s.overlap = Overlap::BufferOne;
    s.catch_up_window = Duration::from_secs(600);
    s.catch_up_latest_only = true;
    s.next_tick = Some(longrun::model::to_micros_precision(now + due_in));
    s
}

async fn schedules_are_stored_by_tenant_and_written_by_revision(s: Stores) {
    use longrun::store::{Expect, PutSchedule};
    let acme = Tenant::named("acme").unwrap();
    let one = a_schedule(&acme, "one", Duration::from_secs(3600));
    let limit = Expect::Absent { max_per_tenant: 2 };
    let PutSchedule::Stored(stored) = s.schedules.put_schedule(&one, limit, true).await.unwrap()
    else {
        panic!("not stored")
    };
    assert_eq!(stored.revision, 1);
    let read = s
        .schedules
        .get_schedule(&acme, "one")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, *stored, "a schedule reads back as written");
    assert_eq!(
        s.schedules.put_schedule(&one, limit, true).await.unwrap(),
        PutSchedule::Exists
    );
    assert!(
        s.schedules
            .get_schedule(&Tenant::default_tenant(), "one")
            .await
            .unwrap()
            .is_none()
    );
    let two = a_schedule(&acme, "two", Duration::from_secs(3600));
    s.schedules.put_schedule(&two, limit, true).await.unwrap();
    assert_eq!(
        s.schedules
            .put_schedule(&a_schedule(&acme, "three", Duration::ZERO), limit, true)
            .await
            .unwrap(),
        PutSchedule::OverLimit
    );
    // Revisions: the one read is written; an older one is stale.
    let mut changed = read.clone();
    changed.paused = true;
    assert!(matches!(
        s.schedules.put_schedule(&changed, Expect::Revision(1), true).await.unwrap(),
        PutSchedule::Stored(ref c) if c.revision == 2 && c.paused
    ));
    assert_eq!(
        s.schedules
            .put_schedule(&changed, Expect::Revision(1), true)
            .await
            .unwrap(),
        PutSchedule::Stale
    );
    let page = s.schedules.list_schedules(&acme, None, 1).await.unwrap();
    assert_eq!(
        page.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["one"]
    );
    let rest = s
        .schedules
        .list_schedules(&acme, Some("one"), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["two"]
    );
    assert!(s.schedules.delete_schedule(&acme, "one").await.unwrap());
    assert!(!s.schedules.delete_schedule(&acme, "one").await.unwrap());
    assert_eq!(
        s.schedules
            .put_schedule(&changed, Expect::Revision(2), true)
            .await
            .unwrap(),
        PutSchedule::Missing
    );
}

async fn due_schedules_are_taken_once_until_their_hold_ends(s: Stores) {
    use longrun::store::{Expect, PutSchedule};
    let tenant = Tenant::default_tenant();
    let absent = Expect::Absent { max_per_tenant: 10 };
    let due = a_schedule(&tenant, "due", Duration::ZERO);
    let later = a_schedule(&tenant, "later", Duration::from_secs(3600));
    let mut paused = a_schedule(&tenant, "paused", Duration::ZERO);
    paused.paused = true;
    for schedule in [&due, &later, &paused] {
        s.schedules
            .put_schedule(schedule, absent, true)
            .await
            .unwrap();
    }
    assert_eq!(
        s.schedules.next_schedule_due().await.unwrap(),
        due.next_tick,
        "the soonest due, paused ones aside"
    );
    let now = SystemTime::now() + Duration::from_millis(10);
    let until = now + Duration::from_secs(5);
    let taken = s
        .schedules
        .take_due_schedules(now, until, 10)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["due"]
    );
    assert_eq!(taken[0].lease_until, Some(until));
    assert!(
        s.schedules
            .take_due_schedules(now, until, 10)
            .await
            .unwrap()
            .is_empty(),
        "held: no second take"
    );
    // Once the hold ends, it is due again.
    let after = until + Duration::from_millis(1);
    let again = s
        .schedules
        .take_due_schedules(after, after + Duration::from_secs(5), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    // Let go with its clock moved on, it is no longer due.
    let mut moved = again[0].clone();
    moved.lease_until = None;
    moved.next_tick = Some(now + Duration::from_secs(7200));
    assert!(matches!(
        s.schedules
            .put_schedule(&moved, Expect::Revision(moved.revision), false)
            .await
            .unwrap(),
        PutSchedule::Stored(_)
    ));
    assert!(
        s.schedules
            .take_due_schedules(after, after, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.schedules.next_schedule_due().await.unwrap(),
        later.next_tick
    );
}

/// A batch's children are counted on its parent, changed in the same
/// write as the child that moved (created, claimed, ended), so that the
/// A bulk page is all or nothing: under the action's current attempt, the
/// items it may change change, the others count as skipped, and the tally
/// lands on the action's operation in the same write; under a stale
/// attempt nothing changes at all.
async fn a_bulk_page_changes_its_items_and_its_tally_together(s: Stores) {
    let action = created(&s, new_op("conformance.bulk", None, 1)).await;
    let (_, held) = claim(&s, &action).await;
    let queued = created(&s, new_op("conformance.bulk.item", None, 2)).await;
    let finished = created(&s, new_op("conformance.bulk.item", None, 3)).await;
    let (_, item_claim) = claim(&s, &finished).await;
    edit(
        &s,
        &finished,
        Edit::Finish {
            claim: item_claim,
            finish: Finish::Done {
                outcome: Outcome::Response(Payload::pack(&())),
                progress: None,
            },
        },
    )
    .await
    .unwrap();
    let page = |claim: Claim| {
        Write::Bulk(Box::new(BulkPage {
            claim,
            action: BulkAction::Cancel,
            items: vec![queued.id, finished.id],
            tally: Tally {
                total: 2,
                matched: 2,
                cursor: Some(finished.id),
                ..Tally::default()
            },
        }))
    };
    // A stale attempt changes nothing.
    let stale = Claim {
        id: action.id,
        attempt: Attempt::new(held.attempt.get() + 1),
    };
    assert!(
        s.operations
            .one(page(stale), SystemTime::now())
            .await
            .is_err()
    );
    let still = s.operations.get(queued.id).await.unwrap().unwrap();
    assert_eq!(still.state, State::Queued);
    match s
        .operations
        .one(page(held), SystemTime::now())
        .await
        .unwrap()
    {
        Applied::Bulk { operation, changed } => {
            let tally = operation.bulk.as_deref().unwrap();
            assert_eq!((tally.matched, tally.changed, tally.skipped), (2, 1, 1));
            assert_eq!(tally.cursor, Some(finished.id));
            assert_eq!(changed.len(), 1);
            assert_eq!(changed[0].id, queued.id);
        }
        other => panic!("a bulk page answered {other:?}"),
    }
    let stored = s.operations.get(action.id).await.unwrap().unwrap();
    assert_eq!(stored.bulk.as_deref().unwrap().changed, 1);
    let cancelled = s.operations.get(queued.id).await.unwrap().unwrap();
    assert_eq!(cancelled.state, State::Cancelled);
    let kept = s.operations.get(finished.id).await.unwrap().unwrap();
    assert_eq!(kept.state, State::Succeeded);
}

/// counts are exact without reading the children again; the children are
/// listed through their own index, and the parent, among the open batches
/// until then, ends with its last child.
async fn a_batch_rolls_its_children_up_in_the_same_write(s: Stores) {
    let kind = "conformance.batch.child";
    let now = SystemTime::now();
    let batch = Operation::new_batch(
        Tenant::default_tenant(),
        Policy::WaitAll,
        0,
        false,
        None,
        now,
    );
    let parent = created(&s, batch).await;
    let counts = |op: &Operation, state| op.batch.as_ref().unwrap().count(state);
    let reread = || async { s.operations.get(parent.id).await.unwrap().unwrap() };
    let open = s.operations.open_batches(None, 100).await.unwrap();
    assert!(
        open.iter().any(|op| op.id == parent.id),
        "open while running"
    );
    for digest in 0..3 {
        let mut child = new_op(kind, None, digest);
        child.parent = Some(parent.id);
        created(&s, child).await;
    }
    let p = reread().await;
    assert_eq!(
        (p.batch.as_ref().unwrap().total, counts(&p, State::Queued)),
        (3, 3)
    );
    let claimed = s
        .operations
        .claim(&wants(&[(kind, 3)]), SystemTime::now())
        .await
        .unwrap()
        .operations;
    assert_eq!(claimed.len(), 3);
    let p = reread().await;
    assert_eq!(
        (counts(&p, State::Queued), counts(&p, State::Running)),
        (0, 3)
    );
    edit(&s, &p, Edit::Seal { complete: true }).await.unwrap();
    let filter = Filter::parse(&format!("parent = \"{}\"", parent.id.name())).unwrap();
    let page = s
        .operations
        .list(ListQuery {
            after: None,
            tenant: None,
            parent: Some(parent.id),
            filter: &filter,
            limit: 10,
            scan_budget: 100,
        })
        .await
        .unwrap();
    assert_eq!(page.operations.len(), 3);
    let boom = OperationError::new(Code::Internal, "BOOM", "boom");
    for (i, child) in claimed.iter().enumerate() {
        let outcome = if i == 0 {
            Outcome::Error(boom.clone())
        } else {
            ok()
        };
        finish(&s, Claim::of(child), done(outcome)).await.unwrap();
        let p = reread().await;
        assert_eq!(p.is_done(), i == 2, "the batch ends with its last child");
    }
    let p = reread().await;
    assert_eq!(p.state, State::Failed);
    assert_eq!(
        (counts(&p, State::Succeeded), counts(&p, State::Failed)),
        (2, 1)
    );
    let r = p.batch.as_ref().unwrap();
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].id, claimed[0].id);
    let open = s.operations.open_batches(None, 100).await.unwrap();
    assert!(open.iter().all(|op| op.id != parent.id), "done, not open");
}

macro_rules! conformance {
    ($backend:ident, $fixture:ty) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        let Some(fixture) = <$fixture>::fresh().await else {
                            return;
                        };
                        super::$name(fixture.open().await).await;
                    }
                };
            }

            macro_rules! case_with_reopen {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        let Some(fixture) = <$fixture>::fresh().await else {
                            return;
                        };
                        let stores = fixture.open().await;
                        super::$name(stores, async || fixture.open().await).await;
                    }
                };
            }

            case!(create_then_get);
            case!(several_are_read_at_once_in_the_order_asked);
            case!(request_ids_dedupe_and_conflict);
            case!(request_ids_are_per_tenant);
            case!(a_tenants_listing_sees_only_its_own);
            case!(claims_fence_stale_attempts);
            case!(retries_wait_for_their_time);
            case!(cancel_and_delete_follow_the_rules);
            case!(list_is_newest_first_filtered_and_bounded);
            case!(unfinished_and_orphans);
            case!(the_feed_announces_every_change);
            case!(expired_lists_what_ended_before_the_cutoff);
            case!(purge_deletes_done_operations_and_skips_the_rest);
            case!(transitions_fill_the_outbox);
            case!(saved_deliveries_move_through_the_due_index);
            case!(deleting_an_operation_drops_its_deliveries);
            case!(settled_values_are_written_once);
            case!(settled_values_are_listed_by_prefix);
            case!(the_queue_depth_counts_what_waits);
            case!(the_backlog_counts_unfinished_work_by_kind_and_state);
            case!(a_healthy_store_says_so_and_a_probe_keeps_it);
            case!(leases_are_renewed_by_their_holder_and_lapse);
            case_with_reopen!(a_running_operations_writes_keep_what_changed_meanwhile);
            case!(deliveries_are_taken_oldest_first_within_each_tenants_room);
            case!(orders_are_kept_by_month_in_order);
            case!(an_order_id_is_replaced_wherever_it_was);
            case!(the_order_limit_holds_whole_batches);
            case!(a_large_call_keeps_counts_and_the_last_of_each_order_id);
            case!(calls_of_one_tenant_at_once_share_its_limit);
            case!(each_tenants_orders_are_apart);
            case!(many_calls_with_moves_and_merges_read_as_a_plain_map_would);
            case!(a_batch_commits_what_it_can_and_refuses_the_rest);
            case!(claims_take_work_by_kind_with_tenants_in_turn);
            case!(a_claim_for_one_tenant_takes_only_its_work);
            case!(claims_take_the_higher_priority_first);
            case!(a_rate_limit_starts_work_as_its_bucket_fills);
            case!(queued_work_past_its_expire_time_ends_without_running);
            case_with_reopen!(limits_hold_claims_back_until_slots_come_back);
            case!(claims_wait_for_retries_to_come_due);
            case!(a_leased_claim_records_and_drops_its_lease);
            case!(claims_and_cancels_leave_the_queue_consistent);
            case_with_reopen!(the_queue_is_rebuilt_at_open);
            case_with_reopen!(a_paused_kind_is_claimed_by_nobody_until_resumed);
            case_with_reopen!(flush_makes_lazy_writes_durable);
            case_with_reopen!(survives_reopen);
            case!(files_appear_whole_when_finished_and_replace_whole);
            case!(an_abandoned_file_leaves_nothing_visible);
            case!(file_names_are_checked);
            case_with_reopen!(files_survive_reopen);
            case!(schedules_are_stored_by_tenant_and_written_by_revision);
            case!(due_schedules_are_taken_once_until_their_hold_ends);
            case!(a_batch_rolls_its_children_up_in_the_same_write);
            case!(a_bulk_page_changes_its_items_and_its_tally_together);
        }
    };
}

/// A sled backend in a temporary directory.
struct SledFixture(tempfile::TempDir);

impl SledFixture {
    async fn fresh() -> Option<Self> {
        Some(Self(tempfile::tempdir().unwrap()))
    }

    /// Opens the store (again, right after a close: `reopen_sled`).
    async fn open(&self) -> Stores {
        Stores::from_backend(crate::common::reopen_sled(self.0.path()).await)
    }
}

/// A PostgreSQL backend in a throwaway database.
struct PgFixture(crate::pg::TestDb);

impl PgFixture {
    async fn fresh() -> Option<Self> {
        crate::pg::TestDb::create().await.map(Self)
    }

    async fn open(&self) -> Stores {
        let config = longrun::store::postgres::PgConfig::new(self.0.url.clone());
        Stores::from_backend(longrun::store::PgStore::open(&config).await.unwrap())
    }
}

conformance!(sled, SledFixture);
conformance!(postgres, PgFixture);
