//! The runs of a tenant's orders in PostgreSQL: reading a family's runs
//! (and the rows from before runs) merged in key order, a page of chunks
//! at a time; writing runs; and merging them. Each works inside its
//! caller's transaction. The format and the rules are `store::runs`'s;
//! chunks are packed here.

use std::collections::{HashMap, VecDeque};

use sqlx::{PgConnection, Row};

use super::super::db;
use crate::store::runs::{self, Entry, Family, Merge, MergedRun, Run};
use crate::store::{StoreError, StoreResult};

/// The most chunks a source reads per query (about 400 KiB packed), and
/// rows from before runs per chunk it may read.
const PAGE_CHUNKS: i64 = 64;
const ROWS_PER_CHUNK: i64 = 64;

/// Chunks an insert statement carries (about 1.5 MiB packed).
const INSERT_CHUNKS: usize = 256;

/// Bytes of entries a chunk closes at. Packed, orders take about half,
/// so a row fills most of a page and stays in it (one that packs worse
/// is stored out of line, as it is).
const CHUNK_BYTES: usize = 12 * 1024;

/// The most bytes a stored chunk may unpack to: a chunk closes once past
/// `CHUNK_BYTES`, so only damage claims more.
const MAX_UNPACKED: usize = 16 << 20;

/// A chunk as stored: its entries encoded (`runs`), then compressed as
/// an LZ4 block after their length. Sorted keys and similar orders halve
/// in size, and PostgreSQL's work is mostly in the bytes it writes.
fn pack(entries: &[Entry]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(&runs::encode_chunk(entries))
}

/// The entries of a stored chunk.
fn unpack(bytes: &[u8]) -> StoreResult<VecDeque<Entry>> {
    let corrupt = || StoreError::Corrupt("order chunk".into());
    let (size, body) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let size = u32::from_le_bytes(*size) as usize;
    if size > MAX_UNPACKED {
        return Err(corrupt());
    }
    let raw = lz4_flex::block::decompress(body, size).map_err(|_| corrupt())?;
    runs::decode_chunk(&raw)
}

/// The stored filters of location runs `runs` (those without one left
/// out).
pub(super) async fn filters(
    conn: &mut PgConnection,
    tenant: &str,
    runs: &[i64],
) -> StoreResult<HashMap<u64, Vec<u8>>> {
    let rows = sqlx::query(
        "SELECT run, filter FROM longrun_order_runs
          WHERE tenant = $1 AND family = $2 AND run = ANY($3) AND filter IS NOT NULL",
    )
    .bind(tenant)
    .bind(family_name(Family::Locations))
    .bind(runs)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|row| {
            let run: i64 = row.try_get("run").map_err(db)?;
            Ok((run as u64, row.try_get("filter").map_err(db)?))
        })
        .collect()
}

/// The entries of the location chunks that `wanted` (run, order_id) pairs
/// fall in, each chunk read once: per run, in key order.
pub(super) async fn chunks_holding(
    conn: &mut PgConnection,
    tenant: &str,
    wanted: &[(i64, &str)],
) -> StoreResult<HashMap<u64, Vec<Entry>>> {
    let (runs, ids): (Vec<i64>, Vec<&[u8]>) =
        wanted.iter().map(|(run, id)| (*run, id.as_bytes())).unzip();
    // A chunk is keyed by its last entry: the one an order_id falls in is
    // the first whose last is at or past it.
    let rows = sqlx::query(
        "WITH wanted AS (
             SELECT DISTINCT q.run,
                    (SELECT c.last FROM longrun_order_chunks c
                      WHERE c.tenant = $1 AND c.family = $2 AND c.run = q.run AND c.last >= q.id
                      ORDER BY c.last LIMIT 1) AS last
               FROM unnest($3::int8[], $4::bytea[]) AS q(run, id)
         )
         SELECT c.run, c.entries FROM wanted w
           JOIN longrun_order_chunks c
             ON c.tenant = $1 AND c.family = $2 AND c.run = w.run AND c.last = w.last
          ORDER BY c.run, c.last",
    )
    .bind(tenant)
    .bind(family_name(Family::Locations))
    .bind(&runs)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut held: HashMap<u64, Vec<Entry>> = HashMap::new();
    for row in &rows {
        let run: i64 = row.try_get("run").map_err(db)?;
        let entries: Vec<u8> = row.try_get("entries").map_err(db)?;
        held.entry(run as u64)
            .or_default()
            .extend(unpack(&entries)?);
    }
    Ok(held)
}

