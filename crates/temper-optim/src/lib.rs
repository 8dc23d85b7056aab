//! Optimisation for fine-tuning on burn: AdamW with parameter groups (no weight decay on
//! biases, norms and embeddings unless configured), learning-rate schedules as pure
//! functions, clipping by the global gradient norm, and gradient accumulation.
//!
//! It works on any burn module's parameters by their path (`temper-store`'s: a model's Hugging
//! Face keys); it knows nothing of models, LoRA or data (those are sibling crates), and it
//! does not run a training loop.

pub mod adamw;
mod error;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig, AdamWState, ParamMoments, StepReport, global_grad_norm};
pub use error::{Error, Result};
pub use schedule::{LrSchedule, ScheduleKind, lr_at};
