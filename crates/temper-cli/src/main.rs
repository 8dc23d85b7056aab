//! The `temper` command line.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod backend;
mod bench;
mod bench_generate;
mod data;
mod eval;
mod model;
mod nodes;
mod progress;
mod template;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, told to keep freed memory: a training step allocates and frees gigabytes of
/// activations, and an allocator that hands them back to the kernel pays for page faults and
/// zeroing of fresh pages on every step (measured on a GPT-2 124M step with glibc's malloc:
/// 13% of the time in the kernel clearing pages; see docs/benchmarks.md). Wrapped in the
/// chat templates' memory budget, which ends a render that builds text without bound.
#[cfg(not(target_env = "musl"))]
#[global_allocator]
static ALLOCATOR: temper_chat::RenderBudget<mimalloc::MiMalloc> =
    temper_chat::RenderBudget(mimalloc::MiMalloc);

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: temper_chat::RenderBudget<std::alloc::System> =
    temper_chat::RenderBudget(std::alloc::System);

/// Turns off mimalloc's purging of freed memory (`mi_option_purge_delay` = -1).
#[cfg(not(target_env = "musl"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (libmimalloc-sys 0.1.49 names
    /// no constant for it; the crate is pinned).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; any value is
    // valid for this option (-1: never purge), and it is called once, before other threads.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[cfg(target_env = "musl")]
fn keep_freed_memory() {}

/// Supervised fine-tuning of language models, in Rust.
#[derive(Debug, Parser)]
#[command(name = "temper", version, long_version = LONG_VERSION.as_str(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Chat templates: render conversations, list the built-in ones.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Datasets: inspect what will be trained, prepare (tokenize, mask, pack).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Fine-tune a model (full or LoRA) from a run configuration.
    Train(train::TrainArgs),
    /// Export a run's checkpoint: the adapter (PEFT) and/or the merged model (HF directory).
    Export(train::ExportArgs),
    /// Generate text with a model (streamed as it is produced).
    Generate(model::GenerateArgs),
    /// Per-token log-probabilities, negative log-likelihood and perplexity of a text.
    Score(model::ScoreArgs),
    /// Evaluate a model (and adapter) on a held-out dataset: loss, exact and normalised
    /// match, instruction following, format overfitting; compare two evaluations.
    Eval(eval::EvalArgs),
    /// Training-step throughput and peak memory of a model shape on a device.
    Bench(bench::BenchArgs),
    /// The orchestrator of a multi-node run (node 0's `temper train` starts it).
    #[command(hide = true)]
    Orchestrate(nodes::OrchestrateArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Libraries' logs (burn-collective's servers log every transfer at INFO, to stdout, when
    // nothing else is set): warnings and errors only, on stderr.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Template(command) => template::run(command),
        Command::Data(command) => data::run(command),
        Command::Train(args) => train::train_command(&args),
        Command::Export(args) => train::export_command(&args),
        Command::Generate(args) => model::generate_command(&args),
        Command::Score(args) => model::score_command(&args),
        Command::Eval(args) => eval::eval_command(&args),
        Command::Bench(args) => bench::bench_command(&args),
        Command::Orchestrate(args) => nodes::orchestrate_command(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `temper --version`: the version and the devices compiled in.
static LONG_VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (devices: {})",
        env!("CARGO_PKG_VERSION"),
        backend::compiled_in().join(", ")
    )
});

/// Parses `key=value`.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{text}`"))
}
