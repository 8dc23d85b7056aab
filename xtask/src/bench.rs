//! `cargo xtask bench data`: the data pipeline against the Python baseline, same machine, same run.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{assets, root, run};

pub fn data(args: &[&str]) -> Result<()> {
    let examples: usize = match args {
        [] => 50_000,
        ["--n", n] => n.parse().context("--n takes a number")?,
        _ => bail!("usage: cargo xtask bench data [--n N]"),
    };
    let assets = assets::fetch_all()?;
    let root = root();
    let work = crate::cache_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let data = work.join(format!("alpaca-{examples}.jsonl"));
    if !data.is_file() {
        run(Command::new("python3")
            .current_dir(&root)
            .args(["datasets/generate.py", "--alpaca-out"])
            .arg(&data)
            .args(["--n", &examples.to_string(), "--seed", "7"]))?;
    }
    let temper = crate::release_temper("cpu")?;

    let tokenizer = assets.gpt2_tokenizer.display().to_string();
    let data_arg = data.display().to_string();
    let rust_args = [
        "data",
        "prepare",
        &data_arg,
        "--tokenizer",
        &tokenizer,
        "--max-length",
        "512",
        "--packing",
        "--json",
    ];
    let mut rust_runs = Vec::new();
    for _ in 0..3 {
        rust_runs.push(json_of(Command::new(&temper).args(rust_args))?);
    }
    let python = |mode: &[&str]| -> Result<Option<serde_json::Value>> {
        let mut command = Command::new("python3");
        command
            .current_dir(&root)
            .args([
                "xtask/bench/data_pipeline.py",
                "--data",
                &data_arg,
                "--tokenizer",
                &tokenizer,
                "--max-length",
                "512",
                "--json",
            ])
            .args(mode);
        let output = command.output().context("cannot run python3")?;
        if output.status.code() == Some(3) {
            println!(
                "python baseline skipped: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return Ok(None);
        }
        if !output.status.success() {
            bail!(
                "python baseline failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Some(
            serde_json::from_slice(&output.stdout).context("python baseline printed no JSON")?,
        ))
    };
    let python_encode = python(&[])?;
    let python_batch = python(&["--encode-batch"])?;

    let best = rust_runs
        .iter()
        .max_by(|a, b| {
            a["examples_per_second"]
                .as_f64()
                .partial_cmp(&b["examples_per_second"].as_f64())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .context("no Rust run")?;
    let rate = |v: &serde_json::Value| v["examples_per_second"].as_f64().unwrap_or(f64::NAN);
    let mut table = String::new();
    table.push_str("| pipeline | examples/s | seconds | tokens | trained tokens | packs | packing efficiency | vs Python encode |\n");
    table.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let base = python_encode.as_ref().map(rate);
    let mut row = |name: &str, v: &serde_json::Value| {
        let ratio = base.map_or("n/a".to_owned(), |base| format!("{:.1}x", rate(v) / base));
        table.push_str(&format!(
            "| {name} | {:.0} | {:.2} | {} | {} | {} | {:.4} | {ratio} |\n",
            rate(v),
            v["seconds"].as_f64().unwrap_or(f64::NAN),
            v["tokens"],
            v["trained_tokens"],
            v["packs"],
            v["packing_efficiency"].as_f64().unwrap_or(f64::NAN),
        ));
    };
    row("temper (Rust, all cores, best of 3)", best);
    if let Some(v) = &python_encode {
        row("Python: jinja2 + tokenizers `encode` per example", v);
    }
    if let Some(v) = &python_batch {
        row("Python: jinja2 + tokenizers `encode_batch`", v);
    }
    let machine = machine_description();
    let section = format!(
        "## Data pipeline\n\nRead, render with the alpaca template, tokenize with the GPT-2 tokenizer, build loss masks, \
         truncate to 512 tokens and pack (best-fit decreasing) {examples} generated alpaca examples \
         (`datasets/generate.py --n {examples} --seed 7`).\n\nMachine: {machine}.\n\nCommand: `cargo xtask bench data`\n\n{table}"
    );
    println!("\n{section}");
    write_section(
        &root.join("docs/benchmarks.md"),
        "## Data pipeline",
        &section,
    )?;
    Ok(())
}

pub fn json_of(command: &mut Command) -> Result<serde_json::Value> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("{command:?} printed no JSON"))
}

pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// Replaces the section starting with `heading` (up to the next `## `) in a markdown file, or
/// appends it; written through a temporary file.
pub fn write_section(path: &std::path::Path, heading: &str, section: &str) -> Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".to_owned());
    let updated = match existing.find(heading) {
        Some(start) => {
            let rest = &existing[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(existing.len(), |i| start + heading.len() + i + 1);
            let rest = &existing[end..];
            let gap = if rest.is_empty() { "\n" } else { "\n\n" };
            format!("{}{}{gap}{rest}", &existing[..start], section.trim_end())
        }
        None => format!("{}\n\n{section}", existing.trim_end()),
    };
    let temporary = path.with_extension("md.partial");
    std::fs::write(&temporary, updated)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

/// `cargo xtask bench generate`: `temper bench --model` (one sequence, and 16 prompts as a
/// batch, 32 new tokens each) next to transformers' `generate` on the same prompts and the
/// same dequantized SmolLM2-135M weights, same threads, in this run.
pub fn generate(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask bench generate");
    }
    const PROMPTS: usize = 16;
    const NEW_TOKENS: &str = "32";
    let assets = assets::fetch_all()?;
    let root = root();
    // The first 16 held-out task instructions: prompts of different lengths.
    let tasks = std::fs::read_to_string(root.join("datasets/tasks/test.alpaca.jsonl"))?;
    let prompts: Vec<String> = tasks
        .lines()
        .take(PROMPTS)
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line)?;
            Ok(record["instruction"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
        })
        .collect::<Result<_>>()?;
    let work = crate::cache_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let prompts_path = work.join("generate-prompts.json");
    std::fs::write(&prompts_path, serde_json::to_string(&prompts)?)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let temper = crate::release_temper("cpu")?;
    let model = assets.smollm2_gguf.display().to_string();
    let prompts_arg = prompts_path.display().to_string();
    let ours = |weights: &str| {
        json_of(Command::new(&temper).args([
            "bench",
            "--model",
            &model,
            "--prompts",
            &prompts_arg,
            "--new-tokens",
            NEW_TOKENS,
            "--weights",
            weights,
            "--json",
        ]))
    };
    let (f32_weights, f16_weights) = (ours("f32")?, ours("f16")?);
    let output = Command::new("python3")
        .current_dir(&root)
        .args([
            "xtask/bench/generate.py",
            "--gguf",
            &model,
            "--prompts",
            &prompts_arg,
        ])
        .args([
            "--new-tokens",
            NEW_TOKENS,
            "--threads",
            &threads.to_string(),
        ])
        .output()
        .context("cannot run python3")?;
    let theirs: Option<serde_json::Value> = match output.status.code() {
        Some(3) => {
            println!(
                "transformers baseline skipped: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            None
        }
        Some(0) => {
            Some(serde_json::from_slice(&output.stdout).context("generate.py printed no JSON")?)
        }
        _ => bail!(
            "transformers baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    let rate = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let mut table = String::from(
        "| | one sequence, tokens/s | 16 prompts in a batch, tokens/s |\n|---|---:|---:|\n",
    );
    for (name, report) in [
        ("temper", Some(&f32_weights)),
        ("temper, f16 weights (`--weights f16`)", Some(&f16_weights)),
        ("transformers `generate`", theirs.as_ref()),
    ] {
        if let Some(report) = report {
            table.push_str(&format!(
                "| {name} | {:.1} | {:.1} |\n",
                rate(report, "single_tokens_per_second"),
                rate(report, "batch_tokens_per_second")
            ));
        }
    }
    if let Some(theirs) = &theirs {
        for (name, ours) in [("temper", &f32_weights), ("temper f16", &f16_weights)] {
            table.push_str(&format!(
                "| {name} / transformers | {:.2}x | {:.2}x |\n",
                rate(ours, "single_tokens_per_second") / rate(theirs, "single_tokens_per_second"),
                rate(ours, "batch_tokens_per_second") / rate(theirs, "batch_tokens_per_second")
            ));
        }
    }
    let machine = machine_description();
    let section = format!(
        "## Generation\n\nGreedy generation with SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantized to f32 by both; \
         temper's f16 row keeps the linear layers' and the token embedding's weights in f16), \
         {NEW_TOKENS} new tokens per prompt (no stop token), timed around the whole generation (prefill included): \
         the first prompt alone, and the first {PROMPTS} held-out task instructions of `datasets/tasks` as one \
         left-padded batch. transformers runs with {threads} threads.\n\nMachine: {machine}.\n\n\
         Command: `cargo xtask bench generate`\n\n{table}"
    );
    println!("\n{section}");
    write_section(&root.join("docs/benchmarks.md"), "## Generation", &section)
}
