//! Fused operations with hand-written backwards: masked attention softmax, tanh-GELU,
//! LayerNorm and the rows of a cross-entropy.
//!
//! Each function computes what a short chain of burn tensor ops computes (that chain is its
//! fallback, and its definition), but on the default CPU backend (burn-flex, with or without
//! autodiff) it runs one multi-threaded pass forward and one backward. Through burn's autodiff
//! the chains cost five to fifteen single-threaded element-wise passes each way over tensors
//! as large as the attention scores (`[batch, heads, seq, seq]`), and keep each intermediate
//! alive until the backward; profiled on a GPT-2 124M training step, that was as much time as
//! all the matrix multiplications.
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
    let [batch, heads, seq_q, seq_k] = scores.dims();
    #[cfg(feature = "flex")]
    if let Some(route) = flex::Route::of::<B>()
        && flex::is_f32(&scores)
    {
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

/// The definitions: burn tensor ops, differentiated by burn's autodiff.
mod composite {
    use burn::prelude::*;
    use burn::tensor::activation::{log_softmax, sigmoid, softmax};
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
        let slope =
            (x.clone() * x.clone()) * (TWO_SQRT_2_OVER_PI * 0.044715) + TWO_SQRT_2_OVER_PI;
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
