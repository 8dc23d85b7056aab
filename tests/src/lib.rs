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
