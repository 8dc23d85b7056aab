//! Operations on the LoRA slots of any burn module, found by parameter path.
//!
//! A module takes part by holding, next to a projection's `weight` (`[d_input, d_output]`,
//! burn's layout), two parameters named `lora.lora_a` (`[d_input, rank]`) and `lora.lora_b`
//! (`[rank, d_output]`) whose product, scaled, is added to the projection's output. Paths
//! are `temper-store`'s, so the slot of `CausalLm::Gpt2(..).transformer.h.0.attn.c_attn` is
//! `transformer.h.0.attn.c_attn`, its PEFT key.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::Distribution;

use temper_store::{ParamPath, PathMapper, PathVisitor};

use crate::config::LoraConfig;

/// Parameter-path suffix of the down-projection `A`.
pub const LORA_A: &str = "lora.lora_a";
/// Parameter-path suffix of the up-projection `B`.
pub const LORA_B: &str = "lora.lora_b";

/// The module path of a LoRA parameter (`x.y.lora.lora_a` -> `x.y`), if it is one.
fn slot_of(param_path: &str) -> Option<(&str, Factor)> {
    if let Some(module) = param_path.strip_suffix(LORA_A) {
        return Some((module.strip_suffix('.').unwrap_or(module), Factor::A));
    }
    if let Some(module) = param_path.strip_suffix(LORA_B) {
        return Some((module.strip_suffix('.').unwrap_or(module), Factor::B));
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Factor {
    A,
    B,
}

/// Calls `visit(path, tensor)` for every float parameter (as a 2-D view when it is one).
fn visit_params<B: Backend, M: Module<B>>(module: &M, visit: impl FnMut(&str, ParamView<B>)) {
    struct Visitor<F>(F);
    impl<B: Backend, F: FnMut(&str, ParamView<B>)> PathVisitor<B> for Visitor<F> {
        fn visit_float<const D: usize>(&mut self, at: ParamPath<'_>, param: &Param<Tensor<B, D>>) {
            let elements = param.lazy_shape().num_elements();
            let matrix = (D == 2).then(|| {
                let value = param.val();
                let dims = value.dims();
                value.reshape([dims[0], dims[1]])
            });
            (self.0)(at.path, ParamView { elements, matrix });
        }
    }
    temper_store::visit_params(module, &mut Visitor(visit));
}

struct ParamView<B: Backend> {
    elements: usize,
    matrix: Option<Tensor<B, 2>>,
}

/// Rebuilds every 2-D float parameter through `map(path, value)`; `None` keeps it as it is.
/// Whether a parameter requires a gradient is kept.
fn map_matrices<B: Backend, M: Module<B>>(
    module: M,
    map: impl FnMut(&str, Tensor<B, 2>) -> Option<Tensor<B, 2>>,
) -> M {
    struct Mapper<F>(F);
    impl<B: Backend, F: FnMut(&str, Tensor<B, 2>) -> Option<Tensor<B, 2>>> PathMapper<B> for Mapper<F> {
        fn map_float<const D: usize>(
            &mut self,
            at: ParamPath<'_>,
            param: Param<Tensor<B, D>>,
        ) -> Param<Tensor<B, D>> {
            if D != 2 {
                return param;
            }
            let (id, value, mapper) = param.consume();
            let require_grad = value.is_require_grad();
            let dims = value.dims();
            let matrix: Tensor<B, 2> = value.clone().reshape([dims[0], dims[1]]);
            let value = match (self.0)(at.path, matrix) {
                Some(new) => new
                    .detach()
                    .reshape(value.shape())
                    .set_require_grad(require_grad),
                None => value,
            };
            Param::from_mapped_value(id, value, mapper)
        }
    }
    temper_store::map_params(module, &mut Mapper(map))
}

/// `A` and `B` of every slot, by module path.
pub(crate) type Factors<B> = BTreeMap<String, (Option<Tensor<B, 2>>, Option<Tensor<B, 2>>)>;

/// The module paths that hold a LoRA slot, in visiting order.
pub fn slots<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    let mut found = Vec::new();
    visit_params(module, |path, _| {
        if let Some((slot, Factor::A)) = slot_of(path) {
            found.push(slot.to_owned());
        }
    });
    found
}

/// PEFT's initialisation of every slot: `A` Kaiming-uniform with `a = sqrt(5)` (uniform in
/// `±1/sqrt(d_input)`, as `nn.Linear` initialises its weight), `B` zero, so a fresh
/// adapter leaves the model's output unchanged. Uses the backend's seeded RNG.
pub fn init_peft<B: Backend, M: Module<B>>(module: M) -> M {
    map_matrices(module, |path, value| match slot_of(path) {
        Some((_, Factor::A)) => {
            let [d_input, rank] = value.dims();
            let bound = 1.0 / (d_input as f64).sqrt();
            Some(Tensor::random(
                [d_input, rank],
                Distribution::Uniform(-bound, bound),
                &value.device(),
            ))
        }
        Some((_, Factor::B)) => Some(value.zeros_like()),
        None => None,
    })
}

/// Freezes everything but the LoRA factors: base weights get no gradient (so the optimizer
/// never creates state for them), the factors do.
pub fn freeze_base<B: Backend, M: Module<B>>(module: M) -> M {
    struct Freezer;
    impl<B: Backend> PathMapper<B> for Freezer {
        fn map_float<const D: usize>(
            &mut self,
            at: ParamPath<'_>,
            param: Param<Tensor<B, D>>,
        ) -> Param<Tensor<B, D>> {
            param.set_require_grad(slot_of(at.path).is_some())
        }
    }
    temper_store::map_params(module, &mut Freezer)
}

/// Parameter counts, as PEFT's `print_trainable_parameters` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    /// Elements of the LoRA factors.
    pub adapter: usize,
    /// Elements of every parameter, factors included.
    pub total: usize,
}

