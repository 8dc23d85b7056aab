//! Text generation with a key/value cache, and scoring (per-token log-probabilities).

use std::ops::ControlFlow;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, TensorData};

use crate::error::{Error, Result};
use crate::fused::{CrossEntropySums, grouped_cross_entropy};
use crate::model::{CausalLm, ModelInput};

/// How to pick each new token.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the smallest set of tokens whose probability reaches `p`.
    pub top_p: Option<f64>,
    /// Seed of the sampler (same seed, same output).
    pub seed: u64,
    /// Tokens that end generation (EOS, end-of-turn); they are not returned.
    pub stop_token_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop_token_ids: Vec::new(),
        }
    }
}

impl GenerationConfig {
    /// Checks the sampling settings: a temperature that is a number and not negative, `top_k`
    /// at least 1, `top_p` in `(0, 1]`.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, reason: String| Err(Error::Generation { key, reason });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!(
                    "is {}; it must be 0 (greedy) or a positive number",
                    self.temperature
                ),
            );
        }
        if self.top_k == Some(0) {
            return bad("top_k", "is 0; it must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad("top_p", format!("is {p}; it must be in (0, 1]"));
        }
        Ok(())
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// `max_new_tokens` were produced.
    MaxTokens,
    /// The caller asked to stop (a stop string, say).
    Caller,
    /// The model's context is full.
    ContextFull,
}

/// The new tokens and why they ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
}

/// Generates after `prompt`, calling `on_token` with each new token as it is produced (to
/// stream it, or to stop on a stop string by returning `Break`).
pub fn generate<B: Backend>(
    model: &CausalLm<B>,
    prompt: &[u32],
    config: &GenerationConfig,
    device: &B::Device,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    let mut generations =
        generate_batch(model, &[prompt], config, device, |_, token| on_token(token))?;
    Ok(generations.remove(0))
}

/// Generates after each of `prompts` at once, with one key/value cache: prompts of different
/// lengths are left-padded (padding is neither attended to nor counted as positions), and a
/// row that finishes leaves the batch, so it stops costing compute. Row `r` samples with seed
/// `config.seed + r`; greedy rows give what [`generate`] gives for the prompt alone.
/// `on_token(row, token)` sees each new token; `Break` ends that row.
pub fn generate_batch<B: Backend>(
    model: &CausalLm<B>,
    prompts: &[&[u32]],
    config: &GenerationConfig,
    device: &B::Device,
    on_token: impl FnMut(usize, u32) -> ControlFlow<()>,
) -> Result<Vec<Generation>> {
    let none = vec![Continuation::default(); prompts.len()];
    Ok(generate_scored(model, prompts, &none, config, device, on_token)?.0)
}

/// Tokens that follow a prompt, scored in the prompt's own forward pass (an evaluator's
/// reference answer), and which of them count.
#[derive(Debug, Clone, Copy, Default)]
pub struct Continuation<'a> {
    pub tokens: &'a [u32],
    /// One per token: whether it is scored.
    pub scored: &'a [bool],
}

