//! The embedded backend: sled, in the data directory. The only module that
//! knows sled.
//!
//! Operations, their indexes, the webhook outbox, the string table and
//! secrets live in one tree (layout in `keys`), so that a batch of writes
//! is one atomic `apply_batch`; each tenant's orders have a tree of their
//! own. Uploads and report files are plain files in the data directory
//! ([`DirFiles`]). Files:
//! - `commit`: applying a batch of writes (and claims) against an overlay;
//! - `operations`, `outbox`, `orders`: the store traits of those names;
//! - `strings`: the string table records refer to;
//! - `recent`: the records written last, which reads find in memory;
//! - `space`: the guard that stops writes before the disk is full;
//! - `migrate`: moving a data directory of the first layout (one tree per
//!   index) into this one.
//!
//! One batch applies at a time (the `apply` lock, held while a batch is
//! staged and handed to sled, never while it is flushed), so reading a
//! record and writing its successor needs no transaction. The queue of
//! claimable work is kept in memory (`store::ready`) and rebuilt at open
//! from the operations that are not done.

mod commit;
mod keys;
mod migrate;
mod operations;
mod orders;
mod outbox;
mod recent;
mod schedules;
mod space;
mod strings;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use sled::Tree;
use tokio::sync::{broadcast, watch};

use self::commit::{backend, disk};
use self::space::{Room, Space};
use self::strings::StringTable;
use super::files::{DirFiles, FileRead, FileStore, FileWriter};
use super::ready::Ready;
use super::{Change, Health, SettledStore, StoreError, StoreResult};
use crate::model::KindLimits;

/// How hard the store works to keep acknowledged writes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// A batch with a durable write is flushed before anyone hears of it.
    #[default]
    Always,
    /// Writes return at once; a background flush runs every few
    /// milliseconds. A crash loses at most that window.
    Batch,
    /// No flush is forced; sled writes back when it chooses. A crash may
    /// lose any recent write.
    Never,
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "always" => Ok(SyncMode::Always),
            "batch" => Ok(SyncMode::Batch),
            "never" => Ok(SyncMode::Never),
            other => Err(format!(
                "unknown sync mode {other:?}; expected always, batch or never"
            )),
        }
    }
}

/// sled's page cache by default. sled undercounts it: the process's memory
/// grows to several times this figure under write load. With a million
/// operations stored, 32 MiB keeps the server under 300 MiB; a larger cache
/// writes a large store faster for more memory (BENCHMARKS.md).
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The free disk space kept in reserve by default.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// How often `SyncMode::Batch` flushes.
const BATCH_FLUSH_MS: u64 = 10;

/// Capacity of the change feed. A subscriber that falls further behind is
/// told it lagged and must re-read what it follows.
const FEED_CAPACITY: usize = 64 * 1024;

/// How the sled backend is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledConfig {
    pub sync: SyncMode,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Free disk space to keep: below it new operations are refused, below
    /// a quarter of it every write is. Zero turns the guard off.
    pub min_free_bytes: u64,
}

