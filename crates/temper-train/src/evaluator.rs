//! The evaluator of `temper eval`: for each held-out example, the loss on its answer, the
//! greedy answer and its metrics (`answer_metrics.rs`), sampled answers (pass@k), and the same
//! question asked without the chat template (format overfitting). Writes `results.jsonl` and
//! `summary.md`, and compares two such directories.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use temper_chat::{ChatTemplate, Conversation, RenderOptions, Role};
use temper_data::{Example, Pack, Prepared, Sample, Tokenizer, collate};
use temper_models::fused::CrossEntropySums;
use temper_models::{CausalLm, Continuation, GenerationConfig, StopReason, generate_scored};

use crate::answer_metrics::{AnswerMetrics, answer_metrics, leaks_template};
use crate::error::{Error, Result};
use crate::step::row_losses;

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub max_new_tokens: usize,
    /// Prompts generated at once.
    pub batch_size: usize,
    /// Sampled answers per example besides the greedy one (0: none).
    pub samples: usize,
    /// The temperature of the sampled answers.
    pub temperature: f64,
    pub seed: u64,
    /// Tokens that end an answer (EOS, end-of-turn).
    pub stop_token_ids: Vec<u32>,
}

/// One held-out example, ready to evaluate.
#[derive(Debug, Clone)]
pub struct EvalCase {
    /// Line of the record in its file.
    pub line: usize,
    /// The question: the last user message, or a completion's prompt.
    pub instruction: String,
    /// The prompt as the model sees it (rendered with the template and a generation prompt).
    pub prompt: String,
    pub reference: String,
    prompt_ids: Vec<u32>,
    /// The question alone, without the template; `None` when the prompt has no template.
    plain_ids: Option<Vec<u32>>,
    /// The whole example, its answer's tokens trained (for the loss).
    scored: Example,
}

impl EvalCase {
    /// The scored example after the prompt, up to its last scored token, when the example
    /// begins with the prompt's own tokens, scores none of them, and fits in `limit`
    /// positions (else it is scored in a pass of its own).
    fn continuation(&self, limit: usize) -> Option<Continuation<'_>> {
        let prompt = self.prompt_ids.len();
        let last = self.scored.loss_mask.iter().rposition(|&s| s)? + 1;
        let fits = last <= limit && last > prompt;
        (fits
            && self.scored.input_ids.starts_with(&self.prompt_ids)
            && !self.scored.loss_mask[..prompt].contains(&true))
        .then(|| Continuation {
            tokens: &self.scored.input_ids[prompt..last],
            scored: &self.scored.loss_mask[prompt..last],
        })
    }
}

/// The held-out examples of `prepared` (prepared with `train_on = last_assistant`, so the
/// loss mask covers the answer): chats whose last message is the assistant's, and
/// prompt/completion records; at most `limit`.
pub fn eval_cases(
    prepared: &Prepared,
    template: Option<&ChatTemplate>,
    tokenizer: &Tokenizer,
    limit: Option<usize>,
) -> Result<Vec<EvalCase>> {
    let options = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    let mut cases = Vec::new();
    for (record, example) in prepared.records.iter().zip(&prepared.untruncated) {
        if limit.is_some_and(|limit| cases.len() == limit) {
            break;
        }
        let (instruction, prompt, reference, plain) = match (&record.sample, template) {
            (Sample::Chat(conversation), Some(template)) => {
                let Some((last, before)) = conversation.messages.split_last() else {
                    continue;
                };
                if last.role != Role::Assistant {
                    continue;
                }
                let instruction = before
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .and_then(|m| m.content.clone())
                    .unwrap_or_default();
                let prompt = Conversation {
                    messages: before.to_vec(),
                    ..conversation.clone()
                };
                let text = template.render_text(&prompt, &options)?;
                let reference = last.content.clone().unwrap_or_default();
                (instruction.clone(), text, reference, Some(instruction))
            }
            (Sample::Completion { prompt, completion }, _) => {
                (prompt.clone(), prompt.clone(), completion.clone(), None)
            }
            _ => continue,
        };
        let plain_ids = match plain {
            Some(text) => Some(tokenizer.encode(&text)?.0),
            None => None,
        };
        cases.push(EvalCase {
            line: record.at.position.number(),
            instruction,
            prompt_ids: tokenizer.encode(&prompt)?.0,
            prompt,
            reference,
            plain_ids,
            scored: example.clone(),
        });
    }
    Ok(cases)
}

