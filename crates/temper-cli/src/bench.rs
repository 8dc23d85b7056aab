//! `temper bench`: training-step throughput and peak memory of a model shape on a device, with
//! random weights and random tokens (speed does not depend on the values).
//!
//! One step is what `temper train` runs: forward, the chunked masked cross-entropy over every
//! position, backward, gradient-norm clipping at 1.0 and AdamW. Throughput counts every token
//! of the batch. `cargo xtask bench train` runs this next to the PyTorch script
//! `xtask/bench/train_step.py` with the same shapes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clap::{Args, ValueEnum};
use serde::Serialize;
use temper_data::Batch;
use temper_lora::{LoraConfig, TargetModules};
use temper_models::{CausalLm, ModelConfig};
use temper_optim::{AdamW, AdamWConfig};

use crate::backend::{DEVICE_HELP, Device, OnDevice, on_device};
use crate::model::{ModelArgs, Weights};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every weight trained.
    Full,
    /// LoRA adapters on `--lora-targets`, the base frozen.
    Lora,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A Hugging Face `config.json` giving the model's shape (e.g.
    /// `configs/models/gpt2-124m/config.json`); weights are random.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    model_config: Option<PathBuf>,
    /// Instead of a training step: generation throughput of this model (a directory or
    /// `.gguf` file) on `--prompts`, one sequence and all of them as a batch.
    #[arg(long, requires = "prompts")]
    model: Option<PathBuf>,
    /// A JSON array of prompt texts (with `--model`).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Tokens generated per prompt (with `--model`).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    #[arg(long, value_enum, default_value = "full")]
    mode: Mode,
    /// LoRA rank (with `--mode lora`).
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA target modules, comma-separated names as PEFT matches them, or `all-linear`.
    #[arg(long, default_value = "all-linear")]
    lora_targets: String,
    /// Rows per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Timed steps (after the warm-up steps).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Untimed steps first (allocation, autotuning, caches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Also time an N x N x N f32 matmul on the device (the machine's matmul rate, GFLOP/s).
    #[arg(long)]
    matmul: Option<usize>,
    /// Data parallelism: this many ranks (threads on the device), each stepping on its own
    /// `--batch` rows, their gradients summed by all-reduces before the update.
    #[arg(long, default_value_t = 1)]
    world_size: usize,
    /// Spread the ranks over this many processes (see `temper train --nodes`).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// This process's node, 0..nodes.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// HOST:PORT of node 0's orchestrator.
    #[arg(long, default_value = "127.0.0.1:29500")]
    coordinator: String,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP, value_parser = Device::parse)]
    device: Device,
    /// With `--model`: see `temper generate --weights`.
    #[arg(long, value_enum, default_value_t = Weights::F32)]
    weights: Weights,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What `temper bench` measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub implementation: &'static str,
    pub device: String,
    pub model: String,
    pub mode: Mode,
    pub batch: usize,
    pub seq: usize,
    pub parameters: usize,
    pub trainable_parameters: usize,
    /// Every timed step, seconds.
    pub step_seconds: Vec<f64>,
    /// Median step time, seconds.
    pub seconds_per_step: f64,
    /// Tokens of the step (batch x seq x world size) per second at the median step time.
    pub tokens_per_second: f64,
    pub world_size: usize,
    /// Median seconds of a step spent in all-reduces (rank 0), with several ranks.
    pub all_reduce_seconds: Option<f64>,
    /// Bytes each rank sends into the all-reduces of a step (its gradients and a few counts).
    pub all_reduce_bytes: Option<usize>,
    /// Model FLOPs per token of a training step (see [`flops_per_token`]).
    pub flops_per_token: f64,
    pub achieved_gflops: f64,
    /// Peak resident set size of the process (CPU backends), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// GFLOP/s of an N x N x N f32 matmul on the same device, if asked for.
    pub matmul_gflops: Option<f64>,
    pub matmul_size: Option<usize>,
}

