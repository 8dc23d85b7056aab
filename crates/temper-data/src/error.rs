//! Errors of temper-data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a record could not be used. Records skipped under `on_error = "skip"` are counted by
/// these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    InvalidJson,
    InvalidUtf8,
    MissingField,
    WrongType,
    UnknownRole,
    EmptyConversation,
    NoAssistantTurn,
    EmptyResponse,
    UnknownFormat,
    TemplateError,
    TooLong,
    NoTrainedTokens,
    Duplicate,
    NearDuplicate,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::InvalidJson => "invalid_json",
            Problem::InvalidUtf8 => "invalid_utf8",
            Problem::MissingField => "missing_field",
            Problem::WrongType => "wrong_type",
            Problem::UnknownRole => "unknown_role",
            Problem::EmptyConversation => "empty_conversation",
            Problem::NoAssistantTurn => "no_assistant_turn",
            Problem::EmptyResponse => "empty_response",
            Problem::UnknownFormat => "unknown_format",
            Problem::TemplateError => "template_error",
            Problem::TooLong => "too_long",
            Problem::NoTrainedTokens => "no_trained_tokens",
            Problem::Duplicate => "duplicate",
            Problem::NearDuplicate => "near_duplicate",
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a record is in its file: a line of a text format (JSON lines, a JSON array), or a
/// row of a table (CSV, Parquet, Arrow), counted from 1 without a CSV header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Position {
    Line(usize),
    Row(usize),
}

impl Position {
    /// The line or row number.
    pub fn number(self) -> usize {
        match self {
            Position::Line(n) | Position::Row(n) => n,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Line(n) => write!(f, "{n}"),
            Position::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// A record's file and position: `FILE:LINE` or `FILE:row ROW`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: Arc<Path>,
    pub position: Position,
}

impl Location {
    pub fn new(file: &Arc<Path>, position: Position) -> Location {
        Location {
            file: Arc::clone(file),
            position,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.position)
    }
}

/// Everything that can go wrong while reading, tokenizing or packing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record is unusable: `FILE:LINE: what was wrong` (`FILE:row ROW:` for tables).
    #[error("{at}: {message}")]
    Record {
        at: Location,
        problem: Problem,
        message: String,
    },

    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The file as a whole is unusable (empty, not JSON lines nor a JSON array, ...).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    #[error("{}: cannot load tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// A configuration value is invalid; `key` names it as the user wrote it.
    #[error("invalid `{key}`: {message}")]
    Config { key: String, message: String },

    #[error(transparent)]
    Chat(#[from] temper_chat::Error),
}

impl Error {
    /// The problem class of a record error, if this is one.
    pub fn problem(&self) -> Option<Problem> {
        match self {
            Error::Record { problem, .. } => Some(*problem),
            _ => None,
        }
    }
}

/// Result type of temper-data.
pub type Result<T, E = Error> = std::result::Result<T, E>;
