//! The whole data pipeline of one dataset: read, render, tokenize, mask, truncate, pack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use temper_chat::{ChatTemplate, TrainOn};

use crate::dataset::DatasetSpec;
use crate::duplicates::{DuplicateFinder, Fingerprint, Repeat};
use crate::error::{Error, Problem, Result};
use crate::example::{Example, Truncation, encode_record, truncate};
use crate::pack::{Pack, pack};
use crate::records::{
    FieldNames, Format, OnError, ReadOptions, ReadOutcome, Record, Sample, first_record,
    read_file_each, read_file_into,
};
use crate::report::{QualityReport, ReportBuilder, full_text};
use crate::store::{Examples, Rows};
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
    /// Reuse (and save) prepared datasets in the prepared-data cache
    /// ([`crate::cache_dir`]`/prepared`).
    pub cache: bool,
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
            cache: true,
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

/// A prepared dataset: its examples and the rows to train on; its records and quality report
/// when [`PrepareOptions`] asks for them.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The dataset as it was named (its path, and split if one was given).
    pub name: String,
    /// Records in the dataset's files, usable or not.
    pub read: usize,
    /// The first [`PrepareOptions::keep_records`] records that rendered and tokenized, and
    /// their examples before truncation (parallel lists).
    pub records: Vec<Record>,
    pub untruncated: Vec<Example>,
    /// Examples that survived truncation (what training sees).
    pub examples: Examples,
    /// Rows: packs of several examples, or one example each.
    pub rows: Rows,
    /// Records and examples that were dropped, by reason.
    pub skipped: BTreeMap<Problem, usize>,
    pub first_skips: BTreeMap<Problem, String>,
    pub max_length: usize,
    pub packing: bool,
    /// The name of the template used, if any.
    pub template: Option<String>,
    /// With [`PrepareOptions::report`]: the quality report.
    pub report: Option<QualityReport>,
    /// Whether the examples and rows were read from the prepared-data cache.
    pub from_cache: bool,
}

impl Prepared {
    pub fn total_tokens(&self) -> usize {
        self.examples.total_tokens()
    }

    pub fn trained_tokens(&self) -> usize {
        self.examples.trained_tokens()
    }

    /// Non-padding fraction of the rows at `max_length`.
    pub fn packing_efficiency(&self) -> f64 {
        crate::pack::packing_efficiency(self.total_tokens(), self.rows.len(), self.max_length)
    }

    /// Row `index` as one sequence (its examples with restarting positions).
    pub fn row(&self, index: usize) -> Pack {
        self.rows.row(index, &self.examples)
    }

    /// The length of row `index`, in tokens.
    pub fn row_len(&self, index: usize) -> usize {
        self.rows.len_of(index, &self.examples)
    }
}

/// What [`prepare_with`] keeps beside the examples and rows, where it caches them, and whom
/// it tells how far it got.
#[derive(Default)]
pub struct PrepareOptions<'a> {
    /// Keep the first this many records and their untruncated examples (the evaluator and
    /// `data inspect` show them; memory grows with their text). `usize::MAX` keeps all.
    pub keep_records: usize,
    /// Build the quality report while reading.
    pub report: bool,
    /// The prepared-data cache: reuse what an earlier run prepared from the same files,
    /// tokenizer, template and options; save what this one prepares.
    pub cache: Option<&'a Path>,
    /// Called after each chunk of records.
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
}

impl std::fmt::Debug for PrepareOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrepareOptions")
            .field("keep_records", &self.keep_records)
            .field("report", &self.report)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// How far preparing a dataset got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The dataset's name.
    pub dataset: String,
    /// Bytes of the dataset's files read so far, and in all.
    pub bytes: u64,
    pub total_bytes: u64,
    /// Examples prepared so far.
    pub examples: usize,
}