/// What one example gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleResult {
    pub line: usize,
    pub instruction: String,
    pub prompt: String,
    pub reference: String,
    /// The greedy answer.
    pub answer: String,
    /// Whether it ended with an end-of-turn token (not at `max_new_tokens`).
    pub stopped: bool,
    pub metrics: AnswerMetrics,
    /// Whether the answer matches (exactly, normalised or as a number).
    pub matches: bool,
    /// Mean negative log-likelihood of the reference answer's tokens.
    pub loss: Option<f64>,
    pub answer_tokens: usize,
    /// Share of the reference answer's tokens that are the model's top prediction.
    pub token_accuracy: Option<f64>,
    /// Sampled answers and how many of them match.
    pub samples: Vec<String>,
    pub sample_matches: usize,
    /// The greedy answer to the question asked without the template.
    pub plain_answer: Option<String>,
    /// Whether that answer contains template markers (`### `, `<|im_start|>`, ...).
    pub plain_leak: Option<bool>,
    /// Words of the plain answer over words of the templated answer.
    pub plain_length_ratio: Option<f64>,
}

/// Totals over the examples.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct EvalSummary {
    pub examples: usize,
    /// Token-weighted mean loss on the reference answers, and its perplexity.
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
    pub token_accuracy: Option<f64>,
    pub exact: usize,
    pub normalized: usize,
    /// Numeric matches, out of the examples whose reference is a number.
    pub numeric: usize,
    pub numeric_of: usize,
    /// Exact, normalised or numeric.
    pub matches: usize,
    pub mean_length_ratio: Option<f64>,
    pub mean_completion: Option<f64>,
    /// Answers with no format problem, and each problem's count.
    pub adherent: usize,
    pub empty: usize,
    pub template_leak: usize,
    pub runaway: usize,
    /// Examples asked without the template, the answers that leaked template markers, and
    /// the mean length ratio of plain to templated answers.
    pub plain_asked: usize,
    pub plain_leaks: usize,
    pub mean_plain_length_ratio: Option<f64>,
    /// With samples: examples where at least one sample matches (pass@k), and the share of
    /// matching samples.
    pub samples_per_example: usize,
    pub pass_at_k: usize,
    pub sample_match_rate: Option<f64>,
}

/// Prompts answered at once unless told otherwise. On the 2-core machine, 100 held-out tasks
/// with SmolLM2-135M took 20.3 s 16 at a time, 18.3 s 32 at a time and 17.9 s 64 at a time.
pub const GENERATION_BATCH: usize = 32;

