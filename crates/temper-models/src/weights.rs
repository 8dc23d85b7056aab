//! Checkpoint tensors: strict loading from safetensors (single file or sharded index), and
//! writing them back.
//!
//! Loading is strict, as nanoGPT's is: every tensor the model needs must be present with the
//! shape the configuration implies, and every tensor of the file must be used. Tied embeddings
//! are the documented exception (an `lm_head.weight` equal in role to the embedding may be
//! absent or present), and known non-parameter buffers (GPT-2's `attn.bias` causal mask) are
//! ignored by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A tensor read from a checkpoint, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl RawTensor {
    /// The tensor as `[cols, rows]` (a 2-D transpose), for HF `nn.Linear` weights.
    pub fn transposed(self) -> RawTensor {
        /// Square tiles keep the strided reads within a few cache lines.
        const TILE: usize = 32;
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        if rows > 0 {
            // Each task writes TILE rows of the result: TILE columns of the input.
            data.par_chunks_mut(TILE * rows)
                .enumerate()
                .for_each(|(tile, out)| {
                    let first = tile * TILE;
                    for r0 in (0..rows).step_by(TILE) {
                        for c in first..(first + TILE).min(cols) {
                            for r in r0..(r0 + TILE).min(rows) {
                                out[(c - first) * rows + r] = self.data[r * cols + c];
                            }
                        }
                    }
                });
        }
        RawTensor {
            shape: vec![cols, rows],
            data,
        }
    }

    pub fn into_tensor<B: Backend, const D: usize>(self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.data, self.shape), device)
    }
}

/// Makes a tensor's values when it is taken (dequantizes a GGUF tensor, say).
pub type Decode = Box<dyn FnOnce() -> Vec<f32> + Send>;

/// A tensor of [`Weights`]: its values, or how to make them.
enum Stored {
    Ready(RawTensor),
    Deferred { shape: Vec<usize>, decode: Decode },
}

impl Stored {
    fn shape(&self) -> &[usize] {
        match self {
            Stored::Ready(tensor) => &tensor.shape,
            Stored::Deferred { shape, .. } => shape,
        }
    }

    fn into_raw(self) -> RawTensor {
        match self {
            Stored::Ready(tensor) => tensor,
            Stored::Deferred { shape, decode } => RawTensor {
                shape,
                data: decode(),
            },
        }
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self {
            Stored::Ready(_) => "ready",
            Stored::Deferred { .. } => "deferred",
        };
        write!(f, "{state} {:?}", self.shape())
    }
}

/// The tensors of a checkpoint, taken one by one as a model is built.
#[derive(Debug)]
pub struct Weights {
    source: PathBuf,
    tensors: BTreeMap<String, Stored>,
}

impl Weights {
    pub fn new(source: PathBuf, tensors: BTreeMap<String, RawTensor>) -> Weights {
        let tensors = tensors
            .into_iter()
            .map(|(key, tensor)| (key, Stored::Ready(tensor)))
            .collect();
        Weights { source, tensors }
    }

    /// Tensors whose values are made when they are taken: a model is then built holding one
    /// decoded tensor at a time besides its own weights, not a second copy of all of them.
    pub fn deferred(source: PathBuf, tensors: Vec<(String, Vec<usize>, Decode)>) -> Weights {
        let tensors = tensors
            .into_iter()
            .map(|(key, shape, decode)| (key, Stored::Deferred { shape, decode }))
            .collect();
        Weights { source, tensors }
    }

