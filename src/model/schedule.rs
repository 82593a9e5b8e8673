//! Schedules: a kind, the request every run is made from, and a clock
//! ([`When`]). The record keeps where its clock stands (the next tick),
//! what its last runs were, and the pure decisions of a turn: which ticks
//! are due after downtime, what the overlap policy makes of a tick, and
//! the request_id that makes each tick's run exactly once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::id::{OperationId, RequestId};
use super::operation::Notification;
use super::payload::Payload;
use super::status::OperationError;
use super::tenant::Tenant;
use super::when::When;

/// The longest schedule id.
pub const MAX_ID: usize = 63;

/// How many recent runs a schedule remembers.
pub const RECENT_RUNS: usize = 10;

/// The longest catch-up window.
pub const MAX_CATCH_UP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The catch-up window of a schedule that names none.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(3600);

/// The most ticks one turn of one schedule runs; the rest wait for the
/// next turn, so one schedule's backlog cannot hold up the others.
pub const MAX_TICKS_PER_TURN: usize = 100;

/// What a tick does while the last run is still going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlap {
    /// No run for this tick.
    #[default]
    Skip,
    /// The tick waits for the last run to end; at most one waits.
    BufferOne,
    /// The tick runs beside it.
    AllowAll,
    /// The last run is cancelled, and the tick runs.
    CancelPrevious,
}

/// What a tick does, given whether the last run is still going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickAction {
    /// Make its run.
    Run,
    /// Cancel the last run, then make this one.
    CancelThenRun,
    /// Keep it until the last run ends.
    Buffer,
    /// Make no run.
    Skip,
}

impl Overlap {
    /// What a tick does when the last run is (or is not) still going.
    pub fn decide(self, last_running: bool) -> TickAction {
        match (self, last_running) {
            (_, false) | (Overlap::AllowAll, true) => TickAction::Run,
            (Overlap::Skip, true) => TickAction::Skip,
            (Overlap::BufferOne, true) => TickAction::Buffer,
            (Overlap::CancelPrevious, true) => TickAction::CancelThenRun,
        }
    }
}

/// How every run of a schedule runs, relative to its tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunTemplate {
    pub priority: i32,
    pub concurrency_key: Option<String>,
    /// Each run starts this long after its tick.
    pub start_delay: Option<Duration>,
    /// Each run not started this long after its tick ends unrun.
    pub ttl: Option<Duration>,
    /// A shorter time limit per attempt than the kind's.
    pub timeout: Option<Duration>,
    /// Fewer attempts than the kind allows.
    pub max_attempts: Option<u32>,
    /// A webhook every run calls.
    pub notification: Option<Notification>,
}

/// One run a schedule made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleRun {
    pub operation: OperationId,
    /// The tick it ran for.
    pub tick: SystemTime,
}

/// A schedule and where its clock stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub tenant: Tenant,
    /// The id in `schedules/{id}`, unique in the tenant.
    pub id: String,
    pub kind: String,
    /// The request every run is created with.
    pub payload: Payload,
    pub run: RunTemplate,
    pub when: When,
    /// Each run starts up to this long after its tick.
    pub jitter: Duration,
    pub overlap: Overlap,
    pub catch_up_window: Duration,
    pub catch_up_latest_only: bool,
    pub paused: bool,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    /// The next tick not yet handled; None when the clock never ticks
    /// again.
    pub next_tick: Option<SystemTime>,
    /// A tick kept by BUFFER_ONE until the last run ends.
    pub buffered: Option<SystemTime>,
    /// When to look again before the next tick: a buffered tick's check,
    /// or the retry of a tick whose run could not be made yet.
    pub recheck: Option<SystemTime>,
    /// The last runs, newest first.
    pub recent: Vec<ScheduleRun>,
    /// Why the last tick made no run, until a run is made.
    pub last_error: Option<OperationError>,
    /// Ticks that made no run.
    pub skipped: u64,
    /// Counts every stored change; a write that names a revision fails
    /// when the stored one differs.
    pub revision: u64,
    /// Until when a node is handling its due ticks.
    pub lease_until: Option<SystemTime>,
}

impl Schedule {
    /// A new schedule of `kind` on `when`, made at `now`: its clock at the
    /// first tick after now, the other settings at their defaults (no
    /// jitter, SKIP, a [`DEFAULT_CATCH_UP`] window), nothing run yet.
    pub fn new(
        tenant: Tenant,
        id: impl Into<String>,
        kind: impl Into<String>,
        payload: Payload,
        when: When,
        now: SystemTime,
    ) -> Self {
        let mut schedule = Self {
            tenant,
            id: id.into(),
            kind: kind.into(),
            payload,
            run: RunTemplate::default(),
            when,
            jitter: Duration::ZERO,
            overlap: Overlap::default(),
            catch_up_window: DEFAULT_CATCH_UP,
            catch_up_latest_only: false,
            paused: false,
            create_time: now,
            update_time: now,
            next_tick: None,
            buffered: None,
            recheck: None,
            recent: Vec::new(),
            last_error: None,
            skipped: 0,
            revision: 0,
            lease_until: None,
        };
        schedule.restart_clock(now);
        schedule
    }

