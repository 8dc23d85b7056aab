//! `cargo xtask bench distributed`: what data parallelism costs on this machine. For the
//! SmolLM2-135M shape (LoRA r=16 all-linear, and full fine-tuning), `temper bench` runs the
//! same rows per step as 1 rank (2 rows), 2 ranks as threads of one process (1 row each) and
//! 2 ranks as 2 processes joined through the orchestrator on localhost; next to them,
//! PyTorch's gloo all-reduce of the same gradient bytes between 2 processes
//! (`xtask/bench/allreduce.py`). Writes the table to `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::{json_of, machine_description, write_section};
use crate::bench_train::{number, python_json};
use crate::{release_temper, root};

struct Case {
    name: &'static str,
    args: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "SmolLM2-135M shape, LoRA r=16 all-linear",
        args: &[
            "--mode",
            "lora",
            "--lora-rank",
            "16",
            "--lora-targets",
            "all-linear",
        ],
    },
    Case {
        name: "SmolLM2-135M shape, full fine-tuning",
        args: &["--mode", "full"],
    },
];

const SEQ: &str = "512";
const COORDINATOR: &str = "127.0.0.1:29710";

pub fn distributed(args: &[&str]) -> Result<()> {
    let steps = match args {
        [] => "3",
        ["--steps", n] => n,
        _ => bail!("usage: cargo xtask bench distributed [--steps N]"),
    };
    let temper = release_temper("cpu")?;
    let root = root();
    let config = root.join("configs/models/smollm2-135m/config.json");
    let config = config.display().to_string();
    let bench = |case: &Case, extra: &[&str]| {
        let mut command = Command::new(&temper);
        command.current_dir(&root).args([
            "bench",
            "--json",
            "--model-config",
            &config,
            "--seq",
            SEQ,
            "--steps",
            steps,
            "--warmup",
            "1",
        ]);
        command.args(case.args).args(extra);
        command
    };
    let mut rows = Vec::new();
    for case in CASES {
        println!("{}: 1 rank of 2 rows", case.name);
        let single = json_of(&mut bench(case, &["--batch", "2"]))?;
        println!("  {:.2} s/step", number(&single, "seconds_per_step"));
        println!("{}: 2 ranks (threads) of 1 row", case.name);
        let threads = json_of(&mut bench(case, &["--batch", "1", "--world-size", "2"]))?;
        println!("  {:.2} s/step", number(&threads, "seconds_per_step"));
        println!("{}: 2 ranks (processes) of 1 row", case.name);
        let node = |rank: &str| {
            let mut command = bench(case, &["--batch", "1", "--world-size", "2", "--nodes", "2"]);
            command.args(["--node-rank", rank, "--coordinator", COORDINATOR]);
            command
        };
        let other = node("1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting node 1")?;
        let processes = json_of(&mut node("0"));
        let other = other.wait_with_output()?;
        if !other.status.success() {
            bail!("node 1 failed: {}", String::from_utf8_lossy(&other.stderr));
        }
        let processes = processes?;
        println!("  {:.2} s/step", number(&processes, "seconds_per_step"));
        let elements = threads["all_reduce_bytes"].as_u64().unwrap_or(0) / 4;
        println!("pytorch gloo: all-reduce of {elements} f32 between 2 processes");
        let gloo = python_json(Command::new("python3").current_dir(&root).args([
            "xtask/bench/allreduce.py",
            "--json",
            "--elements",
            &elements.to_string(),
        ]))?;
        rows.push((case, single, threads, processes, gloo));
    }

    let mut table = String::from(
        "| configuration | gradient bytes per rank | 1 rank, 2 rows: s/step | 2 ranks (threads), 1 row each: s/step | all-reduce | 2 ranks (processes): s/step | all-reduce | PyTorch gloo all-reduce, 2 processes | temper (processes) / gloo |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (case, single, threads, processes, gloo) in &rows {
        let seconds = |v: &Value, key: &str| format!("{:.3} s", number(v, key));
        let gloo_seconds = gloo.as_ref().map(|g| number(g, "seconds"));
        writeln!(
            table,
            "| {} | {:.1} MB | {} | {} ({:.2}x) | {} | {} ({:.2}x) | {} | {} | {} |",
            case.name,
            number(threads, "all_reduce_bytes") / 1e6,
            seconds(single, "seconds_per_step"),
            seconds(threads, "seconds_per_step"),
            number(threads, "seconds_per_step") / number(single, "seconds_per_step"),
            seconds(threads, "all_reduce_seconds"),
            seconds(processes, "seconds_per_step"),
            number(processes, "seconds_per_step") / number(single, "seconds_per_step"),
            seconds(processes, "all_reduce_seconds"),
            gloo_seconds.map_or("n/a".into(), |s| format!("{s:.3} s")),
            gloo_seconds.map_or("n/a".into(), |s| format!(
                "{:.2}x",
                number(processes, "all_reduce_seconds") / s
            )),
        )?;
    }
    let baseline = rows
        .iter()
        .find_map(|row| row.4.as_ref())
        .and_then(|g| g["implementation"].as_str())
        .unwrap_or("PyTorch not installed");
    let section = format!(
        "## Data parallelism\n\n\
         One optimizer step of the same 2 rows of {SEQ} random tokens: on 1 rank, and on 2 ranks of 1 row each whose gradients are summed by all-reduces in 25 MB buckets before the update (threads of one process, then 2 processes joined through node 0's orchestrator on localhost, over websockets), median of {steps} timed steps after 1 warm-up. The ratios in brackets are step times over the 1-rank step: both ranks share this machine's cores, so they show what data parallelism adds here, not a speed-up. The all-reduce columns are rank 0's time in all-reduces per step (the gradient sum and the small reductions of counts). Baseline: {baseline}, all-reducing the same number of f32 in the same buckets between 2 processes (`xtask/bench/allreduce.py`). See docs/distributed.md for the arithmetic of more devices.\n\n\
         Machine: {}.\n\n\
         Command: `cargo xtask bench distributed`\n\n{table}",
        machine_description()
    );
    write_section(
        &root.join("docs/benchmarks.md"),
        "## Data parallelism",
        &section,
    )?;
    println!("{section}");
    Ok(())
}