/// Evaluates `cases` with `model`, calling `progress` after each example.
pub fn evaluate_cases<B: Backend>(
    model: &CausalLm<B>,
    tokenizer: &Tokenizer,
    cases: &[EvalCase],
    settings: &EvalSettings,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<(Vec<ExampleResult>, EvalSummary)> {
    let greedy = GenerationConfig {
        max_new_tokens: settings.max_new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: settings.seed,
        stop_token_ids: settings.stop_token_ids.clone(),
    };
    // Answers to many prompts at once: (text, ended with an end-of-turn token), and the
    // losses of the continuations scored in the prompts' forward pass.
    let answers = |prompts: &[&[u32]],
                   continuations: Option<&[Continuation]>,
                   config: &GenerationConfig|
     -> Result<(Vec<Answer>, Vec<CrossEntropySums>)> {
        let none = vec![Continuation::default(); prompts.len()];
        let continuations = continuations.unwrap_or(&none);
        let (generations, scores) =
            generate_scored(model, prompts, continuations, config, device, |_, _| {
                ControlFlow::Continue(())
            })?;
        let texts = generations
            .into_iter()
            .map(|g| {
                let stopped = g.stop_reason == StopReason::StopToken;
                (tokenizer.decode(&g.tokens), stopped)
            })
            .collect();
        Ok((texts, scores))
    };
    // A prompt longer than the model's context keeps its end (the question), leaving room
    // for one new token; generation then stops when the context is full.
    let limit = model.max_positions();
    // Prompts of similar lengths are answered together (less padding); the results keep
    // the dataset's order.
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&index| cases[index].prompt_ids.len());
    let mut results: Vec<Option<ExampleResult>> = vec![None; cases.len()];
    let mut done = 0;
    for indexes in order.chunks(settings.batch_size.max(1)) {
        let chunk: Vec<&EvalCase> = indexes.iter().map(|&index| &cases[index]).collect();
        let prompts: Vec<&[u32]> = chunk
            .iter()
            .map(|c| prompt_end(&c.prompt_ids, limit))
            .collect();
        // A reference answer is scored in its prompt's forward pass where the scored example
        // begins with the prompt's tokens; the others get a pass of their own.
        let scored: Vec<Option<Continuation>> =
            chunk.iter().map(|c| c.continuation(limit)).collect();
        let continuations: Vec<Continuation> =
            scored.iter().map(|c| c.unwrap_or_default()).collect();
        let (greedy_answers, scores) = answers(&prompts, Some(&continuations), &greedy)?;
        let unscored: Vec<&EvalCase> = chunk
            .iter()
            .zip(&scored)
            .filter(|(_, c)| c.is_none())
            .map(|(&case, _)| case)
            .collect();
        let mut separate = answer_losses(model, &unscored, tokenizer.pad_id, device)?.into_iter();
        let mut losses = scored.iter().zip(scores).map(|(c, sums)| match c {
            Some(c) => answer_loss(sums, c.scored.iter().filter(|&&s| s).count()),
            None => separate.next().unwrap_or_default(),
        });
        let plain_prompts: Vec<&[u32]> = chunk
            .iter()
            .filter_map(|c| c.plain_ids.as_deref().map(|ids| prompt_end(ids, limit)))
            .collect();
        let mut plain_answers = answers(&plain_prompts, None, &greedy)?.0.into_iter();
        for ((&index, case), (text, stopped)) in indexes.iter().zip(&chunk).zip(greedy_answers) {
            let metrics = answer_metrics(&case.instruction, &case.reference, &text, stopped);
            // The samples of one example are one batch, seeded by the example's index alone,
            // so they do not depend on the batch size.
            let samples: Vec<String> = match settings.samples {
                0 => Vec::new(),
                k => {
                    let config = GenerationConfig {
                        temperature: settings.temperature,
                        seed: settings.seed.wrapping_add((index * k) as u64),
                        ..greedy.clone()
                    };
                    answers(&vec![prompt_end(&case.prompt_ids, limit); k], None, &config)?
                        .0
                        .into_iter()
                        .map(|(text, _)| text)
                        .collect()
                }
            };
            let sample_matches = samples
                .iter()
                .filter(|s| matches(&answer_metrics(&case.instruction, &case.reference, s, true)))
                .count();
            let plain = match case.plain_ids {
                Some(_) => plain_answers.next().map(|(text, _)| text),
                None => None,
            };
            let (loss, answer_tokens, token_accuracy) = losses.next().unwrap_or_default();
            results[index] = Some(ExampleResult {
                line: case.line,
                instruction: case.instruction.clone(),
                prompt: case.prompt.clone(),
                reference: case.reference.clone(),
                matches: matches(&metrics),
                plain_leak: plain.as_deref().map(leaks_template),
                plain_length_ratio: plain.as_deref().and_then(|p| word_ratio(p, &text)),
                plain_answer: plain,
                answer: text,
                stopped,
                metrics,
                loss,
                answer_tokens,
                token_accuracy,
                samples,
                sample_matches,
            });
            done += 1;
            progress(done);
        }
    }
    let results: Vec<ExampleResult> = results.into_iter().flatten().collect();
    let summary = summarize(&results, settings.samples);
    Ok((results, summary))
}

/// The end of a prompt that leaves room for one new token in a context of `limit`.
fn prompt_end(ids: &[u32], limit: usize) -> &[u32] {
    &ids[ids.len().saturating_sub(limit.saturating_sub(1))..]
}

/// An answer matches when it is exact, normalised or numerically equal.
fn matches(metrics: &AnswerMetrics) -> bool {
    metrics.exact || metrics.normalized || metrics.numeric == Some(true)
}

