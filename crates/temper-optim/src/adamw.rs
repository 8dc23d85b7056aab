//! AdamW (decoupled weight decay, as `torch.optim.AdamW`) with parameter groups, and clipping
//! by the global gradient norm (as `torch.nn.utils.clip_grad_norm_`).

use std::collections::{BTreeMap, HashMap};

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use temper_store::{ParamPath, PathMapper, map_params, param_paths};

use crate::error::{Error, Result};

/// The optimizer's hyper-parameters (the learning rate comes from the schedule each step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Decay rate of the first moment (the mean of the gradients).
    pub adam_beta1: f64,
    /// Decay rate of the second moment (the mean of the squared gradients).
    pub adam_beta2: f64,
    /// Added to the second moment's square root, against division by zero.
    pub adam_epsilon: f64,
    /// Decoupled weight decay for the parameters not matched by `no_decay`.
    pub weight_decay: f64,
    /// Parameters whose dotted path contains one of these are not decayed (biases, norms,
    /// embeddings by default).
    pub no_decay: Vec<String>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.0,
            no_decay: ["bias", "norm", "ln_", "embed", "wte", "wpe"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl AdamWConfig {
    /// Whether the parameter at `path` (e.g. `model.layers.0.input_layernorm.weight`) decays.
    pub fn decays(&self, path: &str) -> bool {
        !self
            .no_decay
            .iter()
            .any(|pattern| path.contains(pattern.as_str()))
    }
}

/// The moments of one parameter, flattened, on the inner (non-autodiff) backend: AdamW is
/// elementwise, so one rank serves every parameter.
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    first: Tensor<B, 1>,
    second: Tensor<B, 1>,
    step: u64,
}

/// The optimizer's state by parameter path, on the host: what a checkpoint stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AdamWState {
    pub params: BTreeMap<String, ParamMoments>,
}

/// The moments of one parameter (flattened) and how many updates it has had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamMoments {
    pub step: u64,
    pub first: Vec<f32>,
    pub second: Vec<f32>,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The factor gradients were scaled by (1 when not clipped).
    pub clip_factor: f64,
    /// Parameters updated, and how many of them were decayed.
    pub updated: usize,
    pub decayed: usize,
}

/// AdamW over the parameters of a burn module.
#[derive(Debug)]
pub struct AdamW<B: AutodiffBackend> {
    config: AdamWConfig,
    state: HashMap<ParamId, Moments<B::InnerBackend>>,
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            state: HashMap::new(),
        }
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The moments of every parameter of `module` that has been updated, by parameter path
    /// (`temper-store`'s: the Hugging Face keys of a model).
    pub fn export_state<M: AutodiffModule<B>>(&self, module: &M) -> AdamWState {
        let host = |t: &Tensor<B::InnerBackend, 1>| {
            t.to_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default()
        };
        let params = param_paths(module)
            .into_iter()
            .filter_map(|(id, (path, _))| {
                let moments = self.state.get(&id)?;
                let saved = ParamMoments {
                    step: moments.step,
                    first: host(&moments.first),
                    second: host(&moments.second),
                };
                Some((path, saved))
            })
            .collect();
        AdamWState { params }
    }

    /// Restores moments saved by [`AdamW::export_state`] onto `module`'s parameters (matched
    /// by path, so a reloaded model with new parameter ids resumes exactly).
    pub fn import_state<M: AutodiffModule<B>>(
        &mut self,
        module: &M,
        state: &AdamWState,
        device: &B::Device,
    ) -> Result<()> {
        let by_path: HashMap<String, (ParamId, usize)> = param_paths(module)
            .into_iter()
            .map(|(id, (path, elements))| (path, (id, elements)))
            .collect();
        let mut restored = HashMap::new();
        for (path, saved) in &state.params {
            let &(id, elements) = by_path
                .get(path)
                .ok_or_else(|| Error::UnknownParameter { path: path.clone() })?;
            if saved.first.len() != elements || saved.second.len() != elements {
                return Err(Error::SizeMismatch {
                    path: path.clone(),
                    expected: elements,
                    actual: saved.first.len().min(saved.second.len()),
                });
            }
            let tensor = |values: &Vec<f32>| {
                Tensor::<B::InnerBackend, 1>::from_data(
                    TensorData::new(values.clone(), [elements]),
                    device,
                )
            };
            let moments = Moments {
                first: tensor(&saved.first),
                second: tensor(&saved.second),
                step: saved.step,
            };
            restored.insert(id, moments);
        }
        self.state = restored;
        Ok(())
    }

    /// One step at learning rate `lr`: gradients are clipped to a global norm of
    /// `max_grad_norm` (when given), then every parameter with a gradient is updated.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
        max_grad_norm: Option<f64>,
    ) -> (M, StepReport) {
        let grad_norm = global_grad_norm(&module, &grads);
        // torch: clip_coef = max_norm / (total_norm + 1e-6), applied when below 1.
        let clip_factor = match max_grad_norm {
            Some(max) if grad_norm.is_finite() => (max / (grad_norm + 1e-6)).min(1.0),
            _ => 1.0,
        };
        let mut mapper = StepMapper {
            optimizer: self,
            grads: &mut grads,
            lr,
            clip_factor,
            updated: 0,
            decayed: 0,
        };
        let module = map_params(module, &mut mapper);
        let (updated, decayed) = (mapper.updated, mapper.decayed);
        (
            module,
            StepReport {
                grad_norm,
                clip_factor,
                updated,
                decayed,
            },
        )
    }
}

