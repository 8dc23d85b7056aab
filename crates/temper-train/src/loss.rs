//! Masked next-token cross-entropy, computed chunk by chunk so that the `[tokens, vocab]`
//! logits and their gradient never exist for the whole batch at once.
//!
//! Which positions count (the trained targets of a packed row):
//!
//! ```text
//! input_ids    a0 a1 a2 a3 b0 b1 b2 .  .      a*, b*: two packed examples, . padding
//! segment_ids  1  1  1  1  2  2  2  0  0
//! loss_mask    0  0  1  1  0  1  1  0  0      token t is a trained label
//! predicts     -  -  a2 a3 -  b1 b2 -  -      position t-1 predicts token t when both
//! source t-1      a1 a2       b0 b1           are in the same (non-padding) example
//! ```
//!
//! The loss of a step is the sum of these tokens' negative log-likelihoods over all its
//! micro-batches divided by their total count (token-weighted gradient accumulation).
//!
//! The gradient is not left to autodiff through the logits. Per chunk of rows the forward
//! computes `p = softmax(h W^T)`, the loss, and the gradient `G = (p - onehot(y)) * scale`
//! with respect to the logits (written over the logits), then `G W` (for the hidden states) and `G^T h` (for the
//! output weight), and drops the chunk. Autodiff then sees only the surrogate
//! `sum(h * (G W)) + sum(W * (G^T h))`, whose gradients are exactly those of the loss.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, TensorData};
use temper_data::Batch;
use temper_models::fused::{chunk_rows, cross_entropy};

/// The trained targets of a batch: which flat positions (`row * seq_len + t`) predict which
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub sources: Vec<i64>,
    pub labels: Vec<i64>,
}

impl Targets {
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// The positions whose next token is trained (see the module picture).
pub fn targets(batch: &Batch) -> Targets {
    let mut sources = Vec::new();
    let mut labels = Vec::new();
    for row in 0..batch.batch_size {
        let start = row * batch.seq_len;
        for t in 1..batch.seq_len {
            let (source, label) = (start + t - 1, start + t);
            let segment = batch.segment_ids[label];
            if batch.loss_mask[label] && segment != 0 && batch.segment_ids[source] == segment {
                sources.push(source as i64);
                labels.push(i64::from(batch.input_ids[label]));
            }
        }
    }
    Targets { sources, labels }
}

/// Sums over the trained targets of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSums {
    /// Sum of negative log-likelihoods.
    pub nll: f64,
    /// Number of targets.
    pub tokens: usize,
    /// Targets whose most likely token was the label.
    pub correct: usize,
}

impl LossSums {
    pub fn add(&mut self, other: LossSums) {
        self.nll += other.nll;
        self.tokens += other.tokens;
        self.correct += other.correct;
    }

    pub fn mean(&self) -> f64 {
        self.nll / self.tokens.max(1) as f64
    }
}

/// The gathered hidden states of the targets: `[n_targets, d_model]`.
pub fn gather_hidden<B: Backend>(hidden: Tensor<B, 3>, targets: &Targets) -> Tensor<B, 2> {
    let [batch, seq_len, d_model] = hidden.dims();
    let device = hidden.device();
    let index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(targets.sources.clone(), [targets.len()]),
        &device,
    );
    hidden.reshape([batch * seq_len, d_model]).select(0, index)
}

/// Gradients of a scaled loss sum: with respect to the hidden states, and (when asked) the
/// output weight.
pub type CrossEntropyGrads<B> = (Tensor<B, 2>, Option<Tensor<B, 2>>);

/// Loss sums of `hidden` (`[n, d_model]`) against `labels` with output weight `weight`
/// (`[vocab, d_model]`), chunk by chunk, without gradients. Also returns, when `scale` is
/// given, the gradients of `scale * sum(nll)` with respect to `hidden` and (if
/// `weight_grad`) `weight`.
pub fn chunked_cross_entropy<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    labels: &[i64],
    scale: Option<f64>,
    weight_grad: bool,
) -> (LossSums, Option<CrossEntropyGrads<B>>) {
    let [n, d_model] = hidden.dims();
    let [vocab, _] = weight.dims();
    let device = hidden.device();
    let chunk = chunk_rows(vocab);
    let mut sums = LossSums::default();
    let mut hidden_grads = Vec::new();
    let mut weight_grad_sum: Option<Tensor<B, 2>> = None;
    let weight_t = weight.clone().transpose();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let rows = end - start;
        let h = hidden.clone().slice([start..end, 0..d_model]);
        let chunk_labels: Vec<usize> = labels[start..end]
            .iter()
            .map(|&label| label as usize)
            .collect();
        let logits = h.clone().matmul(weight_t.clone());
        let (chunk_sums, grad_logits) = cross_entropy(logits, &chunk_labels, scale);
        sums.nll += chunk_sums.nll;
        sums.correct += chunk_sums.correct;
        sums.tokens += rows;
        // d(scale * nll) / d logits = scale * (softmax - onehot).
        if let Some(grad_logits) = grad_logits {
            hidden_grads.push(grad_logits.clone().matmul(weight.clone()));
            if weight_grad {
                let part = grad_logits.transpose().matmul(h);
                weight_grad_sum = Some(match weight_grad_sum {
                    Some(sum) => sum + part,
                    None => part,
                });
            }
        }
    }
    let grads = scale.map(|_| {
        let hidden_grad = if hidden_grads.is_empty() {
            Tensor::zeros([0, d_model], &device)
        } else {
            Tensor::cat(hidden_grads, 0)
        };
        let weight_grad = weight_grad
            .then(|| weight_grad_sum.unwrap_or_else(|| Tensor::zeros([vocab, d_model], &device)));
        (hidden_grad, weight_grad)
    });
    (sums, grads)
}