fn word_ratio(text: &str, to: &str) -> Option<f64> {
    let words = to.split_whitespace().count();
    (words > 0).then(|| text.split_whitespace().count() as f64 / words as f64)
}

/// Loss and token accuracy of the answer tokens of each scored example, from one forward
/// pass. An example longer than the model's context is scored on its end (the answer).
fn answer_losses<B: Backend>(
    model: &CausalLm<B>,
    cases: &[&EvalCase],
    pad_id: u32,
    device: &B::Device,
) -> Result<Vec<AnswerLoss>> {
    if cases.is_empty() {
        return Ok(Vec::new());
    }
    let limit = model.max_positions();
    let rows: Vec<Pack> = cases
        .iter()
        .map(|case| {
            let start = case.scored.len().saturating_sub(limit);
            let end = Example {
                input_ids: case.scored.input_ids[start..].to_vec(),
                loss_mask: case.scored.loss_mask[start..].to_vec(),
                line: case.scored.line,
            };
            Pack::single(&end)
        })
        .collect();
    let batch = collate(&rows.iter().collect::<Vec<_>>(), pad_id, None);
    Ok(row_losses(model, &batch, device)?
        .into_iter()
        .map(|sums| {
            let scored = CrossEntropySums {
                nll: sums.nll,
                correct: sums.correct,
            };
            answer_loss(scored, sums.tokens)
        })
        .collect())
}

/// A generated answer, and whether it ended with an end-of-turn token.
type Answer = (String, bool);

/// An answer's mean loss, its token count and token accuracy.
type AnswerLoss = (Option<f64>, usize, Option<f64>);

