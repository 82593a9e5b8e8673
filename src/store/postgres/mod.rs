//! The PostgreSQL backend: one database that several longrun nodes share.
//! The only module that knows sqlx.
//!
//! Every piece of state lives in the database (operations and their
//! indexes, the webhook outbox, secrets, orders, files), so any node answers any
//! call. Files:
//! - `commit`: a batch of writes as one transaction: the rows it touches
//!   are locked and read, the model decides each write, and the outcome is
//!   written back with one multi-row statement per table;
//! - `operations`: [`OperationStore`]: claims with `FOR UPDATE SKIP
//!   LOCKED` under a lease, reads, listing, recovery and retention;
//! - `feed`: LISTEN/NOTIFY between nodes. A notification carries ids, not
//!   records; a listener that was cut off announces [`Change::Resync`];
//! - `outbox`, `orders`: the traits of those names (orders arrive by COPY);
//! - `files`: uploads and report files, in chunks.
//!
//! The schema is created and moved forward at open by versioned
//! migrations (`migrations/`), under an advisory lock so that nodes
//! starting together do not race. The attempt is the fencing token: a
//! write of a running operation updates its row only where the attempt and
//! version are still the ones read.

mod claim;
mod commit;
mod feed;
mod files;
mod flow;
mod held;
mod operations;
mod orders;
mod outbox;
mod schedules;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{Inline, decode, from_micros};
use super::{Change, Health, QueueDepth, SettledStore, StoreError, StoreResult};
use crate::model::{Lease, Operation, OperationId, Tenant};

/// Connections in the pool by default.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// How long a call waits for a free connection before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection idle for longer than this is tested with a round
/// trip before it is handed out. sqlx tests every connection as it goes
/// back into the pool, so one used moments ago is handed out untested:
/// under load that is one round trip less per transaction. A connection
/// lost in between fails its statement as one lost mid-use does: as
/// unavailable, which writes retry and a read reports.
const TEST_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How often the queue depth that admission reads is counted again, and
/// the dispatcher is woken even without a notification: the fallback for
/// notifications lost.
const POLL: Duration = Duration::from_secs(2);

/// Capacity of the local change feed (as the sled backend's).
const FEED_CAPACITY: usize = 64 * 1024;

/// The schema, in order. A migration, once released, is never edited:
/// a change is a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "tables", include_str!("migrations/0001_tables.sql")),
    (2, "files", include_str!("migrations/0002_files.sql")),
    (
        3,
        "delivery tenants",
        include_str!("migrations/0003_delivery_tenants.sql"),
    ),
    (
        4,
        "paused kinds",
        include_str!("migrations/0004_queues.sql"),
    ),
    (5, "priority", include_str!("migrations/0005_priority.sql")),
    (6, "flow control", include_str!("migrations/0006_flow.sql")),
    (7, "expiry", include_str!("migrations/0007_expiry.sql")),
    (
        8,
        "schedules",
        include_str!("migrations/0008_schedules.sql"),
    ),
    (9, "batches", include_str!("migrations/0009_batches.sql")),
    (
        10,
        "fewer indexes",
        include_str!("migrations/0010_fewer_indexes.sql"),
    ),
    (
        11,
        "order runs",
        include_str!("migrations/0011_order_runs.sql"),
    ),
    (
        12,
        "order run filters",
        include_str!("migrations/0012_order_run_filters.sql"),
    ),
];

/// How the PostgreSQL backend is set up.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// The most connections this node opens.
    pub pool_size: u32,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redacted(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PgConfig {
    /// The URL with the default pool.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

/// A URL with its password (if any) hidden, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The PostgreSQL backend; a cheap-clone handle.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// This process's mark on its notifications, so that it skips its own.
    tag: String,
    feed: broadcast::Sender<Change>,
    work: watch::Sender<u64>,
    health: watch::Sender<Health>,
    /// Queued operations, as last counted plus what this node added since.
    depth: Arc<Mutex<Depth>>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The rows this node runs, as it last wrote them.
    held: held::Held,
    /// Imported orders' runs waiting to be merged.
    merging: orders::Merging,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.close();
    }
}

