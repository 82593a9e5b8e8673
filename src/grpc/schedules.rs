//! longrun.v1.Schedules: schedules of the caller's tenant, read from and
//! written to the engine; a request's Schedule becomes the engine's draft
//! here, each wrong field named.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::auth::{audit, caller, created_name};
use super::status::invalid_field;
use crate::backfill::BackfillTask;
use crate::engine::schedules::{ScheduleDraft, ScheduleField};
use crate::engine::{Engine, SubmitOptions};
use crate::model::schedule::parse_name;
use crate::model::{RunTemplate, Schedule, Tenant, When};
use crate::pb::convert;
use crate::pb::google::longrunning::{ListOperationsResponse, Operation};
use crate::pb::longrun::v1::schedules_server::Schedules;
use crate::pb::longrun::v1::{
    self as api, BackfillRequest, CreateScheduleRequest, DeleteScheduleRequest, GetScheduleRequest,
    ListRunsRequest, ListSchedulesRequest, ListSchedulesResponse, PauseScheduleRequest,
    ResumeScheduleRequest, RunNowRequest, UpdateScheduleRequest,
};
use crate::pb::schedule::{overlap_of, schedule as message};

/// The Schedules service.
#[derive(Clone)]
pub struct SchedulesService {
    engine: Engine,
}

impl SchedulesService {
    /// Serves `engine`, which must have [`BackfillTask`] registered.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    /// The message of a schedule, with its recent runs' states read.
    async fn shown(&self, s: &Schedule) -> api::Schedule {
        let states = self.engine.run_states(&[&s.recent]).await;
        message(s, states.first().map_or(&[], Vec::as_slice))
    }
}

fn id_of<'a>(field: &str, name: &'a str) -> Result<&'a str, Status> {
    parse_name(name).map_err(|e| invalid_field(field, e))
}

fn duration(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Duration>, Status> {
    d.map(|d| convert::duration(field, d))
        .transpose()
        .map_err(Status::from)
}

/// The engine's draft of a schedule message.
fn draft(s: &api::Schedule) -> Result<ScheduleDraft, Status> {
    let interval = duration("interval", s.interval.as_ref())?;
    let when = match (s.cron.is_empty(), interval) {
        (false, Some(_)) => {
            return Err(invalid_field("interval", "give cron or interval, not both"));
        }
        (true, None) => {
            return Err(invalid_field(
                "cron",
                "a schedule needs a cron expression or an interval",
            ));
        }
        (false, None) => When::cron(&s.cron, &s.time_zone),
        (true, Some(interval)) => {
            if !s.time_zone.is_empty() {
                return Err(invalid_field(
                    "time_zone",
                    "a time zone goes with a cron expression, not an interval",
                ));
            }
            When::every(interval)
        }
    }
    .map_err(|e| invalid_field(e.field, e.message))?;
    let run = s.run.clone().unwrap_or_default();
    for (field, set) in [
        ("run.start_time", run.start_time.is_some()),
        ("run.expire_time", run.expire_time.is_some()),
    ] {
        if set {
            return Err(invalid_field(
                field,
                "a schedule's runs take run.start_delay and run.ttl, counted from each tick",
            ));
        }
    }
    if s.kind.is_empty() {
        return Err(invalid_field("kind", "a schedule needs a kind"));
    }
    let max_attempts = match s.max_attempts {
        n if n < 0 => {
            return Err(invalid_field(
                "max_attempts",
                "max_attempts is not negative",
            ));
        }
        0 => None,
        n => Some(n as u32),
    };
    Ok(ScheduleDraft {
        kind: s.kind.clone(),
        payload: s
            .payload
            .as_ref()
            .map(convert::from_any)
            .unwrap_or_default(),
        run: RunTemplate {
            priority: run.priority,
            concurrency_key: Some(run.concurrency_key).filter(|k| !k.is_empty()),
            start_delay: duration("run.start_delay", run.start_delay.as_ref())?,
            ttl: duration("run.ttl", run.ttl.as_ref())?,
            timeout: duration("timeout", s.timeout.as_ref())?,
            max_attempts,
            notification: convert::notification(s.notification.as_ref())?,
        },
        when,
        jitter: duration("jitter", s.jitter.as_ref())?.unwrap_or_default(),
        overlap: overlap_of(s.overlap_policy)
            .ok_or_else(|| invalid_field("overlap_policy", "not an overlap policy"))?,
        catch_up_window: duration("catch_up_window", s.catch_up_window.as_ref())?,
        catch_up_latest_only: s.catch_up_latest_only,
    })
}

/// The fields an update mask names.
fn fields(mask: Option<&prost_types::FieldMask>) -> Result<Vec<ScheduleField>, Status> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(ScheduleField::ALL.to_vec());
    };
    let mut fields = Vec::new();
    for path in &mask.paths {
        let field = match path.as_str() {
            "kind" => ScheduleField::Kind,
            "payload" => ScheduleField::Payload,
            "run" => ScheduleField::Run,
            "timeout" => ScheduleField::Timeout,
            "max_attempts" => ScheduleField::MaxAttempts,
            "notification" => ScheduleField::Notification,
            "cron" | "time_zone" | "interval" => ScheduleField::When,
            "jitter" => ScheduleField::Jitter,
            "overlap_policy" => ScheduleField::Overlap,
            "catch_up_window" => ScheduleField::CatchUpWindow,
            "catch_up_latest_only" => ScheduleField::CatchUpLatestOnly,
            other => {
                return Err(invalid_field(
                    "update_mask",
                    format!("{other:?} is not a field an update changes"),
                ));
            }
        };
        fields.push(field);
    }
    Ok(fields)
}

