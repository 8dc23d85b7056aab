//! The whole data pipeline of one dataset: read, render, tokenize, mask, truncate, pack.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use temper_chat::{ChatTemplate, TrainOn};

use crate::dataset::DatasetSpec;
use crate::error::{Error, Location, Problem, Result};
use crate::example::{Example, Truncation, encode_record, truncate};
use crate::pack::{Pack, pack};
use crate::records::{
    FieldNames, Format, OnError, ReadOptions, ReadOutcome, Record, Sample, read_file_into,
};
use crate::tokenize::Tokenizer;

/// The `[data]` section of a run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The records' format; detected from the first record when absent.
    pub format: Option<Format>,
    /// JSON key names, for datasets that use other names.
    pub fields: FieldNames,
    /// A built-in template name, a `.jinja` file or a `tokenizer_config.json`. Defaults to
    /// `alpaca` for alpaca records, else the `tokenizer_config.json` beside the tokenizer.
    pub template: Option<String>,
    /// Which messages are trained: `assistant` (default), `all` or `last_assistant`.
    pub train_on: TrainOn,
    /// The longest example (or packed row), in tokens.
    pub max_length: usize,
    /// What happens to longer examples.
    pub truncation: Truncation,
    /// Pack examples into rows of `max_length` (best-fit decreasing) instead of padding them.
    pub packing: bool,
    /// Round padded rows up to a multiple of this.
    pub pad_to_multiple_of: Option<usize>,
    /// `fail` on the first bad record (default) or `skip` and count it.
    pub on_error: OnError,
    /// Records and examples to drop (and count) whatever `on_error` says.
    pub drop: Vec<Filter>,
    /// Special tokens, when the tokenizer files do not say.
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            format: None,
            fields: FieldNames::default(),
            template: None,
            train_on: TrainOn::Assistant,
            max_length: 1024,
            truncation: Truncation::KeepStart,
            packing: false,
            pad_to_multiple_of: None,
            on_error: OnError::Fail,
            drop: Vec::new(),
            bos_token: None,
            eos_token: None,
            pad_token: None,
        }
    }
}

impl DataConfig {
    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        if self.max_length < 2 {
            return Err(Error::Config {
                key: "data.max_length".into(),
                message: format!("must be at least 2, got {}", self.max_length),
            });
        }
        if self.pad_to_multiple_of == Some(0) {
            return Err(Error::Config {
                key: "data.pad_to_multiple_of".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// What happens to examples longer than `max_length`, `drop = ["too_long"]` included.
    pub fn effective_truncation(&self) -> Truncation {
        if self.drop.contains(&Filter::TooLong) {
            Truncation::Drop
        } else {
            self.truncation
        }
    }

    pub fn special_token_names(&self) -> crate::tokenize::SpecialTokenNames {
        crate::tokenize::SpecialTokenNames {
            bos: self.bos_token.clone(),
            eos: self.eos_token.clone(),
            pad: self.pad_token.clone(),
        }
    }
}

/// A quality filter: what `[data] drop` (`--drop`) removes from a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Records whose text equals an earlier record's (counted as `duplicate`).
    Duplicates,
    /// Records sharing >= 80% of their word 3-grams with an earlier one (`near_duplicate`).
    NearDuplicates,
    /// Records with an empty response (`empty_response`), even with `on_error = "fail"`.
    EmptyOutputs,
    /// Examples longer than `max_length` instead of truncating them (`too_long`); the same
    /// as `truncation = "drop"`.
    TooLong,
}

impl std::str::FromStr for Filter {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            format!("unknown filter `{s}`: expected duplicates, near_duplicates, empty_outputs or too_long")
        })
    }
}

/// A prepared dataset: every usable record, its example, and the rows to train on.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The dataset as it was named (its path, and split if one was given).
    pub name: String,
    /// Records that rendered and tokenized (parallel to `untruncated`).
    pub records: Vec<Record>,
    /// Examples before truncation, parallel to `records`.
    pub untruncated: Vec<Example>,
    /// Examples that survived truncation (what training sees).
    pub examples: Vec<Example>,
    /// Rows: packs of several examples, or one example each.
    pub rows: Vec<Pack>,
    /// Records and examples that were dropped, by reason.
    pub skipped: BTreeMap<Problem, usize>,
    pub first_skips: BTreeMap<Problem, String>,
    pub max_length: usize,
    pub packing: bool,
    /// The name of the template used, if any.
    pub template: Option<String>,
}

impl Prepared {
    pub fn total_tokens(&self) -> usize {
        self.examples.iter().map(Example::len).sum()
    }

