//! Invariant: temper-chat and temper-data have no dependency, direct or transitive, on burn.
//! Invariant: the burn-free crates depend only downwards (temper-chat never on temper-data).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

fn dependency_closure(root: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(temper_tests::root().join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes = metadata["resolve"]["nodes"].as_array().unwrap();
    let edges: HashMap<&str, Vec<&str>> = nodes
        .iter()
        .map(|node| {
            // Normal (non-dev, non-build) dependencies only: what a user of the crate pulls in.
            let deps = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|kind| kind["kind"].is_null())
                })
                .map(|dep| dep["pkg"].as_str().unwrap())
                .collect();
            (node["id"].as_str().unwrap(), deps)
        })
        .collect();
    let start = names
        .iter()
        .find(|(_, name)| **name == root)
        .map(|(id, _)| *id)
        .expect("package exists");
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        for dep in edges.get(id).into_iter().flatten() {
            if seen.insert(names[dep].to_owned()) {
                stack.push(dep);
            }
        }
    }
    seen
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
