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
use crate::pipeline::{DataConfig, PrepareOptions, Prepared, prepare_with, rows_of, template_for};
use crate::records::{FieldNames, Format, ReadOutcome};
use crate::report::QualityReport;
use crate::shuffle::epoch_order;
use crate::store::Examples;
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
/// sources that do not name one; `options`: the cache and progress, the report is always
/// built), takes each one's share (seeded by `seed`), and packs the examples together. One
/// source with neither `weight` nor `examples` gives exactly what [`crate::prepare_with`]
/// gives.
pub fn prepare_mixture(
    sources: &[Source],
    data: &DataConfig,
    tokenizer: &Tokenizer,
    own: Option<ChatTemplate>,
    seed: u64,
    mut options: PrepareOptions<'_>,
) -> Result<Mixture> {
    validate_sources(sources)?;
    let mut parts = Vec::with_capacity(sources.len());
    let mut template = None;
    for (index, source) in sources.iter().enumerate() {
        let config = source.data_config(data);
        let dataset = source.dataset();
        let resolved = template_for(&dataset, &config, tokenizer, own.clone())?;
        let part_options = PrepareOptions {
            keep_records: 0,
            report: true,
            cache: options.cache.filter(|_| config.cache),
            progress: match &mut options.progress {
                Some(progress) => Some(&mut **progress),
                None => None,
            },
        };
        let prepared = prepare_with(
            &dataset,
            resolved.as_ref(),
            tokenizer,
            &config,
            part_options,
        )?;
        if index == 0 {
            template = resolved;
        }
        parts.push(prepared);
    }
    let report = |part: &Prepared| part.report.clone().into_iter();
    let plain = sources.len() == 1 && sources[0].weight.is_none() && sources[0].examples.is_none();
    if plain && let Some(prepared) = parts.pop() {
        let all: Vec<usize> = (0..prepared.examples.len()).collect();
        return Ok(Mixture {
            reports: report(&prepared).collect(),
            shares: vec![share(&prepared, &all)],
            prepared,
            template,
        });
    }

    let mut examples = Examples::default();
    let mut shares = Vec::with_capacity(parts.len());
    for (index, (source, part)) in sources.iter().zip(&parts).enumerate() {
        let chosen = choose(
            part.examples.len(),
            source.count(part.examples.len()),
            seed,
            index,
        );
        for &i in &chosen {
            examples.push_ref(part.examples.get(i));
        }
        shares.push(share(part, &chosen));
    }
    let total_trained = examples.trained_tokens();
    for share in &mut shares {
        share.trained_token_share = share.trained_tokens as f64 / total_trained.max(1) as f64;
    }
    let mut skips = ReadOutcome::default();
    for part in &parts {
        skips.add_skips(&part.skipped, &part.first_skips);
    }
    let prepared = Prepared {
        name: sources_name(sources),
        read: parts.iter().map(|part| part.read).sum(),
        records: Vec::new(),
        untruncated: Vec::new(),
        rows: rows_of(&examples, data),
        examples,
        skipped: skips.skipped,
        first_skips: skips.first_skips,
        max_length: data.max_length,
        packing: data.packing,
        template: parts[0].template.clone(),
        report: None,
        from_cache: parts.iter().all(|part| part.from_cache),
    };
    Ok(Mixture {
        prepared,
        template,
        reports: parts.iter().flat_map(report).collect(),
        shares,
    })
}

/// What `part` gives when the examples `chosen` are taken from it.
fn share(part: &Prepared, chosen: &[usize]) -> SourceShare {
    SourceShare {
        dataset: part.name.clone(),
        available: part.examples.len(),
        taken: chosen.len(),
        trained_tokens: chosen
            .iter()
            .map(|&i| part.examples.get(i).trained_tokens())
            .sum(),
        trained_token_share: 1.0,
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
