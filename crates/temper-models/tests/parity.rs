//! Parity with Hugging Face `transformers` on tiny random-weight models: logits, a masked
//! loss and parameter gradients, for a padded batch and for a packed row whose examples must
//! not see each other. The fixtures and the script that made them are in `fixtures/`
//! (`python fixtures/make_fixtures.py` regenerates them; see fixtures/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, TensorData};
use safetensors::{Dtype, SafeTensors};
use temper_models::{CausalLm, ModelConfig, ModelInput, WeightLayout};
use temper_store::{ParamPath, PathVisitor, visit_params};

type B = Autodiff<Flex>;

const CASES: [&str; 8] = [
    "gpt2",
    "llama_gqa",
    "llama_tied_rope_llama3",
    "qwen2_bias",
    "llama_rope_linear",
    "qwen3_qk_norm_sliding",
    "mistral_sliding",
    "gemma3_sliding",
];

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

/// The expected tensors: (shape, values as f64).
fn expected(case: &str) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(fixture(case).join("expected.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
                    .collect(),
                Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

fn ints(values: &(Vec<usize>, Vec<f64>), device: &burn::tensor::Device<B>) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = values.1.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(data, [values.0[0], values.0[1]]), device)
}

fn values<const D: usize>(tensor: Tensor<B, D>) -> Vec<f64> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Largest |a - b| over positions where `keep` is true.
fn max_diff(actual: &[f64], expected: &[f64], keep: impl Fn(usize) -> bool) -> f64 {
    assert_eq!(actual.len(), expected.len());
    actual
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, (a, b))| (a - b).abs())
        .fold(0.0, f64::max)
}

/// Mean cross-entropy of `logits[b, t]` against `targets[b, t]` where the target is not -100.
fn masked_loss(
    logits: Tensor<B, 3>,
    targets: &[i64],
    device: &burn::tensor::Device<B>,
) -> Tensor<B, 1> {
    let [batch, seq_len, vocab] = logits.dims();
    let trained: Vec<f32> = targets
        .iter()
        .map(|&t| if t == -100 { 0.0 } else { 1.0 })
        .collect();
    let count: f32 = trained.iter().sum();
    let safe: Vec<i64> = targets.iter().map(|&t| t.max(0)).collect();
    let index = Tensor::<B, 3, Int>::from_data(TensorData::new(safe, [batch, seq_len, 1]), device);
    let picked = log_softmax(logits.reshape([batch, seq_len, vocab]), 2)
        .gather(2, index)
        .reshape([batch * seq_len]);
    let weight = Tensor::<B, 1>::from_data(TensorData::new(trained, [batch * seq_len]), device);
    (picked * weight).sum().neg() / count
}

/// The gradient of a parameter named as in the HF checkpoint, in HF layout: found by its
/// parameter path, transposed where the layout stores it transposed.
fn gradient(
    model: &CausalLm<B>,
    name: &str,
    grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<f64> {
    struct Find<'a> {
        name: &'a str,
        torch_linears: bool,
        grads: &'a <B as burn::tensor::backend::AutodiffBackend>::Gradients,
        found: Option<Vec<f64>>,
    }
    impl PathVisitor<B> for Find<'_> {
        fn visit_float<const D: usize>(&mut self, at: ParamPath<'_>, param: &Param<Tensor<B, D>>) {
            if at.path != self.name {
                return;
            }
            let grad = param.val().grad(self.grads);
            let grad = grad.unwrap_or_else(|| panic!("{} has no gradient", self.name));
            let grad = if D == 2 && at.owner == "Linear" && self.torch_linears {
                grad.swap_dims(0, 1)
            } else {
                grad
            };
            let values = grad.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            self.found = Some(values.into_iter().map(f64::from).collect());
        }
    }
    let mut find = Find {
        name,
        torch_linears: model.layout().linear == WeightLayout::Torch,
        grads,
        found: None,
    };
    visit_params(model, &mut find);
    find.found
        .unwrap_or_else(|| panic!("the model has no parameter {name}"))
}

fn check_gradients(
    case: &str,
    model: &CausalLm<B>,
    grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients,
    prefix: &str,
    expected: &HashMap<String, (Vec<usize>, Vec<f64>)>,
) -> usize {
    let mut checked = 0;
    for (name, (_, reference)) in expected.iter().filter(|(name, _)| name.starts_with(prefix)) {
        let actual = gradient(model, &name[prefix.len()..], grads);
        let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = max_diff(&actual, reference, |_| true);
        assert!(
            diff <= 1e-4 * scale + 1e-7,
            "{case}: gradient {name}: max diff {diff:e} (largest value {scale:e})"
        );
        checked += 1;
    }
    checked
}

