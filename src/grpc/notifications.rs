//! longrun.v1.Notifications: the webhook deliveries of an operation.

use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::pb::convert;
use crate::pb::longrun::v1::notifications_server::Notifications;
use crate::pb::longrun::v1::{ListDeliveriesRequest, ListDeliveriesResponse};

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
            deliveries: deliveries.iter().map(convert::delivery).collect(),
        }))
    }
}
