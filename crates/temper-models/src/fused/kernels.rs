//! The fused CPU kernels: free functions over `f32` slices, row-parallel on rayon's pool (the
//! one burn-flex's matmuls use). Each forward is one pass over its input and each backward one
//! pass over the saved tensors, where burn's autodiff runs five to fifteen element-wise ops.
//!
//! Written so that the compiler vectorises the inner loops on any x86-64 or aarch64 target
//! without intrinsics (but one: [`matmul_f16_weight`] with AVX2 and F16C where the CPU has them): no libm calls in hot loops (`exp` is a polynomial), and sums
//! kept in `LANES` independent accumulators (a single `f32` accumulator would pin the loop to
//! one lane, since float addition is not reassociated).

use rayon::prelude::*;

/// Independent partial sums in a reduction: enough for AVX-512 (16 lanes) or two AVX2 vectors.
const LANES: usize = 16;

/// Elements per rayon task: enough work to amortise scheduling, small enough to balance.
const ELEMENTS_PER_TASK: usize = 1 << 14;

fn rows_per_task(row_len: usize) -> usize {
    (ELEMENTS_PER_TASK / row_len.max(1)).max(1)
}

/// `e^x` to within about 2 ulp for `x` in `[-87, 88]`; clamps outside (so `-inf -> ~0`).
///
/// Cody-Waite reduction `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-7 Taylor polynomial
/// for `e^r` (truncation error below 1e-8 relative) and `2^n` built in the exponent bits.
/// Rounding uses the `1.5 * 2^23` trick instead of `round()`, which is a libm call on
/// baseline x86-64 and would stop vectorisation.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `sum(a * b)` with `LANES` partial sums.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            acc[lane] += a[lane] * b[lane];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

/// `sum(a)` with `LANES` partial sums.
#[inline]
fn sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for lane in 0..LANES {
            acc[lane] += chunk[lane];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// `max(a)` (`-inf` for an empty slice).
#[inline]
fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for lane in 0..LANES {
            acc[lane] = acc[lane].max(chunk[lane]);
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Which keys each row of attention scores may not see: `data` is `[batch, seq_q, seq_k]`
/// (1 = masked), shared by the `heads` of a batch row. Score row `r` (of
/// `[batch, heads, seq_q]`) reads mask row `(r / (heads * seq_q)) * seq_q + r % seq_q`.
#[derive(Debug, Clone, Copy)]
pub struct ScoreMask<'a> {
    pub data: &'a [u8],
    pub heads: usize,
    pub seq_q: usize,
}

impl<'a> ScoreMask<'a> {
    fn row(self, score_row: usize, seq_k: usize) -> &'a [u8] {
        let batch = score_row / (self.heads * self.seq_q);
        let query = score_row % self.seq_q;
        let start = (batch * self.seq_q + query) * seq_k;
        &self.data[start..start + seq_k]
    }
}

/// `softmax(scale * scores)` over rows of `row_len`, with masked keys at probability 0.
/// A row whose keys are all masked gets all zeros (not NaN).
pub fn masked_softmax(
    scores: &[f32],
    mask: Option<ScoreMask<'_>>,
    scale: f32,
    row_len: usize,
    out: &mut [f32],
) {
    let rows = rows_per_task(row_len);
    out.par_chunks_mut(rows * row_len)
        .zip(scores.par_chunks(rows * row_len))
        .enumerate()
        .for_each(|(task, (out, scores))| {
            for (i, (out, scores)) in out
                .chunks_exact_mut(row_len)
                .zip(scores.chunks_exact(row_len))
                .enumerate()
            {
                let mask = mask.map(|mask| mask.row(task * rows + i, row_len));
                softmax_row(scores, mask, scale, out);
            }
        });
}

