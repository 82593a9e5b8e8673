//! The change feed between nodes, over LISTEN/NOTIFY.
//!
//! A commit notifies, inside its transaction (so only once it commits),
//! the ids it changed, never the records: a payload is the committing
//! process's tag, then one entry per change, a letter and the id. The
//! letter says what the change was: `q` queued (work to claim), `f`
//! updated and giving limit slots back (held-back work may be claimable),
//! `u` updated, `d` deleted; a capital when the change wrote a webhook
//! delivery. A lone `r` (no id) says a paused kind was resumed: its queue
//! is work to claim again. Every node listens; it skips its own tag (it announced those
//! changes locally already) and turns the rest into
//! [`Change::Elsewhere`], which whoever follows the operation re-reads.
//! A listener that loses its connection announces [`Change::Resync`] once
//! it is back, so a lost notification never hides a final state.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Transaction};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::db;
use crate::model::{Operation, OperationId, State};
use crate::store::{Change, StoreResult};

/// The channel every node listens on.
pub(super) const CHANNEL: &str = "longrun_changes";

/// The entry that says a paused kind was resumed.
pub(super) const RESUMED: &str = "r";

/// PostgreSQL's limit on a payload is 8,000 bytes; entries are 33.
const PAYLOAD_BYTES: usize = 7_000;

/// One entry of a notification.
pub(super) struct Note {
    letter: u8,
    id: OperationId,
}

impl Note {
    /// An operation as a change left it; `delivery` when the change wrote
    /// a pending webhook delivery, `freed` when it gave limit slots back.
    pub(super) fn of(op: &Operation, delivery: bool, freed: bool) -> Self {
        let letter = if op.state == State::Queued {
            b'q'
        } else if freed {
            b'f'
        } else {
            b'u'
        };
        Self {
            letter: if delivery {
                letter.to_ascii_uppercase()
            } else {
                letter
            },
            id: op.id,
        }
    }

    pub(super) fn deleted(id: OperationId) -> Self {
        Self { letter: b'd', id }
    }
}

/// Sends `notes` from the process tagged `tag`, as part of `tx`.
pub(super) async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    tag: &str,
    notes: &[Note],
) -> StoreResult<()> {
    if notes.is_empty() {
        return Ok(());
    }
    let payloads = payloads(tag, notes);
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// Follows the other nodes' changes until `stop`: announces them on `feed`
/// and wakes the dispatcher (`work`) for new work.
pub(super) async fn follow(
    pool: PgPool,
    tag: String,
    feed: broadcast::Sender<Change>,
    work: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let bump = || work.send_modify(|n| *n = n.wrapping_add(1));
    let mut listening: Option<PgListener> = None;
    let mut listened = false;
    loop {
        let Some(listener) = listening.as_mut() else {
            match listen(&pool).await {
                Ok(listener) => {
                    listening = Some(listener);
                    // Whatever happened while nobody listened is read again
                    // (at open, nothing was followed yet).
                    if std::mem::replace(&mut listened, true) {
                        let _ = feed.send(Change::Resync);
                        bump();
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot listen for other nodes' changes; trying again");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            continue;
        };
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => {
                if take_in(notification.payload(), &tag, &feed) {
                    bump();
                }
            }
            Ok(None) => {
                // The connection dropped and was made again (the listener
                // reconnects at once): anything may have been missed.
                debug!("the change listener reconnected");
                let _ = feed.send(Change::Resync);
                bump();
            }
            Err(e) => {
                warn!(error = %e, "lost the change listener");
                listening = None;
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Announces the changes of one payload not sent by `tag`; true when one
/// queued work.
fn take_in(payload: &str, tag: &str, feed: &broadcast::Sender<Change>) -> bool {
    let mut parts = payload.split(' ');
    if parts.next() == Some(tag) {
        return false;
    }
    let mut work = false;
    for entry in parts {
        if entry == RESUMED {
            work = true;
            continue;
        }
        let Some(letter) = entry.bytes().next() else {
            continue;
        };
        let Ok(id) = uuid::Uuid::parse_str(&entry[1..]) else {
            continue;
        };
        let id = OperationId::from_bytes(*id.as_bytes());
        // Queued work, or limit slots given back: there may be work to
        // claim.
        work |= letter.eq_ignore_ascii_case(&b'q') || letter.eq_ignore_ascii_case(&b'f');
        let _ = feed.send(Change::Elsewhere {
            id,
            delivery: letter.is_ascii_uppercase(),
            queued: letter.eq_ignore_ascii_case(&b'q'),
        });
    }
    work
}

/// The notification payloads that announce `notes`, each within
/// PostgreSQL's limit.
pub(super) fn payloads(tag: &str, notes: &[Note]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut payload = String::from(tag);
    for note in notes {
        if payload.len() + 34 > PAYLOAD_BYTES {
            payloads.push(std::mem::replace(&mut payload, String::from(tag)));
        }
        payload.push(' ');
        payload.push(char::from(note.letter));
        payload.push_str(
            &uuid::Uuid::from_bytes(*note.id.as_bytes())
                .simple()
                .to_string(),
        );
    }
    if !notes.is_empty() {
        payloads.push(payload);
    }
    payloads
}
