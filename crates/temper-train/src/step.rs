//! One optimizer step: forward and backward over the micro-batches of a step with a
//! token-weighted loss, gradient accumulation, clipping and AdamW.

use std::time::{Duration, Instant};

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use temper_data::Batch;
use temper_models::fused::grouped_cross_entropy;
use temper_models::{CausalLm, ModelInput};
use temper_optim::AdamW;

use crate::distributed::Rank;
use crate::error::Result;

use crate::loss::{
    LossSums, cross_entropy_surrogate, gather_hidden, logits_cross_entropy, targets,
};

/// What a step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Token-weighted mean loss over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Trained tokens over the step's micro-batches (the loss's normaliser).
    pub trained_tokens: usize,
    /// Every non-padding token of the step's micro-batches.
    pub tokens: usize,
    /// Time spent in all-reduces (data-parallel steps).
    pub all_reduce: Duration,
}

/// Tensors of a batch for the model.
pub fn model_input<B: Backend>(batch: &Batch, device: &B::Device) -> Result<ModelInput<B>> {
    Ok(ModelInput::from_rows(
        batch.batch_size,
        batch.seq_len,
        &batch.input_ids,
        &batch.position_ids,
        &batch.segment_ids,
        device,
    )?)
}

/// Forward and backward of one micro-batch whose loss sum is multiplied by `scale`
/// (`1 / trained tokens of the whole step`). Returns the gradients and the loss sums.
pub fn micro_step<B: AutodiffBackend>(
    model: &CausalLm<B>,
    batch: &Batch,
    scale: f64,
    device: &B::Device,
) -> Result<(GradientsParams, LossSums)> {
    let targets = targets(batch);
    let input = model_input(batch, device)?;
    let (objective, sums) = match model.output_weight() {
        Some(weight) => {
            let hidden = gather_hidden(model.hidden_states(input), &targets);
            cross_entropy_surrogate(hidden, weight, &targets.labels, scale)
        }
        None => logits_cross_entropy(
            target_logits(model, input, &targets),
            &targets.labels,
            scale,
        ),
    };
    let grads = GradientsParams::from_grads(objective.backward(), model);
    Ok((grads, sums))
}

/// One optimizer step over `micro_batches` at learning rate `lr`: the loss is the sum of
/// trained-token NLLs over all micro-batches divided by their total count.
pub fn train_step<B: AutodiffBackend>(
    model: CausalLm<B>,
    optimizer: &mut AdamW<B>,
    micro_batches: &[Batch],
    lr: f64,
    max_grad_norm: Option<f64>,
    device: &B::Device,
) -> Result<(CausalLm<B>, StepOutcome)> {
    train_step_on(
        model,
        optimizer,
        micro_batches,
        lr,
        max_grad_norm,
        device,
        None,
    )
}

/// [`train_step`] as `rank` of a data-parallel run, where `micro_batches` are this rank's
/// share of the step's rows. The trained tokens are counted over every rank first, each
/// rank's gradients of its losses divided by that count are summed over the ranks, and the
/// step (clipping by the summed gradients' norm, AdamW) is then the same on every rank: the
/// single-process step on all the ranks' rows. The outcome is the whole step's.
pub fn train_step_on<B: AutodiffBackend>(
    model: CausalLm<B>,
    optimizer: &mut AdamW<B>,
    micro_batches: &[Batch],
    lr: f64,
    max_grad_norm: Option<f64>,
    device: &B::Device,
    rank: Option<&Rank<B::InnerBackend>>,
) -> Result<(CausalLm<B>, StepOutcome)> {
    let started = Instant::now();
    let (mut trained_tokens, mut tokens) = step_tokens(micro_batches);
    if let Some(rank) = rank {
        let counts = rank.sum_counts(&[trained_tokens as u64, tokens as u64])?;
        (trained_tokens, tokens) = (counts[0] as usize, counts[1] as usize);
    }
    let counting = started.elapsed();
    let (grads, sums) = accumulate(&model, micro_batches, trained_tokens, device)?;
    let (grads, sums, all_reduce) = match rank {
        Some(rank) => {
            let (grads, sums, summing) = rank.sum_gradients(&model, grads, sums)?;
            (grads, sums, counting + summing)
        }
        None => (grads, sums, Duration::ZERO),
    };
    let (model, report) = optimizer.step(lr, model, grads, max_grad_norm);
    Ok((
        model,
        StepOutcome {
            loss: sums.mean(),
            grad_norm: report.grad_norm,
            trained_tokens,
            tokens,
            all_reduce,
        },
    ))
}