/// The trainable surrogate of `scale * sum(nll)`: a scalar whose gradients with respect to
/// `hidden` (`[n, d_model]`, tracked) and `weight` (`[vocab, d_model]`, tracked or not) are
/// those of the loss. Returns it with the loss sums.
pub fn cross_entropy_surrogate<B: AutodiffBackend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    labels: &[i64],
    scale: f64,
) -> (Tensor<B, 1>, LossSums) {
    let weight_grad = weight.is_require_grad();
    let (sums, grads) = chunked_cross_entropy(
        hidden.clone().inner(),
        weight.clone().inner(),
        labels,
        Some(scale),
        weight_grad,
    );
    let (hidden_grad, weight_grad) = grads.expect("scale was given");
    let mut surrogate = (hidden * Tensor::from_inner(hidden_grad)).sum();
    if let Some(weight_grad) = weight_grad {
        surrogate = surrogate + (weight * Tensor::from_inner(weight_grad)).sum();
    }
    (surrogate, sums)
}

/// The loss of plain `[n, vocab]` logits (used when the output layer is not a plain matrix,
/// e.g. an adapted `lm_head`); differentiable through autodiff.
pub fn logits_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[i64],
    scale: f64,
) -> (Tensor<B, 1>, LossSums) {
    let [rows, _] = logits.dims();
    let device = logits.device();
    let label =
        Tensor::<B, 2, Int>::from_data(TensorData::new(labels.to_vec(), [rows, 1]), &device);
    let log_probs = log_softmax(logits, 1);
    let picked = log_probs.clone().gather(1, label.clone());
    let nll_sum = picked.neg().sum();
    let sums = LossSums {
        nll: f64::from(nll_sum.clone().into_scalar().elem::<f32>()),
        tokens: rows,
        correct: log_probs
            .argmax(1)
            .equal(label)
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>() as usize,
    };
    (nll_sum * scale, sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;

    type A = Autodiff<Flex>;

    fn batch() -> Batch {
        Batch {
            batch_size: 1,
            seq_len: 9,
            input_ids: vec![10, 11, 12, 13, 20, 21, 22, 0, 0],
            loss_mask: vec![false, false, true, true, false, true, true, false, false],
            position_ids: vec![0, 1, 2, 3, 0, 1, 2, 0, 0],
            segment_ids: vec![1, 1, 1, 1, 2, 2, 2, 0, 0],
        }
    }

    #[test]
    fn targets_stay_inside_their_example() {
        let targets = targets(&batch());
        assert_eq!(targets.sources, vec![1, 2, 4, 5]);
        assert_eq!(targets.labels, vec![12, 13, 21, 22]);
    }

    #[test]
    fn a_trained_first_token_has_no_predictor() {
        let mut batch = batch();
        batch.loss_mask[4] = true;
        assert_eq!(targets(&batch).len(), 4);
    }

    #[test]
    fn the_surrogate_has_the_gradients_of_the_plain_loss() {
        let device = Default::default();
        let hidden = Tensor::<A, 2>::random([400, 8], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let weight = Tensor::<A, 2>::random([50_000, 8], Distribution::Normal(0.0, 0.3), &device)
            .require_grad();
        let labels: Vec<i64> = (0..400).map(|i| (i * 1_337 % 50_000) as i64).collect();
        let scale = 1.0 / 40.0;

        let (plain, plain_sums) = logits_cross_entropy(
            hidden.clone().matmul(weight.clone().transpose()),
            &labels,
            scale,
        );
        let plain_grads = plain.backward();
        let (surrogate, sums) =
            cross_entropy_surrogate(hidden.clone(), weight.clone(), &labels, scale);
        let grads = surrogate.backward();

        assert!((sums.nll - plain_sums.nll).abs() < 1e-3 * plain_sums.nll);
        assert_eq!(sums.correct, plain_sums.correct);
        for (ours, theirs) in [
            (
                hidden.grad(&grads).unwrap(),
                hidden.grad(&plain_grads).unwrap(),
            ),
            (
                weight.grad(&grads).unwrap(),
                weight.grad(&plain_grads).unwrap(),
            ),
        ] {
            let difference = (ours - theirs.clone()).abs().max().into_scalar();
            let largest = theirs.abs().max().into_scalar();
            assert!(
                difference <= 1e-5 * largest.max(1e-3),
                "{difference} vs {largest}"
            );
        }
    }
}
