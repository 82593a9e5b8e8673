//! Backoff, deadlines and retention at their real, default lengths, with
//! tokio's clock paused: the engine runs over a real sled store, its clock
//! follows tokio's timer, and time jumps ahead whenever everything waits.
//! Nothing here is shortened to make it fast, and nothing sleeps for real.

use std::time::Duration;

use longrun::diagnostics::SleepTask;
use longrun::engine::{Clock, Engine, EngineConfig, EngineError, Registry, SubmitOptions, Task};
use longrun::model::{Code, Operation, Outcome, RequestId, Scope, State};
use longrun::pb::longrun::v1::SleepRequest;
use longrun::store::{SledStore, Stores, SyncMode};

/// An engine over a fresh sled store, with the default Sleep policy unless
/// `tweak` says otherwise.
struct Paused {
    engine: Engine,
    _dir: tempfile::TempDir,
}

impl Paused {
    async fn start(
        tweak: impl FnOnce(&mut EngineConfig, &mut longrun::engine::TaskPolicy),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::from_backend(SledStore::open(dir.path(), SyncMode::Always).unwrap());
        let mut config = EngineConfig {
            clock: Clock::following_tokio(),
            ..EngineConfig::default()
        };
        let mut policy = SleepTask.policy();
        tweak(&mut config, &mut policy);
        let mut registry = Registry::new();
        registry.register_with(SleepTask, policy);
        let engine = Engine::open(&stores, registry, config).await.unwrap();
        engine.start().await.unwrap();
        Self { engine, _dir: dir }
    }

    async fn sleep(&self, request: SleepRequest) -> Operation {
        self.sleep_with(request, SubmitOptions::default()).await
    }

    async fn sleep_with(&self, request: SleepRequest, options: SubmitOptions) -> Operation {
        self.engine
            .submit::<SleepTask>(&request, options)
            .await
            .unwrap()
    }

    /// Waits, in virtual time, until the operation is done.
    async fn done(&self, op: &Operation) -> Operation {
        let done = self
            .engine
            .wait(&Scope::All, op.id, Duration::from_secs(365 * 24 * 3600))
            .await
            .unwrap();
        assert!(done.is_done(), "{done:?}");
        done
    }

    /// Waits, in virtual time, until the retention sweeper removed it.
    async fn gone(&self, op: &Operation) {
        let mut sub = self.engine.subscribe(&Scope::All, op.id).await.unwrap();
        while !matches!(sub.current(), longrun::engine::Snapshot::Gone) {
            sub.changed().await;
        }
    }
}

fn sleep(duration: Duration) -> SleepRequest {
    SleepRequest {
        duration: Some(prost_types::Duration {
            seconds: duration.as_secs() as i64,
            nanos: duration.subsec_nanos() as i32,
        }),
        steps: 1,
        ..SleepRequest::default()
    }
}

fn took(op: &Operation) -> Duration {
    op.end_time.unwrap().duration_since(op.create_time).unwrap()
}

