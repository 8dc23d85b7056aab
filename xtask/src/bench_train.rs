//! `cargo xtask bench train` and `cargo xtask bench packing`.
//!
//! * train: training-step throughput and peak memory of `temper bench` for GPT-2 124M (full
//!   fine-tuning and LoRA) and the SmolLM2-135M shape (LoRA), each next to the same step in
//!   PyTorch + transformers (+ peft) from `xtask/bench/train_step.py` when torch is installed,
//!   one process per measurement, all in this run. Writes the table and a chart to
//!   `docs/benchmarks.md` and `docs/benchmarks-training.svg`.
//! * packing: tokens trained per second of wall time on the shipped dataset with packing and
//!   with padding (`temper train` of the gpt2-mini recipe).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::{json_of, machine_description, write_section};
use crate::{release_temper, root};

struct Case {
    name: &'static str,
    model: &'static str,
    args: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "GPT-2 124M, full fine-tuning, 4 x 512",
        model: "gpt2-124m",
        args: &["--mode", "full", "--batch", "4", "--seq", "512"],
    },
    Case {
        name: "GPT-2 124M, LoRA r=8 on attention (c_attn, attn.c_proj), 4 x 512",
        model: "gpt2-124m",
        args: &[
            "--mode",
            "lora",
            "--lora-rank",
            "8",
            "--lora-targets",
            "c_attn,attn.c_proj",
            "--batch",
            "4",
            "--seq",
            "512",
        ],
    },
    Case {
        name: "SmolLM2-135M shape, LoRA r=16 all-linear, 2 x 512",
        model: "smollm2-135m",
        args: &[
            "--mode",
            "lora",
            "--lora-rank",
            "16",
            "--lora-targets",
            "all-linear",
            "--batch",
            "2",
            "--seq",
            "512",
        ],
    },
];

const MATMUL: &str = "2048";

/// Untimed steps before the timed ones. The first step after the first one is still slow in
/// both implementations (allocator pools and page tables still growing): two warm-up steps
/// measure the steady state.
const WARMUP: &str = "2";

