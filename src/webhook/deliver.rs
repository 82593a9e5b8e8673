//! The deliverer: takes due deliveries from the outbox, POSTs them, and
//! records each attempt. It runs beside the engine and never holds up an
//! operation or a worker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::guard::{GuardedResolver, check_url};
use super::{TenantSecrets, WebhookConfig, sign};
use crate::engine::Engine;
use crate::model::{Delivery, DeliveryState, Tenant};
use crate::pb::convert;
use crate::store::{Change, DeliveryTake, OutboxStore};

/// Deliveries in flight at once.
const IN_FLIGHT: usize = 64;
/// Deliveries of one tenant in flight at once: a quarter of all, so that
/// a tenant whose callbacks hang leaves the rest to the others.
const PER_TENANT: usize = IN_FLIGHT / 4;
/// How long a delivery taken from a shared outbox is kept from other nodes:
/// longer than one attempt can take, so it is sent once unless this node
/// dies mid-attempt.
const DELIVERY_LEASE: Duration = Duration::from_secs(120);
/// How soon the outbox is read again after the store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// The longest Retry-After honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The body of a delivery: the event, when it happened, and the operation
/// in the proto3 JSON mapping, the same JSON as the CLI's `--output json`.
pub fn body(delivery: &Delivery) -> Vec<u8> {
    let operation = crate::pb::to_json(&convert::operation(&delivery.snapshot));
    let timestamp = time::OffsetDateTime::from(delivery.create_time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({
        "type": delivery.event_type(),
        "timestamp": timestamp,
        "data": operation,
    }))
    .unwrap_or_default()
}

/// What one attempt came to.
struct Attempt {
    status: Option<StatusCode>,
    error: String,
    retry_after: Option<Duration>,
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_RETRY_AFTER),
    )
}

/// The span of one delivery attempt: a child of its operation's create,
/// so that the trace ends with the webhook.
fn delivery_span(delivery: &Delivery) -> tracing::Span {
    let span = tracing::info_span!(
        "webhook",
        operation = %delivery.operation,
        event = delivery.event.as_str(),
        attempt = delivery.attempts + 1,
        status_code = tracing::field::Empty,
    );
    crate::telemetry::adopt(&span, delivery.snapshot.trace.as_deref());
    span
}

async fn attempt(
    client: &reqwest::Client,
    config: &WebhookConfig,
    tenants: &dyn TenantSecrets,
    delivery: &Delivery,
    span: &tracing::Span,
) -> Attempt {
    let failed = |error: String| Attempt {
        status: None,
        error,
        retry_after: None,
    };
    // Literal IP addresses skip the resolver, so check them here too.
    let url = match check_url(&delivery.callback_url, config.allow_private).await {
        Ok(url) => url,
        Err(e) => return failed(e),
    };
    let body = body(delivery);
    let id = delivery.webhook_id();
    let timestamp = sign::unix_seconds(SystemTime::now());
    let tenant = &delivery.snapshot.tenant;
    let secrets = tenants
        .secrets_for(tenant)
        .unwrap_or_else(|| super::tenant_secrets(&config.secrets, tenant));
    let signature = sign::sign(&secrets, &id, timestamp, &body);
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    // The receiver continues the trace: this delivery's span when traces
    // are exported, else the operation's.
    let trace =
        crate::telemetry::context_of(span).or_else(|| delivery.snapshot.trace.as_deref().cloned());
    if let Some(trace) = trace {
        let (parent, state) = crate::telemetry::to_headers(&trace);
        request = request.header(crate::telemetry::TRACEPARENT, parent);
        if let Some(state) = state {
            request = request.header(crate::telemetry::TRACESTATE, state);
        }
    }
    let sent = request.body(body).send().await;
    match sent {
        Ok(response) => {
            let status = response.status();
            let retry_after = matches!(status.as_u16(), 429 | 502 | 504)
                .then(|| retry_after(&response))
                .flatten();
            Attempt {
                status: Some(status),
                error: if status.is_success() {
                    String::new()
                } else {
                    format!("the receiver answered {status}")
                },
                retry_after,
            }
        }
        Err(e) => failed(format!("{e}")),
    }
}

/// Applies an attempt's outcome to the delivery.
fn record(config: &WebhookConfig, mut delivery: Delivery, outcome: Attempt) -> Delivery {
    delivery.attempts += 1;
    delivery.last_status_code = outcome.status.map_or(0, |s| s.as_u16());
    delivery.last_error = outcome.error;
    let status = outcome.status.map(|s| s.as_u16());
    delivery.state = match status {
        Some(200..=299) => DeliveryState::Delivered,
        Some(410) => DeliveryState::Disabled,
        _ if (delivery.attempts as usize) <= config.schedule.len() => DeliveryState::Pending,
        _ => DeliveryState::Failed,
    };
    delivery.next_attempt = (delivery.state == DeliveryState::Pending).then(|| {
        let planned = config.schedule[delivery.attempts as usize - 1];
        // Up to 20% either way, so receivers that failed together are not
        // retried together.
        let jittered = planned.mul_f64(0.8 + 0.4 * rand::random::<f64>());
        SystemTime::now()
            + outcome
                .retry_after
                .unwrap_or(jittered)
                .max(jittered.min(planned))
    });
    delivery
}

