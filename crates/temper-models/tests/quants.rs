//! Dequantization is bit-identical to llama.cpp's reference (gguf-py's
//! `gguf.quants.dequantize`) for every ggml type temper reads. The blocks and reference
//! values come from `fixtures/quants/make_quants.py`; whole tensors of the real Gemma 3 GGUF
//! are checked in `tests/tests/gemma3.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use temper_models::quants::{GgmlType, dequantize};

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_type_dequantizes_bit_identically_to_gguf_py() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quants/quants.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = BTreeSet::new();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["type"].as_str().unwrap();
        let ggml_type = GgmlType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("no type {name}"));
        let expected: Vec<u32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let actual: Vec<u32> = dequantize(ggml_type, &hex(case["blocks"].as_str().unwrap()))
            .into_iter()
            .map(f32::to_bits)
            .collect();
        assert_eq!(actual.len(), expected.len(), "{name}");
        let differing = actual.iter().zip(&expected).filter(|(a, e)| a != e).count();
        assert_eq!(
            differing,
            0,
            "{name} ({}): {differing} of {} values differ; first: {:?}",
            case["source"],
            expected.len(),
            actual
                .iter()
                .zip(&expected)
                .position(|(a, e)| a != e)
                .map(|i| (i, f32::from_bits(actual[i]), f32::from_bits(expected[i])))
        );
        checked.insert(name);
    }
    let quantized: BTreeSet<&str> = GgmlType::ALL
        .into_iter()
        .filter(|t| t.block().0 > 1)
        .map(GgmlType::name)
        .collect();
    assert_eq!(checked, quantized, "every block type has a case");
}
