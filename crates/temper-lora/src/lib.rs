//! LoRA adapters for burn modules: which layers to adapt, PEFT's initialisation, freezing
//! the base weights, merging and unmerging, and PEFT's adapter files.
//!
//! It works on any burn module by parameter path: a layer takes part by holding its LoRA
//! factors as `lora.lora_a` / `lora.lora_b` next to its `weight` (see [`slots`]); the
//! layer's own `forward` adds the update. This crate does not define layers and does not
//! know any model: `temper-models`' `Linear` carries the slot, and the trainer attaches it
//! to the layers [`Targets`] selects.

mod config;
mod error;
mod peft;
pub mod slots;

pub use config::{LoraConfig, OUTPUT_LAYER, TargetModules, Targets};
pub use error::{Error, Result};
pub use peft::{Adapter, AdapterWeights, CONFIG_FILE, WEIGHTS_FILE, apply, extract};
pub use slots::{ParamCount, count_parameters, freeze_base, init_peft, merge, slots, unmerge};
