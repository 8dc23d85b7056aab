//! The run configuration: one TOML file with a section per concern, `--set key=value`
//! overrides, unknown keys refused by name, and the resolved file saved with the run.
//!
//! ```toml
//! [model]
//! path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"   # HF directory or .gguf
//!
//! [dataset]
//! train = "datasets/tasks/train.messages.jsonl"
//! eval = "datasets/tasks/test.messages.jsonl"
//!
//! [data]            # temper-data: template, max_length, packing, ...
//! max_length = 256
//! packing = true
//!
//! [lora]            # present: train LoRA adapters; absent: full fine-tuning
//! rank = 8
//! target_modules = ["q_proj", "v_proj"]
//!
//! [train]
//! output_dir = "runs/smollm2-tasks"
//! learning_rate = 2e-4
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use temper_data::{DataConfig, DatasetSpec, mixture};
use temper_lora::LoraConfig;
use temper_optim::{AdamWConfig, ScheduleKind};

use crate::error::{Error, Result};

/// Everything a run reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub model: ModelSection,
    pub dataset: DatasetSection,
    pub data: DataConfig,
    /// LoRA adapters; full fine-tuning when absent.
    pub lora: Option<LoraConfig>,
    pub train: TrainSection,
    /// AdamW's hyper-parameters (the learning rate and its schedule are in `train`).
    pub optimizer: AdamWConfig,
    pub eval: EvalSection,
    pub export: ExportSection,
    /// Data parallelism (docs/distributed.md).
    pub distributed: DistributedSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A Hugging Face model directory or a llama.cpp `.gguf` file.
    pub path: PathBuf,
    /// A `tokenizer.json` to use instead of the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Build the model from `path/config.json` with fresh random weights (seeded by
    /// `train.seed`) instead of loading weights: for GPT-2-shaped experiments and smoke
    /// tests without a pre-trained checkpoint.
    pub random_init: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSection {
    /// The training data: a file of any format temper-data reads, a glob or a dataset
    /// directory; or a table `{ path = "...", split = "train", ... }`; or a mixture, a list
    /// of them (`[[dataset.train]]`, see [`temper_data::mixture`]).
    #[serde(
        deserialize_with = "temper_data::mixture::deserialize_sources",
        serialize_with = "temper_data::mixture::serialize_sources"
    )]
    pub train: Vec<mixture::Source>,
    /// Held-out data for evaluation, named the same ways; none means no evaluation.
    pub eval: Option<DatasetSpec>,
}

/// Data parallelism: `world_size` ranks in all, each holding the model and training on its
/// share of every step's rows, over `nodes` processes (machines) of `world_size / nodes`
/// ranks each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSection {
    /// Ranks in all: a step trains on `batch_size x gradient_accumulation_steps x world_size`
    /// rows.
    pub world_size: usize,
    /// Processes, one per machine; node 0 writes the run's files.
    pub nodes: usize,
    /// This process's node, `0..nodes`.
    pub node_rank: usize,
    /// `HOST:PORT` where node 0 runs the orchestrator that joins the nodes; node `n` also
    /// listens on `PORT + 1 + n`.
    pub coordinator: String,
    /// Seconds a rank waits for the others in a collective operation (joining, an
    /// all-reduce) before it stops the run naming whom it waited for. Rank 0's evaluations
    /// happen while the others wait, so this must cover them.
    pub timeout_seconds: u64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        DistributedSection {
            world_size: 1,
            nodes: 1,
            node_rank: 0,
            coordinator: "127.0.0.1:29500".into(),
            timeout_seconds: 600,
        }
    }
}

impl DistributedSection {
    /// The ranks' topology.
    pub fn topology(&self) -> crate::distributed::Topology {
        crate::distributed::Topology {
            world_size: self.world_size,
            nodes: self.nodes,
            node_rank: self.node_rank,
            coordinator: self.coordinator.clone(),
            timeout: std::time::Duration::from_secs(self.timeout_seconds),
        }
    }
}

