//! Safetensors as temper writes it (f32, little-endian) and reads it (f32, f16 or bf16).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::atomic::write_atomic;
use crate::error::{Error, Result};

/// Writes `tensors` (`(key, shape, values)`, in any order) as an f32 safetensors file with
/// `metadata` in its header, atomically.
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bad = |message: String| Error::Safetensors {
        path: path.to_owned(),
        message,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((key, shape, _), bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (key.clone(), view))
                .map_err(|e| bad(format!("tensor `{key}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let serialized = safetensors::serialize(views, metadata).map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &serialized)
}

/// A tensor's little-endian bytes as f32 values; `None` for a dtype other than F32, F16 and
/// BF16.
pub fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let pairs = || bytes.chunks_exact(2).map(|b| [b[0], b[1]]);
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => pairs()
            .map(|b| half::f16::from_le_bytes(b).to_f32())
            .collect(),
        Dtype::BF16 => pairs()
            .map(|b| half::bf16::from_le_bytes(b).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Parses a safetensors file; when it is damaged, the message names the tensor whose header
/// entry is wrong where the header can still be read (safetensors' own errors often do not).
pub fn parse_safetensors(bytes: &[u8]) -> std::result::Result<SafeTensors<'_>, String> {
    SafeTensors::deserialize(bytes).map_err(|error| match damaged_tensor(bytes) {
        Some(which) => format!("{error}: {which}"),
        None => error.to_string(),
    })
}

/// The first tensor whose header entry does not fit the file: an unknown dtype, offsets out
/// of order or past the data, or a byte count that its shape and dtype do not give.
fn damaged_tensor(bytes: &[u8]) -> Option<String> {
    let length = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(length)?)?).ok()?;
    let data = bytes.len() - 8 - length;
    let mut entries: Vec<(&String, &serde_json::Value)> = header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .collect();
    let begin = |entry: &serde_json::Value| entry["data_offsets"][0].as_u64().unwrap_or(0);
    entries.sort_by_key(|(_, entry)| begin(entry));
    let mut expected_begin = 0u64;
    for (name, entry) in entries {
        let element_size: u64 = match entry["dtype"].as_str() {
            Some("F64" | "I64" | "U64") => 8,
            Some("F32" | "I32" | "U32") => 4,
            Some("F16" | "BF16" | "I16" | "U16") => 2,
            Some("I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2") => 1,
            other => return Some(format!("tensor `{name}` has dtype {other:?}")),
        };
        let offsets = &entry["data_offsets"];
        let (Some(start), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
            return Some(format!("tensor `{name}` has data_offsets {offsets}"));
        };
        let shape: Option<Vec<u64>> = entry["shape"]
            .as_array()
            .and_then(|dims| dims.iter().map(serde_json::Value::as_u64).collect());
        let needed = shape.and_then(|shape| {
            shape
                .iter()
                .try_fold(element_size, |product, &dim| product.checked_mul(dim))
        });
        if start != expected_begin || end < start || end > data as u64 {
            return Some(format!(
                "tensor `{name}` has data_offsets [{start}, {end}] (expected to start at {expected_begin}, within the {data} data bytes)"
            ));
        }
        if needed != Some(end - start) {
            return Some(format!(
                "tensor `{name}` has shape {} and dtype {}, which is not its {} bytes",
                entry["shape"],
                entry["dtype"],
                end - start
            ));
        }
        expected_begin = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_header_names_the_tensor() {
        let path =
            std::env::temp_dir().join(format!("temper-damaged-{}.safetensors", std::process::id()));
        let values = [1.0f32, 2.0, 3.0, 4.0];
        let tensors = [
            ("a.weight".to_owned(), vec![2, 2], &values[..]),
            ("b.weight".to_owned(), vec![4], &values[..]),
        ];
        write_f32_safetensors(&path, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(parse_safetensors(&bytes).is_ok());
        // Claim a larger shape for `b.weight` in the header, keeping its length.
        let mut damaged = bytes.clone();
        let at = damaged
            .windows(11)
            .position(|w| w == b"\"shape\":[4]")
            .unwrap_or_else(|| panic!("the header holds b.weight's shape"));
        damaged[at + 9] = b'5';
        let error = parse_safetensors(&damaged).err().unwrap_or_default();
        assert!(error.contains("tensor `b.weight` has shape [5]"), "{error}");
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
