//! Model configurations: the Hugging Face `config.json` as it is written (serde structs), and
//! the burn configs that models are built from.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// How rotary frequencies are rescaled for long contexts (HF `rope_scaling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Positions divided by `factor` (frequencies divided by `factor`).
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// GPT-2 (`GPT2LMHeadModel`).
#[derive(Config, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// Learned positions: the longest sequence.
    pub n_positions: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads.
    pub n_head: usize,
    /// Width of the MLP (HF `n_inner`, default 4 * n_embd).
    pub n_inner: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_epsilon: f64,
}

/// The members of the Llama family: what `config.json` says (`model_type`) and is written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlamaFamily {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Gemma 3's text model: its decoder settings are a [`LlamaConfig`]'s (see [`Gemma3Config`]).
    Gemma3,
}

impl LlamaFamily {
    pub fn model_type(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "llama",
            LlamaFamily::Mistral => "mistral",
            LlamaFamily::Qwen2 => "qwen2",
            LlamaFamily::Qwen3 => "qwen3",
            LlamaFamily::Gemma3 => "gemma3_text",
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "LlamaForCausalLM",
            LlamaFamily::Mistral => "MistralForCausalLM",
            LlamaFamily::Qwen2 => "Qwen2ForCausalLM",
            LlamaFamily::Qwen3 => "Qwen3ForCausalLM",
            LlamaFamily::Gemma3 => "Gemma3ForCausalLM",
        }
    }
}

/// What a layer's attention sees: every earlier key, or the last `sliding_window` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionType {
    FullAttention,
    SlidingAttention,
}