/// [`generate_batch`], and the loss of each row's `continuation` after its prompt, from the
/// same forward pass over the prompts: the continuations follow the prompts in that pass
/// (their positions come after every prompt token, so the prompts' keys and values do not
/// change), and are then cut from the cache.
pub fn generate_scored<B: Backend>(
    model: &CausalLm<B>,
    prompts: &[&[u32]],
    continuations: &[Continuation],
    config: &GenerationConfig,
    device: &B::Device,
    mut on_token: impl FnMut(usize, u32) -> ControlFlow<()>,
) -> Result<(Vec<Generation>, Vec<CrossEntropySums>)> {
    config.validate()?;
    let limit = model.max_positions();
    assert_eq!(
        prompts.len(),
        continuations.len(),
        "one continuation per prompt"
    );
    for (prompt, continuation) in prompts.iter().zip(continuations) {
        if prompt.is_empty() {
            return Err(Error::TooFewTokens {
                what: "the prompt",
                needed: 1,
                got: 0,
            });
        }
        if prompt.len() + continuation.tokens.len().max(1) > limit {
            return Err(Error::TooManyTokens {
                what: "the prompt",
                got: prompt.len() + continuation.tokens.len(),
                limit: limit - 1,
            });
        }
        assert_eq!(continuation.tokens.len(), continuation.scored.len());
    }
    let rows = prompts.len();
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut stop_reasons = vec![StopReason::MaxTokens; rows];
    let scoring = continuations.iter().any(|c| c.scored.contains(&true));
    if rows == 0 || (config.max_new_tokens == 0 && !scoring) {
        return Ok((
            generations(tokens, stop_reasons),
            vec![Default::default(); rows],
        ));
    }
    // The prompts left-padded to end at the same column, each followed by its continuation.
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let following = continuations
        .iter()
        .map(|c| c.tokens.len())
        .max()
        .unwrap_or(0);
    let width = longest + following;
    let mut pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let input: Vec<i64> = prompts
        .iter()
        .zip(continuations)
        .flat_map(|(p, c)| {
            let padded = std::iter::repeat_n(0, longest - p.len()).chain(p.iter().copied());
            let after = c.tokens.iter().copied().chain(std::iter::repeat(0));
            padded.chain(after.take(following)).map(i64::from)
        })
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [rows, width]), device);
    let mut cache = model.new_cache();
    let hidden = model.hidden_cached_rows(ids, &pads, &mut cache);
    let d_model = hidden.dims()[2];
    let scores = continuation_scores(model, &hidden, continuations, longest);
    cache.truncate(longest);
    let last = hidden.slice([0..rows, longest - 1..longest, 0..d_model]);
    let mut logits = model.logits_2d(last.reshape([rows, d_model]));
    if config.max_new_tokens == 0 {
        return Ok((generations(tokens, stop_reasons), scores));
    }
    let mut samplers: Vec<Sampler> = (0..rows)
        .map(|row| {
            Sampler::new(&GenerationConfig {
                seed: config.seed.wrapping_add(row as u64),
                ..config.clone()
            })
        })
        .collect();
    // The rows still generating (indexes into `prompts`) and their padding.
    let mut active: Vec<usize> = (0..rows).collect();
    loop {
        let vocab = logits.dims()[1];
        let last: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let mut kept = Vec::with_capacity(active.len());
        let mut input = Vec::with_capacity(active.len());
        for (slot, &row) in active.iter().enumerate() {
            let token = samplers[row].pick(&last[slot * vocab..(slot + 1) * vocab]);
            let reason = if config.stop_token_ids.contains(&token) {
                Some(StopReason::StopToken)
            } else {
                tokens[row].push(token);
                if on_token(row, token).is_break() {
                    Some(StopReason::Caller)
                } else if tokens[row].len() == config.max_new_tokens {
                    Some(StopReason::MaxTokens)
                } else if (cache.len + 1).saturating_sub(pads[slot]) > limit {
                    Some(StopReason::ContextFull)
                } else {
                    None
                }
            };
            match reason {
                Some(reason) => stop_reasons[row] = reason,
                None => {
                    kept.push(slot);
                    input.push(i64::from(token));
                }
            }
        }
        if kept.is_empty() {
            break;
        }
        if kept.len() < active.len() {
            active = kept.iter().map(|&slot| active[slot]).collect();
            pads = kept.iter().map(|&slot| pads[slot]).collect();
            cache.keep_rows(&kept);
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [active.len(), 1]), device);
        logits = model.next_token_logits(ids, &pads, &mut cache);
    }
    Ok((generations(tokens, stop_reasons), scores))
}

fn generations(tokens: Vec<Vec<u32>>, stop_reasons: Vec<StopReason>) -> Vec<Generation> {
    tokens
        .into_iter()
        .zip(stop_reasons)
        .map(|(tokens, stop_reason)| Generation {
            tokens,
            stop_reason,
        })
        .collect()
}

/// The cross-entropy of each row's scored continuation tokens, from the hidden states of a
/// pass whose prompts end at column `prompt_end`.
fn continuation_scores<B: Backend>(
    model: &CausalLm<B>,
    hidden: &Tensor<B, 3>,
    continuations: &[Continuation],
    prompt_end: usize,
) -> Vec<CrossEntropySums> {
    let [rows, width, d_model] = hidden.dims();
    // Position `prompt_end - 1 + j` of a row predicts its continuation's token `j`.
    let mut sources = Vec::new();
    let mut labels = Vec::new();
    let mut counts = Vec::with_capacity(rows);
    for (row, continuation) in continuations.iter().enumerate() {
        let before = labels.len();
        for (j, (&token, &scored)) in continuation
            .tokens
            .iter()
            .zip(continuation.scored)
            .enumerate()
        {
            if scored {
                sources.push((row * width + prompt_end - 1 + j) as i64);
                labels.push(token as usize);
            }
        }
        counts.push(labels.len() - before);
    }
    let index =
        Tensor::<B, 1, Int>::from_data(TensorData::new(sources, [labels.len()]), &hidden.device());
    let picked = hidden
        .clone()
        .reshape([rows * width, d_model])
        .select(0, index);
    let vocab = model.config().vocab_size();
    grouped_cross_entropy(picked, &labels, &counts, vocab, |h| model.logits_2d(h))
}

/// `logprobs[i]` = log p(`tokens[i + 1]` | `tokens[..=i]`), from one forward pass.
pub fn token_logprobs<B: Backend>(
    model: &CausalLm<B>,
    tokens: &[u32],
    device: &B::Device,
) -> Result<Vec<f64>> {
    Ok(token_scores(model, tokens, device)?
        .into_iter()
        .map(|score| score.logprob)
        .collect())
}

