//! longrun.v1.Console: what a console (the dashboard) reads about the
//! caller and the queues; longrun.v1.Queues: pausing and resuming them.

use tonic::{Request, Response, Status};

use super::auth::{audit, caller};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::engine::LimitRequest;
use crate::engine::flow::LimitUse as EngineLimitUse;
use crate::model::Scope;
use crate::model::{Limit as ModelLimit, LimitScope};
use crate::pb::longrun::v1::console_server::Console;
use crate::pb::longrun::v1::queues_server::Queues;
use crate::pb::longrun::v1::{
    Caller, DeleteLimitRequest, DeleteLimitResponse, GetCallerRequest, GetQueueStatsRequest, Limit,
    LimitUse, ListLimitsRequest, ListLimitsResponse, PauseQueueRequest, Queue, QueueStats,
    QueueStatsResponse, ResumeQueueRequest, SetLimitRequest, SlotUse,
};

/// The Console service.
#[derive(Clone)]
pub struct ConsoleService {
    engine: Engine,
    trace_url_template: String,
}

impl ConsoleService {
    /// Serves `engine`; the dashboard links traces with
    /// `trace_url_template` (empty: no links).
    pub fn new(engine: Engine, trace_url_template: String) -> Self {
        Self {
            engine,
            trace_url_template,
        }
    }
}

#[tonic::async_trait]
impl Console for ConsoleService {
    async fn get_caller(
        &self,
        request: Request<GetCallerRequest>,
    ) -> Result<Response<Caller>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(Caller {
            name: caller.name.clone(),
            tenant: caller.tenant.as_str().to_owned(),
            role: caller.role.to_string(),
            all_tenants: caller.scope() == Scope::All,
            trace_url_template: self.trace_url_template.clone(),
        }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<GetQueueStatsRequest>,
    ) -> Result<Response<QueueStatsResponse>, Status> {
        let scope = caller(&request)?.scope();
        let kinds = self
            .engine
            .queues(&scope)
            .await?
            .into_iter()
            .map(|q| QueueStats {
                kind: q.kind,
                queued: q.queued as i64,
                running: q.running as i64,
                cancelling: q.cancelling as i64,
                concurrency: q.concurrency.map_or(0, |n| n as i64),
                oldest_queued_time: q.oldest_queued.map(crate::pb::timestamp),
                finished_per_minute: q
                    .finished_per_minute
                    .into_iter()
                    .map(|n| n as i64)
                    .collect(),
                paused: q.paused,
                limits: q.limits.iter().map(limit_use).collect(),
            })
            .collect();
        Ok(Response::new(QueueStatsResponse {
            kinds,
            counting_since: Some(crate::pb::timestamp(self.engine.counting_since())),
        }))
    }
}

/// A limit on the wire.
fn limit(limit: &ModelLimit) -> Limit {
    Limit {
        kind: limit.kind.clone(),
        scope: limit.scope.as_str().to_owned(),
        concurrency: limit.concurrency.map_or(0, i64::from),
        rates: limit.rates.iter().map(ToString::to_string).collect(),
    }
}

fn limit_use(used: &EngineLimitUse) -> LimitUse {
    LimitUse {
        limit: Some(limit(&used.limit)),
        at_limit: i64::try_from(used.running).unwrap_or(i64::MAX),
        busiest: used
            .busiest
            .iter()
            .map(|(key, n)| SlotUse {
                key: key.clone(),
                running: i64::from(*n),
            })
            .collect(),
        tokens: used.tokens.clone(),
    }
}

/// Reads a scope word, naming the field when it is wrong.
fn scope(word: &str) -> Result<LimitScope, Status> {
    LimitScope::parse(word).ok_or_else(|| {
        Status::from(crate::engine::EngineError::invalid(
            "scope",
            format!("{word:?} is not a scope; use kind, key or tenant"),
        ))
    })
}

/// The Queues service: admins pause and resume a kind's queue, and set
/// its limits.
#[derive(Clone)]
pub struct QueuesService {
    engine: Engine,
}

impl QueuesService {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    async fn set(&self, caller: &Principal, kind: &str, paused: bool) -> Result<Queue, Status> {
        let rpc = if paused { "PauseQueue" } else { "ResumeQueue" };
        let result = self
            .engine
            .pause_queue(kind, paused)
            .await
            .map(|kind| Queue { kind, paused })
            .map_err(Status::from);
        audit(caller, rpc, kind, &result);
        result
    }
}

#[tonic::async_trait]
impl Queues for QueuesService {
    async fn pause_queue(
        &self,
        request: Request<PauseQueueRequest>,
    ) -> Result<Response<Queue>, Status> {
        let caller = caller(&request)?;
        let queue = self.set(&caller, &request.get_ref().kind, true).await?;
        Ok(Response::new(queue))
    }

    async fn resume_queue(
        &self,
        request: Request<ResumeQueueRequest>,
    ) -> Result<Response<Queue>, Status> {
        let caller = caller(&request)?;
        let queue = self.set(&caller, &request.get_ref().kind, false).await?;
        Ok(Response::new(queue))
    }

    async fn set_limit(
        &self,
        request: Request<SetLimitRequest>,
    ) -> Result<Response<Limit>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let result = async {
            let asked = LimitRequest {
                kind: req.kind.clone(),
                scope: Some(scope(&req.scope)?),
                // 0 is none; below it is refused by the engine.
                concurrency: (req.concurrency != 0).then_some(req.concurrency),
                rates: req.rates.clone(),
            };
            let set = self.engine.set_limit(&asked).await?;
            Ok(limit(&set))
        }
        .await;
        audit(&caller, "SetLimit", &req.kind, &result);
        result.map(Response::new)
    }

    async fn delete_limit(
        &self,
        request: Request<DeleteLimitRequest>,
    ) -> Result<Response<DeleteLimitResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let result = async {
            let deleted = self
                .engine
                .clear_limit(&req.kind, scope(&req.scope)?)
                .await?;
            Ok(DeleteLimitResponse { deleted })
        }
        .await;
        audit(&caller, "DeleteLimit", &req.kind, &result);
        result.map(Response::new)
    }

    async fn list_limits(
        &self,
        _request: Request<ListLimitsRequest>,
    ) -> Result<Response<ListLimitsResponse>, Status> {
        let limits = self.engine.limits().await?.iter().map(limit).collect();
        Ok(Response::new(ListLimitsResponse { limits }))
    }
}
