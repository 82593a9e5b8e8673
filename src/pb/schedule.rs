//! A schedule as the `longrun.v1.Schedule` message, for every face (the
//! gRPC service, the CLI's output). Reading one back into a draft is the
//! service's (it needs the engine's draft type).

use super::convert::{status, to_any};
use super::longrun::v1 as api;
use super::{duration, timestamp};
use crate::model::{Notification, Overlap, Schedule, State};

/// How many upcoming ticks a schedule shows.
pub const UPCOMING: usize = 5;

/// The wire form of an overlap policy.
pub fn overlap(policy: Overlap) -> api::schedule::OverlapPolicy {
    use api::schedule::OverlapPolicy as P;
    match policy {
        Overlap::Skip => P::Skip,
        Overlap::BufferOne => P::BufferOne,
        Overlap::AllowAll => P::AllowAll,
        Overlap::CancelPrevious => P::CancelPrevious,
    }
}

/// The model's overlap policy; None for a number no policy has.
pub fn overlap_of(number: i32) -> Option<Overlap> {
    use api::schedule::OverlapPolicy as P;
    Some(match P::try_from(number).ok()? {
        P::Unspecified | P::Skip => Overlap::Skip,
        P::BufferOne => Overlap::BufferOne,
        P::AllowAll => Overlap::AllowAll,
        P::CancelPrevious => Overlap::CancelPrevious,
    })
}

fn notification(n: &Notification) -> api::NotificationConfig {
    api::NotificationConfig {
        callback_url: n.callback_url.clone(),
        events: n
            .states
            .iter()
            .map(|s| super::convert::state(*s) as i32)
            .collect(),
    }
}

/// The message of a schedule, with the states of its recent
/// runs where they were read (`states`, in the order of `recent`).
pub fn schedule(s: &Schedule, states: &[Option<State>]) -> api::Schedule {
    api::Schedule {
        name: s.name(),
        kind: s.kind.clone(),
        payload: Some(to_any(&s.payload)),
        run: Some(api::RunOptions {
            priority: s.run.priority,
            concurrency_key: s.run.concurrency_key.clone().unwrap_or_default(),
            start_delay: s.run.start_delay.map(duration),
            ttl: s.run.ttl.map(duration),
            ..api::RunOptions::default()
        }),
        timeout: s.run.timeout.map(duration),
        max_attempts: s.run.max_attempts.map_or(0, |n| n as i32),
        notification: s.run.notification.as_ref().map(notification),
        cron: s.when.expression().unwrap_or_default().to_owned(),
        time_zone: s.when.zone().unwrap_or_default().to_owned(),
        interval: s.when.interval().map(duration),
        jitter: Some(s.jitter).filter(|j| !j.is_zero()).map(duration),
        overlap_policy: overlap(s.overlap) as i32,
        catch_up_window: Some(duration(s.catch_up_window)),
        catch_up_latest_only: s.catch_up_latest_only,
        paused: s.paused,
        description: s.when.describe(),
        next_run_times: match s.next_tick.filter(|_| !s.paused) {
            Some(first) => std::iter::once(first)
                .chain(s.when.upcoming(first, UPCOMING - 1))
                .map(timestamp)
                .collect(),
            None => Vec::new(),
        },
        recent_runs: s
            .recent
            .iter()
            .enumerate()
            .map(|(i, run)| api::ScheduleRun {
                operation: run.operation.name(),
                scheduled_time: Some(timestamp(run.tick)),
                state: states
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|state| super::convert::state(state).as_str_name().to_owned())
                    .unwrap_or_default(),
            })
            .collect(),
        create_time: Some(timestamp(s.create_time)),
        update_time: Some(timestamp(s.update_time)),
        last_error: s.last_error.as_ref().map(status),
        skipped_ticks: i64::try_from(s.skipped).unwrap_or(i64::MAX),
        etag: s.revision.to_string(),
    }
}
