//! Schedules as callers see them: created, read, changed, paused and
//! deleted within a tenant, run now, and backfilled tick by tick. Every
//! run, whoever makes it, is made by [`Engine::make_run`], whose request_id
//! is the tick's own, so a tick has one run however often it is asked for.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::{Engine, EngineError, Inner, SubmitOptions};
use crate::model::operation::ScheduleTick;
use crate::model::schedule::{self, DEFAULT_CATCH_UP, MAX_CATCH_UP};
use crate::model::{
    Operation, OperationId, Overlap, Payload, Reason, RequestId, RunSpec, RunTemplate, Schedule,
    ScheduleRun, Scope, State, Tenant, When,
};
use crate::store::{Expect, PutSchedule};

/// How many schedules a tenant may have by default.
pub const DEFAULT_MAX_SCHEDULES: u64 = 10_000;

/// The most ticks one backfill runs.
pub const MAX_BACKFILL_TICKS: usize = 10_000;

/// The largest request a schedule keeps for its runs, in bytes: every
/// schedule holds one, so it is kept small.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The longest jitter, start delay or ttl of a schedule's runs.
const MAX_OFFSET: Duration = Duration::from_secs(30 * 24 * 3600);

/// How many times a change is tried again when another writer got in
/// first.
const WRITE_TRIES: usize = 16;

/// A schedule's settings, as a create or an update gives them.
#[derive(Clone, Debug)]
pub struct ScheduleDraft {
    pub kind: String,
    pub payload: Payload,
    pub run: RunTemplate,
    pub when: When,
    pub jitter: Duration,
    pub overlap: Overlap,
    /// [`DEFAULT_CATCH_UP`] when None.
    pub catch_up_window: Option<Duration>,
    pub catch_up_latest_only: bool,
}

/// A setting an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleField {
    Kind,
    Payload,
    /// Priority, concurrency key, start delay and ttl.
    Run,
    Timeout,
    MaxAttempts,
    Notification,
    /// The clock: cron, time zone or interval.
    When,
    Jitter,
    Overlap,
    CatchUpWindow,
    CatchUpLatestOnly,
}

impl ScheduleField {
    /// Every field, for an update without a mask.
    pub const ALL: [ScheduleField; 11] = [
        ScheduleField::Kind,
        ScheduleField::Payload,
        ScheduleField::Run,
        ScheduleField::Timeout,
        ScheduleField::MaxAttempts,
        ScheduleField::Notification,
        ScheduleField::When,
        ScheduleField::Jitter,
        ScheduleField::Overlap,
        ScheduleField::CatchUpWindow,
        ScheduleField::CatchUpLatestOnly,
    ];
}

/// A page of schedules, and where the next one starts.
pub struct SchedulePage {
    pub schedules: Vec<Schedule>,
    pub next_page_token: String,
}

/// A handle on the engine that does not keep it alive, for the kinds an
/// engine's own registry holds (a backfill makes runs through it).
#[derive(Clone, Default)]
pub struct WeakEngine(Arc<std::sync::OnceLock<Weak<Inner>>>);

impl WeakEngine {
    /// A handle to be pointed at an engine once it is open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Points the handle at `engine`.
    pub fn set(&self, engine: &Engine) {
        let _ = self.0.set(Arc::downgrade(&engine.inner));
    }

    /// The engine, while it is open.
    pub fn get(&self) -> Option<Engine> {
        self.0
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| Engine { inner })
    }
}

fn not_found(id: &str) -> EngineError {
    EngineError::NotFound {
        name: format!("schedules/{id}"),
    }
}

impl Engine {
    /// Creates a schedule in `tenant`; its clock starts from now.
    pub async fn create_schedule(
        &self,
        tenant: &Tenant,
        id: &str,
        draft: ScheduleDraft,
    ) -> Result<Schedule, EngineError> {
        schedule::check_id(id).map_err(|e| EngineError::invalid("schedule_id", e))?;
        let draft = self.check_draft(tenant, draft).await?;
        let now = self.inner.clock.now();
        let mut s = Schedule::new(
            tenant.clone(),
            id,
            draft.kind,
            draft.payload,
            draft.when,
            now,
        );
        s.run = draft.run;
        s.jitter = draft.jitter;
        s.overlap = draft.overlap;
        s.catch_up_window = draft.catch_up_window.unwrap_or(DEFAULT_CATCH_UP);
        s.catch_up_latest_only = draft.catch_up_latest_only;
        let expect = Expect::Absent {
            max_per_tenant: self.inner.config.max_schedules,
        };
        match self.inner.schedules.put_schedule(&s, expect, true).await? {
            PutSchedule::Stored(stored) => {
                self.inner.schedule_changed.notify_one();
                Ok(*stored)
            }
            PutSchedule::Exists => Err(EngineError::AlreadyExists {
                reason: Reason::ScheduleExists,
                message: format!("schedules/{id} exists already"),
            }),
            PutSchedule::OverLimit => Err(EngineError::ResourceExhausted {
                reason: Reason::TooManySchedules,
                message: format!(
                    "the tenant has {} schedules, as many as it may; delete one first",
                    self.inner.config.max_schedules
                ),
                retry_after: Duration::from_secs(60),
            }),
            PutSchedule::Stale | PutSchedule::Missing => Err(EngineError::Store(
                crate::store::StoreError::Backend("a create found a revision".into()),
            )),
        }
    }

