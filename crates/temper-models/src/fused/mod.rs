//! Fused operations with hand-written backwards: masked attention softmax, tanh-GELU,
//! LayerNorm, RMSNorm, SwiGLU, rotary embedding and the rows of a cross-entropy.
//!
//! Each function computes what a short chain of burn tensor ops computes (that chain is its
//! fallback, and its definition), but on the default CPU backend (burn-flex, with or without
//! autodiff) it runs one multi-threaded pass forward and one backward. Through burn's autodiff
//! the chains cost five to fifteen single-threaded element-wise passes each way over tensors
//! as large as the attention scores (`[batch, heads, seq, seq]`), and keep each intermediate
//! alive until the backward; profiled on a GPT-2 124M training step, that serial work took
//! 8 of the step's 20 seconds, and the fused operations take under one.
//!
//! Other backends take the fallback, so models stay generic over `B: Backend`; the tests at the
//! bottom check the fused path against the fallback, values and gradients.

#[cfg(feature = "flex")]
mod flex;
pub mod kernels;

use burn::prelude::*;
use burn::tensor::Bool;

pub use kernels::CrossEntropySums;

/// `softmax(scale * scores)` over the last dimension, with masked keys at probability 0.
///
/// # Shapes
/// scores: `[batch, heads, seq_q, seq_k]`, mask: `[batch, 1 or heads, seq_q, seq_k]`
/// (true = masked) -> `[batch, heads, seq_q, seq_k]`
pub fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    scale: f64,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if let Some(route) = flex::Route::of::<B>()
        && flex::is_f32(&scores)
    {
        let [batch, heads, seq_q, seq_k] = scores.dims();
        let mask = mask.map(|mask| {
            let mask_heads = if mask.dims()[1] == 1 { 1 } else { heads };
            mask.expand([batch, mask_heads, seq_q, seq_k])
        });
        return flex::masked_softmax(route, scores, mask, scale as f32);
    }
    composite::masked_softmax(scores, mask, scale)
}

/// GPT-2's tanh-approximated GELU (`gelu_new`), `0.5 x (1 + tanh(z))` with
/// `z = sqrt(2/pi) (x + 0.044715 x^3)`.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if let Some(route) = flex::Route::of::<B>()
        && flex::is_f32(&x)
    {
        return flex::gelu_tanh(route, x);
    }
    composite::gelu_tanh(x)
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + epsilon) * weight + bias`,
/// with the biased variance (as `torch.nn.LayerNorm`).
///
/// # Shapes
/// input: `[batch, seq_len, d_model]`, weight/bias: `[d_model]` -> `[batch, seq_len, d_model]`
pub fn layer_norm<B: Backend>(
    input: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if let Some(route) = flex::Route::of::<B>()
        && flex::is_f32(&input)
        && flex::is_f32(&weight)
        && flex::is_f32(&bias)
    {
        return flex::layer_norm(route, input, weight, bias, epsilon as f32);
    }
    composite::layer_norm(input, weight, bias, epsilon)
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + epsilon) * weight` (Llama).
///
/// # Shapes
/// input: `[batch, seq_len, d_model]`, weight: `[d_model]` -> `[batch, seq_len, d_model]`
pub fn rms_norm<B: Backend>(
    input: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if let Some(route) = flex::Route::of::<B>()
        && flex::is_f32(&input)
        && flex::is_f32(&weight)
    {
        return flex::rms_norm(route, input, weight, epsilon as f32);
    }
    composite::rms_norm(input, weight, epsilon)
}

/// `silu(gate) * up`, the gated activation of Llama's MLP.
///
/// # Shapes
/// gate, up: `[batch, seq_len, intermediate]` -> `[batch, seq_len, intermediate]`
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if let Some(route) = flex::Route::of::<B>()
        && flex::is_f32(&gate)
        && flex::is_f32(&up)
    {
        return flex::swiglu(route, gate, up);
    }
    composite::swiglu(gate, up)
}