fn answer_loss(sums: CrossEntropySums, tokens: usize) -> AnswerLoss {
    match tokens {
        0 => (None, 0, None),
        _ => (
            Some(sums.nll / tokens as f64),
            tokens,
            Some(sums.correct as f64 / tokens as f64),
        ),
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The totals of `results`.
pub fn summarize(results: &[ExampleResult], samples: usize) -> EvalSummary {
    let metrics: Vec<&AnswerMetrics> = results.iter().map(|r| &r.metrics).collect();
    let count = |f: &dyn Fn(&AnswerMetrics) -> bool| metrics.iter().filter(|m| f(m)).count();
    let tokens: usize = results.iter().map(|r| r.answer_tokens).sum();
    let loss = (tokens > 0).then(|| {
        results
            .iter()
            .filter_map(|r| Some(r.loss? * r.answer_tokens as f64))
            .sum::<f64>()
            / tokens as f64
    });
    let token_accuracy = (tokens > 0).then(|| {
        results
            .iter()
            .filter_map(|r| Some(r.token_accuracy? * r.answer_tokens as f64))
            .sum::<f64>()
            / tokens as f64
    });
    let plain: Vec<&ExampleResult> = results.iter().filter(|r| r.plain_leak.is_some()).collect();
    EvalSummary {
        examples: results.len(),
        loss,
        perplexity: loss.map(f64::exp),
        token_accuracy,
        exact: count(&|m| m.exact),
        normalized: count(&|m| m.normalized),
        numeric: count(&|m| m.numeric == Some(true)),
        numeric_of: count(&|m| m.numeric.is_some()),
        matches: results.iter().filter(|r| r.matches).count(),
        mean_length_ratio: mean(metrics.iter().filter_map(|m| m.length_ratio)),
        mean_completion: mean(metrics.iter().filter_map(|m| m.completion)),
        adherent: count(&|m| m.format.adheres()),
        empty: count(&|m| m.format.empty),
        template_leak: count(&|m| m.format.template_leak),
        runaway: count(&|m| m.format.runaway),
        plain_asked: plain.len(),
        plain_leaks: plain.iter().filter(|r| r.plain_leak == Some(true)).count(),
        mean_plain_length_ratio: mean(plain.iter().filter_map(|r| r.plain_length_ratio)),
        samples_per_example: samples,
        pass_at_k: results.iter().filter(|r| r.sample_matches > 0).count(),
        sample_match_rate: (samples > 0 && !results.is_empty()).then(|| {
            results.iter().map(|r| r.sample_matches).sum::<usize>() as f64
                / (samples * results.len()) as f64
        }),
    }
}

impl EvalSummary {
    /// One line of the main numbers.
    pub fn headline(&self) -> String {
        let n = self.examples;
        let mut line = format!(
            "exact {}/{n}, normalised {}/{n}, numeric {}/{}, format adherent {}/{n} (template markers {}, runaway {})",
            self.exact,
            self.normalized,
            self.numeric,
            self.numeric_of,
            self.adherent,
            self.template_leak,
            self.runaway
        );
        if self.plain_asked > 0 {
            let _ = write!(
                line,
                "; without the template {}/{} leak markers",
                self.plain_leaks, self.plain_asked
            );
        }
        if self.samples_per_example > 0 {
            let _ = write!(
                line,
                "; {} samples each: one matches for {}/{n}",
                self.samples_per_example, self.pass_at_k
            );
        }
        line
    }

    /// The share of exact matches.
    pub fn exact_share(&self) -> f64 {
        self.exact as f64 / self.examples.max(1) as f64
    }
}

/// The summary as a Markdown table a person reads.
pub fn summary_markdown(summary: &EvalSummary) -> String {
    let n = summary.examples.max(1) as f64;
    let share = |count: usize| {
        format!(
            "{count} / {} ({:.1}%)",
            summary.examples,
            100.0 * count as f64 / n
        )
    };
    let number = |value: Option<f64>| value.map_or("-".into(), |v| format!("{v:.4}"));
    let mut rows: Vec<(&str, String)> = vec![
        ("examples", summary.examples.to_string()),
        ("answer loss", number(summary.loss)),
        ("answer perplexity", number(summary.perplexity)),
        ("answer token accuracy", number(summary.token_accuracy)),
        ("exact match", share(summary.exact)),
        (
            "normalised match (case, surrounding space)",
            share(summary.normalized),
        ),
        (
            "numeric match",
            format!("{} / {}", summary.numeric, summary.numeric_of),
        ),
        ("any match", share(summary.matches)),
        (
            "mean length ratio (answer / reference words)",
            number(summary.mean_length_ratio),
        ),
        (
            "mean completion (instruction keywords present)",
            number(summary.mean_completion),
        ),
        ("format adherent", share(summary.adherent)),
        ("empty answers", share(summary.empty)),
        ("template markers in answers", share(summary.template_leak)),
        ("runaway (hit max_new_tokens)", share(summary.runaway)),
        (
            "without template: answers leaking markers",
            format!("{} / {}", summary.plain_leaks, summary.plain_asked),
        ),
        (
            "without template: length ratio to templated answer",
            number(summary.mean_plain_length_ratio),
        ),
    ];
    if summary.samples_per_example > 0 {
        rows.push((
            "pass@k (a sampled answer matches)",
            format!(
                "{} (k = {})",
                share(summary.pass_at_k),
                summary.samples_per_example
            ),
        ));
        rows.push(("matching samples", number(summary.sample_match_rate)));
    }
    let mut text = String::from("| metric | value |\n|---|---|\n");
    for (name, value) in rows {
        let _ = writeln!(text, "| {name} | {value} |");
    }
    text
}

/// Whether [`write_results`] may replace an earlier evaluation's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// The directory belongs to the caller (a run's `eval/before`).
    Yes,
    /// A user's `--output`: an earlier evaluation there is refused.
    No,
}

/// Writes `results.jsonl` and `summary.md` into `dir` (created if needed), each through a
/// temporary file.
pub fn write_results(
    dir: &Path,
    results: &[ExampleResult],
    summary: &EvalSummary,
    replace: Replace,
) -> Result<()> {
    if replace == Replace::No {
        check_output(dir)?;
    }
    let files = [dir.join(RESULTS_FILE), dir.join(SUMMARY_FILE)];
    std::fs::create_dir_all(dir).map_err(|error| Error::Io {
        path: dir.to_owned(),
        error,
    })?;
    let mut lines = String::new();
    for result in results {
        lines.push_str(&serde_json::to_string(result).unwrap_or_default());
        lines.push('\n');
    }
    temper_store::write_atomic(&files[0], lines.as_bytes())?;
    let markdown = format!("# Evaluation\n\n{}", summary_markdown(summary));
    temper_store::write_atomic(&files[1], markdown.as_bytes())?;
    Ok(())
}

/// Refuses an output directory that holds an earlier evaluation's files (checked before an
/// evaluation starts, and again before it writes).
pub fn check_output(dir: &Path) -> Result<()> {
    let existing = [RESULTS_FILE, SUMMARY_FILE]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists());
    match existing {
        Some(path) => Err(Error::File {
            path,
            reason: "an earlier evaluation's results are there; choose another --output".into(),
        }),
        None => Ok(()),
    }
}

