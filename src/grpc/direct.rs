//! The unary methods of longrun's own services as plain calls, for the
//! HTTP/JSON face: a call here runs the very handler a gRPC call runs
//! (same validation, statuses and details), but its request is decoded
//! once and its answer encoded once, with no HTTP/2 frames, bodies or
//! trailers in between. Streams, uploads and embedders' services, whose
//! types the server does not know, still go through the router.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use prost::Message;
use tonic::{Request, Response, Status};

use super::batches::BatchesService;
use super::console::{ConsoleService, QueuesService};
use super::diagnostics::DiagnosticsService;
use super::notifications::NotificationsService;
use super::operations::OperationsService;
use super::reports::ReportsService;
use super::schedules::SchedulesService;
use super::status::garbled;
use super::workers::WorkersService;
use crate::pb::google::longrunning::operations_server::Operations;
use crate::pb::longrun::v1::batches_server::Batches;
use crate::pb::longrun::v1::bulk_server::Bulk;
use crate::pb::longrun::v1::console_server::Console;
use crate::pb::longrun::v1::diagnostics_server::Diagnostics;
use crate::pb::longrun::v1::jobs_server::Jobs;
use crate::pb::longrun::v1::notifications_server::Notifications;
use crate::pb::longrun::v1::queues_server::Queues;
use crate::pb::longrun::v1::report_service_server::ReportService;
use crate::pb::longrun::v1::schedules_server::Schedules;

/// One method: its encoded request, with the caller's metadata and
/// extensions, in; its encoded answer out.
type Call = Box<dyn Fn(Request<Bytes>) -> BoxFuture<'static, Result<Bytes, Status>> + Send + Sync>;

/// The methods by gRPC path (`/package.Service/Method`).
#[derive(Default)]
pub struct Direct(HashMap<&'static str, Call>);

impl Direct {
    /// The method at `path`, if it is one of these.
    pub fn get(&self, path: &str) -> Option<&Call> {
        self.0.get(path)
    }

    /// Adds `handler` at `path`: the request is decoded as `Req` (a garbled
    /// one answers as tonic's decoder would, with a status) and the answer
    /// encoded.
    fn add<Req, Resp, F, Fut>(&mut self, path: &'static str, handler: F)
    where
        Req: Message + Default + 'static,
        Resp: Message + 'static,
        F: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.0.insert(
            path,
            Box::new(move |request: Request<Bytes>| {
                let handler = Arc::clone(&handler);
                Box::pin(async move {
                    let (metadata, extensions, bytes) = request.into_parts();
                    let message = Req::decode(bytes)
                        .map_err(|e| garbled(format!("an undecodable request: {e}")))?;
                    let answer =
                        handler(Request::from_parts(metadata, extensions, message)).await?;
                    Ok(Bytes::from(answer.into_inner().encode_to_vec()))
                })
            }),
        );
    }
}

/// Registers `$service`'s methods: `"/path" => method` each.
macro_rules! methods {
    ($direct:expr, $service:expr, $($path:literal => $method:ident),+ $(,)?) => {
        $({
            let service = Arc::clone($service);
            $direct.add($path, move |request| {
                let service = Arc::clone(&service);
                async move { service.$method(request).await }
            });
        })+
    };
}

impl Direct {
    /// google.longrunning.Operations.
    pub fn operations(&mut self, service: &Arc<OperationsService>) {
        methods!(self, service,
            "/google.longrunning.Operations/ListOperations" => list_operations,
            "/google.longrunning.Operations/GetOperation" => get_operation,
            "/google.longrunning.Operations/DeleteOperation" => delete_operation,
            "/google.longrunning.Operations/CancelOperation" => cancel_operation,
            "/google.longrunning.Operations/WaitOperation" => wait_operation,
        );
    }

    /// longrun.v1.ReportService (its unary methods).
    pub fn reports(&mut self, service: &Arc<ReportsService>) {
        methods!(self, service,
            "/longrun.v1.ReportService/CreateReport" => create_report,
            "/longrun.v1.ReportService/GetReport" => get_report,
        );
    }

    /// longrun.v1.Notifications.
    pub fn notifications(&mut self, service: &Arc<NotificationsService>) {
        methods!(self, service,
            "/longrun.v1.Notifications/ListDeliveries" => list_deliveries,
        );
    }

    /// longrun.v1.Jobs.
    pub fn jobs(&mut self, service: &Arc<WorkersService>) {
        methods!(self, service, "/longrun.v1.Jobs/Enqueue" => enqueue);
    }

    /// longrun.v1.Console.
    pub fn console(&mut self, service: &Arc<ConsoleService>) {
        methods!(self, service,
            "/longrun.v1.Console/GetCaller" => get_caller,
            "/longrun.v1.Console/GetQueueStats" => get_queue_stats,
        );
    }

    /// longrun.v1.Queues.
    pub fn queues(&mut self, service: &Arc<QueuesService>) {
        methods!(self, service,
            "/longrun.v1.Queues/PauseQueue" => pause_queue,
            "/longrun.v1.Queues/ResumeQueue" => resume_queue,
            "/longrun.v1.Queues/SetLimit" => set_limit,
            "/longrun.v1.Queues/DeleteLimit" => delete_limit,
            "/longrun.v1.Queues/ListLimits" => list_limits,
        );
    }

    /// longrun.v1.Schedules.
    pub fn schedules(&mut self, service: &Arc<SchedulesService>) {
        methods!(self, service,
            "/longrun.v1.Schedules/CreateSchedule" => create_schedule,
            "/longrun.v1.Schedules/GetSchedule" => get_schedule,
            "/longrun.v1.Schedules/ListSchedules" => list_schedules,
            "/longrun.v1.Schedules/UpdateSchedule" => update_schedule,
            "/longrun.v1.Schedules/DeleteSchedule" => delete_schedule,
            "/longrun.v1.Schedules/PauseSchedule" => pause_schedule,
            "/longrun.v1.Schedules/ResumeSchedule" => resume_schedule,
            "/longrun.v1.Schedules/RunNow" => run_now,
            "/longrun.v1.Schedules/ListRuns" => list_runs,
            "/longrun.v1.Schedules/Backfill" => backfill,
        );
    }

    /// longrun.v1.Batches and longrun.v1.Bulk (their unary methods).
    pub fn batches(&mut self, service: &Arc<BatchesService>) {
        methods!(self, service,
            "/longrun.v1.Batches/CreateBatch" => create_batch,
            "/longrun.v1.Bulk/CancelMatching" => cancel_matching,
            "/longrun.v1.Bulk/DeleteMatching" => delete_matching,
            "/longrun.v1.Bulk/RetryMatching" => retry_matching,
            "/longrun.v1.Bulk/RetryOperation" => retry_operation,
        );
    }

    /// longrun.v1.Diagnostics.
    pub fn diagnostics(&mut self, service: &Arc<DiagnosticsService>) {
        methods!(self, service, "/longrun.v1.Diagnostics/Sleep" => sleep);
    }
}
