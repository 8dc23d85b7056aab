//! ggml's block quantizations, dequantized to f32 exactly as llama.cpp's reference
//! (`gguf-py`'s `gguf.quants.dequantize`) computes them: same products in the same order, in
//! f32, so every value is bit-identical (`tests/quants.rs` compares with blocks that gguf-py
//! dequantized). Blocks are independent, so tensors are dequantized in parallel.
//!
//! A block holds `elements` values in `bytes` bytes. The "legacy" types (Q4_0 ... Q8_0) have
//! one f16 scale per 32 values; the K-quants have 256-value super-blocks with an f16 scale
//! (and minimum) and 6- or 8-bit scales for each group of 16 or 32 values.

use rayon::prelude::*;

/// ggml tensor types this importer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Bf16,
}

impl GgmlType {
    /// Every supported type, in ggml's id order.
    pub const ALL: [GgmlType; 14] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::Bf16,
    ];

    /// ggml's id of the type (`enum ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::Bf16 => 30,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            GgmlType::Bf16 => "BF16",
        }
    }

    /// The supported types' names, for messages.
    pub fn supported() -> String {
        let names: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
        names.join(", ")
    }

    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (QK_K, 84),
            GgmlType::Q3K => (QK_K, 110),
            GgmlType::Q4K => (QK_K, 144),
            GgmlType::Q5K => (QK_K, 176),
            GgmlType::Q6K => (QK_K, 210),
            GgmlType::Q8K => (QK_K, 292),
        }
    }

    fn block_fn(self) -> fn(&[u8], &mut [f32]) {
        match self {
            GgmlType::F32 => |b, out| out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => |b, out| out[0] = f16(b),
            GgmlType::Bf16 => |b, out| out[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            GgmlType::Q4_0 => q4_0,
            GgmlType::Q4_1 => q4_1,
            GgmlType::Q5_0 => q5_0,
            GgmlType::Q5_1 => q5_1,
            GgmlType::Q8_0 => q8_0,
            GgmlType::Q2K => q2_k,
            GgmlType::Q3K => q3_k,
            GgmlType::Q4K => q4_k,
            GgmlType::Q5K => q5_k,
            GgmlType::Q6K => q6_k,
            GgmlType::Q8K => q8_k,
        }
    }
}

/// Values in a K-quant super-block.
const QK_K: usize = 256;

/// Dequantizes whole blocks of `ggml_type` (`data.len()` must be a multiple of the block's
/// bytes).
pub fn dequantize(ggml_type: GgmlType, data: &[u8]) -> Vec<f32> {
    let (elements, bytes) = ggml_type.block();
    let blocks = data.len() / bytes;
    let mut out = vec![0.0f32; blocks * elements];
    let block_fn = ggml_type.block_fn();
    // Chunks of about 64 KiB of output per task.
    let per_task = (16_384 / elements).max(1);
    out.par_chunks_mut(elements * per_task)
        .zip(data.par_chunks(bytes * per_task))
        .for_each(|(out, data)| {
            for (out, block) in out.chunks_exact_mut(elements).zip(data.chunks_exact(bytes)) {
                block_fn(block, out);
            }
        });
    out
}

fn f16(bytes: &[u8]) -> f32 {
    half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// 32 4-bit values from 16 bytes: low nibbles are elements 0..16, high nibbles 16..32.
fn nibbles(quants: &[u8], out: &mut [f32], value: impl Fn(u8) -> f32) {
    for (j, &q) in quants.iter().enumerate() {
        out[j] = value(q & 0x0F);
        out[j + 16] = value(q >> 4);
    }
}

/// `d`, then 32 4-bit values centred on 8: `(q - 8) * d`.
fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16(&b[0..2]);
    nibbles(&b[2..18], out, |q| (f32::from(q) - 8.0) * d);
}

/// `d`, `m`, then 32 4-bit values: `q * d + m`.
fn q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16(&b[0..2]), f16(&b[2..4]));
    nibbles(&b[4..20], out, |q| f32::from(q) * d + m);
}

/// The fifth bits of 32 5-bit values, one per bit of a little-endian u32, merged into the
/// low nibbles `q` of element `j`.
fn with_high_bit(q: u8, high: u32, j: usize) -> u8 {
    q | ((((high >> j) & 1) as u8) << 4)
}

/// `d`, the high bits, then 32 low nibbles: `d * (q - 16)`.
fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16(&b[0..2]);
    let high = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        out[j] = d * f32::from(with_high_bit(q & 0x0F, high, j) as i8 - 16);
        out[j + 16] = d * f32::from(with_high_bit(q >> 4, high, j + 16) as i8 - 16);
    }
}

/// `d`, `m`, the high bits, then 32 low nibbles: `d * q + m`.
fn q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16(&b[0..2]), f16(&b[2..4]));
    let high = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        out[j] = d * f32::from(with_high_bit(q & 0x0F, high, j)) + m;
        out[j + 16] = d * f32::from(with_high_bit(q >> 4, high, j + 16)) + m;
    }
}

