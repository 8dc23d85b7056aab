use std::path::PathBuf;

/// Everything a training run can fail on, with the file, key or step it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] temper_data::Error),
    #[error(transparent)]
    Chat(#[from] temper_chat::Error),
    #[error(transparent)]
    Model(#[from] temper_models::Error),
    #[error(transparent)]
    Lora(#[from] temper_lora::Error),
    #[error(transparent)]
    Optim(#[from] temper_optim::Error),
    #[error("{file}: {key}: {reason}")]
    Config {
        file: String,
        key: String,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error(
        "step {step}: the loss is {loss} (gradient norm {grad_norm}); stopping. The last good \
         checkpoint is {last_checkpoint}"
    )]
    NonFinite {
        step: u64,
        loss: f64,
        grad_norm: f64,
        last_checkpoint: String,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}
