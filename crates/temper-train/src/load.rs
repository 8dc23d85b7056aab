//! A model with its tokenizer and chat template, from a Hugging Face directory or a GGUF
//! file.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::prelude::*;
use temper_chat::ChatTemplate;
use temper_data::{SpecialTokenNames, Tokenizer};
use temper_models::CausalLm;
use temper_models::gguf::GgufFile;

use crate::error::{Error, Result};

/// A loaded model with what it brings along to be trained and talked to.
#[allow(missing_debug_implementations)]
pub struct Loaded<B: Backend> {
    pub model: CausalLm<B>,
    /// The model's tokenizer; `None` for a model directory without `tokenizer.json` (which
    /// token ids alone can still use).
    pub tokenizer: Option<Tokenizer>,
    /// The model's own chat template (GGUF metadata or `tokenizer_config.json`), if any.
    pub template: Option<ChatTemplate>,
    pub times: LoadTimes,
}

/// How long loading took: reading a GGUF file, building the model from the weights (for a
/// directory, reading them included), and building the tokenizer (for a GGUF file, while
/// the weights are built).
#[derive(Debug, Clone, Default)]
pub struct LoadTimes {
    pub read: Option<Duration>,
    pub weights: Duration,
    pub tokenizer: Duration,
}

/// A model loaded for a run: its tokenizer is required, and checked against the model.
#[allow(missing_debug_implementations)]
pub struct RunModel<B: Backend> {
    pub model: CausalLm<B>,
    pub tokenizer: Tokenizer,
    /// The model's own chat template, if any (the run may render its data with another).
    pub template: Option<ChatTemplate>,
}

/// Loads the model a run configuration names (see [`crate::config::ModelSection`]): its
/// weights (or, with `random_init`, fresh ones drawn from `seed`), its tokenizer (or the
/// configured one) and its chat template. A tokenizer that makes ids the model has no
/// embedding for is refused here, before any data is read.
pub fn load_for_run<B: Backend>(
    section: &crate::config::ModelSection,
    seed: u64,
    device: &B::Device,
) -> Result<RunModel<B>> {
    let loaded = if section.random_init {
        let config = temper_models::ModelConfig::from_file(&section.path.join("config.json"))?;
        B::seed(device, seed);
        Loaded {
            model: CausalLm::init(&config, device),
            tokenizer: None,
            template: None,
            times: LoadTimes::default(),
        }
    } else {
        load_model(&section.path, device)?
    };
    let (tokenizer, tokenizer_path) = match (&section.tokenizer, loaded.tokenizer) {
        (Some(path), _) => (
            Tokenizer::from_file(path, &SpecialTokenNames::default())?,
            path.clone(),
        ),
        (None, Some(tokenizer)) => (tokenizer, section.path.clone()),
        (None, None) if section.random_init => {
            let path = section.path.join("tokenizer.json");
            (
                Tokenizer::from_file(&path, &SpecialTokenNames::default())?,
                path,
            )
        }
        (None, None) => {
            return Err(Error::MissingTokenizer {
                dir: section.path.clone(),
            });
        }
    };
    check_vocabulary(&tokenizer, &tokenizer_path, &loaded.model)?;
    Ok(RunModel {
        model: loaded.model,
        tokenizer,
        template: loaded.template,
    })
}

/// Refuses a tokenizer whose largest id has no row in the model's embedding.
fn check_vocabulary<B: Backend>(
    tokenizer: &Tokenizer,
    path: &Path,
    model: &CausalLm<B>,
) -> Result<()> {
    let tokenizer_size = tokenizer
        .inner()
        .get_vocab(true)
        .values()
        .max()
        .map_or(0, |&id| id as usize + 1);
    let model_size = model.config().vocab_size();
    if tokenizer_size > model_size {
        return Err(Error::VocabularyMismatch {
            tokenizer: path.to_owned(),
            tokenizer_size,
            model_size,
        });
    }
    Ok(())
}

/// The tokenizer a GGUF file's metadata describes, with its BOS and EOS tokens.
pub fn gguf_tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let (bos, eos) = file.special_tokens();
    let names = SpecialTokenNames {
        bos,
        eos,
        pad: None,
    };
    Ok(Tokenizer::from_value(
        &file.tokenizer_json()?,
        &file.path,
        &names,
    )?)
}

/// Loads `path`: a directory with `config.json`, `model.safetensors` and (optionally)
/// `tokenizer.json` and `tokenizer_config.json`, or a llama.cpp `.gguf` file (whose tokenizer
/// and template come from its metadata). A template that does not compile is an error.
pub fn load_model<B: Backend>(path: &Path, device: &B::Device) -> Result<Loaded<B>> {
    if path.extension().is_some_and(|ext| ext == "gguf") {
        let started = Instant::now();
        let file = GgufFile::open(path)?;
        let read = started.elapsed();
        // The tokenizer (a second of work for a 262k vocabulary) is rebuilt while the
        // weights are dequantized.
        let ((model, weights), (tokenizer, tokenizer_time)) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| {
                let started = Instant::now();
                (gguf_tokenizer(&file), started.elapsed())
            });
            let started = Instant::now();
            let model = CausalLm::from_gguf_file(&file, device);
            let model = (model, started.elapsed());
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (model, tokenizer)
        });
        let ((model, _), tokenizer) = (model?, tokenizer?);
        let times = LoadTimes {
            read: Some(read),
            weights,
            tokenizer: tokenizer_time,
        };
        let (bos, eos) = file.special_tokens();
        let template = file
            .chat_template()
            .map(|source| {
                ChatTemplate::from_source(format!("{}#chat_template", path.display()), source)
            })
            .transpose()?
            .map(|t| t.with_special_tokens(bos, eos));
        Ok(Loaded {
            model,
            tokenizer: Some(tokenizer),
            template,
            times,
        })
    } else if path.is_dir() {
        let started = Instant::now();
        let (model, _) = CausalLm::from_hf_dir(path, device)?;
        let weights = started.elapsed();
        let started = Instant::now();
        let tokenizer_path = path.join("tokenizer.json");
        let tokenizer = tokenizer_path
            .is_file()
            .then(|| Tokenizer::from_file(&tokenizer_path, &SpecialTokenNames::default()))
            .transpose()?;
        let times = LoadTimes {
            read: None,
            weights,
            tokenizer: started.elapsed(),
        };
        let template =
            ChatTemplate::from_tokenizer_config_if_any(&path.join("tokenizer_config.json"))?;
        Ok(Loaded {
            model,
            tokenizer,
            template,
            times,
        })
    } else {
        Err(Error::NotAModel {
            path: path.to_owned(),
        })
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
