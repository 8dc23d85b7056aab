//! `cargo xtask <task>`: project automation. It fetches assets and runs commands; it builds no
//! model itself.
//!
//! * `assets`   fetch the offline assets of DESIGN.md into the git-ignored cache (idempotent)
//! * `test`     fetch assets, then run the whole test suite
//! * `train [RECIPE] [flags]`   run a recipe from `configs/` (default: LoRA SFT of
//!   SmolLM2-135M-Instruct on the shipped tasks) with the release `temper` binary
//! * `bench`   all of the following, written to `docs/benchmarks.md`:
//!   * `bench data [--n N]`   data-pipeline throughput next to the Python baseline
//!   * `bench data --scale [--n N]`   a million examples: throughput and peak memory next to a
//!     Hugging Face `datasets` pipeline (`map` with `num_proc=2`)
//!   * `bench train [--steps N] [--device D]`   training-step throughput and peak memory next to
//!     PyTorch (GPT-2 124M full and LoRA, SmolLM2-135M shape LoRA)
//!   * `bench packing [--steps N]`   trained tokens per second with packing vs padding
//!   * `bench generate`   generation tokens/s (one sequence, a batch of 16) next to transformers
//! * `fuzz [TARGET] [--seconds N] [--seed S]`   mutation-fuzz the parsers of user files
//!   (records, templates, tokenizer configs, run configs, GGUF, safetensors, trainer states,
//!   tokenizers); N seconds per target, default 60

#![allow(clippy::print_stdout)]

mod assets;
mod bench;
mod bench_distributed;
mod bench_train;
mod train;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const BENCH_USAGE: &str = "bench [data [--n N] | data --scale [--n N] | train [--steps N] [--device D] | packing [--steps N] | generate | distributed [--steps N]]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["assets"] => assets::fetch_all().map(|_| ()),
        ["test", rest @ ..] => test(rest),
        ["train", rest @ ..] => train::train(rest),
        ["bench"] => bench::data(&[])
            .and_then(|()| bench_train::train(&[]))
            .and_then(|()| bench_train::packing(&[]))
            .and_then(|()| bench::generate(&[]))
            .and_then(|()| bench::data(&["--scale"]))
            .and_then(|()| bench_distributed::distributed(&[])),
        ["bench", "data", rest @ ..] => bench::data(rest),
        ["bench", "train", rest @ ..] => bench_train::train(rest),
        ["bench", "packing", rest @ ..] => bench_train::packing(rest),
        ["bench", "generate", rest @ ..] => bench::generate(rest),
        ["bench", "distributed", rest @ ..] => bench_distributed::distributed(rest),
        ["bench", ..] => bail!("usage: {BENCH_USAGE}"),
        ["fuzz", rest @ ..] => fuzz(rest),
        _ => {
            println!(
                "usage: cargo xtask <assets | test [cargo test args] | train [RECIPE] [temper train flags] | {BENCH_USAGE} | fuzz [TARGET] [--seconds N] [--seed S]>"
            );
            if args.is_empty() {
                Ok(())
            } else {
                bail!("unknown task `{}`", args.join(" "))
            }
        }
    }
}

/// The repository root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_owned()
}

/// Where fetched assets live: `$TEMPER_CACHE`, else `.cache/temper` in the repository.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TEMPER_CACHE")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/temper"))
}

/// Builds the release `temper` with the backend `device` needs and returns its path.
pub fn release_temper(device: &str) -> Result<PathBuf> {
    let feature = match device.split(':').next().unwrap_or(device) {
        "cpu" => None,
        "ndarray" => Some("ndarray"),
        "wgpu" => Some("wgpu"),
        "cuda" => Some("cuda"),
        other => bail!("--device {other}: expected cpu, ndarray, wgpu[:N] or cuda[:N]"),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(root())
        .args(["build", "--release", "--quiet", "-p", "temper-cli"]);
    if let Some(feature) = feature {
        command.args(["--features", feature]);
    }
    run(&mut command)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target.join("release/temper"))
}

/// Runs a command, failing with its command line when it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn test(extra: &[&str]) -> Result<()> {
    assets::fetch_all()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(root())
        .args(["test", "--workspace"])
        .args(extra))
}

/// Runs the fuzzer of `tests/src/fuzz.rs` (it needs the assets for its GGUF and tokenizer
/// seeds).
fn fuzz(args: &[&str]) -> Result<()> {
    assets::fetch_all()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(root())
        .args([
            "run",
            "--quiet",
            "-p",
            "temper-tests",
            "--bin",
            "fuzz",
            "--",
        ])
        .args(args))
}