pub fn bench_command(args: &BenchArgs) -> Result<()> {
    let model_config = match (&args.model, &args.prompts, &args.model_config) {
        (Some(model), Some(prompts), _) => {
            let model = ModelArgs::new(model.clone(), None, args.device, args.weights);
            return crate::bench_generate::bench_generation(
                &model,
                prompts,
                args.new_tokens,
                args.json,
            );
        }
        (_, _, Some(config)) => config,
        _ => bail!("--model-config (a training step) or --model and --prompts (generation)"),
    };
    if args.batch == 0 || args.seq < 2 || args.steps == 0 || args.world_size == 0 {
        bail!("--batch, --steps and --world-size must be at least 1 and --seq at least 2");
    }
    let report = on_device(args.device, Bench(args, model_config))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} {:?} on {}: batch {} x {}{}, {:.2} s/step{}, {:.1} tokens/s, {:.1} GFLOP/s{}{}",
            report.model,
            report.mode,
            report.device,
            report.batch,
            report.seq,
            match report.world_size {
                1 => String::new(),
                n => format!(" on each of {n} ranks"),
            },
            report.seconds_per_step,
            report
                .all_reduce_seconds
                .map(|s| format!(" ({:.3} s in all-reduces)", s))
                .unwrap_or_default(),
            report.tokens_per_second,
            report.achieved_gflops,
            report
                .peak_rss_bytes
                .map(|b| format!(", peak RSS {:.2} GB", b as f64 / 1e9))
                .unwrap_or_default(),
            report
                .matmul_gflops
                .map(|g| format!(", matmul {g:.1} GFLOP/s"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

struct Bench<'a>(&'a BenchArgs, &'a Path);

impl OnDevice for Bench<'_> {
    type Output = Report;
    fn run<B: Backend>(self, device: &B::Device, name: &str) -> Result<Report> {
        bench_on::<B>(self.0, self.1, device, name)
    }
}

fn bench_on<B: Backend>(
    args: &BenchArgs,
    model_config: &Path,
    device: &B::Device,
    name: &str,
) -> Result<Report> {
    let config = ModelConfig::from_file(model_config)?;
    if args.seq > config.max_positions() {
        bail!(
            "--seq {}: {} has room for {} positions",
            args.seq,
            model_config.display(),
            config.max_positions()
        );
    }
    B::seed(device, 0);
    let mut model = CausalLm::<Autodiff<B>>::init(&config, device);
    if args.mode == Mode::Lora {
        let lora = LoraConfig {
            rank: args.lora_rank,
            alpha: 2.0 * args.lora_rank as f64,
            dropout: 0.0,
            use_rslora: false,
            target_modules: if args.lora_targets == "all-linear" {
                TargetModules::Pattern("all-linear".into())
            } else {
                TargetModules::Names(args.lora_targets.split(',').map(String::from).collect())
            },
        };
        model = temper_lora::freeze_base(temper_train::attach_lora(model, &lora, device)?);
    }
    let count = temper_lora::count_parameters(&model);
    let (parameters, trainable) = match args.mode {
        Mode::Full => (count.total, count.total),
        Mode::Lora => (count.total - count.adapter, count.adapter),
    };
    let steps = args.warmup + args.steps;
    let (step_seconds, all_reduce_seconds) = if args.world_size == 1 {
        let batch = random_batch(args.batch, args.seq, config.vocab_size(), 0);
        let (seconds, _) = time_steps(model, &batch, device, None, steps)?;
        (seconds, None)
    } else {
        let (seconds, all_reduce) = data_parallel_steps(args, &model, &config, device, steps)?;
        (seconds, Some(all_reduce))
    };
    let timed = |seconds: &[f64]| median(&seconds[args.warmup..]);
    let step_seconds = step_seconds[args.warmup..].to_vec();
    let seconds_per_step = median(&step_seconds);
    let tokens = (args.batch * args.seq * args.world_size) as f64;
    let flops = flops_per_token(&config, parameters, args.mode, args.seq);
    let matmul_gflops = args.matmul.map(|n| matmul_rate::<B>(n, device));
    Ok(Report {
        implementation: "temper",
        device: format!("{name} ({})", B::name(device)),
        model: model_config
            .parent()
            .and_then(|dir| dir.file_name())
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
        mode: args.mode,
        batch: args.batch,
        seq: args.seq,
        parameters,
        trainable_parameters: trainable,
        step_seconds,
        seconds_per_step,
        tokens_per_second: tokens / seconds_per_step,
        world_size: args.world_size,
        all_reduce_seconds: all_reduce_seconds.as_deref().map(timed),
        all_reduce_bytes: (args.world_size > 1).then(|| 4 * trainable),
        flops_per_token: flops,
        achieved_gflops: flops * tokens / seconds_per_step / 1e9,
        peak_rss_bytes: peak_rss_bytes(),
        matmul_gflops,
        matmul_size: args.matmul,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `steps` training steps of `model` on `batch` (as `rank` of a data-parallel run): each
/// step's seconds and its seconds in all-reduces.
fn time_steps<B: Backend>(
    mut model: CausalLm<Autodiff<B>>,
    batch: &Batch,
    device: &B::Device,
    rank: Option<&temper_train::Rank<B>>,
    steps: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let (mut seconds, mut all_reduce) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let started = Instant::now();
        let outcome;
        (model, outcome) = temper_train::train_step_on(
            model,
            &mut optimizer,
            std::slice::from_ref(batch),
            1e-4,
            Some(1.0),
            device,
            rank,
        )
        .with_context(|| format!("step {}", step + 1))?;
        if !outcome.loss.is_finite() {
            bail!("step {}: the loss is {}", step + 1, outcome.loss);
        }
        seconds.push(started.elapsed().as_secs_f64());
        all_reduce.push(outcome.all_reduce.as_secs_f64());
    }
    Ok((seconds, all_reduce))
}

/// `steps` data-parallel steps of `--world-size` ranks (threads, or over `--nodes`
/// processes), each on its own random rows: the first local rank's step and all-reduce times.
fn data_parallel_steps<B: Backend>(
    args: &BenchArgs,
    model: &CausalLm<Autodiff<B>>,
    config: &ModelConfig,
    device: &B::Device,
    steps: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let topology = temper_train::Topology {
        nodes: args.nodes,
        node_rank: args.node_rank,
        coordinator: args.coordinator.clone(),
        ..temper_train::Topology::local(args.world_size)
    };
    if args.nodes == 0
        || !args.world_size.is_multiple_of(args.nodes)
        || args.node_rank >= args.nodes
    {
        bail!("--nodes must divide --world-size, and --node-rank be below --nodes");
    }
    let _orchestrator = (args.nodes > 1 && args.node_rank == 0)
        .then(|| crate::nodes::Orchestrator::start(&args.coordinator))
        .transpose()?;
    let ranks = topology.join::<B>(std::slice::from_ref(device))?;
    let timings = std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|rank| {
                let model = model.clone();
                let batch = random_batch(args.batch, args.seq, config.vocab_size(), rank.rank);
                scope.spawn(move || {
                    let timings = time_steps(model, &batch, device, Some(&rank), steps)
                        .with_context(|| format!("rank {}", rank.rank))?;
                    rank.leave()?;
                    Ok(timings)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| bail!("a rank panicked")))
            .collect::<Result<Vec<_>>>()
    })?;
    timings.into_iter().next().context("no rank")
}

/// Model FLOPs of one training step per token (PaLM's accounting, as MFU is usually
/// reported): every weight multiply is 2 FLOPs per token forward and 2 more backward for the
/// input gradient, plus 2 for the weight gradient when the weight is trained (so 6N for full
/// fine-tuning, 4N for LoRA, whose adapters are negligible), and attention's score and value
/// products, 12 x layers x width x sequence length forward and backward.
pub fn flops_per_token(config: &ModelConfig, parameters: usize, mode: Mode, seq: usize) -> f64 {
    let dims = config.dimensions();
    let (layers, width) = (dims.layers, dims.query_width);
    let per_weight = match mode {
        Mode::Full => 6.0,
        Mode::Lora => 4.0,
    };
    per_weight * parameters as f64 + 12.0 * (layers * width * seq) as f64
}

/// Random token rows, every position trained, one example per row.
fn random_batch(rows: usize, seq: usize, vocab: usize, stream: usize) -> Batch {
    // A fixed linear congruential sequence (one per rank): the same tokens on every run and
    // backend.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d ^ stream as u64;
    let input_ids = (0..rows * seq)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % vocab as u64) as u32
        })
        .collect();
    Batch {
        batch_size: rows,
        seq_len: seq,
        input_ids,
        loss_mask: vec![true; rows * seq],
        position_ids: (0..rows).flat_map(|_| 0..seq as u32).collect(),
        segment_ids: vec![1; rows * seq],
    }
}

/// GFLOP/s of an `n x n x n` f32 matmul on the device (best of 5 after a warm-up).
fn matmul_rate<B: Backend>(n: usize, device: &B::Device) -> f64 {
    let a = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
    let mut best = f64::INFINITY;
    for round in 0..6 {
        let started = Instant::now();
        // Reading one value back waits for the device to finish.
        let _ = a.clone().matmul(b.clone()).slice([0..1, 0..1]).into_data();
        if round > 0 {
            best = best.min(started.elapsed().as_secs_f64());
        }
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// The process's peak resident set size (`VmHWM`), on Linux.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}
