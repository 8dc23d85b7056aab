//! The dataset quality report: what a person should know about a dataset before training on it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use rayon::prelude::*;
use serde::Serialize;
use temper_chat::Role;

use crate::pipeline::Prepared;
use crate::records::{Record, Sample};

/// Summary statistics of a list of lengths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepeatedPrefix {
    pub prefix: String,
    pub count: usize,
}

/// Everything the report says.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Records that are not exact duplicates but share at least 80% of their word 3-grams
    /// with an earlier record (MinHash candidates, verified exactly).
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

fn full_text(sample: &Sample) -> String {
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

fn top_prefixes(texts: &[String], words: usize, limit: usize) -> Vec<RepeatedPrefix> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for text in texts {
        let prefix = prefix(text, words);
        if !prefix.is_empty() {
            *counts.entry(prefix).or_default() += 1;
        }
    }
    let mut repeated: Vec<RepeatedPrefix> = counts
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|(prefix, count)| RepeatedPrefix { prefix, count })
        .collect();
    repeated.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.prefix.cmp(&b.prefix)));
    repeated.truncate(limit);
    repeated
}

fn hash_of(value: impl Hash, seed: u64) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

/// Word 3-gram shingles of normalised text.
fn shingles(text: &str) -> HashSet<u64> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.len() < 3 {
        return std::iter::once(hash_of(&words, 0)).collect();
    }
    words.windows(3).map(|w| hash_of(w, 0)).collect()
}

const MINHASH_BANDS: usize = 16;
const MINHASH_ROWS: usize = 4;
const NEAR_DUPLICATE_JACCARD: f64 = 0.8;

/// For each text, the earlier text it nearly duplicates (exact duplicates excluded).
fn near_duplicates_of(texts: &[String], exact: &[Option<usize>]) -> Vec<Option<usize>> {
    let sets: Vec<HashSet<u64>> = texts.par_iter().map(|t| shingles(t)).collect();
    let signatures: Vec<Vec<u64>> = sets
        .par_iter()
        .map(|set| {
            (0..MINHASH_BANDS * MINHASH_ROWS)
                .map(|k| {
                    set.iter()
                        .map(|&s| hash_of(s, k as u64 + 1))
                        .min()
                        .unwrap_or(u64::MAX)
                })
                .collect()
        })
        .collect();
    // A record is a near duplicate if, in some band, it collides with the first record of
    // that bucket and their exact Jaccard similarity is high enough.
    let mut near = vec![None; texts.len()];
    for band in 0..MINHASH_BANDS {
        let mut first_in_bucket: HashMap<&[u64], usize> = HashMap::new();
        for (index, signature) in signatures.iter().enumerate() {
            let key = &signature[band * MINHASH_ROWS..(band + 1) * MINHASH_ROWS];
            match first_in_bucket.get(key) {
                None => {
                    first_in_bucket.insert(key, index);
                }
                Some(&first) if near[index].is_none() && exact[index].is_none() => {
                    let (a, b) = (&sets[first], &sets[index]);
                    let shared = a.intersection(b).count();
                    let jaccard = shared as f64 / (a.len() + b.len() - shared).max(1) as f64;
                    if jaccard >= NEAR_DUPLICATE_JACCARD {
                        near[index] = Some(first);
                    }
                }
                Some(_) => {}
            }
        }
    }
    near
}

/// For each record, the earlier record it duplicates exactly and the one it nearly
/// duplicates (>= 80% shared word 3-grams; MinHash candidates, verified exactly).
pub(crate) fn duplicates_of(records: &[Record]) -> (Vec<Option<usize>>, Vec<Option<usize>>) {
    let texts: Vec<String> = records.par_iter().map(|r| full_text(&r.sample)).collect();
    let mut first: HashMap<&str, usize> = HashMap::new();
    let exact: Vec<Option<usize>> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| match first.entry(text.as_str()) {
            std::collections::hash_map::Entry::Occupied(earlier) => Some(*earlier.get()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
                None
            }
        })
        .collect();
    let near = near_duplicates_of(&texts, &exact);
    (exact, near)
}

impl QualityReport {
    pub fn build(prepared: &Prepared) -> QualityReport {
        let mut records_by_format = BTreeMap::new();
        for record in &prepared.records {
            *records_by_format
                .entry(record.format.as_str().to_owned())
                .or_insert(0) += 1;
        }
        let prompt: Vec<usize> = prepared
            .untruncated
            .iter()
            .map(|e| e.len() - e.trained_tokens())
            .collect();
        let response: Vec<usize> = prepared
            .untruncated
            .iter()
            .map(|e| e.trained_tokens())
            .collect();
        let total: Vec<usize> = prepared.untruncated.iter().map(|e| e.len()).collect();

        let (instructions, outputs): (Vec<String>, Vec<String>) = prepared
            .records
            .iter()
            .map(|r| instruction_and_output(&r.sample))
            .unzip();
        // Plain-text records have no instruction; diversity is over the records that do.
        let with_instruction: Vec<&String> =
            instructions.iter().filter(|i| !i.is_empty()).collect();
        let unique_instructions = with_instruction.iter().collect::<HashSet<_>>().len();
        let (exact, near) = duplicates_of(&prepared.records);

        let all_tokens = prepared.total_tokens();
        QualityReport {
            file: prepared.name.clone(),
            records_by_format,
            skipped: prepared
                .skipped
                .iter()
                .map(|(p, c)| (p.as_str().to_owned(), *c))
                .collect(),
            examples: prepared.examples.len(),
            template: prepared.template.clone(),
            max_length: prepared.max_length,
            prompt_tokens: LengthStats::of(&prompt),
            response_tokens: LengthStats::of(&response),
            total_tokens: LengthStats::of(&total),
            over_max_length: total
                .iter()
                .filter(|&&len| len > prepared.max_length)
                .count(),
            trained_token_fraction: if all_tokens == 0 {
                0.0
            } else {
                prepared.trained_tokens() as f64 / all_tokens as f64
            },
            unique_instructions,
            instruction_diversity: if with_instruction.is_empty() {
                0.0
            } else {
                unique_instructions as f64 / with_instruction.len() as f64
            },
            repeated_instruction_prefixes: top_prefixes(&instructions, 3, 5),
            repeated_output_prefixes: top_prefixes(&outputs, 3, 5),
            exact_duplicates: exact.iter().flatten().count(),
            near_duplicates: near.iter().flatten().count(),
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
    fn near_duplicates_are_found_and_distinct_texts_are_not() {
        let base = "the quick brown fox jumps over the lazy dog near the river bank today";
        let texts = vec![
            base.to_owned(),
            format!("{base} again"),
            "completely different words about sorting numbers in ascending order quickly"
                .to_owned(),
            base.to_owned(),
        ];
        let exact = [None, None, None, Some(0)];
        assert_eq!(
            near_duplicates_of(&texts, &exact),
            [None, Some(0), None, None]
        );
    }

    #[test]
    fn repeated_prefixes_are_counted() {
        let texts: Vec<String> = [
            "Write a poem",
            "write a story",
            "Write a haiku now",
            "Explain this",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            top_prefixes(&texts, 2, 5),
            [RepeatedPrefix {
                prefix: "write a".into(),
                count: 3
            }]
        );
    }
}