/// Picks the chat template for `records` (all of a dataset's, or the first of each of its
/// files; see [`DataConfig::template`]): the configured one; else `alpaca` when every record
/// is an alpaca record; else `own`, the model's own template (a GGUF's metadata, a model
/// directory's `tokenizer_config.json`); else the `tokenizer_config.json` beside the
/// tokenizer. `None` when no record needs one.
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
/// [`template_for`] picks for it (no model template).
pub fn prepare(
    dataset: &DatasetSpec,
    tokenizer: &Tokenizer,
    config: &DataConfig,
) -> Result<Prepared> {
    let template = template_for(dataset, config, tokenizer, None)?;
    prepare_with(
        dataset,
        template.as_ref(),
        tokenizer,
        config,
        PrepareOptions::default(),
    )
}

/// The chat template for `dataset`: [`resolve_template`] over the first usable record of
/// each of its files (a file's records share a format).
pub fn template_for(
    dataset: &DatasetSpec,
    config: &DataConfig,
    tokenizer: &Tokenizer,
    own: Option<ChatTemplate>,
) -> Result<Option<ChatTemplate>> {
    config.validate()?;
    let options = read_options(config);
    let mut firsts = Vec::new();
    for file in dataset.files()? {
        firsts.extend(first_record(&file, &options)?);
    }
    resolve_template(config, tokenizer, &firsts, own)
}

fn read_options(config: &DataConfig) -> ReadOptions {
    ReadOptions {
        format: config.format,
        fields: config.fields.clone(),
        on_error: config.on_error,
        drop_empty_outputs: config.drop.contains(&Filter::EmptyOutputs),
        bytes_read: None,
    }
}

/// Reads the records of every file of a dataset, in order, all at once (for small datasets
/// and tests; [`prepare_with`] streams them).
pub fn read_dataset(dataset: &DatasetSpec, config: &DataConfig) -> Result<ReadOutcome> {
    config.validate()?;
    let options = read_options(config);
    let mut outcome = ReadOutcome::default();
    for file in dataset.files()? {
        read_file_into(&file, &options, &mut outcome)?;
    }
    Ok(outcome)
}

/// Records per chunk: read in order, encoded in parallel, then folded into the examples.
const CHUNK: usize = 4_096;