fn softmax_row(scores: &[f32], mask: Option<&[u8]>, scale: f32, out: &mut [f32]) {
    match mask {
        Some(mask) => {
            for ((o, &s), &m) in out.iter_mut().zip(scores).zip(mask) {
                *o = if m != 0 { f32::NEG_INFINITY } else { s * scale };
            }
        }
        None => {
            for (o, &s) in out.iter_mut().zip(scores) {
                *o = s * scale;
            }
        }
    }
    let row_max = max(out);
    if row_max == f32::NEG_INFINITY {
        out.fill(0.0);
        return;
    }
    for o in out.iter_mut() {
        // exp clamps, so a masked key (-inf) gives e^-87, which the mask then zeroes.
        *o = exp(*o - row_max);
    }
    if let Some(mask) = mask {
        for (o, &m) in out.iter_mut().zip(mask) {
            if m != 0 {
                *o = 0.0;
            }
        }
    }
    let inv_sum = 1.0 / sum(out);
    for o in out.iter_mut() {
        *o *= inv_sum;
    }
}

/// The gradient of `masked_softmax` with respect to its scores, from the probabilities it
/// returned and the gradient of its output: `scale * p * (g - sum(g * p))` per row.
pub fn masked_softmax_backward(
    probs: &[f32],
    grad: &[f32],
    scale: f32,
    row_len: usize,
    out: &mut [f32],
) {
    let chunk = rows_per_task(row_len) * row_len;
    out.par_chunks_mut(chunk)
        .zip(probs.par_chunks(chunk).zip(grad.par_chunks(chunk)))
        .for_each(|(out, (probs, grad))| {
            for ((out, p), g) in out
                .chunks_exact_mut(row_len)
                .zip(probs.chunks_exact(row_len))
                .zip(grad.chunks_exact(row_len))
            {
                let weighted = dot(g, p);
                for ((o, &p), &g) in out.iter_mut().zip(p).zip(g) {
                    *o = scale * p * (g - weighted);
                }
            }
        });
}

/// `sqrt(2 / pi)`, the slope of GELU's tanh argument.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// GPT-2's tanh-approximated GELU, `0.5 x (1 + tanh(z))` with
/// `z = sqrt(2/pi) (x + 0.044715 x^3)`, computed as `x sigmoid(2z)` (the same function).
pub fn gelu_tanh(input: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(input.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(out, input)| {
            for (o, &x) in out.iter_mut().zip(input) {
                let z = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
                *o = x / (1.0 + exp(-2.0 * z));
            }
        });
}

/// The gradient of `gelu_tanh` at `input`, times `grad`:
/// `s + x s (1 - s) 2 z'` with `s = sigmoid(2z)`, `z' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)`.
pub fn gelu_tanh_backward(input: &[f32], grad: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(
            input
                .par_chunks(ELEMENTS_PER_TASK)
                .zip(grad.par_chunks(ELEMENTS_PER_TASK)),
        )
        .for_each(|(out, (input, grad))| {
            for ((o, &x), &g) in out.iter_mut().zip(input).zip(grad) {
                let z = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
                let s = 1.0 / (1.0 + exp(-2.0 * z));
                let dz = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
                *o = g * (s + x * s * (1.0 - s) * 2.0 * dz);
            }
        });
}

/// LayerNorm over rows of `weight.len()`: `(x - mean) * rstd * weight + bias`, with the
/// biased variance. Also returns each row's `mean` and `rstd = 1 / sqrt(var + epsilon)` for
/// the backward.
pub fn layer_norm(
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    epsilon: f32,
    out: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = weight.len();
    let n_rows = input.len() / d;
    let (mut means, mut rstds) = (vec![0.0; n_rows], vec![0.0; n_rows]);
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d)
        .zip(input.par_chunks(rows * d))
        .zip(means.par_chunks_mut(rows).zip(rstds.par_chunks_mut(rows)))
        .for_each(|((out, input), (means, rstds))| {
            for (((out, x), mean), rstd) in out
                .chunks_exact_mut(d)
                .zip(input.chunks_exact(d))
                .zip(means.iter_mut())
                .zip(rstds.iter_mut())
            {
                *mean = sum(x) / d as f32;
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = x - *mean;
                }
                *rstd = 1.0 / (dot(out, out) / d as f32 + epsilon).sqrt();
                for ((o, &w), &b) in out.iter_mut().zip(weight).zip(bias) {
                    *o = *o * *rstd * w + b;
                }
            }
        });
    (means, rstds)
}

