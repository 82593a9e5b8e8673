//! Bulk actions: cancel, delete or retry every operation of a tenant that
//! a filter matches, as the work of one operation.
//!
//! The action walks its set newest first, from its own operation back
//! (so operations created after it never join the set), a page at a time.
//! Each page's edits and the tally that counts them are one store write
//! ([`Write::Bulk`]): the tally on the action's operation is the
//! checkpoint, and an action resumed after a crash or a lost lease starts
//! from the page after the last one stored, with counts that match what
//! was done.

use super::task::TaskContext;
use super::{Engine, EngineError};
use crate::model::{
    Attempt, BulkAction, Claim, FieldViolation, Filter, Operation, OperationId, Scope, State,
    Tally, Tenant,
};
use crate::store::{Applied, BulkPage, ListPage, ListQuery, Write};

/// Operations one page of a bulk action handles.
pub const BULK_PAGE: usize = 500;
/// The most records one page examines when the filter is selective.
const BULK_SCAN_BUDGET: usize = 10_000;
/// The longest filter a bulk action takes.
pub const MAX_BULK_FILTER_LEN: usize = 1024;

/// A bulk action's filter as the caller wrote it: required, and parsed.
pub fn bulk_filter(filter: &str) -> Result<Filter, FieldViolation> {
    if filter.trim().is_empty() {
        return Err(FieldViolation::new(
            "filter",
            "a bulk action needs a filter (\"done = true\", say, for every done operation)",
        ));
    }
    if filter.len() > MAX_BULK_FILTER_LEN {
        return Err(FieldViolation::new(
            "filter",
            format!("the filter is longer than {MAX_BULK_FILTER_LEN} bytes"),
        ));
    }
    Filter::parse(filter).map_err(|e| FieldViolation::new("filter", e.to_string()))
}

impl Engine {
    /// Runs the bulk action of `ctx`'s operation to its end (or until it
    /// is cancelled), from where its tally says it got to; returns the
    /// tally it reached.
    pub async fn run_bulk(
        &self,
        ctx: &TaskContext,
        action: BulkAction,
        filter: &str,
    ) -> Result<Tally, EngineError> {
        let tenant = ctx.tenant().clone();
        let mut filter = bulk_filter(filter).map_err(|v| EngineError::InvalidArgument {
            violations: vec![v],
        })?;
        filter.restrict_to_tenant(&tenant);
        let own = self
            .get(&Scope::Tenant(tenant.clone()), ctx.operation_id())
            .await?;
        let claim = Claim {
            id: own.id,
            attempt: Attempt::new(ctx.attempt()),
        };
        let mut tally = own.bulk.as_deref().cloned().unwrap_or_default();
        if tally.cursor.is_none() && !tally.walked {
            // First the set is counted, for a progress bar with an end.
            tally.total = self.count_matching(&own, &tenant, &filter).await?;
            tally = self.bulk_page(claim, action, Vec::new(), tally).await?;
        }
        // A cancelled action stops between pages; the caller sees that
        // its context was cancelled.
        while !tally.walked && !ctx.is_cancelled() {
            let page = self
                .matching_page(&tenant, &filter, tally.cursor.unwrap_or(own.id))
                .await?;
            let mut next = tally.clone();
            next.matched += page.operations.len() as u64;
            next.cursor = page.resume_after.or(tally.cursor);
            next.walked = page.resume_after.is_none();
            let mut items = Vec::with_capacity(page.operations.len());
            for op in page.operations {
                match self.prepare_item(action, &op).await? {
                    true => items.push(op.id),
                    false => next.skipped += 1,
                }
            }
            tally = self.bulk_page(claim, action, items, next).await?;
        }
        Ok(tally)
    }

    /// How many operations older than the action `own` match.
    async fn count_matching(
        &self,
        own: &Operation,
        tenant: &Tenant,
        filter: &Filter,
    ) -> Result<u64, EngineError> {
        let (mut count, mut after) = (0, own.id);
        loop {
            let page = self.matching_page(tenant, filter, after).await?;
            count += page.operations.len() as u64;
            match page.resume_after {
                Some(next) => after = next,
                None => return Ok(count),
            }
        }
    }

    async fn matching_page(
        &self,
        tenant: &Tenant,
        filter: &Filter,
        after: OperationId,
    ) -> Result<ListPage, EngineError> {
        Ok(self
            .inner
            .ops
            .list(ListQuery {
                after: Some(after),
                tenant: (!tenant.is_default()).then_some(tenant),
                parent: filter.parent(),
                filter,
                limit: BULK_PAGE,
                scan_budget: BULK_SCAN_BUDGET,
            })
            .await?)
    }

    /// Gets an operation ready for the action, outside the store: whether
    /// the action may apply to it at all (its kind allows a retry), and,
    /// for a delete, its children and files gone first.
    async fn prepare_item(&self, action: BulkAction, op: &Operation) -> Result<bool, EngineError> {
        match action {
            BulkAction::Cancel => Ok(!op.is_done()),
            BulkAction::Retry => {
                Ok(matches!(op.state, State::Failed | State::Cancelled) && self.redrivable(op))
            }
            BulkAction::Delete if !op.is_done() => Ok(false),
            BulkAction::Delete => {
                if op.is_batch() {
                    self.delete_children(op.id).await?;
                }
                self.inner.expire_artifacts(op).await;
                Ok(true)
            }
        }
    }

    /// Stores one page and its tally; tells the attempts of what it
    /// cancelled.
    async fn bulk_page(
        &self,
        claim: Claim,
        action: BulkAction,
        items: Vec<OperationId>,
        tally: Tally,
    ) -> Result<Tally, EngineError> {
        let inner = &self.inner;
        let page = BulkPage {
            claim,
            action,
            items,
            tally,
        };
        match inner.committer.write(Write::Bulk(Box::new(page))).await {
            Ok(Applied::Bulk { operation, changed }) => {
                if action == BulkAction::Cancel {
                    for op in &changed {
                        if op.state == State::Cancelled {
                            inner.finished(op, "cancelled");
                        }
                        inner.deliver_cancellation(op);
                    }
                }
                Ok(operation.bulk.map(|t| *t).unwrap_or_default())
            }
            Ok(other) => Err(super::unexpected(&other)),
            Err(e) => Err(EngineError::from_store(claim.id.name(), e)),
        }
    }

    /// Whether the kind of `op` lets a client put it back in the queue.
    pub(super) fn redrivable(&self, op: &Operation) -> bool {
        self.inner
            .kind(&op.tenant, &op.kind)
            .is_none_or(|kind| kind.policy.redrive)
    }
}
