use std::path::PathBuf;

/// Everything that can go wrong with adapters: bad configuration, missing or mis-shaped
/// adapter tensors, unreadable PEFT files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("target_modules: {reason}")]
    Targets { reason: String },
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },
    #[error("no module matches target_modules {targets}; linear layers are named like {example}")]
    NoTargets { targets: String, example: String },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Writing a file failed.
    #[error(transparent)]
    Store(#[from] temper_store::Error),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("adapter tensor {key}: expected shape {expected:?}, found {actual:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("adapter has {key} but the model has no LoRA slot at {module}")]
    UnknownModule { key: String, module: String },
    #[error("the model has a LoRA slot at {module} but the adapter has no tensors for it")]
    MissingModule { module: String },
}

pub type Result<T> = std::result::Result<T, Error>;
