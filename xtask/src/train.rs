//! `cargo xtask train [RECIPE | path.toml] [temper train flags]`: runs a recipe from
//! `configs/` with the release `temper` binary, fetching the assets it needs first.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{assets, cache_dir, root, run};

/// The recipe `cargo xtask train` runs with no arguments.
pub const DEFAULT_RECIPE: &str = "smollm2-lora-tasks";

pub fn train(args: &[&str]) -> Result<()> {
    let (recipe, rest) = match args.split_first() {
        Some((first, rest)) if !first.starts_with("--") => (*first, rest),
        _ => (DEFAULT_RECIPE, args),
    };
    let config = if recipe.ends_with(".toml") {
        root().join(recipe)
    } else {
        root().join("configs").join(format!("{recipe}.toml"))
    };
    if !config.is_file() {
        let known: Vec<String> = std::fs::read_dir(root().join("configs"))?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .into_string()
                    .ok()?
                    .strip_suffix(".toml")
                    .map(str::to_owned)
            })
            .collect();
        bail!(
            "{}: no such recipe (known: {})",
            config.display(),
            known.join(", ")
        );
    }
    assets::fetch_all()?;
    // The binary gets the backend `--device` asks for (`--device cuda` builds with `cuda`).
    let device = rest
        .windows(2)
        .find(|pair| pair[0] == "--device")
        .map_or("cpu", |pair| pair[1]);
    let binary = crate::release_temper(device)?;
    // Recipes name assets under `.cache/temper`; follow $TEMPER_CACHE when it moves them.
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let mut overrides = Vec::new();
    let cache = cache_dir().display().to_string();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        if let Some(rest) = value.strip_prefix(".cache/temper/")
            && matches!(key, "path" | "tokenizer")
        {
            overrides.push(format!("model.{key}={cache}/{rest}"));
        }
    }
    let mut command = Command::new(&binary);
    command
        .current_dir(root())
        .arg("train")
        .arg("--config")
        .arg(&config);
    for assignment in &overrides {
        command.args(["--set", assignment]);
    }
    run(command.args(rest))
}
