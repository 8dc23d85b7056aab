//! The console examples in `docs/*.md` are real: every `$ temper ...` line is run and each
//! output line shown under it must appear, in order, in what it prints. A line ending in `…`
//! only has to start the same; a line starting with `…` only has to end the same; `…` alone
//! stands for lines left out. Timings (`in 0.12s: ...`) are compared up to the time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn matches(expected: &str, actual: &str) -> bool {
    if let Some(prefix) = expected
        .split(" in 0.")
        .next()
        .filter(|_| expected.contains("examples/s"))
    {
        return actual.starts_with(prefix);
    }
    actual == expected
        || expected
            .strip_suffix('…')
            .is_some_and(|prefix| actual.starts_with(prefix.trim_end()))
        || expected
            .strip_prefix('…')
            .is_some_and(|suffix| actual.ends_with(suffix))
}

#[test]
fn console_examples_in_the_docs_are_real_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let binary = env!("CARGO_BIN_EXE_temper");
    let cache = std::env::var_os("TEMPER_CACHE")
        .filter(|dir| !dir.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/temper"));
    // The examples write their runs here; each run of this test starts without them, as a
    // reader's first run does (temper refuses to train into a directory that holds a run).
    for scratch in ["/tmp/temper-docs-tiny", "/tmp/rows.jsonl"] {
        let _ = std::fs::remove_dir_all(scratch);
        let _ = std::fs::remove_file(scratch);
    }
    let mut commands = 0;
    let mut failures = Vec::new();
    for doc in [
        "docs/datasets.md",
        "docs/templates.md",
        "docs/masking.md",
        "docs/models.md",
        "docs/training.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for block in text.split("```console\n").skip(1) {
            let block = block.split("```").next().unwrap();
            let mut runs: Vec<(&str, Vec<&str>)> = Vec::new();
            for line in block.lines() {
                match (line.strip_prefix("$ "), runs.last_mut()) {
                    (Some(command), _) => runs.push((command, Vec::new())),
                    (None, Some((_, expected))) => expected.push(line),
                    (None, None) => {}
                }
            }
            for (command, expected) in runs {
                // The docs use the default cache; a $TEMPER_CACHE elsewhere stands in for it.
                let cache_dir = cache.display().to_string();
                let command = command.replace(".cache/temper", &cache_dir);
                if command.contains(&cache_dir) && !cache.join("gpt2/tokenizer.json").is_file() {
                    panic!("MISSING TEST ASSET: run `cargo xtask assets` first ({doc}: {command})");
                }
                let script = format!("temper() {{ '{binary}' \"$@\"; }}; {command}");
                let output = Command::new("bash")
                    .arg("-c")
                    .arg(&script)
                    .current_dir(&root)
                    .output()
                    .unwrap();
                let printed = format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
                .replace(&cache_dir, ".cache/temper");
                let actual: Vec<&str> = printed.lines().collect();
                let mut position = 0;
                for line in expected
                    .iter()
                    .filter(|l| !l.trim().is_empty() && l.trim() != "…")
                {
                    match actual[position..].iter().position(|a| matches(line, a)) {
                        Some(found) => position += found + 1,
                        None => {
                            failures.push(format!(
                                "{doc}: `{command}`: no line {line:?} (in order) in:\n{printed}"
                            ));
                            break;
                        }
                    }
                }
                commands += 1;
            }
        }
    }
    assert!(commands >= 10, "{commands}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
