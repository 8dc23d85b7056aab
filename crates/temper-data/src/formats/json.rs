//! JSON lines (streamed line by line) and JSON array files.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::{RawRecord, record_error};
use crate::error::{Error, Location, Position, Problem, Result};

/// The records of a JSON lines stream, one per non-blank line, read as they are needed.
pub(super) struct JsonLines<R> {
    reader: R,
    file: Arc<Path>,
    line: usize,
    buffer: Vec<u8>,
    done: bool,
}

impl<R: BufRead> JsonLines<R> {
    /// `lines_before`: lines already consumed from `reader`.
    pub(super) fn new(reader: R, file: &Arc<Path>, lines_before: usize) -> Self {
        JsonLines {
            reader,
            file: Arc::clone(file),
            line: lines_before,
            buffer: Vec::new(),
            done: false,
        }
    }

    fn at(&self) -> Location {
        Location::new(&self.file, Position::Line(self.line))
    }
}

impl<R: BufRead> Iterator for JsonLines<R> {
    type Item = RawRecord;

    fn next(&mut self) -> Option<RawRecord> {
        while !self.done {
            self.buffer.clear();
            match self.reader.read_until(b'\n', &mut self.buffer) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    self.line += 1;
                    let text = match std::str::from_utf8(&self.buffer) {
                        Ok(text) => text,
                        Err(error) => {
                            return Some(Err(record_error(
                                self.at(),
                                Problem::InvalidUtf8,
                                format!(
                                    "invalid UTF-8 at byte {} of the line",
                                    error.valid_up_to() + 1
                                ),
                            )));
                        }
                    };
                    let text = text.trim_start_matches('\u{feff}').trim();
                    if text.is_empty() {
                        continue;
                    }
                    return Some(
                        serde_json::from_str::<Value>(text)
                            .map(|value| (Position::Line(self.line), value))
                            .map_err(|error| {
                                record_error(
                                    self.at(),
                                    Problem::InvalidJson,
                                    format!("invalid JSON: {}", strip_position(&error)),
                                )
                            }),
                    );
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(Error::Io {
                        path: self.file.to_path_buf(),
                        error,
                    }));
                }
            }
        }
        None
    }
}

/// serde_json appends " at line 1 column 7"; the line is ours to report.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => format!("{} (column {})", &text[..at], error.column()),
        None => text,
    }
}

/// A JSON array file: each element is parsed on its own so that one bad element names its
/// own line (and can be skipped).
/// `lines_before`: lines of whitespace before `bytes` in the file.
pub(super) fn array_records(
    file: &Arc<Path>,
    bytes: &[u8],
    lines_before: usize,
) -> Result<Vec<RawRecord>> {
    let at = |line: usize| Location::new(file, Position::Line(lines_before + line));
    let text = std::str::from_utf8(bytes).map_err(|error| {
        let line = 1 + bytes[..error.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        record_error(at(line), Problem::InvalidUtf8, "invalid UTF-8")
    })?;
    let elements = split_top_level_array(text).map_err(|(offset, message)| {
        let line = 1 + text[..offset].matches('\n').count();
        record_error(
            at(line),
            Problem::InvalidJson,
            format!("invalid JSON: {message}"),
        )
    })?;
    Ok(elements
        .into_iter()
        .map(|(start, end)| {
            let line = 1 + text[..start].matches('\n').count();
            serde_json::from_str::<Value>(&text[start..end])
                .map(|value| (Position::Line(lines_before + line), value))
                .map_err(|error| {
                    record_error(
                        at(line + error.line() - 1),
                        Problem::InvalidJson,
                        format!("invalid JSON: {}", strip_position(&error)),
                    )
                })
        })
        .collect())
}

/// Byte ranges of the elements of a top-level JSON array, found by tracking strings and
/// nesting (elements are validated by serde_json afterwards).
fn split_top_level_array(text: &str) -> std::result::Result<Vec<(usize, usize)>, (usize, String)> {
    let bytes = text.as_bytes();
    let open = bytes.iter().position(|&b| b == b'[').unwrap_or(0);
    let mut elements = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut element_start: Option<usize> = None;
    let mut closed_at = None;
    for (offset, &byte) in bytes.iter().enumerate().skip(open + 1) {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                element_start.get_or_insert(offset);
            }
            b'[' | b'{' => {
                depth += 1;
                element_start.get_or_insert(offset);
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            b']' => {
                if let Some(start) = element_start.take() {
                    elements.push((start, offset));
                }
                closed_at = Some(offset);
                break;
            }
            b',' if depth == 0 => match element_start.take() {
                Some(start) => elements.push((start, offset)),
                None => return Err((offset, "unexpected `,` (an empty array element)".into())),
            },
            b if b.is_ascii_whitespace() => {}
            _ => {
                element_start.get_or_insert(offset);
            }
        }
    }
    let Some(closed_at) = closed_at else {
        return Err((
            text.len(),
            "the top-level array is not closed (is the file truncated?)".into(),
        ));
    };
    if let Some(extra) = text[closed_at + 1..].find(|c: char| !c.is_whitespace()) {
        return Err((
            closed_at + 1 + extra,
            "unexpected text after the top-level array".into(),
        ));
    }
    Ok(elements)
}