/// Optimisation and bookkeeping, with TRL's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Where checkpoints, metrics, the loss plot and exports go.
    pub output_dir: PathBuf,
    pub seed: u64,
    pub learning_rate: f64,
    pub lr_scheduler: ScheduleKind,
    pub warmup_steps: u64,
    /// Fraction of the steps used for warmup, when `warmup_steps` is 0.
    pub warmup_ratio: f64,
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub max_grad_norm: f64,
    /// Rows per micro-batch.
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub num_train_epochs: u64,
    /// Stop after this many optimizer steps (0: run `num_train_epochs`).
    pub max_steps: u64,
    /// Write a metrics line every this many steps.
    pub logging_steps: u64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_steps: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_steps: u64,
    /// Keep this many checkpoints (the newest).
    pub save_total_limit: usize,
    /// NEFTune: uniform noise of this scale on the input embeddings while training.
    pub neftune_noise_alpha: Option<f64>,
    /// Activation checkpointing: recompute cheap activations in the backward pass instead
    /// of keeping them (burn's balanced checkpointing strategy), trading time for memory.
    pub gradient_checkpointing: bool,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            output_dir: PathBuf::from("runs/temper"),
            seed: 42,
            learning_rate: 2e-5,
            lr_scheduler: ScheduleKind::Cosine,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            min_lr_ratio: 0.0,
            max_grad_norm: 1.0,
            batch_size: 8,
            gradient_accumulation_steps: 1,
            num_train_epochs: 1,
            max_steps: 0,
            logging_steps: 1,
            eval_steps: 0,
            save_steps: 0,
            save_total_limit: 2,
            neftune_noise_alpha: None,
            gradient_checkpointing: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Evaluate the loss on at most this many held-out rows (0: all).
    pub max_rows: usize,
    /// Generate answers for this many held-out chat examples and report exact-match
    /// accuracy against their last assistant message (0: none).
    pub generate_examples: usize,
    /// Longest generated answer.
    pub max_new_tokens: usize,
    /// Also measure exact match before the first step.
    pub before_training: bool,
    /// Also answer the held-out examples at every `train.eval_steps` (into
    /// `output_dir/eval/step-N`), not only before and after training.
    pub during_training: bool,
    /// Answers sampled per example besides the greedy one (0: none), at `temperature`:
    /// the share that match, and whether any does (pass@k).
    pub samples: usize,
    pub temperature: f64,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            max_rows: 0,
            generate_examples: 0,
            max_new_tokens: 32,
            before_training: false,
            during_training: false,
            samples: 0,
            temperature: 0.7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Write the adapter in PEFT's format to `output_dir/adapter` (LoRA runs).
    pub adapter: bool,
    /// Write the model (merged with its adapter, if any) as a Hugging Face directory to
    /// `output_dir/merged`.
    pub merged: bool,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection {
            adapter: true,
            merged: false,
        }
    }
}