/// The masked loss of `logits` against `targets` equals `{prefix}.loss`, and at least
/// `min_gradients` parameter gradients equal `{prefix}.grad.*`.
fn check_loss_and_gradients(
    case: &str,
    model: &CausalLm<B>,
    logits: Tensor<B, 3>,
    targets: &[i64],
    prefix: &str,
    expected: &HashMap<String, (Vec<usize>, Vec<f64>)>,
    min_gradients: usize,
) {
    let loss = masked_loss(logits, targets, &Default::default());
    let loss_value = values(loss.clone())[0];
    let reference = expected[&format!("{prefix}.loss")].1[0];
    assert!(
        (loss_value - reference).abs() <= 1e-5 * reference.abs(),
        "{case}: {prefix} loss {loss_value} vs {reference}"
    );
    let grads = loss.backward();
    assert!(
        check_gradients(case, model, &grads, &format!("{prefix}.grad."), expected) >= min_gradients,
        "{case}"
    );
}

#[test]
fn padded_batch_matches_transformers() {
    let device = Default::default();
    for case in CASES {
        let expected = expected(case);
        let (model, config) = CausalLm::<B>::from_hf_dir(&fixture(case), &device).unwrap();
        let input_ids = ints(&expected["padded.input_ids"], &device);
        let segment_ids = ints(&expected["padded.attention_mask"], &device);
        let [batch, seq_len] = input_ids.dims();
        let position_ids = Tensor::<B, 1, Int>::arange(0..seq_len as i64, &device)
            .unsqueeze::<2>()
            .expand([batch, seq_len]);
        let logits = model.forward(ModelInput {
            input_ids,
            position_ids,
            segment_ids,
        });
        let vocab = config.vocab_size();
        let valid = &expected["padded.valid"].1;
        let diff = max_diff(&values(logits.clone()), &expected["padded.logits"].1, |i| {
            valid[i / vocab] == 1.0
        });
        assert!(diff < 1e-4, "{case}: padded logits differ by {diff:e}");

        // HF shifts labels inside the model: position t predicts labels[t + 1].
        let labels = &expected["padded.labels"].1;
        let targets: Vec<i64> = (0..batch * seq_len)
            .map(|i| {
                if (i + 1) % seq_len == 0 {
                    -100
                } else {
                    labels[i + 1] as i64
                }
            })
            .collect();
        check_loss_and_gradients(case, &model, logits, &targets, "padded", &expected, 3);
    }
}

#[test]
fn packed_row_equals_examples_run_alone() {
    let device = Default::default();
    for case in CASES {
        let expected = expected(case);
        let (model, _) = CausalLm::<B>::from_hf_dir(&fixture(case), &device).unwrap();
        let boundaries: Vec<usize> = expected["packed.boundaries"]
            .1
            .iter()
            .map(|&b| b as usize)
            .collect();
        let seq_len = *boundaries.last().unwrap();
        let segments: Vec<u32> = (0..seq_len)
            .map(|t| {
                boundaries
                    .windows(2)
                    .position(|w| w[0] <= t && t < w[1])
                    .unwrap() as u32
                    + 1
            })
            .collect();
        let ids: Vec<u32> = expected["packed.input_ids"]
            .1
            .iter()
            .map(|&v| v as u32)
            .collect();
        let positions: Vec<u32> = expected["packed.position_ids"]
            .1
            .iter()
            .map(|&v| v as u32)
            .collect();
        let input =
            ModelInput::from_rows(1, seq_len, &ids, &positions, &segments, &device).unwrap();
        let logits = model.forward(input);
        let diff = max_diff(
            &values(logits.clone()),
            &expected["packed.logits"].1,
            |_| true,
        );
        assert!(
            diff < 1e-4,
            "{case}: packed logits differ from the examples run alone by {diff:e}"
        );

        let targets: Vec<i64> = expected["packed.shift_labels"]
            .1
            .iter()
            .map(|&v| v as i64)
            .collect();
        check_loss_and_gradients(case, &model, logits, &targets, "packed", &expected, 2);
    }
}

#[test]
fn legacy_and_transformers_5_configs_read_the_same() {
    for case in CASES.iter().filter(|case| **case != "gpt2") {
        let dir = fixture(case);
        let current = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let legacy = ModelConfig::from_file(&dir.join("config.legacy.json")).unwrap();
        assert_eq!(current, legacy, "{case}");
    }
}
