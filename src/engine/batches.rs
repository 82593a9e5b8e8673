//! Batches as callers see them, and the redrive of one operation.
//!
//! A batch is made the same way whether its children come in one call or
//! streamed: its parent is stored first, still open (and, on a shared
//! store, leased to this node, so that another node seals it should this
//! one die), then the children in chunks, each chunk one commit whose
//! roll-up lands on the parent with it, then the seal. A batch whose
//! children cannot all be added is sealed as it is and fails once the
//! children it has end ([`OpenBatch::abandon`]).
//!
//! The cascade (`cascade.rs`) cancels the children of a cancelled or
//! failing batch; deleting a done batch deletes its children first.

use std::collections::HashMap;
use std::time::Duration;

use super::admission::Reservation;
use super::{Engine, EngineError, SubmitOptions};
use crate::model::{
    Edit, Filter, Lease, MAX_BATCH_DEPTH, Notification, Operation, OperationId, Payload, Policy,
    Reason, Scope, Tenant, TraceContext,
};
use crate::store::{Applied, Created, ListQuery, Write};

/// Children added in one commit.
pub const BATCH_CHUNK: usize = 500;
/// The most children one batch takes.
pub const MAX_BATCH_CHILDREN: u64 = 1_000_000;
/// How long an open batch's lease lasts without a new chunk: a stream
/// quiet for longer loses its batch, which another node then seals.
pub const OPEN_BATCH_LEASE: Duration = Duration::from_secs(120);
/// How long a child waits for room in a full queue before the batch
/// gives up.
const ROOM_WAIT: Duration = Duration::from_secs(300);

/// What a batch is asked to be.
#[derive(Debug, Clone, Default)]
pub struct BatchDraft {
    pub tenant: Tenant,
    pub policy: Policy,
    /// The batch it joins as a child (nesting), still open.
    pub parent: Option<OperationId>,
    /// A webhook called when the whole batch ends.
    pub notification: Option<Notification>,
    /// The caller's span, which the batch's create continues; its
    /// children's attempts continue the batch's.
    pub trace: Option<TraceContext>,
}

/// One child, as its create would be asked.
#[derive(Debug, Clone)]
pub struct ChildDraft {
    pub kind: String,
    pub request: Payload,
    /// Its own options; the tenant and parent are the batch's.
    pub options: SubmitOptions,
}

/// A batch being filled.
pub struct OpenBatch {
    engine: Engine,
    parent: Operation,
    added: u64,
}

impl Engine {
    /// Creates a batch's parent, open for children.
    pub async fn open_batch(&self, draft: BatchDraft) -> Result<OpenBatch, EngineError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let depth = match draft.parent {
            None => 0,
            Some(id) => {
                let outer = self.get(&Scope::Tenant(draft.tenant.clone()), id).await?;
                let rollup = outer
                    .takes_children()
                    .map_err(|rejection| EngineError::from_store(id.name(), rejection.into()))?;
                if rollup.depth + 1 >= MAX_BATCH_DEPTH {
                    return Err(EngineError::FailedPrecondition {
                        reason: Reason::BatchTooDeep,
                        message: format!("batches nest at most {MAX_BATCH_DEPTH} deep"),
                    });
                }
                rollup.depth + 1
            }
        };
        self.check_callback(draft.notification.as_ref()).await?;
        let now = inner.clock.now();
        let lease = inner.ops.shared().then(|| Lease {
            holder: inner.config.node.clone(),
            expires: now + OPEN_BATCH_LEASE,
        });
        let mut op = Operation::new_batch(draft.tenant, draft.policy, depth, false, lease, now);
        op.notification = draft.notification;
        op.parent = draft.parent;
        let span = tracing::debug_span!(
            "create",
            kind = op.kind.as_str(),
            tenant = op.tenant.as_str()
        );
        crate::telemetry::adopt(&span, draft.trace.as_ref());
        op.trace = crate::telemetry::context_of(&span)
            .or(draft.trace)
            .map(Box::new);
        let name = op.id.name();
        let parent = match inner.committer.write(Write::Create(op)).await {
            Ok(Applied::Created(Created::New(op))) => op,
            Ok(other) => return Err(super::unexpected(&other)),
            Err(e) => return Err(EngineError::from_store(name, e)),
        };
        inner.config.metrics.created(&parent.kind);
        Ok(OpenBatch {
            engine: self.clone(),
            parent,
            added: 0,
        })
    }

    /// Puts a failed, cancelled or aborted operation back in the queue, as
    /// attempt + 1 with its history kept, when its kind allows.
    pub async fn retry(&self, scope: &Scope, id: OperationId) -> Result<Operation, EngineError> {
        let op = self.get(scope, id).await?;
        if !self.redrivable(&op) {
            return Err(EngineError::FailedPrecondition {
                reason: Reason::KindNotRetryable,
                message: format!("operations of kind {} cannot be retried by hand", op.kind),
            });
        }
        self.inner.edit(id, Edit::Retry).await
    }

    /// Deletes the children of the batch `parent` (and theirs) a page at
    /// a time; refused at the first child not done.
    pub(super) async fn delete_children(&self, parent: OperationId) -> Result<(), EngineError> {
        let inner = &self.inner;
        let filter = Filter::default();
        loop {
            let page = inner
                .ops
                .list(ListQuery {
                    after: None,
                    tenant: None,
                    parent: Some(parent),
                    filter: &filter,
                    limit: BATCH_CHUNK,
                    scan_budget: BATCH_CHUNK,
                })
                .await?;
            if page.operations.is_empty() {
                return Ok(());
            }
            let mut writes = Vec::with_capacity(page.operations.len());
            for child in &page.operations {
                if !child.is_done() {
                    return Err(EngineError::FailedPrecondition {
                        reason: Reason::OperationNotDone,
                        message: format!("the batch's child {} is not done yet", child.id.name()),
                    });
                }
                if child.is_batch() {
                    Box::pin(self.delete_children(child.id)).await?;
                }
                inner.expire_artifacts(child).await;
                writes.push(Write::Purge(child.id));
            }
            for result in inner.committer.write_all(writes).await {
                result.map_err(EngineError::from)?;
            }
        }
    }
}