pub const RESULTS_FILE: &str = "results.jsonl";
pub const SUMMARY_FILE: &str = "summary.md";

/// Reads the `results.jsonl` of an evaluation directory.
pub fn read_results(dir: &Path) -> Result<Vec<ExampleResult>> {
    let path = dir.join(RESULTS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|error| Error::Io {
        path: path.clone(),
        error,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|error| Error::File {
                path: path.clone(),
                reason: format!("line {}: not an evaluation result: {error}", index + 1),
            })
        })
        .collect()
}

/// An example whose answer went from wrong to right, or from right to wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub line: usize,
    pub instruction: String,
    pub before: String,
    pub after: String,
    /// Whether the answer matches after (it did not before).
    pub fixed: bool,
}

/// Examples whose match changed between two evaluations of the same data, by line.
pub fn compare(before: &[ExampleResult], after: &[ExampleResult]) -> Vec<Change> {
    let before: BTreeMap<usize, &ExampleResult> = before.iter().map(|r| (r.line, r)).collect();
    after
        .iter()
        .filter_map(|a| {
            let b = before.get(&a.line)?;
            (b.matches != a.matches).then(|| Change {
                line: a.line,
                instruction: a.instruction.clone(),
                before: b.answer.clone(),
                after: a.answer.clone(),
                fixed: a.matches,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(line: usize, reference: &str, answer: &str, stopped: bool) -> ExampleResult {
        let metrics = answer_metrics("Multiply 15 by 12.", reference, answer, stopped);
        ExampleResult {
            line,
            instruction: "Multiply 15 by 12.".into(),
            prompt: String::new(),
            reference: reference.into(),
            answer: answer.into(),
            stopped,
            matches: matches(&metrics),
            metrics,
            loss: Some(0.5),
            answer_tokens: 2,
            token_accuracy: Some(0.5),
            samples: Vec::new(),
            sample_matches: 0,
            plain_answer: Some("### Response: 180".into()),
            plain_leak: Some(true),
            plain_length_ratio: Some(3.0),
        }
    }

    #[test]
    fn the_summary_counts_each_kind_of_match_and_problem() {
        let results = [
            result(1, "180", "180", true),
            result(2, "180", " 180.", true),
            result(3, "Paris", "paris", true),
            result(4, "180", "the answer is", false),
        ];
        let summary = summarize(&results, 0);
        assert_eq!(
            (
                summary.exact,
                summary.normalized,
                summary.numeric,
                summary.numeric_of
            ),
            (1, 2, 2, 3)
        );
        assert_eq!(
            (summary.matches, summary.adherent, summary.runaway),
            (3, 3, 1)
        );
        assert_eq!((summary.plain_asked, summary.plain_leaks), (4, 4));
        assert_eq!(summary.loss, Some(0.5));
        assert!(summary_markdown(&summary).contains("| exact match | 1 / 4 (25.0%) |"));
    }

    #[test]
    fn compare_lists_answers_that_changed_by_line() {
        let before = [result(1, "180", "15 * 12", true), result(2, "5", "5", true)];
        let after = [result(1, "180", "180", true), result(2, "5", "7", true)];
        let changes = compare(&before, &after);
        assert_eq!(changes.len(), 2);
        assert!(changes[0].fixed && changes[0].line == 1 && changes[0].after == "180");
        assert!(!changes[1].fixed && changes[1].before == "5");
        assert!(compare(&after, &after).is_empty());
    }

    #[test]
    fn a_long_prompt_keeps_its_end() {
        assert_eq!(prompt_end(&[1, 2, 3, 4, 5], 3), &[4, 5]);
        assert_eq!(prompt_end(&[1, 2], 8), &[1, 2]);
    }
}