/// Trained and non-padding tokens of `micro_batches`.
fn step_tokens(micro_batches: &[Batch]) -> (usize, usize) {
    (
        micro_batches.iter().map(|b| targets(b).len()).sum(),
        micro_batches.iter().map(Batch::real_tokens).sum(),
    )
}

/// The summed gradients of `micro_batches`' losses, each divided by `trained_tokens` (the
/// whole step's), and their loss sums.
fn accumulate<B: AutodiffBackend>(
    model: &CausalLm<B>,
    micro_batches: &[Batch],
    trained_tokens: usize,
    device: &B::Device,
) -> Result<(GradientsParams, LossSums)> {
    let scale = 1.0 / trained_tokens.max(1) as f64;
    let mut accumulator = GradientsAccumulator::new();
    let mut sums = LossSums::default();
    for batch in micro_batches {
        let (grads, batch_sums) = micro_step(model, batch, scale, device)?;
        accumulator.accumulate(model, grads);
        sums.add(batch_sums);
    }
    Ok((accumulator.grads(), sums))
}

/// Loss sums of `batches` without gradients (evaluation).
pub fn evaluate<B: Backend>(
    model: &CausalLm<B>,
    batches: &[Batch],
    device: &B::Device,
) -> Result<LossSums> {
    let mut sums = LossSums::default();
    for batch in batches {
        for row in row_losses(model, batch, device)? {
            sums.add(row);
        }
    }
    Ok(sums)
}

/// Loss sums of each row of `batch` without gradients, from one forward pass (the held-out
/// loss, and the evaluator's per-example answer loss).
pub fn row_losses<B: Backend>(
    model: &CausalLm<B>,
    batch: &Batch,
    device: &B::Device,
) -> Result<Vec<LossSums>> {
    let targets = targets(batch);
    if targets.is_empty() {
        return Ok(vec![LossSums::default(); batch.batch_size]);
    }
    // Targets come in row order.
    let mut counts = vec![0; batch.batch_size];
    for &source in &targets.sources {
        counts[source as usize / batch.seq_len] += 1;
    }
    let labels: Vec<usize> = targets.labels.iter().map(|&l| l as usize).collect();
    let hidden = gather_hidden(model.hidden_states(model_input(batch, device)?), &targets);
    let vocab = model.config().vocab_size();
    let sums = grouped_cross_entropy(hidden, &labels, &counts, vocab, |h| model.logits_2d(h));
    Ok(sums
        .into_iter()
        .zip(counts)
        .map(|(sums, tokens)| LossSums {
            nll: sums.nll,
            tokens,
            correct: sums.correct,
        })
        .collect())
}

/// The full logits of the targets' source positions (`[n_targets, vocab]`), for output
/// layers that are not a plain matrix (an adapted `lm_head`).
fn target_logits<B: Backend>(
    model: &CausalLm<B>,
    input: ModelInput<B>,
    targets: &crate::loss::Targets,
) -> Tensor<B, 2> {
    let logits = model.forward(input);
    let [batch_size, seq_len, vocab] = logits.dims();
    let index = Tensor::<B, 1, burn::tensor::Int>::from_data(
        TensorData::new(targets.sources.clone(), [targets.len()]),
        &logits.device(),
    );
    logits
        .reshape([batch_size * seq_len, vocab])
        .select(0, index)
}
