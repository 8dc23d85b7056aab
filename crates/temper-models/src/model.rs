//! One type for every supported architecture, and Hugging Face model directories.

use std::path::Path;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::{Bool, DType, Int, TensorData};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gemma3::Gemma3;
use crate::gpt2::Gpt2;
use crate::layers::{Embedding, KvCache, Linear, block_causal_mask};
use crate::layout::Layout;
use crate::llama::Llama;
use crate::weights::{WeightWriter, Weights};
use temper_store::{ParamPath, PathMapper, map_params, param_paths};

/// `weight`'s transpose in f16, row-major (narrowed on the host, F16C where the CPU has it).
fn narrow_to_f16<B: Backend>(weight: Tensor<B, 2>) -> Tensor<B, 2> {
    let device = weight.device();
    let [rows, columns] = weight.dims();
    let values = weight.transpose().into_data().convert::<f32>();
    let values = values.into_vec::<f32>().unwrap_or_default();
    let mut narrow = vec![half::f16::ZERO; values.len()];
    half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut narrow[..], &values);
    Tensor::from_data(
        TensorData::new(narrow, [columns, rows]),
        (&device, DType::F16),
    )
}

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
                return Err(Error::InputShape {
                    name,
                    len,
                    batch,
                    seq_len,
                });
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

/// What an architecture provides; [`CausalLm`] runs every architecture through it. Adding
/// one is a file that implements this (with its module tree, whose parameter paths are its
/// checkpoint keys, and its [`Layout`]), a variant of [`CausalLm`] and of [`ModelConfig`].
pub trait Architecture<B: Backend> {
    /// How its checkpoints store its parameters.
    fn layout(&self) -> &'static Layout;
    fn config(&self) -> ModelConfig;
    /// The final hidden states (after the last norm), before the output layer.
    ///
    /// # Shapes
    /// input_ids, position_ids: `[batch, seq_len]`, mask: `[batch, 1, seq_len, keys]`
    /// -> `[batch, seq_len, d_model]`
    fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3>;
    /// The output layer.
    ///
    /// # Shapes
    /// hidden: `[batch, seq_len, d_model]` -> `[batch, seq_len, vocab_size]`
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3>;
    /// See [`CausalLm::output_weight`].
    fn output_weight(&self) -> Option<Tensor<B, 2>>;
    fn n_layers(&self) -> usize;
    /// NEFTune's alpha (see [`CausalLm::with_embedding_noise`]).
    fn set_embedding_noise(&mut self, alpha: Option<f64>);
    /// Every linear layer, in module order (see [`CausalLm::map_linears`]).
    fn linears_mut(&mut self) -> Vec<&mut Linear<B>>;
    /// The token embedding (also the output layer when tied).
    fn token_embedding_mut(&mut self) -> &mut Embedding<B>;
}

/// A causal language model of any supported architecture.
// One model lives per run; boxing the variants would only add indirection to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum CausalLm<B: Backend> {
    Gpt2(Gpt2<B>),
    Llama(Llama<B>),
    Gemma3(Gemma3<B>),
}

impl<B: Backend> CausalLm<B> {
    /// The model's module tree with parameters not yet drawn: [`CausalLm::init`] draws them,
    /// loading replaces them.
    fn skeleton(config: &ModelConfig, device: &B::Device) -> Self {
        match config {
            ModelConfig::Gpt2(config) => CausalLm::Gpt2(config.init(device)),
            ModelConfig::Llama(config) => CausalLm::Llama(config.init(device)),
            ModelConfig::Gemma3(config) => CausalLm::Gemma3(config.init(device)),
        }
    }

    /// The architecture behind the model: every method below dispatches through this.
    fn architecture(&self) -> &dyn Architecture<B> {
        match self {
            CausalLm::Gpt2(model) => model,
            CausalLm::Llama(model) => model,
            CausalLm::Gemma3(model) => model,
        }
    }

    fn architecture_mut(&mut self) -> &mut dyn Architecture<B> {
        match self {
            CausalLm::Gpt2(model) => model,
            CausalLm::Llama(model) => model,
            CausalLm::Gemma3(model) => model,
        }
    }

