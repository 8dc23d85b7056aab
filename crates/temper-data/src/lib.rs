//! The SFT data pipeline: dataset files in, token ids and loss masks out.
//!
//! ```text
//! file, glob or directory --dataset--> files --formats--> (position, JSON value)
//!   (JSON lines, JSON, CSV/TSV, Parquet, Arrow IPC; gzip or zstd)
//!   --records--> Sample (alpaca, messages, sharegpt, prompt/completion, text)
//!   --example--> rendered text + trained byte spans (temper-chat) --tokenize--> ids + loss mask
//!   --truncate--> --pack--> rows with restarting position ids --collate--> Batch
//! ```
//!
//! Everything here is plain data (`Vec<u32>`, `Vec<bool>`): this crate has no dependency on
//! burn and knows nothing of models or tensors. It also does not download anything: tokenizers
//! are `tokenizer.json` files on disk. Bad input never panics: each unusable record is an
//! [`Error::Record`] naming `FILE:LINE` (`FILE:row ROW` for tables), which `on_error = "skip"` turns into a count.

mod cache;
pub mod dataset;
mod duplicates;
mod error;
pub mod example;
mod fast_bpe;
pub mod formats;
pub mod mixture;
pub mod pack;
pub mod pipeline;
pub mod records;
pub mod report;
pub mod shuffle;
pub mod store;
pub mod tokenize;

pub use cache::cache_dir;
pub use dataset::{DatasetSpec, dataset_files};
pub use error::{Error, Location, Position, Problem, Result};
pub use example::{Example, Truncation, truncate};
pub use mixture::{Mixture, prepare_mixture};
pub use pack::{Batch, Pack, collate, pack, packing_efficiency, padded_length};
pub use pipeline::{
    DataConfig, Filter, PrepareOptions, Prepared, Progress, load_template, prepare, prepare_with,
    template_for,
};
pub use records::{FieldNames, Format, OnError, ReadOptions, Record, Sample, read_file};
pub use report::QualityReport;
pub use shuffle::{Sampler, SamplerState, epoch_order};
pub use store::{ExampleRef, Examples, Rows};
pub use tokenize::{SpecialTokenNames, Tokenizer};
