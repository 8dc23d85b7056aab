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

/// The Llama family (`LlamaForCausalLM`, Mistral, Qwen2, SmolLM, TinyLlama).
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
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
}

/// The architecture of a checkpoint and its configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
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

    /// Reads the JSON of a `config.json`; `path` is used in messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<ModelConfig> {
        let reader = HfReader { value, path };
        let model_type = reader.string("model_type")?;
        match model_type.as_str() {
            "gpt2" => {
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
            "llama" | "mistral" | "qwen2" => {
                let hidden_size = reader.usize("hidden_size")?;
                let num_attention_heads = reader.usize("num_attention_heads")?;
                let qwen2 = model_type == "qwen2";
                // transformers 5 nests RoPE settings in `rope_parameters`; older files use
                // top-level `rope_theta` and `rope_scaling`.
                let rope = value.get("rope_parameters").filter(|v| v.is_object());
                let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
                    Some(theta) => theta.as_f64().ok_or_else(|| {
                        reader.error("`rope_parameters.rope_theta` must be a number")
                    })?,
                    None => reader.optional_f64("rope_theta")?.unwrap_or(10_000.0),
                };
                let scaling = rope
                    .or_else(|| value.get("rope_scaling"))
                    .filter(|v| !v.is_null());
                let attention_bias = if qwen2 {
                    true
                } else {
                    reader.optional_bool("attention_bias")?.unwrap_or(false)
                };
                Ok(ModelConfig::Llama(LlamaConfig {
                    vocab_size: reader.usize("vocab_size")?,
                    hidden_size,
                    intermediate_size: reader.usize("intermediate_size")?,
                    num_hidden_layers: reader.usize("num_hidden_layers")?,
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
                    rope_scaling: scaling
                        .map(|s| reader.rope_scaling(s))
                        .transpose()?
                        .flatten(),
                    attention_bias,
                    o_proj_bias: !qwen2 && attention_bias,
                    mlp_bias: reader.optional_bool("mlp_bias")?.unwrap_or(false),
                    tie_word_embeddings: reader
                        .optional_bool("tie_word_embeddings")?
                        .unwrap_or(false),
                }))
            }
            other => Err(Error::UnsupportedArchitecture {
                path: path.to_owned(),
                architecture: other.to_owned(),
            }),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }

    /// The HF `config.json` of this configuration.
    pub fn to_hf_json(&self) -> Value {
        match self {
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
                let qwen2 = c.attention_bias && !c.o_proj_bias;
                let rope_scaling = c
                    .rope_scaling
                    .as_ref()
                    .map(|s| serde_json::to_value(s).unwrap_or(Value::Null));
                serde_json::json!({
                    "architectures": [if qwen2 { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
                    "model_type": if qwen2 { "qwen2" } else { "llama" },
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
                    "attention_bias": c.attention_bias && !qwen2,
                    "mlp_bias": c.mlp_bias,
                    "tie_word_embeddings": c.tie_word_embeddings,
                    "torch_dtype": "float32"
                })
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