    /// One schedule of `tenant`.
    pub async fn schedule(&self, tenant: &Tenant, id: &str) -> Result<Schedule, EngineError> {
        schedule::check_id(id).map_err(|e| EngineError::invalid("name", e))?;
        self.inner
            .schedules
            .get_schedule(tenant, id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// A page of `tenant`'s schedules, by id.
    pub async fn schedules(
        &self,
        tenant: &Tenant,
        page_size: i32,
        page_token: &str,
    ) -> Result<SchedulePage, EngineError> {
        let limit = page_limit(page_size)?;
        let after = match page_token {
            "" => None,
            token => {
                schedule::check_id(token).map_err(|_| {
                    EngineError::invalid("page_token", "not a page token of ListSchedules")
                })?;
                Some(token)
            }
        };
        let schedules = self
            .inner
            .schedules
            .list_schedules(tenant, after, limit)
            .await?;
        let next_page_token = match schedules.last() {
            Some(last) if schedules.len() == limit => last.id.clone(),
            _ => String::new(),
        };
        Ok(SchedulePage {
            schedules,
            next_page_token,
        })
    }

    /// Changes the named settings of a schedule to the draft's; with an
    /// etag, only if the schedule is still at that revision. A new clock
    /// starts from now.
    pub async fn update_schedule(
        &self,
        tenant: &Tenant,
        id: &str,
        draft: ScheduleDraft,
        fields: &[ScheduleField],
        etag: Option<u64>,
    ) -> Result<Schedule, EngineError> {
        let draft = self.check_draft(tenant, draft).await?;
        let now = self.inner.clock.now();
        self.change_schedule(tenant, id, etag, |s| {
            for field in fields {
                match field {
                    ScheduleField::Kind => s.kind.clone_from(&draft.kind),
                    ScheduleField::Payload => s.payload = draft.payload.clone(),
                    ScheduleField::Run => {
                        s.run.priority = draft.run.priority;
                        s.run.concurrency_key.clone_from(&draft.run.concurrency_key);
                        s.run.start_delay = draft.run.start_delay;
                        s.run.ttl = draft.run.ttl;
                    }
                    ScheduleField::Timeout => s.run.timeout = draft.run.timeout,
                    ScheduleField::MaxAttempts => s.run.max_attempts = draft.run.max_attempts,
                    ScheduleField::Notification => {
                        s.run.notification.clone_from(&draft.run.notification)
                    }
                    ScheduleField::When => {
                        if s.when != draft.when {
                            s.when = draft.when.clone();
                            s.restart_clock(now);
                        }
                    }
                    ScheduleField::Jitter => s.jitter = draft.jitter,
                    ScheduleField::Overlap => s.overlap = draft.overlap,
                    ScheduleField::CatchUpWindow => {
                        s.catch_up_window = draft.catch_up_window.unwrap_or(DEFAULT_CATCH_UP)
                    }
                    ScheduleField::CatchUpLatestOnly => {
                        s.catch_up_latest_only = draft.catch_up_latest_only
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Pauses a schedule, or resumes it from its next tick after now.
    pub async fn pause_schedule(
        &self,
        tenant: &Tenant,
        id: &str,
        paused: bool,
    ) -> Result<Schedule, EngineError> {
        let now = self.inner.clock.now();
        self.change_schedule(tenant, id, None, |s| {
            if s.paused && !paused {
                s.restart_clock(now);
            }
            s.paused = paused;
            Ok(())
        })
        .await
    }

    /// Deletes a schedule; its runs stay.
    pub async fn delete_schedule(&self, tenant: &Tenant, id: &str) -> Result<(), EngineError> {
        schedule::check_id(id).map_err(|e| EngineError::invalid("name", e))?;
        if self.inner.schedules.delete_schedule(tenant, id).await? {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// Makes a run of the schedule now, whatever its overlap policy.
    pub async fn run_schedule_now(
        &self,
        tenant: &Tenant,
        id: &str,
        request_id: Option<RequestId>,
    ) -> Result<Operation, EngineError> {
        let s = self.schedule(tenant, id).await?;
        let now = self.inner.clock.now();
        let (op, _) = self.make_run(&s, now, request_id).await?.ok_or_else(|| {
            EngineError::invalid("run.ttl", "the run would expire before it starts")
        })?;
        let run = ScheduleRun {
            operation: op.id,
            tick: now,
        };
        self.change_schedule(tenant, id, None, |s| {
            s.record_run(run);
            Ok(())
        })
        .await?;
        Ok(op)
    }

    /// The states of each schedule's runs (None for one that is gone), for
    /// a whole page of schedules in one read of the store.
    pub async fn run_states(&self, schedules: &[&[ScheduleRun]]) -> Vec<Vec<Option<State>>> {
        let ids: Vec<_> = schedules
            .iter()
            .flat_map(|runs| runs.iter().map(|run| run.operation))
            .collect();
        // A store that cannot answer leaves the states blank, as for runs
        // that are gone: the schedules themselves are still shown.
        let found = self.inner.ops.get_many(&ids).await.unwrap_or_default();
        let mut states = found.into_iter().map(|op| op.map(|op| op.state));
        schedules
            .iter()
            .map(|runs| runs.iter().map(|_| states.next().flatten()).collect())
            .collect()
    }

    /// The ticks of `[from, to)` a backfill runs, checked: a range in the
    /// past, of at most [`MAX_BACKFILL_TICKS`] ticks.
    pub async fn backfill_ticks(
        &self,
        tenant: &Tenant,
        id: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<SystemTime>, EngineError> {
        if to <= from {
            return Err(EngineError::invalid(
                "end_time",
                "the end time must come after the start time",
            ));
        }
        if to > self.inner.clock.now() + super::admission::START_TIME_SLACK {
            return Err(EngineError::invalid(
                "end_time",
                "a backfill runs past ticks: the end time may not be in the future",
            ));
        }
        let s = self.schedule(tenant, id).await?;
        let mut ticks = Vec::new();
        let mut at = from.checked_sub(Duration::from_micros(1)).unwrap_or(from);
        while let Some(tick) = s.when.next_after(at).filter(|t| *t < to) {
            if ticks.len() == MAX_BACKFILL_TICKS {
                return Err(EngineError::invalid(
                    "start_time",
                    format!(
                        "the range has more than {MAX_BACKFILL_TICKS} ticks; backfill it in parts"
                    ),
                ));
            }
            ticks.push(tick);
            at = tick;
        }
        Ok(ticks)
    }

    /// Makes the run of one past tick unless it has one; true when it
    /// made it. (Backfilled runs are listed with the schedule's runs, but
    /// not remembered as its last ones: they are old ticks.)
    pub async fn backfill_tick(
        &self,
        tenant: &Tenant,
        id: &str,
        tick: SystemTime,
    ) -> Result<bool, EngineError> {
        let s = self.schedule(tenant, id).await?;
        Ok(matches!(
            self.make_run(&s, tick, None).await?,
            Some((_, true))
        ))
    }

    /// Makes the run of `tick`: with the tick's own request_id unless
    /// one is given, starting at the tick plus its offset, expiring its
    /// ttl after that. None when it would have expired already. The bool
    /// says whether the run is new.
    pub(super) async fn make_run(
        &self,
        s: &Schedule,
        tick: SystemTime,
        request_id: Option<RequestId>,
    ) -> Result<Option<(Operation, bool)>, EngineError> {
        // An outside kind's declaration may not be loaded on this node yet
        // (a restart, say): find it before the create looks for it.
        if self.inner.kind(&s.tenant, &s.kind).is_none() {
            self.find_outside_kind(&s.tenant, &s.kind).await?;
        }
        let now = self.inner.clock.now();
        let start = tick + s.start_offset(tick);
        let expire_at = s.run.ttl.map(|ttl| start + ttl);
        if expire_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        let options = SubmitOptions {
            tenant: s.tenant.clone(),
            request_id: Some(request_id.unwrap_or_else(|| s.tick_request_id(tick))),
            timeout: s.run.timeout,
            notification: s.run.notification.clone(),
            max_attempts: s.run.max_attempts,
            fingerprint: None,
            run: RunSpec {
                priority: s.run.priority,
                concurrency_key: s.run.concurrency_key.clone(),
                start_at: Some(start).filter(|at| *at > now),
                expire_at,
            },
            schedule: Some(ScheduleTick {
                id: s.id.clone(),
                tick,
            }),
            parent: None,
            // A tick starts a trace of its own.
            trace: None,
        };
        match self.create(&s.kind, s.payload.clone(), options).await {
            Ok(made) => Ok(Some(made)),
            // The tick's run exists, made from the schedule as it was.
            Err(EngineError::AlreadyExists {
                reason: Reason::RequestIdConflict,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether an operation is still going (queued or running).
    pub(super) async fn still_going(&self, id: OperationId) -> Result<bool, EngineError> {
        Ok(self
            .inner
            .ops
            .get(id)
            .await?
            .is_some_and(|op| !op.state.is_terminal()))
    }

    /// Cancels a run, if it is still going.
    pub(super) async fn cancel_run(&self, id: OperationId) {
        let _ = self.cancel(&Scope::All, id).await;
    }

    /// Reads, changes and writes a schedule, again while another writer
    /// gets in first; with an etag, refuses a schedule past it.
    async fn change_schedule(
        &self,
        tenant: &Tenant,
        id: &str,
        etag: Option<u64>,
        change: impl Fn(&mut Schedule) -> Result<(), EngineError>,
    ) -> Result<Schedule, EngineError> {
        for _ in 0..WRITE_TRIES {
            let mut s = self.schedule(tenant, id).await?;
            if let Some(etag) = etag.filter(|e| *e != s.revision) {
                return Err(EngineError::Aborted {
                    reason: Reason::EtagMismatch,
                    message: format!("schedules/{id} changed since etag \"{etag}\"; read it again"),
                });
            }
            change(&mut s)?;
            s.update_time = self.inner.clock.now();
            match self
                .inner
                .schedules
                .put_schedule(&s, Expect::Revision(s.revision), true)
                .await?
            {
                PutSchedule::Stored(stored) => {
                    self.inner.schedule_changed.notify_one();
                    return Ok(*stored);
                }
                PutSchedule::Missing => return Err(not_found(id)),
                _ => continue,
            }
        }
        Err(EngineError::Aborted {
            reason: Reason::EtagMismatch,
            message: format!("schedules/{id} kept changing; try again"),
        })
    }

    /// Checks a draft against what the tenant may run: the kind, its
    /// request, the run settings and the webhook.
    async fn check_draft(
        &self,
        tenant: &Tenant,
        mut draft: ScheduleDraft,
    ) -> Result<ScheduleDraft, EngineError> {
        if let Some(full) = self.inner.registry.resolve(&draft.kind) {
            draft.kind = full.to_owned();
        }
        let kind = match self.inner.kind(tenant, &draft.kind) {
            Some(kind) => Some(kind),
            None if self.find_outside_kind(tenant, &draft.kind).await? => {
                self.inner.kind(tenant, &draft.kind)
            }
            None => None,
        };
        let Some(kind) = kind else {
            return Err(EngineError::invalid(
                "kind",
                format!("no kind {:?} is registered or declared", draft.kind),
            ));
        };
        if draft.payload.value.len() > MAX_PAYLOAD {
            return Err(EngineError::invalid(
                "payload",
                format!(
                    "a schedule's request is at most {} KiB; keep large inputs elsewhere and name them",
                    MAX_PAYLOAD / 1024
                ),
            ));
        }
        kind.task.validate(&draft.payload)?;
        super::flow::check_key(draft.run.concurrency_key.as_deref())?;
        for (field, value) in [
            ("jitter", Some(draft.jitter)),
            ("run.start_delay", draft.run.start_delay),
            ("run.ttl", draft.run.ttl),
        ] {
            if value.is_some_and(|v| v > MAX_OFFSET) {
                return Err(EngineError::invalid(field, "at most 30 days"));
            }
        }
        if draft.run.ttl.is_some_and(|t| t.is_zero()) {
            return Err(EngineError::invalid("run.ttl", "the ttl must be positive"));
        }
        if draft.run.timeout.is_some_and(|t| t.is_zero()) {
            return Err(EngineError::invalid("timeout", "timeout must be positive"));
        }
        if draft.catch_up_window.is_some_and(|w| w > MAX_CATCH_UP) {
            return Err(EngineError::invalid(
                "catch_up_window",
                "the catch-up window is at most 7 days",
            ));
        }
        if let (Some(notification), Some(guard)) =
            (&draft.run.notification, &self.inner.config.callback_guard)
        {
            guard
                .check(&notification.callback_url)
                .await
                .map_err(|reason| EngineError::invalid("notification.callback_url", reason))?;
        }
        Ok(draft)
    }
}

/// A page size: 50 when unset, at most 500.
fn page_limit(page_size: i32) -> Result<usize, EngineError> {
    match page_size {
        n if n < 0 => Err(EngineError::invalid(
            "page_size",
            format!("page_size must not be negative (got {n})"),
        )),
        0 => Ok(50),
        n => Ok((n as usize).min(500)),
    }
}
