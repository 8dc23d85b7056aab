//! Supervised fine-tuning on burn: the masked, token-weighted loss, the training step with
//! gradient accumulation, the training loop with evaluation, metrics, checkpoints and
//! resume, and export of the result.
//!
//! It composes the sibling crates (models, LoRA, optimizer) with the data pipeline and picks
//! no backend: everything is generic over `B: AutodiffBackend`; the CLI chooses one.

pub mod adapters;
pub mod answer_metrics;
pub mod checkpoint;
pub mod config;
pub mod distributed;
mod error;
mod evaluate;
pub mod evaluator;
mod export;
pub mod load;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod run;
pub mod step;

pub use adapters::{apply_peft_adapter, attach_lora, extract_adapter, has_adapters};
pub use config::RunConfig;
pub use distributed::{Rank, Topology, orchestrate, trainable_hash};
pub use error::{Error, Result};
pub use export::{Exported, export_checkpoint};
pub use load::{
    LoadTimes, Loaded, RunModel, gguf_tokenizer, load_for_run, load_model, stop_token_ids,
};
pub use loss::{LossSums, Targets, targets};
pub use metrics::{Metric, loss_plot_svg};
pub use output::Start;
pub use run::{EvalPoint, Event, RunSummary, run, run_on};
pub use step::{StepOutcome, evaluate, micro_step, row_losses, train_step, train_step_on};
