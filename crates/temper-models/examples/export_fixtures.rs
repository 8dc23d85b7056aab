//! Loads each parity fixture and saves it again with `CausalLm::save_hf_dir`, so that
//! `tests/fixtures/check_export.py` can check that `transformers` loads what temper writes:
//!
//! ```sh
//! cargo run -p temper-models --example export_fixtures -- /tmp/temper-export
//! python crates/temper-models/tests/fixtures/check_export.py /tmp/temper-export
//! ```

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use temper_models::CausalLm;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: export_fixtures OUT_DIR")?,
    );
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let device = Default::default();
    // Every fixture directory with a model in it.
    let mut cases: Vec<String> = std::fs::read_dir(&fixtures)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("model.safetensors").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    for case in cases {
        let (model, _) = CausalLm::<Flex>::from_hf_dir(&fixtures.join(&case), &device)?;
        model.save_hf_dir(&out.join(&case))?;
        eprintln!("saved {}", out.join(&case).display());
    }
    Ok(())
}
