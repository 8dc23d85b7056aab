//! How an architecture's module tree meets its checkpoints.
//!
//! A model's parameter paths (as `temper-store` names them) are its Hugging Face keys, so
//! loading and saving walk the module tree and spell no key. What a field name cannot say is
//! declared once per architecture as a [`Layout`]: how `Linear` weights are stored, a key
//! prefix some files leave out, and the keys of buffers and tied copies that are not
//! parameters.
//!
//! Invariant: loading a model's own saved tensors uses every key, and saving a loaded model
//! writes the keys it was loaded from (checked by the round-trip tests in
//! `tests/checkpoints.rs`).

use burn::module::{Module, Param};
use burn::prelude::*;
use temper_store::{ParamPath, PathMapper, PathVisitor, map_params, visit_params};

use crate::error::{Error, Result};
use crate::weights::{WeightWriter, Weights, raw};

/// How a checkpoint stores a projection's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `torch.nn.Linear`: `[out, in]` (Llama, Mistral, Qwen2).
    Torch,
    /// HF `Conv1D`: `[in, out]`, as temper keeps it (GPT-2).
    Conv1d,
}

/// What an architecture's checkpoint keys know that its field names do not.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// How the weights of its `Linear` layers are stored.
    pub linear: WeightLayout,
    /// A prefix of every key that some files leave out (GPT-2's `transformer.`: files saved
    /// from `GPT2Model` rather than `GPT2LMHeadModel`).
    pub optional_prefix: Option<&'static str>,
    /// Keys a file may hold that are not parameters (buffers, a tied output layer's copy);
    /// `*` stands for one path segment, such as a layer index.
    pub ignored: &'static [&'static str],
}

/// The module type whose parameters are an adapter's, not the model's.
const ADAPTER_OWNER: &str = "LowRank";

impl Layout {
    /// Whether the parameter at `at` is a `Linear` weight that checkpoints store transposed.
    fn transposed(&self, at: &ParamPath<'_>) -> bool {
        self.linear == WeightLayout::Torch && at.owner == "Linear" && at.path.ends_with(".weight")
    }

    /// Whether `key` is one of the `ignored` keys (with or without the optional prefix, which
    /// loading may have added to a file that lacked it).
    fn ignores(&self, key: &str) -> bool {
        let matches = |key: &str| {
            self.ignored.iter().any(|pattern| {
                let mut segments = key.split('.');
                pattern
                    .split('.')
                    .all(|p| segments.next().is_some_and(|s| p == "*" || p == s))
                    && segments.next().is_none()
            })
        };
        matches(key)
            || self
                .optional_prefix
                .and_then(|prefix| key.strip_prefix(prefix))
                .is_some_and(matches)
    }

    /// Replaces every parameter of `module` (adapters excepted) by the tensor of `weights`
    /// under its path, strictly: a missing or mis-shaped tensor is an error naming its key,
    /// and so is a tensor left over that the layout does not ignore. Lazy parameters are
    /// replaced without ever being initialised.
    pub fn load<B: Backend, M: Module<B>>(
        &self,
        module: M,
        weights: &mut Weights,
        device: &B::Device,
    ) -> Result<M> {
        if let Some(prefix) = self.optional_prefix {
            weights.add_prefix_if_absent(prefix);
        }
        let mut loader = Loader {
            layout: self,
            weights,
            device,
            error: None,
        };
        let module = map_params(module, &mut loader);
        if let Some(error) = loader.error {
            return Err(error);
        }
        weights.ignore_matching(|key| self.ignores(key));
        Ok(module)
    }

    /// The parameters of `module` (adapters excepted) under their keys, in file layout.
    pub fn save<B: Backend, M: Module<B>>(&self, module: &M) -> WeightWriter {
        let mut saver = Saver {
            layout: self,
            writer: WeightWriter::default(),
        };
        visit_params(module, &mut saver);
        saver.writer
    }
}

struct Loader<'a, B: Backend> {
    layout: &'a Layout,
    weights: &'a mut Weights,
    device: &'a B::Device,
    error: Option<Error>,
}

impl<B: Backend> PathMapper<B> for Loader<'_, B> {
    fn map_float<const D: usize>(
        &mut self,
        at: ParamPath<'_>,
        param: Param<Tensor<B, D>>,
    ) -> Param<Tensor<B, D>> {
        if self.error.is_some() || at.within(ADAPTER_OWNER) {
            return param;
        }
        let mut shape = param.lazy_shape().dims::<D>().to_vec();
        let transposed = self.layout.transposed(&at);
        if transposed {
            shape.reverse();
        }
        match self.weights.take(at.path, &shape) {
            Ok(tensor) => {
                let tensor = if transposed {
                    tensor.transposed()
                } else {
                    tensor
                };
                let value = tensor.into_tensor::<B, D>(self.device).require_grad();
                Param::initialized(param.id, value)
            }
            Err(error) => {
                self.error = Some(error);
                param
            }
        }
    }
}

struct Saver<'a> {
    layout: &'a Layout,
    writer: WeightWriter,
}

impl<B: Backend> PathVisitor<B> for Saver<'_> {
    fn visit_float<const D: usize>(&mut self, at: ParamPath<'_>, param: &Param<Tensor<B, D>>) {
        if at.within(ADAPTER_OWNER) {
            return;
        }
        let tensor = raw(param.val());
        let tensor = if self.layout.transposed(&at) {
            tensor.transposed()
        } else {
            tensor
        };
        self.writer.push(at.path, tensor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_patterns_match_whole_segments() {
        let layout = Layout {
            linear: WeightLayout::Conv1d,
            optional_prefix: None,
            ignored: &["transformer.h.*.attn.bias", "lm_head.weight"],
        };
        assert!(layout.ignores("transformer.h.11.attn.bias"));
        assert!(layout.ignores("lm_head.weight"));
        assert!(!layout.ignores("transformer.h.11.attn.bias.extra"));
        assert!(!layout.ignores("transformer.h.attn.bias"));
        assert!(!layout.ignores("transformer.h.0.attn.c_attn.bias"));
    }
}