/// How the model scored one token of a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    /// log p(token | the tokens before it).
    pub logprob: f64,
    /// Whether the token is the model's most likely next token (argmax).
    pub top: bool,
}

/// `scores[i]` scores `tokens[i + 1]` after `tokens[..=i]`, from one forward pass.
pub fn token_scores<B: Backend>(
    model: &CausalLm<B>,
    tokens: &[u32],
    device: &B::Device,
) -> Result<Vec<TokenScore>> {
    if tokens.len() < 2 {
        return Err(Error::TooFewTokens {
            what: "scoring",
            needed: 2,
            got: tokens.len(),
        });
    }
    let limit = model.max_positions();
    if tokens.len() > limit {
        return Err(Error::TooManyTokens {
            what: "the scored text",
            got: tokens.len(),
            limit,
        });
    }
    let n = tokens.len();
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    let logits = model.forward(ModelInput::sequences(ids));
    let vocab = logits.dims()[2];
    let logits = logits.slice([0..1, 0..n - 1, 0..vocab]);
    let next: Vec<i64> = tokens[1..].iter().map(|&t| i64::from(t)).collect();
    let next = Tensor::<B, 3, Int>::from_data(TensorData::new(next, [1, n - 1, 1]), device);
    let top: Vec<i64> = logits
        .clone()
        .argmax(2)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap_or_default();
    let logprobs: Vec<f32> = log_softmax(logits, 2)
        .gather(2, next)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    Ok(logprobs
        .into_iter()
        .zip(top)
        .zip(&tokens[1..])
        .map(|((logprob, top), &token)| TokenScore {
            logprob: f64::from(logprob),
            top: top == i64::from(token),
        })
        .collect())
}

/// Picks tokens from logits: greedy, or seeded sampling with temperature, top-k and top-p.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    state: u64,
}

impl Sampler {
    pub fn new(config: &GenerationConfig) -> Self {
        Sampler {
            temperature: config.temperature,
            top_k: config.top_k,
            top_p: config.top_p,
            state: config.seed ^ 0x5DEE_CE66_D1CE_4E5B,
        }
    }

    fn next_f64(&mut self) -> f64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token from one position's logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0 as u32
        };
        if self.temperature <= 0.0 {
            return argmax();
        }
        let mut candidates: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (i, f64::from(v) / self.temperature))
            .collect();
        candidates.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        if let Some(k) = self.top_k.filter(|&k| k > 0) {
            candidates.truncate(k);
        }
        let max = candidates.first().map_or(0.0, |c| c.1);
        let mut probs: Vec<f64> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = self.top_p.filter(|&p| p < 1.0) {
            let mut cumulative = 0.0;
            let keep = probs.iter().position(|&q| {
                cumulative += q;
                cumulative >= p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            candidates.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= total);
        }
        let mut draw = self.next_f64();
        for (candidate, p) in candidates.iter().zip(&probs) {
            if draw < *p {
                return candidate.0 as u32;
            }
            draw -= p;
        }
        candidates.last().map_or_else(argmax, |c| c.0 as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: Option<usize>, top_p: Option<f64>, seed: u64) -> Sampler {
        Sampler::new(&GenerationConfig {
            temperature,
            top_k,
            top_p,
            seed,
            ..Default::default()
        })
    }

    #[test]
    fn sampling_settings_out_of_range_are_refused() {
        let config =
            |temperature: f64, top_k: Option<usize>, top_p: Option<f64>| GenerationConfig {
                temperature,
                top_k,
                top_p,
                ..Default::default()
            };
        assert!(config(0.7, Some(40), Some(0.9)).validate().is_ok());
        for (bad, expected) in [
            (config(-1.0, None, None), "`temperature` is -1"),
            (config(f64::NAN, None, None), "`temperature` is NaN"),
            (config(1.0, Some(0), None), "`top_k` is 0"),
            (
                config(1.0, None, Some(2.0)),
                "`top_p` is 2; it must be in (0, 1]",
            ),
            (config(1.0, None, Some(0.0)), "`top_p` is 0"),
            (config(1.0, None, Some(f64::NAN)), "`top_p` is NaN"),
        ] {
            let error = bad
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        assert_eq!(sampler(0.0, None, None, 1).pick(&[0.1, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_sampling_is_seeded() {
        let logits = [1.0, 2.0, 1.5, 0.5];
        assert!((0..50).all(|seed| sampler(1.0, Some(1), None, seed).pick(&logits) == 1));
        let draws = |seed| {
            (0..20)
                .map(|_| 0)
                .scan(sampler(1.0, None, None, seed), |s, _: i32| {
                    Some(s.pick(&logits))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // p(0) ~ 0.87: with top_p 0.5 only token 0 remains.
        let logits = [4.0, 2.0, 0.0, -1.0];
        assert!((0..50).all(|seed| sampler(1.0, None, Some(0.5), seed).pick(&logits) == 0));
    }
}
