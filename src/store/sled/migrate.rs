//! Moving a data directory of the first layout into this one.
//!
//! The first layout kept each index in a tree of its own (`ops`, `active`,
//! `request_ids`, `by_tenant`, `expiry`, `meta`, `outbox`), changed
//! together by sled transactions. Its keys carry over with a prefix byte,
//! and its records decode as they are (the codec reads both forms), so the
//! move is one batch into the single tree, a flush, then the old trees are
//! dropped. A crash in between leaves the old trees in place, and the next
//! open moves them again, over the same keys.

use sled::{Db, Tree};

use super::commit::backend;
use super::keys;
use crate::store::StoreResult;

/// The first layout's trees, and the prefix each one's keys get here.
const TREES: [(&str, u8); 5] = [
    ("ops", keys::OP),
    ("active", keys::UNFINISHED),
    ("request_ids", b'r'),
    ("by_tenant", keys::BY_TENANT),
    ("expiry", keys::EXPIRY),
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
