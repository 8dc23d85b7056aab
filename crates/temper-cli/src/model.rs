//! `temper generate` and `temper score`: a model directory or GGUF file, its tokenizer and chat
//! template, on the chosen device.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use clap::Args;
use serde::Serialize;
use temper_chat::{ChatTemplate, Conversation, Message, RenderOptions};
use temper_data::Tokenizer;
use temper_models::{CausalLm, GenerationConfig, StopReason, generate, token_logprobs};

use crate::backend::{DEVICE_HELP, Device, OnDevice, on_device};

/// A loaded model with everything needed to talk to it.
pub struct Loaded<B: Backend> {
    pub model: CausalLm<B>,
    /// `None` for a model directory without `tokenizer.json`: token ids still work.
    tokenizer: Option<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub device: B::Device,
    path: PathBuf,
}

impl<B: Backend> Loaded<B> {
    /// The tokenizer, needed only to encode or decode text.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().with_context(|| {
            format!(
                "{}: the model directory has no tokenizer.json, so text cannot be encoded or decoded (`temper score --tokens` works without one)",
                self.path.display()
            )
        })
    }
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A Hugging Face model directory (config.json, model.safetensors, tokenizer.json) or a
    /// llama.cpp `.gguf` file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter directory (adapter_config.json, adapter_model.safetensors) to apply to
    /// the model in memory; nothing is written.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP, value_parser = Device::parse)]
    device: Device,
    #[arg(long, value_enum, default_value_t = Weights::F32, help = WEIGHTS_HELP)]
    weights: Weights,
}

/// How the linear layers' weights are kept for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Weights {
    F32,
    F16,
}

pub const WEIGHTS_HELP: &str = "Keep the weights of the linear layers and the token embedding \
    in f32, or in f16: half the memory and about 1.6x the tokens/s decoding one sequence on \
    the CPU (batches run faster in f32), at f16's precision (11 significant bits), so answers \
    can differ where two tokens are nearly tied";

impl ModelArgs {
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn new(
        model: PathBuf,
        adapter: Option<PathBuf>,
        device: Device,
        weights: Weights,
    ) -> ModelArgs {
        ModelArgs {
            model,
            adapter,
            device,
            weights,
        }
    }

    pub fn load<B: Backend>(&self, device: &B::Device) -> Result<Loaded<B>> {
        let device = device.clone();
        let started = Instant::now();
        let path = &self.model;
        let temper_train::Loaded {
            model,
            tokenizer,
            template,
            times,
        } = temper_train::load_model::<B>(path, &device)?;
        let model = match &self.adapter {
            Some(dir) => temper_train::apply_peft_adapter(model, dir, &device)?,
            None => model,
        };
        let model = match self.weights {
            Weights::F32 => model,
            Weights::F16 => model.with_f16_weights(),
        };
        let loaded = Loaded {
            model,
            tokenizer,
            template,
            device,
            path: path.clone(),
        };
        let read = times
            .read
            .map(|read| format!("read {:.2}s, ", read.as_secs_f64()))
            .unwrap_or_default();
        eprintln!(
            "loaded {} in {:.2}s ({read}weights {:.2}s, tokenizer {:.2}s)",
            path.display(),
            started.elapsed().as_secs_f64(),
            times.weights.as_secs_f64(),
            times.tokenizer.as_secs_f64(),
        );
        Ok(loaded)
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "messages")]
    prompt: Option<String>,
    /// A JSON file with a `messages` array (rendered with the model's chat template).
    #[arg(long)]
    messages: Option<PathBuf>,
    /// Render the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (may be repeated).
    #[arg(long = "stop")]
    stops: Vec<String>,
}

pub fn generate_command(args: &GenerateArgs) -> Result<()> {
    // Bad sampling flags fail before the model is loaded.
    sampling(args, Vec::new()).validate()?;
    on_device(args.model.device, Generate(args))
}

struct Generate<'a>(&'a GenerateArgs);

impl OnDevice for Generate<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: &B::Device, _: &str) -> Result<()> {
        generate_on::<B>(self.0, device)
    }
}