impl Default for SledConfig {
    fn default() -> Self {
        Self {
            sync: SyncMode::Always,
            cache_bytes: DEFAULT_CACHE_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// The sled backend; a cheap-clone handle.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    tree: Tree,
    strings: RwLock<StringTable>,
    /// Held while a batch is staged and applied, with what is known of the
    /// operations that are not done.
    apply: Mutex<commit::Applier>,
    /// Claims not written yet (see `commit`): the next commit writes them.
    claimed: Mutex<commit::Claimed>,
    recent: RwLock<recent::Recent>,
    ready: Mutex<Ready>,
    /// The kinds paused now (as stored under `keys::paused`): claims skip
    /// them.
    paused: RwLock<std::collections::HashSet<String>>,
    /// Bumped when claimable work may have appeared.
    work: watch::Sender<u64>,
    feed: broadcast::Sender<Change>,
    health: watch::Sender<Health>,
    space: Space,
    /// Set when a write or flush failed with an I/O error: health stays
    /// Unavailable until a flush works again.
    failing: std::sync::atomic::AtomicBool,
    mode: SyncMode,
    flushes: AtomicU64,
    /// One order writer at a time: replacing an order reads where it was
    /// stored, and two batches must not both move the same order.
    orders_writer: Mutex<()>,
    /// One schedule writer at a time (a write compares the stored
    /// revision, then moves the record and its due-index key), and the
    /// schedules a scheduler holds, until when: kept in memory, as the one
    /// process is the only scheduler.
    schedules: Mutex<schedules::Held>,
    files: DirFiles,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent (a panic inside one
    // is a bug in sled or ours, not a half-made change), so a poisoned lock
    // is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl SledStore {
    /// Opens (or creates) the database in `dir` with the default cache and
    /// reserve.
    pub fn open(dir: &Path, sync: SyncMode) -> StoreResult<Self> {
        Self::open_with(
            dir,
            &SledConfig {
                sync,
                ..SledConfig::default()
            },
        )
    }

    /// Opens (or creates) the database in `dir`. A data directory of the
    /// first layout is moved into this one first.
    pub fn open_with(dir: &Path, config: &SledConfig) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let flush_every = match config.sync {
            SyncMode::Always | SyncMode::Never => None,
            SyncMode::Batch => Some(BATCH_FLUSH_MS),
        };
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(flush_every)
            .open()
            .map_err(backend)?;
        let tree = db.open_tree(keys::TREE).map_err(backend)?;
        migrate::from_first_layout(&db, &tree)?;
        let mut strings = StringTable::default();
        for entry in tree.scan_prefix([keys::STRING]) {
            let (key, value) = entry.map_err(backend)?;
            let number = key
                .get(1..5)
                .and_then(|n| n.try_into().ok())
                .map(u32::from_be_bytes)
                .filter(|n| *n > 0)
                .ok_or_else(|| StoreError::Corrupt("string key".into()))?;
            let text = std::str::from_utf8(&value)
                .map_err(|_| StoreError::Corrupt("string value".into()))?;
            strings.load(number, text);
        }
        let mut paused = std::collections::HashSet::new();
        for entry in tree.scan_prefix([keys::PAUSED]) {
            let (key, _) = entry.map_err(backend)?;
            paused.insert(String::from_utf8_lossy(&key[1..]).into_owned());
        }
        let mut ready = Ready::default();
        let mut limits: HashMap<String, KindLimits> = HashMap::new();
        for entry in tree.scan_prefix([keys::LIMIT]) {
            let (key, value) = entry.map_err(backend)?;
            let limit = keys::limit_of(&key, &value)
                .ok_or_else(|| StoreError::Corrupt("a stored limit".into()))?;
            limits
                .entry(limit.kind.clone())
                .or_default()
                .limits
                .push(limit);
        }
        for (kind, limits) in limits {
            ready.set_limits(&kind, limits);
        }
        let space = Space::new(dir.to_path_buf(), config.min_free_bytes);
        let health = match space.room(true) {
            Room::Plenty => Health::Writable,
            Room::Low | Room::None => Health::Full,
        };
        let store = Self {
            inner: Arc::new(Inner {
                db,
                tree,
                strings: RwLock::new(strings),
                apply: Mutex::default(),
                claimed: Mutex::default(),
                recent: RwLock::default(),
                ready: Mutex::new(ready),
                paused: RwLock::new(paused),
                work: watch::channel(0).0,
                feed: broadcast::channel(FEED_CAPACITY).0,
                health: watch::channel(health).0,
                space,
                failing: std::sync::atomic::AtomicBool::new(false),
                mode: config.sync,
                flushes: AtomicU64::new(0),
                orders_writer: Mutex::new(()),
                schedules: Mutex::default(),
                files: DirFiles::open(dir)?,
            }),
        };
        store.load_unfinished()?;
        Ok(store)
    }

    /// How many flushes the store has made so far.
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// Makes what was applied durable.
    fn sync(&self) -> StoreResult<()> {
        self.inner.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.db.flush().map(|_| ()).map_err(disk)
    }

    /// Writes the claims waiting in memory, then makes everything durable.
    fn flush_all(&self) -> StoreResult<()> {
        if !lock(&self.inner.claimed).is_empty() {
            for result in self.commit_blocking(Vec::new(), std::time::SystemTime::now()) {
                result?;
            }
        }
        self.sync()
    }

    /// How much room writes have, telling health watchers when it
    /// changes; `look_again` reads the disk even if a reading is fresh.
    fn room(&self, look_again: bool) -> Room {
        let room = self.inner.space.room(look_again);
        let health = match room {
            _ if self.inner.failing.load(Ordering::SeqCst) => Health::Unavailable,
            Room::Plenty => Health::Writable,
            Room::Low | Room::None => Health::Full,
        };
        self.inner.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
        room
    }

    /// Takes note of a disk that failed a write: health turns Unavailable
    /// until a flush works again (see `probe`).
    fn failing(&self, reason: &str) {
        if !self.inner.failing.swap(true, Ordering::SeqCst) {
            tracing::error!(
                reason,
                "the disk failed a write; writes are refused until it works again"
            );
        }
        self.room(false);
    }

    fn announce(&self, changes: Vec<Change>) {
        for change in changes {
            // No subscriber is not an error: nobody is watching.
            let _ = self.inner.feed.send(change);
        }
    }
}

#[async_trait]
impl SettledStore for SledStore {
    async fn settle(&self, name: &str, initial: &[u8]) -> StoreResult<Vec<u8>> {
        let key = keys::secret(name);
        match self
            .inner
            .tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(initial))
            .map_err(backend)?
        {
            Ok(()) => {
                let store = self.clone();
                tokio::task::spawn_blocking(move || store.sync())
                    .await
                    .map_err(backend)??;
                Ok(initial.to_vec())
            }
            Err(cas) => Ok(cas.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    async fn settled(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let start = keys::secret("");
        self.inner
            .tree
            .scan_prefix(keys::secret(prefix))
            .map(|entry| {
                let (key, value) = entry.map_err(backend)?;
                let name = String::from_utf8_lossy(&key[start.len()..]).into_owned();
                Ok((name, value.to_vec()))
            })
            .collect()
    }
}

#[async_trait]
impl FileStore for SledStore {
    async fn create(&self, name: &str) -> StoreResult<Box<dyn FileWriter>> {
        self.inner.files.create(name).await
    }

    async fn open(&self, name: &str) -> StoreResult<Option<FileRead>> {
        self.inner.files.open(name).await
    }

    async fn remove(&self, name: &str) -> StoreResult<()> {
        self.inner.files.remove(name).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: whatever is still in sled's buffers goes to disk when
        // the last handle closes, whatever the sync mode.
        let _ = self.db.flush();
    }
}
