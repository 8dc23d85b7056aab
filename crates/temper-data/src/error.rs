//! Errors of temper-data.

use std::path::PathBuf;

use serde::Serialize;

/// Why a record could not be used. Records skipped under `on_error = "skip"` are counted by
/// these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong while reading, tokenizing or packing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record is unusable: `FILE:LINE: what was wrong`.
    #[error("{}:{line}: {message}", path.display())]
    Record {
        path: PathBuf,
        line: usize,
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