/// The Llama family (`LlamaForCausalLM`, Mistral, Qwen2, Qwen3, SmolLM, TinyLlama).
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Which member of the family (`model_type`).
    pub family: LlamaFamily,
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE rescaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Biases on q/k/v projections (Qwen2).
    #[config(default = false)]
    pub attention_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` covers it; Qwen2 has none).
    #[config(default = false)]
    pub o_proj_bias: bool,
    /// Biases in the MLP.
    #[config(default = false)]
    pub mlp_bias: bool,
    /// The output layer reuses the token embedding.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// Qwen3: an RMSNorm over each query and key head, before RoPE.
    #[config(default = false)]
    pub qk_norm: bool,
    /// How many keys a sliding-window layer sees: its own position and the `window - 1`
    /// before it.
    pub sliding_window: Option<usize>,
    /// Each layer's attention (one per layer).
    pub layer_types: Vec<AttentionType>,
}

/// Gemma 3's text model (`Gemma3ForCausalLM`, `model_type` `gemma3_text`): the decoder
/// settings it shares with the Llama family, whose `rope_theta` and `rope_scaling` are the
/// global layers', and what only Gemma has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
    pub decoder: LlamaConfig,
    /// The RoPE base of the sliding-window layers (never scaled).
    pub rope_local_base_freq: f64,
    /// Attention scores are scaled by `query_pre_attn_scalar ** -0.5` (not `head_dim`'s).
    pub query_pre_attn_scalar: usize,
}

/// The architecture of a checkpoint and its configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
    Gemma3(Gemma3Config),
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::Io {
            path: path.to_owned(),
            error,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|error| Error::Config {
            path: path.to_owned(),
            message: format!("line {}: invalid JSON: {error}", error.line()),
        })?;
        ModelConfig::from_json(&value, path)
    }

    /// Reads the JSON of a `config.json`; `path` is used in messages. The values are checked
    /// (see [`ModelConfig::validate`]) so that a model is never built from a configuration that
    /// does not fit together.
    pub fn from_json(value: &Value, path: &Path) -> Result<ModelConfig> {
        let reader = HfReader { value, path };
        let config = reader.config()?;
        config.validate().map_err(|(key, reason)| Error::Config {
            path: path.to_owned(),
            message: format!("`{key}` {reason}"),
        })?;
        Ok(config)
    }

    /// Checks that the values fit together: sizes at least 1, heads that divide the width
    /// (and key/value heads that divide the heads), an even head width for RoPE, positive
    /// finite epsilons, RoPE base and scaling factors. On failure, the Hugging Face key and
    /// what is wrong with it.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let positive = |key: &'static str, value: usize| {
            if value == 0 {
                Err((key, "is 0; it must be at least 1".to_owned()))
            } else {
                Ok(())
            }
        };
        let finite_positive = |key: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err((key, format!("is {value}; it must be a positive number")))
            }
        };
        let divides = |key: &'static str, part: usize, what: &str, whole: usize| {
            if whole.is_multiple_of(part) {
                Ok(())
            } else {
                Err((
                    key,
                    format!("is {part}, which does not divide {what} ({whole})"),
                ))
            }
        };
        match self {
            ModelConfig::Gpt2(c) => {
                positive("vocab_size", c.vocab_size)?;
                positive("n_positions", c.n_positions)?;
                positive("n_embd", c.n_embd)?;
                positive("n_layer", c.n_layer)?;
                positive("n_head", c.n_head)?;
                divides("n_head", c.n_head, "n_embd", c.n_embd)?;
                positive("n_inner", c.n_inner)?;
                finite_positive("layer_norm_epsilon", c.layer_norm_epsilon)
            }
            ModelConfig::Llama(c) => {
                positive("vocab_size", c.vocab_size)?;
                positive("hidden_size", c.hidden_size)?;
                positive("intermediate_size", c.intermediate_size)?;
                positive("num_hidden_layers", c.num_hidden_layers)?;
                positive("num_attention_heads", c.num_attention_heads)?;
                positive("num_key_value_heads", c.num_key_value_heads)?;
                divides(
                    "num_key_value_heads",
                    c.num_key_value_heads,
                    "num_attention_heads",
                    c.num_attention_heads,
                )?;
                positive("head_dim", c.head_dim)?;
                if !c.head_dim.is_multiple_of(2) {
                    return Err((
                        "head_dim",
                        format!(
                            "is {}; rotary embeddings need an even head width",
                            c.head_dim
                        ),
                    ));
                }
                positive("max_position_embeddings", c.max_position_embeddings)?;
                finite_positive("rms_norm_eps", c.rms_norm_eps)?;
                check_layer_types(&c.layer_types, c.num_hidden_layers, c.sliding_window)?;
                finite_positive("rope_theta", c.rope_theta)?;
                match &c.rope_scaling {
                    None => Ok(()),
                    Some(RopeScaling::Linear { factor }) => {
                        finite_positive("rope_scaling.factor", *factor)
                    }
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => {
                        finite_positive("rope_scaling.factor", *factor)?;
                        finite_positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                        finite_positive("rope_scaling.high_freq_factor", *high_freq_factor)?;
                        if high_freq_factor <= low_freq_factor {
                            return Err((
                                "rope_scaling.high_freq_factor",
                                format!(
                                    "is {high_freq_factor}; it must be larger than low_freq_factor ({low_freq_factor})"
                                ),
                            ));
                        }
                        positive(
                            "rope_scaling.original_max_position_embeddings",
                            *original_max_position_embeddings,
                        )
                    }
                }
            }
            ModelConfig::Gemma3(c) => {
                ModelConfig::Llama(c.decoder.clone()).validate()?;
                finite_positive("rope_local_base_freq", c.rope_local_base_freq)?;
                positive("query_pre_attn_scalar", c.query_pre_attn_scalar)
            }
        }
    }
}

/// One attention type per layer, and a window of at least one key where a layer slides.
fn check_layer_types(
    layer_types: &[AttentionType],
    layers: usize,
    sliding_window: Option<usize>,
) -> std::result::Result<(), (&'static str, String)> {
    if layer_types.len() != layers {
        return Err((
            "layer_types",
            format!("has {} entries for {layers} layers", layer_types.len()),
        ));
    }
    let slides = layer_types.contains(&AttentionType::SlidingAttention);
    match sliding_window {
        Some(0) if slides => Err(("sliding_window", "is 0; it must be at least 1".to_owned())),
        None if slides => Err((
            "sliding_window",
            "is missing, but layer_types has sliding_attention layers".to_owned(),
        )),
        _ => Ok(()),
    }
}

impl HfReader<'_> {
    /// The configuration, read without judging its values.
    fn config(&self) -> Result<ModelConfig> {
        let (reader, path) = (self, self.path);
        let model_type = reader.string("model_type")?;
        match model_type.as_str() {
            "gpt2" => {
                reader.activation(
                    "activation_function",
                    &["gelu_new", "gelu_pytorch_tanh", "gelu_fast"],
                )?;
                let n_embd = reader.usize("n_embd")?;
                Ok(ModelConfig::Gpt2(Gpt2Config {
                    vocab_size: reader.usize("vocab_size")?,
                    n_positions: reader.usize("n_positions")?,
                    n_embd,
                    n_layer: reader.usize("n_layer")?,
                    n_head: reader.usize("n_head")?,
                    n_inner: reader.optional_usize("n_inner")?.unwrap_or(4 * n_embd),
                    layer_norm_epsilon: reader.optional_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
                }))
            }
            "llama" | "mistral" | "qwen2" | "qwen3" => {
                reader.activation("hidden_act", &["silu", "swish"])?;
                let family = match model_type.as_str() {
                    "mistral" => LlamaFamily::Mistral,
                    "qwen2" => LlamaFamily::Qwen2,
                    "qwen3" => LlamaFamily::Qwen3,
                    _ => LlamaFamily::Llama,
                };
                let hidden_size = reader.usize("hidden_size")?;
                let num_attention_heads = reader.usize("num_attention_heads")?;
                let num_hidden_layers = reader.usize("num_hidden_layers")?;
                let (rope_theta, rope_scaling) = reader.rope()?;
                // Qwen2 always has q/k/v biases and never an o_proj bias; Llama's and Qwen3's
                // `attention_bias` covers all four projections.
                let attention_bias = match family {
                    LlamaFamily::Qwen2 => true,
                    LlamaFamily::Mistral => false,
                    _ => reader.optional_bool("attention_bias")?.unwrap_or(false),
                };
                let o_proj_bias = attention_bias && family != LlamaFamily::Qwen2;
                let sliding_window = match family {
                    LlamaFamily::Llama | LlamaFamily::Gemma3 => None,
                    LlamaFamily::Mistral => reader.optional_usize("sliding_window")?,
                    // Qwen's `sliding_window` counts only with `use_sliding_window`.
                    LlamaFamily::Qwen2 | LlamaFamily::Qwen3 => {
                        match reader.optional_bool("use_sliding_window")? {
                            Some(true) => reader.optional_usize("sliding_window")?,
                            _ => None,
                        }
                    }
                };
                let max_window_layers = reader
                    .optional_usize("max_window_layers")?
                    .unwrap_or(num_hidden_layers);
                let layer_types = reader.layer_types(num_hidden_layers, |layer| {
                    let slides = sliding_window.is_some()
                        && (family == LlamaFamily::Mistral || layer >= max_window_layers);
                    if slides {
                        AttentionType::SlidingAttention
                    } else {
                        AttentionType::FullAttention
                    }
                })?;
                Ok(ModelConfig::Llama(LlamaConfig {
                    family,
                    vocab_size: reader.usize("vocab_size")?,
                    hidden_size,
                    intermediate_size: reader.usize("intermediate_size")?,
                    num_hidden_layers,
                    num_attention_heads,
                    num_key_value_heads: reader
                        .optional_usize("num_key_value_heads")?
                        .unwrap_or(num_attention_heads),
                    head_dim: reader
                        .optional_usize("head_dim")?
                        .unwrap_or(hidden_size / num_attention_heads.max(1)),
                    max_position_embeddings: reader
                        .optional_usize("max_position_embeddings")?
                        .unwrap_or(2048),
                    rms_norm_eps: reader.optional_f64("rms_norm_eps")?.unwrap_or(1e-6),
                    rope_theta,
                    rope_scaling,
                    attention_bias,
                    o_proj_bias,
                    mlp_bias: reader.optional_bool("mlp_bias")?.unwrap_or(false),
                    tie_word_embeddings: reader
                        .optional_bool("tie_word_embeddings")?
                        .unwrap_or(false),
                    qk_norm: family == LlamaFamily::Qwen3,
                    sliding_window,
                    layer_types,
                }))
            }
            "gemma3_text" => reader.gemma3().map(ModelConfig::Gemma3),
            other => Err(Error::UnsupportedArchitecture {
                path: path.to_owned(),
                architecture: other.to_owned(),
            }),
        }
    }
}

/// The widths that decide how much memory a forward and backward pass takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    pub layers: usize,
    /// The residual stream.
    pub width: usize,
    pub heads: usize,
    /// All query heads together.
    pub query_width: usize,
    /// All key (or value) heads together.
    pub key_width: usize,
    pub mlp_width: usize,
    pub vocab: usize,
}

impl ModelConfig {
    pub fn vocab_size(&self) -> usize {
        self.dimensions().vocab
    }

    /// The longest sequence the model reads (GPT-2's learned positions; the trained context
    /// of RoPE models).
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_positions,
            ModelConfig::Llama(c) | ModelConfig::Gemma3(Gemma3Config { decoder: c, .. }) => {
                c.max_position_embeddings
            }
        }
    }

    /// The Llama-family decoder settings (Llama, Mistral, Qwen, and Gemma 3's), `None` for GPT-2.
    pub fn decoder(&self) -> Option<&LlamaConfig> {
        match self {
            ModelConfig::Gpt2(_) => None,
            ModelConfig::Llama(c) | ModelConfig::Gemma3(Gemma3Config { decoder: c, .. }) => Some(c),
        }
    }

    pub fn dimensions(&self) -> Dimensions {
        match self {
            ModelConfig::Gpt2(c) => Dimensions {
                layers: c.n_layer,
                width: c.n_embd,
                heads: c.n_head,
                query_width: c.n_embd,
                key_width: c.n_embd,
                mlp_width: c.n_inner,
                vocab: c.vocab_size,
            },
            ModelConfig::Llama(c) | ModelConfig::Gemma3(Gemma3Config { decoder: c, .. }) => {
                Dimensions {
                    layers: c.num_hidden_layers,
                    width: c.hidden_size,
                    heads: c.num_attention_heads,
                    query_width: c.num_attention_heads * c.head_dim,
                    key_width: c.num_key_value_heads * c.head_dim,
                    mlp_width: c.intermediate_size,
                    vocab: c.vocab_size,
                }
            }
        }
    }

    /// The HF `config.json` of this configuration.
    pub fn to_hf_json(&self) -> Value {
        match self {
            // Gemma's keys are Llama's, less the SiLU and MLP bias, plus its own.
            ModelConfig::Gemma3(gemma) => {
                let mut json = ModelConfig::Llama(gemma.decoder.clone()).to_hf_json();
                if let Some(keys) = json.as_object_mut() {
                    keys.remove("hidden_act");
                    keys.remove("mlp_bias");
                    keys.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
                    keys.insert(
                        "rope_local_base_freq".into(),
                        gemma.rope_local_base_freq.into(),
                    );
                    keys.insert(
                        "query_pre_attn_scalar".into(),
                        gemma.query_pre_attn_scalar.into(),
                    );
                }
                json
            }
            ModelConfig::Gpt2(c) => serde_json::json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "activation_function": "gelu_new",
                "vocab_size": c.vocab_size,
                "n_positions": c.n_positions,
                "n_ctx": c.n_positions,
                "n_embd": c.n_embd,
                "n_layer": c.n_layer,
                "n_head": c.n_head,
                "n_inner": c.n_inner,
                "layer_norm_epsilon": c.layer_norm_epsilon,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "tie_word_embeddings": true,
                "torch_dtype": "float32"
            }),
            ModelConfig::Llama(c) => {
                let rope_scaling = c
                    .rope_scaling
                    .as_ref()
                    .map(|s| serde_json::to_value(s).unwrap_or(Value::Null));
                let mut json = serde_json::json!({
                    "architectures": [c.family.architecture()],
                    "model_type": c.family.model_type(),
                    "hidden_act": "silu",
                    "vocab_size": c.vocab_size,
                    "hidden_size": c.hidden_size,
                    "intermediate_size": c.intermediate_size,
                    "num_hidden_layers": c.num_hidden_layers,
                    "num_attention_heads": c.num_attention_heads,
                    "num_key_value_heads": c.num_key_value_heads,
                    "head_dim": c.head_dim,
                    "max_position_embeddings": c.max_position_embeddings,
                    "rms_norm_eps": c.rms_norm_eps,
                    "rope_theta": c.rope_theta,
                    "rope_scaling": rope_scaling,
                    "attention_bias": c.attention_bias && c.family != LlamaFamily::Qwen2,
                    "mlp_bias": c.mlp_bias,
                    "tie_word_embeddings": c.tie_word_embeddings,
                    "torch_dtype": "float32"
                });
                if c.family != LlamaFamily::Llama {
                    json["sliding_window"] = c.sliding_window.into();
                    json["layer_types"] = serde_json::to_value(&c.layer_types).unwrap_or_default();
                }
                if matches!(c.family, LlamaFamily::Qwen2 | LlamaFamily::Qwen3) {
                    json["use_sliding_window"] = c.sliding_window.is_some().into();
                }
                json
            }
        }
    }
}

struct HfReader<'a> {
    value: &'a Value,
    path: &'a Path,
}

impl HfReader<'_> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_owned(),
            message: message.into(),
        }
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.value.get(key) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(self.error(format!("`{key}` must be a string"))),
            None => Err(self.error(format!("missing key `{key}`"))),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.optional_usize(key)?
            .ok_or_else(|| self.error(format!("missing key `{key}` (a positive integer)")))
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.error(format!(
                    "`{key}` must be a non-negative integer, found {value}"
                ))
            }),
        }
    }

    fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.error(format!("`{key}` must be a number, found {value}"))),
        }
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.error(format!("`{key}` must be true or false, found {value}"))),
        }
    }

    /// Refuses an activation `key` names other than the `implemented` ones (absent is the
    /// architecture's default, which is implemented).
    fn activation(&self, key: &str, implemented: &[&str]) -> Result<()> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(name)) if implemented.contains(&name.as_str()) => Ok(()),
            Some(other) => Err(self.error(format!(
                "`{key}` is {other}; temper implements this architecture with {}",
                implemented.join(" / ")
            ))),
        }
    }

    /// Gemma 3's text model, with transformers' defaults for what the file leaves out.
    fn gemma3(&self) -> Result<Gemma3Config> {
        let (reader, value) = (self, self.value);
        reader.activation("hidden_activation", &["gelu_pytorch_tanh"])?;
        for (key, feature) in [
            ("final_logit_softcapping", "logit soft-capping"),
            ("attn_logit_softcapping", "attention soft-capping"),
        ] {
            if value.get(key).is_some_and(|v| !v.is_null()) {
                return Err(reader.error(format!(
                    "`{key}` is set; temper's Gemma 3 has no {feature} (Gemma 3 checkpoints leave it null)"
                )));
            }
        }
        if reader.optional_bool("use_bidirectional_attention")? == Some(true) {
            return Err(reader.error(
                "`use_bidirectional_attention` is true (an embedding model); temper trains causal language models",
            ));
        }
        let num_hidden_layers = reader.usize("num_hidden_layers")?;
        let num_attention_heads = reader.usize("num_attention_heads")?;
        // transformers 5 writes `rope_parameters` per layer type; older files have
        // `rope_theta` and `rope_scaling` (the global layers') and `rope_local_base_freq`.
        let rope = value.get("rope_parameters").filter(|v| v.is_object());
        let (rope_theta, rope_scaling) = reader.rope_from(
            rope.and_then(|r| r.get("full_attention")),
            "rope_parameters.full_attention",
            1_000_000.0,
        )?;
        let rope_local_base_freq = match rope.and_then(|r| r.get("sliding_attention")) {
            Some(local) => {
                let key = "rope_parameters.sliding_attention";
                match reader.rope_from(Some(local), key, 10_000.0)? {
                    (theta, None) => theta,
                    (_, Some(_)) => {
                        return Err(reader.error(format!(
                            "`{key}` scales RoPE; temper scales only the global layers'"
                        )));
                    }
                }
            }
            None => reader
                .optional_f64("rope_local_base_freq")?
                .unwrap_or(10_000.0),
        };
        let pattern = reader
            .optional_usize("sliding_window_pattern")?
            .unwrap_or(6)
            .max(1);
        let layer_types = reader.layer_types(num_hidden_layers, |layer| {
            if (layer + 1) % pattern == 0 {
                AttentionType::FullAttention
            } else {
                AttentionType::SlidingAttention
            }
        })?;
        let attention_bias = reader.optional_bool("attention_bias")?.unwrap_or(false);
        Ok(Gemma3Config {
            decoder: LlamaConfig {
                family: LlamaFamily::Gemma3,
                vocab_size: reader.usize("vocab_size")?,
                hidden_size: reader.usize("hidden_size")?,
                intermediate_size: reader.usize("intermediate_size")?,
                num_hidden_layers,
                num_attention_heads,
                num_key_value_heads: reader
                    .optional_usize("num_key_value_heads")?
                    .unwrap_or(num_attention_heads),
                head_dim: reader.optional_usize("head_dim")?.unwrap_or(256),
                max_position_embeddings: reader
                    .optional_usize("max_position_embeddings")?
                    .unwrap_or(131_072),
                rms_norm_eps: reader.optional_f64("rms_norm_eps")?.unwrap_or(1e-6),
                rope_theta,
                rope_scaling,
                attention_bias,
                o_proj_bias: attention_bias,
                mlp_bias: false,
                tie_word_embeddings: reader.optional_bool("tie_word_embeddings")?.unwrap_or(true),
                qk_norm: true,
                sliding_window: Some(reader.optional_usize("sliding_window")?.unwrap_or(4096)),
                layer_types,
            },
            rope_local_base_freq,
            query_pre_attn_scalar: reader
                .optional_usize("query_pre_attn_scalar")?
                .unwrap_or(256),
        })
    }

    /// RoPE's base and scaling: transformers 5 nests them in `rope_parameters`; older files
    /// have top-level `rope_theta` and `rope_scaling`.
    fn rope(&self) -> Result<(f64, Option<RopeScaling>)> {
        let rope = self.value.get("rope_parameters").filter(|v| v.is_object());
        self.rope_from(rope, "rope_parameters", 10_000.0)
    }

    /// RoPE's base and scaling from `parameters` (a `rope_parameters` object at `key`), or
    /// from the top-level keys when there is none (`default_theta` when neither says).
    fn rope_from(
        &self,
        parameters: Option<&Value>,
        key: &str,
        default_theta: f64,
    ) -> Result<(f64, Option<RopeScaling>)> {
        let theta = match parameters.and_then(|r| r.get("rope_theta")) {
            Some(theta) => theta
                .as_f64()
                .ok_or_else(|| self.error(format!("`{key}.rope_theta` must be a number")))?,
            None => self.optional_f64("rope_theta")?.unwrap_or(default_theta),
        };
        let scaling = parameters
            .or_else(|| self.value.get("rope_scaling"))
            .filter(|v| !v.is_null());
        Ok((
            theta,
            scaling.map(|s| self.rope_scaling(s)).transpose()?.flatten(),
        ))
    }

    /// `layer_types` (`"full_attention"` / `"sliding_attention"` per layer), or `default(i)`
    /// for each layer when the file has none.
    fn layer_types(
        &self,
        layers: usize,
        default: impl Fn(usize) -> AttentionType,
    ) -> Result<Vec<AttentionType>> {
        match self.value.get("layer_types") {
            None | Some(Value::Null) => Ok((0..layers).map(default).collect()),
            Some(value) => serde_json::from_value(value.clone()).map_err(|_| {
                self.error(format!(
                    "`layer_types` must be a list of \"full_attention\" or \"sliding_attention\", found {value}"
                ))
            }),
        }
    }

    /// `rope_scaling` / `rope_parameters`: `{"rope_type" (or "type"): ..., ...}`.
    fn rope_scaling(&self, scaling: &Value) -> Result<Option<RopeScaling>> {
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let number = |key: &str| -> Result<f64> {
            scaling
                .get(key)
                .and_then(Value::as_f64)
                .ok_or_else(|| self.error(format!("rope scaling `{kind}` needs a number `{key}`")))
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear {
                factor: number("factor")?,
            })),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?
                    as usize,
            })),
            other => Err(self.error(format!(
                "unsupported rope scaling `{other}`: expected default, linear or llama3"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of `base` with `key` set to `value`, or `None` when it reads.
    fn error_with(base: &str, key: &str, value: Value) -> Option<String> {
        let mut json: Value = serde_json::from_str(base).unwrap_or_default();
        let mut target = &mut json;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                target[part] = value.clone();
            } else {
                target = &mut target[part];
            }
        }
        ModelConfig::from_json(&json, Path::new("config.json"))
            .err()
            .map(|e| e.to_string())
    }

    const LLAMA: &str = r#"{"model_type": "llama", "vocab_size": 101, "hidden_size": 48,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6,
        "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "hidden_act": "silu",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}"#;
    const GPT2: &str = r#"{"model_type": "gpt2", "vocab_size": 50, "n_positions": 64,
        "n_embd": 32, "n_layer": 2, "n_head": 4, "activation_function": "gelu_new"}"#;

    #[test]
    fn values_that_do_not_fit_together_name_the_key() {
        assert_eq!(error_with(LLAMA, "mlp_bias", false.into()), None);
        assert_eq!(error_with(GPT2, "n_layer", 2.into()), None);
        for (base, key, value, expected) in [
            (
                GPT2,
                "n_head",
                0.into(),
                "`n_head` is 0; it must be at least 1",
            ),
            (
                GPT2,
                "n_head",
                5.into(),
                "`n_head` is 5, which does not divide n_embd (32)",
            ),
            (GPT2, "n_inner", 0.into(), "`n_inner` is 0"),
            (
                GPT2,
                "layer_norm_epsilon",
                (-1e-5).into(),
                "`layer_norm_epsilon` is -0.00001",
            ),
            (
                GPT2,
                "activation_function",
                "relu".into(),
                "`activation_function` is \"relu\"; temper implements",
            ),
            (
                LLAMA,
                "num_key_value_heads",
                0.into(),
                "`num_key_value_heads` is 0",
            ),
            (
                LLAMA,
                "num_key_value_heads",
                4.into(),
                "`num_key_value_heads` is 4, which does not divide num_attention_heads (6)",
            ),
            (LLAMA, "head_dim", 0.into(), "`head_dim` is 0"),
            (
                LLAMA,
                "head_dim",
                7.into(),
                "`head_dim` is 7; rotary embeddings need an even head width",
            ),
            (
                LLAMA,
                "intermediate_size",
                0.into(),
                "`intermediate_size` is 0",
            ),
            (
                LLAMA,
                "rope_theta",
                0.0.into(),
                "`rope_theta` is 0; it must be a positive number",
            ),
            (LLAMA, "rope_theta", (-5.0).into(), "`rope_theta` is -5"),
            (
                LLAMA,
                "rms_norm_eps",
                (-1e-6).into(),
                "`rms_norm_eps` is -0.000001",
            ),
            (
                LLAMA,
                "rope_scaling.factor",
                0.0.into(),
                "`rope_scaling.factor` is 0",
            ),
            (
                LLAMA,
                "rope_scaling.high_freq_factor",
                0.5.into(),
                "`rope_scaling.high_freq_factor` is 0.5; it must be larger",
            ),
            (
                LLAMA,
                "hidden_act",
                "gelu".into(),
                "`hidden_act` is \"gelu\"",
            ),
        ] {
            let error = error_with(base, key, value).unwrap_or_default();
            assert!(error.starts_with("config.json: "), "{key}: {error}");
            assert!(error.contains(expected), "{key}: {error}");
        }
    }
}
