//! Checks of a real model against the numbers transformers measured on the same weights
//! (`crates/temper-models/tests/fixtures/*_reference.json`).

use burn::backend::Flex;
use serde_json::Value;
use temper_data::Tokenizer;
use temper_models::{CausalLm, token_logprobs};

/// The reference file `name` (e.g. `gemma3_reference.json`).
pub fn load(name: &str) -> Value {
    let path = crate::root()
        .join("crates/temper-models/tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// A JSON array of token ids.
pub fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

/// The perplexity of the first 256 tokens of the first 2000 characters of botchan.txt is
/// within 0.5% of `perplexity["ppl"]` (which must be `stated`, the number the test names),
/// and no token's log-probability differs by more than `per_token`.
pub fn check_perplexity(
    model: &CausalLm<Flex>,
    tokenizer: &Tokenizer,
    perplexity: &Value,
    stated: f64,
    per_token: f64,
) {
    let text: String = std::fs::read_to_string(crate::asset("text/botchan.txt"))
        .expect("botchan.txt")
        .chars()
        .take(2000)
        .collect();
    let mut tokens = tokenizer.encode(&text).expect("botchan encodes").0;
    tokens.truncate(256);
    assert_eq!(
        tokens,
        ids(&perplexity["ids"]),
        "the 256-token slice tokenizes as in the reference"
    );
    let logprobs = token_logprobs(model, &tokens, &Default::default()).expect("scores");
    let nll = -logprobs.iter().sum::<f64>() / logprobs.len() as f64;
    let expected = perplexity["ppl"].as_f64().expect("ppl");
    assert!(
        (expected - stated).abs() < 1e-4,
        "the reference file says {expected}"
    );
    let ppl = nll.exp();
    assert!(
        (ppl - expected).abs() / expected < 0.005,
        "perplexity {ppl} vs transformers {expected}"
    );
    let worst = logprobs
        .iter()
        .zip(perplexity["token_logprobs"].as_array().expect("logprobs"))
        .map(|(a, b)| (a - b.as_f64().unwrap_or(f64::NAN)).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < per_token,
        "a token log-probability differs by {worst}"
    );
}
