//! longrun.v1.Notifications: the webhook deliveries of an operation.

use tonic::{Request, Response, Status};

use super::convert;
use crate::engine::Engine;
use crate::engine::notify::{Delivery, DeliveryState};
use crate::pb::longrun::v1::delivery::DeliveryState as ProtoState;
use crate::pb::longrun::v1::notifications_server::Notifications;
use crate::pb::longrun::v1::{self as api, ListDeliveriesRequest, ListDeliveriesResponse};

/// The Notifications service.
#[derive(Clone)]
pub struct NotificationsService {
    engine: Engine,
}

impl NotificationsService {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

/// The public form of a delivery.
pub fn delivery(d: &Delivery) -> api::Delivery {
    api::Delivery {
        id: d.webhook_id(),
        r#type: d.event_type(),
        callback_url: d.callback_url.clone(),
        state: match d.state {
            DeliveryState::Pending => ProtoState::Pending,
            DeliveryState::Delivered => ProtoState::Delivered,
            DeliveryState::Failed => ProtoState::Failed,
            DeliveryState::Disabled => ProtoState::Disabled,
        } as i32,
        attempts: d.attempts as i32,
        last_status_code: i32::from(d.last_status_code),
        last_error: d.last_error.clone(),
        create_time: Some(convert::timestamp(d.create_time)),
        next_attempt_time: d.next_attempt.map(convert::timestamp),
    }
}

#[tonic::async_trait]
impl Notifications for NotificationsService {
    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let scope = super::auth::caller(&request)?.scope();
        let id = convert::operation_id("name", &request.get_ref().name)?;
        let deliveries = self.engine.deliveries(&scope, id).await?;
        Ok(Response::new(ListDeliveriesResponse {
            deliveries: deliveries.iter().map(delivery).collect(),
        }))
    }
}