fn generate_on<B: Backend>(args: &GenerateArgs, device: &B::Device) -> Result<()> {
    let loaded = args.model.load::<B>(device)?;
    let prompt_text = match (&args.prompt, &args.messages) {
        (Some(prompt), None) if !args.chat => prompt.clone(),
        (Some(prompt), None) => render_chat(
            &loaded,
            Conversation::new(vec![Message::user(prompt.clone())]),
        )?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
                anyhow::anyhow!("{}:{}: invalid JSON", path.display(), error.line())
            })?;
            render_chat(
                &loaded,
                Conversation::from_json(&value, &path.display().to_string())?,
            )?
        }
        _ => bail!("give --prompt TEXT or --messages FILE.json"),
    };
    let tokenizer = loaded.tokenizer()?;
    let (prompt, _) = tokenizer.encode(&prompt_text)?;
    // Chat models end a turn with their own token; stop there too.
    let stop_token_ids = temper_train::stop_token_ids(tokenizer);
    let config = sampling(args, stop_token_ids);
    let started = Instant::now();
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0;
    let mut first_token_at = None;
    let mut stdout = std::io::stdout();
    let generation = generate(&loaded.model, &prompt, &config, &loaded.device, |token| {
        first_token_at.get_or_insert_with(Instant::now);
        generated.push(token);
        let text = tokenizer.decode(&generated);
        // Print only whole characters: a byte-level token may end inside one.
        let complete = text.trim_end_matches('\u{FFFD}');
        let stop_at = args
            .stops
            .iter()
            .filter_map(|stop| complete.find(stop.as_str()))
            .min();
        let upto = stop_at.unwrap_or(complete.len());
        if upto > printed {
            let _ = write!(stdout, "{}", &complete[printed..upto]);
            let _ = stdout.flush();
            printed = upto;
        }
        if stop_at.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let prefill = first_token_at.map_or(seconds, |at| (at - started).as_secs_f64());
    println!();
    let reason = match generation.stop_reason {
        StopReason::StopToken => "end-of-sequence token",
        StopReason::MaxTokens => "max new tokens",
        StopReason::Caller => "stop string",
        StopReason::ContextFull => "context full",
    };
    let decoded = generation.tokens.len().saturating_sub(1);
    eprintln!(
        "{} prompt tokens in {prefill:.2}s, {} new tokens in {seconds:.2}s ({:.1} tokens/s after the first), stopped by {reason}",
        prompt.len(),
        generation.tokens.len(),
        decoded as f64 / (seconds - prefill).max(1e-9)
    );
    Ok(())
}

/// The generation settings the flags ask for.
fn sampling(args: &GenerateArgs, stop_token_ids: Vec<u32>) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        stop_token_ids,
    }
}

fn render_chat<B: Backend>(loaded: &Loaded<B>, conversation: Conversation) -> Result<String> {
    let template = loaded
        .template
        .as_ref()
        .context("the model has no chat template (tokenizer_config.json or GGUF metadata)")?;
    let options = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    Ok(template.render_text(&conversation, &options)?)
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to score.
    #[arg(long, conflicts_with_all = ["file", "tokens"])]
    text: Option<String>,
    /// A text file to score.
    #[arg(long, conflicts_with = "tokens")]
    file: Option<PathBuf>,
    /// Token ids to score, comma-separated (`1,2,3`).
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// Score only the first N tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Print `{"tokens", "logprobs", "nll", "perplexity"}`.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Score {
    tokens: Vec<u32>,
    /// `logprobs[i]` is the log-probability of `tokens[i + 1]` given the tokens before it.
    logprobs: Vec<f64>,
    /// Total negative log-likelihood of `tokens[1..]` (nats).
    nll: f64,
    mean_nll: f64,
    perplexity: f64,
}

pub fn score_command(args: &ScoreArgs) -> Result<()> {
    on_device(args.model.device, ScoreJob(args))
}

struct ScoreJob<'a>(&'a ScoreArgs);

impl OnDevice for ScoreJob<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: &B::Device, _: &str) -> Result<()> {
        score_on::<B>(self.0, device)
    }
}

fn score_on<B: Backend>(args: &ScoreArgs, device: &B::Device) -> Result<()> {
    let loaded = args.model.load::<B>(device)?;
    let mut tokens = match (&args.text, &args.file, &args.tokens) {
        (Some(text), None, None) => loaded.tokenizer()?.encode(text)?.0,
        (None, Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            loaded.tokenizer()?.encode(&text)?.0
        }
        (None, None, Some(tokens)) => {
            let vocab = loaded.model.config().vocab_size();
            if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
                bail!("--tokens: token id {bad} is outside the vocabulary (0..{vocab})");
            }
            tokens.clone()
        }
        _ => bail!("give one of --text, --file or --tokens"),
    };
    if let Some(max) = args.max_tokens {
        tokens.truncate(max);
    }
    let logprobs = token_logprobs(&loaded.model, &tokens, &loaded.device)?;
    let nll = -logprobs.iter().sum::<f64>();
    let mean_nll = nll / logprobs.len() as f64;
    let score = Score {
        tokens,
        logprobs,
        nll,
        mean_nll,
        perplexity: mean_nll.exp(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&score)?);
    } else {
        println!(
            "{} tokens, total NLL {:.4} nats, mean {:.4}, perplexity {:.4}",
            score.tokens.len(),
            score.nll,
            score.mean_nll,
            score.perplexity
        );
    }
    Ok(())
}
