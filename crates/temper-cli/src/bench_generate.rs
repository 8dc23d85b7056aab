//! `temper bench --model FILE --prompts FILE.json`: generation throughput of a real model:
//! one sequence (the first prompt alone) and all prompts as one batch, each generating exactly
//! `--new-tokens` tokens (no stop token), timed around the whole generation (prefill
//! included). `cargo xtask bench generate` runs it next to transformers' `generate`
//! (`xtask/bench/generate.py`) on the same prompts and dequantized weights.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use serde::Serialize;
use temper_models::{GenerationConfig, generate_batch};

use crate::backend::{OnDevice, on_device};
use crate::model::ModelArgs;

/// What the generation benchmark measured.
#[derive(Debug, Serialize)]
pub struct GenerationReport {
    pub implementation: &'static str,
    pub device: String,
    pub prompts: usize,
    pub new_tokens: usize,
    /// New tokens per second of the first prompt generated alone.
    pub single_tokens_per_second: f64,
    /// New tokens of every prompt per second, all prompts in one batch.
    pub batch_tokens_per_second: f64,
}

pub fn bench_generation(
    model: &ModelArgs,
    prompts: &Path,
    new_tokens: usize,
    json: bool,
) -> Result<()> {
    let text = std::fs::read_to_string(prompts)
        .with_context(|| format!("cannot read {}", prompts.display()))?;
    let prompts: Vec<String> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of strings", prompts.display()))?;
    if prompts.is_empty() || new_tokens == 0 {
        bail!("the benchmark needs at least one prompt and one new token");
    }
    let report = on_device(model.device(), Job(model, &prompts, new_tokens))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} x {} new tokens on {}: one sequence {:.1} tokens/s, batched {:.1} tokens/s",
            report.prompts,
            report.new_tokens,
            report.device,
            report.single_tokens_per_second,
            report.batch_tokens_per_second
        );
    }
    Ok(())
}

struct Job<'a>(&'a ModelArgs, &'a [String], usize);

impl OnDevice for Job<'_> {
    type Output = GenerationReport;
    fn run<B: Backend>(self, device: &B::Device, name: &str) -> Result<GenerationReport> {
        let Job(model, prompts, new_tokens) = self;
        let loaded = model.load::<B>(device)?;
        let tokenizer = loaded.tokenizer()?;
        let ids = prompts
            .iter()
            .map(|p| Ok(tokenizer.encode(p)?.0))
            .collect::<Result<Vec<Vec<u32>>>>()?;
        let config = GenerationConfig {
            max_new_tokens: new_tokens,
            ..Default::default()
        };
        let rate = |rows: &[&[u32]], config: &GenerationConfig| -> Result<f64> {
            let started = Instant::now();
            let generations = generate_batch(&loaded.model, rows, config, device, |_, _| {
                ControlFlow::Continue(())
            })?;
            let tokens: usize = generations.iter().map(|g| g.tokens.len()).sum();
            Ok(tokens as f64 / started.elapsed().as_secs_f64())
        };
        let all: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        // Untimed: allocator pools and caches warm up.
        let warm = GenerationConfig {
            max_new_tokens: 2,
            ..config.clone()
        };
        rate(&all, &warm)?;
        Ok(GenerationReport {
            implementation: "temper",
            device: format!("{name} ({})", B::name(device)),
            prompts: prompts.len(),
            new_tokens,
            single_tokens_per_second: rate(&all[..1], &config)?,
            batch_tokens_per_second: rate(&all, &config)?,
        })
    }
}
