//! The Schedules.Backfill kind: runs the ticks of a past range of one
//! schedule, once each, as an operation with progress. Each tick's run is
//! made with the tick's own request_id, so a tick that already has a run
//! (from the clock, or an earlier or retried backfill) gets no second one.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::engine::schedules::WeakEngine;
use crate::engine::{EngineError, Task, TaskContext, TaskError, TaskPolicy};
use crate::model::schedule::parse_name;
use crate::model::{Code, FieldViolation};
use crate::pb::longrun::v1::{BackfillRequest, BackfillResponse};

/// Backfills run through the engine they are registered on.
#[derive(Clone)]
pub struct BackfillTask {
    engine: WeakEngine,
}

impl BackfillTask {
    /// A backfill kind for the engine `engine` will point at.
    pub fn new(engine: WeakEngine) -> Self {
        Self { engine }
    }
}

impl Task for BackfillTask {
    type Request = BackfillRequest;
    type Response = BackfillResponse;

    const KIND: &'static str = "longrun.v1.Schedules.Backfill";
    const SHORT_NAME: Option<&'static str> = Some("backfill");

    fn validate(&self, request: &BackfillRequest) -> Result<(), FieldViolation> {
        parse_name(&request.name).map_err(|e| FieldViolation::new("name", e))?;
        if request.start_time.is_none() || request.end_time.is_none() {
            return Err(FieldViolation::new(
                "start_time",
                "a backfill needs a start and an end time",
            ));
        }
        Ok(())
    }

    fn policy(&self) -> TaskPolicy {
        TaskPolicy {
            timeout: Duration::from_secs(6 * 3600),
            concurrency: 4,
            ..TaskPolicy::default()
        }
    }

    async fn run(
        &self,
        ctx: TaskContext,
        request: BackfillRequest,
    ) -> Result<BackfillResponse, TaskError> {
        let engine = self.engine.get().ok_or_else(|| {
            TaskError::retryable(Code::Unavailable, "SHUTTING_DOWN", "the engine is closing")
        })?;
        let id = parse_name(&request.name)
            .map_err(|e| TaskError::new(Code::InvalidArgument, "INVALID_ARGUMENT", e))?;
        let time = |t: Option<&prost_types::Timestamp>| {
            t.and_then(crate::pb::system_time).ok_or_else(|| {
                TaskError::new(Code::InvalidArgument, "INVALID_ARGUMENT", "a bad time")
            })
        };
        let from = time(request.start_time.as_ref())?;
        let to = time(request.end_time.as_ref())?;
        let ticks = engine
            .backfill_ticks(ctx.tenant(), id, from, to)
            .await
            .map_err(TaskError::from)?;
        let mut response = BackfillResponse {
            ticks: ticks.len() as i64,
            ..BackfillResponse::default()
        };
        for (done, tick) in ticks.iter().enumerate() {
            if ctx.is_cancelled() {
                return Err(TaskError::cancelled());
            }
            // A full queue or storage away is waited out, tick by tick.
            let made = (|| engine.backfill_tick(ctx.tenant(), id, *tick))
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(100))
                        .with_max_delay(Duration::from_secs(5))
                        .with_max_times(30),
                )
                .sleep(tokio::time::sleep)
                .when(EngineError::is_transient)
                .await
                .map_err(TaskError::from)?;
            if made {
                response.created += 1;
            } else {
                response.existing += 1;
            }
            let done = done + 1;
            ctx.set_progress(
                (done * 100 / ticks.len()) as u32,
                format!("{done} of {} ticks", ticks.len()),
            );
        }
        Ok(response)
    }
}
