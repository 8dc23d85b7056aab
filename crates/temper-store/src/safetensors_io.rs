//! Safetensors as temper writes it (f32, little-endian) and reads it (f32, f16 or bf16).

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

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