/// Rotary position embedding in HF's rotate-half form, `x * cos + rotate_half(x) * sin` with
/// `rotate_half([a, b]) = [-b, a]` over each head's last dimension. `cos` and `sin` are
/// constants (no gradient reaches them).
///
/// # Shapes
/// x: `[batch, seq_len, heads, head_dim]`, cos/sin: `[batch, seq_len, head_dim]`
/// -> `[batch, seq_len, heads, head_dim]`
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 3>, sin: Tensor<B, 3>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if let Some(route) = flex::Route::of::<B>()
        && flex::is_f32(&x)
        && flex::is_f32(&cos)
        && flex::is_f32(&sin)
    {
        return flex::rope(route, x, cos, sin);
    }
    composite::rope(x, cos, sin)
}

/// Rows up to which a 16-bit weight multiplies its input directly (see [`linear`]).
pub const F16_KERNEL_ROWS: usize = 32;

/// `input W + bias` (`[rows, d_input] x [d_input, d_output]`), where `W` may be kept in 16
/// bits for inference ([`crate::CausalLm::with_f16_weights`]). On burn-flex, up to
/// [`F16_KERNEL_ROWS`] rows (decoding) are multiplied by the 16-bit weight directly, reading
/// half the bytes; more rows (a prompt) by the weight widened to f32 for the product. Other
/// backends widen it with a cast.
pub fn linear<B: Backend>(
    input: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    if weight.dtype() == input.dtype() {
        return burn::tensor::module::linear(input, weight, bias);
    }
    #[cfg(feature = "flex")]
    if flex::Route::of::<B>() == Some(flex::Route::Inference)
        && flex::is_f32(&input)
        && weight.dtype() == burn::tensor::DType::F16
        && let Some(output) =
            flex::f16_weight_matmul(input.clone(), weight.clone(), F16_KERNEL_ROWS)
    {
        return match bias {
            Some(bias) => output + bias.unsqueeze(),
            None => output,
        };
    }
    let weight = weight.cast(input.dtype());
    burn::tensor::module::linear(input, weight, bias)
}

/// How many rows of logits are computed at once: about 256 MB of f32 logits per chunk
/// (1335 rows of GPT-2's vocabulary), overwritten by their gradient. Smaller chunks cost more
/// than they save: each chunk's `[vocab, d_model]` output-weight gradient is its own matrix
/// product and sum; GPT-2 124M full fine-tuning at 4 x 512 ran at 132, 141 and 145 tokens/s
/// with 64, 128 and 256 MB chunks (`temper bench`), peak memory within 1%.
pub fn chunk_rows(vocab_size: usize) -> usize {
    ((64 << 20) / vocab_size.max(1)).clamp(16, 4096)
}

/// Cross-entropy of each row of `logits` against its label, without autodiff: the summed
/// negative log-likelihood, how many rows' argmax is the label, and (with `grad_scale`) the
/// gradient of `grad_scale * sum(nll)` with respect to the logits,
/// `grad_scale * (softmax(logits) - onehot(labels))`.
///
/// Labels must be below the vocabulary size (the caller's invariant; checked here).
///
/// # Shapes
/// logits: `[labels.len(), vocab]` -> gradient `[labels.len(), vocab]`
pub fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[usize],
    grad_scale: Option<f64>,
) -> (CrossEntropySums, Option<Tensor<B, 2>>) {
    let [rows, vocab] = logits.dims();
    assert_eq!(rows, labels.len(), "cross_entropy: one label per row");
    assert!(
        labels.iter().all(|&label| label < vocab),
        "cross_entropy: a label is outside the vocabulary of {vocab}"
    );
    #[cfg(feature = "flex")]
    if flex::Route::of::<B>() == Some(flex::Route::Inference) && flex::is_f32(&logits) {
        return flex::cross_entropy(logits, labels, grad_scale.map(|s| s as f32));
    }
    composite::cross_entropy(logits, labels, grad_scale)
}

