//! GGUF import (llama.cpp's format) for the Llama family: metadata, tensors dequantized to
//! f32 (every type of [`GgmlType`], see `quants.rs`), llama.cpp's changes to the weights
//! undone, the chat template, and the tokenizer rebuilt from the metadata (`gguf/tokenizer.rs`).

mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{
    AttentionType, Gemma3Config, LlamaConfig, LlamaFamily, ModelConfig, RopeScaling,
};
use crate::error::{Error, Result};
use crate::quants::{self, GgmlType};
use crate::weights::{Decode, RawTensor, Weights};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            GgufValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            GgufValue::Float(v) => Some(*v),
            GgufValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// A tensor of the file: name, PyTorch-order shape, type and data position.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    /// Row-major shape as PyTorch writes it (GGUF stores dimensions fastest-first).
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    offset: usize,
}

/// A parsed GGUF file held in memory.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensor>,
    /// The whole file; shared with the deferred tensors of [`GgufFile::hf_weights`].
    bytes: Arc<Vec<u8>>,
    data_start: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_owned(),
            message: format!("at byte {}: {}", self.position, message.into()),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .position
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.error(format!(
                "unexpected end of file reading {n} bytes (truncated file?)"
            )));
        };
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    fn count(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        // No count can exceed the file's size; this catches corrupt lengths before allocating.
        if n > self.bytes.len() as u64 {
            return Err(self.error(format!("{what} count {n} is larger than the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let len = self.count("string length")?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("string is not UTF-8"))
    }

    fn value(&mut self, kind: u32) -> Result<GgufValue> {
        let mut fixed = |n: usize| -> Result<[u8; 8]> {
            let mut buffer = [0u8; 8];
            buffer[..n].copy_from_slice(self.take(n)?);
            Ok(buffer)
        };
        Ok(match kind {
            0 => GgufValue::Int(i64::from(fixed(1)?[0])),
            1 => GgufValue::Int(i64::from(fixed(1)?[0] as i8)),
            2 => GgufValue::Int(i64::from(u16::from_le_bytes(
                fixed(2)?[..2].try_into().unwrap_or_default(),
            ))),
            3 => GgufValue::Int(i64::from(i16::from_le_bytes(
                fixed(2)?[..2].try_into().unwrap_or_default(),
            ))),
            4 => GgufValue::Int(i64::from(u32::from_le_bytes(
                fixed(4)?[..4].try_into().unwrap_or_default(),
            ))),
            5 => GgufValue::Int(i64::from(i32::from_le_bytes(
                fixed(4)?[..4].try_into().unwrap_or_default(),
            ))),
            6 => GgufValue::Float(f64::from(f32::from_le_bytes(
                fixed(4)?[..4].try_into().unwrap_or_default(),
            ))),
            7 => GgufValue::Bool(fixed(1)?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 => {
                let item_kind = self.u32()?;
                let len = self.count("array")?;
                let mut items = Vec::with_capacity(len.min(1 << 20));
                for _ in 0..len {
                    items.push(self.value(item_kind)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::Int(u64::from_le_bytes(fixed(8)?) as i64),
            11 => GgufValue::Int(i64::from_le_bytes(fixed(8)?)),
            12 => GgufValue::Float(f64::from_le_bytes(fixed(8)?)),
            other => return Err(self.error(format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let bytes = std::fs::read(path).map_err(|error| Error::Io {
            path: path.to_owned(),
            error,
        })?;
        GgufFile::parse(path, bytes)
    }

    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<GgufFile> {
        let mut reader = Reader {
            bytes: &bytes,
            position: 0,
            path,
        };
        if reader.take(4)? != b"GGUF" {
            return Err(Error::Gguf {
                path: path.to_owned(),
                message: "not a GGUF file (no GGUF magic)".into(),
            });
        }
        let version = reader.u32()?;
        if !(2..=3).contains(&version) {
            return Err(reader.error(format!(
                "unsupported GGUF version {version} (2 and 3 are supported)"
            )));
        }
        let n_tensors = reader.count("tensor")?;
        let n_metadata = reader.count("metadata")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_metadata {
            let key = reader.string()?;
            let kind = reader.u32()?;
            metadata.insert(key, reader.value(kind)?);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = reader.string()?;
            let n_dims = reader.u32()? as usize;
            if n_dims > 4 {
                return Err(reader.error(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(reader.count("dimension")?);
            }
            let type_id = reader.u32()?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                reader.error(format!(
                    "tensor `{name}` has ggml type {type_id}, which is not supported ({} are)",
                    GgmlType::supported()
                ))
            })?;
            let offset = usize::try_from(reader.u64()?).unwrap_or(usize::MAX);
            dims.reverse();
            tensors.push(GgufTensor {
                name,
                shape: dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(GgufValue::as_i64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = reader.position.div_ceil(alignment) * alignment;
        let file = GgufFile {
            path: path.to_owned(),
            version,
            metadata,
            tensors,
            bytes: Arc::new(bytes),
            data_start,
        };
        for tensor in &file.tensors {
            let len = file.byte_len(tensor)?;
            let end = file
                .data_start
                .checked_add(tensor.offset)
                .and_then(|start| start.checked_add(len))
                .ok_or_else(|| Error::Gguf {
                    path: path.to_owned(),
                    message: format!(
                        "tensor `{}` starts at offset {} of the data section, past the end of any file",
                        tensor.name, tensor.offset
                    ),
                })?;
            if end > file.bytes.len() {
                return Err(Error::Gguf {
                    path: path.to_owned(),
                    message: format!(
                        "tensor `{}` ends at byte {end}, past the end of the file ({} bytes): truncated?",
                        tensor.name,
                        file.bytes.len()
                    ),
                });
            }
        }
        Ok(file)
    }

    fn byte_len(&self, tensor: &GgufTensor) -> Result<usize> {
        let elements = tensor
            .shape
            .iter()
            .try_fold(1usize, |product, &dim| product.checked_mul(dim))
            .ok_or_else(|| Error::Gguf {
                path: self.path.clone(),
                message: format!(
                    "tensor `{}` has shape {:?}: more elements than memory can address",
                    tensor.name, tensor.shape
                ),
            })?;
        let (block, bytes) = tensor.ggml_type.block();
        if !elements.is_multiple_of(block) {
            return Err(Error::Gguf {
                path: self.path.clone(),
                message: format!(
                    "tensor `{}` has {elements} elements, not a multiple of its block size {block}",
                    tensor.name
                ),
            });
        }
        Ok(elements / block * bytes)
    }

    fn meta(&self, key: &str) -> Result<&GgufValue> {
        self.metadata.get(key).ok_or_else(|| Error::Gguf {
            path: self.path.clone(),
            message: format!("missing metadata key `{key}`"),
        })
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        self.meta(key)?
            .as_i64()
            .filter(|v| *v >= 0)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Gguf {
                path: self.path.clone(),
                message: format!("metadata `{key}` must be a non-negative integer"),
            })
    }

    /// The tensor's values as f32, dequantized.
    pub fn dequantize(&self, tensor: &GgufTensor) -> Result<Vec<f32>> {
        Ok(quants::dequantize(
            tensor.ggml_type,
            &self.bytes[self.byte_range(tensor)?],
        ))
    }

    /// Where the tensor's data lies in the file (checked against its length by `parse`).
    fn byte_range(&self, tensor: &GgufTensor) -> Result<std::ops::Range<usize>> {
        let start = self.data_start + tensor.offset;
        Ok(start..start + self.byte_len(tensor)?)
    }

    /// `general.architecture`, if it is one temper maps to its model zoo.
    fn architecture(&self) -> Result<(&str, LlamaFamily)> {
        let architecture = self
            .meta("general.architecture")?
            .as_str()
            .unwrap_or_default();
        let family = match architecture {
            "llama" => LlamaFamily::Llama,
            "qwen2" => LlamaFamily::Qwen2,
            "qwen3" => LlamaFamily::Qwen3,
            "gemma3" => LlamaFamily::Gemma3,
            _ => {
                return Err(Error::UnsupportedArchitecture {
                    path: self.path.clone(),
                    architecture: architecture.to_owned(),
                });
            }
        };
        Ok((architecture, family))
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        self.metadata.get(key).and_then(GgufValue::as_f64)
    }

    fn optional_usize(&self, key: &str) -> Option<usize> {
        self.metadata
            .get(key)
            .and_then(GgufValue::as_i64)
            .and_then(|v| usize::try_from(v).ok())
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.iter().any(|t| t.name == name)
    }

    /// The model's configuration, from the `{architecture}.*` metadata, with llama.cpp's
    /// defaults for what the file leaves out (Gemma 3: every sixth layer global, the others
    /// sliding with a local RoPE base of 10,000; see [`gemma3_defaults`]).
    pub fn model_config(&self) -> Result<ModelConfig> {
        let (architecture, family) = self.architecture()?;
        let key = |name: &str| format!("{architecture}.{name}");
        let hidden_size = self.meta_usize(&key("embedding_length"))?;
        let heads = self.meta_usize(&key("attention.head_count"))?;
        let num_hidden_layers = self.meta_usize(&key("block_count"))?;
        let vocab_size = match self.optional_usize(&key("vocab_size")) {
            Some(n) => n,
            None => self
                .meta("tokenizer.ggml.tokens")?
                .as_array()
                .map_or(0, <[GgufValue]>::len),
        };
        let gemma = family == LlamaFamily::Gemma3;
        // Llama writes the rotary width; Qwen3 and Gemma 3 the key width.
        let head_dim = self
            .optional_usize(&key("attention.key_length"))
            .or_else(|| self.optional_usize(&key("rope.dimension_count")))
            .unwrap_or(hidden_size / heads.max(1));
        let rope_scaling = match self
            .metadata
            .get(&key("rope.scaling.type"))
            .and_then(GgufValue::as_str)
        {
            Some("linear") => Some(RopeScaling::Linear {
                factor: self.meta_f64(&key("rope.scaling.factor")).unwrap_or(1.0),
            }),
            _ => None,
        };
        let sliding_window = gemma.then(|| {
            self.optional_usize(&key("attention.sliding_window"))
                .unwrap_or(4096)
        });
        let layer_types = (0..num_hidden_layers)
            .map(
                |layer| match gemma && (layer + 1) % GEMMA3_GLOBAL_EVERY != 0 {
                    true => AttentionType::SlidingAttention,
                    false => AttentionType::FullAttention,
                },
            )
            .collect();
        let decoder = LlamaConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: self.meta_usize(&key("feed_forward_length"))?,
            num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: self
                .optional_usize(&key("attention.head_count_kv"))
                .unwrap_or(heads),
            head_dim,
            max_position_embeddings: self.meta_usize(&key("context_length"))?,
            rms_norm_eps: self
                .meta_f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(if gemma { 1e-6 } else { 1e-5 }),
            rope_theta: self.meta_f64(&key("rope.freq_base")).unwrap_or(if gemma {
                1_000_000.0
            } else {
                10_000.0
            }),
            rope_scaling,
            attention_bias: self.has_tensor("blk.0.attn_q.bias"),
            o_proj_bias: self.has_tensor("blk.0.attn_output.bias"),
            mlp_bias: false,
            tie_word_embeddings: !self.has_tensor("output.weight"),
            qk_norm: self.has_tensor("blk.0.attn_q_norm.weight"),
            sliding_window,
            layer_types,
        };
        let config = match family {
            LlamaFamily::Gemma3 => ModelConfig::Gemma3(gemma3_defaults(decoder)),
            _ => ModelConfig::Llama(decoder),
        };
        config.validate().map_err(|(hf_key, reason)| Error::Gguf {
            path: self.path.clone(),
            message: format!("metadata `{}` {reason}", key(gguf_key(hf_key))),
        })?;
        Ok(config)
    }

    /// The tensors under Hugging Face names, dequantized as the model takes them, with
    /// llama.cpp's changes undone: Llama's q/k rows un-permuted, Gemma's norms (stored as
    /// `1 + weight`) shifted back.
    pub fn hf_weights(&self, config: &ModelConfig) -> Result<Weights> {
        let (architecture, family) = self.architecture()?;
        let heads = config
            .decoder()
            .map_or((1, 1), |c| (c.num_attention_heads, c.num_key_value_heads));
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for tensor in &self.tensors {
            let name = hf_name(&tensor.name, family).ok_or_else(|| Error::Gguf {
                path: self.path.clone(),
                message: format!(
                    "unexpected tensor `{}` for the {architecture} architecture",
                    tensor.name
                ),
            })?;
            // llama.cpp's converter interleaves the two rotary halves of each head of q and k.
            let permuted_heads = match family {
                LlamaFamily::Llama if name.ends_with("self_attn.q_proj.weight") => Some(heads.0),
                LlamaFamily::Llama if name.ends_with("self_attn.k_proj.weight") => Some(heads.1),
                _ => None,
            };
            let shifted = family == LlamaFamily::Gemma3 && name.ends_with("norm.weight");
            let (bytes, range) = (Arc::clone(&self.bytes), self.byte_range(tensor)?);
            let (shape, ggml_type) = (tensor.shape.clone(), tensor.ggml_type);
            let decode: Decode = Box::new(move || {
                let mut raw = RawTensor {
                    data: quants::dequantize(ggml_type, &bytes[range]),
                    shape,
                };
                if let Some(heads) = permuted_heads {
                    raw = unpermute(raw, heads);
                }
                if shifted {
                    raw.data.iter_mut().for_each(|w| *w -= 1.0);
                }
                raw.data
            });
            tensors.push((name, tensor.shape.clone(), decode));
        }
        Ok(Weights::deferred(self.path.clone(), tensors))
    }

    /// The chat template of `tokenizer.chat_template`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.metadata
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
    }

    fn token_text(&self, key: &str) -> Option<String> {
        let id = self.metadata.get(key)?.as_i64()? as usize;
        self.meta("tokenizer.ggml.tokens")
            .ok()?
            .as_array()?
            .get(id)?
            .as_str()
            .map(str::to_owned)
    }

    /// BOS and EOS token texts from the metadata.
    pub fn special_tokens(&self) -> (Option<String>, Option<String>) {
        (
            self.token_text("tokenizer.ggml.bos_token_id"),
            self.token_text("tokenizer.ggml.eos_token_id"),
        )
    }
}

/// What the metadata leaves out of a Gemma 3 file: as llama.cpp assumes, the local RoPE base
/// is 10,000 and attention scores are scaled by the head width, except in the 27B model (62
/// layers), which scales by the width per head.
fn gemma3_defaults(decoder: LlamaConfig) -> Gemma3Config {
    let query_pre_attn_scalar = match decoder.num_hidden_layers {
        62 => decoder.hidden_size / decoder.num_attention_heads.max(1),
        _ => decoder.head_dim,
    };
    Gemma3Config {
        decoder,
        rope_local_base_freq: 10_000.0,
        query_pre_attn_scalar,
    }
}

/// Gemma 3 interleaves five sliding-window layers with one global layer.
const GEMMA3_GLOBAL_EVERY: usize = 6;

/// The GGUF metadata key (after `{architecture}.`) a configuration value comes from (see
/// [`GgufFile::model_config`]), for messages.
fn gguf_key(hf_key: &str) -> &'static str {
    match hf_key {
        "vocab_size" => "vocab_size",
        "hidden_size" => "embedding_length",
        "intermediate_size" => "feed_forward_length",
        "num_hidden_layers" => "block_count",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length",
        "max_position_embeddings" => "context_length",
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "sliding_window" => "attention.sliding_window",
        _ => "rope.scaling.factor",
    }
}

/// Undoes llama.cpp's `permute(w, n_head)`, which reorders each head's rows from the
/// rotate-half layout `[first half | second half]` to interleaved pairs.
fn unpermute(tensor: RawTensor, n_heads: usize) -> RawTensor {
    let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
    let head_rows = rows / n_heads;
    let half = head_rows / 2;
    let mut data = vec![0.0; tensor.data.len()];
    for head in 0..n_heads {
        for i in 0..half {
            for pair in 0..2 {
                // GGUF row (head, i, pair) holds HF row (head, pair, i).
                let from = head * head_rows + i * 2 + pair;
                let to = head * head_rows + pair * half + i;
                data[to * cols..(to + 1) * cols]
                    .copy_from_slice(&tensor.data[from * cols..(from + 1) * cols]);
            }
        }
    }
    RawTensor {
        shape: tensor.shape,
        data,
    }
}

/// llama.cpp tensor names -> Hugging Face names. Gemma's four norms per layer take llama.cpp's
/// `ffn_norm` for the norm before the MLP, which Llama calls `post_attention_layernorm`.
fn hf_name(gguf: &str, family: LlamaFamily) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let gemma = family == LlamaFamily::Gemma3;
            let hf = match part {
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" if gemma => "pre_feedforward_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "post_attention_norm.weight" if gemma => "post_attention_layernorm.weight",
                "post_ffw_norm.weight" if gemma => "post_feedforward_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "attn_q.bias" => "self_attn.q_proj.bias",
                "attn_k.bias" => "self_attn.k_proj.bias",
                "attn_v.bias" => "self_attn.v_proj.bias",
                "attn_output.bias" => "self_attn.o_proj.bias",
                "attn_q_norm.weight" => "self_attn.q_norm.weight",
                "attn_k_norm.weight" => "self_attn.k_norm.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                "rope_freqs.weight" => "self_attn.rotary_emb.inv_freq",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (n_heads, rows, cols) = (2, 8, 3);
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let half = rows / n_heads / 2;
        let mut permuted = vec![0.0; hf.len()];
        for head in 0..n_heads {
            for pair in 0..2 {
                for i in 0..half {
                    let from = head * rows / n_heads + pair * half + i;
                    let to = head * rows / n_heads + i * 2 + pair;
                    permuted[to * cols..(to + 1) * cols]
                        .copy_from_slice(&hf[from * cols..(from + 1) * cols]);
                }
            }
        }
        let restored = unpermute(
            RawTensor {
                shape: vec![rows, cols],
                data: permuted,
            },
            n_heads,
        );
        assert_eq!(restored.data, hf);
    }

    /// A GGUF v3 file with the given metadata strings and tensors `(name, shape, type id, bytes)`.
    fn gguf_bytes(tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend(1u64.to_le_bytes());
        let string = |out: &mut Vec<u8>, text: &str| {
            out.extend((text.len() as u64).to_le_bytes());
            out.extend(text.as_bytes());
        };
        string(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        string(&mut out, "llama");
        let mut offset = 0u64;
        for (name, dims, kind, data) in tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for dim in dims {
                out.extend(dim.to_le_bytes());
            }
            out.extend(kind.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for (_, _, _, data) in tensors {
            out.extend(data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }

    fn f16_bytes(value: f32) -> [u8; 2] {
        half::f16::from_f32(value).to_le_bytes()
    }

    #[test]
    fn every_supported_type_dequantizes() {
        let f32_data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f16_data: Vec<u8> = [0.5f32, 3.0].iter().flat_map(|v| f16_bytes(*v)).collect();
        let mut q8 = f16_bytes(0.25).to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut q4_0 = f16_bytes(2.0).to_vec();
        q4_0.extend((0..16).map(|i| (i as u8) | (15 << 4)));
        let mut q4_1 = f16_bytes(1.0).to_vec();
        q4_1.extend(f16_bytes(-3.0));
        q4_1.extend((0..16).map(|i| (i as u8) << 4));
        let bytes = gguf_bytes(&[
            ("a", vec![2], 0, f32_data),
            ("b", vec![2], 1, f16_data),
            ("c", vec![32], 8, q8),
            ("d", vec![32], 2, q4_0),
            ("e", vec![32], 3, q4_1),
        ]);
        let file = GgufFile::parse(Path::new("t.gguf"), bytes).unwrap();
        let values = |i: usize| file.dequantize(&file.tensors[i]).unwrap();
        assert_eq!(values(0), [1.5, -2.0]);
        assert_eq!(values(1), [0.5, 3.0]);
        assert_eq!((values(2)[0], values(2)[31]), (-4.0, 3.75));
        assert_eq!((values(3)[1], values(3)[16]), (-14.0, 14.0));
        assert_eq!(
            (values(4)[0], values(4)[16], values(4)[31]),
            (-3.0, -3.0, 12.0)
        );
    }

    #[test]
    fn an_unsupported_tensor_type_is_named() {
        // 16 is IQ2_XXS, an importance-matrix type.
        let bytes = gguf_bytes(&[("blk.0.attn_q.weight", vec![256], 16, vec![0; 300])]);
        let error = GgufFile::parse(Path::new("k.gguf"), bytes)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tensor `blk.0.attn_q.weight` has ggml type 16, which is not supported (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, BF16 are)"),
            "{error}"
        );
    }

    #[test]
    fn offsets_and_sizes_that_overflow_name_the_tensor() {
        // The offset field of the only tensor: after the header, one string metadata entry
        // and the tensor's name, dimension count, one dimension and type.
        let name = "blk.0.attn_q.weight";
        let offset_at = 4 + 4 + 8 + 8 + (8 + 20) + 4 + (8 + 5) + (8 + name.len()) + 4 + 8 + 4;
        let mut bytes = gguf_bytes(&[(name, vec![2], 0, vec![0; 8])]);
        bytes[offset_at..offset_at + 8].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        let error = GgufFile::parse(Path::new("o.gguf"), bytes)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tensor `blk.0.attn_q.weight` starts at offset"),
            "{error}"
        );

        // Four dimensions of 65,536 (each within a file of that size) have 2^64 elements.
        let mut bytes = gguf_bytes(&[(name, vec![65_536; 4], 0, vec![0; 65_536])]);
        bytes.resize(70_000, 0);
        let error = GgufFile::parse(Path::new("s.gguf"), bytes)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tensor `blk.0.attn_q.weight` has shape [65536, 65536, 65536, 65536]"),
            "{error}"
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let error = GgufFile::parse(Path::new("x.gguf"), b"GGML....".to_vec()).unwrap_err();
        assert_eq!(error.to_string(), "x.gguf: not a GGUF file (no GGUF magic)");
        let mut header = b"GGUF".to_vec();
        header.extend(3u32.to_le_bytes());
        header.extend(1u64.to_le_bytes());
        let error = GgufFile::parse(Path::new("x.gguf"), header).unwrap_err();
        assert!(
            error.to_string().contains("unexpected end of file"),
            "{error}"
        );
    }
}
