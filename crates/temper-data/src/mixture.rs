//! Training on several datasets at once: each with its own format, field names and
//! template, and a share set by a weight or a fixed number of examples.
//!
//! ```toml
//! [[dataset.train]]
//! path = "../shared/data/gsm8k"
//! split = "train"
//! fields = { instruction = "question", output = "answer" }
//! examples = 2000                  # a seeded sample of 2,000 examples
//!
//! [[dataset.train]]
//! path = "datasets/tasks/train.messages.jsonl"
//! weight = 2.0                     # every example twice
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use temper_chat::ChatTemplate;

use crate::dataset::DatasetSpec;
use crate::error::{Error, Result};
use crate::example::Example;
use crate::pipeline::{
    DataConfig, Prepared, prepare_records, read_dataset, resolve_template, rows_of,
};
use crate::records::{FieldNames, Format};
use crate::report::QualityReport;
use crate::shuffle::epoch_order;
use crate::tokenize::Tokenizer;

/// One dataset of a training mixture. Unset keys take the `[data]` section's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A file, a glob or a dataset directory.
    pub path: PathBuf,
    /// The split of a directory (`train` by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Field names for this dataset (replacing `[data] fields`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldNames>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// How many times each example is taken: 0.5 takes a seeded half, 2.0 each one twice
    /// (1.0 when neither this nor `examples` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Exactly this many examples: a seeded sample, or every example repeated and a sample
    /// of the rest when the dataset has fewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples: Option<usize>,
}

impl Source {
    pub fn dataset(&self) -> DatasetSpec {
        DatasetSpec::new(self.path.clone(), self.split.clone())
    }

    /// `data` with this source's format, field names and template.
    pub fn data_config(&self, data: &DataConfig) -> DataConfig {
        DataConfig {
            format: self.format.or(data.format),
            fields: self.fields.clone().unwrap_or_else(|| data.fields.clone()),
            template: self.template.clone().or_else(|| data.template.clone()),
            ..data.clone()
        }
    }

    /// Checks `weight` and `examples`; `key` names the source (`dataset.train[1]`).
    pub fn validate(&self, key: &str) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Config {
                key: key.to_owned(),
                message,
            })
        };
        match (self.weight, self.examples) {
            (Some(_), Some(_)) => fail("set `weight` or `examples`, not both".into()),
            (Some(weight), None) if !(weight.is_finite() && weight > 0.0) => {
                fail(format!("`weight` must be a positive number, got {weight}"))
            }
            (None, Some(0)) => fail("`examples` must be at least 1".into()),
            _ => Ok(()),
        }
    }

    /// How many of `available` examples this source contributes.
    fn count(&self, available: usize) -> usize {
        match (self.examples, self.weight) {
            (Some(count), _) => count,
            (None, Some(weight)) => (weight * available as f64).round() as usize,
            (None, None) => available,
        }
    }
}

impl From<DatasetSpec> for Source {
    fn from(spec: DatasetSpec) -> Self {
        Source {
            path: spec.path,
            split: spec.split,
            ..Source::default()
        }
    }
}

/// Reads `dataset.train` as one path, one table, or a list of either (`[[dataset.train]]`).
pub fn deserialize_sources<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<Source>, D::Error> {
    struct One(Source);
    struct OneVisitor;
    impl<'de> serde::de::Visitor<'de> for OneVisitor {
        type Value = One;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a path or a table with `path`")
        }
        fn visit_str<E: serde::de::Error>(self, path: &str) -> std::result::Result<One, E> {
            Ok(One(DatasetSpec::from(path).into()))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<One, A::Error> {
            Source::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(One)
        }
    }
    impl<'de> Deserialize<'de> for One {
        fn deserialize<D: serde::Deserializer<'de>>(
            deserializer: D,
        ) -> std::result::Result<One, D::Error> {
            deserializer.deserialize_any(OneVisitor)
        }
    }
    struct ListVisitor;
    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<Source>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a path, a table with `path`, or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, path: &str) -> std::result::Result<Self::Value, E> {
            OneVisitor.visit_str(path).map(|one| vec![one.0])
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            OneVisitor.visit_map(map).map(|one| vec![one.0])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut sources = Vec::new();
            while let Some(One(source)) = seq.next_element()? {
                sources.push(source);
            }
            Ok(sources)
        }
    }
    deserializer.deserialize_any(ListVisitor)
}