/// [`cross_entropy`] of consecutive groups of rows: group `g` is the next `counts[g]` rows of
/// `hidden` (`[n, d_model]`) against their `labels`. The output layer, `logits_of`
/// (`[rows, d_model]` -> `[rows, vocab]`), runs on whole groups at a time, up to a chunk of
/// rows (see [`chunk_rows`]) or one larger group.
pub fn grouped_cross_entropy<B: Backend>(
    hidden: Tensor<B, 2>,
    labels: &[usize],
    counts: &[usize],
    vocab: usize,
    logits_of: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Vec<CrossEntropySums> {
    let d_model = hidden.dims()[1];
    let mut sums = Vec::with_capacity(counts.len());
    let mut groups = counts.iter().copied().peekable();
    let mut start = 0;
    while groups.peek().is_some() {
        let mut members = Vec::new();
        let mut end = start;
        while let Some(&count) = groups.peek() {
            if !members.is_empty() && end + count - start > chunk_rows(vocab) {
                break;
            }
            members.push(count);
            end += count;
            groups.next();
        }
        let logits =
            (end > start).then(|| logits_of(hidden.clone().slice([start..end, 0..d_model])));
        let mut offset = 0;
        for count in members {
            let rows = offset..offset + count;
            sums.push(match &logits {
                Some(logits) if count > 0 => {
                    let part = logits.clone().slice([rows, 0..vocab]);
                    let labels = &labels[start + offset..start + offset + count];
                    cross_entropy(part, labels, None).0
                }
                _ => CrossEntropySums::default(),
            });
            offset += count;
        }
        start = end;
    }
    sums
}

/// The definitions: burn tensor ops, differentiated by burn's autodiff.
mod composite {
    use burn::prelude::*;
    use burn::tensor::activation::{log_softmax, sigmoid, silu, softmax};
    use burn::tensor::{Bool, Int, TensorData};

    use super::CrossEntropySums;

    pub(super) fn masked_softmax<B: Backend>(
        scores: Tensor<B, 4>,
        mask: Option<Tensor<B, 4, Bool>>,
        scale: f64,
    ) -> Tensor<B, 4> {
        let scores = scores * scale;
        let scores = match mask {
            Some(mask) => {
                let shape = scores.dims();
                scores.mask_fill(mask.expand(shape), f32::NEG_INFINITY)
            }
            None => scores,
        };
        softmax(scores, 3)
    }

    pub(super) fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        // `0.5 (1 + tanh z) = sigmoid(2z)`: six element-wise ops instead of eight.
        const TWO_SQRT_2_OVER_PI: f64 = 2.0 * 0.797_884_560_802_865_4;
        let slope = (x.clone() * x.clone()) * (TWO_SQRT_2_OVER_PI * 0.044715) + TWO_SQRT_2_OVER_PI;
        x.clone() * sigmoid(x * slope)
    }

    pub(super) fn layer_norm<B: Backend>(
        input: Tensor<B, 3>,
        weight: Tensor<B, 1>,
        bias: Tensor<B, 1>,
        epsilon: f64,
    ) -> Tensor<B, 3> {
        let (variance, mean) = input.clone().var_mean_bias(2);
        let normalized = (input - mean) / (variance + epsilon).sqrt();
        normalized * weight.unsqueeze::<3>() + bias.unsqueeze::<3>()
    }

    pub(super) fn rms_norm<B: Backend>(
        input: Tensor<B, 3>,
        weight: Tensor<B, 1>,
        epsilon: f64,
    ) -> Tensor<B, 3> {
        let mean_square = input.clone().square().mean_dim(2);
        input * (mean_square + epsilon).sqrt().recip() * weight.unsqueeze::<3>()
    }

    pub(super) fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
        silu(gate) * up
    }

    pub(super) fn rope<B: Backend>(
        x: Tensor<B, 4>,
        cos: Tensor<B, 3>,
        sin: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let half = x.dims()[3] / 2;
        let (cos, sin) = (cos.unsqueeze_dim::<4>(2), sin.unsqueeze_dim::<4>(2));
        let first = x.clone().narrow(3, 0, half);
        let second = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * cos + rotated * sin
    }

    pub(super) fn cross_entropy<B: Backend>(
        logits: Tensor<B, 2>,
        labels: &[usize],
        grad_scale: Option<f64>,
    ) -> (CrossEntropySums, Option<Tensor<B, 2>>) {
        let [rows, vocab] = logits.dims();
        let device = logits.device();
        let label_ids: Vec<i64> = labels.iter().map(|&label| label as i64).collect();
        let label = Tensor::<B, 2, Int>::from_data(TensorData::new(label_ids, [rows, 1]), &device);
        let log_probs = log_softmax(logits, 1);
        let nll = -f64::from(
            log_probs
                .clone()
                .gather(1, label.clone())
                .sum()
                .into_scalar()
                .elem::<f32>(),
        );
        let correct = log_probs
            .clone()
            .argmax(1)
            .equal(label.clone())
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>() as usize;
        let grad = grad_scale.map(|scale| {
            let one_hot = Tensor::<B, 2>::zeros([rows, vocab], &device).scatter(
                1,
                label,
                Tensor::ones([rows, 1], &device),
                burn::tensor::IndexingUpdateOp::Add,
            );
            (log_probs.exp() - one_hot) * scale
        });
        (CrossEntropySums { nll, correct }, grad)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Int, TensorData};

    use super::*;

    type A = Autodiff<Flex>;

    fn random<const D: usize>(shape: [usize; D], std: f64) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Normal(0.0, std), &Default::default())
    }

    /// A tracked copy of `values` (each path gets its own leaf, so the gradients are separate).
    fn leaf<const D: usize>(values: &Tensor<Flex, D>) -> Tensor<A, D> {
        Tensor::from_inner(values.clone()).require_grad()
    }

    /// The gradients of `sum(out * upstream)`: `upstream` is the output's incoming gradient.
    fn backward_against<const D: usize>(
        out: &Tensor<A, D>,
        upstream: &Tensor<Flex, D>,
    ) -> <A as burn::tensor::backend::AutodiffBackend>::Gradients {
        (out.clone() * Tensor::from_inner(upstream.clone()))
            .sum()
            .backward()
    }

    fn assert_close<const D: usize>(
        fused: Tensor<Flex, D>,
        reference: Tensor<Flex, D>,
        what: &str,
    ) {
        let scale = f64::from(reference.clone().abs().max().into_scalar());
        let diff = f64::from((fused - reference).abs().max().into_scalar());
        assert!(
            diff <= 2e-6 * (1.0 + scale),
            "{what}: fused and composite differ by {diff} (largest value {scale})"
        );
    }

    #[test]
    fn a_16_bit_weight_multiplies_as_its_f32_value() {
        // Kept as the model keeps it: the transpose of an `[out, in]` buffer.
        let weight = random([300, 70], 0.1)
            .cast(burn::tensor::DType::F16)
            .transpose();
        let exact = weight.clone().cast(burn::tensor::DType::F32);
        let bias = random([300], 0.1);
        // Few rows take the 16-bit kernel; more widen the weight first.
        for rows in [1, 3, F16_KERNEL_ROWS, F16_KERNEL_ROWS + 5] {
            let input = random([rows, 70], 1.0);
            let reference =
                burn::tensor::module::linear(input.clone(), exact.clone(), Some(bias.clone()));
            let fused = linear(input, weight.clone(), Some(bias.clone()));
            assert_close(fused, reference, &format!("{rows} rows"));
        }
    }

    #[test]
    fn the_flex_backends_take_the_fused_path() {
        assert_eq!(flex::Route::of::<Flex>(), Some(flex::Route::Inference));
        assert_eq!(flex::Route::of::<A>(), Some(flex::Route::Autodiff));
    }

    /// A mask over `[batch, mask_heads, seq_q, seq_k]` in which every query sees a key.
    fn mask(batch: usize, mask_heads: usize, seq_q: usize, seq_k: usize) -> Tensor<A, 4, Bool> {
        let values: Vec<bool> = (0..batch * mask_heads * seq_q * seq_k)
            .map(|i| {
                let (row, key) = (i / seq_k, i % seq_k);
                let query = row % seq_q;
                key > query + 2 || (row % 3 == 1 && key == 0 && query > 0)
            })
            .collect();
        Tensor::from_data(
            TensorData::new(values, [batch, mask_heads, seq_q, seq_k]),
            &Default::default(),
        )
    }

    #[test]
    fn masked_softmax_matches_its_definition_values_and_gradients() {
        let (batch, heads, seq_q, seq_k) = (2, 3, 5, 7);
        let scores = random([batch, heads, seq_q, seq_k], 3.0);
        let upstream = random([batch, heads, seq_q, seq_k], 1.0);
        for mask in [
            None,
            Some(mask(batch, 1, seq_q, seq_k)),
            Some(mask(batch, heads, seq_q, seq_k)),
        ] {
            let run = |fused: bool| {
                let scores = leaf(&scores);
                let out = if fused {
                    masked_softmax(scores.clone(), mask.clone(), 0.3)
                } else {
                    composite::masked_softmax(scores.clone(), mask.clone(), 0.3)
                };
                let grads = backward_against(&out, &upstream);
                (
                    out.inner(),
                    scores.grad(&grads).expect("scores are tracked"),
                )
            };
            let ((out, grad), (expected_out, expected_grad)) = (run(true), run(false));
            assert_close(out, expected_out, "softmax");
            assert_close(grad, expected_grad, "softmax gradient");
        }
    }

    #[test]
    fn gelu_tanh_matches_its_definition_values_and_gradients() {
        let device = Default::default();
        let x = Tensor::<Flex, 1>::from_floats(
            TensorData::new((0..4001).map(|i| i as f32 * 0.006 - 12.0).collect(), [4001]),
            &device,
        );
        let upstream = random([4001], 1.0);
        let run = |fused: bool| {
            let x = leaf(&x);
            let out = if fused {
                gelu_tanh(x.clone())
            } else {
                composite::gelu_tanh(x.clone())
            };
            let grads = backward_against(&out, &upstream);
            (out.inner(), x.grad(&grads).expect("x is tracked"))
        };
        let ((out, grad), (expected_out, expected_grad)) = (run(true), run(false));
        assert_close(out, expected_out, "gelu");
        assert_close(grad, expected_grad, "gelu gradient");
        // torch.nn.functional.gelu(torch.tensor(1.0), approximate="tanh") = 0.8411920070648193
        let one = gelu_tanh(Tensor::<Flex, 1>::from_floats([1.0], &device));
        assert!((one.into_scalar() - 0.841_192).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_matches_its_definition_values_and_gradients() {
        // An offset mean, as residual streams have, is where a one-pass variance loses digits.
        let input = random([2, 3, 40], 2.0) + 5.0;
        let (weight, bias) = (random([40], 1.0), random([40], 1.0));
        let upstream = random([2, 3, 40], 1.0);
        for frozen_affine in [false, true] {
            let run = |fused: bool| {
                let x = leaf(&input);
                let (w, b) = if frozen_affine {
                    (
                        Tensor::from_inner(weight.clone()),
                        Tensor::from_inner(bias.clone()),
                    )
                } else {
                    (leaf(&weight), leaf(&bias))
                };
                let out = if fused {
                    layer_norm(x.clone(), w.clone(), b.clone(), 1e-5)
                } else {
                    composite::layer_norm(x.clone(), w.clone(), b.clone(), 1e-5)
                };
                let grads = backward_against(&out, &upstream);
                let affine = (!frozen_affine).then(|| {
                    (
                        w.grad(&grads).expect("weight is tracked"),
                        b.grad(&grads).expect("bias is tracked"),
                    )
                });
                (
                    out.inner(),
                    x.grad(&grads).expect("input is tracked"),
                    affine,
                )
            };
            let ((out, grad, affine), (expected_out, expected_grad, expected_affine)) =
                (run(true), run(false));
            assert_close(out, expected_out, "layer norm");
            assert_close(grad, expected_grad, "layer norm input gradient");
            if let (Some((dw, db)), Some((expected_dw, expected_db))) = (affine, expected_affine) {
                assert_close(dw, expected_dw, "layer norm weight gradient");
                assert_close(db, expected_db, "layer norm bias gradient");
            }
        }
    }

    #[test]
    fn rms_norm_matches_its_definition_values_and_gradients() {
        let input = random([2, 3, 40], 2.0) + 1.0;
        let weight = random([40], 1.0);
        let upstream = random([2, 3, 40], 1.0);
        let run = |fused: bool| {
            let (x, w) = (leaf(&input), leaf(&weight));
            let out = if fused {
                rms_norm(x.clone(), w.clone(), 1e-6)
            } else {
                composite::rms_norm(x.clone(), w.clone(), 1e-6)
            };
            let grads = backward_against(&out, &upstream);
            (
                out.inner(),
                x.grad(&grads).expect("input is tracked"),
                w.grad(&grads).expect("weight is tracked"),
            )
        };
        let ((out, dx, dw), (expected_out, expected_dx, expected_dw)) = (run(true), run(false));
        assert_close(out, expected_out, "rms norm");
        assert_close(dx, expected_dx, "rms norm input gradient");
        assert_close(dw, expected_dw, "rms norm weight gradient");
    }

    #[test]
    fn swiglu_matches_its_definition_values_and_gradients() {
        let (gate, up) = (random([2, 3, 50], 4.0), random([2, 3, 50], 1.0));
        let upstream = random([2, 3, 50], 1.0);
        let run = |fused: bool| {
            let (g, u) = (leaf(&gate), leaf(&up));
            let out = if fused {
                swiglu(g.clone(), u.clone())
            } else {
                composite::swiglu(g.clone(), u.clone())
            };
            let grads = backward_against(&out, &upstream);
            (
                out.inner(),
                g.grad(&grads).expect("gate is tracked"),
                u.grad(&grads).expect("up is tracked"),
            )
        };
        let ((out, dg, du), (expected_out, expected_dg, expected_du)) = (run(true), run(false));
        assert_close(out, expected_out, "swiglu");
        assert_close(dg, expected_dg, "swiglu gate gradient");
        assert_close(du, expected_du, "swiglu up gradient");
    }

    #[test]
    fn rope_matches_its_definition_values_and_gradients() {
        let device = Default::default();
        let positions = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(vec![0i64, 1, 2, 3, 4, 0, 1, 2, 0, 1], [2, 5]),
            &device,
        );
        let inv_freq = crate::layers::rope_inv_freq(8, 10_000.0, None);
        let (cos, sin) = crate::layers::rope_cos_sin(positions, &inv_freq);
        let x = random([2, 5, 3, 8], 1.0);
        let upstream = random([2, 5, 3, 8], 1.0);
        let run = |fused: bool| {
            let x = leaf(&x);
            let (cos, sin) = (
                Tensor::from_inner(cos.clone()),
                Tensor::from_inner(sin.clone()),
            );
            let out = if fused {
                rope(x.clone(), cos, sin)
            } else {
                composite::rope(x.clone(), cos, sin)
            };
            let grads = backward_against(&out, &upstream);
            (out.inner(), x.grad(&grads).expect("x is tracked"))
        };
        let ((out, grad), (expected_out, expected_grad)) = (run(true), run(false));
        assert_close(out, expected_out, "rope");
        assert_close(grad, expected_grad, "rope gradient");
    }

    #[test]
    fn cross_entropy_matches_its_definition() {
        let logits = random([37, 50], 3.0);
        let values = logits.to_data().to_vec::<f32>().expect("f32 logits");
        // Every third row's label is its argmax, so `correct` is exercised.
        let labels: Vec<usize> = (0..37)
            .map(|row| match row % 3 {
                0 => (0..50)
                    .max_by(|&a, &b| values[row * 50 + a].total_cmp(&values[row * 50 + b]))
                    .unwrap_or(0),
                _ => (row * 7) % 50,
            })
            .collect();
        let (sums, grad) = cross_entropy(logits.clone(), &labels, Some(0.25));
        let (expected, expected_grad) =
            composite::cross_entropy(logits.clone(), &labels, Some(0.25));
        assert!(
            (sums.nll - expected.nll).abs() < 1e-4 * expected.nll,
            "{sums:?} vs {expected:?}"
        );
        assert_eq!(sums.correct, expected.correct);
        assert!(sums.correct >= 13);
        assert_close(
            grad.expect("a gradient was asked for"),
            expected_grad.expect("a gradient was asked for"),
            "cross-entropy gradient",
        );
        let (without_grad, none) = cross_entropy(logits, &labels, None);
        assert!(none.is_none());
        assert_eq!(without_grad, sums);
    }
}