    /// Reads `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn from_dir(dir: &Path) -> Result<Weights> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Weights::from_files(std::slice::from_ref(&single), single.clone());
        }
        let index = dir.join("model.safetensors.index.json");
        if !index.is_file() {
            return Err(Error::Safetensors {
                path: dir.to_owned(),
                message: "has neither model.safetensors nor model.safetensors.index.json".into(),
            });
        }
        let text = std::fs::read_to_string(&index).map_err(|error| Error::Io {
            path: index.clone(),
            error,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| Error::Safetensors {
                path: index.clone(),
                message: format!("invalid JSON: {error}"),
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Safetensors {
                path: index.clone(),
                message: "has no `weight_map` object".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let files: Vec<PathBuf> = shards.into_iter().map(|shard| dir.join(shard)).collect();
        Weights::from_files(&files, index)
    }

    fn from_files(files: &[PathBuf], source: PathBuf) -> Result<Weights> {
        let mut tensors = BTreeMap::new();
        for file in files {
            let bytes = std::fs::read(file).map_err(|error| Error::Io {
                path: file.clone(),
                error,
            })?;
            let safetensors =
                temper_store::parse_safetensors(&bytes).map_err(|error| Error::Safetensors {
                    path: file.clone(),
                    message: format!(
                        "not a valid safetensors file (truncated or corrupt?): {error}"
                    ),
                })?;
            for (name, view) in safetensors.tensors() {
                let data =
                    temper_store::decode_f32(view.dtype(), view.data()).ok_or_else(|| {
                        Error::Safetensors {
                            path: file.clone(),
                            message: format!(
                                "tensor `{name}` has dtype {:?}; supported: F32, F16, BF16",
                                view.dtype()
                            ),
                        }
                    })?;
                tensors.insert(
                    name,
                    RawTensor {
                        shape: view.shape().to_vec(),
                        data,
                    },
                );
            }
        }
        Ok(Weights::new(source, tensors))
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor `key`, which must have shape `expected`. Taken out, not copied: a model's
    /// weights are held once while it is built.
    pub fn take(&mut self, key: &str, expected: &[usize]) -> Result<RawTensor> {
        let tensor = self
            .tensors
            .remove(key)
            .ok_or_else(|| Error::MissingTensor {
                source_file: self.source.clone(),
                key: key.to_owned(),
                expected: expected.to_vec(),
            })?;
        if tensor.shape() != expected {
            return Err(Error::ShapeMismatch {
                source_file: self.source.clone(),
                key: key.to_owned(),
                expected: expected.to_vec(),
                actual: tensor.shape().to_vec(),
            });
        }
        Ok(tensor.into_raw())
    }

    /// Drops every tensor whose key satisfies `ignored`: deliberately unused (buffers, tied
    /// copies).
    pub fn ignore_matching(&mut self, ignored: impl Fn(&str) -> bool) {
        self.tensors.retain(|key, _| !ignored(key));
    }

    /// Puts `prefix` before every key when no key starts with it (a file saved without the
    /// prefix, such as GPT-2's `GPT2Model`).
    pub fn add_prefix_if_absent(&mut self, prefix: &str) {
        if self.tensors.is_empty() || self.tensors.keys().any(|key| key.starts_with(prefix)) {
            return;
        }
        self.tensors = std::mem::take(&mut self.tensors)
            .into_iter()
            .map(|(key, tensor)| (format!("{prefix}{key}"), tensor))
            .collect();
    }

    /// Fails when tensors were left unused (neither taken nor ignored).
    pub fn finish(self) -> Result<()> {
        let unused: Vec<String> = self.tensors.into_keys().collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::UnexpectedTensors {
                source_file: self.source,
                keys: unused,
            })
        }
    }
}

/// Tensors to write, in HF names and layouts.
#[derive(Debug, Default)]
pub struct WeightWriter {
    tensors: Vec<(String, RawTensor)>,
}

impl WeightWriter {
    pub fn push(&mut self, key: impl Into<String>, tensor: RawTensor) {
        self.tensors.push((key.into(), tensor));
    }

    /// The tensor pushed under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&RawTensor> {
        self.tensors.iter().find(|(k, _)| k == key).map(|(_, t)| t)
    }

    /// The keys pushed so far, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(k, _)| k.as_str())
    }

    pub fn push_tensor<B: Backend, const D: usize>(
        &mut self,
        key: impl Into<String>,
        tensor: Tensor<B, D>,
    ) {
        self.push(key, raw(tensor));
    }

    /// Writes an f32 `model.safetensors` through a temporary file, so that a failure leaves
    /// no half-written checkpoint.
    pub fn write(self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Vec<usize>, &[f32])> = self
            .tensors
            .iter()
            .map(|(key, tensor)| (key.clone(), tensor.shape.clone(), tensor.data.as_slice()))
            .collect();
        let metadata: HashMap<String, String> = [("format".to_owned(), "pt".to_owned())].into();
        Ok(temper_store::write_f32_safetensors(
            path,
            &tensors,
            Some(metadata),
        )?)
    }
}

/// A tensor's values as f32 on the host.
pub fn raw<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> RawTensor {
    let shape = tensor.dims().to_vec();
    let data = tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default();
    RawTensor { shape, data }
}