/// Writes `dataset.train` back as [`deserialize_sources`] reads it: one dataset named by its
/// path alone as that path (as configurations written before mixtures have it), anything
/// else as a list of tables.
pub fn serialize_sources<S: serde::Serializer>(
    sources: &[Source],
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    match sources {
        [only] if *only == Source::from(DatasetSpec::from(only.path.clone())) => {
            only.path.serialize(serializer)
        }
        _ => sources.serialize(serializer),
    }
}

/// Checks every source's `weight` and `examples`, naming it as `dataset.train[i]`.
pub fn validate_sources(sources: &[Source]) -> Result<()> {
    if sources.is_empty() {
        return Err(Error::Config {
            key: "dataset.train".into(),
            message: "names no dataset".into(),
        });
    }
    for (index, source) in sources.iter().enumerate() {
        match sources.len() {
            1 => source.validate("dataset.train")?,
            _ => source.validate(&format!("dataset.train[{index}]"))?,
        }
    }
    Ok(())
}

/// The names of `sources`, joined: how a run names its training data.
pub fn sources_name(sources: &[Source]) -> String {
    sources
        .iter()
        .map(|source| source.dataset().to_string())
        .collect::<Vec<_>>()
        .join(" + ")
}

/// What one dataset of a mixture gave.
#[derive(Debug, Clone, Serialize)]
pub struct SourceShare {
    pub dataset: String,
    /// Examples after reading, rendering and truncation.
    pub available: usize,
    /// Examples taken into the mixture.
    pub taken: usize,
    pub trained_tokens: usize,
    /// This dataset's part of the mixture's trained tokens.
    pub trained_token_share: f64,
}

/// A prepared mixture: the combined rows, and each dataset's report and share.
#[derive(Debug)]
pub struct Mixture {
    /// The examples taken from every dataset, packed (or padded) together.
    pub prepared: Prepared,
    /// The template of the first dataset (prompts for generation use it).
    pub template: Option<ChatTemplate>,
    pub reports: Vec<QualityReport>,
    pub shares: Vec<SourceShare>,
}

