//! Checkpoints: everything needed to continue a run exactly where it stopped.
//!
//! ```text
//! output_dir/checkpoint-000040/
//!   adapter/                 LoRA runs: the adapter in PEFT's format
//!   model/                   full fine-tuning: config.json + model.safetensors
//!   optimizer.safetensors    AdamW moments by parameter path (`{path}.exp_avg(_sq)`)
//!   trainer_state.json       step, data-loader position, per-parameter update counts
//! ```
//!
//! A checkpoint is written into a temporary directory and renamed into place, so a kill
//! leaves either the whole checkpoint or none; only the newest `save_total_limit` are kept.
//! Random state needs no saving: the backend is reseeded from `(seed, step)` before every
//! step.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use temper_data::SamplerState;
use temper_optim::{AdamWState, ParamMoments};

use crate::error::{Error, Result, io};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const ADAPTER_DIR: &str = "adapter";
pub const MODEL_DIR: &str = "model";

/// The small part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
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
}

/// The directory name of the checkpoint after `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("checkpoint-{step:06}")
}

/// Writes the optimizer state and trainer state into `dir` (the model or adapter is
/// written by the caller into the same directory first).
pub fn write_state(
    dir: &Path,
    state: &TrainerState,
    optimizer: &AdamWState,
) -> Result<TrainerState> {
    let mut state = state.clone();
    state.param_steps = optimizer
        .params
        .iter()
        .map(|(path, moments)| (path.clone(), moments.step))
        .collect();
    let mut tensors = Vec::new();
    for (path, moments) in &optimizer.params {
        tensors.push((format!("{path}.exp_avg"), &moments.first));
        tensors.push((format!("{path}.exp_avg_sq"), &moments.second));
    }
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((key, values), bytes)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![values.len()], bytes)
                .expect("length matches");
            (key.clone(), view)
        })
        .collect();
    let path = dir.join(OPTIMIZER_FILE);
    let serialized =
        safetensors::serialize(views, None::<HashMap<String, String>>).map_err(|e| {
            Error::Checkpoint {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
    write_atomic(&path, &serialized)?;
    let text = serde_json::to_string_pretty(&state).expect("trainer state serialises");
    write_atomic(&dir.join(STATE_FILE), text.as_bytes())?;
    Ok(state)
}

/// Reads what [`write_state`] wrote.
pub fn read_state(dir: &Path) -> Result<(TrainerState, AdamWState)> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: state_path.clone(),
        reason: format!("not a trainer state: {e}"),
    })?;
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let bad = |reason: String| Error::Checkpoint {
        path: path.clone(),
        reason,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let read = |key: &str| -> Result<Vec<f32>> {
        let view = file
            .tensor(key)
            .map_err(|_| bad(format!("{key} is missing")))?;
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("{key}: expected F32")));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
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

/// Moves a fully written temporary checkpoint into place and prunes old ones.
pub fn commit(temporary: &Path, output_dir: &Path, step: u64, keep: usize) -> Result<PathBuf> {
    let target = output_dir.join(checkpoint_name(step));
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(|e| io(&target, e))?;
    }
    std::fs::rename(temporary, &target).map_err(|e| io(&target, e))?;
    let checkpoints = list_checkpoints(output_dir);
    for (_, old) in checkpoints
        .iter()
        .take(checkpoints.len().saturating_sub(keep))
    {
        std::fs::remove_dir_all(old).map_err(|e| io(old, e))?;
    }
    Ok(target)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = path.with_file_name(name);
    std::fs::write(&temporary, bytes).map_err(|e| io(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        io(path, e)
    })
}