/// Streams a dataset through the pipeline: reads its files record by record, renders with
/// `template`, tokenizes a chunk of records at a time in parallel, filters, truncates, and
/// packs. Only the token arrays stay in memory (and the records `keep_records` asks for). With a
/// cache, a dataset prepared before with the same files, tokenizer, template and options is
/// memory-mapped instead, and a new one is saved.
pub fn prepare_with(
    dataset: &DatasetSpec,
    template: Option<&ChatTemplate>,
    tokenizer: &Tokenizer,
    config: &DataConfig,
    mut options: PrepareOptions<'_>,
) -> Result<Prepared> {
    config.validate()?;
    let files = dataset.files()?;
    let cache = match options.cache {
        Some(root) if options.keep_records == 0 => Some(crate::cache::Entry::new(
            root, &files, template, tokenizer, config,
        )?),
        _ => None,
    };
    if let Some(prepared) = cache.as_ref().and_then(|entry| entry.load(options.report)) {
        return Ok(Prepared {
            name: dataset.to_string(),
            ..prepared
        });
    }
    let total_bytes = files
        .iter()
        .map(|file| std::fs::metadata(file).map_or(0, |m| m.len()))
        .sum();
    let read_options = read_options(config);
    let mut builder = Builder::new(template, tokenizer, config, &options);
    // Text has at least about two bytes a token: growing the token arrays by doubling would
    // copy them and fault their pages in again each time.
    builder
        .examples
        .reserve_tokens(usize::try_from(total_bytes / 2).unwrap_or(0));
    // Skips of the pipeline after reading (the reader counts its own).
    let mut outcome = ReadOutcome::default();
    let name = dataset.to_string();
    // One thread reads and parses records while the others encode the chunk before.
    let mut read = std::thread::scope(|scope| -> Result<ReadOutcome> {
        let (send, chunks) = std::sync::mpsc::sync_channel(2);
        let reader = scope.spawn(|| read_chunks(&files, read_options, send));
        let encoder = builder.encoder();
        // Each chunk is encoded while the one before it is folded into the examples. The loop
        // ends when the reader is done or fails; returning early drops `chunks`, which stops
        // the reader at its next chunk.
        let mut encoded: Option<(Encoded, u64)> = None;
        for chunk in chunks.into_iter().map(Some).chain([None]) {
            let (next, folded) = rayon::join(
                || chunk.map(|(records, bytes)| (encoder.encode(records), bytes)),
                || match encoded.take() {
                    Some((chunk, bytes)) => builder.fold(chunk, &mut outcome).map(|()| Some(bytes)),
                    None => Ok(None),
                },
            );
            if let (Some(bytes), Some(progress)) = (folded?, options.progress.as_mut()) {
                progress(&Progress {
                    dataset: name.clone(),
                    bytes,
                    total_bytes,
                    examples: builder.examples.len(),
                });
            }
            encoded = next;
        }
        reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    read.add_skips(&outcome.skipped, &outcome.first_skips);
    let prepared = builder.finish(name, read);
    Ok(match &cache {
        Some(entry) => entry.save(prepared),
        None => prepared,
    })
}

/// Reads the records of `files` in chunks of [`CHUNK`] and sends each with the bytes read so
/// far; returns the reader's counts (or its first error under `on_error = "fail"`).
fn read_chunks(
    files: &[PathBuf],
    options: ReadOptions,
    send: SyncSender<(Vec<Record>, u64)>,
) -> Result<ReadOutcome> {
    let bytes_read = Arc::new(AtomicU64::new(0));
    let options = ReadOptions {
        bytes_read: Some(bytes_read.clone()),
        ..options
    };
    let mut outcome = ReadOutcome::default();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut done = 0;
    for file in files {
        bytes_read.store(0, Ordering::Relaxed);
        read_file_each(file, &options, &mut outcome, &mut |record, _| {
            chunk.push(record);
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                let bytes = done + bytes_read.load(Ordering::Relaxed);
                // The pipeline stopped on an error of its own, which is the one reported.
                send.send((full, bytes)).map_err(|_| Error::Io {
                    path: file.clone(),
                    error: std::io::Error::other("the pipeline stopped"),
                })?;
            }
            Ok(())
        })?;
        done += std::fs::metadata(file).map_or(0, |m| m.len());
    }
    // A pipeline that stopped has its own error to report.
    let _ = send.send((chunk, done));
    Ok(outcome)
}

/// What the encoding of a chunk needs (shared by the threads that encode it).
#[derive(Clone, Copy)]
struct Encoder<'a> {
    template: Option<&'a ChatTemplate>,
    tokenizer: &'a Tokenizer,
    train_on: TrainOn,
    /// Whether duplicates are looked for.
    fingerprints: bool,
}

/// A chunk of records with their examples (or why they have none).
struct Encoded {
    records: Vec<Record>,
    examples: Vec<(Option<Fingerprint>, Result<Example>)>,
}

impl Encoder<'_> {
    /// Renders and tokenizes `records` in parallel.
    fn encode(&self, records: Vec<Record>) -> Encoded {
        let examples = records
            .par_iter()
            .map(|record| {
                let fingerprint = self
                    .fingerprints
                    .then(|| Fingerprint::of(&full_text(&record.sample)));
                let example = encode_record(record, self.template, self.train_on, self.tokenizer);
                (fingerprint, example)
            })
            .collect();
        Encoded { records, examples }
    }
}

/// The state of [`prepare_with`] between chunks.
struct Builder<'a> {
    template: Option<&'a ChatTemplate>,
    tokenizer: &'a Tokenizer,
    config: &'a DataConfig,
    truncation: Truncation,
    keep_records: usize,
    drop_exact: bool,
    drop_near: bool,
    examples: Examples,
    records: Vec<Record>,
    untruncated: Vec<Example>,
    /// When duplicates are dropped or reported.
    duplicates: Option<DuplicateFinder>,
    report: Option<ReportBuilder>,
}

