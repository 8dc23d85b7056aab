//! CSV and TSV files: a header row names the columns; each row becomes an object of strings.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{RawRecord, file_error, record_error};
use crate::error::{Error, Location, Position, Problem, Result};

/// The rows of a CSV (`delimiter` b',') or TSV (b'\t') stream, read as they are needed.
pub(super) struct Rows<R> {
    records: csv::StringRecordsIntoIter<R>,
    header: Vec<String>,
    file: Arc<Path>,
    row: usize,
    done: bool,
}

impl<R: Read> Rows<R> {
    pub(super) fn new(reader: R, delimiter: u8, file: &Arc<Path>) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .from_reader(reader);
        let header = reader
            .headers()
            .map_err(|error| file_error(file, format!("cannot read the header row: {error}")))?;
        let header: Vec<String> = header
            .iter()
            .map(|name| name.trim_start_matches('\u{feff}').to_owned())
            .collect();
        if header.iter().all(String::is_empty) {
            return Err(file_error(file, "is empty (no header row)"));
        }
        for (index, name) in header.iter().enumerate() {
            if header[..index].contains(name) {
                return Err(file_error(
                    file,
                    format!("the header row names column `{name}` twice"),
                ));
            }
        }
        Ok(Rows {
            records: reader.into_records(),
            header,
            file: Arc::clone(file),
            row: 0,
            done: false,
        })
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = RawRecord;

    fn next(&mut self) -> Option<RawRecord> {
        if self.done {
            return None;
        }
        let Some(next) = self.records.next() else {
            self.done = true;
            return None;
        };
        self.row += 1;
        let at = Location::new(&self.file, Position::Row(self.row));
        let record = match next {
            Ok(record) => record,
            Err(error) => {
                return Some(Err(match error.into_kind() {
                    csv::ErrorKind::Utf8 { err, .. } => record_error(
                        at,
                        Problem::InvalidUtf8,
                        format!("invalid UTF-8 in field {}", err.field() + 1),
                    ),
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => record_error(
                        at,
                        Problem::WrongType,
                        format!("has {len} fields; the header row has {expected_len}"),
                    ),
                    csv::ErrorKind::Io(error) => {
                        self.done = true;
                        Error::Io {
                            path: self.file.to_path_buf(),
                            error,
                        }
                    }
                    other => {
                        self.done = true;
                        file_error(&self.file, format!("at row {}: {other:?}", self.row))
                    }
                }));
            }
        };
        let object: Map<String, Value> = self
            .header
            .iter()
            .zip(record.iter())
            .map(|(name, field)| (name.clone(), Value::String(field.to_owned())))
            .collect();
        Some(Ok((Position::Row(self.row), Value::Object(object))))
    }
}
