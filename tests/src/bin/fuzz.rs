//! `cargo xtask fuzz [TARGET] [--seconds N] [--seed S]`: replays the committed regression
//! inputs, then fuzzes each target (or the one named) for N seconds (default 60), writing any
//! input that panics or hangs to `tests/fuzz/crashes/<target>/`. Exits 1 on a failure.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use temper_tests::fuzz::{Target, check, fuzz, regressions, save, targets};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| -> Option<u64> {
        let at = args.iter().position(|a| a == name)?;
        let value = args.get(at + 1)?;
        Some(value.parse().unwrap_or_else(|_| {
            eprintln!("error: {name} {value}: expected a whole number");
            std::process::exit(2)
        }))
    };
    let seconds = flag("--seconds").unwrap_or(60);
    let seed = flag("--seed").unwrap_or(0);
    let named: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| a)
        .collect();
    let all = targets();
    let chosen: Vec<&Target> = all
        .iter()
        .filter(|t| named.is_empty() || named.iter().any(|n| *n == t.name))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|t| t.name).collect();
        eprintln!("error: no target {named:?}; targets: {}", names.join(", "));
        std::process::exit(2);
    }
    let mut failed = false;
    for target in chosen {
        let scratch =
            std::env::temp_dir().join(format!("temper-fuzz-replay-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&scratch);
        for (path, input) in regressions(target) {
            if let Some(failure) = check(target, &input, &scratch) {
                println!(
                    "{}: regression {} fails again: {}",
                    target.name,
                    path.display(),
                    failure.what
                );
                failed = true;
            }
        }
        let started = Instant::now();
        let report = fuzz(target, seed, Duration::from_secs(seconds), u64::MAX);
        let elapsed = started.elapsed().as_secs_f64();
        print!(
            "{}: {} inputs in {elapsed:.0} s ({:.0}/s), ",
            target.name,
            report.inputs,
            report.inputs as f64 / elapsed.max(1e-9)
        );
        match report.failures.first() {
            None => println!("no panic, no hang"),
            Some(failure) => {
                failed = true;
                let saved = save(failure).map(|p| p.display().to_string());
                println!(
                    "{} (input saved to {})",
                    failure.what,
                    saved.unwrap_or_else(|e| e.to_string())
                );
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