impl std::fmt::Display for ParamCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            self.adapter,
            self.total,
            100.0 * self.adapter as f64 / self.total.max(1) as f64
        )
    }
}

pub fn count_parameters<B: Backend, M: Module<B>>(module: &M) -> ParamCount {
    let mut count = ParamCount {
        adapter: 0,
        total: 0,
    };
    visit_params(module, |path, view| {
        count.total += view.elements;
        if slot_of(path).is_some() {
            count.adapter += view.elements;
        }
    });
    count
}

/// The factors of every slot: module path -> (`A [d_input, rank]`, `B [rank, d_output]`).
pub(crate) fn factors<B: Backend, M: Module<B>>(module: &M) -> Factors<B> {
    let mut found: Factors<B> = BTreeMap::new();
    visit_params(module, |path, view| {
        if let (Some((slot, factor)), Some(matrix)) = (slot_of(path), view.matrix) {
            let entry = found.entry(slot.to_owned()).or_default();
            match factor {
                Factor::A => entry.0 = Some(matrix),
                Factor::B => entry.1 = Some(matrix),
            }
        }
    });
    found
}

/// Folds every update into its weight (`W += scaling * A B`) and zeroes `B`, so the module
/// computes the same function with the slots idle. `config` gives the scaling the slots
/// were created with.
pub fn merge<B: Backend, M: Module<B>>(module: M, config: &LoraConfig) -> M {
    let deltas = deltas(&factors(&module), config.scaling());
    map_matrices(module, |path, value| {
        if let Some((_, Factor::B)) = slot_of(path) {
            return Some(value.zeros_like());
        }
        let module_path = path.strip_suffix(".weight")?;
        deltas.get(module_path).map(|delta| value + delta.clone())
    })
}

/// Undoes [`merge`]: subtracts `scaling * A B` of `adapter` from every weight and puts the
/// adapter's factors back in the slots.
pub fn unmerge<B: Backend, M: Module<B>>(module: M, adapter: &crate::Adapter) -> crate::Result<M> {
    let module = crate::apply(module, adapter)?;
    let deltas = deltas(&factors(&module), adapter.config.scaling());
    Ok(map_matrices(module, |path, value| {
        let module_path = path.strip_suffix(".weight")?;
        deltas.get(module_path).map(|delta| value - delta.clone())
    }))
}

fn deltas<B: Backend>(factors: &Factors<B>, scaling: f64) -> BTreeMap<String, Tensor<B, 2>> {
    factors
        .iter()
        .filter_map(|(slot, (a, b))| {
            let (a, b) = (a.clone()?, b.clone()?);
            Some((slot.clone(), a.matmul(b) * scaling))
        })
        .collect()
}

/// Replaces the factors of every slot through `set(slot, factor, current) -> new`.
pub(crate) fn set_factors<B: Backend, M: Module<B>>(
    module: M,
    mut set: impl FnMut(&str, bool, Tensor<B, 2>) -> Option<Tensor<B, 2>>,
) -> M {
    map_matrices(module, |path, value| {
        let (slot, factor) = slot_of(path)?;
        set(slot, factor == Factor::A, value)
    })
}
