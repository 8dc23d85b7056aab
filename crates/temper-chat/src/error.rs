//! Errors of temper-chat.

use std::path::PathBuf;

/// Everything that can go wrong while loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A template name that is neither built in nor an existing file.
    #[error(
        "unknown chat template `{name}`: expected one of the built-in names ({builtins}) or a path to a `.jinja` file or a `tokenizer_config.json`"
    )]
    UnknownTemplate { name: String, builtins: String },

    /// A file could not be read.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// A `tokenizer_config.json` that is not valid JSON or has no usable `chat_template`.
    #[error("{path}: {message}")]
    TokenizerConfig { path: PathBuf, message: String },

    /// The template source does not parse.
    #[error("chat template `{template}`: syntax error: {message}")]
    Syntax { template: String, message: String },

    /// The template called `raise_exception(..)`, as HF templates do for unsupported conversations.
    #[error("chat template `{template}` rejected the conversation: {message}")]
    Raised { template: String, message: String },

    /// Rendering failed for another reason (an undefined method, a type error, ...).
    #[error("chat template `{template}`: rendering failed: {message}")]
    Render { template: String, message: String },

    /// A message's text contains one of the private code points this crate uses as sentinels.
    #[error(
        "message {index} contains the reserved code point U+{code_point:04X}, which temper uses internally to locate spans"
    )]
    ReservedCodePoint { index: usize, code_point: u32 },

    /// A message could not be converted from JSON.
    #[error("{context}: {message}")]
    Message { context: String, message: String },
}

/// Result type of temper-chat.
pub type Result<T, E = Error> = std::result::Result<T, E>;
