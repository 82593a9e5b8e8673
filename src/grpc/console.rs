//! longrun.v1.Console: what a console (the dashboard) reads about the
//! caller and the queues; longrun.v1.Queues: pausing and resuming them.

use tonic::{Request, Response, Status};

use super::auth::{audit, caller};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::model::Scope;
use crate::pb::longrun::v1::console_server::Console;
use crate::pb::longrun::v1::queues_server::Queues;
use crate::pb::longrun::v1::{
    Caller, GetCallerRequest, GetQueueStatsRequest, PauseQueueRequest, Queue, QueueStats,
    QueueStatsResponse, ResumeQueueRequest,
};

/// The Console service.
#[derive(Clone)]
pub struct ConsoleService {
    engine: Engine,
}

impl ConsoleService {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
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
            })
            .collect();
        Ok(Response::new(QueueStatsResponse {
            kinds,
            counting_since: Some(crate::pb::timestamp(self.engine.counting_since())),
        }))
    }
}

/// The Queues service: admins pause and resume a kind's queue.
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
}
