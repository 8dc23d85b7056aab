//! A PEFT adapter applied in memory (`--adapter` of `temper generate`, `score` and `eval`):
//! the merged model gives the logits of the model with the adapter's slots active, and PEFT's
//! merged logits (`crates/temper-lora/tests/fixtures/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::TensorData;
use temper_lora::Adapter;
use temper_models::{CausalLm, ModelInput};
use temper_tests::root;

type B = Flex;

/// (PEFT fixture, base model fixture)
const CASES: [(&str, &str); 4] = [
    ("gpt2", "gpt2"),
    ("llama", "llama_gqa"),
    ("qwen3", "qwen3_qk_norm_sliding"),
    ("gemma3", "gemma3_sliding"),
];

fn peft_dir(case: &str) -> PathBuf {
    root().join("crates/temper-lora/tests/fixtures").join(case)
}

fn base(name: &str) -> CausalLm<B> {
    let dir = root()
        .join("crates/temper-models/tests/fixtures")
        .join(name);
    CausalLm::<B>::from_hf_dir(&dir, &Default::default())
        .unwrap()
        .0
}

/// `input_ids` and `logits_merged` of the fixture's `expected.safetensors`.
fn expected(case: &str) -> (Vec<i64>, Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(peft_dir(case).join("expected.safetensors")).unwrap();
    let file = temper_store::parse_safetensors(&bytes).unwrap();
    let ids = file.tensor("input_ids").unwrap();
    let shape = ids.shape().to_vec();
    let ids = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let merged = file.tensor("logits_merged").unwrap();
    let merged = temper_store::decode_f32(merged.dtype(), merged.data()).unwrap();
    (ids, shape, merged)
}

fn logits(model: &CausalLm<B>, ids: &[i64], shape: &[usize]) -> Vec<f32> {
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.to_vec(), [shape[0], shape[1]]),
        &Default::default(),
    );
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

#[test]
fn an_adapter_applied_in_memory_equals_the_model_with_its_slots_and_peft_merged() {
    let device = Default::default();
    for (case, base_name) in CASES {
        let dir = peft_dir(case).join("adapter");
        let (ids, shape, peft_merged) = expected(case);
        let applied = temper_train::apply_peft_adapter(base(base_name), &dir, &device).unwrap();
        assert!(
            !temper_train::has_adapters(&applied),
            "{case}: merged, no slot is left"
        );
        let adapter = Adapter::load_peft(&dir).unwrap();
        let slotted = temper_lora::apply(
            temper_train::attach_lora(base(base_name), &adapter.config, &device).unwrap(),
            &adapter,
        )
        .unwrap();
        let ours = logits(&applied, &ids, &shape);
        let difference = max_difference(&ours, &logits(&slotted, &ids, &shape));
        assert!(difference < 1e-5, "{case}: {difference} against the slots");
        let difference = max_difference(&ours, &peft_merged);
        assert!(difference < 1e-4, "{case}: {difference} against PEFT");
    }
}

#[test]
fn an_adapter_for_another_model_is_refused_with_the_key_and_shapes() {
    // The Llama fixture's adapter on the Qwen3 fixture: same module names, other widths.
    let error = temper_train::apply_peft_adapter(
        base("qwen3_qk_norm_sliding"),
        &peft_dir("llama").join("adapter"),
        &Default::default(),
    )
    .expect_err("refused")
    .to_string();
    assert!(error.contains("base_model.model."), "{error}");
    assert!(
        error.contains("shape") || error.contains("expected"),
        "{error}"
    );
}
