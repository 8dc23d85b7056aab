//! Checkpoints: everything needed to continue a run exactly where it stopped.
//!
//! ```text
//! output_dir/checkpoint-000040/
//!   adapter/                 LoRA runs: the adapter in PEFT's format
//!   model/                   full fine-tuning: config.json + model.safetensors
//!   optimizer.safetensors    AdamW moments by parameter path (`{path}.exp_avg(_sq)`)
//!   trainer_state.json       format version, step, data-loader position, per-parameter
//!                            update counts
//! ```
//!
//! Parameters are named by their Hugging Face keys (`temper-store`'s paths), in the
//! optimizer file as in the adapter and model files.
//!
//! A checkpoint is written into a temporary directory and renamed into place, so a kill
//! leaves either the whole checkpoint or none; only the newest `save_total_limit` are kept.
//! Random state needs no saving: the backend is reseeded from `(seed, step)` before every
//! step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use temper_data::SamplerState;
use temper_lora::LoraConfig;
use temper_models::CausalLm;
use temper_optim::{AdamW, AdamWState, ParamMoments};
use temper_store::AtomicDir;

use crate::config::RunConfig;
use crate::error::{Error, Result, io};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const ADAPTER_DIR: &str = "adapter";
pub const MODEL_DIR: &str = "model";

/// The checkpoint layout this version writes and reads. Version 2 keys the optimizer's
/// moments by Hugging Face parameter path (`model.layers.0...`); version 1 (no `format` in
/// `trainer_state.json`) keyed them by burn's module path (`Llama.model.layers.0...`).
pub const FORMAT_VERSION: u32 = 2;

/// The small part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The checkpoint layout ([`FORMAT_VERSION`]); absent in checkpoints of version 1.
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Steps the run was planned for.
    pub total_steps: u64,
    /// The data loader's position after `step`.
    pub sampler: SamplerState,
    /// AdamW update count per parameter path.
    pub param_steps: BTreeMap<String, u64>,
    /// Training loss of the last step.
    pub loss: f64,
    /// What determines the run's trajectory (see [`fingerprint`]); a resume must match it.
    pub fingerprint: Fingerprint,
}

/// What determines a run's trajectory, as `key -> value`: the configuration values that
/// change what is computed (data, LoRA, optimizer, schedule, seed, batch sizes; not where
/// files go, how often to log, evaluate or save, or how long to train), the model's
/// identity and the training data's content.
pub type Fingerprint = BTreeMap<String, String>;

/// Configuration keys that do not change what a run computes, so a resume may change them.
/// `max_steps` and `num_train_epochs` are among them: a longer (or shorter, but not
/// finished) run continues the same steps, with the schedule stretched to the new end.
const FREE_KEYS: [&str; 16] = [
    "train.output_dir",
    "train.max_steps",
    "train.num_train_epochs",
    "train.logging_steps",
    "train.eval_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.gradient_checkpointing",
    // The prepared-data cache gives the same examples as preparing them again.
    "data.cache",
    "dataset.eval",
    "eval",
    "export",
    // How the ranks are spread over machines and reach each other; `distributed.world_size`
    // decides the rows of a step.
    "distributed.nodes",
    "distributed.node_rank",
    "distributed.coordinator",
    "distributed.timeout_seconds",
];

/// The fingerprint of a run of `config` on `model` whose training data has `train_content`
/// ([`temper_data::dataset::content_identity`] of its files).
pub fn fingerprint<B: Backend>(
    config: &RunConfig,
    model: &CausalLm<B>,
    train_content: &str,
) -> Fingerprint {
    let mut values = Fingerprint::new();
    if let Ok(toml::Value::Table(table)) = toml::Value::try_from(config) {
        flatten("", &toml::Value::Table(table), &mut values);
    }
    values.retain(|key, _| {
        !FREE_KEYS
            .iter()
            .any(|free| key == free || key.starts_with(&format!("{free}.")))
    });
    let architecture = serde_json::to_string(&model.config().to_hf_json()).unwrap_or_default();
    values.insert("model (config.json)".into(), architecture);
    values.insert("dataset.train (content)".into(), train_content.to_owned());
    values
}

/// `key -> value` for every leaf of a TOML value, keys dotted.
fn flatten(prefix: &str, value: &toml::Value, out: &mut Fingerprint) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.to_string());
        }
    }
}

