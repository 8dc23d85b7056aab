//! The dataset quality report: what a person should know about a dataset before training on it.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashSet};
use serde::{Deserialize, Serialize};
use temper_chat::Role;

use crate::duplicates::Repeat;
use crate::example::Example;
use crate::pipeline::Prepared;
use crate::records::{Record, Sample};

/// Summary statistics of a list of lengths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub min: usize,
    pub mean: f64,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
}

impl LengthStats {
    /// Nearest-rank percentiles; all zeros for an empty list.
    pub fn of(values: &[usize]) -> LengthStats {
        if values.is_empty() {
            return LengthStats {
                min: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p99: 0,
                max: 0,
            };
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let rank =
            |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        LengthStats {
            min: sorted[0],
            mean: sorted.iter().sum::<usize>() as f64 / sorted.len() as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: sorted[sorted.len() - 1],
        }
    }
}

/// A repeated opening of instructions or outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatedPrefix {
    pub prefix: String,
    pub count: usize,
}

/// Everything the report says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub file: String,
    /// Usable records by format.
    pub records_by_format: BTreeMap<String, usize>,
    /// Records and examples dropped, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Examples left for training.
    pub examples: usize,
    pub template: Option<String>,
    pub max_length: usize,
    /// Untrained (prompt) and trained (response) tokens per example, before truncation.
    pub prompt_tokens: LengthStats,
    pub response_tokens: LengthStats,
    pub total_tokens: LengthStats,
    /// Examples longer than `max_length` before truncation.
    pub over_max_length: usize,
    /// Trained tokens / all tokens, after truncation.
    pub trained_token_fraction: f64,
    pub unique_instructions: usize,
    /// unique instructions / records with an instruction (0 when none has one).
    pub instruction_diversity: f64,
    pub repeated_instruction_prefixes: Vec<RepeatedPrefix>,
    pub repeated_output_prefixes: Vec<RepeatedPrefix>,
    /// Records identical to an earlier one (same instruction, input and output).
    pub exact_duplicates: usize,
    /// Records that are not exact duplicates but share about 80% or more of their word
    /// 3-grams with an earlier record (estimated from 64 MinHash values).
    pub near_duplicates: usize,
    /// Records skipped because the response was empty.
    pub empty_outputs: usize,
    /// Rows and their fill, packed or padded.
    pub rows: usize,
    pub packing: bool,
    pub packing_efficiency: f64,
}

/// The instruction (first user text) and output (last assistant text) of a sample.
fn instruction_and_output(sample: &Sample) -> (String, String) {
    match sample {
        Sample::Chat(conversation) => {
            let text = |role: Role, last: bool| {
                let mut matching = conversation.messages.iter().filter(|m| m.role == role);
                let message = if last {
                    matching.next_back()
                } else {
                    matching.next()
                };
                message.and_then(|m| m.content.clone()).unwrap_or_default()
            };
            (text(Role::User, false), text(Role::Assistant, true))
        }
        Sample::Completion { prompt, completion } => (prompt.clone(), completion.clone()),
        Sample::Text(text) => (String::new(), text.clone()),
    }
}

/// The whole text of a sample (what duplicates are found in).
pub(crate) fn full_text(sample: &Sample) -> String {
    match sample {
        Sample::Chat(conversation) => conversation
            .messages
            .iter()
            .map(|m| format!("{}: {}", m.role, m.content.as_deref().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n"),
        Sample::Completion { prompt, completion } => format!("{prompt}{completion}"),
        Sample::Text(text) => text.clone(),
    }
}

/// The first `words` words, lowercased.
fn prefix(text: &str, words: usize) -> String {
    text.split_whitespace()
        .take(words)
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The `limit` most frequent prefixes counted more than once.
fn top_prefixes(counts: HashMap<String, usize>, limit: usize) -> Vec<RepeatedPrefix> {
    let mut repeated: Vec<RepeatedPrefix> = counts
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|(prefix, count)| RepeatedPrefix { prefix, count })
        .collect();
    repeated.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.prefix.cmp(&b.prefix)));
    repeated.truncate(limit);
    repeated
}

/// Words of the prefixes the report counts, and how many prefixes it lists.
const PREFIX_WORDS: usize = 3;
const PREFIXES_LISTED: usize = 5;

