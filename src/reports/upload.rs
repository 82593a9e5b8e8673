//! Staging an uploaded CSV file: written to a temporary file chunk by
//! chunk, checked as it arrives (size limit, UTF-8, a header naming every
//! column), then made durable under its final name. Only a file that passed
//! every check becomes an import operation.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

use super::rows::ColumnMap;

/// The longest header line accepted.
const MAX_HEADER: usize = 64 * 1024;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No bytes at all.
    #[error("the upload is empty; send the CSV file in csv_chunk")]
    Empty,
    /// More bytes than the limit.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// Not valid UTF-8.
    #[error("the upload is not UTF-8 text (invalid byte sequence at offset {offset})")]
    NotUtf8 { offset: u64 },
    /// The first line is not a usable header.
    #[error("{0}")]
    BadHeader(String),
    /// The disk failed.
    #[error("could not store the upload: {0}")]
    Io(#[from] std::io::Error),
}

/// An upload in progress.
pub struct Upload {
    file: Option<File>,
    temp: PathBuf,
    dir: PathBuf,
    size: u64,
    limit: u64,
    hasher: Sha256,
    /// The tail of the last chunk when it ended inside a UTF-8 sequence.
    carry: Vec<u8>,
    /// The header line, until it is complete and checked.
    header: Option<Vec<u8>>,
}

/// A checked upload, durable on disk.
#[derive(Debug, Clone)]
pub struct StagedUpload {
    /// Its file name in the uploads directory.
    pub name: String,
    /// Its full path.
    pub path: PathBuf,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Upload {
    pub(super) async fn create(dir: &Path, limit: u64) -> Result<Self, UploadError> {
        let temp = dir.join(format!("{}.part", uuid::Uuid::now_v7()));
        let file = File::create(&temp).await?;
        Ok(Self {
            file: Some(file),
            temp,
            dir: dir.to_path_buf(),
            size: 0,
            limit,
            hasher: Sha256::new(),
            carry: Vec::new(),
            header: Some(Vec::new()),
        })
    }

    /// Appends a chunk, checking it.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.size + chunk.len() as u64 > self.limit {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        self.check_utf8(chunk)?;
        self.collect_header(chunk)?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file
            .as_mut()
            .expect("open until finished")
            .write_all(chunk)
            .await?;
        Ok(())
    }

    fn check_utf8(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(chunk);
        let start = self.size - (bytes.len() - chunk.len()) as u64;
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(()),
            // Cut off in the middle of a character: keep the tail for the
            // next chunk.
            Err(e) if e.error_len().is_none() => {
                self.carry = bytes[e.valid_up_to()..].to_vec();
                Ok(())
            }
            Err(e) => Err(UploadError::NotUtf8 {
                offset: start + e.valid_up_to() as u64,
            }),
        }
    }

    fn collect_header(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        let Some(header) = self.header.as_mut() else {
            return Ok(());
        };
        match chunk.iter().position(|b| *b == b'\n') {
            Some(end) => {
                header.extend_from_slice(&chunk[..end]);
                let line = self.header.take().expect("just used");
                check_header(&line)
            }
            None => {
                header.extend_from_slice(chunk);
                if header.len() > MAX_HEADER {
                    return Err(UploadError::BadHeader(format!(
                        "the first line is longer than {MAX_HEADER} bytes; it must be the CSV header"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Finishes the upload: checks what can only be checked at the end,
    /// syncs the file and gives it its final name.
    pub async fn finish(mut self) -> Result<StagedUpload, UploadError> {
        if self.size == 0 {
            return Err(UploadError::Empty);
        }
        if !self.carry.is_empty() {
            return Err(UploadError::NotUtf8 {
                offset: self.size - self.carry.len() as u64,
            });
        }
        if let Some(line) = self.header.take() {
            check_header(&line)?;
        }
        let mut file = self.file.take().expect("open until finished");
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        let name = format!("{}.csv", uuid::Uuid::now_v7());
        let path = self.dir.join(&name);
        tokio::fs::rename(&self.temp, &path).await?;
        // The rename itself must survive a crash too.
        File::open(&self.dir).await?.sync_all().await?;
        Ok(StagedUpload {
            name,
            path,
            size: self.size,
            sha256: std::mem::take(&mut self.hasher).finalize().into(),
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // A refused or abandoned upload leaves nothing behind. After
        // `finish` the temporary name no longer exists; that is fine.
        let _ = std::fs::remove_file(&self.temp);
    }
}

fn check_header(line: &[u8]) -> Result<(), UploadError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(UploadError::BadHeader(
            "the upload has no header: its first line is empty".into(),
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(line);
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => ColumnMap::from_header(record.iter())
            .map(|_| ())
            .map_err(UploadError::BadHeader),
        _ => Err(UploadError::BadHeader(
            "the first line is not a CSV header".into(),
        )),
    }
}
