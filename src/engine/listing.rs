//! List: the caller's filter, narrowed to its tenant, over one page of the
//! store, with a signed token to the next page.

use super::{Engine, EngineError};
use crate::model::{Filter, Operation, Scope};
use crate::store::ListQuery;

/// The default List page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest List page; bigger requests are cut down to it.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The most records one List page examines when a filter is selective.
pub const LIST_SCAN_BUDGET: usize = 10_000;
/// The longest filter accepted.
pub const MAX_FILTER_LEN: usize = 1024;
/// About the most bytes of operations one page holds: a page of large
/// responses is cut short (it always holds one), so that it stays well
/// within the message size clients accept by default (4 MiB).
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// A page of operations.
#[derive(Debug, Clone, Default)]
pub struct OperationPage {
    /// Newest first.
    pub operations: Vec<Operation>,
    /// Empty on the last page.
    pub next_page_token: String,
}

impl Engine {
    /// Lists the operations `scope` reaches, newest first. A caller
    /// confined to one tenant has that tenant added to its filter, so page
    /// tokens (bound to the filter) cannot cross tenants.
    pub async fn list(
        &self,
        scope: &Scope,
        filter: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<OperationPage, EngineError> {
        let limit = match page_size {
            n if n < 0 => {
                return Err(EngineError::invalid(
                    "page_size",
                    format!("page_size must not be negative (got {n})"),
                ));
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        if filter.len() > MAX_FILTER_LEN {
            return Err(EngineError::invalid(
                "filter",
                format!(
                    "filter is {} bytes long; the limit is {MAX_FILTER_LEN}",
                    filter.len()
                ),
            ));
        }
        let mut filter =
            Filter::parse(filter).map_err(|e| EngineError::invalid("filter", e.to_string()))?;
        if let Scope::Tenant(tenant) = scope {
            filter.restrict_to_tenant(tenant);
        }
        let tokens = &self.inner.page_tokens;
        let after = if page_token.is_empty() {
            None
        } else {
            Some(
                tokens
                    .open(page_token, &filter)
                    .map_err(|e| EngineError::invalid("page_token", e.to_string()))?,
            )
        };
        let mut page = self
            .inner
            .ops
            .list(ListQuery {
                after,
                tenant: match scope {
                    Scope::Tenant(tenant) if !tenant.is_default() => Some(tenant),
                    _ => None,
                },
                parent: filter.parent(),
                filter: &filter,
                limit,
                scan_budget: LIST_SCAN_BUDGET.max(limit),
            })
            .await
            .map_err(EngineError::from)?;
        let mut bytes = 0;
        let fits = page.operations.iter().position(|op| {
            bytes += op.size_hint();
            bytes > MAX_PAGE_BYTES
        });
        if let Some(cut) = fits.map(|at| at.max(1))
            && cut < page.operations.len()
        {
            page.operations.truncate(cut);
            page.resume_after = page.operations.last().map(|op| op.id);
        }
        Ok(OperationPage {
            next_page_token: page
                .resume_after
                .map(|id| tokens.issue(id, &filter))
                .unwrap_or_default(),
            operations: page.operations,
        })
    }
}
