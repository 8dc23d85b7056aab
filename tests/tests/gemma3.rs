//! The real Gemma 3 270M base model (Q4_K_M GGUF, joined from four PyPI wheels by `cargo xtask
//! assets`) against what `transformers` computes from the same file:
//! `crates/temper-models/tests/fixtures/gemma3_reference.{py,json}`, and its K-quant tensors
//! against gguf-py (`crates/temper-models/tests/fixtures/quants/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use burn::backend::Flex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use temper_data::Tokenizer;
use temper_models::gguf::GgufFile;
use temper_models::{AttentionType, CausalLm, GenerationConfig, ModelConfig, generate};
use temper_tests::reference::{check_perplexity, ids};
use temper_tests::{asset, root};

type B = Flex;

const GGUF: &str = "gemma3/gemma-3-270m-q4_k_m.gguf";

/// What `transformers` measured (gemma3_reference.json has it to more digits).
const TRANSFORMERS_PERPLEXITY: f64 = 5.7278;

struct Gemma {
    model: CausalLm<B>,
    config: ModelConfig,
    tokenizer: Tokenizer,
}

/// Loading takes seconds; every test shares one model.
fn gemma() -> &'static Gemma {
    static GEMMA: OnceLock<Gemma> = OnceLock::new();
    GEMMA.get_or_init(|| {
        let path = asset(GGUF);
        let (model, config, file) = CausalLm::<B>::from_gguf(&path, &Default::default()).unwrap();
        let tokenizer = temper_train::gguf_tokenizer(&file).unwrap();
        Gemma {
            model,
            config,
            tokenizer,
        }
    })
}

fn reference() -> Value {
    temper_tests::reference::load("gemma3_reference.json")
}

#[test]
fn whole_k_quant_tensors_dequantize_as_gguf_py_does() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("crates/temper-models/tests/fixtures/quants/quants.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let file = GgufFile::open(&asset(GGUF)).unwrap();
    let real = fixture["real_tensors"].as_array().unwrap();
    assert_eq!(real.len(), 4, "Q4_K, Q5_0, Q6_K and Q8_0 occur in the file");
    for expected in real {
        let name = expected["tensor"].as_str().unwrap();
        let tensor = file.tensors.iter().find(|t| t.name == name).unwrap();
        assert_eq!(tensor.ggml_type.name(), expected["type"].as_str().unwrap());
        let values = file.dequantize(tensor).unwrap();
        assert_eq!(values.len() as u64, expected["elements"].as_u64().unwrap());
        let mut hash = Sha256::new();
        for value in &values {
            hash.update(value.to_le_bytes());
        }
        let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, expected["sha256"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn the_gguf_configuration_is_gemma_3_270ms() {
    let ModelConfig::Gemma3(config) = &gemma().config else {
        panic!("a Gemma 3 file reads as Gemma 3")
    };
    let decoder = &config.decoder;
    assert_eq!(
        (
            decoder.vocab_size,
            decoder.hidden_size,
            decoder.num_hidden_layers,
            decoder.num_attention_heads,
            decoder.num_key_value_heads,
            decoder.head_dim
        ),
        (262_144, 640, 18, 4, 1, 256)
    );
    assert_eq!(
        (decoder.rope_theta, config.rope_local_base_freq),
        (1_000_000.0, 10_000.0)
    );
    assert_eq!(config.query_pre_attn_scalar, 256);
    assert_eq!(decoder.sliding_window, Some(512));
    let global: Vec<usize> = (0..18)
        .filter(|&i| decoder.layer_types[i] == AttentionType::FullAttention)
        .collect();
    assert_eq!(global, [5, 11, 17], "every sixth layer is global");
    assert!(decoder.tie_word_embeddings);
}

#[test]
fn the_rebuilt_sentencepiece_tokenizer_matches_transformers() {
    let reference = reference();
    let tokenizer = &gemma().tokenizer;
    let bos = 2;
    let cases = reference["tokenization"].as_array().unwrap();
    assert!(cases.len() > 300);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let mut expected = vec![bos];
        expected.extend(ids(&case["ids"]));
        assert_eq!(tokenizer.encode(text).unwrap().0, expected, "{text:?}");
    }
}

#[test]
fn perplexity_on_botchan_matches_transformers_within_half_a_percent() {
    let reference = reference();
    let gemma = gemma();
    check_perplexity(
        &gemma.model,
        &gemma.tokenizer,
        &reference["perplexity"],
        TRANSFORMERS_PERPLEXITY,
        5e-3,
    );
}

#[test]
fn greedy_generation_continues_as_transformers_does() {
    let reference = reference();
    let expected = &reference["generation"];
    let prompt = gemma()
        .tokenizer
        .encode(expected["prompt"].as_str().unwrap())
        .unwrap()
        .0;
    assert_eq!(prompt, ids(&expected["prompt_ids"]));
    let config = GenerationConfig {
        max_new_tokens: 16,
        ..Default::default()
    };
    let generation = generate(
        &gemma().model,
        &prompt,
        &config,
        &Default::default(),
        |_| std::ops::ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(
        generation.tokens,
        ids(&expected["new_ids"]),
        "greedy tokens equal transformers' ({:?})",
        gemma().tokenizer.decode(&generation.tokens)
    );
}