#[derive(Default)]
struct Depth {
    total: u64,
    tenants: HashMap<Tenant, u64>,
}

/// A database failure as the store reports it. A database that cannot be
/// reached (a cut connection, a restart, a full pool) is a state that
/// passes, [`StoreError::Unavailable`], not a bug.
fn db(e: sqlx::Error) -> StoreError {
    let unreachable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Connection exceptions (class 08), the server shutting down or
        // starting (57P01-57P03), and too many connections.
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    };
    if unreachable {
        StoreError::Unavailable(format!("the database cannot be reached: {e}"))
    } else {
        StoreError::Backend(format!("the database failed: {e}"))
    }
}

/// The longest one call waits for the database. A connection that stops
/// answering (a network that drops packets rather than connections) must
/// not hold a commit, and everything queued behind it, forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Microseconds since the epoch, as the tables keep times.
fn micros(time: SystemTime) -> i64 {
    super::codec::to_micros(time)
}

/// An operation from a row of `id, record, lease_holder,
/// lease_expires_us`. The lease columns are the truth: heartbeats renew
/// them without rewriting the record.
fn operation(row: &PgRow) -> StoreResult<Operation> {
    let id: uuid::Uuid = row.try_get("id").map_err(db)?;
    let record: Vec<u8> = row.try_get("record").map_err(db)?;
    let mut op = decode(OperationId::from_bytes(*id.as_bytes()), &record, &Inline)?;
    let holder: Option<String> = row.try_get("lease_holder").map_err(db)?;
    let expires: Option<i64> = row.try_get("lease_expires_us").map_err(db)?;
    op.lease = holder.zip(expires).map(|(holder, expires)| Lease {
        holder,
        expires: from_micros(expires),
    });
    Ok(op)
}

/// The columns every read of an operation selects.
const OP_COLUMNS: &str = "id, record, lease_holder, lease_expires_us";

impl PgStore {
    /// Connects, brings the schema up to date, and starts following the
    /// other nodes' changes.
    pub async fn open(config: &PgConfig) -> StoreResult<Self> {
        let options: PgConnectOptions = config
            .url
            .parse()
            .map_err(|e| StoreError::Backend(format!("bad PostgreSQL URL: {e}")))?;
        let options = options.application_name("longrun");
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    // A connection that fails the test is closed, and the
                    // pool tries another.
                    Ok(meta.idle_for < TEST_IDLE_AFTER
                        || sqlx::Connection::ping(conn).await.is_ok())
                })
            })
            .connect_with(options)
            .await
            .map_err(db)?;
        migrate(&pool).await?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let inner = Arc::new(Inner {
            pool,
            tag: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            feed,
            work: watch::channel(0).0,
            health: watch::channel(Health::Writable).0,
            depth: Arc::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            held: held::Held::default(),
            merging: orders::Merging::default(),
        });
        let store = Self { inner };
        store.count_queued().await?;
        store.inner.tasks.spawn(feed::follow(
            store.inner.pool.clone(),
            store.inner.tag.clone(),
            store.inner.feed.clone(),
            store.inner.work.clone(),
            store.inner.stop.clone(),
        ));
        store.inner.tasks.spawn(poll(
            store.inner.pool.clone(),
            Arc::clone(&store.inner.depth),
            store.inner.work.clone(),
            store.inner.stop.clone(),
        ));
        Ok(store)
    }

    /// The connection pool, for the backend's own files.
    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Counts the queued operations again.
    async fn count_queued(&self) -> StoreResult<()> {
        let counted = count(&self.inner.pool).await?;
        *self.inner.depth.lock().unwrap_or_else(|e| e.into_inner()) = counted;
        Ok(())
    }

    /// Takes in what a commit did to the queue: `added` operations queued,
    /// `taken` left it.
    fn queue_moved(&self, added: &[Tenant], taken: &[Tenant]) {
        let mut depth = self.inner.depth.lock().unwrap_or_else(|e| e.into_inner());
        for tenant in added {
            depth.total += 1;
            *depth.tenants.entry(tenant.clone()).or_default() += 1;
        }
        for tenant in taken {
            depth.total = depth.total.saturating_sub(1);
            if let Some(n) = depth.tenants.get_mut(tenant) {
                *n = n.saturating_sub(1);
            }
        }
    }

    fn queue_depth(&self, tenant: &Tenant) -> QueueDepth {
        let depth = self.inner.depth.lock().unwrap_or_else(|e| e.into_inner());
        QueueDepth {
            total: depth.total,
            tenant: depth.tenants.get(tenant).copied().unwrap_or(0),
        }
    }

    /// Runs one call against the database within [`CALL_TIMEOUT`], and
    /// keeps health in step: an unreachable database turns it
    /// [`Health::Unavailable`], an answer turns it back.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let result = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "the database did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                )))
            });
        let health = match &result {
            Err(StoreError::Unavailable(_)) => Health::Unavailable,
            Err(_) => return result,
            Ok(_) => Health::Writable,
        };
        if *self.inner.health.borrow() != health {
            self.inner.health.send_if_modified(|h| {
                let changed = *h != health;
                *h = health;
                changed
            });
        }
        result
    }

    fn bump_work(&self) {
        self.inner.work.send_modify(|n| *n = n.wrapping_add(1));
    }
}

