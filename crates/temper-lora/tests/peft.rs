//! Adapters against PEFT: `tests/fixtures/make_peft_fixtures.py` (peft 0.21.2) saved a GPT-2
//! adapter (`c_attn`, `c_proj`, fan_in_fan_out) and a Llama adapter (`all-linear`, rsLoRA)
//! for the tiny models of temper-models' fixtures, with logits with and without the adapter
//! and after `merge_and_unload`. Regenerate with that script.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Int;
use safetensors::SafeTensors;
use temper_lora::{Adapter, LoraConfig, TargetModules};
use temper_models::{CausalLm, LowRank, ModelInput};

type B = Flex;
type A = Autodiff<Flex>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn base_dir(case: &str) -> PathBuf {
    let name = match case {
        "llama" => "llama_gqa",
        "qwen3" => "qwen3_qk_norm_sliding",
        "gemma3" => "gemma3_sliding",
        other => other,
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../temper-models/tests/fixtures")
        .join(name)
}

struct Expected {
    input_ids: Vec<i64>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Expected {
    fn load(case: &str) -> Self {
        let bytes = std::fs::read(fixtures().join(case).join("expected.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = Vec::new();
        let mut input_ids = Vec::new();
        for (name, view) in file.tensors() {
            if name == "input_ids" {
                input_ids = view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect();
            } else {
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                tensors.push((name, view.shape().to_vec(), values));
            }
        }
        Expected { input_ids, tensors }
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.tensors.iter().find(|(n, _, _)| n == name).unwrap().2
    }
}

/// Attaches zero slots of `config`'s rank to the layers it targets (what the trainer does).
fn attach<Bk: Backend>(model: CausalLm<Bk>, config: &LoraConfig) -> CausalLm<Bk> {
    let targets = config.targets().unwrap();
    let device = Default::default();
    model.map_linears(&mut |path, mut linear| {
        if targets.matches(path) {
            let [d_input, d_output] = linear.dims();
            linear.lora = Some(LowRank::zeros(
                d_input,
                d_output,
                config.rank,
                config.scaling(),
                config.dropout,
                &device,
            ));
        }
        linear
    })
}

fn logits<Bk: Backend>(model: &CausalLm<Bk>, ids: &[i64]) -> Vec<f32> {
    let device = Default::default();
    let ids = Tensor::<Bk, 2, Int>::from_data(TensorData::new(ids.to_vec(), [2, 12]), &device);
    model
        .forward(ModelInput::sequences(ids))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn peft_model(case: &str) -> (CausalLm<B>, Adapter) {
    let (base, _) = CausalLm::<B>::from_hf_dir(&base_dir(case), &Default::default()).unwrap();
    let adapter = Adapter::load_peft(&fixtures().join(case).join("adapter")).unwrap();
    let model = temper_lora::apply(attach(base, &adapter.config), &adapter).unwrap();
    (model, adapter)
}

fn check_peft_adapter(case: &str, merged_keys: &[&str]) {
    let expected = Expected::load(case);
    let (model, adapter) = peft_model(case);
    let ids = &expected.input_ids;
    assert!(max_difference(&logits(&model, ids), expected.get("logits_lora")) < 1e-4);

    // Merging folds the update into the weights and gives the same function.
    let merged = temper_lora::merge(model, &adapter.config);
    assert!(max_difference(&logits(&merged, ids), expected.get("logits_merged")) < 1e-4);
    let writer = merged.to_weights();
    for key in merged_keys {
        let ours = &writer.get(key).unwrap().data;
        let theirs = expected.get(&format!("merged.{key}"));
        assert!(max_difference(ours, theirs) < 1e-5, "{key}");
    }

    // Unmerging gives back the base weights and the adapter.
    let unmerged = temper_lora::unmerge(merged, &adapter).unwrap();
    assert!(max_difference(&logits(&unmerged, ids), expected.get("logits_lora")) < 1e-4);
    let (base, _) = CausalLm::<B>::from_hf_dir(&base_dir(case), &Default::default()).unwrap();
    let (base_weights, unmerged_weights) = (base.to_weights(), unmerged.to_weights());
    for key in merged_keys {
        let restored = &unmerged_weights.get(key).unwrap().data;
        assert!(max_difference(restored, &base_weights.get(key).unwrap().data) < 1e-6);
    }
    assert_eq!(
        temper_lora::extract(&unmerged, &adapter.config).modules,
        adapter.modules
    );
}

#[test]
fn a_peft_gpt2_adapter_on_fused_c_attn_gives_peft_logits() {
    check_peft_adapter(
        "gpt2",
        &[
            "transformer.h.0.attn.c_attn.weight",
            "transformer.h.0.attn.c_proj.weight",
            "transformer.h.0.mlp.c_proj.weight",
        ],
    );
}

#[test]
fn a_peft_llama_all_linear_rslora_adapter_gives_peft_logits() {
    check_peft_adapter(
        "llama",
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
        ],
    );
}

#[test]
fn a_peft_qwen3_all_linear_adapter_gives_peft_logits() {
    check_peft_adapter(
        "qwen3",
        &[
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
        ],
    );
}

#[test]
fn a_peft_gemma3_adapter_on_named_modules_gives_peft_logits() {
    check_peft_adapter(
        "gemma3",
        &[
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
        ],
    );
}

#[test]
fn a_saved_adapter_has_peft_keys_shapes_and_values() {
    for case in ["gpt2", "llama", "qwen3", "gemma3"] {
        let (model, adapter) = peft_model(case);
        let mut saved = temper_lora::extract(&model, &adapter.config);
        saved.fan_in_fan_out = adapter.fan_in_fan_out;
        let dir =
            std::env::temp_dir().join(format!("temper-lora-save-{case}-{}", std::process::id()));
        saved.save_peft(&dir, "base").unwrap();

        let ours = std::fs::read(dir.join(temper_lora::WEIGHTS_FILE)).unwrap();
        let theirs = std::fs::read(
            fixtures()
                .join(case)
                .join("adapter")
                .join(temper_lora::WEIGHTS_FILE),
        )
        .unwrap();
        let (ours, theirs) = (
            SafeTensors::deserialize(&ours).unwrap(),
            SafeTensors::deserialize(&theirs).unwrap(),
        );
        let mut our_keys = ours.names();
        let mut their_keys = theirs.names();
        our_keys.sort();
        their_keys.sort();
        assert_eq!(our_keys, their_keys);
        for key in our_keys {
            let (a, b) = (ours.tensor(key).unwrap(), theirs.tensor(key).unwrap());
            assert_eq!(a.shape(), b.shape(), "{key}");
            assert_eq!(a.dtype(), b.dtype(), "{key}");
            assert_eq!(a.data(), b.data(), "{key}");
        }
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(temper_lora::CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!(config["r"], adapter.config.rank, "{case}");
        assert_eq!(config["fan_in_fan_out"], case == "gpt2");
        assert_eq!(Adapter::load_peft(&dir).unwrap(), saved);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_fresh_adapter_changes_nothing_and_only_it_trains() {
    let device = Default::default();
    let config = LoraConfig {
        rank: 2,
        alpha: 4.0,
        target_modules: TargetModules::Names(vec!["c_attn".into()]),
        ..LoraConfig::default()
    };
    let (base, _) = CausalLm::<A>::from_hf_dir(&base_dir("gpt2"), &device).unwrap();
    let ids: Vec<i64> = (0..24).map(|i| (i * 7 % 97) as i64).collect();
    let before = logits(&base.clone().valid(), &ids);
    <A as Backend>::seed(&device, 3);
    let model = temper_lora::freeze_base(temper_lora::init_peft(attach(base, &config)));
    assert_eq!(
        max_difference(&logits(&model.clone().valid(), &ids), &before),
        0.0
    );
    let count = temper_lora::count_parameters(&model);
    assert_eq!(count.adapter, 2 * (2 * 32 + 2 * 96));
    assert_eq!(count.total, 30624 + count.adapter);

    // A's entries lie in PEFT's Kaiming-uniform bound, B starts at zero.
    let fresh = temper_lora::extract(&model, &config);
    for weights in fresh.modules.values() {
        let bound = 1.0 / (weights.d_input as f32).sqrt();
        assert!(weights.lora_a.iter().all(|v| v.abs() <= bound));
        assert!(weights.lora_a.iter().any(|v| *v != 0.0));
        assert!(weights.lora_b.iter().all(|v| *v == 0.0));
    }

    // One optimizer step moves only the adapter (the base is bit-identical).
    let base_weights = |m: &CausalLm<A>| {
        let weights = m.clone().valid().to_weights();
        weights
            .get("transformer.h.0.attn.c_attn.weight")
            .unwrap()
            .data
            .clone()
    };
    let before_weights = base_weights(&model);
    let ids_tensor = Tensor::<A, 2, Int>::from_data(TensorData::new(ids.clone(), [2, 12]), &device);
    let loss = model
        .forward(ModelInput::sequences(ids_tensor))
        .square()
        .mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut optimizer = temper_optim::AdamW::new(temper_optim::AdamWConfig::default());
    let (model, report) = optimizer.step(1e-2, model, grads, None);
    assert_eq!(report.updated, 4, "A and B of two layers");
    assert_eq!(base_weights(&model), before_weights);
    assert_ne!(temper_lora::extract(&model, &config), fresh);
}

#[test]
fn mismatched_adapters_are_refused_with_the_key() {
    let (base, _) = CausalLm::<B>::from_hf_dir(&base_dir("gpt2"), &Default::default()).unwrap();
    let mut adapter = Adapter::load_peft(&fixtures().join("gpt2").join("adapter")).unwrap();
    let model = attach(base, &adapter.config);

    let mut wrong_rank = adapter.clone();
    wrong_rank.config.rank = 2;
    let error =
        temper_lora::apply(attach(model.clone(), &wrong_rank.config), &adapter).unwrap_err();
    assert_eq!(
        error.to_string(),
        "adapter tensor base_model.model.transformer.h.0.attn.c_attn.lora_A.weight: expected \
         shape [2, 32], found [4, 32]"
    );

    adapter.modules.remove("transformer.h.1.mlp.c_proj");
    let error = temper_lora::apply(model, &adapter).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the model has a LoRA slot at transformer.h.1.mlp.c_proj but the adapter has no tensors \
         for it"
    );
}

#[test]
fn unsupported_peft_configs_are_refused_with_the_file() {
    let dir = std::env::temp_dir().join(format!("temper-lora-dora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(temper_lora::CONFIG_FILE),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": true}"#,
    )
    .unwrap();
    let error = Adapter::load_peft(&dir).unwrap_err().to_string();
    assert!(
        error.ends_with("adapter_config.json: use_dora: DoRA adapters are not supported"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
