//! Checkpoint directories: round trips, strictness, dtypes, shards, bad files; and incremental
//! decoding against the full forward pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, Int, TensorData};
use safetensors::{Dtype, SafeTensors};
use temper_models::{
    CausalLm, Continuation, Error, Generation, GenerationConfig, ModelInput, RawTensor, StopReason,
    Weights, generate, generate_batch, generate_scored, token_scores,
};

type B = Flex;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("temper-models-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn logits(
    model: &CausalLm<B>,
    device: &<B as burn::tensor::backend::BackendTypes>::Device,
) -> Vec<f32> {
    let ids = Tensor::<B, 2, Int>::from_ints([[5, 17, 3, 42, 8, 1, 29]], device);
    model
        .forward(ModelInput::sequences(ids))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn keys(path: &Path) -> BTreeSet<String> {
    let bytes = std::fs::read(path).unwrap();
    SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Rewrites a checkpoint with each tensor converted by `convert` (name, values) -> optional
/// (dtype, bytes); `None` drops the tensor.
fn rewrite(from: &Path, to: &Path, convert: impl Fn(&str, &[f32]) -> Option<(Dtype, Vec<u8>)>) {
    let bytes = std::fs::read(from).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        if let Some((dtype, data)) = convert(&name, &values) {
            out.push((name, view.shape().to_vec(), dtype, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|(n, s, d, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, to).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One fixture of each architecture and variant.
const ARCHITECTURES: [&str; 7] = [
    "gpt2",
    "llama_gqa",
    "llama_tied_rope_llama3",
    "qwen2_bias",
    "mistral_sliding",
    "qwen3_qk_norm_sliding",
    "gemma3_sliding",
];

#[test]
fn a_saved_model_reloads_with_the_same_logits_and_the_same_keys() {
    let device = Default::default();
    for case in ARCHITECTURES {
        let (model, config) = CausalLm::<B>::from_hf_dir(&fixture(case), &device).unwrap();
        let dir = scratch(&format!("save-{case}"));
        model.save_hf_dir(&dir).unwrap();
        let (reloaded, reloaded_config) = CausalLm::<B>::from_hf_dir(&dir, &device).unwrap();
        assert_eq!(config, reloaded_config, "{case}");
        assert_eq!(
            logits(&model, &device),
            logits(&reloaded, &device),
            "{case}"
        );
        assert_eq!(
            keys(&dir.join("model.safetensors")),
            keys(&fixture(case).join("model.safetensors")),
            "{case}"
        );
        assert!(!dir.join("model.safetensors.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The tensors of `model` under keys renamed by `rename`, plus `extra` keys.
fn renamed_weights(
    model: &CausalLm<B>,
    rename: impl Fn(&str) -> String,
    extra: &[&str],
) -> Weights {
    let writer = model.to_weights();
    let mut tensors: std::collections::BTreeMap<String, RawTensor> = writer
        .keys()
        .map(|key| (rename(key), writer.get(key).unwrap().clone()))
        .collect();
    for key in extra {
        let buffer = RawTensor {
            shape: vec![2],
            data: vec![0.0; 2],
        };
        tensors.insert((*key).to_owned(), buffer);
    }
    Weights::new(PathBuf::from("renamed.safetensors"), tensors)
}

#[test]
fn files_without_the_optional_prefix_and_with_known_buffers_load() {
    let device = Default::default();
    // GPT2Model's files: no `transformer.` prefix; old ones carry the causal-mask buffers.
    let (gpt2, config) = CausalLm::<B>::from_hf_dir(&fixture("gpt2"), &device).unwrap();
    let mut weights = renamed_weights(
        &gpt2,
        |key| key.strip_prefix("transformer.").unwrap().to_owned(),
        &["h.0.attn.bias", "h.1.attn.masked_bias"],
    );
    let reloaded = CausalLm::<B>::from_weights(&config, &mut weights, &device).unwrap();
    weights.finish().unwrap();
    assert_eq!(logits(&gpt2, &device), logits(&reloaded, &device));

    // Llama exports that keep the rotary frequencies; an unknown key is still refused.
    let (llama, config) = CausalLm::<B>::from_hf_dir(&fixture("llama_gqa"), &device).unwrap();
    let mut weights = renamed_weights(
        &llama,
        str::to_owned,
        &["model.layers.1.self_attn.rotary_emb.inv_freq"],
    );
    let reloaded = CausalLm::<B>::from_weights(&config, &mut weights, &device).unwrap();
    weights.finish().unwrap();
    assert_eq!(logits(&llama, &device), logits(&reloaded, &device));
    let mut weights = renamed_weights(
        &llama,
        str::to_owned,
        &["model.layers.1.rotary_emb.inv_freq"],
    );
    CausalLm::<B>::from_weights(&config, &mut weights, &device).unwrap();
    let error = weights.finish().unwrap_err().to_string();
    assert!(
        error.contains("model.layers.1.rotary_emb.inv_freq"),
        "{error}"
    );
}

#[test]
fn half_precision_checkpoints_load() {
    let device = Default::default();
    let (model, _) = CausalLm::<B>::from_hf_dir(&fixture("llama_gqa"), &device).unwrap();
    let reference = logits(&model, &device);
    for (dtype, name) in [(Dtype::BF16, "bf16"), (Dtype::F16, "f16")] {
        let dir = scratch(name);
        std::fs::copy(
            fixture("llama_gqa").join("config.json"),
            dir.join("config.json"),
        )
        .unwrap();
        rewrite(
            &fixture("llama_gqa").join("model.safetensors"),
            &dir.join("model.safetensors"),
            |_, values| {
                let bytes = match dtype {
                    Dtype::BF16 => values
                        .iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                    _ => values
                        .iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                        .collect(),
                };
                Some((dtype, bytes))
            },
        );
        let (half_model, _) = CausalLm::<B>::from_hf_dir(&dir, &device).unwrap();
        let diff = logits(&half_model, &device)
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 0.05, "{name}: logits moved by {diff}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn sharded_checkpoints_load_through_their_index() {
    let device = Default::default();
    let (model, _) = CausalLm::<B>::from_hf_dir(&fixture("llama_gqa"), &device).unwrap();
    let dir = scratch("sharded");
    std::fs::copy(
        fixture("llama_gqa").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let source = fixture("llama_gqa").join("model.safetensors");
    let first = |name: &str| name.starts_with("model.layers.0.");
    rewrite(
        &source,
        &dir.join("model-00001-of-00002.safetensors"),
        |name, v| first(name).then(|| (Dtype::F32, f32_bytes(v))),
    );
    rewrite(
        &source,
        &dir.join("model-00002-of-00002.safetensors"),
        |name, v| (!first(name)).then(|| (Dtype::F32, f32_bytes(v))),
    );
    let weight_map: serde_json::Map<String, serde_json::Value> = keys(&source)
        .into_iter()
        .map(|name| {
            let shard = if first(&name) {
                "model-00001-of-00002.safetensors"
            } else {
                "model-00002-of-00002.safetensors"
            };
            (name, shard.into())
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let (sharded, _) = CausalLm::<B>::from_hf_dir(&dir, &device).unwrap();
    assert_eq!(logits(&model, &device), logits(&sharded, &device));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loading_is_strict_and_names_the_tensor() {
    let device = Default::default();
    let source = fixture("llama_gqa").join("model.safetensors");
    type Convert<'a> = &'a dyn Fn(&str, &[f32]) -> Option<(Dtype, Vec<u8>)>;
    let with = |name: &str, convert: Convert| -> String {
        let dir = scratch(name);
        std::fs::copy(
            fixture("llama_gqa").join("config.json"),
            dir.join("config.json"),
        )
        .unwrap();
        rewrite(&source, &dir.join("model.safetensors"), convert);
        let error = CausalLm::<B>::from_hf_dir(&dir, &device).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        error.to_string().replace(&dir.display().to_string(), "DIR")
    };
    let missing = with("missing", &|name, v| {
        (name != "model.norm.weight").then(|| (Dtype::F32, f32_bytes(v)))
    });
    assert_eq!(
        missing,
        "DIR/model.safetensors: missing tensor `model.norm.weight` (expected shape [48])"
    );
    // An extra tensor is an error too.
    let dir = scratch("extra");
    std::fs::copy(
        fixture("llama_gqa").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(&source).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let extra = f32_bytes(&[1.0, 2.0]);
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = file.tensors();
    views.push((
        "model.layers.0.self_attn.q_norm.weight".into(),
        safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &extra).unwrap(),
    ));
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let error = CausalLm::<B>::from_hf_dir(&dir, &device).unwrap_err();
    assert!(
        matches!(&error, Error::UnexpectedTensors { keys, .. } if keys == &["model.layers.0.self_attn.q_norm.weight"]),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_shape_names_both_shapes() {
    let device = Default::default();
    let dir = scratch("shape");
    // A config that disagrees with the checkpoint about the MLP width.
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llama_gqa").join("config.json")).unwrap(),
    )
    .unwrap();
    config["intermediate_size"] = 100.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture("llama_gqa").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let error = CausalLm::<B>::from_hf_dir(&dir, &device)
        .unwrap_err()
        .to_string();
    assert!(
        error.ends_with(
            "tensor `model.layers.0.mlp.gate_proj.weight` has shape [96, 48], expected [100, 48]"
        ),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_give_clear_errors() {
    let device = Default::default();
    let dir = scratch("bad");
    std::fs::copy(fixture("gpt2").join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(fixture("gpt2").join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let error = CausalLm::<B>::from_hf_dir(&dir, &device)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("not a valid safetensors file (truncated or corrupt?)"),
        "{error}"
    );

    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "bert", "hidden_size": 8}"#,
    )
    .unwrap();
    let error = CausalLm::<B>::from_hf_dir(&dir, &device)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unsupported architecture `bert`"), "{error}");

    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "llama", "hidden_size": "big"}"#,
    )
    .unwrap();
    let error = CausalLm::<B>::from_hf_dir(&dir, &device)
        .unwrap_err()
        .to_string();
    assert!(
        error.ends_with("config.json: `hidden_size` must be a non-negative integer, found \"big\""),
        "{error}"
    );

    std::fs::write(dir.join("config.json"), "{\"model_type\": \"gpt2\",\n").unwrap();
    let error = CausalLm::<B>::from_hf_dir(&dir, &device)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("config.json: line 2: invalid JSON"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cached_decoding_equals_the_full_forward_pass() {
    let device = Default::default();
    for case in ARCHITECTURES {
        let (model, config) = CausalLm::<B>::from_hf_dir(&fixture(case), &device).unwrap();
        let vocab = config.vocab_size();
        let full = logits(&model, &device);
        let ids = [5, 17, 3, 42, 8, 1, 29];
        let mut cache = model.new_cache();
        // A prompt of 3, then one token at a time.
        let mut cached = model
            .forward_cached(
                Tensor::<B, 2, Int>::from_ints([[ids[0], ids[1], ids[2]]], &device),
                &mut cache,
            )
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for &id in &ids[3..] {
            cached.extend(
                model
                    .forward_cached(Tensor::<B, 2, Int>::from_ints([[id]], &device), &mut cache)
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
        assert_eq!(cached.len(), ids.len() * vocab);
        let diff = cached
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{case}: cached decoding differs by {diff}");
    }
}

/// A model with f16 linear weights: decoding one token at a time (the 16-bit kernel) gives
/// the logits of a forward pass over 40 tokens (the weights widened to f32 for the product),
/// and both stay near the f32 model's.
#[test]
fn f16_weights_decode_as_their_f32_values_and_near_the_f32_model() {
    let device = Default::default();
    let ids: Vec<i64> = (0..40).map(|i| (i * 37 + 5) % 64).collect();
    let forward = |model: &CausalLm<B>| -> Vec<f32> {
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, 40]), &device);
        model
            .forward(ModelInput::sequences(input))
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let largest_difference = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    for case in ARCHITECTURES {
        let (model, _) = CausalLm::<B>::from_hf_dir(&fixture(case), &device).unwrap();
        let exact = forward(&model);
        let model = model.with_f16_weights().map_linears(&mut |path, linear| {
            assert_eq!(linear.weight.val().dtype(), DType::F16, "{case}: {path}");
            linear
        });
        let full = forward(&model);
        let mut cache = model.new_cache();
        let mut cached = Vec::new();
        for &id in &ids {
            let input = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![id], [1, 1]), &device);
            cached.extend(
                model
                    .forward_cached(input, &mut cache)
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
        let diff = largest_difference(&cached, &full);
        assert!(
            diff < 1e-4,
            "{case}: the kernel and the widened weights differ by {diff}"
        );
        let scale = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = largest_difference(&full, &exact);
        assert!(
            diff < 1e-2 * (1.0 + scale),
            "{case}: f16 weights moved logits by {diff}"
        );
    }
}

/// Prompts of different lengths generated in one left-padded batch give, token for token,
/// what each gives alone; rows that stop early (a stop token) leave the batch, and the
/// others go on unchanged. Sequences pass the sliding-window fixtures' window.
#[test]
fn a_batch_generates_what_each_prompt_generates_alone() {
    let device = Default::default();
    let prompts: [&[u32]; 4] = [&[5, 17, 3], &[42], &[8, 1, 29, 30, 31, 2, 9], &[11, 12]];
    for case in ARCHITECTURES {
        let (model, _) = CausalLm::<B>::from_hf_dir(&fixture(case), &device).unwrap();
        let mut config = GenerationConfig {
            max_new_tokens: 10,
            ..Default::default()
        };
        let alone = |config: &GenerationConfig| -> Vec<Generation> {
            prompts
                .iter()
                .map(|p| {
                    generate(&model, p, config, &device, |_| ControlFlow::Continue(())).unwrap()
                })
                .collect()
        };
        let expected = alone(&config);
        let batch = generate_batch(&model, &prompts, &config, &device, |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(batch, expected, "{case}: greedy");
        // A token the first row produces stops it early; the others are unaffected.
        config.stop_token_ids = vec![expected[0].tokens[2]];
        let expected = alone(&config);
        assert_eq!(expected[0].stop_reason, StopReason::StopToken);
        let batch = generate_batch(&model, &prompts, &config, &device, |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(batch, expected, "{case}: with a stop token");
        // Sampled rows are seeded by row: row r as a prompt alone with seed + r.
        config.temperature = 0.8;
        config.stop_token_ids.clear();
        let batch = generate_batch(&model, &prompts, &config, &device, |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
        for (row, prompt) in prompts.iter().enumerate() {
            let seeded = GenerationConfig {
                seed: config.seed + row as u64,
                ..config.clone()
            };
            let one = generate(&model, prompt, &seeded, &device, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(batch[row], one, "{case}: sampled row {row}");
        }
    }
}

#[test]
fn continuations_scored_in_the_prompts_pass_equal_a_pass_of_their_own() {
    let device = Default::default();
    let prompts: [&[u32]; 3] = [&[5, 17, 3], &[42], &[8, 1, 29, 30, 31, 2, 9]];
    let tokens: [&[u32]; 3] = [&[7, 7, 40], &[], &[3, 14, 15, 9, 26]];
    let scored: [&[bool]; 3] = [&[true, false, true], &[], &[true; 5]];
    for case in ARCHITECTURES {
        let (model, _) = CausalLm::<B>::from_hf_dir(&fixture(case), &device).unwrap();
        let config = GenerationConfig {
            max_new_tokens: 6,
            ..Default::default()
        };
        let continuations: Vec<Continuation> = tokens
            .iter()
            .zip(scored)
            .map(|(tokens, scored)| Continuation { tokens, scored })
            .collect();
        let (generations, scores) = generate_scored(
            &model,
            &prompts,
            &continuations,
            &config,
            &device,
            |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
        // The continuations are cut from the cache: generation is as without them.
        let plain = generate_batch(&model, &prompts, &config, &device, |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(generations, plain, "{case}");
        for (row, prompt) in prompts.iter().enumerate() {
            let whole: Vec<u32> = prompt.iter().chain(tokens[row]).copied().collect();
            let (mut nll, mut correct) = (0.0, 0);
            if whole.len() > 1 {
                let alone = token_scores(&model, &whole, &device).unwrap();
                for (j, &counted) in scored[row].iter().enumerate() {
                    if counted {
                        let score = alone[prompt.len() - 1 + j];
                        nll -= score.logprob;
                        correct += usize::from(score.top);
                    }
                }
            }
            assert!(
                (scores[row].nll - nll).abs() < 1e-4,
                "{case} row {row}: {} vs {nll}",
                scores[row].nll
            );
            assert_eq!(scores[row].correct, correct, "{case} row {row}");
        }
    }
}