/// Gradients of `layer_norm` from its input, weight, saved `means`/`rstds` and the output
/// gradient: writes `d input` into `grad_input` and returns `(d weight, d bias)`.
///
/// With `xhat = (x - mean) rstd` and `gx = grad * weight`:
/// `dx = rstd (gx - mean(gx) - xhat mean(gx xhat))`, `dw = sum_rows grad xhat`,
/// `db = sum_rows grad`.
pub fn layer_norm_backward(
    input: &[f32],
    weight: &[f32],
    means: &[f32],
    rstds: &[f32],
    grad: &[f32],
    grad_input: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = weight.len();
    let rows = rows_per_task(d);
    let zeros = || (vec![0.0f32; d], vec![0.0f32; d]);
    grad_input
        .par_chunks_mut(rows * d)
        .zip(input.par_chunks(rows * d).zip(grad.par_chunks(rows * d)))
        .zip(means.par_chunks(rows).zip(rstds.par_chunks(rows)))
        .map(|((grad_input, (input, grad)), (means, rstds))| {
            let (mut dw, mut db) = zeros();
            let mut xhat = vec![0.0f32; d];
            for ((((dx, x), g), &mean), &rstd) in grad_input
                .chunks_exact_mut(d)
                .zip(input.chunks_exact(d))
                .zip(grad.chunks_exact(d))
                .zip(means)
                .zip(rstds)
            {
                for (h, &x) in xhat.iter_mut().zip(x) {
                    *h = (x - mean) * rstd;
                }
                for (((dw, db), &g), &h) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(&xhat) {
                    *dw += g * h;
                    *db += g;
                }
                // dx temporarily holds gx = grad * weight.
                for ((dx, &g), &w) in dx.iter_mut().zip(g).zip(weight) {
                    *dx = g * w;
                }
                let mean_gx = sum(dx) / d as f32;
                let mean_gx_xhat = dot(dx, &xhat) / d as f32;
                for (dx, &h) in dx.iter_mut().zip(&xhat) {
                    *dx = rstd * (*dx - mean_gx - h * mean_gx_xhat);
                }
            }
            (dw, db)
        })
        // Tasks' partial sums are added in row order, so the gradient is the same every run.
        .collect::<Vec<_>>()
        .into_iter()
        .fold(zeros(), |(mut dw, mut db), (dw2, db2)| {
            for (a, b) in dw.iter_mut().zip(dw2) {
                *a += b;
            }
            for (a, b) in db.iter_mut().zip(db2) {
                *a += b;
            }
            (dw, db)
        })
}

/// RMSNorm over rows of `weight.len()`: `x * rstd * weight` with
/// `rstd = 1 / sqrt(mean(x^2) + epsilon)`, which it also returns per row for the backward.
pub fn rms_norm(input: &[f32], weight: &[f32], epsilon: f32, out: &mut [f32]) -> Vec<f32> {
    let d = weight.len();
    let mut rstds = vec![0.0; input.len() / d];
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d)
        .zip(input.par_chunks(rows * d))
        .zip(rstds.par_chunks_mut(rows))
        .for_each(|((out, input), rstds)| {
            for ((out, x), rstd) in out
                .chunks_exact_mut(d)
                .zip(input.chunks_exact(d))
                .zip(rstds.iter_mut())
            {
                *rstd = 1.0 / (dot(x, x) / d as f32 + epsilon).sqrt();
                for ((o, &x), &w) in out.iter_mut().zip(x).zip(weight) {
                    *o = x * *rstd * w;
                }
            }
        });
    rstds
}