    /// `schedules/{id}`.
    pub fn name(&self) -> String {
        format!("schedules/{}", self.id)
    }

    /// When a scheduler must next look at it: its next tick or an earlier
    /// recheck; never while paused.
    pub fn due(&self) -> Option<SystemTime> {
        if self.paused {
            return None;
        }
        match (self.next_tick, self.recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The last run made, if any.
    pub fn last_run(&self) -> Option<ScheduleRun> {
        self.recent.first().copied()
    }

    /// Records a run, newest first, forgetting the oldest beyond
    /// [`RECENT_RUNS`], and clears the last error.
    pub fn record_run(&mut self, run: ScheduleRun) {
        self.recent.retain(|r| r.operation != run.operation);
        self.recent.insert(0, run);
        self.recent.truncate(RECENT_RUNS);
        self.last_error = None;
    }

    /// Sets the clock to its first tick after `now`, as a create, a resume
    /// or a new clock does; nothing earlier is caught up.
    pub fn restart_clock(&mut self, now: SystemTime) {
        self.next_tick = self.when.next_after(now);
        self.buffered = None;
        self.recheck = None;
    }

    /// The ticks due at `now`, oldest first, at most `max`, after the
    /// catch-up rules: ticks older than the window are skipped, and with
    /// `catch_up_latest_only` only the last due one runs. Returns them,
    /// how many were skipped, and the next tick after the last one taken.
    pub fn due_ticks(&self, now: SystemTime, max: usize) -> DueTicks {
        let mut due = DueTicks {
            ticks: Vec::new(),
            skipped: 0,
            next: self.next_tick,
        };
        let Some(first) = self.next_tick.filter(|t| *t <= now) else {
            return due;
        };
        let oldest = now.checked_sub(self.catch_up_window).unwrap_or(UNIX_EPOCH);
        let mut tick = Some(first);
        if first < oldest {
            // Ticks before the window are skipped without being counted one
            // by one: there may be a great many.
            due.skipped += 1;
            tick = self
                .when
                .next_after(oldest - Duration::from_micros(1))
                .filter(|t| *t <= now);
            if tick.is_none() {
                due.next = self.when.next_after(now);
                return due;
            }
        }
        while let Some(t) = tick.filter(|t| *t <= now) {
            if due.ticks.len() == max {
                break;
            }
            due.ticks.push(t);
            tick = self.when.next_after(t);
        }
        due.next = tick;
        if self.catch_up_latest_only && due.ticks.len() > 1 && due.next.is_none_or(|n| n > now) {
            let keep = due.ticks.pop();
            due.skipped += due.ticks.len() as u64;
            due.ticks = keep.into_iter().collect();
        }
        due
    }

    /// How long after `tick` its run starts: the start delay and a share
    /// of the jitter fixed by the schedule and the tick, so that a retry
    /// of the tick asks the same.
    pub fn start_offset(&self, tick: SystemTime) -> Duration {
        let delay = self.run.start_delay.unwrap_or_default();
        let jitter_us = self.jitter.as_micros() as u64;
        if jitter_us == 0 {
            return delay;
        }
        let digest = self.tick_digest(tick, b"jitter");
        let mut word = [0u8; 8];
        word.copy_from_slice(&digest[..8]);
        delay + Duration::from_micros(u64::from_le_bytes(word) % jitter_us)
    }

    /// The request_id of the run of `tick`: the same for every node, every
    /// retry and every backfill of that tick, so that the store keeps one
    /// run per tick.
    pub fn tick_request_id(&self, tick: SystemTime) -> RequestId {
        let digest = self.tick_digest(tick, b"run");
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        // A version 8 (custom) UUID of the RFC 9562 variant.
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        RequestId::from_bytes(bytes)
    }

    fn tick_digest(&self, tick: SystemTime, purpose: &[u8]) -> [u8; 32] {
        let micros = tick
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let mut hash = Sha256::new();
        hash.update(purpose);
        hash.update([0]);
        hash.update(self.tenant.as_str().as_bytes());
        hash.update([0]);
        hash.update(self.id.as_bytes());
        hash.update([0]);
        hash.update(self.create_time_micros().to_le_bytes());
        hash.update(micros.to_le_bytes());
        hash.finalize().into()
    }

    /// The creation time, so that a schedule deleted and made again under
    /// the same id does not meet its predecessor's runs.
    fn create_time_micros(&self) -> u64 {
        self.create_time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64
    }
}

/// The outcome of [`Schedule::due_ticks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTicks {
    pub ticks: Vec<SystemTime>,
    pub skipped: u64,
    pub next: Option<SystemTime>,
}

/// Checks a schedule id: 1 to 63 lower-case letters, digits and '-',
/// starting with a letter and not ending with '-'.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a schedule id: 1 to {MAX_ID} lower-case letters, digits and '-', \
             starting with a letter"
        ))
    }
}

