//! Evaluation during a run: the held-out loss, and the evaluator's metrics of greedy answers
//! to held-out examples, prompted with the template the data was rendered with.

use std::path::Path;

use burn::prelude::*;
use temper_chat::ChatTemplate;
use temper_data::{Batch, Pack, PrepareOptions, Prepared, Tokenizer, collate};
use temper_lora::LoraConfig;
use temper_models::CausalLm;

use crate::config::RunConfig;
use crate::error::Result;
use crate::evaluator::{
    EvalCase, EvalSettings, EvalSummary, GENERATION_BATCH, Replace, eval_cases, evaluate_cases,
    write_results,
};
use crate::load::stop_token_ids;
use crate::metrics::Metric;
use crate::run::{EVAL_DIR, EvalPoint, Event};
use crate::step::evaluate;

/// The held-out data, prepared once: batches for the loss, examples to answer.
pub(crate) struct HeldOut {
    batches: Vec<Batch>,
    cases: Vec<EvalCase>,
    settings: EvalSettings,
    /// Answer with the adapter of this configuration merged into a copy of the model.
    pub(crate) merge: Option<LoraConfig>,
}

/// The held-out file's batches and generation cases, rendered with the training template.
pub(crate) fn held_out(
    config: &RunConfig,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<HeldOut> {
    let settings = EvalSettings {
        max_new_tokens: config.eval.max_new_tokens,
        batch_size: GENERATION_BATCH,
        samples: config.eval.samples,
        temperature: config.eval.temperature,
        seed: config.train.seed,
        stop_token_ids: stop_token_ids(tokenizer),
    };
    let Some(dataset) = &config.dataset.eval else {
        return Ok(HeldOut {
            batches: Vec::new(),
            cases: Vec::new(),
            settings,
            merge: None,
        });
    };
    let eval = temper_data::prepare_with(
        dataset,
        template,
        tokenizer,
        &config.data,
        PrepareOptions {
            keep_records: usize::MAX,
            ..PrepareOptions::default()
        },
    )?;
    crate::run::require_examples(&eval, "held-out", eval.read)?;
    let batches = batches_of(
        &eval,
        config.eval.max_rows,
        config.train.batch_size,
        tokenizer.pad_id,
        config.data.pad_to_multiple_of,
    );
    let cases = match config.eval.generate_examples {
        0 => Vec::new(),
        count => eval_cases(&eval, template, tokenizer, Some(count))?,
    };
    Ok(HeldOut {
        batches,
        cases,
        settings,
        merge: None,
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

/// Padded micro-batches of (at most `max_rows` of) the rows of `eval`, in order.
fn batches_of(
    eval: &Prepared,
    max_rows: usize,
    batch_size: usize,
    pad_id: u32,
    pad_to_multiple_of: Option<usize>,
) -> Vec<Batch> {
    let take = if max_rows == 0 {
        eval.rows.len()
    } else {
        max_rows.min(eval.rows.len())
    };
    let rows: Vec<Pack> = (0..take).map(|row| eval.row(row)).collect();
    rows.chunks(batch_size)
        .map(|chunk| {
            collate(
                &chunk.iter().collect::<Vec<_>>(),
                pad_id,
                pad_to_multiple_of,
            )
        })
        .collect()
}

/// Answers the held-out examples with `model` (see [`crate::evaluator`]), writes
/// `results.jsonl` and `summary.md` into `output_dir/eval/{when}`, and reports the first few
/// answers and the summary as events labelled `when`. `None` when there is nothing to answer.
pub(crate) fn answer_held_out<B: Backend>(
    model: &CausalLm<B>,
    eval: &HeldOut,
    tokenizer: &Tokenizer,
    device: &B::Device,
    output_dir: &Path,
    when: EvalPoint,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<EvalSummary>> {
    const SHOWN: usize = 3;
    if eval.cases.is_empty() {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let merged = eval
        .merge
        .as_ref()
        .map(|lora| crate::adapters::merged_for_inference(model.clone(), lora));
    let model = merged.as_ref().unwrap_or(model);
    let (results, summary) = evaluate_cases(
        model,
        tokenizer,
        &eval.cases,
        &eval.settings,
        device,
        |_| {},
    )?;
    for result in results.iter().take(SHOWN) {
        on_event(Event::Answer {
            when,
            prompt: result.prompt.clone(),
            expected: result.reference.clone(),
            answer: result.answer.clone(),
            sample: result.samples.first().cloned(),
        });
    }
    let dir = output_dir.join(EVAL_DIR).join(when.dir_name());
    write_results(&dir, &results, &summary, Replace::Yes)?;
    on_event(Event::Evaluation {
        when,
        summary: Box::new(summary.clone()),
        dir,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(Some(summary))
}