/// Gradients of `rms_norm`: writes `d input` into `grad_input` and returns `d weight`.
///
/// With `xhat = x rstd` and `gx = grad * weight`: `dx = rstd (gx - xhat mean(gx xhat))`,
/// `dw = sum_rows grad xhat`.
pub fn rms_norm_backward(
    input: &[f32],
    weight: &[f32],
    rstds: &[f32],
    grad: &[f32],
    grad_input: &mut [f32],
) -> Vec<f32> {
    let d = weight.len();
    let rows = rows_per_task(d);
    grad_input
        .par_chunks_mut(rows * d)
        .zip(input.par_chunks(rows * d).zip(grad.par_chunks(rows * d)))
        .zip(rstds.par_chunks(rows))
        .map(|((grad_input, (input, grad)), rstds)| {
            let mut dw = vec![0.0f32; d];
            for (((dx, x), g), &rstd) in grad_input
                .chunks_exact_mut(d)
                .zip(input.chunks_exact(d))
                .zip(grad.chunks_exact(d))
                .zip(rstds)
            {
                for ((dw, &g), &x) in dw.iter_mut().zip(g).zip(x) {
                    *dw += g * x * rstd;
                }
                // dx temporarily holds gx = grad * weight.
                for ((dx, &g), &w) in dx.iter_mut().zip(g).zip(weight) {
                    *dx = g * w;
                }
                let mean_gx_xhat = dot(dx, x) * rstd / d as f32;
                for (dx, &x) in dx.iter_mut().zip(x) {
                    *dx = rstd * (*dx - x * rstd * mean_gx_xhat);
                }
            }
            dw
        })
        // Tasks' partial sums are added in row order, so the gradient is the same every run.
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0f32; d], |mut dw, dw2| {
            for (a, b) in dw.iter_mut().zip(dw2) {
                *a += b;
            }
            dw
        })
}

/// `silu(gate) * up` (Llama's MLP), with `silu(g) = g sigmoid(g)`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(
            gate.par_chunks(ELEMENTS_PER_TASK)
                .zip(up.par_chunks(ELEMENTS_PER_TASK)),
        )
        .for_each(|(out, (gate, up))| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        });
}

/// Gradients of `swiglu` with respect to `gate` and `up`, written into `grad_gate` and
/// `grad_up`: `d gate = grad u s (1 + g (1 - s))`, `d up = grad g s`, `s = sigmoid(g)`.
pub fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    grad: &[f32],
    grad_gate: &mut [f32],
    grad_up: &mut [f32],
) {
    let n = ELEMENTS_PER_TASK;
    grad_gate
        .par_chunks_mut(n)
        .zip(grad_up.par_chunks_mut(n))
        .zip(
            gate.par_chunks(n)
                .zip(up.par_chunks(n))
                .zip(grad.par_chunks(n)),
        )
        .for_each(|((grad_gate, grad_up), ((gate, up), grad))| {
            for ((((dg, du), &g), &u), &dy) in grad_gate
                .iter_mut()
                .zip(grad_up.iter_mut())
                .zip(gate)
                .zip(up)
                .zip(grad)
            {
                let s = 1.0 / (1.0 + exp(-g));
                *dg = dy * u * s * (1.0 + g * (1.0 - s));
                *du = dy * g * s;
            }
        });
}

