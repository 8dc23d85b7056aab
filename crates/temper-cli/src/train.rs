//! `temper train` and `temper export`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use temper_train::{EvalPoint, Event, Metric, RunConfig, Start};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::tensor::backend::Backend;

use crate::backend::{DEVICE_HELP, Device, OnDevice, on_device, on_devices};
use crate::nodes::Orchestrator;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run configuration (TOML; see docs/training.md).
    #[arg(long)]
    config: PathBuf,
    /// Override a configuration key, e.g. `--set train.learning_rate=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from a checkpoint directory, or `latest` for the newest one in the run's
    /// output directory.
    #[arg(long, conflicts_with = "overwrite")]
    resume: Option<String>,
    /// Start a new run in an output directory that holds an earlier run, replacing that run's
    /// checkpoints, metrics and exports (once the new run has loaded its model and data).
    #[arg(long)]
    overwrite: bool,
    /// The device of every rank (`cpu`), or one per rank of this node (`cuda:0,cuda:1`).
    #[arg(long, default_value = "cpu", value_delimiter = ',', value_parser = Device::parse)]
    device: Vec<Device>,
    /// Data parallelism: ranks in all, each training on its share of every step
    /// (`distributed.world_size`; docs/distributed.md).
    #[arg(long)]
    world_size: Option<usize>,
    /// Processes (machines) the ranks are spread over, one per machine (`distributed.nodes`).
    #[arg(long)]
    nodes: Option<usize>,
    /// This process's node, 0..nodes; node 0 runs the orchestrator and writes the run's files
    /// (`distributed.node_rank`).
    #[arg(long)]
    node_rank: Option<usize>,
    /// HOST:PORT of node 0's orchestrator (`distributed.coordinator`).
    #[arg(long)]
    coordinator: Option<String>,
}

pub fn train_command(args: &TrainArgs) -> Result<()> {
    on_devices(&args.device, Train(args))
}

impl TrainArgs {
    /// `--set` overrides, then the data-parallel flags as the configuration keys they set.
    fn overrides(&self) -> Vec<String> {
        let mut overrides = self.overrides.clone();
        let flags = [
            ("world_size", self.world_size.map(|n| n.to_string())),
            ("nodes", self.nodes.map(|n| n.to_string())),
            ("node_rank", self.node_rank.map(|n| n.to_string())),
            (
                "coordinator",
                self.coordinator.as_ref().map(|c| format!("{c:?}")),
            ),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                overrides.push(format!("distributed.{key}={value}"));
            }
        }
        overrides
    }
}

struct Train<'a>(&'a TrainArgs);

impl OnDevice for Train<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: &B::Device, name: &str) -> Result<()> {
        train_on::<B>(self.0, std::slice::from_ref(device), name)
    }

    fn run_on<B: Backend>(self, devices: &[B::Device], name: &str) -> Result<()> {
        train_on::<B>(self.0, devices, name)
    }
}

