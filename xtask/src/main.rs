//! `cargo xtask <task>`: project automation. It fetches assets and runs commands; it builds no
//! model itself.
//!
//! * `assets`   fetch the offline assets of DESIGN.md into the git-ignored cache (idempotent)
//! * `test`     fetch assets, then run the whole test suite
//! * `train [RECIPE] [flags]`   run a recipe from `configs/` (default: LoRA SFT of
//!   SmolLM2-135M-Instruct on the shipped tasks) with the release `temper` binary
//! * `bench data [--n N]`   data-pipeline throughput next to the Python baseline, written to
//!   `docs/benchmarks.md`

#![allow(clippy::print_stdout)]

mod assets;
mod bench;
mod train;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["assets"] => assets::fetch_all().map(|_| ()),
        ["test", rest @ ..] => test(rest),
        ["train", rest @ ..] => train::train(rest),
        ["bench", "data", rest @ ..] => bench::data(rest),
        ["bench", ..] => bail!("usage: cargo xtask bench data [--n N]"),
        _ => {
            println!(
                "usage: cargo xtask <assets | test [cargo test args] | train [RECIPE] [temper train flags] | bench data [--n N]>"
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
