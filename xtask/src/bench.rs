//! `cargo xtask bench data`: the data pipeline against the Python baseline, same machine, same run.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{assets, root, run};

pub fn data(args: &[&str]) -> Result<()> {
    let examples: usize = match args {
        [] => 50_000,
        ["--scale"] => return data_at_scale(SCALE_EXAMPLES),
        ["--scale", "--n", n] => return data_at_scale(n.parse().context("--n takes a number")?),
        ["--n", n] => n.parse().context("--n takes a number")?,
        _ => bail!("usage: cargo xtask bench data [--n N] | --scale [--n N]"),
    };
    let root = root();
    let BenchData {
        temper,
        tokenizer,
        data: data_arg,
    } = bench_data(examples)?;

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
        .max_by(|a, b| rate(a).total_cmp(&rate(b)))
        .context("no Rust run")?;
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

/// What both data benchmarks run: the release `temper`, the GPT-2 tokenizer and the
/// generated data file.
struct BenchData {
    temper: std::path::PathBuf,
    tokenizer: String,
    data: String,
}

fn bench_data(examples: usize) -> Result<BenchData> {
    let assets = assets::fetch_all()?;
    let data = generated_alpaca(examples)?;
    Ok(BenchData {
        temper: crate::release_temper("cpu")?,
        tokenizer: assets.gpt2_tokenizer.display().to_string(),
        data: data.display().to_string(),
    })
}

/// `datasets/generate.py --n EXAMPLES --seed 7`, generated once into the cache.
fn generated_alpaca(examples: usize) -> Result<std::path::PathBuf> {
    let work = crate::cache_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let data = work.join(format!("alpaca-{examples}.jsonl"));
    if !data.is_file() {
        run(Command::new("python3")
            .current_dir(root())
            .args(["datasets/generate.py", "--alpaca-out"])
            .arg(&data)
            .args(["--n", &examples.to_string(), "--seed", "7"]))?;
    }
    Ok(data)
}

/// The examples/s a `temper data prepare --json` (or the Python baseline) printed.
fn rate(stats: &serde_json::Value) -> f64 {
    stats["examples_per_second"].as_f64().unwrap_or(f64::NAN)
}

/// Examples of `cargo xtask bench data --scale`.
const SCALE_EXAMPLES: usize = 1_000_000;

/// `cargo xtask bench data --scale`: a million generated alpaca examples (GPT-2 tokenizer,
/// max_length 1024, packed) through `temper data prepare` and through a Hugging Face
/// `datasets` pipeline (`load_dataset` + `map(num_proc=2)` + BFD packing), with each one's
/// throughput and peak memory (the resident set of its whole process tree).
fn data_at_scale(examples: usize) -> Result<()> {
    let root = root();
    let BenchData {
        temper,
        tokenizer,
        data: data_arg,
    } = bench_data(examples)?;
    // Cold: tokenized from the file. Then once to fill a fresh prepared-data cache, and once
    // more to read it back.
    let cache = root.join(".cache/temper/bench/prepared-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let prepare = |extra: &[&str]| {
        let mut command = Command::new(&temper);
        command
            .env("TEMPER_CACHE", &cache)
            .args(["data", "prepare", &data_arg, "--tokenizer", &tokenizer])
            .args(["--max-length", "1024", "--packing", "--json"])
            .args(extra);
        json_and_peak_memory(&mut command)
    };
    // The fastest of three cold runs, and the largest peak of the three.
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(prepare(&["--no-cache"])?);
    }
    let our_peak = runs.iter().map(|(_, peak)| *peak).max().unwrap_or(0);
    let (ours, _) = runs
        .into_iter()
        .max_by(|(a, _), (b, _)| rate(a).total_cmp(&rate(b)))
        .context("no run")?;
    prepare(&[])?;
    let (cached, cached_peak) = prepare(&[])?;
    std::fs::remove_dir_all(&cache)?;
    let (theirs, their_peak) =
        json_and_peak_memory(Command::new("python3").current_dir(&root).args([
            "xtask/bench/data_pipeline.py",
            "--data",
            &data_arg,
            "--tokenizer",
            &tokenizer,
            "--max-length",
            "1024",
            "--json",
            "--datasets-map",
            "2",
        ]))?;
    let rate = |v: &serde_json::Value| v["examples_per_second"].as_f64().unwrap_or(f64::NAN);
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let mut table = String::new();
    table.push_str("| pipeline | examples/s | seconds | peak memory (GiB) | tokens | packs | examples/s vs datasets | memory vs datasets |\n");
    table.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (name, v, peak) in [
        (
            "temper data prepare (Rust, all cores, best of 3)",
            &ours,
            our_peak,
        ),
        (
            "temper data prepare, again (memory-mapped from the prepared-data cache)",
            &cached,
            cached_peak,
        ),
        (
            "Python: datasets load_dataset + map(num_proc=2) + BFD packing",
            &theirs,
            their_peak,
        ),
    ] {
        table.push_str(&format!(
            "| {name} | {:.0} | {:.1} | {:.2} | {} | {} | {:.1}x | {:.2}x |\n",
            rate(v),
            v["seconds"].as_f64().unwrap_or(f64::NAN),
            gib(peak),
            v["tokens"],
            v["packs"],
            rate(v) / rate(&theirs),
            peak as f64 / their_peak.max(1) as f64,
        ));
    }
    let section = format!(
        "## Data pipeline at scale\n\n{examples} generated alpaca examples (`datasets/generate.py --n {examples} --seed 7`), \
         rendered with the alpaca template, tokenized with the GPT-2 tokenizer, masked, truncated to 1024 tokens and packed. \
         Peak memory is the largest resident set of the whole process tree (the Python pipeline's workers included), \
         sampled every 20 ms.\n\nMachine: {}.\n\nCommand: `cargo xtask bench data --scale`\n\n{table}",
        machine_description()
    );
    println!("\n{section}");
    write_section(
        &root.join("docs/benchmarks.md"),
        "## Data pipeline at scale",
        &section,
    )
}

/// The JSON a command prints and the peak resident memory of its process tree, in bytes.
fn json_and_peak_memory(command: &mut Command) -> Result<(serde_json::Value, u64)> {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut text).map(|_| text)
    });
    let mut peak = 0;
    let status = loop {
        peak = peak.max(tree_resident_bytes(child.id()));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
        }
        bail!("{command:?} failed: {stderr}");
    }
    let value =
        serde_json::from_slice(&stdout).with_context(|| format!("{command:?} printed no JSON"))?;
    Ok((value, peak))
}

/// The resident memory of a process and all its descendants (Linux `/proc`), in bytes.
fn tree_resident_bytes(pid: u32) -> u64 {
    let resident = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024);
    let children: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .map(tree_resident_bytes)
        .sum();
    resident + children
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