fn error(op: &Operation) -> &longrun::model::OperationError {
    match &op.outcome {
        Some(Outcome::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_after_a_backoff() {
    // The default policy: 3 attempts, backoff from 1 s, full jitter.
    let paused = Paused::start(|_, _| {}).await;
    let op = paused
        .sleep(SleepRequest {
            fail_attempts: 2,
            ..sleep(Duration::ZERO)
        })
        .await;
    let done = paused.done(&op).await;
    assert_eq!(done.state, State::Succeeded);
    assert_eq!(done.attempt.get(), 3);
    let last = done
        .last_error
        .as_ref()
        .expect("the failure that was retried");
    assert_eq!(last.code, Code::Unavailable);
    // The timeline keeps both failed attempts, in order, with their times.
    let failed: Vec<u32> = done
        .failed_attempts
        .iter()
        .map(|a| a.attempt.get())
        .collect();
    assert_eq!(failed, [1, 2]);
    for a in &done.failed_attempts {
        assert_eq!(a.error.code, Code::Unavailable);
        assert!(a.start_time.is_some_and(|s| s <= a.end_time));
    }
    // And it survives the store: read back, it is the same.
    let stored = paused.engine.get(&Scope::All, op.id).await.unwrap();
    assert_eq!(stored.failed_attempts, done.failed_attempts);
    // Two waits, each at most its bound of 1 s, then 2 s.
    assert!(took(&done) <= Duration::from_secs(3), "{:?}", took(&done));
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_out_its_backoff_before_it_runs_again() {
    // A floor on the jitter: every retry waits exactly its bound.
    let paused = Paused::start(|_, policy| {
        policy.backoff_base = Duration::from_secs(60);
        policy.backoff_max = Duration::from_secs(60);
    })
    .await;
    let op = paused
        .sleep(SleepRequest {
            fail_attempts: 1,
            ..sleep(Duration::ZERO)
        })
        .await;
    // After the first failure it is queued again, not before its time.
    let mut sub = paused.engine.subscribe(&Scope::All, op.id).await.unwrap();
    let waiting = loop {
        if let longrun::engine::Snapshot::Present(op) = sub.current()
            && op.state == State::Queued
            && op.attempt.get() == 1
        {
            break op;
        }
        sub.changed().await;
    };
    let not_before = waiting.not_before.expect("a retry time");
    let done = paused.done(&op).await;
    assert_eq!(done.attempt.get(), 2);
    assert!(done.start_time.unwrap() >= not_before);
    assert!(not_before.duration_since(waiting.update_time).unwrap() <= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_the_last_attempt() {
    let paused = Paused::start(|_, _| {}).await;
    let op = paused
        .sleep(SleepRequest {
            fail_attempts: 10,
            ..sleep(Duration::ZERO)
        })
        .await;
    let done = paused.done(&op).await;
    assert_eq!(done.state, State::Failed);
    assert_eq!(done.attempt.get(), 3);
    let e = error(&done);
    assert_eq!(e.code, Code::Unavailable);
    assert!(e.message.contains("gave up after 3 attempts"), "{e:?}");
    assert_eq!(e.metadata.get("attempts").map(String::as_str), Some("3"));
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_not_retried() {
    let paused = Paused::start(|_, _| {}).await;
    let op = paused
        .sleep(SleepRequest {
            fail_code: Code::InvalidArgument.as_i32(),
            ..sleep(Duration::ZERO)
        })
        .await;
    let done = paused.done(&op).await;
    assert_eq!(done.attempt.get(), 1);
    assert_eq!(error(&done).code, Code::InvalidArgument);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_past_its_deadline_ends_deadline_exceeded() {
    let paused = Paused::start(|_, policy| policy.timeout = Duration::from_secs(3600)).await;
    let with_timeout = |timeout| SubmitOptions {
        timeout: Some(timeout),
        ..SubmitOptions::default()
    };
    let three_hours = sleep(Duration::from_secs(3 * 3600));
    // A shorter timeout in the request wins.
    let op = paused
        .sleep_with(three_hours.clone(), with_timeout(Duration::from_secs(600)))
        .await;
    let done = paused.done(&op).await;
    assert_eq!(done.state, State::Failed);
    assert_eq!(error(&done).code, Code::DeadlineExceeded);
    let ran = done
        .end_time
        .unwrap()
        .duration_since(done.start_time.unwrap())
        .unwrap();
    assert!(
        (Duration::from_secs(600)..Duration::from_secs(601)).contains(&ran),
        "{ran:?}"
    );

    // A longer one is capped by the kind's.
    let op = paused
        .sleep_with(three_hours, with_timeout(Duration::from_secs(24 * 3600)))
        .await;
    let done = paused.done(&op).await;
    assert_eq!(error(&done).code, Code::DeadlineExceeded);
    let ran = done
        .end_time
        .unwrap()
        .duration_since(done.start_time.unwrap())
        .unwrap();
    assert!(
        (Duration::from_secs(3600)..Duration::from_secs(3601)).contains(&ran),
        "{ran:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn done_operations_expire_after_the_retention() {
    let retention = Duration::from_secs(24 * 3600);
    let paused = Paused::start(|config, _| config.retention = retention).await;
    let request_id: RequestId = "3b1f4f0e-5d57-4a8b-9c1e-0e6a3c2b7d11".parse().unwrap();
    let request = sleep(Duration::ZERO);
    let submit = || {
        paused.engine.submit::<SleepTask>(
            &request,
            SubmitOptions {
                request_id: Some(request_id),
                ..SubmitOptions::default()
            },
        )
    };
    let op = submit().await.unwrap();
    let done = paused.done(&op).await;
    let ended = done.end_time.unwrap();
    paused.gone(&op).await;
    assert!(matches!(
        paused.engine.get(&Scope::All, op.id).await,
        Err(EngineError::NotFound { .. })
    ));
    // Its request_id went with it: the same request makes a new operation.
    let again = submit().await.unwrap();
    assert_ne!(again.id, op.id);
    // Not before its time, and not much after (the sweeper runs every 30 s).
    let kept = again.create_time.duration_since(ended).unwrap();
    assert!(
        kept >= retention && kept <= retention + Duration::from_secs(31),
        "{kept:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn running_operations_never_expire() {
    let retention = Duration::from_secs(3600);
    let paused = Paused::start(|config, _| config.retention = retention).await;
    let long = paused.sleep(sleep(Duration::from_secs(4 * 3600))).await;
    // A short operation started after it expires first, which shows the
    // sweeper has run while the long one was still going.
    let short = paused.sleep(sleep(Duration::ZERO)).await;
    paused.gone(&short).await;
    let still = paused.engine.get(&Scope::All, long.id).await.unwrap();
    assert_eq!(still.state, State::Running);
    let done = paused.done(&long).await;
    assert_eq!(done.state, State::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_wait_returns_the_latest_state_at_its_timeout() {
    let paused = Paused::start(|_, _| {}).await;
    let op = paused.sleep(sleep(Duration::from_secs(3600))).await;
    let started = tokio::time::Instant::now();
    let latest = paused
        .engine
        .wait(&Scope::All, op.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(latest.state, State::Running);
    // A wait that outlasts the operation returns when it is done.
    let done = paused
        .engine
        .wait(&Scope::All, op.id, Duration::from_secs(7200))
        .await
        .unwrap();
    assert_eq!(done.state, State::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(3600 + 30 + 1));
}

/// Waits until `op` has reported at least `percent`.
async fn progressed(paused: &Paused, op: &Operation, percent: u32) -> Operation {
    let mut sub = paused.engine.subscribe(&Scope::All, op.id).await.unwrap();
    loop {
        if let longrun::engine::Snapshot::Present(now) = sub.current()
            && now.progress_percent >= percent
        {
            return Operation::clone(&now);
        }
        sub.changed().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_estimate_follows_the_known_length_then_progress() {
    let paused = Paused::start(|_, _| {}).await;
    let clock = Clock::following_tokio();
    let ten_seconds = SleepRequest {
        steps: 10,
        ..sleep(Duration::from_secs(10))
    };
    // Nothing is known of the kind yet, but a sleep knows its length.
    let first = paused.sleep(ten_seconds.clone()).await;
    assert_eq!(first.expected_run, Some(Duration::from_secs(10)));
    let estimate = first.estimated_end(clock.now()).expect("an estimate");
    assert!(estimate >= first.create_time + Duration::from_secs(10));
    assert!(estimate <= first.create_time + Duration::from_millis(10_100));

    // After the first progress step (10 % after 1 s), the estimate is the
    // operation's own rate: its start plus 10 s, within 5 %.
    let stepped = progressed(&paused, &first, 10).await;
    let started = stepped.start_time.expect("running");
    let estimate = stepped.estimated_end(clock.now()).expect("an estimate");
    let expected = started + Duration::from_secs(10);
    let off = estimate
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(off <= Duration::from_millis(500), "off by {off:?}");

    // Done: the estimate is when it ended.
    let done = paused.done(&first).await;
    assert_eq!(done.estimated_end(clock.now()), done.end_time);

    // However short the kind's recent runs were, a long sleep is
    // estimated by its own length, not by their median.
    for _ in 0..3 {
        let quick = paused.sleep(sleep(Duration::ZERO)).await;
        paused.done(&quick).await;
    }
    let long = paused.sleep(sleep(Duration::from_secs(600))).await;
    assert_eq!(long.expected_run, Some(Duration::from_secs(600)));
    let estimate = long
        .estimated_end(clock.now())
        .expect("an estimate while queued");
    assert!(estimate >= long.create_time + Duration::from_secs(600));
    assert!(estimate <= long.create_time + Duration::from_secs(601));
    paused.done(&long).await;
}

// Schedules, in paused time: the scheduler's clock is tokio's, so a run
// longer than the interval and a ten-minute stop take no real time.

mod schedules {
    use std::time::{Duration, SystemTime};

    use longrun::engine::schedules::ScheduleDraft;
    use longrun::engine::{Clock, Engine, EngineConfig, Registry, Task};
    use longrun::model::{Operation, Overlap, Payload, RunTemplate, Scope, State, Tenant, When};
    use longrun::store::{SledStore, Stores, SyncMode};

    use super::{SleepTask, sleep};

    const MINUTE: Duration = Duration::from_secs(60);

    async fn engine(stores: &Stores, clock: &Clock) -> Engine {
        let config = EngineConfig {
            clock: *clock,
            ..EngineConfig::default()
        };
        let mut registry = Registry::new();
        registry.register(SleepTask);
        let engine = Engine::open(stores, registry, config).await.unwrap();
        engine.start().await.unwrap();
        engine
    }

    fn every_minute(run: Duration, overlap: Overlap, window: Duration) -> ScheduleDraft {
        ScheduleDraft {
            kind: SleepTask::KIND.into(),
            payload: Payload::pack(&sleep(run)),
            run: RunTemplate::default(),
            when: When::every(MINUTE).unwrap(),
            jitter: Duration::ZERO,
            overlap,
            catch_up_window: Some(window),
            catch_up_latest_only: false,
        }
    }

    /// The runs of schedule `id`, oldest tick first.
    async fn runs(engine: &Engine, id: &str) -> Vec<Operation> {
        let mut runs = engine
            .list(
                &Scope::All,
                &format!("schedule = \"schedules/{id}\""),
                500,
                "",
            )
            .await
            .unwrap()
            .operations;
        runs.sort_by_key(|op| op.schedule.as_ref().unwrap().tick);
        runs
    }

    fn tick(op: &Operation) -> SystemTime {
        op.schedule.as_ref().unwrap().tick
    }

    /// Creates a schedule, lets its first ten ticks pass, and returns its
    /// runs.
    async fn ten_minutes_of(overlap: Overlap, run: Duration) -> Vec<Operation> {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::from_backend(SledStore::open(dir.path(), SyncMode::Always).unwrap());
        let clock = Clock::following_tokio();
        let engine = engine(&stores, &clock).await;
        let draft = every_minute(run, overlap, Duration::from_secs(3600));
        let created = engine
            .create_schedule(&Tenant::default_tenant(), "s", draft)
            .await
            .unwrap();
        // Ten ticks: the first, and nine more.
        let first = created.next_tick.unwrap();
        tokio::time::sleep(clock.until(first) + 9 * MINUTE + MINUTE / 2).await;
        let runs = runs(&engine, "s").await;
        engine.shutdown().await;
        runs
    }

    #[tokio::test(start_paused = true)]
    async fn skip_makes_no_run_while_the_last_one_goes() {
        // Runs of 150 s on a one-minute clock: a tick finds the last run
        // going twice, then it has ended.
        let runs = ten_minutes_of(Overlap::Skip, Duration::from_secs(150)).await;
        let ticks: Vec<SystemTime> = runs.iter().map(tick).collect();
        assert_eq!(ticks.len(), 4, "{ticks:?}");
        for pair in ticks.windows(2) {
            assert_eq!(pair[1].duration_since(pair[0]).unwrap(), 3 * MINUTE);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn allow_all_runs_every_tick_beside_the_last() {
        let runs = ten_minutes_of(Overlap::AllowAll, Duration::from_secs(150)).await;
        assert_eq!(runs.len(), 10);
        let running = runs.iter().filter(|op| op.state == State::Running).count();
        assert!(running >= 2, "runs overlap: {running} running at once");
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_previous_cancels_the_last_run_for_the_new_one() {
        let runs = ten_minutes_of(Overlap::CancelPrevious, Duration::from_secs(150)).await;
        assert_eq!(runs.len(), 10);
        for op in &runs[..9] {
            assert_eq!(op.state, State::Cancelled, "{:?}", tick(op));
        }
        assert_ne!(runs[9].state, State::Cancelled);
    }

    #[tokio::test(start_paused = true)]
    async fn buffer_one_runs_one_waiting_tick_after_the_last_run_ends() {
        // Runs of 130 s: the tick after a run starts waits for its end, the
        // one after that is dropped.
        let runs = ten_minutes_of(Overlap::BufferOne, Duration::from_secs(130)).await;
        let ticks: Vec<u64> = runs
            .iter()
            .map(|op| tick(op).duration_since(tick(&runs[0])).unwrap().as_secs())
            .collect();
        assert_eq!(ticks, vec![0, 60, 180, 300, 420], "{ticks:?}");
        for pair in runs.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            if let (Some(end), Some(start)) = (before.end_time, after.start_time) {
                assert!(
                    start >= end,
                    "{:?} started before {:?} ended",
                    tick(after),
                    tick(before)
                );
            }
        }
        assert!(
            runs[1].start_time.unwrap() > tick(&runs[1]) + MINUTE,
            "the buffered run waited"
        );
    }

    /// A schedule whose node stops for ten minutes, then starts again.
    async fn after_a_ten_minute_stop(window: Duration, latest_only: bool) -> Vec<Operation> {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::from_backend(SledStore::open(dir.path(), SyncMode::Always).unwrap());
        // One clock for both: a stopped node's time passes too.
        let clock = Clock::following_tokio();
        // Begin just past a minute's turn, so that the stop holds exactly
        // ten ticks wherever within a minute the test happens to start.
        let into = clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60;
        tokio::time::sleep(Duration::from_secs(61 - into)).await;
        let first = engine(&stores, &clock).await;
        let mut draft = every_minute(Duration::from_secs(1), Overlap::AllowAll, window);
        draft.catch_up_latest_only = latest_only;
        first
            .create_schedule(&Tenant::default_tenant(), "s", draft)
            .await
            .unwrap();
        tokio::time::sleep(2 * MINUTE).await;
        assert_eq!(runs(&first, "s").await.len(), 2);
        first.shutdown().await;
        tokio::time::sleep(10 * MINUTE).await;
        let second = engine(&stores, &clock).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let runs = runs(&second, "s").await;
        second.shutdown().await;
        runs
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_missed_within_the_window_run_once_each_after_a_stop() {
        let runs = after_a_ten_minute_stop(15 * MINUTE, false).await;
        // Two before the stop, ten missed during it, each once.
        assert_eq!(
            runs.len(),
            12,
            "{:?}",
            runs.iter().map(tick).collect::<Vec<_>>()
        );
        let ticks: std::collections::BTreeSet<SystemTime> = runs.iter().map(tick).collect();
        assert_eq!(ticks.len(), 12);
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_missed_beyond_the_window_are_skipped() {
        let runs = after_a_ten_minute_stop(5 * MINUTE, false).await;
        // Two before the stop; of the ten missed, those of the last five
        // minutes (both ends in the window).
        let caught_up = runs.len() - 2;
        assert!((5..=6).contains(&caught_up), "{caught_up} caught up");
        let latest = after_a_ten_minute_stop(15 * MINUTE, true).await;
        assert_eq!(latest.len(), 3, "only the latest missed tick runs");
    }
}