/// The report, accumulated record by record as a dataset streams past: lengths, counts and
/// hashes, never the text.
#[derive(Debug, Default)]
pub(crate) struct ReportBuilder {
    records_by_format: BTreeMap<String, usize>,
    prompt: Vec<usize>,
    response: Vec<usize>,
    total: Vec<usize>,
    over_max_length: usize,
    instructions: FxHashSet<u64>,
    with_instruction: usize,
    instruction_prefixes: HashMap<String, usize>,
    output_prefixes: HashMap<String, usize>,
    exact_duplicates: usize,
    near_duplicates: usize,
}

impl ReportBuilder {
    /// Counts a usable record, its example before truncation, and what it repeats.
    pub(crate) fn observe(
        &mut self,
        record: &Record,
        untruncated: &Example,
        repeat: Option<Repeat>,
        max_length: usize,
    ) {
        *self
            .records_by_format
            .entry(record.format.as_str().to_owned())
            .or_insert(0) += 1;
        let trained = untruncated.trained_tokens();
        self.prompt.push(untruncated.len() - trained);
        self.response.push(trained);
        self.total.push(untruncated.len());
        self.over_max_length += usize::from(untruncated.len() > max_length);
        let (instruction, output) = instruction_and_output(&record.sample);
        // Plain-text records have no instruction; diversity is over the records that do.
        if !instruction.is_empty() {
            self.with_instruction += 1;
            self.instructions
                .insert(FxBuildHasher.hash_one(&instruction));
        }
        for (text, counts) in [
            (instruction, &mut self.instruction_prefixes),
            (output, &mut self.output_prefixes),
        ] {
            let prefix = prefix(&text, PREFIX_WORDS);
            if !prefix.is_empty() {
                *counts.entry(prefix).or_default() += 1;
            }
        }
        match repeat {
            Some(Repeat::Exact(_)) => self.exact_duplicates += 1,
            Some(Repeat::Near(_)) => self.near_duplicates += 1,
            None => {}
        }
    }

    pub(crate) fn finish(self, prepared: &Prepared) -> QualityReport {
        let all_tokens = prepared.total_tokens();
        let unique_instructions = self.instructions.len();
        QualityReport {
            file: prepared.name.clone(),
            records_by_format: self.records_by_format,
            skipped: prepared
                .skipped
                .iter()
                .map(|(p, c)| (p.as_str().to_owned(), *c))
                .collect(),
            examples: prepared.examples.len(),
            template: prepared.template.clone(),
            max_length: prepared.max_length,
            prompt_tokens: LengthStats::of(&self.prompt),
            response_tokens: LengthStats::of(&self.response),
            total_tokens: LengthStats::of(&self.total),
            over_max_length: self.over_max_length,
            trained_token_fraction: if all_tokens == 0 {
                0.0
            } else {
                prepared.trained_tokens() as f64 / all_tokens as f64
            },
            unique_instructions,
            instruction_diversity: if self.with_instruction == 0 {
                0.0
            } else {
                unique_instructions as f64 / self.with_instruction as f64
            },
            repeated_instruction_prefixes: top_prefixes(self.instruction_prefixes, PREFIXES_LISTED),
            repeated_output_prefixes: top_prefixes(self.output_prefixes, PREFIXES_LISTED),
            exact_duplicates: self.exact_duplicates,
            near_duplicates: self.near_duplicates,
            empty_outputs: prepared
                .skipped
                .get(&crate::error::Problem::EmptyResponse)
                .copied()
                .unwrap_or(0),
            rows: prepared.rows.len(),
            packing: prepared.packing,
            packing_efficiency: prepared.packing_efficiency(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let stats = LengthStats::of(&(1..=100).collect::<Vec<_>>());
        assert_eq!(
            (stats.min, stats.p50, stats.p90, stats.p99, stats.max),
            (1, 50, 90, 99, 100)
        );
        assert!((stats.mean - 50.5).abs() < 1e-12);
    }

    #[test]
    fn repeated_prefixes_are_counted() {
        let mut counts = HashMap::new();
        for text in [
            "Write a poem",
            "write a story",
            "Write a haiku now",
            "Explain this",
        ] {
            *counts.entry(prefix(text, 2)).or_default() += 1;
        }
        assert_eq!(
            top_prefixes(counts, 5),
            [RepeatedPrefix {
                prefix: "write a".into(),
                count: 3
            }]
        );
    }
}
