//! The Diagnostics.Sleep kind: an operation of known length that clients
//! use to exercise their LRO handling, and tests and benchmarks use as a job
//! of known shape.

use std::time::Duration;

use crate::engine::{Size, Task, TaskContext, TaskError, TaskPolicy};
use crate::model::{Code, FieldViolation};
use crate::pb::longrun::v1::{SleepRequest, SleepResponse};

/// The longest sleep accepted.
pub const MAX_SLEEP: Duration = Duration::from_secs(24 * 60 * 60);
/// How many sleeps run at once by default.
pub const SLEEP_CONCURRENCY: usize = 4096;
/// The most progress steps accepted.
pub const MAX_STEPS: i32 = 10_000;

/// Sleeps for the requested time in steps, reporting progress after each.
#[derive(Debug, Default, Clone, Copy)]
pub struct SleepTask;

fn requested_duration(request: &SleepRequest) -> Result<Duration, FieldViolation> {
    let Some(d) = request.duration else {
        return Ok(Duration::ZERO);
    };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldViolation::new(
            "duration",
            "duration must be a non-negative, normalized google.protobuf.Duration",
        ));
    }
    let duration = Duration::new(d.seconds as u64, d.nanos as u32);
    if duration > MAX_SLEEP {
        return Err(FieldViolation::new(
            "duration",
            format!(
                "duration may be at most {}",
                humantime::format_duration(MAX_SLEEP)
            ),
        ));
    }
    Ok(duration)
}

impl Task for SleepTask {
    type Request = SleepRequest;
    type Response = SleepResponse;

    const KIND: &'static str = "longrun.v1.Diagnostics.Sleep";
    const SHORT_NAME: Option<&'static str> = Some("sleep");

    fn policy(&self) -> TaskPolicy {
        TaskPolicy {
            // Long enough for the longest sleep allowed.
            timeout: MAX_SLEEP + Duration::from_secs(3600),
            // A sleep only waits on a timer: thousands can run at once.
            concurrency: SLEEP_CONCURRENCY,
            ..TaskPolicy::default()
        }
    }

    /// A sleep knows its length.
    fn size(&self, request: &SleepRequest) -> Size {
        Size {
            length: requested_duration(request).ok(),
            work: None,
        }
    }

    fn validate(&self, request: &SleepRequest) -> Result<(), FieldViolation> {
        requested_duration(request)?;
        if !(0..=MAX_STEPS).contains(&request.steps) {
            return Err(FieldViolation::new(
                "steps",
                format!("steps must be between 0 and {MAX_STEPS}"),
            ));
        }
        if request.fail_attempts < 0 {
            return Err(FieldViolation::new(
                "fail_attempts",
                "fail_attempts must not be negative",
            ));
        }
        if request.fail_code != 0 && Code::from_i32(request.fail_code).is_none() {
            return Err(FieldViolation::new(
                "fail_code",
                "fail_code must be 0 or a google.rpc.Code from 1 to 16",
            ));
        }
        Ok(())
    }

    async fn run(
        &self,
        ctx: TaskContext,
        request: SleepRequest,
    ) -> Result<SleepResponse, TaskError> {
        let duration = requested_duration(&request)
            .map_err(|v| TaskError::new(Code::InvalidArgument, "INVALID_REQUEST", v.description))?;
        let steps = request.steps.max(1) as u32;
        let step = duration / steps;
        for done in 1..=steps {
            let slept = if step.is_zero() {
                !ctx.is_cancelled()
            } else {
                ctx.sleep(step).await
            };
            if !slept {
                return Err(TaskError::cancelled());
            }
            ctx.set_progress(done * 100 / steps, format!("step {done} of {steps}"));
        }
        if ctx.attempt() <= request.fail_attempts as u32 {
            return Err(TaskError::retryable(
                Code::Unavailable,
                "REQUESTED_TRANSIENT_FAILURE",
                format!(
                    "attempt {} failed because fail_attempts is {}",
                    ctx.attempt(),
                    request.fail_attempts
                ),
            ));
        }
        if let Some(code) = Code::from_i32(request.fail_code) {
            return Err(TaskError::new(
                code,
                "REQUESTED_FAILURE",
                format!(
                    "the sleep failed with code {} because fail_code asked for it",
                    code.as_i32()
                ),
            ));
        }
        Ok(SleepResponse {
            slept: Some(prost_types::Duration {
                seconds: duration.as_secs() as i64,
                nanos: duration.subsec_nanos() as i32,
            }),
            steps: steps as i32,
            attempt: ctx.attempt() as i32,
        })
    }
}
