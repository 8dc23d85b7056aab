//! Errors of temper-train.

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
    #[error(transparent)]
    Store(#[from] temper_store::Error),
    #[error("{file}: {key}: {reason}")]
    Config {
        file: String,
        key: String,
        reason: String,
    },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file of a run (checkpoint, metrics, tokenizer configuration) that is not what it
    /// should be.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// A model path that is neither a model directory nor a GGUF file.
    #[error(
        "{}: expected a model directory or a .gguf file (a directory holds config.json, model.safetensors and tokenizer.json)",
        path.display()
    )]
    NotAModel { path: PathBuf },
    /// A model directory without the tokenizer a run needs.
    #[error("{}: the model directory has no tokenizer.json (set [model] tokenizer)", dir.display())]
    MissingTokenizer { dir: PathBuf },
    /// The tokenizer makes ids the model has no embedding for.
    #[error(
        "{}: the tokenizer has {tokenizer_size} token ids but the model's vocabulary has {model_size}; use the model's own tokenizer or one that fits it",
        tokenizer.display()
    )]
    VocabularyMismatch {
        tokenizer: PathBuf,
        tokenizer_size: usize,
        model_size: usize,
    },
    /// Rows longer than the model's positions.
    #[error(
        "data.max_length is {max_length}{}, but the model reads at most {context} positions; lower data.max_length",
        if padded != max_length { format!(" ({padded} with data.pad_to_multiple_of)") } else { String::new() }
    )]
    TooLong {
        max_length: usize,
        padded: usize,
        context: usize,
    },
    /// A step cannot fit in the machine's memory.
    #[error(
        "a training step needs about {needed}, and this machine has {available} left (TEMPER_MEMORY_LIMIT caps it); lower train.batch_size or data.max_length, or set train.gradient_checkpointing = true"
    )]
    Memory { needed: String, available: String },
    /// Every example of the training (or held-out) data was dropped.
    #[error("{dataset}: no {which} examples ({records} record(s) read, {skipped})")]
    NoExamples {
        which: &'static str,
        dataset: String,
        records: usize,
        skipped: String,
    },
    /// An output directory a run may not write into.
    #[error("train.output_dir {}: {reason}", dir.display())]
    OutputDir { dir: PathBuf, reason: String },
    /// An export target that may not be written.
    #[error("{flag} {}: {reason}", path.display())]
    Export {
        flag: String,
        path: PathBuf,
        reason: String,
    },
    /// A checkpoint that does not continue the configured run.
    #[error("{}: cannot resume: {reason}", checkpoint.display())]
    Resume { checkpoint: PathBuf, reason: String },
    #[error("{}: the run has no checkpoint", run_dir.display())]
    NoCheckpoint { run_dir: PathBuf },
    #[error("{}: a full fine-tuning run has no adapter; export --merged instead", run_dir.display())]
    NoAdapter { run_dir: PathBuf },
    #[error("{}: cannot write the tokenizer: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },
    #[error(
        "step {step}: the loss is {loss} (gradient norm {grad_norm}); stopping. The last good \
         checkpoint is {}",
        last_checkpoint.as_ref().map_or_else(|| "none (no checkpoint was written yet)".to_owned(), |p| p.display().to_string())
    )]
    NonFinite {
        step: u64,
        loss: f64,
        grad_norm: f64,
        last_checkpoint: Option<PathBuf>,
    },
    /// A data-parallel run's collective failed (the message names the rank).
    #[error("data parallelism: {0}")]
    Collective(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        error,
    }
}