/// Copies the fields of `given` a mask names onto `current` (every field,
/// without a mask). A new cron replaces an interval and the other way
/// round.
fn overlay(
    current: &mut api::Schedule,
    given: &api::Schedule,
    mask: Option<&prost_types::FieldMask>,
) {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        let name = std::mem::take(&mut current.name);
        *current = api::Schedule {
            name,
            ..given.clone()
        };
        return;
    };
    for path in &mask.paths {
        match path.as_str() {
            "kind" => current.kind.clone_from(&given.kind),
            "payload" => current.payload.clone_from(&given.payload),
            "run" => current.run.clone_from(&given.run),
            "timeout" => current.timeout = given.timeout,
            "max_attempts" => current.max_attempts = given.max_attempts,
            "notification" => current.notification.clone_from(&given.notification),
            "cron" => {
                current.cron.clone_from(&given.cron);
                if !given.cron.is_empty() {
                    current.interval = None;
                }
            }
            "time_zone" => current.time_zone.clone_from(&given.time_zone),
            "interval" => {
                current.interval = given.interval;
                if given.interval.is_some() {
                    current.cron.clear();
                    current.time_zone.clear();
                }
            }
            "jitter" => current.jitter = given.jitter,
            "overlap_policy" => current.overlap_policy = given.overlap_policy,
            "catch_up_window" => current.catch_up_window = given.catch_up_window,
            "catch_up_latest_only" => current.catch_up_latest_only = given.catch_up_latest_only,
            _ => {}
        }
    }
}

/// The filter of a schedule's runs.
fn runs_filter(tenant: &Tenant, id: &str) -> String {
    format!(
        "tenant = \"{}\" AND schedule = \"schedules/{id}\"",
        tenant.as_str()
    )
}

