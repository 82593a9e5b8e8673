//! [`FileStore`] on PostgreSQL: a file is a row naming its writer, size and
//! chunk count, and its bytes are rows of up to [`CHUNK`] bytes each. A
//! writer inserts its chunks as it goes (each insert commits on its own, so
//! memory stays at one chunk); finishing points the file's row at them and
//! drops the chunks of the file it replaces, in one transaction.

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio_util::task::TaskTracker;

use super::{PgStore, db};
use crate::store::files::{FileRead, FileStore, FileWriter, READ_CHUNK, check_name};
use crate::store::{StoreError, StoreResult};

/// Bytes per stored chunk.
pub const CHUNK: usize = 1 << 20;

#[async_trait]
impl FileStore for PgStore {
    async fn create(&self, name: &str) -> StoreResult<Box<dyn FileWriter>> {
        check_name(name)?;
        Ok(Box::new(PgWriter {
            pool: self.pool().clone(),
            tasks: self.inner.tasks.clone(),
            name: name.to_owned(),
            writer: uuid::Uuid::now_v7(),
            buffer: Vec::with_capacity(CHUNK),
            chunks: 0,
            size: 0,
            finished: false,
        }))
    }

    async fn open(&self, name: &str) -> StoreResult<Option<FileRead>> {
        check_name(name)?;
        let Some(row) =
            sqlx::query("SELECT writer, size, chunks FROM longrun_files WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await
                .map_err(db)?
        else {
            return Ok(None);
        };
        let writer: uuid::Uuid = row.try_get("writer").map_err(db)?;
        let size: i64 = row.try_get("size").map_err(db)?;
        let chunks: i32 = row.try_get("chunks").map_err(db)?;
        let reading = Reading {
            pool: self.pool().clone(),
            name: name.to_owned(),
            writer,
            next: 0,
            chunks,
            pending: Bytes::new(),
        };
        let stream = futures_util::stream::unfold(Some(reading), |reading| async move {
            let mut reading = reading?;
            match reading.next_piece().await {
                Ok(Some(piece)) => Some((Ok(piece), Some(reading))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Some(FileRead {
            size: u64::try_from(size).unwrap_or(0),
            chunks: Box::pin(stream),
        }))
    }

    async fn remove(&self, name: &str) -> StoreResult<()> {
        check_name(name)?;
        let mut tx = self.pool().begin().await.map_err(db)?;
        sqlx::query("DELETE FROM longrun_files WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM longrun_file_chunks WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }
}

/// A file being read: the chunk to fetch next, and what is left of the
/// last one fetched.
struct Reading {
    pool: PgPool,
    name: String,
    writer: uuid::Uuid,
    next: i32,
    chunks: i32,
    pending: Bytes,
}

impl Reading {
    async fn next_piece(&mut self) -> StoreResult<Option<Bytes>> {
        if self.pending.is_empty() {
            if self.next >= self.chunks {
                return Ok(None);
            }
            let row = sqlx::query(
                "SELECT data FROM longrun_file_chunks WHERE name = $1 AND writer = $2 AND seq = $3",
            )
            .bind(&self.name)
            .bind(self.writer)
            .bind(self.next)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            // Replaced or removed while it was read.
            .ok_or(StoreError::NotFound)?;
            let data: Vec<u8> = row.try_get("data").map_err(db)?;
            self.pending = Bytes::from(data);
            self.next += 1;
        }
        let n = self.pending.len().min(READ_CHUNK);
        Ok(Some(self.pending.split_to(n)))
    }
}

struct PgWriter {
    pool: PgPool,
    /// The store's tasks, where an abandoned writer's clean-up runs.
    tasks: TaskTracker,
    name: String,
    writer: uuid::Uuid,
    buffer: Vec<u8>,
    chunks: i32,
    size: u64,
    finished: bool,
}

impl PgWriter {
    /// Stores the buffered bytes as the next chunk.
    async fn store_chunk(&mut self) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO longrun_file_chunks (name, writer, seq, data) VALUES ($1, $2, $3, $4)",
        )
        .bind(&self.name)
        .bind(self.writer)
        .bind(self.chunks)
        .bind(&self.buffer)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        self.chunks += 1;
        self.buffer.clear();
        Ok(())
    }
}

#[async_trait]
impl FileWriter for PgWriter {
    async fn write(&mut self, mut bytes: &[u8]) -> StoreResult<()> {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = (CHUNK - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buffer.len() == CHUNK {
                self.store_chunk().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> StoreResult<u64> {
        if !self.buffer.is_empty() {
            self.store_chunk().await?;
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let replaced: Option<uuid::Uuid> =
            sqlx::query("SELECT writer FROM longrun_files WHERE name = $1 FOR UPDATE")
                .bind(&self.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .map(|row| row.try_get("writer"))
                .transpose()
                .map_err(db)?;
        sqlx::query(
            "INSERT INTO longrun_files (name, writer, size, chunks) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET writer = $2, size = $3, chunks = $4",
        )
        .bind(&self.name)
        .bind(self.writer)
        .bind(i64::try_from(self.size).unwrap_or(i64::MAX))
        .bind(self.chunks)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(old) = replaced.filter(|old| *old != self.writer) {
            sqlx::query("DELETE FROM longrun_file_chunks WHERE name = $1 AND writer = $2")
                .bind(&self.name)
                .bind(old)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.finished = true;
        Ok(self.size)
    }
}

impl Drop for PgWriter {
    fn drop(&mut self) {
        if self.finished || self.chunks == 0 {
            return;
        }
        // Abandoned: its chunks go, in the background. Should that fail
        // too, removing the file's name removes them later.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pool, name, writer) = (self.pool.clone(), self.name.clone(), self.writer);
        self.tasks.spawn_on(
            async move {
                let _ =
                    sqlx::query("DELETE FROM longrun_file_chunks WHERE name = $1 AND writer = $2")
                        .bind(name)
                        .bind(writer)
                        .execute(&pool)
                        .await;
            },
            &runtime,
        );
    }
}
