//! Export: a run's adapter in PEFT's format and its model, merged, as a Hugging Face
//! directory with the tokenizer and the chat template it was trained with.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use temper_chat::ChatTemplate;
use temper_data::Tokenizer;
use temper_lora::LoraConfig;
use temper_models::CausalLm;
use temper_store::AtomicDir;

use crate::checkpoint;
use crate::config::RunConfig;
use crate::error::{Error, Result, io};
use crate::load::{RunModel, load_for_run};
use crate::output::check_export_target;
use crate::run::TEMPLATE_FILE;

/// What an export writes besides the model: how to name and complete it.
pub(crate) struct Export<'a> {
    /// The run's LoRA configuration; `None` for full fine-tuning.
    pub(crate) lora: Option<&'a LoraConfig>,
    /// The base model's path, recorded in the adapter's configuration and the source of its
    /// `tokenizer_config.json`.
    pub(crate) base_model: &'a Path,
    pub(crate) tokenizer: &'a Tokenizer,
    /// The template the run trained with.
    pub(crate) template: Option<&'a ChatTemplate>,
}

/// Writes the adapter in PEFT's format to `adapter_out` and/or the model, merged with its
/// adapter, as a Hugging Face directory with its tokenizer to `merged_out`. Used at the end
/// of a run and by [`export_checkpoint`].
pub(crate) fn export<B: Backend>(
    model: &CausalLm<B>,
    export: &Export<'_>,
    adapter_out: Option<&Path>,
    merged_out: Option<&Path>,
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    // Each directory is written whole beside its target and then renamed into place.
    let base_model = export.base_model.display().to_string();
    let adapter = match (adapter_out, export.lora) {
        (Some(out), Some(lora)) => {
            let writing = AtomicDir::new(out)?;
            crate::adapters::extract_adapter(model, lora).save_peft(writing.path(), &base_model)?;
            Some(writing.commit()?)
        }
        _ => None,
    };
    let merged = match merged_out {
        Some(out) => {
            let writing = AtomicDir::new(out)?;
            let merged = match export.lora {
                Some(lora) => temper_lora::merge(model.clone(), lora),
                None => model.clone(),
            };
            merged.save_hf_dir(writing.path())?;
            write_tokenizer_files(writing.path(), export)?;
            Some(writing.commit()?)
        }
        None => None,
    };
    Ok((adapter, merged))
}

/// `tokenizer.json`, and a `tokenizer_config.json` (the base model's, when it has one)
/// carrying the chat template the run trained with, so the exported directory is a complete
/// chat model.
fn write_tokenizer_files(dir: &Path, export: &Export<'_>) -> Result<()> {
    let tokenizer = export.tokenizer;
    let path = dir.join("tokenizer.json");
    let json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| Error::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    temper_store::write_atomic(&path, json.as_bytes())?;

    let source = export.base_model.join("tokenizer_config.json");
    let mut config = if source.is_file() {
        let text = std::fs::read_to_string(&source).map_err(|e| io(&source, e))?;
        serde_json::from_str(&text).map_err(|e| Error::File {
            path: source.clone(),
            reason: format!("invalid JSON: {e}"),
        })?
    } else {
        serde_json::json!({
            "bos_token": tokenizer.bos.as_ref().map(|t| t.text.clone()),
            "eos_token": tokenizer.eos.text,
        })
    };
    if let (Some(template), Some(object)) = (export.template, config.as_object_mut()) {
        object.insert("chat_template".into(), template.source().into());
    }
    let text = serde_json::to_string_pretty(&config).expect("JSON serialises");
    temper_store::write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    Ok(())
}

/// What [`export_checkpoint`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub checkpoint: PathBuf,
    pub adapter: Option<PathBuf>,
    pub merged: Option<PathBuf>,
}

/// Exports a checkpoint of the run in `run_dir` (the newest one when `checkpoint` is
/// `None`): the adapter in PEFT's format to `adapter_out` (LoRA runs) and/or the model,
/// merged with its adapter, as a Hugging Face directory with its tokenizer to `merged_out`.
/// A target that holds files is refused unless `overwrite`, and the base model never is one.
pub fn export_checkpoint<B: Backend>(
    run_dir: &Path,
    checkpoint: Option<&Path>,
    adapter_out: Option<&Path>,
    merged_out: Option<&Path>,
    overwrite: bool,
    device: &B::Device,
) -> Result<Exported> {
    let config = RunConfig::load(&run_dir.join("config.toml"), &[])?;
    if adapter_out.is_some() && config.lora.is_none() {
        return Err(Error::NoAdapter {
            run_dir: run_dir.to_owned(),
        });
    }
    for (flag, target) in [("--adapter", adapter_out), ("--merged", merged_out)] {
        if let Some(target) = target {
            check_export_target(target, flag, &config.model.path, overwrite)?;
        }
    }
    let checkpoint = match checkpoint {
        Some(dir) => dir.to_owned(),
        None => checkpoint::list_checkpoints(run_dir)
            .pop()
            .map(|(_, dir)| dir)
            .ok_or_else(|| Error::NoCheckpoint {
                run_dir: run_dir.to_owned(),
            })?,
    };
    let RunModel {
        model, tokenizer, ..
    } = load_for_run::<B>(&config.model, config.train.seed, device)?;
    let model = checkpoint::load_model(&checkpoint, model, config.lora.as_ref(), device)?;
    let template_path = run_dir.join(TEMPLATE_FILE);
    let template = if template_path.is_file() {
        let source = std::fs::read_to_string(&template_path).map_err(|e| io(&template_path, e))?;
        Some(ChatTemplate::from_source(
            template_path.display().to_string(),
            source,
        )?)
    } else {
        None
    };
    let (adapter, merged) = export(
        &model,
        &Export {
            lora: config.lora.as_ref(),
            base_model: &config.model.path,
            tokenizer: &tokenizer,
            template: template.as_ref(),
        },
        adapter_out,
        merged_out,
    )?;
    Ok(Exported {
        checkpoint,
        adapter,
        merged,
    })
}
