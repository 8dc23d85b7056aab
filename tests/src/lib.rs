//! Helpers shared by Temper's end-to-end tests.

pub mod fuzz;
pub mod reference;
pub mod trajectory;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

/// A dataset of the workplace's shared data (`../shared/data/` beside the repository; CI lays
/// a copy there too). Panics when it is missing, as [`asset`] does.
pub fn shared_data(name: &str) -> PathBuf {
    let path = root().join("../shared/data").join(name);
    assert!(
        path.exists(),
        "MISSING SHARED DATA {}: the shared/ folder is expected beside the repository",
        path.display()
    );
    path
}

/// A fetched asset (see `cargo xtask assets`). Panics with instructions when it is missing:
/// these tests must not silently pass without their data.
pub fn asset(relative: &str) -> PathBuf {
    let cache = std::env::var_os("TEMPER_CACHE")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/temper"));
    let path = cache.join(relative);
    assert!(
        path.is_file(),
        "MISSING TEST ASSET {}: run `cargo xtask assets` first (CI does; `cargo xtask test` does it for you)",
        path.display()
    );
    path
}

/// A fresh scratch directory for test `name` (removed if an earlier run left it).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("temper-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The tiny recipe (`configs/tiny-smoke.toml`) writing to `output_dir`, with `extra`
/// overrides (`key=value`), its paths made absolute.
pub fn tiny(output_dir: &Path, extra: &[String]) -> temper_train::RunConfig {
    let mut overrides = vec![
        format!("model.tokenizer={}", asset("gpt2/tokenizer.json").display()),
        format!("train.output_dir={}", output_dir.display()),
    ];
    overrides.extend_from_slice(extra);
    let mut config =
        temper_train::RunConfig::load(&root().join("configs/tiny-smoke.toml"), &overrides)
            .expect("the tiny recipe loads");
    // Paths in the recipe are relative to the repository root.
    for path in [&mut config.model.path, &mut config.dataset.train[0].path] {
        *path = root().join(&*path);
    }
    if let Some(eval) = &mut config.dataset.eval {
        eval.path = root().join(&eval.path);
    }
    config
}

/// The lines of a run's `metrics.jsonl`.
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a metrics line"))
        .collect()
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a directory");
    for entry in std::fs::read_dir(from).expect("a readable directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("a copied file");
        }
    }
}
