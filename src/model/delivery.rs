//! Webhook deliveries as the domain sees them: the durable records (the
//! outbox) that an operation's state changes produce. Which changes produce
//! one is decided in `transition`; sending them is the `webhook` module's
//! job.

use std::time::SystemTime;

use uuid::Uuid;

use super::id::OperationId;
use super::operation::{Operation, State};

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver took it.
    Delivered,
    /// Every attempt failed.
    Failed,
    /// The receiver said 410 Gone.
    Disabled,
}

impl DeliveryState {
    /// A small number for storage.
    pub fn as_u8(self) -> u8 {
        match self {
            DeliveryState::Pending => 1,
            DeliveryState::Delivered => 2,
            DeliveryState::Failed => 3,
            DeliveryState::Disabled => 4,
        }
    }

    /// The inverse of `as_u8`.
    pub fn from_u8(value: u8) -> Option<Self> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
            DeliveryState::Disabled,
        ]
        .into_iter()
        .find(|s| s.as_u8() == value)
    }
}

/// One event to deliver to one callback URL, with its attempts so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Unique per event, the same on every attempt (the webhook-id).
    pub id: Uuid,
    pub operation: OperationId,
    /// The state the operation reached.
    pub event: State,
    /// The operation as it was at that moment: the body of every attempt.
    pub snapshot: Operation,
    pub callback_url: String,
    pub create_time: SystemTime,
    pub state: DeliveryState,
    pub attempts: u32,
    /// When the next attempt is due, while pending.
    pub next_attempt: Option<SystemTime>,
    /// The HTTP status of the last attempt, 0 when none was received.
    pub last_status_code: u16,
    pub last_error: String,
}

impl Delivery {
    /// A new pending delivery for `snapshot` reaching its state, due now.
    pub fn new(snapshot: &Operation, now: SystemTime) -> Option<Self> {
        let notification = snapshot.notification.as_ref()?;
        Some(Self {
            id: Uuid::now_v7(),
            operation: snapshot.id,
            event: snapshot.state,
            snapshot: snapshot.clone(),
            callback_url: notification.callback_url.clone(),
            create_time: now,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt: Some(now),
            last_status_code: 0,
            last_error: String::new(),
        })
    }

    /// The event type, such as `operation.succeeded`.
    pub fn event_type(&self) -> String {
        format!("operation.{}", self.event.as_str().to_ascii_lowercase())
    }

    /// The webhook-id header value.
    pub fn webhook_id(&self) -> String {
        format!("msg_{}", self.id.simple())
    }
}
