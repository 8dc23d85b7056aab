//! Attaching LoRA slots to a model's linear layers (the one place that knows both the model
//! and the adapter configuration).

use burn::prelude::*;
use temper_lora::{Adapter, LoraConfig};
use temper_models::{CausalLm, LowRank, WeightLayout};

use crate::error::Result;

/// Gives every linear layer that `config` targets a zero LoRA slot of its rank; errors when
/// no layer matches, naming a few layer paths. Follow with [`temper_lora::init_peft`] (or
/// [`temper_lora::apply`]) and [`temper_lora::freeze_base`].
pub fn attach_lora<B: Backend>(
    model: CausalLm<B>,
    config: &LoraConfig,
    device: &B::Device,
) -> Result<CausalLm<B>> {
    let targets = config.targets()?;
    let mut attached = 0;
    let mut seen = Vec::new();
    let model = model.map_linears(&mut |path, mut linear| {
        if targets.matches(path) {
            let [d_input, d_output] = linear.dims();
            linear.lora = Some(LowRank::zeros(
                d_input,
                d_output,
                config.rank,
                config.scaling(),
                config.dropout,
                device,
            ));
            attached += 1;
        } else if seen.len() < 3 {
            seen.push(path.to_owned());
        }
        linear
    });
    if attached == 0 {
        return Err(temper_lora::Error::NoTargets {
            targets: config.target_modules.to_string(),
            example: seen.join(", "),
        }
        .into());
    }
    Ok(model)
}

/// Whether `model` carries any LoRA slot.
pub fn has_adapters<B: Backend>(model: &CausalLm<B>) -> bool {
    !temper_lora::slots(model).is_empty()
}

/// The adapter in `model`'s LoRA slots, in PEFT's terms: `fan_in_fan_out` is set when the
/// architecture stores its projections as `Conv1D` (`[in, out]`, GPT-2), as PEFT sets it.
/// Every PEFT file temper writes comes from here.
pub fn extract_adapter<B: Backend>(model: &CausalLm<B>, config: &LoraConfig) -> Adapter {
    let mut adapter = temper_lora::extract(model, config);
    adapter.fan_in_fan_out = model.layout().linear == WeightLayout::Conv1d;
    adapter
}

/// `model` with the PEFT adapter of `dir` (`adapter_config.json`, `adapter_model.safetensors`)
/// merged into its weights, in memory: nothing is written. An adapter that does not fit the
/// model is an error naming the key and the shapes.
pub fn apply_peft_adapter<B: Backend>(
    model: CausalLm<B>,
    dir: &std::path::Path,
    device: &B::Device,
) -> Result<CausalLm<B>> {
    let adapter = Adapter::load_peft(dir)?;
    let model = temper_lora::apply(attach_lora(model, &adapter.config, device)?, &adapter)?;
    Ok(merged_for_inference(model, &adapter.config))
}

/// `model` with the updates of its LoRA slots (made with `config`) folded into its weights
/// and the slots removed: the same function, without the slots' idle products.
pub fn merged_for_inference<B: Backend>(model: CausalLm<B>, config: &LoraConfig) -> CausalLm<B> {
    temper_lora::merge(model, config).map_linears(&mut |_, mut linear| {
        linear.lora = None;
        linear
    })
}