impl<'a> Builder<'a> {
    fn new(
        template: Option<&'a ChatTemplate>,
        tokenizer: &'a Tokenizer,
        config: &'a DataConfig,
        options: &PrepareOptions<'_>,
    ) -> Builder<'a> {
        let drop_exact = config.drop.contains(&Filter::Duplicates);
        let drop_near = config.drop.contains(&Filter::NearDuplicates);
        Builder {
            template,
            tokenizer,
            config,
            truncation: config.effective_truncation(),
            keep_records: options.keep_records,
            drop_exact,
            drop_near,
            examples: Examples::default(),
            records: Vec::new(),
            untruncated: Vec::new(),
            duplicates: (drop_exact || drop_near || options.report).then(DuplicateFinder::default),
            report: options.report.then(ReportBuilder::default),
        }
    }

    fn encoder(&self) -> Encoder<'a> {
        Encoder {
            template: self.template,
            tokenizer: self.tokenizer,
            train_on: self.config.train_on,
            fingerprints: self.duplicates.is_some(),
        }
    }

    /// Filters, truncates and keeps the examples of an encoded chunk, in order.
    fn fold(&mut self, chunk: Encoded, outcome: &mut ReadOutcome) -> Result<()> {
        for (record, (fingerprint, example)) in chunk.records.into_iter().zip(chunk.examples) {
            let repeat = match (&mut self.duplicates, &fingerprint) {
                (Some(finder), Some(fingerprint)) => finder.observe(fingerprint, &record.at),
                _ => None,
            };
            let dropped = match repeat {
                Some(Repeat::Exact(first)) if self.drop_exact => {
                    Some((Problem::Duplicate, "the same text as", first))
                }
                Some(Repeat::Near(first)) if self.drop_near => {
                    Some((Problem::NearDuplicate, "nearly the same text as", first))
                }
                _ => None,
            };
            if let Some((problem, how, first)) = dropped {
                let first = self
                    .duplicates
                    .as_ref()
                    .map(|finder| finder.location(first).to_string())
                    .unwrap_or_default();
                let error = Error::Record {
                    at: record.at,
                    problem,
                    message: format!("{how} {first}"),
                };
                outcome.skip_or_fail(error, OnError::Skip)?;
                continue;
            }
            let example = match example {
                Ok(example) => example,
                Err(error) => {
                    outcome.skip_or_fail(error, self.config.on_error)?;
                    continue;
                }
            };
            if let Some(report) = &mut self.report {
                report.observe(&record, &example, repeat, self.config.max_length);
            }
            let untruncated = (self.records.len() < self.keep_records).then(|| example.clone());
            match truncate(example, self.config.max_length, self.truncation) {
                Ok(kept) => self.examples.push(&kept),
                Err((problem, message)) => {
                    let error = Error::Record {
                        at: record.at.clone(),
                        problem,
                        message,
                    };
                    // Dropping is what `drop` and an untrainable example ask for; `error` stops.
                    let on_error = if self.truncation == Truncation::Error {
                        self.config.on_error
                    } else {
                        OnError::Skip
                    };
                    outcome.skip_or_fail(error, on_error)?;
                }
            }
            if let Some(untruncated) = untruncated {
                self.records.push(record);
                self.untruncated.push(untruncated);
            }
        }
        Ok(())
    }

    fn finish(self, name: String, outcome: ReadOutcome) -> Prepared {
        let rows = rows_of(&self.examples, self.config);
        let mut prepared = Prepared {
            name,
            read: outcome.read,
            records: self.records,
            untruncated: self.untruncated,
            examples: self.examples,
            rows,
            skipped: outcome.skipped,
            first_skips: outcome.first_skips,
            max_length: self.config.max_length,
            packing: self.config.packing,
            template: self.template.map(|t| t.name().to_owned()),
            report: None,
            from_cache: false,
        };
        prepared.report = self.report.map(|report| report.finish(&prepared));
        prepared
    }
}

/// The rows of `examples`: packs of several (with `packing`), or one example each.
pub fn rows_of(examples: &Examples, config: &DataConfig) -> Rows {
    if config.packing {
        let lengths: Vec<usize> = (0..examples.len()).map(|i| examples.len_of(i)).collect();
        Rows::from_members(pack(&lengths, config.max_length))
    } else {
        Rows::from_members((0..examples.len()).map(|index| [index]))
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