    pub fn trained_tokens(&self) -> usize {
        self.examples.iter().map(Example::trained_tokens).sum()
    }

    /// Non-padding fraction of the rows at `max_length`.
    pub fn packing_efficiency(&self) -> f64 {
        crate::pack::packing_efficiency(&self.rows, self.max_length)
    }
}

/// Picks the chat template for `records` (see [`DataConfig::template`]): the configured
/// one; else `alpaca` when every record is an alpaca record; else `own`, the model's own
/// template (a GGUF's metadata, a model directory's `tokenizer_config.json`); else the
/// `tokenizer_config.json` beside the tokenizer. `None` when no record needs one.
pub fn resolve_template(
    config: &DataConfig,
    tokenizer: &Tokenizer,
    records: &[Record],
    own: Option<ChatTemplate>,
) -> Result<Option<ChatTemplate>> {
    let needs_template = records.iter().any(|r| matches!(r.sample, Sample::Chat(_)));
    let spec = match &config.template {
        Some(spec) => spec.clone(),
        None if !needs_template => return Ok(None),
        None if records.iter().all(|r| r.format == Format::Alpaca) => "alpaca".to_owned(),
        None if own.is_some() => return Ok(own),
        None => {
            // The tokenizer's own chat template, when its tokenizer_config.json has one.
            let beside = tokenizer
                .path()
                .parent()
                .map(|dir| dir.join("tokenizer_config.json"));
            let found = match &beside {
                Some(path) => ChatTemplate::from_tokenizer_config_if_any(path)?,
                None => None,
            };
            return match found {
                Some(template) => Ok(Some(with_tokenizer_tokens(template, tokenizer))),
                None => Err(Error::Config {
                    key: "template".into(),
                    message: format!(
                        "chat records need a chat template, and the tokenizer ({}) has no tokenizer_config.json with a `chat_template` beside it: pass --template (one of {}, a .jinja file or a tokenizer_config.json)",
                        tokenizer.path().display(),
                        temper_chat::BUILTIN_TEMPLATES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
            };
        }
    };
    Ok(Some(load_template(&spec, tokenizer)?))
}

/// Loads a template spec (built-in name, `.jinja` file or `tokenizer_config.json`) with the
/// tokenizer's BOS and EOS as its special tokens.
pub fn load_template(spec: &str, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    Ok(with_tokenizer_tokens(ChatTemplate::load(spec)?, tokenizer))
}

/// `template` with the tokenizer's BOS and EOS as its special tokens.
fn with_tokenizer_tokens(template: ChatTemplate, tokenizer: &Tokenizer) -> ChatTemplate {
    // A tokenizer without BOS gives templates an empty `bos_token`, not an undefined one that
    // `bos_token + ...` would fail on.
    template.with_special_tokens(
        Some(
            tokenizer
                .bos
                .as_ref()
                .map_or_else(String::new, |t| t.text.clone()),
        ),
        Some(tokenizer.eos.text.clone()),
    )
}

/// Reads, renders, tokenizes (in parallel), truncates and packs a dataset, with the template
/// [`resolve_template`] picks for it (no model template).
pub fn prepare(
    dataset: &DatasetSpec,
    tokenizer: &Tokenizer,
    config: &DataConfig,
) -> Result<Prepared> {
    let read = read_dataset(dataset, config)?;
    let template = resolve_template(config, tokenizer, &read.records, None)?;
    prepare_records(
        &dataset.to_string(),
        read,
        template.as_ref(),
        tokenizer,
        config,
    )
}

/// Reads the records of every file of a dataset, in order (the first step of [`prepare`]).
pub fn read_dataset(dataset: &DatasetSpec, config: &DataConfig) -> Result<ReadOutcome> {
    config.validate()?;
    let options = ReadOptions {
        format: config.format,
        fields: config.fields.clone(),
        on_error: config.on_error,
        drop_empty_outputs: config.drop.contains(&Filter::EmptyOutputs),
    };
    let mut outcome = ReadOutcome::default();
    for file in dataset.files()? {
        read_file_into(&file, &options, &mut outcome)?;
    }
    Ok(outcome)
}

/// Renders with `template`, tokenizes (in parallel), truncates and packs the records `read`
/// from the dataset `name`.
pub fn prepare_records(
    name: &str,
    read: ReadOutcome,
    template: Option<&ChatTemplate>,
    tokenizer: &Tokenizer,
    config: &DataConfig,
) -> Result<Prepared> {
    let (mut read_records, mut outcome) = (
        read.records,
        ReadOutcome {
            records: Vec::new(),
            ..read
        },
    );
    let (exact, near) = (
        config.drop.contains(&Filter::Duplicates),
        config.drop.contains(&Filter::NearDuplicates),
    );
    if exact || near {
        read_records = drop_duplicates(read_records, exact, near, &mut outcome)?;
    }
    let encoded: Vec<Result<Example>> = read_records
        .par_iter()
        .map(|record| encode_record(record, template, config.train_on, tokenizer))
        .collect();

    let truncation = config.effective_truncation();
    let mut records = Vec::with_capacity(encoded.len());
    let mut untruncated = Vec::with_capacity(encoded.len());
    let mut examples = Vec::with_capacity(encoded.len());
    for (record, example) in read_records.into_iter().zip(encoded) {
        let example = match example {
            Ok(example) => example,
            Err(error) => {
                outcome.skip_or_fail(error, config.on_error)?;
                continue;
            }
        };
        match truncate(example.clone(), config.max_length, truncation) {
            Ok(kept) => examples.push(kept),
            Err((problem, message)) => {
                let error = Error::Record {
                    at: record.at.clone(),
                    problem,
                    message,
                };
                // Dropping is what `drop` and an untrainable example ask for; `error` stops.
                let on_error = if truncation == Truncation::Error {
                    config.on_error
                } else {
                    OnError::Skip
                };
                outcome.skip_or_fail(error, on_error)?;
            }
        }
        records.push(record);
        untruncated.push(example);
    }
    let rows = rows_of(&examples, config);
    Ok(Prepared {
        name: name.to_owned(),
        records,
        untruncated,
        examples,
        rows,
        skipped: outcome.skipped,
        first_skips: outcome.first_skips,
        max_length: config.max_length,
        packing: config.packing,
        template: template.map(|t| t.name().to_owned()),
    })
}

/// `records` without the duplicates `exact` and `near` ask to drop, each counted in
/// `outcome` with the earlier record it repeats.
fn drop_duplicates(
    records: Vec<Record>,
    exact: bool,
    near: bool,
    outcome: &mut ReadOutcome,
) -> Result<Vec<Record>> {
    let (exact_of, near_of) = crate::report::duplicates_of(&records);
    let earlier: Vec<Option<(Problem, Location)>> = exact_of
        .iter()
        .zip(&near_of)
        .map(|(e, n)| match (e, n) {
            (Some(first), _) if exact => Some((Problem::Duplicate, records[*first].at.clone())),
            (_, Some(first)) if near => Some((Problem::NearDuplicate, records[*first].at.clone())),
            _ => None,
        })
        .collect();
    let mut kept = Vec::with_capacity(records.len());
    for (record, earlier) in records.into_iter().zip(earlier) {
        match earlier {
            None => kept.push(record),
            Some((problem, first)) => {
                let how = match problem {
                    Problem::Duplicate => "the same text as",
                    _ => "nearly the same text as",
                };
                let error = Error::Record {
                    at: record.at,
                    problem,
                    message: format!("{how} {first}"),
                };
                outcome.skip_or_fail(error, OnError::Skip)?;
            }
        }
    }
    Ok(kept)
}

/// The rows of `examples`: packs of several (with `packing`), or one example each.
pub fn rows_of(examples: &[Example], config: &DataConfig) -> Vec<Pack> {
    if config.packing {
        pack(examples, config.max_length)
    } else {
        examples
            .iter()
            .enumerate()
            .map(|(i, e)| Pack::single(e, i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_section_reads_from_toml_with_defaults() {
        let config: DataConfig = toml::from_str(
            "max_length = 512\npacking = true\ntrain_on = \"last_assistant\"\ntruncation = \"keep_end\"\n[fields]\ninstruction = \"question\"\n",
        )
        .unwrap();
        assert_eq!(config.max_length, 512);
        assert!(config.packing);
        assert_eq!(config.train_on, TrainOn::LastAssistant);
        assert_eq!(config.truncation, Truncation::KeepEnd);
        assert_eq!(config.fields.instruction, "question");
        assert_eq!(
            config.fields.output, "output",
            "unset fields keep their defaults"
        );
        assert_eq!(config.on_error, OnError::Fail);
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let error = toml::from_str::<DataConfig>("max_lenght = 512\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `max_lenght`"), "{error}");
        let error = toml::from_str::<DataConfig>("truncation = \"middle\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variant `middle`"), "{error}");
    }

    #[test]
    fn nonsense_values_are_refused() {
        let config = DataConfig {
            max_length: 1,
            ..DataConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "invalid `data.max_length`: must be at least 2, got 1"
        );
    }
}
