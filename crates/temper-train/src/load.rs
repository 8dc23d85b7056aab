//! A model with its tokenizer and chat template, from a Hugging Face directory or a GGUF
//! file.

use std::path::Path;

use burn::prelude::*;
use temper_chat::ChatTemplate;
use temper_data::{SpecialTokenNames, Tokenizer};
use temper_models::CausalLm;

use crate::error::{Error, Result};

/// A loaded model with everything needed to train it and talk to it.
#[allow(missing_debug_implementations)]
pub struct Loaded<B: Backend> {
    pub model: CausalLm<B>,
    pub tokenizer: Tokenizer,
    /// The model's own chat template (GGUF metadata or `tokenizer_config.json`), if any.
    pub template: Option<ChatTemplate>,
    /// The template's source, to save beside a run.
    pub template_source: Option<String>,
}

/// Loads the model a run configuration names (see [`crate::config::ModelSection`]).
pub fn load_for_run<B: Backend>(
    section: &crate::config::ModelSection,
    seed: u64,
    device: &B::Device,
) -> Result<Loaded<B>> {
    let loaded = if section.random_init {
        let config_path = section.path.join("config.json");
        let config = temper_models::ModelConfig::from_file(&config_path)?;
        B::seed(device, seed);
        let model = CausalLm::init(&config, device);
        let tokenizer_path = section
            .tokenizer
            .clone()
            .unwrap_or_else(|| section.path.join("tokenizer.json"));
        let tokenizer = Tokenizer::from_file(&tokenizer_path, &SpecialTokenNames::default())?;
        return Ok(Loaded {
            model,
            tokenizer,
            template: None,
            template_source: None,
        });
    } else {
        load_model(&section.path, device)?
    };
    Ok(match &section.tokenizer {
        Some(path) => Loaded {
            tokenizer: Tokenizer::from_file(path, &SpecialTokenNames::default())?,
            ..loaded
        },
        None => loaded,
    })
}

/// Loads `path`: a directory with `config.json`, `model.safetensors` and `tokenizer.json`,
/// or a llama.cpp `.gguf` file (whose tokenizer and template come from its metadata).
pub fn load_model<B: Backend>(path: &Path, device: &B::Device) -> Result<Loaded<B>> {
    if path.extension().is_some_and(|ext| ext == "gguf") {
        let (model, _, file) = CausalLm::from_gguf(path, device)?;
        let json = file.tokenizer_json()?;
        let (bos, eos) = file.special_tokens();
        let names = SpecialTokenNames {
            bos: bos.clone(),
            eos: eos.clone(),
            pad: None,
        };
        let tokenizer = Tokenizer::from_json(&json.to_string(), path, &names)?;
        let template_source = file.chat_template().map(str::to_owned);
        let template = template_source
            .as_ref()
            .map(|source| {
                ChatTemplate::from_source(
                    format!("{}#chat_template", path.display()),
                    source.clone(),
                )
            })
            .transpose()?
            .map(|t| t.with_special_tokens(bos, eos));
        Ok(Loaded {
            model,
            tokenizer,
            template,
            template_source,
        })
    } else if path.is_dir() {
        let (model, _) = CausalLm::from_hf_dir(path, device)?;
        let tokenizer_path = path.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(Error::Other(format!(
                "{}: the model directory has no tokenizer.json",
                path.display()
            )));
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path, &SpecialTokenNames::default())?;
        let config = path.join("tokenizer_config.json");
        let template = if config.is_file() {
            ChatTemplate::from_tokenizer_config(&config, None).ok()
        } else {
            None
        };
        Ok(Loaded {
            model,
            tokenizer,
            template,
            template_source: None,
        })
    } else {
        Err(Error::Other(format!(
            "{}: expected a model directory or a .gguf file (a directory holds config.json, model.safetensors and tokenizer.json)",
            path.display()
        )))
    }
}

/// The token ids a chat answer ends with: EOS and the end-of-turn tokens of the common
/// templates that the tokenizer has.
pub fn stop_token_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids = vec![tokenizer.eos.id];
    for end_of_turn in [
        "<|im_end|>",
        "<|eot_id|>",
        "<|end|>",
        "<end_of_turn>",
        "</s>",
    ] {
        if let Some(id) = tokenizer.inner().token_to_id(end_of_turn)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}