/// Why `state` cannot continue the run whose fingerprint is `current`, with `rows` training
/// rows and `total_steps` steps, if it cannot: changed configuration or data, a finished run,
/// or a state that is not a training state (step 0, counts past the step, a data position
/// past the data, missing optimizer moments).
pub fn resume_problem(
    state: &TrainerState,
    current: &Fingerprint,
    rows: usize,
    total_steps: u64,
) -> Option<String> {
    let changed: Vec<String> = current
        .iter()
        .filter(|(key, value)| state.fingerprint.get(*key) != Some(value))
        .map(|(key, value)| match state.fingerprint.get(key) {
            Some(was) => format!("{key} was {was}, now {value}"),
            None => format!("{key} is new ({value})"),
        })
        .chain(
            state
                .fingerprint
                .keys()
                .filter(|key| !current.contains_key(*key))
                .map(|key| format!("{key} was set, now it is not")),
        )
        .collect();
    if !changed.is_empty() {
        return Some(format!(
            "the run has changed since this checkpoint: {}; resume with the configuration and data it was made with, or start a new run",
            changed.join("; ")
        ));
    }
    if state.step == 0 {
        return Some("the checkpoint is at step 0; a checkpoint follows at least one step".into());
    }
    if state.step >= total_steps {
        return Some(format!(
            "the checkpoint is at step {} and the run ends at step {total_steps}: nothing is left to train; raise train.max_steps to continue",
            state.step
        ));
    }
    if state.sampler.position > rows {
        return Some(format!(
            "the data position {} is past the {rows} rows of the training data",
            state.sampler.position
        ));
    }
    if state.param_steps.is_empty() {
        return Some("the optimizer state is empty: no parameter has its moments".into());
    }
    let bad_count = state
        .param_steps
        .iter()
        .find(|(_, steps)| **steps == 0 || **steps > state.step);
    if let Some((path, steps)) = bad_count {
        return Some(format!(
            "{path} has {steps} optimizer updates at step {}",
            state.step
        ));
    }
    None
}

/// The directory name of the checkpoint after `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("checkpoint-{step:06}")
}

/// What a checkpoint holds besides the trainer state.
#[derive(Debug)]
pub struct Saved<'a, B: AutodiffBackend> {
    pub model: &'a CausalLm<B>,
    /// The run's LoRA configuration; `None` for full fine-tuning.
    pub lora: Option<&'a LoraConfig>,
    /// The base model's name or path, recorded in the adapter's configuration.
    pub base_model: &'a str,
    pub optimizer: &'a AdamW<B>,
}

/// Writes the checkpoint after `state.step` into `output_dir` (whole or not at all) and
/// keeps only the newest `keep`.
pub fn save<B: AutodiffBackend>(
    output_dir: &Path,
    saved: &Saved<'_, B>,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let writing = AtomicDir::new(&output_dir.join(checkpoint_name(state.step)))?;
    match saved.lora {
        Some(lora) => crate::adapters::extract_adapter(saved.model, lora)
            .save_peft(&writing.path().join(ADAPTER_DIR), saved.base_model)?,
        None => saved
            .model
            .valid()
            .save_hf_dir(&writing.path().join(MODEL_DIR))?,
    }
    write_state(
        writing.path(),
        state,
        &saved.optimizer.export_state(saved.model),
    )?;
    let target = writing.commit()?;
    let checkpoints = list_checkpoints(output_dir);
    for (_, old) in checkpoints
        .iter()
        .take(checkpoints.len().saturating_sub(keep))
    {
        std::fs::remove_dir_all(old).map_err(|e| io(old, e))?;
    }
    Ok(target)
}

/// The model a checkpoint holds: for a LoRA run, `base` with LoRA slots and the
/// checkpoint's adapter in them; for full fine-tuning, the checkpoint's own model. Resuming
/// and exporting both load a checkpoint through this.
pub fn load_model<B: Backend>(
    dir: &Path,
    base: CausalLm<B>,
    lora: Option<&LoraConfig>,
    device: &B::Device,
) -> Result<CausalLm<B>> {
    Ok(match lora {
        Some(lora) => {
            let adapter = temper_lora::Adapter::load_peft(&dir.join(ADAPTER_DIR))?;
            temper_lora::apply(crate::attach_lora(base, lora, device)?, &adapter)?
        }
        None => CausalLm::from_hf_dir(&dir.join(MODEL_DIR), device)?.0,
    })
}