/// Waits for a change that may have queued a delivery: an operation with a
/// notification changed state (or the feed lagged, and anything may have).
/// None when the feed closed.
async fn next_relevant(feed: &mut tokio::sync::broadcast::Receiver<Change>) -> Option<()> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match feed.recv().await {
            Ok(Change::Updated(op)) if op.notification.is_some() => return Some(()),
            // Another node wrote a delivery, or changes may have been lost.
            Ok(Change::Elsewhere { delivery: true, .. } | Change::Resync) => return Some(()),
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return Some(()),
            Err(RecvError::Closed) => return None,
        }
    }
}

/// Runs until `stop` fires, waking for changes on `feed`: reads due
/// deliveries from `store` and records each attempt through `engine`'s
/// committer. Deliveries are signed with their tenant's own secrets where
/// `tenants` has some, else with the server's.
pub async fn run(
    store: Arc<dyn OutboxStore>,
    engine: Engine,
    mut feed: tokio::sync::broadcast::Receiver<Change>,
    config: Arc<WebhookConfig>,
    tenants: Arc<dyn TenantSecrets>,
    stop: CancellationToken,
) {
    // No proxy, whatever the environment says: a proxy would resolve the
    // callback's host itself, out of the guard's sight.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .user_agent(concat!("longrun/", env!("CARGO_PKG_VERSION")));
    if !config.allow_private {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "webhooks are off: no HTTP client");
            return;
        }
    };
    let mut in_flight: JoinSet<(uuid::Uuid, Tenant)> = JoinSet::new();
    // What is in flight, by delivery and by tenant.
    let mut busy: HashSet<uuid::Uuid> = HashSet::new();
    let mut by_tenant: HashMap<Tenant, usize> = HashMap::new();
    info!("webhook deliverer started");
    loop {
        // A store that failed is asked again shortly: nothing else may come
        // to wake the loop while it is out of reach.
        let mut failed = false;
        // Start everything due, up to the in-flight bound, and up to each
        // tenant's share of it: one tenant's hanging callbacks never take
        // the slots another tenant's deliveries need.
        let room = IN_FLIGHT.saturating_sub(in_flight.len());
        if room > 0 {
            let take = DeliveryTake {
                limit: room,
                per_tenant: PER_TENANT,
                busy: by_tenant.clone(),
                in_flight: busy.clone(),
                lease: DELIVERY_LEASE,
            };
            match store.take_deliveries(SystemTime::now(), &take).await {
                Ok(fresh) => {
                    for delivery in fresh {
                        let tenant = delivery.snapshot.tenant.clone();
                        busy.insert(delivery.id);
                        *by_tenant.entry(tenant.clone()).or_default() += 1;
                        let client = client.clone();
                        let config = Arc::clone(&config);
                        let tenants = Arc::clone(&tenants);
                        let engine = engine.clone();
                        in_flight.spawn(async move {
                            let id = delivery.id;
                            let span = delivery_span(&delivery);
                            let outcome = attempt(&client, &config, &*tenants, &delivery, &span)
                                .instrument(span.clone())
                                .await;
                            span.record(
                                "status_code",
                                outcome.status.map_or(0, |s| s.as_u16()),
                            );
                            let updated = record(&config, delivery, outcome);
                            engine.metrics().delivery(match updated.state {
                                DeliveryState::Delivered => "delivered",
                                DeliveryState::Pending => "retrying",
                                DeliveryState::Disabled => "disabled",
                                DeliveryState::Failed => "failed",
                            });
                            debug!(id = %updated.webhook_id(), state = ?updated.state, "delivery attempt recorded");
                            if let Err(e) = engine.save_delivery(updated).await {
                                // The outbox still has it: it is retried
                                // when due.
                                warn!(error = %e, "could not record a delivery attempt");
                            }
                            (id, tenant)
                        });
                    }
                }
                Err(e) => {
                    failed = true;
                    warn!(error = %e, "could not read the outbox");
                }
            }
        }
        // Sleep until the next delivery is due. One that is already due is
        // in flight (everything due and not in flight was started above),
        // so its completion is what to wait for.
        let wake_at = match store.next_delivery_due().await {
            _ if failed => Some(STORE_RETRY),
            Ok(Some(at)) => at
                .duration_since(SystemTime::now())
                .ok()
                .filter(|d| !d.is_zero()),
            Ok(None) => None,
            Err(_) => Some(STORE_RETRY),
        };
        let sleep = async {
            match wake_at {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                match done {
                    Ok((id, tenant)) => {
                        busy.remove(&id);
                        if let Some(n) = by_tenant.get_mut(&tenant) {
                            *n -= 1;
                            if *n == 0 {
                                by_tenant.remove(&tenant);
                            }
                        }
                    }
                    // A delivery task that panicked: start over; the outbox
                    // still has its delivery.
                    Err(_) => {
                        busy.clear();
                        by_tenant.clear();
                    }
                }
            }
            changed = next_relevant(&mut feed) => {
                if changed.is_none() {
                    // The store is closing.
                    break;
                }
            }
            _ = sleep => {}
        }
    }
    // Attempts in flight are dropped; their deliveries stay pending in the
    // outbox and are retried after restart.
    in_flight.abort_all();
}