/// sqrt of the sum of squares of every gradient of `module`'s parameters, summed on the
/// device and read back once (one synchronisation per step on a GPU).
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct Norm<'a, B: Backend> {
        grads: &'a GradientsParams,
        squares: Vec<Tensor<B, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.squares.push(grad.square().sum());
            }
        }
    }
    let mut visitor = Norm::<B::InnerBackend> {
        grads,
        squares: Vec::new(),
    };
    module.visit(&mut visitor);
    if visitor.squares.is_empty() {
        return 0.0;
    }
    // Each parameter's sum of squares is f32 on the device; they are added in f64 on the host,
    // in parameter order.
    let sums: Vec<f32> = Tensor::cat(visitor.squares, 0)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    sums.iter().map(|&s| f64::from(s)).sum::<f64>().sqrt()
}

struct StepMapper<'a, B: AutodiffBackend> {
    optimizer: &'a mut AdamW<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
    clip_factor: f64,
    updated: usize,
    decayed: usize,
}

impl<B: AutodiffBackend> StepMapper<'_, B> {
    /// One AdamW update of a tensor (inner backend), returning its new value and moments.
    fn update(
        &self,
        value: Tensor<B::InnerBackend, 1>,
        grad: Tensor<B::InnerBackend, 1>,
        moments: Option<Moments<B::InnerBackend>>,
        decay: bool,
    ) -> (Tensor<B::InnerBackend, 1>, Moments<B::InnerBackend>) {
        let c = &self.optimizer.config;
        let grad = if self.clip_factor < 1.0 {
            grad * self.clip_factor
        } else {
            grad
        };
        let (first, second, step) = match moments {
            Some(m) => (m.first, m.second, m.step),
            None => (grad.zeros_like(), grad.zeros_like(), 0),
        };
        let step = step + 1;
        let first = first * c.adam_beta1 + grad.clone() * (1.0 - c.adam_beta1);
        let second = second * c.adam_beta2 + grad.square() * (1.0 - c.adam_beta2);
        let value = if decay && c.weight_decay != 0.0 {
            value * (1.0 - self.lr * c.weight_decay)
        } else {
            value
        };
        let bias1 = 1.0 - c.adam_beta1.powi(step as i32);
        let bias2 = 1.0 - c.adam_beta2.powi(step as i32);
        let denominator = second.clone().sqrt() / bias2.sqrt() + c.adam_epsilon;
        let value = value - first.clone() / denominator * (self.lr / bias1);
        (
            value,
            Moments {
                first,
                second,
                step,
            },
        )
    }
}

impl<B: AutodiffBackend> PathMapper<B> for StepMapper<'_, B> {
    fn map_float<const D: usize>(
        &mut self,
        at: ParamPath<'_>,
        param: Param<Tensor<B, D>>,
    ) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let decay = self.optimizer.config.decays(at.path);
        let require_grad = tensor.is_require_grad();
        let previous = self.optimizer.state.remove(&id);
        let shape = tensor.shape();
        let elements = shape.num_elements();
        let (value, state) = self.update(
            tensor.inner().reshape([elements]),
            grad.reshape([elements]),
            previous,
            decay,
        );
        let value: Tensor<B::InnerBackend, D> = value.reshape(shape);
        if decay {
            self.decayed += 1;
        }
        self.optimizer.state.insert(id, state);
        self.updated += 1;
        let mut tensor = Tensor::from_inner(value);
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}
