//! Errors of temper-models.

use std::path::PathBuf;

/// Everything that can go wrong while reading, building or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// `config.json` is not valid JSON or lacks a key the architecture needs.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("{}: unsupported architecture `{architecture}`: temper-models runs GPT-2 (gpt2) and the Llama family (llama, mistral, qwen2)", path.display())]
    UnsupportedArchitecture { path: PathBuf, architecture: String },

    /// A tensor the model needs is not in the checkpoint.
    #[error("{}: missing tensor `{key}` (expected shape {expected:?})", source_file.display())]
    MissingTensor {
        source_file: PathBuf,
        key: String,
        expected: Vec<usize>,
    },

    /// A tensor has another shape than the configuration implies.
    #[error("{}: tensor `{key}` has shape {actual:?}, expected {expected:?}", source_file.display())]
    ShapeMismatch {
        source_file: PathBuf,
        key: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// The checkpoint holds tensors the model does not use.
    #[error("{}: {} unexpected tensor(s) the model does not use: {}", source_file.display(), keys.len(), keys.join(", "))]
    UnexpectedTensors {
        source_file: PathBuf,
        keys: Vec<String>,
    },

    /// A safetensors file is truncated, malformed or holds a dtype we cannot read.
    #[error("{}: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },

    /// A GGUF file is malformed or holds something we cannot import.
    #[error("{}: {message}", path.display())]
    Gguf { path: PathBuf, message: String },

    /// Writing a file failed.
    #[error(transparent)]
    Store(#[from] temper_store::Error),

    /// Token ids of a model call that do not fill `[batch, seq_len]`.
    #[error("{name} has {len} values, expected batch {batch} x seq_len {seq_len}")]
    InputShape {
        name: &'static str,
        len: usize,
        batch: usize,
        seq_len: usize,
    },

    /// Fewer tokens than a call needs (a prompt needs one, scoring two).
    #[error("{what} needs at least {needed} token(s), got {got}")]
    TooFewTokens {
        what: &'static str,
        needed: usize,
        got: usize,
    },

    /// A sampling setting out of its range.
    #[error("generation: `{key}` {reason}")]
    Generation { key: &'static str, reason: String },

    /// More tokens than the model's context holds.
    #[error("{what} has {got} tokens; the model reads at most {limit}")]
    TooManyTokens {
        what: &'static str,
        got: usize,
        limit: usize,
    },
}

/// Result type of temper-models.
pub type Result<T, E = Error> = std::result::Result<T, E>;
