//! [`OutboxStore`] on sled: reads of the deliveries, their due index (`q`
//! keys) and their index by operation (`w` keys). Deliveries are written
//! by commits (`commit`).

use std::time::SystemTime;

use async_trait::async_trait;

use super::commit::backend;
use super::{SledStore, keys};
use crate::model::{Delivery, OperationId};
use crate::store::codec::decode_delivery;
use crate::store::{OutboxStore, StoreResult};

impl SledStore {
    /// The delivery an index key points at; None when it is gone.
    fn delivery_at(&self, index_key: &[u8]) -> StoreResult<Option<Delivery>> {
        match self
            .inner
            .tree
            .get(keys::delivery_of(index_key))
            .map_err(backend)?
        {
            Some(bytes) => {
                let strings = self.inner.strings.read().unwrap_or_else(|e| e.into_inner());
                decode_delivery(&bytes, &strings.stage()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn due_blocking(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Delivery>> {
        let mut out = Vec::new();
        let due = self
            .inner
            .tree
            .range([keys::DUE].as_slice()..=keys::due_by(now).as_slice());
        for entry in due {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(backend)?;
            if let Some(delivery) = self.delivery_at(&key)? {
                out.push(delivery);
            }
        }
        Ok(out)
    }

    fn of_operation_blocking(&self, id: OperationId) -> StoreResult<Vec<Delivery>> {
        let mut out = Vec::new();
        for entry in self.inner.tree.scan_prefix(keys::deliveries_of(id)) {
            let (key, _) = entry.map_err(backend)?;
            if let Some(delivery) = self.delivery_at(&key)? {
                out.push(delivery);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl OutboxStore for SledStore {
    async fn due_deliveries(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Delivery>> {
        self.off_thread(move |store| store.due_blocking(now, limit))
            .await
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<SystemTime>> {
        let first = self
            .inner
            .tree
            .scan_prefix([keys::DUE])
            .next()
            .transpose()
            .map_err(backend)?;
        Ok(first.and_then(|(key, _)| keys::time_of(&key[1..])))
    }

    async fn deliveries(&self, id: OperationId) -> StoreResult<Vec<Delivery>> {
        self.off_thread(move |store| store.of_operation_blocking(id))
            .await
    }
}
