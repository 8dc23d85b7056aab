//! Invariant: temper-chat and temper-data have no dependency, direct or transitive, on burn.
//! Invariant: the burn-free crates depend only downwards (temper-chat never on temper-data).
//! Invariant: temper-store depends on no temper crate; the burn siblings stand on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;

/// Every package `root` pulls in as a normal dependency, as `cargo tree` resolves it (with
/// features, so optional dependencies that are off do not count).
fn dependency_closure(root: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--package",
            root,
            "--manifest-path",
        ])
        .arg(temper_tests::root().join("Cargo.toml"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != root)
        .map(str::to_owned)
        .collect()
}

#[test]
fn burn_free_crates_do_not_depend_on_burn() {
    for krate in ["temper-chat", "temper-data"] {
        let closure = dependency_closure(krate);
        let burn: Vec<&String> = closure
            .iter()
            .filter(|name| name.starts_with("burn") || name.starts_with("cubecl"))
            .collect();
        assert!(burn.is_empty(), "{krate} depends on {burn:?}");
        assert!(
            closure.contains("serde"),
            "the closure of {krate} was computed"
        );
    }
}

#[test]
fn temper_chat_does_not_depend_on_temper_data() {
    assert!(!dependency_closure("temper-chat").contains("temper-data"));
    assert!(dependency_closure("temper-data").contains("temper-chat"));
}

#[test]
fn temper_models_stands_apart_from_the_data_crates() {
    // DESIGN.md: the burn crates are siblings that the trainer combines; models need no
    // templates or datasets.
    let closure = dependency_closure("temper-models");
    assert!(
        closure.iter().any(|name| name == "burn"),
        "temper-models is built on burn"
    );
    for forbidden in ["temper-chat", "temper-data", "tokenizers"] {
        assert!(
            !closure.contains(forbidden),
            "temper-models depends on {forbidden}"
        );
    }
}

#[test]
fn the_burn_crates_are_siblings() {
    // DESIGN.md: temper-models, temper-lora and temper-optim do not depend on each other,
    // nor on the data crates; temper-train composes them.
    let siblings = ["temper-models", "temper-lora", "temper-optim"];
    for krate in siblings {
        let closure = dependency_closure(krate);
        for other in siblings
            .iter()
            .chain(&["temper-data", "temper-chat", "temper-train"])
        {
            assert!(
                *other == krate || !closure.contains(*other),
                "{krate} depends on {other}"
            );
        }
    }
    let train = dependency_closure("temper-train");
    for needed in siblings.iter().chain(&["temper-data"]) {
        assert!(train.contains(*needed), "temper-train composes {needed}");
    }
}

#[test]
fn temper_store_is_beneath_the_burn_crates() {
    // DESIGN.md / ARCHITECTURE.md: the siblings share parameter names and file writing through
    // temper-store, which knows none of them.
    let closure = dependency_closure("temper-store");
    let temper: Vec<&String> = closure
        .iter()
        .filter(|name| name.starts_with("temper-"))
        .collect();
    assert!(temper.is_empty(), "temper-store depends on {temper:?}");
    for krate in ["temper-models", "temper-lora", "temper-optim"] {
        assert!(
            dependency_closure(krate).contains("temper-store"),
            "{krate} names parameters through temper-store"
        );
    }
}