async fn count(pool: &PgPool) -> StoreResult<Depth> {
    let rows = sqlx::query(
        "SELECT tenant, count(*) AS n FROM longrun_operations WHERE state = 1 GROUP BY tenant",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut depth = Depth::default();
    for row in rows {
        let name: String = row.try_get("tenant").map_err(db)?;
        let n: i64 = row.try_get("n").map_err(db)?;
        let n = u64::try_from(n).unwrap_or(0);
        depth.total += n;
        if let Ok(tenant) = Tenant::from_stored(&name) {
            depth.tenants.insert(tenant, n);
        }
    }
    Ok(depth)
}

/// Keeps the queue depth near the truth (other nodes create and claim
/// too), and wakes the dispatcher now and then.
async fn poll(
    pool: PgPool,
    depth: Arc<Mutex<Depth>>,
    work: watch::Sender<u64>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        work.send_modify(|n| *n = n.wrapping_add(1));
        if let Ok(counted) = count(&pool).await {
            *depth.lock().unwrap_or_else(|e| e.into_inner()) = counted;
        }
    }
}

/// Brings the schema up to date. sqlx's migrator takes an advisory lock
/// first, so nodes that start at once apply each migration once.
async fn migrate(pool: &PgPool) -> StoreResult<()> {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect();
    let migrator = Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    migrator
        .run(pool)
        .await
        .map_err(|e| StoreError::Backend(format!("could not migrate the schema: {e}")))
}

#[async_trait]
impl SettledStore for PgStore {
    async fn settle(&self, name: &str, initial: &[u8]) -> StoreResult<Vec<u8>> {
        self.call(async {
            sqlx::query(
                "INSERT INTO longrun_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(name)
            .bind(initial)
            .execute(self.pool())
            .await
            .map_err(db)?;
            let row = sqlx::query("SELECT value FROM longrun_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(self.pool())
                .await
                .map_err(db)?;
            row.try_get("value").map_err(db)
        })
        .await
    }

    async fn settled(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.call(async {
            let rows =
                sqlx::query("SELECT name, value FROM longrun_secrets WHERE starts_with(name, $1)")
                    .bind(prefix)
                    .fetch_all(self.pool())
                    .await
                    .map_err(db)?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("name").map_err(db)?,
                        row.try_get("value").map_err(db)?,
                    ))
                })
                .collect()
        })
        .await
    }
}