impl OpenBatch {
    /// The parent, as it was created.
    pub fn operation(&self) -> &Operation {
        &self.parent
    }

    /// Adds children, a chunk per commit. Each is checked as its own
    /// create would be; a queue too full to take one waits for room. A
    /// child whose request_id names an operation already stored is not
    /// added (that operation is not the batch's).
    pub async fn add(&mut self, children: Vec<ChildDraft>) -> Result<(), EngineError> {
        if self.added + children.len() as u64 > MAX_BATCH_CHILDREN {
            return Err(EngineError::FailedPrecondition {
                reason: Reason::BatchTooLarge,
                message: format!("a batch has at most {MAX_BATCH_CHILDREN} children"),
            });
        }
        let engine = self.engine.clone();
        let (tenant, parent) = (self.parent.tenant.clone(), self.parent.id);
        let trace = self.parent.trace.clone();
        let mut chunk = Vec::with_capacity(BATCH_CHUNK.min(children.len()));
        // Each child's room in the queue is held until its chunk is stored.
        let mut rooms = Vec::with_capacity(chunk.capacity());
        // Per kind, the children of this chunk not stored yet: ahead of a
        // new one of that kind in the queue.
        let mut ahead: HashMap<String, u64> = HashMap::new();
        for child in children {
            let behind = ahead.get(&child.kind).copied().unwrap_or(0);
            let (mut op, room) = prepare(&engine, &tenant, parent, child, behind).await?;
            *ahead.entry(op.kind.clone()).or_default() += 1;
            op.trace.clone_from(&trace);
            chunk.push(op);
            rooms.push(room);
            if chunk.len() == BATCH_CHUNK {
                self.store_chunk(std::mem::take(&mut chunk)).await?;
                rooms.clear();
                ahead.clear();
            }
        }
        if !chunk.is_empty() {
            self.store_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn store_chunk(&mut self, chunk: Vec<Operation>) -> Result<(), EngineError> {
        let inner = &self.engine.inner;
        let mut writes: Vec<Write> = chunk.into_iter().map(Write::Create).collect();
        if self.parent.lease.is_some() {
            writes.push(Write::Update {
                id: self.parent.id,
                edit: Edit::HoldOpen {
                    until: inner.clock.now() + OPEN_BATCH_LEASE,
                },
            });
        }
        for result in inner.committer.write_all(writes).await {
            match result {
                Ok(Applied::Created(Created::New(op))) => {
                    inner.config.metrics.created(&op.kind);
                    self.added += 1;
                }
                Ok(_) => {}
                Err(e) => return Err(EngineError::from_store(self.parent.id.name(), e)),
            }
        }
        Ok(())
    }

    /// Seals the batch: it ends once its children have.
    pub async fn seal(self) -> Result<Operation, EngineError> {
        self.engine
            .inner
            .edit(self.parent.id, Edit::Seal { complete: true })
            .await
    }

    /// Seals the batch as it is, to fail once the children it has end
    /// (the stream broke, or a child was refused). Nothing is lost if it
    /// fails: the batch's lease lapses, or the next start seals it.
    pub async fn abandon(self) {
        let id = self.parent.id;
        if let Err(e) = self
            .engine
            .inner
            .edit(id, Edit::Seal { complete: false })
            .await
        {
            tracing::warn!(operation = %id.name(), error = %e, "could not seal an abandoned batch");
        }
    }
}

/// Checks a child as its own create would be, waiting for room in a
/// queue too full to take it (a batch waits rather than fail half made).
async fn prepare<'e>(
    engine: &'e Engine,
    tenant: &Tenant,
    parent: OperationId,
    child: ChildDraft,
    behind: u64,
) -> Result<(Operation, Reservation<'e>), EngineError> {
    let mut options = child.options;
    options.tenant = tenant.clone();
    options.parent = Some(parent);
    if engine.inner.kind(tenant, &child.kind).is_none() {
        // An outside kind declared by a worker elsewhere is loaded now;
        // any other unknown kind is refused by the create's own checks.
        engine.find_outside_kind(tenant, &child.kind).await?;
    }
    let clock = &engine.inner.clock;
    let began = clock.now();
    loop {
        match engine
            .prepare(&child.kind, child.request.clone(), options.clone(), behind)
            .await
        {
            Err(EngineError::ResourceExhausted { retry_after, .. })
                if clock.now().duration_since(began).unwrap_or_default() < ROOM_WAIT =>
            {
                tokio::select! {
                    _ = engine.inner.shutdown.cancelled() => return Err(EngineError::ShuttingDown),
                    _ = tokio::time::sleep(retry_after.min(Duration::from_millis(200))) => {}
                }
            }
            other => return other,
        }
    }
}
