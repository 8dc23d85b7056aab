//! Errors of temper-optim.

/// What can go wrong when restoring optimizer state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The saved state holds a parameter the module does not have.
    #[error("optimizer state: parameter `{path}` is not in the model")]
    UnknownParameter { path: String },

    /// The saved moments do not fit the parameter.
    #[error(
        "optimizer state: parameter `{path}` has {actual} values saved, the model's has {expected}"
    )]
    SizeMismatch {
        path: String,
        expected: usize,
        actual: usize,
    },
}

/// Result type of temper-optim.
pub type Result<T, E = Error> = std::result::Result<T, E>;