pub fn train(args: &[&str]) -> Result<()> {
    let mut steps = "3";
    let mut device = "cpu";
    let mut rest = args;
    while let [flag, value, tail @ ..] = rest {
        match *flag {
            "--steps" => steps = value,
            "--device" => device = value,
            _ => bail!("usage: cargo xtask bench train [--steps N] [--device DEVICE]"),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        bail!("usage: cargo xtask bench train [--steps N] [--device DEVICE]");
    }
    let temper = release_temper(device)?;
    let root = root();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let torch_device = if device.starts_with("cuda") {
        device
    } else {
        "cpu"
    };

    let mut rows = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        let config = root.join(format!("configs/models/{}/config.json", case.model));
        let config = config.display().to_string();
        let matmul: &[&str] = if index == 0 {
            &["--matmul", MATMUL]
        } else {
            &[]
        };
        println!("temper: {}", case.name);
        let ours = json_of(
            Command::new(&temper)
                .current_dir(&root)
                .args([
                    "bench",
                    "--json",
                    "--model-config",
                    &config,
                    "--steps",
                    steps,
                    "--warmup",
                    WARMUP,
                ])
                .args(["--device", device])
                .args(case.args)
                .args(matmul),
        )?;
        println!("  {:.1} tokens/s", number(&ours, "tokens_per_second"));
        println!("pytorch: {}", case.name);
        let mut python = Command::new("python3");
        python
            .current_dir(&root)
            .args([
                "xtask/bench/train_step.py",
                "--json",
                "--model-config",
                &config,
            ])
            .args([
                "--steps",
                steps,
                "--warmup",
                WARMUP,
                "--threads",
                &threads,
                "--device",
                torch_device,
            ])
            .args(case.args)
            .args(matmul);
        let theirs = python_json(&mut python)?;
        if let Some(theirs) = &theirs {
            println!("  {:.1} tokens/s", number(theirs, "tokens_per_second"));
        }
        rows.push((case, ours, theirs));
    }

    let machine = machine_description();
    let mut table = String::from(
        "| configuration | temper tokens/s | PyTorch tokens/s | speed ratio | temper peak memory | PyTorch peak memory | memory ratio | temper GFLOP/s | PyTorch GFLOP/s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (case, ours, theirs) in &rows {
        let memory = |v: &Value| {
            v["peak_device_bytes"]
                .as_f64()
                .or_else(|| v["peak_rss_bytes"].as_f64())
        };
        let gb = |bytes: Option<f64>| bytes.map_or("n/a".into(), |b| format!("{:.2} GB", b / 1e9));
        let (their_rate, their_memory, their_gflops) = match theirs {
            Some(v) => (
                format!("{:.1}", number(v, "tokens_per_second")),
                gb(memory(v)),
                format!("{:.1}", number(v, "achieved_gflops")),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "n/a".into(),
        };
        writeln!(
            table,
            "| {} | {:.1} | {their_rate} | {} | {} | {their_memory} | {} | {:.1} | {their_gflops} |",
            case.name,
            number(ours, "tokens_per_second"),
            ratio(
                ours["tokens_per_second"].as_f64(),
                theirs
                    .as_ref()
                    .and_then(|v| v["tokens_per_second"].as_f64())
            ),
            gb(memory(ours)),
            ratio(memory(ours), theirs.as_ref().and_then(memory)),
            number(ours, "achieved_gflops"),
        )?;
    }
    let peak = |v: &Value| v["matmul_gflops"].as_f64();
    let first = &rows[0];
    let matmul_line = format!(
        "Measured {MATMUL} x {MATMUL} x {MATMUL} f32 matmul on the same device: temper (burn-flex gemm) {}, PyTorch {} GFLOP/s.",
        peak(&first.1).map_or("n/a".into(), |g| format!("{g:.1}")),
        first
            .2
            .as_ref()
            .and_then(peak)
            .map_or("n/a".into(), |g| format!("{g:.1}")),
    );
    let implementation = rows
        .iter()
        .filter_map(|(_, _, theirs)| theirs.as_ref())
        .filter_map(|v| v["implementation"].as_str())
        .max_by_key(|s| s.len())
        .unwrap_or("PyTorch not installed: baseline skipped");
    let chart = chart(&rows);
    std::fs::write(root.join("docs/benchmarks-training.svg"), chart)?;
    let section = format!(
        "## Training step\n\n\
         One optimizer step (forward, cross-entropy over every position, backward, gradient clipping at 1.0, AdamW) \
         on random tokens with random weights, median of {steps} timed steps after {WARMUP} warm-up steps. \
         Tokens/s counts every token of the batch; GFLOP/s counts model FLOPs (6N per token for full fine-tuning, \
         4N for LoRA, plus 12 x layers x width x sequence for attention). Peak memory is the process's peak RSS \
         on CPU (device memory on GPU). Each measurement is its own process; temper and PyTorch ran one after the \
         other in the same run.\n\n\
         Machine: {machine}; device `{device}`. Baseline: {implementation}, {threads} threads.\n\n\
         Command: `cargo xtask bench train`\n\n\
         {table}\n{matmul_line}\n\n![tokens per second, temper and PyTorch](benchmarks-training.svg)\n"
    );
    println!("\n{section}");
    write_section(
        &root.join("docs/benchmarks.md"),
        "## Training step",
        &section,
    )?;
    Ok(())
}

pub fn number(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or(f64::NAN)
}

/// Runs the Python baseline; `None` when its dependencies are missing (exit status 3).
pub fn python_json(command: &mut Command) -> Result<Option<Value>> {
    let output = command.output().context("cannot run python3")?;
    if output.status.code() == Some(3) {
        println!(
            "  PyTorch baseline skipped: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return Ok(None);
    }
    if !output.status.success() {
        bail!(
            "PyTorch baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the PyTorch baseline printed no JSON")?;
    Ok(Some(serde_json::from_str(line)?))
}

/// A horizontal bar chart of tokens/s, temper and PyTorch per configuration.
fn chart(rows: &[(&Case, Value, Option<Value>)]) -> String {
    let rate = |v: &Value| v["tokens_per_second"].as_f64().unwrap_or(0.0);
    let largest = rows
        .iter()
        .flat_map(|(_, a, b)| [Some(rate(a)), b.as_ref().map(rate)])
        .flatten()
        .fold(1.0, f64::max);
    let (left, width, bar, gap) = (420.0, 360.0, 18.0, 16.0);
    let height = 40.0 + rows.len() as f64 * (2.0 * bar + gap);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">Training-step throughput (tokens/s, higher is better)</text>\n\
         <rect x=\"{left}\" y=\"8\" width=\"10\" height=\"10\" fill=\"#d95f02\"/><text x=\"{}\" y=\"17\">temper</text>\n\
         <rect x=\"{}\" y=\"8\" width=\"10\" height=\"10\" fill=\"#7570b3\"/><text x=\"{}\" y=\"17\">PyTorch</text>\n",
        left + width + 80.0,
        left + 14.0,
        left + 70.0,
        left + 84.0,
    );
    for (index, (case, ours, theirs)) in rows.iter().enumerate() {
        let top = 34.0 + index as f64 * (2.0 * bar + gap);
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{}\">{}</text>",
            top + bar + 4.0,
            case.name.replace('&', "&amp;")
        );
        for (offset, value, color) in [
            (0.0, Some(rate(ours)), "#d95f02"),
            (bar, theirs.as_ref().map(rate), "#7570b3"),
        ] {
            let Some(value) = value else { continue };
            let length = width * value / largest;
            let _ = writeln!(
                svg,
                "<rect x=\"{left}\" y=\"{}\" width=\"{length:.1}\" height=\"{}\" fill=\"{color}\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{value:.1}</text>",
                top + offset,
                bar - 2.0,
                left + length + 4.0,
                top + offset + bar - 5.0,
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Tokens trained per second of wall time with packing and with padding, on the shipped
/// tasks dataset (`configs/gpt2-mini-full.toml`, a few optimizer steps each).
pub fn packing(args: &[&str]) -> Result<()> {
    let steps = match args {
        [] => "8",
        ["--steps", n] => n,
        _ => bail!("usage: cargo xtask bench packing [--steps N]"),
    };
    crate::assets::fetch_all()?;
    let temper = release_temper("cpu")?;
    let root = root();
    let tokenizer = crate::cache_dir().join("gpt2/tokenizer.json");
    let mut rows = Vec::new();
    for packing in [true, false] {
        let output: PathBuf = crate::cache_dir().join(format!(
            "bench/packing-{}",
            if packing { "on" } else { "off" }
        ));
        let _ = std::fs::remove_dir_all(&output);
        let sets = [
            format!("model.tokenizer={}", tokenizer.display()),
            format!("train.output_dir={}", output.display()),
            format!("data.packing={packing}"),
            format!("train.max_steps={steps}"),
            "train.gradient_accumulation_steps=1".into(),
            "train.eval_steps=0".into(),
            "train.save_steps=0".into(),
            "eval.before_training=false".into(),
            "eval.max_rows=4".into(),
            "eval.generate_examples=0".into(),
            "export.merged=false".into(),
        ];
        let mut command = Command::new(&temper);
        command
            .current_dir(&root)
            .args(["train", "--config", "configs/gpt2-mini-full.toml"]);
        for set in &sets {
            command.args(["--set", set]);
        }
        println!("packing = {packing}");
        let status = command.status().context("cannot run temper")?;
        if !status.success() {
            bail!("{command:?} failed with {status}");
        }
        let metrics = std::fs::read_to_string(output.join("metrics.jsonl"))?;
        let (mut trained, mut tokens, mut seconds, mut rows_seen) = (0u64, 0u64, 0f64, 0u64);
        for line in metrics.lines() {
            let value: Value = serde_json::from_str(line)?;
            if value["kind"] == "train" {
                trained += value["trained_tokens"].as_u64().unwrap_or(0);
                tokens += value["tokens"].as_u64().unwrap_or(0);
                seconds = value["elapsed_seconds"].as_f64().unwrap_or(seconds);
                rows_seen += 1;
            }
        }
        rows.push((packing, trained, tokens, seconds, rows_seen));
    }
    let mut table = String::from(
        "| batches | steps | trained tokens | real (non-padding) tokens | seconds | trained tokens/s | vs padding |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let padded_rate = rows
        .iter()
        .find(|r| !r.0)
        .map(|r| r.1 as f64 / r.3)
        .unwrap_or(f64::NAN);
    for (packing, trained, tokens, seconds, steps) in &rows {
        let rate = *trained as f64 / seconds;
        writeln!(
            table,
            "| {} | {steps} | {trained} | {tokens} | {seconds:.1} | {rate:.1} | {:.2}x |",
            if *packing {
                "packed (best-fit, 256 tokens)"
            } else {
                "padded (one example per row)"
            },
            rate / padded_rate
        )?;
    }
    let section = format!(
        "## Packing vs padding\n\n\
         Trained (answer) tokens per second of wall time, `configs/gpt2-mini-full.toml` (GPT-2-shaped, 6 layers, \
         d_model 384, random init, full fine-tuning) on the shipped tasks dataset, batch 4, {steps} optimizer steps \
         each, no evaluation. Padded batches are as long as their longest example (dynamic padding), so a padded \
         step is cheaper but trains far fewer tokens; packing fills 256-token rows with whole examples that cannot \
         see each other.\n\n\
         Machine: {}.\n\nCommand: `cargo xtask bench packing`\n\n{table}",
        machine_description()
    );
    println!("\n{section}");
    write_section(
        &root.join("docs/benchmarks.md"),
        "## Packing vs padding",
        &section,
    )?;
    Ok(())
}
