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
//! Loading a Hugging Face model directory and generating (pair it with `temper-data`'s
//! `Tokenizer` to go from text to ids and back):
//!
//! ```
//! use std::ops::ControlFlow;
//!
//! use burn::backend::Flex;
//! use temper_models::{CausalLm, GenerationConfig, generate};
//!
//! let device = Default::default();
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa");
//! let (model, _config) = CausalLm::<Flex>::from_hf_dir(&dir, &device)?;
//! let prompt = [1, 17, 42];
//! let config = GenerationConfig { max_new_tokens: 5, ..Default::default() };
//! let generation = generate(&model, &prompt, &config, &device, |token| {
//!     print!("{token} "); // stream each token as it comes
//!     ControlFlow::Continue(())
//! })?;
//! assert_eq!(generation.tokens.len(), 5);
//! # Ok::<(), temper_models::Error>(())
//! ```

mod config;
mod error;
pub mod fused;
pub mod gemma3;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod layers;
pub mod layout;
pub mod llama;
mod model;
pub mod quants;
pub mod weights;

pub use config::{
    AttentionType, Dimensions, Gemma3Config, Gpt2Config, LlamaConfig, LlamaFamily, ModelConfig,
    RopeScaling,
};
pub use error::{Error, Result};
pub use generate::{
    Continuation, Generation, GenerationConfig, StopReason, TokenScore, generate, generate_batch,
    generate_scored, token_logprobs, token_scores,
};
pub use layers::{Linear, LowRank};
pub use layout::{Layout, WeightLayout};
pub use model::{Architecture, CausalLm, ModelInput};
pub use weights::{RawTensor, WeightWriter, Weights};
