//! The `temper` command line.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod backend;
mod bench;
mod data;
mod model;
mod template;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Training-step throughput and peak memory of a model shape on a device.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Template(command) => template::run(command),
        Command::Data(command) => data::run(command),
        Command::Train(args) => train::train_command(&args),
        Command::Export(args) => train::export_command(&args),
        Command::Generate(args) => model::generate_command(&args),
        Command::Score(args) => model::score_command(&args),
        Command::Bench(args) => bench::bench_command(&args),
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