/// Writes the optimizer state and trainer state into `dir`.
fn write_state(dir: &Path, state: &TrainerState, optimizer: &AdamWState) -> Result<()> {
    let mut state = state.clone();
    state.format = FORMAT_VERSION;
    state.param_steps = optimizer
        .params
        .iter()
        .map(|(path, moments)| (path.clone(), moments.step))
        .collect();
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for (path, moments) in &optimizer.params {
        let shape = vec![moments.first.len()];
        tensors.push((format!("{path}.exp_avg"), shape.clone(), &moments.first));
        tensors.push((format!("{path}.exp_avg_sq"), shape, &moments.second));
    }
    temper_store::write_f32_safetensors(&dir.join(OPTIMIZER_FILE), &tensors, None)?;
    let text = serde_json::to_string_pretty(&state).expect("trainer state serialises");
    temper_store::write_atomic(&dir.join(STATE_FILE), text.as_bytes())?;
    Ok(())
}

/// Reads what [`save`] wrote besides the model: the trainer state and the optimizer's.
pub fn read_state(dir: &Path) -> Result<(TrainerState, AdamWState)> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let not_a_state = |e: serde_json::Error| Error::File {
        path: state_path.clone(),
        reason: format!("not a trainer state: {e}"),
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(not_a_state)?;
    let format = value.get("format").and_then(serde_json::Value::as_u64);
    let refuse = |reason: String| Error::File {
        path: state_path.clone(),
        reason,
    };
    match format {
        Some(format) if format == u64::from(FORMAT_VERSION) => {}
        Some(format) if format > u64::from(FORMAT_VERSION) => {
            return Err(refuse(format!(
                "written by a newer temper (checkpoint format {format}; this version reads {FORMAT_VERSION}); resume it with that version"
            )));
        }
        format => {
            return Err(refuse(format!(
                "written by an older temper (checkpoint format {}, this version reads {FORMAT_VERSION}: optimizer state is now keyed by Hugging Face parameter names); it cannot be resumed. Its adapter or model can still be used, or start a new run",
                format.unwrap_or(1)
            )));
        }
    }
    let mut state: TrainerState = serde_json::from_value(value).map_err(not_a_state)?;
    // Checkpoints from before data parallelism were made by one rank.
    state
        .fingerprint
        .entry("distributed.world_size".into())
        .or_insert_with(|| "1".into());
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let bad = |reason: String| Error::File {
        path: path.clone(),
        reason,
    };
    let file = temper_store::parse_safetensors(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let read = |key: &str| -> Result<Vec<f32>> {
        let view = file
            .tensor(key)
            .map_err(|_| bad(format!("{key} is missing")))?;
        match view.dtype() {
            safetensors::Dtype::F32 => {
                Ok(temper_store::decode_f32(view.dtype(), view.data()).unwrap_or_default())
            }
            other => Err(bad(format!("{key}: expected F32, found {other:?}"))),
        }
    };
    let mut params = BTreeMap::new();
    for (param, step) in &state.param_steps {
        params.insert(
            param.clone(),
            ParamMoments {
                step: *step,
                first: read(&format!("{param}.exp_avg"))?,
                second: read(&format!("{param}.exp_avg_sq"))?,
            },
        );
    }
    Ok((state, AdamWState { params }))
}

/// The checkpoints under `output_dir`, oldest first.
pub fn list_checkpoints(output_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            entry
                .path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, entry.path()))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_of_the_old_format_is_refused_with_the_reason() {
        let dir =
            std::env::temp_dir().join(format!("temper-old-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        // What temper wrote before optimizer state was keyed by Hugging Face names.
        let old = r#"{"step": 4, "total_steps": 8, "sampler": {"seed": 7, "epoch": 0, "position": 16},
            "param_steps": {"Gpt2.transformer.h.0.attn.c_attn.lora.lora_a": 4}, "loss": 9.5}"#;
        std::fs::write(dir.join(STATE_FILE), old).unwrap_or_else(|e| panic!("{e}"));
        let error = read_state(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("trainer_state.json: written by an older temper (checkpoint format 1"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }
}
