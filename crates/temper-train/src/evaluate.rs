//! Evaluation during a run: the held-out loss, and exact match of greedy answers to
//! held-out chats, prompted with the template the data was rendered with.

use std::ops::ControlFlow;

use burn::prelude::*;
use temper_chat::{ChatTemplate, Conversation, RenderOptions, Role};
use temper_data::{Batch, Pack, Prepared, Sample, Tokenizer, collate};
use temper_models::{CausalLm, GenerationConfig, generate};

use crate::config::RunConfig;
use crate::error::Result;
use crate::load::stop_token_ids;
use crate::metrics::Metric;
use crate::run::Event;
use crate::step::evaluate;

/// The held-out data, prepared once: batches for the loss, chats for exact match.
pub(crate) struct HeldOut {
    batches: Vec<Batch>,
    cases: Vec<GenerationCase>,
    generation: GenerationConfig,
}

/// One held-out chat: the prompt as rendered, its token ids, and the expected answer.
struct GenerationCase {
    text: String,
    prompt: Vec<u32>,
    expected: String,
}

/// The held-out file's batches and generation cases, rendered with the training template.
pub(crate) fn held_out(
    config: &RunConfig,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<HeldOut> {
    let generation = GenerationConfig {
        max_new_tokens: config.eval.max_new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: config.train.seed,
        stop_token_ids: stop_token_ids(tokenizer),
    };
    let Some(path) = &config.dataset.eval else {
        return Ok(HeldOut {
            batches: Vec::new(),
            cases: Vec::new(),
            generation,
        });
    };
    let read = temper_data::pipeline::read_dataset(path, &config.data)?;
    let records = read.records.len();
    let eval =
        temper_data::pipeline::prepare_records(path, read, template, tokenizer, &config.data)?;
    crate::run::require_examples(&eval, "held-out", records)?;
    let batches = batches_of(
        &eval.rows,
        config.eval.max_rows,
        config.train.batch_size,
        tokenizer.pad_id,
        config.data.pad_to_multiple_of,
    );
    let cases = match template {
        Some(template) if config.eval.generate_examples > 0 => {
            generation_cases(&eval, template, tokenizer, config.eval.generate_examples)?
        }
        _ => Vec::new(),
    };
    Ok(HeldOut {
        batches,
        cases,
        generation,
    })
}

/// The held-out loss after `step`, when there is held-out data.
pub(crate) fn eval_loss<B: Backend>(
    model: &CausalLm<B>,
    eval: &HeldOut,
    step: u64,
    device: &B::Device,
) -> Result<Option<Metric>> {
    if eval.batches.is_empty() {
        return Ok(None);
    }
    let sums = evaluate(model, &eval.batches, device)?;
    Ok(Some(Metric::Eval {
        step,
        loss: sums.mean(),
        perplexity: sums.mean().exp(),
        token_accuracy: sums.correct as f64 / sums.tokens.max(1) as f64,
        exact_match: None,
    }))
}

/// Padded micro-batches of (at most `max_rows` of) `rows`, in order.
fn batches_of(
    rows: &[Pack],
    max_rows: usize,
    batch_size: usize,
    pad_id: u32,
    pad_to_multiple_of: Option<usize>,
) -> Vec<Batch> {
    let take = if max_rows == 0 {
        rows.len()
    } else {
        max_rows.min(rows.len())
    };
    rows[..take]
        .chunks(batch_size)
        .map(|chunk| {
            collate(
                &chunk.iter().collect::<Vec<_>>(),
                pad_id,
                pad_to_multiple_of,
            )
        })
        .collect()
}

/// The first `count` chat examples of `eval` whose last message is the assistant's: their
/// prompt (everything before it, with the generation prompt) and the expected answer.
fn generation_cases(
    eval: &Prepared,
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    count: usize,
) -> Result<Vec<GenerationCase>> {
    let options = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    let mut cases = Vec::new();
    for record in &eval.records {
        if cases.len() == count {
            break;
        }
        let Sample::Chat(conversation) = &record.sample else {
            continue;
        };
        let Some((last, before)) = conversation.messages.split_last() else {
            continue;
        };
        if last.role != Role::Assistant {
            continue;
        }
        let prompt = Conversation {
            messages: before.to_vec(),
            ..conversation.clone()
        };
        let text = template.render_text(&prompt, &options)?;
        let encoded = tokenizer.encode(&text)?;
        cases.push(GenerationCase {
            text,
            prompt: encoded.0,
            expected: last.content.clone().unwrap_or_default(),
        });
    }
    Ok(cases)
}

/// How many greedy answers to the held-out chats equal the expected answer (both trimmed),
/// out of how many; reports the first few answers and the count as events labelled `when`.
/// `None` when there are no held-out chats to answer.
pub(crate) fn exact_matches<B: Backend>(
    model: &CausalLm<B>,
    eval: &HeldOut,
    tokenizer: &Tokenizer,
    device: &B::Device,
    when: &'static str,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<(usize, usize)>> {
    const SHOWN: usize = 3;
    if eval.cases.is_empty() {
        return Ok(None);
    }
    let config = &eval.generation;
    let mut correct = 0;
    for (index, case) in eval.cases.iter().enumerate() {
        let generation = generate(model, &case.prompt, config, device, |_| {
            ControlFlow::Continue(())
        })?;
        let answer: Vec<u32> = generation
            .tokens
            .iter()
            .copied()
            .filter(|id| !config.stop_token_ids.contains(id))
            .collect();
        let answer = tokenizer.decode(&answer);
        if answer.trim() == case.expected.trim() {
            correct += 1;
        }
        if index < SHOWN {
            on_event(Event::Answer {
                when,
                prompt: case.text.clone(),
                expected: case.expected.clone(),
                answer,
            });
        }
    }
    let total = eval.cases.len();
    on_event(Event::ExactMatch {
        when,
        correct,
        total,
    });
    Ok(Some((correct, total)))
}
