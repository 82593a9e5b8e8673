//! Staging an uploaded CSV file: written to the file store chunk by chunk,
//! checked as it arrives (size limit, UTF-8, a header naming every column),
//! and made durable and visible only when it passed every check. Only such
//! a file becomes an import operation.

use sha2::{Digest, Sha256};

use super::Reports;
use super::rows::ColumnMap;
use crate::store::{FileStore, FileWriter, StoreError};

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
    /// The store failed.
    #[error("could not store the upload: {0}")]
    Store(#[from] StoreError),
}

/// An upload in progress.
pub struct Upload {
    writer: Box<dyn FileWriter>,
    name: String,
    size: u64,
    limit: u64,
    hasher: Sha256,
    /// The tail of the last chunk when it ended inside a UTF-8 sequence.
    carry: Vec<u8>,
    /// The header line, until it is complete and checked.
    header: Option<Vec<u8>>,
}

/// A checked upload, durable in the file store.
#[derive(Debug, Clone)]
pub struct StagedUpload {
    /// Its name among uploads.
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Upload {
    pub(super) async fn create(files: &dyn FileStore, limit: u64) -> Result<Self, UploadError> {
        let name = format!("{}.csv", uuid::Uuid::now_v7());
        let writer = files.create(&Reports::upload_file(&name)).await?;
        Ok(Self {
            writer,
            name,
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
        self.writer.write(chunk).await?;
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
    /// and makes the file durable and visible.
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
        self.writer.finish().await?;
        Ok(StagedUpload {
            name: self.name,
            size: self.size,
            sha256: self.hasher.finalize().into(),
        })
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