/// Trains on autodiff over `B` (with activation checkpointing when configured).
fn train_on<B: Backend>(args: &TrainArgs, devices: &[B::Device], name: &str) -> Result<()> {
    let config = RunConfig::load(&args.config, &args.overrides())?;
    let device = &devices[0];
    // Node 0 of several runs the orchestrator that joins them, as a child process that ends
    // with this one.
    let _orchestrator = match &config.distributed {
        d if d.nodes > 1 && d.node_rank == 0 => Some(Orchestrator::start(&d.coordinator)?),
        _ => None,
    };
    let resume = match args.resume.as_deref() {
        None => None,
        Some("latest") => Some(
            temper_train::checkpoint::list_checkpoints(&config.train.output_dir)
                .pop()
                .map(|(_, dir)| dir)
                .with_context(|| {
                    format!(
                        "--resume latest: {} has no checkpoint",
                        config.train.output_dir.display()
                    )
                })?,
        ),
        Some(dir) => Some(PathBuf::from(dir)),
    };
    let interactive = std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut preparing = crate::progress::ProgressShown::new();
    let mut total = 0;
    let mut on_event = |event: Event| match event {
        Event::Message(text) => match &bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        },
        Event::Preparing(progress) => preparing.show(&progress),
        Event::Started {
            first_step,
            total_steps,
        } => {
            preparing.finish();
            total = total_steps;
            if interactive {
                let progress = ProgressBar::new(total_steps);
                progress.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                    )
                    .expect("a valid template"),
                );
                progress.set_position(first_step - 1);
                progress.enable_steady_tick(Duration::from_millis(500));
                bar = Some(progress);
            }
        }
        Event::Step(Metric::Train {
            step,
            loss,
            learning_rate,
            grad_norm,
            tokens_per_second,
            elapsed_seconds,
            ..
        }) => {
            let message = format!(
                "loss {loss:.4} lr {learning_rate:.2e} grad norm {grad_norm:.3} {tokens_per_second:.0} tokens/s"
            );
            match &bar {
                Some(bar) => {
                    bar.set_message(message);
                    bar.set_position(step);
                }
                None => {
                    let every = (total / 20).max(1);
                    if step % every == 0 || step == total || step == 1 {
                        let eta = elapsed_seconds / step as f64 * (total - step) as f64;
                        eprintln!(
                            "step {step}/{total} {message} elapsed {elapsed_seconds:.0}s eta {eta:.0}s"
                        );
                    }
                }
            }
        }
        Event::Step(_) => {}
        Event::Eval(Metric::Eval {
            step,
            loss,
            perplexity,
            token_accuracy,
            ..
        }) => {
            let text = format!(
                "eval at step {step}: loss {loss:.4} perplexity {perplexity:.3} token accuracy {:.1}%",
                100.0 * token_accuracy
            );
            match &bar {
                Some(bar) => bar.println(text),
                None => eprintln!("{text}"),
            }
        }
        Event::Eval(_) => {}
        Event::Answer {
            when,
            expected,
            answer,
            sample,
            ..
        } => {
            let mut text = format!("  {when}: expected {expected:?}, generated {answer:?}");
            if let Some(sample) = sample {
                text += &format!(", sampled {sample:?}");
            }
            match &bar {
                Some(bar) => bar.println(text),
                None => eprintln!("{text}"),
            }
        }
        Event::Evaluation {
            when,
            summary,
            dir,
            seconds,
        } => {
            let text = format!(
                "{when}: {} ({}/summary.md, {seconds:.1} s)",
                summary.headline(),
                dir.display()
            );
            match &bar {
                Some(bar) => bar.println(text),
                None => eprintln!("{text}"),
            }
        }
        Event::Changed { fixed, broken } => {
            let text = format!(
                "training fixed {fixed} answer(s) and broke {broken} (temper eval --compare shows them)"
            );
            match &bar {
                Some(bar) => bar.println(text),
                None => eprintln!("{text}"),
            }
        }
    };
    on_event(Event::Message(format!(
        "device: {name} ({})",
        B::name(device)
    )));
    let start = match (&resume, args.overwrite) {
        (Some(checkpoint), _) => Start::Resume(checkpoint),
        (None, true) => Start::Overwrite,
        (None, false) => Start::Fresh,
    };
    let summary = if config.train.gradient_checkpointing {
        temper_train::run_on::<Autodiff<B, BalancedCheckpointing>>(
            &config,
            start,
            devices,
            &mut on_event,
        )?
    } else {
        temper_train::run_on::<Autodiff<B>>(&config, start, devices, &mut on_event)?
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    println!("steps: {}", summary.steps);
    println!("final train loss: {:.4}", summary.final_loss);
    if let Some(Metric::Eval {
        loss,
        perplexity,
        token_accuracy,
        ..
    }) = &summary.eval
    {
        println!(
            "eval loss: {loss:.4} (perplexity {perplexity:.3}, token accuracy {:.1}%)",
            100.0 * token_accuracy
        );
    }
    for (when, evaluation) in [
        (EvalPoint::Before, &summary.evaluation_before),
        (EvalPoint::After, &summary.evaluation_after),
    ] {
        if let Some(evaluation) = evaluation {
            println!("{when}: {}", evaluation.headline());
        }
    }
    println!(
        "training throughput: {:.1} tokens/s",
        summary.tokens_per_second
    );
    if !summary.writes {
        println!(
            "node {}: rank 0 on node 0 writes the run's files",
            config.distributed.node_rank
        );
        return Ok(());
    }
    println!("metrics: {}", summary.metrics.display());
    println!("loss curve: {}", summary.loss_plot.display());
    if let Some(dir) = &summary.adapter {
        println!("adapter (PEFT): {}", dir.display());
    }
    if let Some(dir) = &summary.merged {
        println!("merged model (Hugging Face): {}", dir.display());
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run's output directory (holds config.toml and checkpoints).
    #[arg(long)]
    run: PathBuf,
    /// The checkpoint to export (default: the newest).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Write the adapter in PEFT's format here (LoRA runs).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Write the model, merged with its adapter, as a Hugging Face directory here.
    #[arg(long)]
    merged: Option<PathBuf>,
    /// Replace a target directory that already holds files (never the base model).
    #[arg(long)]
    overwrite: bool,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP, value_parser = Device::parse)]
    device: Device,
}

pub fn export_command(args: &ExportArgs) -> Result<()> {
    if args.adapter.is_none() && args.merged.is_none() {
        anyhow::bail!("give --adapter DIR and/or --merged DIR");
    }
    on_device(args.device, Export(args))
}

struct Export<'a>(&'a ExportArgs);

impl OnDevice for Export<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: &B::Device, _: &str) -> Result<()> {
        export_on::<B>(self.0, device)
    }
}

fn export_on<B: Backend>(args: &ExportArgs, device: &B::Device) -> Result<()> {
    let exported = temper_train::export_checkpoint::<B>(
        &args.run,
        args.checkpoint.as_deref(),
        args.adapter.as_deref(),
        args.merged.as_deref(),
        args.overwrite,
        device,
    )?;
    println!("checkpoint: {}", exported.checkpoint.display());
    if let Some(dir) = exported.adapter {
        println!("adapter (PEFT): {}", dir.display());
    }
    if let Some(dir) = exported.merged {
        println!("merged model (Hugging Face): {}", dir.display());
    }
    Ok(())
}
