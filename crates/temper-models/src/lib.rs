//! GPT-2 and Llama-family causal language models on burn, with numbers that match Hugging Face
//! `transformers` on the same weights.
//!
//! Models are generic over `B: Backend`; module field names follow the HF checkpoint keys
//! (`model.layers.0.self_attn.q_proj`, `transformer.h.0.attn.c_attn`), so checkpoints load
//! without a renaming table and LoRA targets mean what they mean in PEFT. One forward takes
//! token ids, position ids and segment ids, and attends causally within each example only, so
//! packed rows give the same logits per example as the examples run alone.
//!
//! This crate does not tokenize, train or pick a backend: that is `temper-data`,
//! `temper-train` and the CLI.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::prelude::*;
//! use temper_models::{CausalLm, Gpt2Config, ModelConfig, ModelInput};
//!
//! let device = Default::default();
//! let config = ModelConfig::Gpt2(Gpt2Config::new(97, 64, 32, 2, 4, 128));
//! let model = CausalLm::<Flex>::init(&config, &device);
//! let ids = Tensor::<Flex, 2, Int>::from_ints([[1, 2, 3]], &device);
//! let logits = model.forward(ModelInput::sequences(ids));
//! assert_eq!(logits.dims(), [1, 3, 97]);
//! ```

mod config;
mod error;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod layers;
pub mod llama;
mod model;
pub mod weights;

pub use config::{Gpt2Config, LlamaConfig, ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use generate::{Generation, GenerationConfig, StopReason, generate, token_logprobs};
pub use model::{CausalLm, ModelInput};
pub use weights::{RawTensor, WeightWriter, Weights};