impl RunConfig {
    /// Reads `path`, applies `overrides` (`key.path=value`, the value in TOML syntax or a
    /// bare string) and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig> {
        let file = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| crate::error::io(path, source))?;
        let source = Source {
            file: &file,
            text: &text,
            overrides,
        };
        // The file alone first, so that its errors carry their line.
        let mut document: toml::Table = toml::from_str(&text).map_err(|e| source.error(&e))?;
        toml::from_str::<RunConfig>(&text).map_err(|e| source.error(&e))?;
        // Then each override, blamed for what it breaks.
        for assignment in overrides {
            apply_override(&mut document, assignment)?;
            RunConfig::deserialize(toml::Value::Table(document.clone())).map_err(|e| {
                Error::Config {
                    file: format!("--set {assignment}"),
                    key: override_key(assignment).to_owned(),
                    reason: e.message().to_owned(),
                }
            })?;
        }
        let config = Self::from_table(document, &file)?;
        config.validate(&file).map_err(|error| match error {
            Error::Config { key, reason, .. } => Error::Config {
                file: source.origin(&key),
                key,
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// From a TOML document, refusing unknown keys by name.
    pub fn from_table(document: toml::Table, file: &str) -> Result<RunConfig> {
        RunConfig::deserialize(toml::Value::Table(document)).map_err(|e| Error::Config {
            file: file.to_owned(),
            key: toml_error_key(&e),
            reason: e.message().to_owned(),
        })
    }

    /// Checks what serde cannot.
    pub fn validate(&self, file: &str) -> Result<()> {
        let fail = |key: &str, reason: &str| {
            Err(Error::Config {
                file: file.to_owned(),
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.model.path.as_os_str().is_empty() {
            return fail(
                "model.path",
                "is required: a Hugging Face model directory or a .gguf file",
            );
        }
        if self.dataset.train.is_empty()
            || self
                .dataset
                .train
                .iter()
                .any(|source| source.path.as_os_str().is_empty())
        {
            return fail("dataset.train", "is required: the training file");
        }
        match temper_data::mixture::validate_sources(&self.dataset.train) {
            Err(temper_data::Error::Config { key, message }) => return fail(&key, &message),
            Err(other) => return Err(other.into()),
            Ok(()) => {}
        }
        let t = &self.train;
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return fail("train.learning_rate", "must be a positive number");
        }
        if t.batch_size == 0 {
            return fail("train.batch_size", "must be at least 1");
        }
        if t.gradient_accumulation_steps == 0 {
            return fail("train.gradient_accumulation_steps", "must be at least 1");
        }
        if t.batch_size
            .checked_mul(t.gradient_accumulation_steps)
            .is_none()
        {
            return fail(
                "train.gradient_accumulation_steps",
                "times train.batch_size is more rows than can be counted",
            );
        }
        if t.max_steps == 0 && t.num_train_epochs == 0 {
            return fail("train.max_steps", "give max_steps or num_train_epochs");
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return fail("train.warmup_ratio", "must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return fail("train.min_lr_ratio", "must be in [0, 1]");
        }
        if t.save_total_limit == 0 {
            return fail("train.save_total_limit", "must be at least 1");
        }
        let d = &self.distributed;
        if d.world_size == 0 {
            return fail("distributed.world_size", "must be at least 1");
        }
        if d.nodes == 0 || !d.world_size.is_multiple_of(d.nodes) {
            return fail(
                "distributed.nodes",
                &format!(
                    "must be at least 1 and divide distributed.world_size ({}): every node runs as many ranks",
                    d.world_size
                ),
            );
        }
        if d.node_rank >= d.nodes {
            return fail(
                "distributed.node_rank",
                &format!("must be below distributed.nodes ({})", d.nodes),
            );
        }
        let port = crate::distributed::split_address(&d.coordinator)
            .filter(|(_, port)| usize::from(*port) + d.nodes < 65536);
        if d.nodes > 1 && port.is_none() {
            return fail(
                "distributed.coordinator",
                "must be HOST:PORT, with PORT + nodes below 65536 (node n listens on PORT + 1 + n)",
            );
        }
        if d.timeout_seconds == 0 {
            return fail("distributed.timeout_seconds", "must be at least 1");
        }
        let e = &self.eval;
        if e.samples > 0 && !(e.temperature.is_finite() && e.temperature > 0.0) {
            return fail("eval.temperature", "must be above 0 to sample answers");
        }
        if e.during_training && t.eval_steps == 0 {
            return fail(
                "eval.during_training",
                "needs train.eval_steps: how many steps apart to answer",
            );
        }
        if let Some(lora) = &self.lora {
            lora.targets().map_err(|e| Error::Config {
                file: file.to_owned(),
                key: "lora".into(),
                reason: e.to_string(),
            })?;
        } else if self.export.adapter && self.export.merged {
            // Full fine-tuning has no adapter to export; `merged` is the model itself.
        }
        self.data.validate()?;
        Ok(())
    }

    /// The configuration as TOML (what a run saves as `config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the run configuration serialises")
    }
}

/// The dotted key a TOML/serde error is about, when its message names one.
fn toml_error_key(error: &toml::de::Error) -> String {
    let message = error.message();
    message
        .split('`')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| "(file)".to_owned())
}

/// The key an override `key.path=value` sets.
fn override_key(assignment: &str) -> &str {
    assignment
        .split_once('=')
        .map_or(assignment, |(key, _)| key.trim())
}

/// Where a configuration's values come from: a TOML file and `--set` overrides. Errors say
/// `FILE:LINE` for a value from the file and `--set KEY=VALUE` for an override.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
    overrides: &'a [String],
}

impl Source<'_> {
    /// An error of the file's TOML: at the line its span starts on, about the key written
    /// there (or, for a syntax error, the key its message names).
    fn error(&self, error: &toml::de::Error) -> Error {
        let at = error.span().map(|span| span.start);
        let line = at.map(|at| self.text[..at.min(self.text.len())].matches('\n').count() + 1);
        let key = line
            .and_then(|line| self.keys().find(|(_, l)| *l == line).map(|(key, _)| key))
            .unwrap_or_else(|| toml_error_key(error));
        Error::Config {
            file: match line {
                Some(line) => format!("{}:{line}", self.file),
                None => self.file.to_owned(),
            },
            key,
            reason: error.message().to_owned(),
        }
    }

    /// Where `key` (`train.batch_size`, or a section such as `lora`) was set: the override
    /// that set it, else its line in the file.
    fn origin(&self, key: &str) -> String {
        if let Some(assignment) = self
            .overrides
            .iter()
            .rev()
            .find(|assignment| override_key(assignment) == key)
        {
            return format!("--set {assignment}");
        }
        match self.keys().find(|(k, _)| k == key) {
            Some((_, line)) => format!("{}:{line}", self.file),
            None => self.file.to_owned(),
        }
    }

    /// Every section header and `key = value` line of the file as `(dotted key, line)`.
    fn keys(&self) -> impl Iterator<Item = (String, usize)> + '_ {
        let mut section = String::new();
        self.text
            .lines()
            .enumerate()
            .filter_map(move |(index, line)| {
                let line = line.trim();
                if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    section = header.trim().to_owned();
                    return Some((section.clone(), index + 1));
                }
                let (key, _) = line.split_once('=')?;
                let key = key.trim().trim_matches('"');
                if key.is_empty() || key.starts_with('#') {
                    return None;
                }
                let full = if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                };
                Some((full, index + 1))
            })
    }
}