#[tonic::async_trait]
impl Schedules for SchedulesService {
    async fn create_schedule(
        &self,
        request: Request<CreateScheduleRequest>,
    ) -> Result<Response<api::Schedule>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            let schedule = req
                .schedule
                .as_ref()
                .ok_or_else(|| invalid_field("schedule", "the schedule is missing"))?;
            let created = self
                .engine
                .create_schedule(&caller.tenant, &req.schedule_id, draft(schedule)?)
                .await?;
            Ok(Response::new(self.shown(&created).await))
        }
        .await;
        audit(&caller, "CreateSchedule", &req.schedule_id, &result);
        result
    }

    async fn get_schedule(
        &self,
        request: Request<GetScheduleRequest>,
    ) -> Result<Response<api::Schedule>, Status> {
        let caller = caller(&request)?;
        let id = id_of("name", &request.get_ref().name)?;
        let s = self.engine.schedule(&caller.tenant, id).await?;
        Ok(Response::new(self.shown(&s).await))
    }

    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let page = self
            .engine
            .schedules(&caller.tenant, req.page_size, &req.page_token)
            .await?;
        let runs: Vec<&[_]> = page.schedules.iter().map(|s| s.recent.as_slice()).collect();
        let states = self.engine.run_states(&runs).await;
        Ok(Response::new(ListSchedulesResponse {
            schedules: page
                .schedules
                .iter()
                .zip(&states)
                .map(|(s, states)| message(s, states))
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<UpdateScheduleRequest>,
    ) -> Result<Response<api::Schedule>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let name = req
            .schedule
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let result = async {
            let schedule = req
                .schedule
                .as_ref()
                .ok_or_else(|| invalid_field("schedule", "the schedule is missing"))?;
            let id = id_of("schedule.name", &schedule.name)?;
            let etag =
                match schedule.etag.as_str() {
                    "" => None,
                    etag => Some(etag.trim_matches('"').parse::<u64>().map_err(|_| {
                        invalid_field("schedule.etag", "not an etag this server gave")
                    })?),
                };
            let fields = fields(req.update_mask.as_ref())?;
            // The fields the mask leaves out keep their values: the draft
            // is the stored schedule with the named fields replaced.
            let mut merged = message(&self.engine.schedule(&caller.tenant, id).await?, &[]);
            overlay(&mut merged, schedule, req.update_mask.as_ref());
            let updated = self
                .engine
                .update_schedule(&caller.tenant, id, draft(&merged)?, &fields, etag)
                .await?;
            Ok(Response::new(self.shown(&updated).await))
        }
        .await;
        audit(&caller, "UpdateSchedule", &name, &result);
        result
    }

    async fn delete_schedule(
        &self,
        request: Request<DeleteScheduleRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        let result = async {
            let id = id_of("name", &name)?;
            self.engine.delete_schedule(&caller.tenant, id).await?;
            Ok(Response::new(()))
        }
        .await;
        audit(&caller, "DeleteSchedule", &name, &result);
        result
    }

    async fn pause_schedule(
        &self,
        request: Request<PauseScheduleRequest>,
    ) -> Result<Response<api::Schedule>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        let result = self.set_paused(&caller.tenant, &name, true).await;
        audit(&caller, "PauseSchedule", &name, &result);
        result
    }

    async fn resume_schedule(
        &self,
        request: Request<ResumeScheduleRequest>,
    ) -> Result<Response<api::Schedule>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        let result = self.set_paused(&caller.tenant, &name, false).await;
        audit(&caller, "ResumeSchedule", &name, &result);
        result
    }

    async fn run_now(
        &self,
        request: Request<RunNowRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            let id = id_of("name", &req.name)?;
            let request_id = convert::request_id(&req.request_id)?;
            let op = self
                .engine
                .run_schedule_now(&caller.tenant, id, request_id)
                .await?;
            Ok(Response::new(convert::operation(&op)))
        }
        .await;
        audit(&caller, "RunNow", created_name(&result), &result);
        result
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = id_of("parent", &req.parent)?;
        // A schedule that is gone has no runs to list, though its runs
        // may still be found with ListOperations.
        self.engine.schedule(&caller.tenant, id).await?;
        let page = self
            .engine
            .list(
                &caller.scope(),
                &runs_filter(&caller.tenant, id),
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(Response::new(ListOperationsResponse {
            operations: page.operations.iter().map(convert::operation).collect(),
            next_page_token: page.next_page_token,
            unreachable: Vec::new(),
        }))
    }

    async fn backfill(
        &self,
        request: Request<BackfillRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            let id = id_of("name", &req.name)?;
            let at = |field: &str, t: Option<&prost_types::Timestamp>| {
                t.and_then(crate::pb::system_time)
                    .ok_or_else(|| invalid_field(field, "a valid timestamp is needed"))
            };
            let from = at("start_time", req.start_time.as_ref())?;
            let to = at("end_time", req.end_time.as_ref())?;
            // Checked now, so that a bad range is refused rather than made
            // an operation that fails.
            self.engine
                .backfill_ticks(&caller.tenant, id, from, to)
                .await?;
            let options = SubmitOptions {
                tenant: caller.tenant.clone(),
                request_id: convert::request_id(&req.request_id)?,
                ..SubmitOptions::default()
            };
            let op = self.engine.submit::<BackfillTask>(&req, options).await?;
            Ok(Response::new(convert::operation(&op)))
        }
        .await;
        audit(&caller, "Backfill", created_name(&result), &result);
        result
    }
}

impl SchedulesService {
    async fn set_paused(
        &self,
        tenant: &Tenant,
        name: &str,
        paused: bool,
    ) -> Result<Response<api::Schedule>, Status> {
        let id = id_of("name", name)?;
        let s = self.engine.pause_schedule(tenant, id, paused).await?;
        Ok(Response::new(self.shown(&s).await))
    }
}
