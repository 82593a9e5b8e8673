//! Files too large for a record (staged uploads, rendered reports), behind
//! [`FileStore`], and the plain-directory implementation the embedded
//! backend uses. The PostgreSQL backend keeps them in the database, in
//! chunks, so that every node reads every file.
//!
//! A file is written through a [`FileWriter`] and appears under its name
//! only when finished, whole and durable; until then (and after a crash or
//! an abandoned write) readers see the earlier file of that name, or none.

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{StoreError, StoreResult};

/// Bytes per chunk when a file is read.
pub const READ_CHUNK: usize = 64 * 1024;

/// A finished file, opened for reading.
pub struct FileRead {
    /// Its length in bytes.
    pub size: u64,
    /// Its bytes, in order, in chunks of at most [`READ_CHUNK`].
    pub chunks: BoxStream<'static, StoreResult<Bytes>>,
}

/// Storage for named files. Names are paths of `/`-separated parts made of
/// ASCII letters, digits, `-`, `_` and `.` (`reports/{uuid}.csv`), chosen
/// by the caller.
#[async_trait]
pub trait FileStore: Send + Sync + 'static {
    /// Starts writing `name`. It replaces any earlier file of that name when
    /// [`FileWriter::finish`] returns.
    async fn create(&self, name: &str) -> StoreResult<Box<dyn FileWriter>>;

    /// Opens the finished file `name`; None when there is none.
    async fn open(&self, name: &str) -> StoreResult<Option<FileRead>>;

    /// Removes `name`, with whatever an unfinished write of it left behind.
    /// Removing what is not there is not an error.
    async fn remove(&self, name: &str) -> StoreResult<()>;
}

/// A file being written. Dropped unfinished, it leaves nothing visible.
#[async_trait]
pub trait FileWriter: Send {
    /// Appends `bytes`.
    async fn write(&mut self, bytes: &[u8]) -> StoreResult<()>;

    /// Makes the file durable and visible under its name; returns its size.
    async fn finish(self: Box<Self>) -> StoreResult<u64>;
}

/// Checks a file name (see [`FileStore`]).
pub(crate) fn check_name(name: &str) -> StoreResult<()> {
    let part_ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if name.len() <= 256 && name.split('/').all(part_ok) {
        Ok(())
    } else {
        Err(StoreError::Backend(format!("{name:?} is not a file name")))
    }
}

fn io_failure(what: &str, name: &str, e: io::Error) -> StoreError {
    if e.raw_os_error() == Some(28) {
        // ENOSPC: the same state as a full store.
        return StoreError::Full;
    }
    StoreError::Backend(format!("cannot {what} {name}: {e}"))
}

/// Files in a directory: `name` is a path below it. A file is written
/// under `name.part`, synced, and renamed into place.
#[derive(Clone, Debug)]
pub struct DirFiles {
    root: PathBuf,
}

impl DirFiles {
    /// Files below `root`, which is created if missing.
    pub fn open(root: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| io_failure("create", "the files directory", e))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> StoreResult<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }
}

fn part_path(path: &Path) -> PathBuf {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    PathBuf::from(part)
}

#[async_trait]
impl FileStore for DirFiles {
    async fn create(&self, name: &str) -> StoreResult<Box<dyn FileWriter>> {
        let path = self.path(name)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_failure("create the directory of", name, e))?;
        }
        let temp = part_path(&path);
        let file = File::create(&temp)
            .await
            .map_err(|e| io_failure("create", name, e))?;
        Ok(Box::new(DirWriter {
            file: Some(file),
            temp,
            path,
            name: name.to_owned(),
            size: 0,
            placed: false,
        }))
    }

    async fn open(&self, name: &str) -> StoreResult<Option<FileRead>> {
        let path = self.path(name)?;
        let file = match File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_failure("open", name, e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| io_failure("open", name, e))?
            .len();
        let name = name.to_owned();
        let chunks = futures_util::stream::unfold(Some(file), move |file| {
            let name = name.clone();
            async move {
                let mut file = file?;
                let mut buf = vec![0u8; READ_CHUNK];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), Some(file)))
                    }
                    Err(e) => Some((Err(io_failure("read", &name, e)), None)),
                }
            }
        });
        Ok(Some(FileRead {
            size,
            chunks: Box::pin(chunks),
        }))
    }

    async fn remove(&self, name: &str) -> StoreResult<()> {
        let path = self.path(name)?;
        for path in [part_path(&path), path] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_failure("remove", name, e)),
            }
        }
        Ok(())
    }
}

struct DirWriter {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
    name: String,
    size: u64,
    /// Renamed into place: the temporary name no longer exists.
    placed: bool,
}

#[async_trait]
impl FileWriter for DirWriter {
    async fn write(&mut self, bytes: &[u8]) -> StoreResult<()> {
        let file = self.file.as_mut().expect("open until finished");
        file.write_all(bytes)
            .await
            .map_err(|e| io_failure("write", &self.name, e))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> StoreResult<u64> {
        let name = self.name.clone();
        let fail = |e| io_failure("store", &name, e);
        let mut file = self.file.take().expect("open until finished");
        file.flush().await.map_err(fail)?;
        file.sync_all().await.map_err(fail)?;
        drop(file);
        tokio::fs::rename(&self.temp, &self.path)
            .await
            .map_err(fail)?;
        self.placed = true;
        // The rename itself must survive a crash too.
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .await
                .map_err(fail)?
                .sync_all()
                .await
                .map_err(fail)?;
        }
        Ok(self.size)
    }
}

impl Drop for DirWriter {
    fn drop(&mut self) {
        // Abandoned, or failed before it was renamed: nothing stays behind.
        if !self.placed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
