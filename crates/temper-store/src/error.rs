//! Errors of temper-store.

use std::path::PathBuf;

/// What can go wrong writing files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// A tensor whose values do not fill its shape, or a file safetensors cannot encode.
    #[error("{}: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
}

/// Result type of temper-store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        error,
    }
}