/// Sets `key.path=value` in `document`.
fn apply_override(document: &mut toml::Table, assignment: &str) -> Result<()> {
    let bad = |reason: &str| Error::Config {
        file: "--set".into(),
        key: assignment.to_owned(),
        reason: reason.to_owned(),
    };
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. train.learning_rate=1e-4"))?;
    let key = key.trim();
    // A TOML value when it parses as one (numbers, booleans, arrays, quoted strings), else
    // the text itself as a string.
    let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key component"));
    }
    let mut table = document;
    for part in &parts[..parts.len() - 1] {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{part}` is a value, not a section")))?;
    }
    table.insert(parts[parts.len() - 1].to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, overrides: &[&str]) -> Result<RunConfig> {
        let mut document: toml::Table = toml::from_str(text).unwrap();
        for o in overrides {
            apply_override(&mut document, o)?;
        }
        let config = RunConfig::from_table(document, "run.toml")?;
        config.validate("run.toml")?;
        Ok(config)
    }

    const MINIMAL: &str = "[model]\npath = \"m\"\n[dataset]\ntrain = \"t.jsonl\"\n";

    #[test]
    fn data_parallel_settings_that_cannot_work_are_refused_by_key() {
        let error = |overrides: &[&str]| parse(MINIMAL, overrides).unwrap_err().to_string();
        assert!(
            error(&["distributed.world_size=0"])
                .starts_with("run.toml: distributed.world_size: must be at least 1")
        );
        let three_nodes = error(&["distributed.world_size=2", "distributed.nodes=3"]);
        assert!(
            three_nodes.starts_with("run.toml: distributed.nodes: must be at least 1 and divide distributed.world_size (2)"),
            "{three_nodes}"
        );
        assert!(
            error(&[
                "distributed.world_size=2",
                "distributed.nodes=2",
                "distributed.node_rank=2"
            ])
            .contains("distributed.node_rank: must be below distributed.nodes (2)")
        );
        for coordinator in ["'localhost'", "':29500'", "'host:65535'"] {
            let message = error(&[
                "distributed.world_size=2",
                "distributed.nodes=2",
                &format!("distributed.coordinator={coordinator}"),
            ]);
            assert!(
                message.contains("distributed.coordinator: must be HOST:PORT"),
                "{message}"
            );
        }
        let fine = parse(
            MINIMAL,
            &["distributed.world_size=4", "distributed.nodes=2"],
        )
        .unwrap();
        assert_eq!(fine.distributed.topology().local_ranks(), 2);
    }

    #[test]
    fn overrides_set_nested_keys_with_toml_values() {
        let config = parse(
            MINIMAL,
            &[
                "train.learning_rate=1e-4",
                "lora.target_modules=[\"c_attn\"]",
                "train.output_dir=runs/x",
            ],
        )
        .unwrap();
        assert_eq!(config.train.learning_rate, 1e-4);
        assert_eq!(config.train.output_dir, PathBuf::from("runs/x"));
        let lora = config.lora.unwrap();
        assert_eq!(
            lora.target_modules,
            temper_lora::TargetModules::Names(vec!["c_attn".into()])
        );
        assert_eq!(lora.rank, 8);
    }

    #[test]
    fn training_data_is_a_path_a_table_or_a_mixture() {
        let config = parse(
            "[model]\npath = \"m\"\n[dataset]\ntrain = { path = \"gsm8k\", split = \"train\" }\neval = { path = \"gsm8k\", split = \"test\" }\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.dataset.train[0].dataset().to_string(),
            "gsm8k (split train)"
        );
        let eval = config.dataset.eval.as_ref().unwrap();
        assert_eq!(eval.split.as_deref(), Some("test"));

        let mixture = "[model]\npath = \"m\"\n[[dataset.train]]\npath = \"a.parquet\"\nexamples = 10\n[[dataset.train]]\npath = \"b.csv\"\nweight = 0.5\nfields = { instruction = \"q\" }\n";
        let config = parse(mixture, &[]).unwrap();
        assert_eq!(config.dataset.train.len(), 2);
        assert_eq!(config.dataset.train[0].examples, Some(10));
        let fields = config.dataset.train[1].fields.as_ref().unwrap();
        assert_eq!(
            (fields.instruction.as_str(), fields.output.as_str()),
            ("q", "output")
        );
        // The saved configuration reads back the same (a resume reads it); one plain path
        // is saved as the path, as before mixtures.
        let saved = parse(&config.to_toml(), &[]).unwrap();
        assert_eq!(saved.dataset, config.dataset);
        let plain = parse(MINIMAL, &[]).unwrap().to_toml();
        assert!(plain.contains("train = \"t.jsonl\"\n"), "{plain}");

        let both = mixture.replace("weight = 0.5", "weight = 0.5\nexamples = 3");
        let error = parse(&both, &[]).unwrap_err().to_string();
        assert_eq!(
            error,
            "run.toml: dataset.train[1]: set `weight` or `examples`, not both"
        );
        let typo = mixture.replace("weight = 0.5", "wieght = 0.5");
        let error = parse(&typo, &[]).unwrap_err().to_string();
        assert!(error.contains("unknown field `wieght`"), "{error}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = parse(MINIMAL, &["train.lerning_rate=1"])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("run.toml: lerning_rate: unknown field `lerning_rate`"),
            "{error}"
        );
        let error = parse(&format!("{MINIMAL}[trian]\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("run.toml: trian: unknown field `trian`"),
            "{error}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let error = parse(MINIMAL, &["train.batch_size=0"])
            .unwrap_err()
            .to_string();
        assert_eq!(error, "run.toml: train.batch_size: must be at least 1");
        let error = parse(MINIMAL, &["train.batch_size=many"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("batch_size") || error.contains("invalid type"),
            "{error}"
        );
        let error = parse(
            MINIMAL,
            &[
                "train.batch_size=4294967296",
                "train.gradient_accumulation_steps=4294967296",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("more rows than can be counted"), "{error}");
        let error = parse(MINIMAL, &["lora.rank=0"]).unwrap_err().to_string();
        assert_eq!(error, "run.toml: lora: lora.rank: must be at least 1");
        let error = parse(MINIMAL, &["nonsense"]).unwrap_err().to_string();
        assert!(error.contains("expected KEY=VALUE"), "{error}");
        let error = parse(MINIMAL, &["eval.samples=4", "eval.temperature=0"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "run.toml: eval.temperature: must be above 0 to sample answers"
        );
        let error = parse(MINIMAL, &["eval.during_training=true"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("train.eval_steps"), "{error}");
    }

    /// The error of loading `text` from a file with `overrides`.
    fn load_error(text: &str, overrides: &[&str]) -> String {
        let path = std::env::temp_dir().join(format!(
            "temper-config-{}-{}.toml",
            std::process::id(),
            text.len() + overrides.len()
        ));
        std::fs::write(&path, text).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|o| o.to_string()).collect();
        let error = RunConfig::load(&path, &overrides).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        error.replace(&path.display().to_string(), "run.toml")
    }

    #[test]
    fn errors_say_file_and_line_or_the_override_and_the_key() {
        let file = format!("{MINIMAL}[train]\nseed = 1\nbatch_size = -1\n");
        let error = load_error(&file, &[]);
        assert!(
            error.starts_with("run.toml:7: train.batch_size: "),
            "{error}"
        );
        let error = load_error(&format!("{MINIMAL}[train]\nlerning_rate = 1\n"), &[]);
        assert!(
            error.starts_with("run.toml:6: train.lerning_rate: unknown field `lerning_rate`"),
            "{error}"
        );
        let error = load_error(&format!("{MINIMAL}[train]\nseed = = 1\n"), &[]);
        assert!(error.starts_with("run.toml:6: "), "{error}");
        let error = load_error(MINIMAL, &["train.batch_size=two"]);
        assert!(
            error.starts_with("--set train.batch_size=two: train.batch_size: invalid type"),
            "{error}"
        );
        let error = load_error(&format!("{MINIMAL}[train]\nbatch_size = 0\n"), &[]);
        assert_eq!(error, "run.toml:6: train.batch_size: must be at least 1");
        let error = load_error(MINIMAL, &["train.batch_size=0"]);
        assert_eq!(
            error,
            "--set train.batch_size=0: train.batch_size: must be at least 1"
        );
    }

    #[test]
    fn the_optimizer_section_is_adamws_configuration() {
        let config = parse(
            &format!("{MINIMAL}[optimizer]\nweight_decay = 0.1\n"),
            &["optimizer.no_decay=[\"bias\"]"],
        )
        .unwrap();
        assert_eq!(config.optimizer.weight_decay, 0.1);
        assert_eq!(config.optimizer.no_decay, ["bias"]);
        assert_eq!(
            config.optimizer.adam_beta2, 0.999,
            "unset keys keep AdamW's defaults"
        );
        let error = parse(MINIMAL, &["train.weight_decay=0.1"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `weight_decay`"), "{error}");
    }

    #[test]
    fn the_saved_config_reads_back_equal() {
        let config = parse(MINIMAL, &["lora.rank=4"]).unwrap();
        let again = RunConfig::from_table(toml::from_str(&config.to_toml()).unwrap(), "x").unwrap();
        assert_eq!(again, config);
    }
}
