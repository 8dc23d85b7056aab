//! One type for every supported architecture, and Hugging Face model directories.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpt2::Gpt2;
use crate::layers::{KvCache, Linear, block_causal_mask, decoding_mask};
use crate::llama::Llama;
use crate::weights::{WeightWriter, Weights};

/// What a forward pass reads: token ids, their positions, and which example each token
/// belongs to (0 for padding), so that packed examples never attend to each other.
#[derive(Debug, Clone)]
pub struct ModelInput<B: Backend> {
    /// `[batch, seq_len]`
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq_len]`; restart at 0 for each packed example.
    pub position_ids: Tensor<B, 2, Int>,
    /// `[batch, seq_len]`; 1, 2, ... per example of a row, 0 for padding.
    pub segment_ids: Tensor<B, 2, Int>,
}

impl<B: Backend> ModelInput<B> {
    /// From row-major host data (as `temper-data` batches hold it).
    pub fn from_rows(
        batch: usize,
        seq_len: usize,
        input_ids: &[u32],
        position_ids: &[u32],
        segment_ids: &[u32],
        device: &B::Device,
    ) -> Result<Self> {
        let expected = batch * seq_len;
        for (name, len) in [
            ("input_ids", input_ids.len()),
            ("position_ids", position_ids.len()),
            ("segment_ids", segment_ids.len()),
        ] {
            if len != expected {
                return Err(Error::Input(format!(
                    "{name} has {len} values, expected batch {batch} x seq_len {seq_len}"
                )));
            }
        }
        let tensor = |values: &[u32]| {
            let data: Vec<i64> = values.iter().map(|&v| i64::from(v)).collect();
            Tensor::<B, 2, Int>::from_data(TensorData::new(data, [batch, seq_len]), device)
        };
        Ok(ModelInput {
            input_ids: tensor(input_ids),
            position_ids: tensor(position_ids),
            segment_ids: tensor(segment_ids),
        })
    }

    /// One unpadded sequence per row, positions `0..seq_len`.
    pub fn sequences(input_ids: Tensor<B, 2, Int>) -> Self {
        let [batch, seq_len] = input_ids.dims();
        let device = input_ids.device();
        let position_ids = Tensor::<B, 1, Int>::arange(0..seq_len as i64, &device)
            .unsqueeze::<2>()
            .expand([batch, seq_len]);
        let segment_ids = Tensor::<B, 2, Int>::ones([batch, seq_len], &device);
        ModelInput {
            input_ids,
            position_ids,
            segment_ids,
        }
    }
}

/// The files of a Hugging Face model directory that belong to its tokenizer.
pub const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// A causal language model of any supported architecture.
// One model lives per run; boxing the variants would only add indirection to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum CausalLm<B: Backend> {
    Gpt2(Gpt2<B>),
    Llama(Llama<B>),
}

impl<B: Backend> CausalLm<B> {
    /// A randomly initialised model.
    pub fn init(config: &ModelConfig, device: &B::Device) -> Self {
        match config {
            ModelConfig::Gpt2(config) => CausalLm::Gpt2(config.init(device)),
            ModelConfig::Llama(config) => CausalLm::Llama(config.init(device)),
        }
    }

    /// Loads a Hugging Face model directory: `config.json` and `model.safetensors` (or a
    /// sharded `model.safetensors.index.json`), f32/f16/bf16, strictly.
    pub fn from_hf_dir(dir: &Path, device: &B::Device) -> Result<(Self, ModelConfig)> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let mut weights = Weights::from_dir(dir)?;
        let model = CausalLm::from_weights(&config, &mut weights, device)?;
        weights.finish()?;
        Ok((model, config))
    }

    /// Imports a llama.cpp GGUF file (Llama architecture), dequantized to f32.
    pub fn from_gguf(
        path: &Path,
        device: &B::Device,
    ) -> Result<(Self, ModelConfig, crate::gguf::GgufFile)> {
        let file = crate::gguf::GgufFile::open(path)?;
        let config = file.llama_config()?;
        let mut weights = file.hf_weights(&config)?;
        let model = CausalLm::Llama(config.load(&mut weights, device)?);
        weights.finish()?;
        Ok((model, ModelConfig::Llama(config), file))
    }

    /// Builds a model from tensors with HF names (see [`Weights`]).
    pub fn from_weights(
        config: &ModelConfig,
        weights: &mut Weights,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(match config {
            ModelConfig::Gpt2(config) => CausalLm::Gpt2(config.load(weights, device)?),
            ModelConfig::Llama(config) => CausalLm::Llama(config.load(weights, device)?),
        })
    }

    /// Rebuilds every linear layer through `map`, which receives the layer's Hugging Face
    /// module path (`transformer.h.0.attn.c_attn`, `model.layers.0.self_attn.q_proj`,
    /// `lm_head`). This is how adapters are attached to a model.
    pub fn map_linears(self, map: &mut impl FnMut(&str, Linear<B>) -> Linear<B>) -> Self {
        match self {
            CausalLm::Gpt2(model) => CausalLm::Gpt2(model.map_linears(map)),
            CausalLm::Llama(model) => CausalLm::Llama(model.map_linears(map)),
        }
    }

    /// Turns NEFTune on (`Some(alpha)`) or off: uniform noise on the token embeddings in
    /// forward passes under autodiff (training), none in inference.
    pub fn with_embedding_noise(self, alpha: Option<f64>) -> Self {
        match self {
            CausalLm::Gpt2(mut model) => {
                model.embedding_noise = alpha;
                CausalLm::Gpt2(model)
            }
            CausalLm::Llama(mut model) => {
                model.embedding_noise = alpha;
                CausalLm::Llama(model)
            }
        }
    }

    pub fn config(&self) -> ModelConfig {
        match self {
            CausalLm::Gpt2(model) => ModelConfig::Gpt2(model.config.clone()),
            CausalLm::Llama(model) => ModelConfig::Llama(model.config.clone()),
        }
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// input: `[batch, seq_len]` each -> `[batch, seq_len, vocab_size]`
    pub fn forward(&self, input: ModelInput<B>) -> Tensor<B, 3> {
        let mask = block_causal_mask(input.segment_ids);
        match self {
            CausalLm::Gpt2(model) => model.forward(input.input_ids, input.position_ids, mask, None),
            CausalLm::Llama(model) => {
                model.forward(input.input_ids, input.position_ids, mask, None)
            }
        }
    }

    /// The final hidden states (after the last norm), for losses that apply the output layer
    /// themselves (see [`CausalLm::output_weight`]).
    ///
    /// # Shapes
    /// input: `[batch, seq_len]` each -> `[batch, seq_len, d_model]`
    pub fn hidden_states(&self, input: ModelInput<B>) -> Tensor<B, 3> {
        let mask = block_causal_mask(input.segment_ids);
        match self {
            CausalLm::Gpt2(model) => model.hidden(input.input_ids, input.position_ids, mask, None),
            CausalLm::Llama(model) => model.hidden(input.input_ids, input.position_ids, mask, None),
        }
    }

    /// The output layer as one `[vocab_size, d_model]` matrix (`logits = hidden W^T`): the
    /// token embedding when tied, else `lm_head`'s weight. `None` when `lm_head` has a bias or
    /// an adapter, so it is not a plain matrix.
    pub fn output_weight(&self) -> Option<Tensor<B, 2>> {
        match self {
            CausalLm::Gpt2(model) => Some(model.transformer.wte.weight.val()),
            CausalLm::Llama(model) => match &model.lm_head {
                None => Some(model.model.embed_tokens.weight.val()),
                Some(head) if head.bias.is_none() && head.lora.is_none() => {
                    Some(head.weight.val().transpose())
                }
                Some(_) => None,
            },
        }
    }

    /// An empty key/value cache for [`CausalLm::forward_cached`].
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(match self {
            CausalLm::Gpt2(model) => model.transformer.h.len(),
            CausalLm::Llama(model) => model.model.layers.len(),
        })
    }

    /// Incremental decoding of one sequence: logits of `input_ids` (the positions after
    /// those already in `cache`), reusing and extending the cache.
    ///
    /// # Shapes
    /// input_ids: `[1, new]` -> `[1, new, vocab_size]`
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [batch, new] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.len;
        let position_ids = Tensor::<B, 1, Int>::arange(past as i64..(past + new) as i64, &device)
            .unsqueeze::<2>()
            .expand([batch, new]);
        let mask = decoding_mask::<B>(past, new, &device).expand([batch, 1, new, past + new]);
        cache.len += new;
        match self {
            CausalLm::Gpt2(model) => model.forward(input_ids, position_ids, mask, Some(cache)),
            CausalLm::Llama(model) => model.forward(input_ids, position_ids, mask, Some(cache)),
        }
    }

    /// The longest sequence the model can read (GPT-2's learned positions; the trained
    /// context for RoPE models).
    pub fn max_positions(&self) -> usize {
        match self {
            CausalLm::Gpt2(model) => model.config.n_positions,
            CausalLm::Llama(model) => model.config.max_position_embeddings,
        }
    }

    /// The tensors in HF names and layouts.
    pub fn to_weights(&self) -> WeightWriter {
        let mut writer = WeightWriter::default();
        match self {
            CausalLm::Gpt2(model) => model.save(&mut writer),
            CausalLm::Llama(model) => model.save(&mut writer),
        }
        writer
    }

    /// Like [`CausalLm::save_hf_dir`], and copies the tokenizer files of the model directory
    /// `source` (tokenizer.json, tokenizer_config.json, special_tokens_map.json, ...) so
    /// that `dir` is a complete model directory.
    pub fn save_hf_dir_with_tokenizer(&self, dir: &Path, source: &Path) -> Result<()> {
        self.save_hf_dir(dir)?;
        for name in TOKENIZER_FILES {
            let from = source.join(name);
            if from.is_file() {
                let to = dir.join(name);
                std::fs::copy(&from, &to).map_err(|error| Error::Io { path: to, error })?;
            }
        }
        Ok(())
    }

    /// Writes `config.json` and `model.safetensors` (f32) into `dir`, in the layout
    /// `transformers` loads. Files are written through temporary names.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|error| Error::Io {
            path: dir.to_owned(),
            error,
        })?;
        let config = serde_json::to_string_pretty(&self.config().to_hf_json()).unwrap_or_default();
        let config_path = dir.join("config.json");
        let temporary = dir.join("config.json.partial");
        std::fs::write(&temporary, config).map_err(|error| Error::Io {
            path: temporary.clone(),
            error,
        })?;
        self.to_weights().write(&dir.join("model.safetensors"))?;
        std::fs::rename(&temporary, &config_path).map_err(|error| Error::Io {
            path: config_path,
            error,
        })
    }
}
