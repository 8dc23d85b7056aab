//! Text metrics of a generated answer against its reference: pure functions over strings,
//! explained with worked examples in `docs/evaluation.md`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// How an answer compares with its reference, and what is wrong with its form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerMetrics {
    /// Byte for byte equal.
    pub exact: bool,
    /// Equal after trimming surrounding white space and ignoring case.
    pub normalized: bool,
    /// Both read as the same number (`"180."`, `" 180"` and `"180"`); `None` when the
    /// reference is not a number.
    pub numeric: Option<bool>,
    /// Words of the answer over words of the reference; `None` for an empty reference.
    pub length_ratio: Option<f64>,
    /// Share of the instruction's keywords that the answer contains; `None` when the
    /// instruction has none (see [`keywords`]).
    pub completion: Option<f64>,
    /// What is wrong with the answer's form.
    pub format: FormatFlags,
}

/// Problems of form: an answer with none of them adheres to the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FormatFlags {
    /// Nothing but white space.
    pub empty: bool,
    /// Contains a chat-template marker (`### `, `<|im_start|>`, ...): the model writes the
    /// prompt format instead of answering.
    pub template_leak: bool,
    /// Reached `max_new_tokens` without an end-of-turn token.
    pub runaway: bool,
}

impl FormatFlags {
    pub fn adheres(&self) -> bool {
        !(self.empty || self.template_leak || self.runaway)
    }
}

/// Markers of the common chat formats; an answer that contains one repeats the prompt format.
pub const TEMPLATE_MARKERS: [&str; 14] = [
    "### ",
    "###\n",
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<|user|>",
    "<|assistant|>",
    "<|start_header_id|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "\nUser:",
];

/// The metrics of `answer` to `instruction`, against `reference`. `stopped` says whether
/// generation ended with an end-of-turn token (not at `max_new_tokens`).
pub fn answer_metrics(
    instruction: &str,
    reference: &str,
    answer: &str,
    stopped: bool,
) -> AnswerMetrics {
    let reference_words = reference.split_whitespace().count();
    let keywords = keywords(instruction);
    let answer_words: BTreeSet<String> = words(answer).collect();
    AnswerMetrics {
        exact: answer == reference,
        normalized: normalize(answer) == normalize(reference),
        numeric: number(reference).map(|expected| number(answer) == Some(expected)),
        length_ratio: (reference_words > 0)
            .then(|| answer.split_whitespace().count() as f64 / reference_words as f64),
        completion: (!keywords.is_empty()).then(|| {
            let present = keywords
                .iter()
                .filter(|k| answer_words.contains(*k))
                .count();
            present as f64 / keywords.len() as f64
        }),
        format: FormatFlags {
            empty: answer.trim().is_empty(),
            template_leak: leaks_template(answer),
            runaway: !stopped,
        },
    }
}

/// Whether `text` contains a chat-template marker.
pub fn leaks_template(text: &str) -> bool {
    TEMPLATE_MARKERS.iter().any(|marker| text.contains(marker))
}

/// Trimmed and lower-cased.
fn normalize(text: &str) -> String {
    text.trim().to_lowercase()
}

/// The number `text` states, if it is one: white space, a trailing `.`, a leading `$` and
/// thousands separators (`1,000`) aside.
pub fn number(text: &str) -> Option<f64> {
    let text = text.trim();
    let text = text.strip_suffix('.').unwrap_or(text);
    let text = text.strip_prefix('$').unwrap_or(text);
    if text.is_empty() || !text.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let plain: String = text.chars().filter(|&c| c != ',').collect();
    plain.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Lower-cased words: runs of letters and digits.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Words that say what an instruction asks for: its distinct words of four or more letters
/// that are not among the commonest English words. A crude proxy for "the answer addresses
/// the instruction": it rewards echoing the question and misses synonyms.
pub fn keywords(instruction: &str) -> BTreeSet<String> {
    const COMMON: [&str; 40] = [
        "about",
        "after",
        "also",
        "answer",
        "been",
        "before",
        "being",
        "could",
        "does",
        "each",
        "following",
        "from",
        "give",
        "have",
        "into",
        "just",
        "like",
        "make",
        "many",
        "more",
        "most",
        "much",
        "only",
        "other",
        "over",
        "please",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "what",
        "which",
    ];
    words(instruction)
        .filter(|w| w.chars().count() >= 4 && !COMMON.contains(&w.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_normalized_and_numeric_matches_are_separate() {
        // (reference, answer, exact, normalized, numeric)
        let cases = [
            ("180", "180", true, true, Some(true)),
            ("180", " 180", false, true, Some(true)),
            ("180", "180.", false, false, Some(true)),
            ("1000", "1,000", false, false, Some(true)),
            ("$5", "5", false, false, Some(true)),
            ("2.50", "2.5", false, false, Some(true)),
            ("180", "181", false, false, Some(false)),
            ("180", "about 180", false, false, Some(false)),
            ("Paris", "paris ", false, true, None),
            ("Paris", "Lyon", false, false, None),
        ];
        for (reference, answer, exact, normalized, numeric) in cases {
            let m = answer_metrics("", reference, answer, true);
            assert_eq!(
                (m.exact, m.normalized, m.numeric),
                (exact, normalized, numeric),
                "{reference:?} vs {answer:?}"
            );
        }
    }

    #[test]
    fn length_ratio_counts_words() {
        let m = answer_metrics("", "one two three four", "one two", true);
        assert_eq!(m.length_ratio, Some(0.5));
        assert_eq!(answer_metrics("", " ", "a b", true).length_ratio, None);
    }

    #[test]
    fn completion_is_the_share_of_keywords_in_the_answer() {
        let instruction = "Name the capital city of France, please.";
        assert_eq!(
            keywords(instruction).into_iter().collect::<Vec<_>>(),
            ["capital", "city", "france", "name"]
        );
        let m = answer_metrics(
            instruction,
            "Paris",
            "The capital of France is Paris.",
            true,
        );
        assert_eq!(m.completion, Some(0.5));
        assert_eq!(
            answer_metrics("Add 2 and 3.", "5", "5", true).completion,
            None
        );
    }

    #[test]
    fn format_flags_catch_empty_leaking_and_runaway_answers() {
        let flags = |answer: &str, stopped| answer_metrics("", "x", answer, stopped).format;
        assert!(flags("x", true).adheres());
        assert!(flags(" \n", true).empty);
        assert!(flags("x\n\n### Instruction:\nmore", true).template_leak);
        assert!(flags("x<|im_start|>user", true).template_leak);
        assert!(flags("x x x x", false).runaway);
        assert!(!flags("x x x x", false).adheres());
    }

    #[test]
    fn numbers_are_read_leniently_but_not_from_words() {
        assert_eq!(number(" 180. "), Some(180.0));
        assert_eq!(number("-3.5"), Some(-3.5));
        assert_eq!(number("1,234,567"), Some(1_234_567.0));
        assert_eq!(number("seven"), None);
        assert_eq!(number("inf"), None);
        assert_eq!(number("."), None);
        assert_eq!(number("12 apples"), None);
    }
}
