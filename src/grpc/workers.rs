//! longrun.v1.Jobs and longrun.v1.Workers: work served by outside
//! processes. Jobs/Enqueue creates operations of declared outside kinds;
//! Workers is what the workers call: a Lease stream that declares their
//! kinds and receives assignments and cancellations, and Heartbeat,
//! Complete and Fail, each naming the attempt it is about. The engine
//! (`engine::outside`) holds the leases and fences the attempts.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, stream};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{audit, caller, created_name, trace};
use super::status::{invalid_field, kind_not_allowed, stalled, unknown_kind};
use crate::engine::batches::ChildDraft;
use crate::engine::{
    Engine, KindSpec, LeaseRef, Owner, SubmitOptions, TaskError, ToWorker, WorkerCaller, WorkerSpec,
};
use crate::model::{Attempt, FieldViolation, Progress, Reason, Tenant};
use crate::pb::convert;
use crate::pb::google::longrunning::Operation;
use crate::pb::longrun::v1::jobs_server::Jobs;
use crate::pb::longrun::v1::lease_request::Message as FromWorker;
use crate::pb::longrun::v1::lease_response::Message as ForWorker;
use crate::pb::longrun::v1::workers_server::Workers;
use crate::pb::longrun::v1::{
    Assignment, Cancellation, CompleteRequest, CompleteResponse, EnqueueRequest, FailRequest,
    FailResponse, HeartbeatRequest, HeartbeatResponse, KindDeclaration, LeaseRequest,
    LeaseResponse,
};

/// How long a Lease stream may wait for its opening message.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The Jobs and Workers services.
#[derive(Clone)]
pub struct WorkersService {
    engine: Engine,
}

