//! The webhook outbox in sled: deliveries, with indexes by due time and by
//! operation, in the `outbox` tree.

use std::time::SystemTime;

use async_trait::async_trait;

use super::{SledStore, abort, backend, keys, tx_error};
use crate::model::{Delivery, DeliveryState, OperationId};
use crate::store::codec::{decode_delivery, encode_delivery};
use crate::store::{Change, OutboxStore, StoreResult};

#[async_trait]
impl OutboxStore for SledStore {
    async fn due_deliveries(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<Delivery>> {
        let outbox = &self.inner.outbox;
        let mut out = Vec::new();
        for entry in outbox
            .range(b"q".to_vec()..=keys::outbox::due_by(now))
            .take(limit)
        {
            let (key, _) = entry.map_err(backend)?;
            match outbox.get(keys::outbox::record_of(&key)).map_err(backend)? {
                Some(bytes) => out.push(decode_delivery(&bytes)?),
                // The record went with its operation; drop the index entry.
                None => {
                    outbox.remove(&key).map_err(backend)?;
                }
            }
        }
        Ok(out)
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<SystemTime>> {
        let first = self
            .inner
            .outbox
            .scan_prefix(b"q")
            .next()
            .transpose()
            .map_err(backend)?;
        Ok(first.and_then(|(key, _)| keys::outbox::due_time(&key)))
    }

    async fn save_delivery(&self, delivery: &Delivery) -> StoreResult<()> {
        let record_key = keys::outbox::record(delivery);
        self.inner
            .outbox
            .transaction(|outbox| {
                if let Some(old) = outbox.get(&record_key)? {
                    let old = match decode_delivery(&old) {
                        Ok(old) => old,
                        Err(e) => return abort(e),
                    };
                    if let Some(due) = keys::outbox::due(&old) {
                        outbox.remove(due)?;
                    }
                }
                outbox.insert(record_key.as_slice(), encode_delivery(delivery))?;
                if delivery.state == DeliveryState::Pending
                    && let Some(due) = keys::outbox::due(delivery)
                {
                    outbox.insert(due, &[])?;
                }
                outbox.insert(keys::outbox::by_operation(delivery), &[])?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.persist().await?;
        self.announce(Change::Delivery(delivery.operation));
        Ok(())
    }

    async fn deliveries(&self, id: OperationId) -> StoreResult<Vec<Delivery>> {
        let outbox = &self.inner.outbox;
        let mut out = Vec::new();
        for entry in outbox.scan_prefix(keys::outbox::operation_prefix(id)) {
            let (key, _) = entry.map_err(backend)?;
            if let Some(bytes) = outbox.get(keys::outbox::record_of(&key)).map_err(backend)? {
                out.push(decode_delivery(&bytes)?);
            }
        }
        Ok(out)
    }
}