/// Rotary position embedding, HF's rotate-half form: per head,
/// `out = x * cos + rotate_half(x) * sin` with `rotate_half([x1, x2]) = [-x2, x1]`.
/// `input` is `[rows, heads, head_dim]` and `cos`/`sin` are `[rows, head_dim]` (one row per
/// token). With `transpose`, applies the transposed map instead (the backward):
/// `dx1 = g1 cos1 + g2 sin2`, `dx2 = g2 cos2 - g1 sin1`.
pub fn rope(
    input: &[f32],
    cos: &[f32],
    sin: &[f32],
    head_dim: usize,
    transpose: bool,
    out: &mut [f32],
) {
    let half = head_dim / 2;
    let n_tokens = cos.len() / head_dim;
    let token_len = input.len() / n_tokens.max(1);
    let tokens = rows_per_task(token_len);
    out.par_chunks_mut(tokens * token_len)
        .zip(input.par_chunks(tokens * token_len))
        .zip(
            cos.par_chunks(tokens * head_dim)
                .zip(sin.par_chunks(tokens * head_dim)),
        )
        .for_each(|((out, input), (cos, sin))| {
            for (((out, input), cos), sin) in out
                .chunks_exact_mut(token_len)
                .zip(input.chunks_exact(token_len))
                .zip(cos.chunks_exact(head_dim))
                .zip(sin.chunks_exact(head_dim))
            {
                let (cos1, cos2) = cos.split_at(half);
                let (sin1, sin2) = sin.split_at(half);
                for (out, x) in out
                    .chunks_exact_mut(head_dim)
                    .zip(input.chunks_exact(head_dim))
                {
                    let (x1, x2) = x.split_at(half);
                    let (out1, out2) = out.split_at_mut(half);
                    if transpose {
                        for i in 0..half {
                            out1[i] = x1[i] * cos1[i] + x2[i] * sin2[i];
                            out2[i] = x2[i] * cos2[i] - x1[i] * sin1[i];
                        }
                    } else {
                        for i in 0..half {
                            out1[i] = x1[i] * cos1[i] - x2[i] * sin1[i];
                            out2[i] = x2[i] * cos2[i] + x1[i] * sin2[i];
                        }
                    }
                }
            }
        });
}

/// Sums of a cross-entropy over rows of logits. The kernels add the sums of their tasks in
/// row order, not in the order rayon finishes them, so a sum is the same on every run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CrossEntropySums {
    /// Sum of `-log softmax(logits)[label]`.
    pub nll: f64,
    /// Rows whose largest logit is the label's (the first largest, as `argmax` picks).
    pub correct: usize,
}

