//! A GGUF with a SentencePiece vocabulary (`tokenizer.ggml.model = llama`: pieces, scores and
//! token types, no merges), as llama.cpp writes Llama 2 and Mistral files. `cargo xtask assets`
//! writes one from Mistral-7B's `tokenizer.json`; the tokenizer temper rebuilds from it is
//! compared with the model's own `tokenizer.json` and with the one transformers builds from the
//! same file: `crates/temper-models/tests/fixtures/sentencepiece_reference.{py,json}`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use temper_data::Tokenizer;
use temper_models::gguf::GgufFile;
use temper_tests::asset;
use temper_tests::reference::{ids, load};

fn rebuilt() -> Tokenizer {
    let file = GgufFile::open(&asset("mistral/tokenizer.gguf")).unwrap();
    temper_train::gguf_tokenizer(&file).unwrap()
}

/// Merges rebuilt from the scores, the space prefix, byte fallback and BOS: the tokenizer
/// rebuilt from the GGUF gives the ids of the model's own `tokenizer.json` on every text.
#[test]
fn the_rebuilt_sentencepiece_tokenizer_matches_the_models_own() {
    let reference = load("sentencepiece_reference.json");
    let tokenizer = rebuilt();
    let own = Tokenizer::from_file(&asset("mistral/tokenizer.json"), &Default::default()).unwrap();
    let cases = reference["tokenization"].as_array().unwrap();
    assert!(cases.len() > 300);
    let bos = tokenizer.bos.as_ref().unwrap().id;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        // BOS, once: a text that starts with `<s>` keeps one (`Tokenizer::encode`).
        let mut expected = ids(&case["ids"]);
        if expected.first() != Some(&bos) {
            expected.insert(0, bos);
        }
        assert_eq!(
            own.encode(text).unwrap().0,
            expected,
            "tokenizers: {text:?}"
        );
        assert_eq!(tokenizer.encode(text).unwrap().0, expected, "{text:?}");
    }
    assert_eq!(
        tokenizer.encode("Hello world").unwrap().0,
        ids(&reference["hello_world_with_special_tokens"]),
        "BOS is added, as the file's add_bos_token says"
    );
    assert_eq!(
        tokenizer.decode(&ids(&cases[0]["ids"])),
        reference["decoded"].as_str().unwrap(),
        "the prefixed space is stripped again when decoding"
    );
}

/// transformers' GGUF loader builds the same merges, but prefixes a space only at the start
/// of a text that does not start with one (Metaspace, prepend "first"), where the model's own
/// tokenizer and llama.cpp prefix every stretch of text, also after a special token. Both
/// tokenizers agree everywhere else.
#[test]
fn transformers_differs_only_in_the_space_prefix() {
    let reference = load("sentencepiece_reference.json");
    let mut differ = 0;
    for case in reference["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let text_after_special = ["<s>", "</s>"]
            .iter()
            .any(|s| text.split(s).skip(1).any(|after| !after.is_empty()));
        if text.starts_with(' ') || text_after_special {
            differ += 1;
            assert_ne!(case["ids"], case["transformers_ids"], "{text:?}");
        } else {
            assert_eq!(case["ids"], case["transformers_ids"], "{text:?}");
        }
    }
    assert!(differ >= 2);
}