/// `d`, then 32 signed bytes: `q * d`.
fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16(&b[0..2]);
    for (out, &q) in out.iter_mut().zip(&b[2..34]) {
        *out = f32::from(q as i8) * d;
    }
}

/// 16 scale bytes (low nibble: scale, high nibble: minimum), 64 bytes of 2-bit values,
/// `d`, `dmin`. Each 32 bytes of 2-bit values hold 128 elements, 32 per bit pair.
fn q2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16(&b[80..82]), f16(&b[82..84]));
    for (i, out) in out.iter_mut().enumerate() {
        let (half, shift, l) = (i / 128, (i % 128) / 32, i % 32);
        let q = (qs[half * 32 + l] >> (2 * shift)) & 3;
        let scale = scales[i / 16];
        let dl = d * f32::from(scale & 0x0F);
        let ml = dmin * f32::from(scale >> 4);
        *out = dl * f32::from(q) - ml;
    }
}

/// 32 bytes of high bits (set: no offset; clear: minus 4), 64 bytes of 2-bit values, 12
/// bytes of sixteen 6-bit scales (offset by 32), `d`.
fn q3_k(b: &[u8], out: &mut [f32]) {
    let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16(&b[108..110]);
    let scale = |j: usize| -> f32 {
        let low = if j < 8 {
            packed[j] & 0x0F
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        f32::from((low | (high << 4)) as i8 - 32)
    };
    let scales: [f32; 16] = std::array::from_fn(scale);
    for (i, out) in out.iter_mut().enumerate() {
        let (half, shift, l) = (i / 128, (i % 128) / 32, i % 32);
        let low = (qs[half * 32 + l] >> (2 * shift)) & 3;
        let high_set = (hmask[l] >> (i / 32)) & 1 == 1;
        let q = low as i8 - if high_set { 0 } else { 4 };
        *out = (d * scales[i / 16]) * f32::from(q);
    }
}

/// Q4_K's and Q5_K's eight 6-bit scales and minimums, packed in 12 bytes.
fn scales_and_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let scales = std::array::from_fn(|j| match j {
        0..4 => packed[j] & 0x3F,
        _ => (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 2) & 0x30),
    });
    let mins = std::array::from_fn(|j| match j {
        0..4 => packed[j + 4] & 0x3F,
        _ => (packed[j + 4] >> 4) | ((packed[j] >> 2) & 0x30),
    });
    (scales, mins)
}

/// The value of element `i` of a Q4_K/Q5_K block, from its 4 low bits `q`.
fn k_value(d: f32, dmin: f32, scales: &([u8; 8], [u8; 8]), group: usize, q: u8) -> f32 {
    let scale = d * f32::from(scales.0[group]);
    let min = dmin * f32::from(scales.1[group]);
    scale * f32::from(q) - min
}

/// `d`, `dmin`, 12 bytes of scales and minimums, 128 bytes of 4-bit values: each 32 bytes
/// hold two groups of 32 (low nibbles, then high nibbles).
fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16(&b[0..2]), f16(&b[2..4]));
    let scales = scales_and_mins(&b[4..16]);
    let qs = &b[16..144];
    for (i, out) in out.iter_mut().enumerate() {
        let (group, l) = (i / 32, i % 32);
        let q = (qs[(group / 2) * 32 + l] >> (4 * (group % 2))) & 0x0F;
        *out = k_value(d, dmin, &scales, group, q);
    }
}

/// Q4_K with a fifth bit per value: 32 bytes whose bit `g` of byte `l` belongs to element
/// `32 g + l`.
fn q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16(&b[0..2]), f16(&b[2..4]));
    let scales = scales_and_mins(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (i, out) in out.iter_mut().enumerate() {
        let (group, l) = (i / 32, i % 32);
        let low = (qs[(group / 2) * 32 + l] >> (4 * (group % 2))) & 0x0F;
        let q = low | (((qh[l] >> group) & 1) << 4);
        *out = k_value(d, dmin, &scales, group, q);
    }
}

/// 128 bytes of low nibbles, 64 bytes of high bit pairs, sixteen signed 8-bit scales, `d`:
/// `d * scale * (q - 32)`.
fn q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16(&b[208..210]);
    for (i, out) in out.iter_mut().enumerate() {
        let (half, rest) = (i / 128, i % 128);
        let low = (ql[half * 64 + rest % 64] >> (4 * (rest / 64))) & 0x0F;
        let high = (qh[half * 32 + rest % 32] >> (2 * (rest / 32))) & 3;
        let q = (low | (high << 4)) as i8 - 32;
        *out = (d * f32::from(scales[i / 16] as i8)) * f32::from(q);
    }
}

/// An f32 `d`, 256 signed bytes, and 16 block sums that dequantization does not need.
fn q8_k(b: &[u8], out: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (out, &q) in out.iter_mut().zip(&b[4..260]) {
        *out = d * f32::from(q as i8);
    }
}