/// Cross-entropy of each row of `logits` (`[labels.len(), vocab]`) against its label.
///
/// Labels must be in `0..vocab` (the caller checks).
pub fn cross_entropy(logits: &[f32], labels: &[usize], vocab: usize) -> CrossEntropySums {
    let rows = rows_per_task(vocab);
    logits
        .par_chunks(rows * vocab)
        .zip(labels.par_chunks(rows))
        .map(|(logits, labels)| {
            let mut scratch = vec![0.0; vocab];
            logits
                .chunks_exact(vocab)
                .zip(labels)
                .map(|(logits, &label)| {
                    scratch.copy_from_slice(logits);
                    cross_entropy_row(&mut scratch, label, None)
                })
                .fold(CrossEntropySums::default(), CrossEntropySums::add)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(CrossEntropySums::default(), CrossEntropySums::add)
}

/// [`cross_entropy`], overwriting each row of `logits` with the gradient of
/// `scale * sum(nll)` with respect to it, `scale * (softmax(row) - onehot(label))`: the
/// logits and their gradient never take memory at the same time.
pub fn cross_entropy_backward_in_place(
    logits: &mut [f32],
    labels: &[usize],
    vocab: usize,
    scale: f32,
) -> CrossEntropySums {
    let rows = rows_per_task(vocab);
    logits
        .par_chunks_mut(rows * vocab)
        .zip(labels.par_chunks(rows))
        .map(|(logits, labels)| {
            logits
                .chunks_exact_mut(vocab)
                .zip(labels)
                .map(|(row, &label)| cross_entropy_row(row, label, Some(scale)))
                .fold(CrossEntropySums::default(), CrossEntropySums::add)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(CrossEntropySums::default(), CrossEntropySums::add)
}

/// One row's sums; leaves `scale * (softmax - onehot)` in `row` with a scale, and
/// `exp(row - max)` without.
fn cross_entropy_row(row: &mut [f32], label: usize, scale: Option<f32>) -> CrossEntropySums {
    let row_max = max(row);
    let best = row.iter().position(|&l| l == row_max).unwrap_or(0);
    let label_logit = row[label];
    for o in row.iter_mut() {
        *o = exp(*o - row_max);
    }
    let sum_exp = sum(row);
    if let Some(scale) = scale {
        let factor = scale / sum_exp;
        for o in row.iter_mut() {
            *o *= factor;
        }
        row[label] -= scale;
    }
    CrossEntropySums {
        nll: f64::from(row_max) + f64::from(sum_exp).ln() - f64::from(label_logit),
        correct: usize::from(best == label),
    }
}

impl CrossEntropySums {
    fn add(self, other: CrossEntropySums) -> CrossEntropySums {
        CrossEntropySums {
            nll: self.nll + other.nll,
            correct: self.correct + other.correct,
        }
    }
}

// ----------------------------------------------------------------------------------------
// Products with 16-bit weights

/// `x W^T` for `x` (`[m, k]`, f32) and a weight kept in 16 bits as `[n, k]` (row-major,
/// f16: each output's weights contiguous), into `out` (`[m, n]`): every output is a dot
/// product over one contiguous weight row, so the weights stream from memory in order, once
/// per call; blocks of outputs run in parallel. Meant for the few rows of decoding, whose time
/// is reading the weights: half the bytes of f32.
pub fn matmul_f16_weight(x: &[f32], weight: &[half::f16], m: usize, k: usize, out: &mut [f32]) {
    const OUTPUTS: usize = 64;
    let n = weight.len() / k.max(1);
    debug_assert_eq!((x.len(), weight.len(), out.len()), (m * k, n * k, m * n));
    // Waking the other threads costs more than one thread's pass over a small product
    // (decoding calls this some 200 times per token), as burn-flex's own matmuls judge it.
    const PARALLEL_WORK: usize = 192 * 192 * 192;
    let block =
        |(block, rows): (usize, &[half::f16])| (block * OUTPUTS, f16_weight_block(x, rows, m, k));
    let blocks: Vec<(usize, Vec<f32>)> = if m * n * k < PARALLEL_WORK {
        weight.chunks(OUTPUTS * k).enumerate().map(block).collect()
    } else {
        weight
            .par_chunks(OUTPUTS * k)
            .enumerate()
            .map(block)
            .collect()
    };
    for (first, sums) in blocks {
        let width = sums.len() / m.max(1);
        for (out_row, sum) in out.chunks_exact_mut(n).zip(sums.chunks_exact(width)) {
            out_row[first..first + width].copy_from_slice(sum);
        }
    }
}

/// The `[m, rows]` block of [`matmul_f16_weight`] for the weight rows `rows` (`[rows, k]`).
fn f16_weight_block(x: &[f32], rows: &[half::f16], m: usize, k: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has the features `f16_weight_block_avx2` is compiled for.
        #[allow(unsafe_code)]
        return unsafe { f16_weight_block_avx2(x, rows, m, k) };
    }
    let width = rows.len() / k;
    let mut sums = vec![0.0; m * width];
    let mut wide = vec![0.0f32; k];
    for (j, weights) in rows.chunks_exact(k).enumerate() {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(weights, &mut wide);
        for (r, input) in x.chunks_exact(k).enumerate() {
            sums[r * width + j] = dot(input, &wide);
        }
    }
    sums
}

/// [`f16_weight_block`] with AVX2, FMA and F16C: each weight row's values are widened eight
/// at a time by one instruction and multiplied into four rows of `x` at once (or one, with
/// four partial sums). The one kernel here written with intrinsics: its inner loop is all of
/// decoding's arithmetic, and baseline x86-64 has no f16 conversion.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_weight_block_avx2(x: &[f32], rows: &[half::f16], m: usize, k: usize) -> Vec<f32> {
    let width = rows.len() / k;
    let mut sums = vec![0.0f32; m * width];
    for (j, weights) in rows.chunks_exact(k).enumerate() {
        let mut r = 0;
        while r + 4 <= m {
            let dots = avx2::dot4(&x[r * k..(r + 4) * k], weights);
            for (i, dot) in dots.into_iter().enumerate() {
                sums[(r + i) * width + j] = dot;
            }
            r += 4;
        }
        for r in r..m {
            sums[r * width + j] = avx2::dot1(&x[r * k..(r + 1) * k], weights);
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum(lanes: __m256) -> f32 {
        let half = _mm_add_ps(
            _mm256_castps256_ps128(lanes),
            _mm256_extractf128_ps(lanes, 1),
        );
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }

    fn tail(input: &[f32], weights: &[f16], from: usize) -> f32 {
        (from..weights.len())
            .map(|c| input[c] * weights[c].to_f32())
            .sum()
    }

    /// `input . weights`, with four partial sums (one FMA's latency hidden behind three),
    /// each a named value so that it stays in a register.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot1(input: &[f32], weights: &[f16]) -> f32 {
        let k = weights.len();
        assert_eq!(input.len(), k, "dot1: one input per weight");
        let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        // As in `dot4`, loads written out.
        let bits = weights.as_ptr().cast::<__m128i>();
        let x = input.as_ptr();
        while c + 32 <= k {
            // SAFETY: `c + 32 <= k`: the 32 values are in `weights` and `input`.
            unsafe {
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(bits.byte_add(2 * c)));
                let w1 = _mm256_cvtph_ps(_mm_loadu_si128(bits.byte_add(2 * c + 16)));
                let w2 = _mm256_cvtph_ps(_mm_loadu_si128(bits.byte_add(2 * c + 32)));
                let w3 = _mm256_cvtph_ps(_mm_loadu_si128(bits.byte_add(2 * c + 48)));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(c)), w0, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(c + 8)), w1, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(c + 16)), w2, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(c + 24)), w3, a3);
            }
            c += 32;
        }
        while c + 8 <= k {
            // SAFETY: `c + 8 <= k`.
            unsafe {
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(bits.byte_add(2 * c)));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(c)), w0, a0);
            }
            c += 8;
        }
        let total = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        sum(total) + tail(input, weights, c)
    }

    /// The dot products of four rows of `inputs` (`[4, k]`) with `weights`, each partial sum
    /// a named value so that it stays in a register.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot4(inputs: &[f32], weights: &[f16]) -> [f32; 4] {
        let k = weights.len();
        assert_eq!(
            inputs.len(),
            4 * k,
            "dot4: four rows of one input per weight"
        );
        let (x0, rest) = inputs.split_at(k);
        let (x1, rest) = rest.split_at(k);
        let (x2, x3) = rest.split_at(k);
        let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        // Loads written out rather than called: a call would make every register holding a
        // partial sum go through memory around it.
        let bits = weights.as_ptr().cast::<__m128i>();
        let rows = [x0.as_ptr(), x1.as_ptr(), x2.as_ptr(), x3.as_ptr()];
        while c + 8 <= k {
            // SAFETY: `c + 8 <= k`: the eight values are in `weights` and in each row.
            unsafe {
                let wide = _mm256_cvtph_ps(_mm_loadu_si128(bits.byte_add(2 * c)));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[0].add(c)), wide, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[1].add(c)), wide, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[2].add(c)), wide, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[3].add(c)), wide, a3);
            }
            c += 8;
        }
        [
            sum(a0) + tail(x0, weights, c),
            sum(a1) + tail(x1, weights, c),
            sum(a2) + tail(x2, weights, c),
            sum(a3) + tail(x3, weights, c),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tolerance: f32) -> bool {
        (a - b).abs() <= tolerance * (1.0 + b.abs())
    }

    #[test]
    fn the_f16_weight_product_is_the_sum_of_products() {
        // 130 outputs: two blocks of 64 and one of 2; k = 70: eight lanes and a tail of 6.
        let (k, n) = (70, 130);
        let weight: Vec<half::f16> = (0..n * k)
            .map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 / 500.0 - 1.0))
            .collect();
        for m in [1, 3, 5] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104_729) % 997) as f32 / 400.0 - 1.2)
                .collect();
            let mut out = vec![0.0; m * n];
            matmul_f16_weight(&x, &weight, m, k, &mut out);
            for r in 0..m {
                for j in 0..n {
                    let expected: f32 = (0..k)
                        .map(|c| x[r * k + c] * weight[j * k + c].to_f32())
                        .sum();
                    assert!(
                        close(out[r * n + j], expected, 1e-5),
                        "m {m}, row {r}, output {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn reductions_are_the_same_on_every_run() {
        // Many tasks on many threads, so that rayon's work stealing varies between runs; the
        // sums must not depend on it.
        let (rows, vocab, d) = (512, 1024, 256);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0)
            .collect();
        let labels: Vec<usize> = (0..rows).map(|i| (i * 31) % vocab).collect();
        let input: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 13) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let weight = vec![1.5f32; d];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let run = || {
            let sums = cross_entropy(&logits, &labels, vocab);
            let mut grad = logits.clone();
            let in_place = cross_entropy_backward_in_place(&mut grad, &labels, vocab, 0.5);
            let mut out = vec![0.0; rows * d];
            let rstds = rms_norm(&input, &weight, 1e-5, &mut out);
            let mut grad_input = vec![0.0; rows * d];
            let dw = rms_norm_backward(&input, &weight, &rstds, &input, &mut grad_input);
            let (means, rstds) = layer_norm(&input, &weight, &weight, 1e-5, &mut out);
            let (dw2, db) =
                layer_norm_backward(&input, &weight, &means, &rstds, &input, &mut grad_input);
            (sums.nll.to_bits(), in_place.nll.to_bits(), dw, dw2, db)
        };
        let first = pool.install(run);
        for _ in 0..20 {
            assert!(
                pool.install(run) == first,
                "a reduction changed between runs"
            );
        }
    }

    #[test]
    fn exp_matches_libm_across_the_range() {
        let mut worst = 0.0f32;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 0.000_37;
            let relative = (exp(x) - x.exp()).abs() / x.exp();
            worst = worst.max(relative);
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn reductions_match_sequential_sums() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive_dot: f32 = a.iter().zip(&b).map(|(a, b)| a * b).sum();
        assert!(close(dot(&a, &b), naive_dot, 1e-6));
        assert!(close(sum(&a), a.iter().sum(), 1e-6));
        assert_eq!(max(&a), a.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    }

    #[test]
    fn fully_masked_softmax_row_is_zero_not_nan() {
        let scores = [1.0, 2.0, 3.0, 4.0];
        let mask = ScoreMask {
            data: &[1, 1, 0, 1],
            heads: 1,
            seq_q: 2,
        };
        let mut out = [9.0; 4];
        masked_softmax(&scores, Some(mask), 1.0, 2, &mut out);
        assert_eq!(&out[..2], &[0.0, 0.0]);
        assert_eq!(&out[2..], &[1.0, 0.0]);
    }

    #[test]
    fn cross_entropy_of_a_uniform_row_is_log_vocab() {
        let mut grad = [0.5f32; 8];
        let sums = cross_entropy_backward_in_place(&mut grad, &[3], 8, 2.0);
        assert_eq!(cross_entropy(&[0.5; 8], &[3], 8), sums);
        assert!((sums.nll - 8f64.ln()).abs() < 1e-6);
        // argmax picks the first of equal logits, as burn's does.
        assert_eq!(sums.correct, 0);
        assert!(close(grad[0], 2.0 / 8.0, 1e-6));
        assert!(close(grad[3], 2.0 / 8.0 - 2.0, 1e-6));
    }
}