/// Reads and prepares every source with its own settings (`own`: the model's template, for
/// sources that do not name one), takes each one's share (seeded by `seed`), and packs the
/// examples together. One source with neither `weight` nor `examples` gives exactly what
/// [`crate::prepare`] gives.
pub fn prepare_mixture(
    sources: &[Source],
    data: &DataConfig,
    tokenizer: &Tokenizer,
    own: Option<ChatTemplate>,
    seed: u64,
) -> Result<Mixture> {
    validate_sources(sources)?;
    let mut parts = Vec::with_capacity(sources.len());
    let mut template = None;
    for (index, source) in sources.iter().enumerate() {
        let config = source.data_config(data);
        let dataset = source.dataset();
        let read = read_dataset(&dataset, &config)?;
        let resolved = resolve_template(&config, tokenizer, &read.records, own.clone())?;
        let prepared = prepare_records(
            &dataset.to_string(),
            read,
            resolved.as_ref(),
            tokenizer,
            &config,
        )?;
        if index == 0 {
            template = resolved;
        }
        parts.push(prepared);
    }
    let plain = sources.len() == 1 && sources[0].weight.is_none() && sources[0].examples.is_none();
    if plain && let Some(prepared) = parts.pop() {
        return Ok(Mixture {
            reports: vec![QualityReport::build(&prepared)],
            shares: vec![share(
                &prepared,
                prepared.examples.len(),
                &prepared.examples,
            )],
            prepared,
            template,
        });
    }

    let mut examples = Vec::new();
    let mut taken_per_source = Vec::with_capacity(parts.len());
    for (index, (source, part)) in sources.iter().zip(&parts).enumerate() {
        let count = source.count(part.examples.len());
        let chosen = choose(part.examples.len(), count, seed, index);
        let start = examples.len();
        examples.extend(chosen.iter().map(|&i| part.examples[i].clone()));
        taken_per_source.push(start..examples.len());
    }
    let total_trained: usize = examples.iter().map(Example::trained_tokens).sum();
    let shares = parts
        .iter()
        .zip(&taken_per_source)
        .map(|(part, range)| {
            let mut share = share(part, range.len(), &examples[range.clone()]);
            share.trained_token_share = share.trained_tokens as f64 / total_trained.max(1) as f64;
            share
        })
        .collect();
    let reports = parts.iter().map(QualityReport::build).collect();
    let mut combined = empty_like(&parts[0]);
    combined.name = sources_name(sources);
    for part in parts {
        combined.records.extend(part.records);
        combined.untruncated.extend(part.untruncated);
        for (problem, count) in part.skipped {
            *combined.skipped.entry(problem).or_default() += count;
        }
        for (problem, first) in part.first_skips {
            combined.first_skips.entry(problem).or_insert(first);
        }
    }
    combined.rows = rows_of(&examples, data);
    combined.examples = examples;
    Ok(Mixture {
        prepared: combined,
        template,
        reports,
        shares,
    })
}

fn share(part: &Prepared, taken: usize, examples: &[Example]) -> SourceShare {
    SourceShare {
        dataset: part.name.clone(),
        available: part.examples.len(),
        taken,
        trained_tokens: examples.iter().map(Example::trained_tokens).sum(),
        trained_token_share: 1.0,
    }
}

/// `prepared`'s settings with no records, examples or rows.
fn empty_like(prepared: &Prepared) -> Prepared {
    Prepared {
        name: prepared.name.clone(),
        records: Vec::new(),
        untruncated: Vec::new(),
        examples: Vec::new(),
        rows: Vec::new(),
        skipped: Default::default(),
        first_skips: Default::default(),
        max_length: prepared.max_length,
        packing: prepared.packing,
        template: prepared.template.clone(),
    }
}

/// `count` indices of `0..available`: every index `count / available` times, then a seeded
/// sample of the rest, in file order.
fn choose(available: usize, count: usize, seed: u64, source: usize) -> Vec<usize> {
    if available == 0 {
        return Vec::new();
    }
    let mut chosen: Vec<usize> = (0..count / available).flat_map(|_| 0..available).collect();
    let mut rest = epoch_order(available, seed, source as u64 + 1);
    rest.truncate(count % available);
    rest.sort_unstable();
    chosen.extend(rest);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_repeat_whole_datasets_then_sample_the_rest() {
        assert_eq!(choose(3, 7, 1, 0)[..6], [0, 1, 2, 0, 1, 2]);
        assert_eq!(choose(3, 7, 1, 0).len(), 7);
        let half = choose(10, 5, 1, 0);
        assert_eq!(half.len(), 5);
        assert!(half.windows(2).all(|w| w[0] < w[1]), "{half:?}");
        assert_eq!(half, choose(10, 5, 1, 0), "seeded");
        assert_ne!(half, choose(10, 5, 1, 1), "each source has its own sample");
        let source = Source {
            weight: Some(0.5),
            ..Source::default()
        };
        assert_eq!(source.count(7), 4);
        let error = Source {
            weight: Some(1.0),
            examples: Some(3),
            ..Source::default()
        }
        .validate("dataset.train[1]")
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid `dataset.train[1]`: set `weight` or `examples`, not both"
        );
    }
}
