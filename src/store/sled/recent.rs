//! The records written most recently, kept in memory.
//!
//! Reads of live operations (the ones clients poll, and the ones a commit
//! is about to change) are answered from here, so they neither decode a
//! record nor wait for sled: while a batch is applied, sled holds every
//! reader back. The entries are the same `Arc`s the change feed carries.
//! The oldest go first once the cache is full; a record that is not here is
//! read from the tree as before.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::model::{Operation, OperationId};

/// How many records are kept.
pub(super) const CAPACITY: usize = 32 * 1024;

/// Recently written records, oldest first out.
#[derive(Default)]
pub(super) struct Recent {
    /// Each record with the generation it was stored at.
    records: HashMap<OperationId, (u64, Arc<Operation>)>,
    /// Ids in the order they were stored; an entry whose generation no
    /// longer matches was stored again later and is skipped.
    order: VecDeque<(OperationId, u64)>,
    generation: u64,
}

impl Recent {
    /// The record of `id`, if it is here.
    pub(super) fn get(&self, id: &OperationId) -> Option<Arc<Operation>> {
        self.records.get(id).map(|(_, op)| Arc::clone(op))
    }

    /// Keeps `op` as its record's latest version.
    pub(super) fn put(&mut self, op: Arc<Operation>) {
        self.generation += 1;
        self.order.push_back((op.id, self.generation));
        self.records.insert(op.id, (self.generation, op));
        while self.records.len() > CAPACITY {
            let Some((id, generation)) = self.order.pop_front() else {
                break;
            };
            if self.records.get(&id).is_some_and(|(g, _)| *g == generation) {
                self.records.remove(&id);
            }
        }
        // Stale order entries pile up when records are stored over and
        // over; drop them once they outnumber the records.
        if self.order.len() > 2 * CAPACITY {
            let records = &self.records;
            self.order
                .retain(|(id, generation)| records.get(id).is_some_and(|(g, _)| g == generation));
        }
    }

    /// Forgets a deleted record.
    pub(super) fn remove(&mut self, id: &OperationId) {
        self.records.remove(id);
    }
}