    /// How this architecture's checkpoints store its parameters.
    pub fn layout(&self) -> &'static Layout {
        self.architecture().layout()
    }

    /// A randomly initialised model (HF's initialisation: normal(0, 0.02) weights, unit
    /// norms, zero biases), drawn in module order from the backend's seeded RNG.
    pub fn init(config: &ModelConfig, device: &B::Device) -> Self {
        struct Draw;
        impl<B: Backend> PathMapper<B> for Draw {
            fn map_float<const D: usize>(
                &mut self,
                _: ParamPath<'_>,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                param.map(|value| value)
            }
        }
        map_params(Self::skeleton(config, device), &mut Draw)
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

    /// Imports a llama.cpp GGUF file (architectures `llama`, `qwen2`, `qwen3`, `gemma3`),
    /// dequantized to f32.
    pub fn from_gguf(
        path: &Path,
        device: &B::Device,
    ) -> Result<(Self, ModelConfig, crate::gguf::GgufFile)> {
        let file = crate::gguf::GgufFile::open(path)?;
        let (model, config) = CausalLm::from_gguf_file(&file, device)?;
        Ok((model, config, file))
    }

    /// The model of an opened GGUF file and its configuration.
    pub fn from_gguf_file(
        file: &crate::gguf::GgufFile,
        device: &B::Device,
    ) -> Result<(Self, ModelConfig)> {
        let config = file.model_config()?;
        let mut weights = file.hf_weights(&config)?;
        let model = CausalLm::from_weights(&config, &mut weights, device)?;
        weights.finish()?;
        Ok((model, config))
    }

    /// Builds a model from tensors with HF names (see [`Weights`] and [`Layout`]); call
    /// [`Weights::finish`] afterwards to refuse tensors the model did not use.
    pub fn from_weights(
        config: &ModelConfig,
        weights: &mut Weights,
        device: &B::Device,
    ) -> Result<Self> {
        let skeleton = Self::skeleton(config, device);
        skeleton.layout().load(skeleton, weights, device)
    }

    /// Rebuilds every linear layer through `map`, which receives the layer's Hugging Face
    /// module path (`transformer.h.0.attn.c_attn`, `model.layers.0.self_attn.q_proj`,
    /// `lm_head`). This is how adapters are attached to a model.
    pub fn map_linears(mut self, map: &mut impl FnMut(&str, Linear<B>) -> Linear<B>) -> Self {
        let paths = param_paths(&self);
        for linear in self.architecture_mut().linears_mut() {
            let (weight_path, _) = &paths[&linear.weight.id];
            let path = weight_path.strip_suffix(".weight").unwrap_or(weight_path);
            *linear = map(path, linear.clone());
        }
        self
    }

    /// The model for inference with the weights of every linear layer and of the token
    /// embedding kept in f16: half the memory, and half the bytes read per decoded token, at
    /// f16's precision (11 significant bits; a GGUF's 4- and 5-bit blocks dequantize to
    /// values f16 rounds by at most 2^-11 relative). Norms, position embeddings and adapters
    /// stay f32.
    pub fn with_f16_weights(mut self) -> Self {
        // Each output's weights contiguous (see `fused::linear`): a linear weight `[in, out]`
        // becomes the transpose of an `[out, in]` buffer; the embedding `[vocab, d_model]` is
        // that already for the output layer it is when tied.
        let embedding = &mut self.architecture_mut().token_embedding_mut().weight;
        *embedding = embedding
            .clone()
            .map(|weight| narrow_to_f16(weight.transpose()));
        self.map_linears(&mut |_, mut linear| {
            linear.weight = linear
                .weight
                .map(|weight| narrow_to_f16(weight).transpose());
            linear
        })
    }

    /// Turns NEFTune on (`Some(alpha)`) or off: uniform noise on the token embeddings in
    /// forward passes under autodiff (training), none in inference.
    pub fn with_embedding_noise(mut self, alpha: Option<f64>) -> Self {
        self.architecture_mut().set_embedding_noise(alpha);
        self
    }

    pub fn config(&self) -> ModelConfig {
        self.architecture().config()
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// input: `[batch, seq_len]` each -> `[batch, seq_len, vocab_size]`
    pub fn forward(&self, input: ModelInput<B>) -> Tensor<B, 3> {
        let model = self.architecture();
        model.logits(model.hidden(
            input.input_ids,
            input.position_ids,
            block_causal_mask(input.segment_ids),
            None,
        ))
    }

    /// The final hidden states (after the last norm), for losses that apply the output layer
    /// themselves (see [`CausalLm::output_weight`]).
    ///
    /// # Shapes
    /// input: `[batch, seq_len]` each -> `[batch, seq_len, d_model]`
    pub fn hidden_states(&self, input: ModelInput<B>) -> Tensor<B, 3> {
        self.architecture().hidden(
            input.input_ids,
            input.position_ids,
            block_causal_mask(input.segment_ids),
            None,
        )
    }

    /// The output layer as one `[vocab_size, d_model]` matrix (`logits = hidden W^T`): the
    /// token embedding when tied, else `lm_head`'s weight. `None` when `lm_head` has a bias or
    /// an adapter, so it is not a plain matrix, or is kept in f16.
    pub fn output_weight(&self) -> Option<Tensor<B, 2>> {
        self.architecture().output_weight()
    }

    /// An empty key/value cache for [`CausalLm::forward_cached`].
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.architecture().n_layers())
    }

    /// Incremental decoding: logits of `input_ids` (the positions after those already in
    /// `cache`), reusing and extending the cache.
    ///
    /// # Shapes
    /// input_ids: `[batch, new]` -> `[batch, new, vocab_size]`
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let pads = vec![0; input_ids.dims()[0]];
        self.forward_cached_rows(input_ids, &pads, cache)
    }

    /// [`CausalLm::forward_cached`] for rows of different lengths, left-padded: row `r`
    /// starts with `pads[r]` padding positions, which nothing attends to (each attends only
    /// to itself, so no softmax is over nothing) and which do not count as positions: the
    /// row's first real token is at position 0.
    ///
    /// # Shapes
    /// input_ids: `[batch, new]` -> `[batch, new, vocab_size]`
    pub fn forward_cached_rows(
        &self,
        input_ids: Tensor<B, 2, Int>,
        pads: &[usize],
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let model = self.architecture();
        model.logits(self.hidden_cached_rows(input_ids, pads, cache))
    }

    /// [`CausalLm::forward_cached_rows`], but only the logits of each row's last position:
    /// what decoding needs. The output layer (a large share of a small model's work) runs
    /// once per row, not once per prompt token.
    ///
    /// # Shapes
    /// input_ids: `[batch, new]` -> `[batch, vocab_size]`
    pub fn next_token_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        pads: &[usize],
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let hidden = self.hidden_cached_rows(input_ids, pads, cache);
        let [batch, new, d_model] = hidden.dims();
        let last = hidden.slice([0..batch, new - 1..new, 0..d_model]);
        self.logits_2d(last.reshape([batch, d_model]))
    }

    /// The output layer on rows of final hidden states.
    ///
    /// # Shapes
    /// hidden: `[rows, d_model]` -> `[rows, vocab_size]`
    pub fn logits_2d(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = self.architecture().logits(hidden.unsqueeze_dim(0));
        let [_, rows, vocab] = logits.dims();
        logits.reshape([rows, vocab])
    }

    /// The final hidden states of [`CausalLm::forward_cached_rows`].
    pub(crate) fn hidden_cached_rows(
        &self,
        input_ids: Tensor<B, 2, Int>,
        pads: &[usize],
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [batch, new] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.len;
        let total = past + new;
        let mut positions = Vec::with_capacity(batch * new);
        let mut masked = Vec::with_capacity(batch * new * total);
        for &pad in pads {
            for query in past..total {
                positions.push(query.saturating_sub(pad) as i64);
                masked.extend((0..total).map(|key| key > query || (key < pad && key != query)));
            }
        }
        let position_ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [batch, new]), &device);
        let mask = Tensor::<B, 4, Bool>::from_data(
            TensorData::new(masked, [batch, 1, new, total]),
            &device,
        );
        cache.len += new;
        self.architecture()
            .hidden(input_ids, position_ids, mask, Some(cache))
    }

    /// The longest sequence the model can read (GPT-2's learned positions; the trained
    /// context for RoPE models).
    pub fn max_positions(&self) -> usize {
        self.architecture().config().max_positions()
    }

    /// The tensors in HF names and layouts (adapters excepted: merge them first).
    pub fn to_weights(&self) -> WeightWriter {
        self.layout().save(self)
    }

    /// Writes `config.json` and `model.safetensors` (f32) into `dir`, in the layout
    /// `transformers` loads, each through a temporary file.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|error| Error::Io {
            path: dir.to_owned(),
            error,
        })?;
        self.to_weights().write(&dir.join("model.safetensors"))?;
        let config = serde_json::to_string_pretty(&self.config().to_hf_json())
            .expect("a model config serialises");
        temper_store::write_atomic(&dir.join("config.json"), config.as_bytes())?;
        Ok(())
    }
}