/// The id in a `schedules/{id}` name.
pub fn parse_name(name: &str) -> Result<&str, String> {
    let id = name
        .strip_prefix("schedules/")
        .ok_or_else(|| format!("{name:?} is not a schedule name (schedules/ID)"))?;
    check_id(id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::when::When;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn every_minute() -> Schedule {
        let mut s = Schedule::new(
            Tenant::default_tenant(),
            "nightly",
            "longrun.diagnostics.sleep",
            Payload::default(),
            When::Every(Duration::from_secs(60)),
            at(1_000_000),
        );
        s.catch_up_window = Duration::from_secs(15 * 60);
        s
    }

    #[test]
    fn ticks_missed_within_the_window_run_once_each() {
        let s = every_minute();
        let first = s.next_tick.unwrap();
        let due = s.due_ticks(first + Duration::from_secs(10 * 60), 1000);
        assert_eq!(due.ticks.len(), 11);
        assert_eq!(due.ticks[0], first);
        assert_eq!(due.skipped, 0);
        assert_eq!(due.next, Some(first + Duration::from_secs(11 * 60)));
    }

    #[test]
    fn ticks_older_than_the_window_are_skipped() {
        let mut s = every_minute();
        s.catch_up_window = Duration::from_secs(5 * 60);
        let first = s.next_tick.unwrap();
        let now = first + Duration::from_secs(10 * 60);
        let due = s.due_ticks(now, 1000);
        // The window's ends are both in it: ten minutes late, a five-minute
        // window keeps the ticks of minutes 5 to 10.
        assert_eq!(due.ticks.len(), 6, "{:?}", due.ticks);
        assert!(due.ticks.iter().all(|t| *t + s.catch_up_window >= now));
        assert_eq!(due.skipped, 1);
    }

    #[test]
    fn latest_only_runs_the_last_due_tick() {
        let mut s = every_minute();
        s.catch_up_latest_only = true;
        let first = s.next_tick.unwrap();
        let now = first + Duration::from_secs(10 * 60 + 5);
        let due = s.due_ticks(now, 1000);
        assert_eq!(due.ticks, vec![first + Duration::from_secs(600)]);
        assert_eq!(due.skipped, 10);
    }

    #[test]
    fn a_turn_takes_at_most_its_share() {
        let s = every_minute();
        let first = s.next_tick.unwrap();
        let due = s.due_ticks(first + Duration::from_secs(600), 3);
        assert_eq!(due.ticks.len(), 3);
        assert_eq!(due.next, Some(first + Duration::from_secs(180)));
    }

    #[test]
    fn request_ids_are_per_tick_and_per_schedule() {
        let a = every_minute();
        let mut b = every_minute();
        b.id = "other".into();
        let t = a.next_tick.unwrap();
        assert_eq!(a.tick_request_id(t), a.tick_request_id(t));
        assert_ne!(
            a.tick_request_id(t),
            a.tick_request_id(t + Duration::from_secs(60))
        );
        assert_ne!(a.tick_request_id(t), b.tick_request_id(t));
    }

    #[test]
    fn jitter_stays_within_its_bound_and_is_fixed_per_tick() {
        let mut s = every_minute();
        s.jitter = Duration::from_secs(30);
        let t = s.next_tick.unwrap();
        let offsets: Vec<Duration> = (0..50)
            .map(|i| s.start_offset(t + Duration::from_secs(60 * i)))
            .collect();
        assert!(offsets.iter().all(|o| *o < Duration::from_secs(30)));
        assert!(offsets.iter().any(|o| *o != offsets[0]));
        assert_eq!(s.start_offset(t), offsets[0]);
    }

    #[test]
    fn overlap_policies_decide_a_tick() {
        assert_eq!(Overlap::Skip.decide(true), TickAction::Skip);
        assert_eq!(Overlap::BufferOne.decide(true), TickAction::Buffer);
        assert_eq!(Overlap::AllowAll.decide(true), TickAction::Run);
        assert_eq!(
            Overlap::CancelPrevious.decide(true),
            TickAction::CancelThenRun
        );
        for policy in [
            Overlap::Skip,
            Overlap::BufferOne,
            Overlap::AllowAll,
            Overlap::CancelPrevious,
        ] {
            assert_eq!(policy.decide(false), TickAction::Run);
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("nightly-report-2").is_ok());
        for bad in ["", "Nightly", "1abc", "a_b", "abc-", &"a".repeat(64)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_name("schedules/abc"), Ok("abc"));
        assert!(parse_name("operations/abc").is_err());
    }
}