/// A family as the tables name it: the month's key (`YYYYMM`), or `ids`.
pub(super) fn family_name(family: Family) -> String {
    match family {
        Family::Month(key) => String::from_utf8_lossy(&key).into_owned(),
        Family::Locations => "ids".to_owned(),
    }
}

/// A month's key as the month column of `longrun_orders` and
/// `longrun_order_months` has it: year × 100 + month.
pub(super) fn month_number(key: &[u8; 6]) -> i32 {
    key.iter()
        .fold(0, |n, digit| n * 10 + i32::from(digit.wrapping_sub(b'0')))
}

/// The least key after `key`.
pub(super) fn after(key: &[u8]) -> Vec<u8> {
    [key, &[0]].concat()
}

/// Where a source's entries come from.
enum Origin {
    /// A run of the family.
    Run(i64),
    /// A month's rows from before runs: entries of sequence 0, older than
    /// every run.
    Legacy(i32),
}

/// One source of a family's entries in key order, read a page at a time:
/// the entries read and not yet merged, and the least key not read yet.
struct Source {
    origin: Origin,
    buffer: VecDeque<Entry>,
    from: Option<Vec<u8>>,
    done: bool,
}

impl Source {
    /// Reads the next `page` chunks (or rows) onto the buffer.
    async fn fetch(
        &mut self,
        conn: &mut PgConnection,
        tenant: &str,
        family: &str,
        page: i64,
    ) -> StoreResult<()> {
        match self.origin {
            Origin::Run(run) => {
                let rows = sqlx::query(
                    "SELECT last, entries FROM longrun_order_chunks
                      WHERE tenant = $1 AND family = $2 AND run = $3
                        AND ($4::bytea IS NULL OR last >= $4)
                      ORDER BY last LIMIT $5",
                )
                .bind(tenant)
                .bind(family)
                .bind(run)
                .bind(self.from.as_deref())
                .bind(page)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
                self.done = (rows.len() as i64) < page;
                for row in &rows {
                    let last: Vec<u8> = row.try_get("last").map_err(db)?;
                    let bytes: Vec<u8> = row.try_get("entries").map_err(db)?;
                    let from = self.from.as_deref();
                    self.buffer.extend(
                        unpack(&bytes)?
                            .into_iter()
                            .filter(|entry| from.is_none_or(|from| entry.key.as_slice() >= from)),
                    );
                    self.from = Some(after(&last));
                }
            }
            Origin::Legacy(month) => {
                // Positions sort as (created_at, order_id) do. `from` is
                // the least position to read, or the one after it.
                let (bound, inclusive) = match self.from.as_deref() {
                    Some([position @ .., 0]) => (Some(position), false),
                    from => (from, true),
                };
                let (time, id) = match bound {
                    Some(bound) => {
                        let (time, id) = runs::unposition(bound)
                            .ok_or_else(|| StoreError::Corrupt("order position".into()))?;
                        (Some(time), Some(id))
                    }
                    None => (None, None),
                };
                let compare = if inclusive { ">=" } else { ">" };
                let rows = sqlx::query(&format!(
                    "SELECT order_id, created_at, record FROM longrun_orders
                      WHERE tenant = $1 AND month = $2
                        AND ($3::int8 IS NULL OR (created_at, order_id) {compare} ($3, $4::text))
                      ORDER BY created_at, order_id LIMIT $5"
                ))
                .bind(tenant)
                .bind(month)
                .bind(time)
                .bind(id)
                .bind(page * ROWS_PER_CHUNK)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
                self.done = (rows.len() as i64) < page * ROWS_PER_CHUNK;
                for row in &rows {
                    let order_id: String = row.try_get("order_id").map_err(db)?;
                    let created_at: i64 = row.try_get("created_at").map_err(db)?;
                    let key = runs::position_of(created_at, &order_id);
                    self.from = Some(after(&key));
                    self.buffer.push_back(Entry {
                        key,
                        seq: 0,
                        value: Some(row.try_get("record").map_err(db)?),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A family's sources merged into each key's winning entry, a window at
/// a time: each window ends at the least key some unfinished source has
/// read up to, so that no later page can hold a key inside it.
pub(super) struct Reader {
    tenant: String,
    family: String,
    sources: Vec<Source>,
    /// Chunks each source reads per query.
    page: i64,
}

impl Reader {
    /// Reads runs `runs` of `family` (and the month's rows from before
    /// runs when `legacy` says so) from key `from` on.
    pub(super) fn new(
        tenant: &str,
        family: Family,
        runs: &[i64],
        legacy: bool,
        from: Option<Vec<u8>>,
    ) -> Self {
        let mut origins: Vec<Origin> = runs.iter().map(|&run| Origin::Run(run)).collect();
        if let (true, Family::Month(key)) = (legacy, family) {
            origins.push(Origin::Legacy(month_number(&key)));
        }
        Reader {
            tenant: tenant.to_owned(),
            family: family_name(family),
            sources: origins
                .into_iter()
                .map(|origin| Source {
                    origin,
                    buffer: VecDeque::new(),
                    from: from.clone(),
                    done: false,
                })
                .collect(),
            page: PAGE_CHUNKS,
        }
    }

    /// Reads `chunks` chunks per query (1 to `PAGE_CHUNKS`), for a reader
    /// that wants only a few entries.
    pub(super) fn paged(mut self, chunks: i64) -> Self {
        self.page = chunks.clamp(1, PAGE_CHUNKS);
        self
    }

    /// The next entries in key order (kills included), or none once every
    /// source is read.
    pub(super) async fn window(&mut self, conn: &mut PgConnection) -> StoreResult<Vec<Entry>> {
        loop {
            for source in &mut self.sources {
                if source.buffer.is_empty() && !source.done {
                    source
                        .fetch(conn, &self.tenant, &self.family, self.page)
                        .await?;
                }
            }
            if self.sources.iter().all(|s| s.done && s.buffer.is_empty()) {
                return Ok(Vec::new());
            }
            // Every unfinished source has read a page, so has a `from`.
            let bound = self
                .sources
                .iter()
                .filter(|s| !s.done)
                .filter_map(|s| s.from.clone())
                .min();
            let parts = self.sources.iter_mut().map(|source| {
                let end = match &bound {
                    Some(bound) => source.buffer.partition_point(|e| e.key < *bound),
                    None => source.buffer.len(),
                };
                source
                    .buffer
                    .drain(..end)
                    .map(Ok)
                    .collect::<Vec<_>>()
                    .into_iter()
            });
            let merged = Merge::new(parts.collect()).collect::<StoreResult<Vec<_>>>()?;
            if !merged.is_empty() {
                return Ok(merged);
            }
        }
    }
}

/// The live runs of `family`, oldest first.
pub(super) async fn manifest(
    conn: &mut PgConnection,
    tenant: &str,
    family: Family,
) -> StoreResult<Vec<Run>> {
    let rows = sqlx::query(
        "SELECT run, entries, least, greatest FROM longrun_order_runs
          WHERE tenant = $1 AND family = $2 ORDER BY run",
    )
    .bind(tenant)
    .bind(family_name(family))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|row| {
            Ok(Run {
                id: row.try_get::<i64, _>("run").map_err(db)? as u64,
                entries: row.try_get::<i64, _>("entries").map_err(db)? as u64,
                least: row.try_get("least").map_err(db)?,
                greatest: row.try_get("greatest").map_err(db)?,
            })
        })
        .collect()
}

/// Whether the tenant has rows from before runs in `family`.
pub(super) async fn has_legacy(
    conn: &mut PgConnection,
    tenant: &str,
    family: Family,
) -> StoreResult<bool> {
    let month = match family {
        Family::Month(key) => Some(month_number(&key)),
        Family::Locations => None,
    };
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM longrun_orders
                         WHERE tenant = $1 AND ($2::int4 IS NULL OR month = $2))",
    )
    .bind(tenant)
    .bind(month)
    .fetch_one(&mut *conn)
    .await
    .map_err(db)
}

/// Chunks and runs on their way into the tables, stored a statement's
/// worth at a time.
pub(super) struct Pending<'a> {
    tenant: &'a str,
    families: Vec<String>,
    runs: Vec<i64>,
    lasts: Vec<Vec<u8>>,
    bytes: Vec<Vec<u8>>,
}

impl<'a> Pending<'a> {
    pub(super) fn new(tenant: &'a str) -> Self {
        Pending {
            tenant,
            families: Vec::new(),
            runs: Vec::new(),
            lasts: Vec::new(),
            bytes: Vec::new(),
        }
    }

    /// Adds a chunk of `entries` (in key order, not empty) to run `run`.
    pub(super) async fn chunk(
        &mut self,
        conn: &mut PgConnection,
        family: Family,
        run: u64,
        entries: &[Entry],
    ) -> StoreResult<()> {
        self.families.push(family_name(family));
        self.runs.push(run as i64);
        self.lasts
            .push(entries.last().map(|e| e.key.clone()).unwrap_or_default());
        self.bytes.push(pack(entries));
        if self.bytes.len() >= INSERT_CHUNKS {
            self.flush(conn).await?;
        }
        Ok(())
    }

    /// Stores the chunks added so far.
    pub(super) async fn flush(&mut self, conn: &mut PgConnection) -> StoreResult<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO longrun_order_chunks (tenant, family, run, last, entries)
             SELECT $1, * FROM unnest($2::text[], $3::int8[], $4::bytea[], $5::bytea[])",
        )
        .bind(self.tenant)
        .bind(std::mem::take(&mut self.families))
        .bind(std::mem::take(&mut self.runs))
        .bind(std::mem::take(&mut self.lasts))
        .bind(std::mem::take(&mut self.bytes))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        Ok(())
    }
}

/// Lists run `run` of `family` in its manifest.
pub(super) async fn list_run(
    conn: &mut PgConnection,
    tenant: &str,
    family: Family,
    run: &Run,
    filter: Option<Vec<u8>>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO longrun_order_runs (tenant, family, run, entries, least, greatest, filter)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(family_name(family))
    .bind(run.id as i64)
    .bind(run.entries as i64)
    .bind(&run.least)
    .bind(&run.greatest)
    .bind(filter)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Writes `entries` as run `run` of `family` (chunks through `pending`)
/// and lists it.
pub(super) async fn add_run(
    conn: &mut PgConnection,
    pending: &mut Pending<'_>,
    family: Family,
    run: u64,
    mut entries: Vec<Entry>,
) -> StoreResult<()> {
    entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    for chunk in runs::chunks_of(&entries, CHUNK_BYTES) {
        pending.chunk(conn, family, run, chunk).await?;
    }
    let listed = Run {
        id: run,
        entries: entries.len() as u64,
        least: entries.first().map(|e| e.key.clone()).unwrap_or_default(),
        greatest: entries.last().map(|e| e.key.clone()).unwrap_or_default(),
    };
    let filter = family.filter_of(&entries);
    list_run(conn, pending.tenant, family, &listed, filter).await
}

/// Merges runs `inputs` of `family`, which hold `held` entries between
/// them, into run `out`, and deletes them. Kills are dropped when the
/// inputs are everything the family holds.
pub(super) async fn merge(
    conn: &mut PgConnection,
    tenant: &str,
    family: Family,
    (inputs, held): (&[u64], u64),
    everything: bool,
    out: u64,
) -> StoreResult<()> {
    let ids: Vec<i64> = inputs.iter().map(|&id| id as i64).collect();
    let mut reader = Reader::new(tenant, family, &ids, false, None);
    let mut pending = Pending::new(tenant);
    let mut merged = MergedRun::new(out, family, held, CHUNK_BYTES, everything);
    loop {
        let window = reader.window(conn).await?;
        if window.is_empty() {
            break;
        }
        for entry in window {
            if let Some(chunk) = merged.push(entry) {
                pending.chunk(conn, family, out, &chunk).await?;
            }
        }
    }
    let (last, listed, filter) = merged.finish();
    if let Some(chunk) = last {
        pending.chunk(conn, family, out, &chunk).await?;
    }
    pending.flush(conn).await?;
    for table in ["longrun_order_chunks", "longrun_order_runs"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE tenant = $1 AND family = $2 AND run = ANY($3)"
        ))
        .bind(tenant)
        .bind(family_name(family))
        .bind(&ids)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    if let Some(listed) = listed {
        list_run(conn, tenant, family, &listed, filter).await?;
    }
    Ok(())
}
