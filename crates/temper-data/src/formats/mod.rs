//! Dataset file formats: each reader yields the records of a file as JSON values with their
//! positions, so field mapping and format detection are one code path for every format.
//!
//! | file | records | positions |
//! |---|---|---|
//! | `.jsonl` (any other name too) | one JSON object a line, streamed | lines |
//! | `.json` | one JSON array of objects | lines |
//! | `.csv`, `.tsv` | a header row, then one object of strings a row | rows |
//! | `.parquet` | Arrow columns, nested ones as JSON arrays and objects | rows |
//! | `.arrow` (`save_to_disk`), `.feather`, `.ipc` | the same, from Arrow IPC | rows |
//!
//! Any of them may be gzip- or zstd-compressed (`train.jsonl.gz`, `train.csv.zst`): the
//! compression is recognised by its magic bytes, the format by the name without it.

mod arrow;
mod delimited;
mod json;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::error::{Error, Location, Position, Problem, Result};

/// A record's position and JSON value, or why it cannot be read.
pub type RawRecord = Result<(Position, Value)>;

/// The records of one file, read as they are needed.
pub type Records = Box<dyn Iterator<Item = RawRecord>>;

/// The layout of a dataset file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JSON lines or a JSON array (told apart by the first character).
    Json,
    Csv,
    Tsv,
    Parquet,
    /// Arrow IPC, file or stream.
    Arrow,
}

impl FileFormat {
    /// The format a file name says (after a `.gz`/`.zst` suffix); `None` for names that say
    /// nothing, which are read as JSON unless their bytes are Parquet or Arrow.
    pub fn from_name(path: &Path) -> Option<FileFormat> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name
            .strip_suffix(".gz")
            .or_else(|| name.strip_suffix(".zst"))
            .or_else(|| name.strip_suffix(".zstd"))
            .unwrap_or(&name);
        let extension = name.rsplit_once('.')?.1;
        Some(match extension {
            "jsonl" | "json" | "ndjson" => FileFormat::Json,
            "csv" => FileFormat::Csv,
            "tsv" | "tab" => FileFormat::Tsv,
            "parquet" | "pq" => FileFormat::Parquet,
            "arrow" | "feather" | "ipc" => FileFormat::Arrow,
            _ => return None,
        })
    }
}

/// Whether a file is one this module reads, by its name.
pub fn is_data_file(path: &Path) -> bool {
    FileFormat::from_name(path).is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

pub(crate) fn record_error(at: Location, problem: Problem, message: impl Into<String>) -> Error {
    Error::Record {
        at,
        problem,
        message: message.into(),
    }
}

fn file_error(file: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: file.to_owned(),
        message: message.into(),
    }
}

/// A file that counts the bytes read from it, when asked to.
struct Counted {
    file: File,
    bytes_read: Option<Arc<AtomicU64>>,
}

impl Read for Counted {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.file.read(buffer)?;
        if let Some(bytes_read) = &self.bytes_read {
            bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        }
        Ok(read)
    }
}

/// Opens a dataset file of any supported format and compression; `bytes_read` (if given)
/// counts the bytes read from the file as its records are read (an uncompressed Parquet
/// file, read by position, does not count).
pub fn open(file: &Arc<Path>, bytes_read: Option<Arc<AtomicU64>>) -> Result<Records> {
    let io = |error| Error::Io {
        path: file.to_path_buf(),
        error,
    };
    let counted = Counted {
        file: File::open(file).map_err(io)?,
        bytes_read,
    };
    let mut reader = BufReader::with_capacity(1 << 16, counted);
    let head = reader.fill_buf().map_err(io)?.to_vec();
    if head.is_empty() {
        return Err(file_error(file, "is empty"));
    }
    let compression = Compression::sniff(&head);
    let named = FileFormat::from_name(file);
    let format = match named {
        _ if head.starts_with(b"PAR1") => FileFormat::Parquet,
        _ if head.starts_with(b"ARROW1") => FileFormat::Arrow,
        Some(format) => format,
        None => FileFormat::Json,
    };
    if format == FileFormat::Parquet && compression == Compression::None {
        // Parquet is read from its footer: the file itself, not a stream.
        return Ok(Box::new(arrow::BatchRows::new(
            arrow::parquet_batches(reader.into_inner().file, file)?,
            file,
        )));
    }
    let mut text: Box<dyn BufRead> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(reader))),
        Compression::Zstd => Box::new(BufReader::new(
            zstd::stream::read::Decoder::with_buffer(reader).map_err(io)?,
        )),
    };
    match format {
        FileFormat::Parquet => {
            let bytes = read_all(&mut text, file)?;
            Ok(Box::new(arrow::BatchRows::new(
                arrow::parquet_batches(bytes::Bytes::from(bytes), file)?,
                file,
            )))
        }
        FileFormat::Arrow => {
            let bytes = read_all(&mut text, file)?;
            Ok(Box::new(arrow::BatchRows::new(
                arrow::ipc_batches(bytes, file)?,
                file,
            )))
        }
        FileFormat::Csv => Ok(Box::new(delimited::Rows::new(text, b',', file)?)),
        FileFormat::Tsv => Ok(Box::new(delimited::Rows::new(text, b'\t', file)?)),
        FileFormat::Json => {
            // Whitespace before the first record is skipped, its lines counted.
            let mut lines_before = 0;
            let first = loop {
                let buffer = text.fill_buf().map_err(io)?;
                match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
                    Some(at) => break Some(buffer[at]),
                    None if buffer.is_empty() => break None,
                    None => {
                        let length = buffer.len();
                        lines_before += buffer.iter().filter(|&&b| b == b'\n').count();
                        text.consume(length);
                    }
                }
            };
            match first {
                None => Err(file_error(file, "is empty")),
                Some(b'[') => {
                    let bytes = read_all(&mut text, file)?;
                    Ok(Box::new(
                        json::array_records(file, &bytes, lines_before)?.into_iter(),
                    ))
                }
                Some(_) => Ok(Box::new(json::JsonLines::new(text, file, lines_before))),
            }
        }
    }
}

fn read_all(reader: &mut dyn Read, file: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => file_error(
                file,
                format!("cannot decompress (is the file truncated or corrupt?): {error}"),
            ),
            _ => Error::Io {
                path: file.to_owned(),
                error,
            },
        })?;
    Ok(bytes)
}