impl WorkersService {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

/// A declaration from the wire, with zeros meaning the defaults.
fn kind_spec(declaration: &KindDeclaration) -> Result<KindSpec, Status> {
    let mut spec = KindSpec::new(declaration.name.clone());
    if declaration.max_attempts < 0 || declaration.concurrency < 0 {
        return Err(invalid_field(
            "subscribe.kinds",
            "max_attempts and concurrency are not negative",
        ));
    }
    if declaration.max_attempts > 0 {
        spec.max_attempts = declaration.max_attempts as u32;
    }
    if declaration.concurrency > 0 {
        spec.concurrency = Some(declaration.concurrency as usize);
    }
    if let Some(timeout) = &declaration.attempt_timeout {
        let timeout = convert::duration("subscribe.kinds.attempt_timeout", timeout)?;
        if !timeout.is_zero() {
            spec.attempt_timeout = timeout;
        }
    }
    if let Some(lease) = &declaration.lease_duration {
        let lease = convert::duration("subscribe.kinds.lease_duration", lease)?;
        if !lease.is_zero() {
            spec.lease = lease;
        }
    }
    Ok(spec)
}

/// The most kinds one Lease stream may serve.
const MAX_KINDS_PER_STREAM: usize = 64;

/// The lease a worker's call names, from the wire: the operation, the
/// attempt and the token its assignment gave.
fn lease_ref(name: &str, attempt: i32, token: String) -> Result<LeaseRef, Status> {
    let id = convert::operation_id("name", name)?;
    let attempt = u32::try_from(attempt)
        .ok()
        .filter(|a| *a > 0)
        .map(Attempt::new)
        .ok_or_else(|| {
            invalid_field(
                "attempt",
                "attempt is the positive number the assignment gave",
            )
        })?;
    if token.is_empty() || token.len() > 64 {
        return Err(invalid_field(
            "lease_token",
            "lease_token is the token the assignment gave",
        ));
    }
    Ok(LeaseRef { id, attempt, token })
}

type LeaseStream = Pin<Box<dyn Stream<Item = Result<LeaseResponse, Status>> + Send>>;

/// A message for the worker, on the wire.
fn to_wire(message: ToWorker) -> LeaseResponse {
    let message = match message {
        ToWorker::Assign(a) => {
            let (traceparent, tracestate) = a
                .trace
                .as_ref()
                .map(crate::telemetry::to_headers)
                .unwrap_or_default();
            ForWorker::Assignment(Assignment {
                name: a.id.name(),
                attempt: a.attempt.get() as i32,
                kind: a.kind,
                tenant: a.tenant.as_str().to_owned(),
                payload: Some(convert::to_any(&a.payload)),
                lease_expire_time: Some(crate::pb::timestamp(a.lease_expires)),
                deadline: Some(crate::pb::timestamp(a.deadline)),
                max_attempts: a.max_attempts as i32,
                lease_token: a.lease_token,
                traceparent,
                tracestate: tracestate.unwrap_or_default(),
            })
        }
        ToWorker::Cancel { id, attempt } => ForWorker::Cancellation(Cancellation {
            name: id.name(),
            attempt: attempt.get() as i32,
        }),
    };
    LeaseResponse {
        message: Some(message),
    }
}

/// A job's payload or result as stored; an absent one is stored as Empty,
/// so the operation still has a request or response to show.
fn or_empty(any: Option<&prost_types::Any>) -> crate::model::Payload {
    any.map(convert::from_any)
        .unwrap_or_else(|| crate::model::Payload::pack(&()))
}

/// An Enqueue request as the engine's create of it, in `tenant`: alone,
/// or as a batch's child.
pub(super) fn enqueued(
    tenant: &Tenant,
    req: &EnqueueRequest,
) -> Result<ChildDraft, FieldViolation> {
    let max_attempts = match req.max_attempts {
        n if n < 0 => {
            return Err(FieldViolation::new(
                "max_attempts",
                "max_attempts is not negative",
            ));
        }
        0 => None,
        n => Some(n as u32),
    };
    Ok(ChildDraft {
        kind: req.kind.clone(),
        request: or_empty(req.payload.as_ref()),
        options: SubmitOptions {
            tenant: tenant.clone(),
            request_id: convert::request_id(&req.request_id)?,
            notification: convert::notification(req.notification.as_ref())?,
            run: convert::run_spec(req.run.as_ref(), std::time::SystemTime::now())?,
            timeout: req
                .timeout
                .as_ref()
                .map(|t| convert::duration("timeout", t))
                .transpose()?,
            max_attempts,
            ..SubmitOptions::default()
        },
    })
}

#[tonic::async_trait]
impl Jobs for WorkersService {
    async fn enqueue(
        &self,
        request: Request<EnqueueRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let trace = trace(&request);
        let req = request.into_inner();
        let result = async {
            let mut draft = enqueued(&caller.tenant, &req)?;
            draft.options.trace = trace;
            if !self
                .engine
                .find_outside_kind(&caller.tenant, &req.kind)
                .await?
            {
                return Err(unknown_kind(&req.kind));
            }
            let op = self
                .engine
                .submit_payload(&draft.kind, draft.request, draft.options)
                .await?;
            Ok(Response::new(convert::operation(&op)))
        }
        .await;
        audit(&caller, "Enqueue", created_name(&result), &result);
        result
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    type LeaseStream = LeaseStream;

    async fn lease(
        &self,
        request: Request<Streaming<LeaseRequest>>,
    ) -> Result<Response<Self::LeaseStream>, Status> {
        let caller = caller(&request)?;
        let mut incoming = request.into_inner();
        let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, incoming.message())
            .await
            .map_err(|_| stalled(Reason::SubscribeStalled, SUBSCRIBE_TIMEOUT))??
            .and_then(|m| m.message)
            .ok_or_else(|| invalid_field("subscribe", "a Lease stream opens with a Subscribe"))?;
        let FromWorker::Subscribe(subscribe) = first else {
            return Err(invalid_field(
                "subscribe",
                "a Lease stream opens with a Subscribe",
            ));
        };
        let capacity = usize::try_from(subscribe.capacity)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| invalid_field("subscribe.capacity", "capacity is at least 1"))?;
        if subscribe.kinds.len() > MAX_KINDS_PER_STREAM {
            return Err(invalid_field(
                "subscribe.kinds",
                format!("a worker serves at most {MAX_KINDS_PER_STREAM} kinds per stream"),
            ));
        }
        // An admin's worker declares kinds for every tenant; any other
        // worker, for its own tenant alone.
        let tenant = caller.scope().tenant().cloned();
        let owner = tenant.clone().map_or(Owner::Everyone, Owner::Tenant);
        let mut kinds = Vec::with_capacity(subscribe.kinds.len());
        for declaration in &subscribe.kinds {
            if !caller.may_serve(&declaration.name) {
                return Err(kind_not_allowed(&caller, &declaration.name));
            }
            let declared = async {
                let spec = kind_spec(declaration)?;
                Ok(self.engine.declare_kind(owner.clone(), spec).await?)
            }
            .await;
            // A declaration made, or refused, is a change worth auditing.
            if !matches!(declared, Ok((_, false))) {
                audit(&caller, "DeclareKind", &declaration.name, &declared);
            }
            declared?;
            kinds.push(declaration.name.clone());
        }
        let spec = WorkerSpec {
            name: if subscribe.worker_name.is_empty() {
                caller.name.clone()
            } else {
                subscribe.worker_name.clone()
            },
            principal: caller.name.clone(),
            kinds,
            capacity,
            tenant,
        };
        let session = self.engine.connect_worker(spec)?;
        // The session lives as long as the response stream: it reads the
        // worker's later messages (credits) and forwards assignments. When
        // the worker goes, the stream is dropped, and the session with it.
        let stream = stream::unfold(
            (session, incoming),
            |(mut session, mut incoming)| async move {
                loop {
                    tokio::select! {
                        message = session.next() => {
                            let message = message?;
                            return Some((Ok(to_wire(message)), (session, incoming)));
                        }
                        from_worker = incoming.message() => match from_worker {
                            Ok(Some(LeaseRequest { message: Some(FromWorker::Credits(c)) })) => {
                                session.add_credits(usize::try_from(c.count).unwrap_or(0));
                            }
                            Ok(Some(_)) => {}
                            // The worker closed its side or went away: its
                            // leases end with the session.
                            Ok(None) | Err(_) => return None,
                        },
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let lease = lease_ref(&req.name, req.attempt, req.lease_token)?;
        let progress = Progress {
            percent: u32::try_from(req.progress_percent.clamp(0, 100)).unwrap_or(0),
            message: req.status_message,
        };
        let may_serve = |kind: &str| caller.may_serve(kind);
        let worker = WorkerCaller {
            scope: caller.scope(),
            may_serve: &may_serve,
        };
        let (expires, cancel_requested) = self.engine.heartbeat(&worker, &lease, progress).await?;
        Ok(Response::new(HeartbeatResponse {
            lease_expire_time: Some(crate::pb::timestamp(expires)),
            cancel_requested,
        }))
    }

    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            let lease = lease_ref(&req.name, req.attempt, req.lease_token.clone())?;
            let response = or_empty(req.response.as_ref());
            let may_serve = |kind: &str| caller.may_serve(kind);
            let worker = WorkerCaller {
                scope: caller.scope(),
                may_serve: &may_serve,
            };
            self.engine
                .finish_outside(&worker, &lease, Ok(response))
                .await?;
            Ok(Response::new(CompleteResponse {}))
        }
        .await;
        audit(&caller, "Complete", &req.name, &result);
        result
    }

    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<FailResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            let lease = lease_ref(&req.name, req.attempt, req.lease_token.clone())?;
            let status = req
                .error
                .as_ref()
                .ok_or_else(|| invalid_field("error", "a Fail carries the error"))?;
            let error = convert::operation_error(status)?;
            let failure = TaskError {
                error,
                retryable: req.retryable,
            };
            let may_serve = |kind: &str| caller.may_serve(kind);
            let worker = WorkerCaller {
                scope: caller.scope(),
                may_serve: &may_serve,
            };
            self.engine
                .finish_outside(&worker, &lease, Err(failure))
                .await?;
            Ok(Response::new(FailResponse {}))
        }
        .await;
        audit(&caller, "Fail", &req.name, &result);
        result
    }
}
