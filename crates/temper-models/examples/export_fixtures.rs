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
    for case in [
        "gpt2",
        "llama_gqa",
        "llama_tied_rope_llama3",
        "qwen2_bias",
        "llama_rope_linear",
    ] {
        let (model, _) = CausalLm::<Flex>::from_hf_dir(&fixtures.join(case), &device)?;
        model.save_hf_dir(&out.join(case))?;
        eprintln!("saved {}", out.join(case).display());
    }
    Ok(())
}
