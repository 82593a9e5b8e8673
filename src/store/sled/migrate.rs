//! Moving a data directory of the first layout into this one.
//!
//! The first layout kept each index in a tree of its own (`ops`, `active`,
//! `request_ids`, `by_tenant`, `expiry`, `meta`, `outbox`), changed
//! together by sled transactions. Its keys carry over with a prefix byte,
//! and its records decode as they are (the codec reads both forms), so the
//! move is one batch into the single tree, a flush, then the old trees are
//! dropped. With no low-water mark yet, the first open reads every record
//! to find the unfinished ones. A crash in between leaves the old trees in
//! place, and the next open moves them again, over the same keys.

use sled::{Db, Tree};

use super::commit::backend;
use super::keys;
use crate::store::StoreResult;

/// The first layout's trees that carry over, and the prefix each one's
/// keys get here. (`active` and `expiry` have no counterpart: what is
/// unfinished or expired is read from the records.)
const TREES: [(&str, u8); 3] = [
    ("ops", keys::OP),
    ("request_ids", b'r'),
    ("by_tenant", keys::BY_TENANT),
];

/// Moves the first layout's data into `tree`, if there is any. Returns how
/// many keys moved.
pub(super) fn from_first_layout(db: &Db, tree: &Tree) -> StoreResult<usize> {
    let names = db.tree_names();
    let present = |name: &str| names.iter().any(|n| n.as_ref() == name.as_bytes());
    if !present("ops") {
        return Ok(0);
    }
    let mut batch = sled::Batch::default();
    let mut moved = 0usize;
    for (name, prefix) in TREES {
        if !present(name) {
            continue;
        }
        for entry in db.open_tree(name).map_err(backend)?.iter() {
            let (key, value) = entry.map_err(backend)?;
            batch.insert([&[prefix], key.as_ref()].concat(), value);
            moved += 1;
        }
    }
    if present("meta") {
        for entry in db.open_tree("meta").map_err(backend)?.iter() {
            let (key, value) = entry.map_err(backend)?;
            if let Some(name) = key.strip_prefix(b"secret/") {
                let name = String::from_utf8_lossy(name);
                batch.insert(keys::secret(&name), value);
                moved += 1;
            }
        }
    }
    if present("outbox") {
        // Deliveries (`d`) and their due index (`q`) keep their keys; the
        // index by operation was `o`, which operations use here, and is `w`.
        for entry in db.open_tree("outbox").map_err(backend)?.iter() {
            let (key, value) = entry.map_err(backend)?;
            let key = match key.first() {
                Some(b'o') => [b"w".as_slice(), &key[1..]].concat(),
                _ => key.to_vec(),
            };
            batch.insert(key, value);
            moved += 1;
        }
    }
    tree.apply_batch(batch).map_err(backend)?;
    db.flush().map_err(backend)?;
    for name in [
        "ops",
        "active",
        "request_ids",
        "by_tenant",
        "expiry",
        "meta",
        "outbox",
    ] {
        if present(name) {
            db.drop_tree(name).map_err(backend)?;
        }
    }
    db.flush().map_err(backend)?;
    tracing::info!(
        keys = moved,
        "moved the data directory to the single-tree layout"
    );
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::model::{
        Delivery, Edit, Filter, Holds, Limits, Notification, Operation, Outcome, Payload,
        RequestId, Tenant, to_micros_precision,
    };
    use crate::store::codec::first_layout;
    use crate::store::sled::{SledStore, SyncMode};
    use crate::store::{
        Applied, Created, ListQuery, OperationStore, OutboxStore, SettledStore, Write,
    };

    fn id_key(prefix: &[u8], op: &Operation) -> Vec<u8> {
        [prefix, op.id.as_bytes()].concat()
    }

    #[tokio::test]
    async fn a_first_layout_directory_is_moved_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let acme = Tenant::named("acme").unwrap();
        let now = to_micros_precision(SystemTime::now());
        let request_id: RequestId = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0".parse().unwrap();
        let mut done = Operation::new(
            "longrun.v1.Diagnostics.Sleep",
            Payload {
                type_url: "type.googleapis.com/longrun.v1.SleepRequest".into(),
                value: vec![8, 1].into(),
            },
            Some(request_id),
            [7; 32],
            Limits::default(),
            acme.clone(),
            now,
        );
        done.notification = Some(Notification {
            callback_url: "https://example.com/hook".into(),
            states: Vec::new(),
        });
        let claimed = done
            .apply(
                &Edit::Claim {
                    lease: None,
                    by: None,
                    holds: Holds::NONE,
                },
                now,
            )
            .unwrap()
            .unwrap();
        let finish = Edit::Finish {
            claim: crate::model::Claim::of(&claimed.operation),
            finish: crate::model::Finish::Done {
                outcome: Outcome::Response(Payload {
                    type_url: "type.googleapis.com/longrun.v1.SleepResponse".into(),
                    value: vec![24, 1].into(),
                }),
                progress: None,
            },
        };
        let ended = claimed
            .operation
            .apply(&finish, now + Duration::from_secs(1))
            .unwrap()
            .unwrap();
        let done = ended.operation;
        let delivery: Delivery = ended.delivery.expect("the final state is notified");
        let queued = Operation::new(
            "longrun.v1.Diagnostics.Sleep",
            Payload::default(),
            None,
            [0; 32],
            Limits::default(),
            Tenant::default_tenant(),
            now,
        );

        {
            let db = sled::Config::new()
                .path(dir.path().join("sled"))
                .open()
                .unwrap();
            let tree = |name: &str| db.open_tree(name).unwrap();
            for op in [&done, &queued] {
                tree("ops")
                    .insert(op.id.as_bytes(), first_layout::encode(op))
                    .unwrap();
            }
            tree("active").insert(queued.id.as_bytes(), &[]).unwrap();
            tree("request_ids")
                .insert(
                    [request_id.as_bytes().as_slice(), b"acme"].concat(),
                    done.id.as_bytes(),
                )
                .unwrap();
            tree("by_tenant")
                .insert([b"acme\0".as_slice(), done.id.as_bytes()].concat(), &[])
                .unwrap();
            tree("expiry")
                .insert(
                    [
                        keys::time_key(done.end_time.unwrap()).as_slice(),
                        done.id.as_bytes(),
                    ]
                    .concat(),
                    &[],
                )
                .unwrap();
            tree("meta")
                .insert("secret/kept", b"value".as_slice())
                .unwrap();
            let outbox = tree("outbox");
            outbox
                .insert(
                    [b"d".as_slice(), delivery.id.as_bytes()].concat(),
                    first_layout::encode_delivery(&delivery),
                )
                .unwrap();
            outbox
                .insert(
                    [
                        b"q".as_slice(),
                        &keys::time_key(delivery.next_attempt.unwrap()),
                        delivery.id.as_bytes(),
                    ]
                    .concat(),
                    &[],
                )
                .unwrap();
            outbox
                .insert(
                    [id_key(b"o", &done), delivery.id.as_bytes().to_vec()].concat(),
                    &[],
                )
                .unwrap();
            db.flush().unwrap();
        }

        // sled lets go of the directory from its own threads, a moment
        // after the handle is dropped.
        let store = loop {
            match SledStore::open(dir.path(), SyncMode::Always) {
                Ok(store) => break store,
                Err(_) => std::thread::yield_now(),
            }
        };
        assert_eq!(store.get(done.id).await.unwrap(), Some(done.clone()));
        assert_eq!(store.get(queued.id).await.unwrap(), Some(queued.clone()));
        let unfinished: Vec<_> = store
            .unfinished()
            .await
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(unfinished, [queued.id]);
        assert_eq!(store.queued(&Tenant::default_tenant()).total, 1);
        let filter = Filter::default();
        let page = store
            .list(ListQuery {
                parent: None,
                after: None,
                tenant: Some(&acme),
                filter: &filter,
                limit: 10,
                scan_budget: 100,
            })
            .await
            .unwrap();
        assert_eq!(page.operations, std::slice::from_ref(&done));
        let expired = store
            .expired(now + Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(expired, std::slice::from_ref(&done));
        assert_eq!(store.settle("kept", b"other").await.unwrap(), b"value");
        assert_eq!(
            store.deliveries(done.id).await.unwrap(),
            std::slice::from_ref(&delivery)
        );
        assert_eq!(
            store
                .due_deliveries(now + Duration::from_secs(60), 10)
                .await
                .unwrap(),
            [delivery]
        );
        // The request_id still names its operation.
        let mut retry = done.clone();
        retry.id = crate::model::OperationId::generate();
        let answer = store
            .commit(vec![Write::Create(retry)], SystemTime::now())
            .await
            .remove(0)
            .unwrap();
        assert!(matches!(answer, Applied::Created(Created::Existing(op)) if op.id == done.id));
        // The old trees are gone, and a second open moves nothing.
        drop(store);
        // sled lets go of the directory from its own threads, a moment
        // after the handle is dropped: until then, opening it (or a tree in
        // it) may fail.
        let (db, tree) = loop {
            let opened = sled::Config::new()
                .path(dir.path().join("sled"))
                .open()
                .and_then(|db| db.open_tree(keys::TREE).map(|tree| (db, tree)));
            match opened {
                Ok(opened) => break opened,
                Err(_) => std::thread::yield_now(),
            }
        };
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"ops"));
        assert_eq!(from_first_layout(&db, &tree).unwrap(), 0);
    }
}
