//! One training step on every backend: the recorded trajectories of `trajectory.rs` (forward,
//! masked loss over packed rows, backward, token-weighted accumulation, clipping, AdamW; LoRA
//! on the tiny Llama and full fine-tuning of the tiny GPT-2) run on each backend compiled into
//! this test, and every step's loss and gradient norm and the trained weights are compared
//! with the default CPU backend (burn-flex).
//!
//! Backends: flex and ndarray always; wgpu with this crate's `wgpu` feature (on by default: CI
//! runs it on Mesa's lavapipe software Vulkan driver, `apt-get install mesa-vulkan-drivers`);
//! CUDA with `--features cuda` on a machine with an NVIDIA GPU
//! (`cargo test -p temper-tests --features cuda --test backends`).
//!
//! Tolerances: losses and gradient norms within 1e-4 relative of flex's at every step (float
//! sums in another order differ by ~1e-6; a wrong mask or scale is off by percents); trained
//! weights within 2e-4 absolute (AdamW's step is about the learning rate, 1e-3 here, whatever
//! the gradient's size, so rounding in a near-zero gradient shows up at that scale). One slice
//! is exempt down to a looser bound: GPT-2's key bias (the middle third of `c_attn.bias`) has a
//! zero gradient in exact arithmetic (softmax ignores a constant added to every score of a
//! query), so AdamW turns each backend's rounding noise there into steps of up to the learning
//! rate; it may differ by up to the sum of the learning rates, and the step losses above show
//! it does not matter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use temper_tests::trajectory::{self, Step, full_model, lora_model, weights};

const LOSS_TOLERANCE: f64 = 1e-4;
const WEIGHT_TOLERANCE: f32 = 2e-4;
/// Enough steps to pass warmup (5 steps) and move the weights well away from their start.
const STEPS: usize = 12;

struct Trained {
    log: Vec<Step>,
    weights: Vec<(String, Vec<usize>, Vec<f32>)>,
}

fn lora<B: AutodiffBackend>(device: &B::Device) -> Trained {
    let reference = trajectory::reference("trajectory_lora.json");
    let (model, log) = trajectory::train(&reference, lora_model::<B>(device), device, STEPS);
    Trained {
        log,
        weights: weights(&model),
    }
}

fn full<B: AutodiffBackend>(device: &B::Device) -> Trained {
    let reference = trajectory::reference("trajectory_full.json");
    let (model, log) = trajectory::train(&reference, full_model::<B>(device), device, STEPS);
    Trained {
        log,
        weights: weights(&model),
    }
}

fn compare(what: &str, backend: &str, ours: &Trained, flex: &Trained) {
    let relative = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-8);
    assert_eq!(ours.log.len(), flex.log.len());
    for (index, (a, b)) in ours.log.iter().zip(&flex.log).enumerate() {
        let step = index + 1;
        assert_eq!(a.trained_tokens, b.trained_tokens, "{what} step {step}");
        assert!(
            relative(a.loss, b.loss) <= LOSS_TOLERANCE,
            "{what} on {backend}, step {step}: loss {} vs flex {}",
            a.loss,
            b.loss
        );
        assert!(
            relative(a.grad_norm, b.grad_norm) <= LOSS_TOLERANCE,
            "{what} on {backend}, step {step}: grad norm {} vs flex {}",
            a.grad_norm,
            b.grad_norm
        );
    }
    assert_eq!(
        ours.weights.len(),
        flex.weights.len(),
        "{what}: weight count"
    );
    let noise_bound = ours.log.iter().map(|s| s.learning_rate).sum::<f64>() as f32;
    let mut largest = 0f32;
    for ((key, shape, a), (flex_key, flex_shape, b)) in ours.weights.iter().zip(&flex.weights) {
        assert_eq!((key, shape), (flex_key, flex_shape));
        let key_bias = key
            .ends_with("attn.c_attn.bias")
            .then(|| shape[0] / 3..2 * shape[0] / 3);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let difference = (x - y).abs();
            if key_bias.as_ref().is_some_and(|slice| slice.contains(&i)) {
                assert!(
                    difference <= noise_bound,
                    "{what} on {backend}: {key}[{i}] = {x} vs flex {y} (noise-only key bias)"
                );
                continue;
            }
            largest = largest.max(difference);
            assert!(
                difference <= WEIGHT_TOLERANCE,
                "{what} on {backend}: {key}[{i}] = {x} vs flex {y}"
            );
        }
    }
    eprintln!(
        "{what} on {backend}: {STEPS} steps, final loss {:.6} (flex {:.6}), largest weight difference {largest:.2e} (key bias aside)",
        ours.log[STEPS - 1].loss,
        flex.log[STEPS - 1].loss
    );
}

/// Trains both recorded setups on `B` and compares them with flex.
fn matches_flex<B: Backend>(device: &B::Device) {
    let name = B::name(device);
    let flex_device = Default::default();
    compare(
        "LoRA",
        &name,
        &lora::<Autodiff<B>>(device),
        &lora::<Autodiff<Flex>>(&flex_device),
    );
    compare(
        "full fine-tuning",
        &name,
        &full::<Autodiff<B>>(device),
        &full::<Autodiff<Flex>>(&flex_device),
    );
}

/// The comparison can fail: a loss off by 0.1% at one step, or one weight off by 1e-3, is
/// caught (flex against itself is exact).
#[test]
fn the_comparison_catches_a_different_trajectory() {
    let device = Default::default();
    let flex = lora::<Autodiff<Flex>>(&device);
    compare("LoRA", "flex", &lora::<Autodiff<Flex>>(&device), &flex);
    let mut off = lora::<Autodiff<Flex>>(&device);
    off.log[5].loss *= 1.001;
    let caught = std::panic::catch_unwind(|| compare("LoRA", "off loss", &off, &flex));
    assert!(caught.is_err(), "a loss off by 0.1% passed the comparison");
    let mut off = lora::<Autodiff<Flex>>(&device);
    off.weights[3].2[7] += 1e-3;
    let caught = std::panic::catch_unwind(|| compare("LoRA", "off weight", &off, &flex));
    assert!(
        caught.is_err(),
        "a weight off by 1e-3 passed the comparison"
    );
}

#[test]
fn ndarray_matches_flex() {
    matches_flex::<burn::backend::NdArray>(&Default::default());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_flex() {
    // The default adapter: a GPU, or lavapipe (Mesa's software Vulkan) where there is none.
    matches_flex::<burn::backend::Wgpu>(&burn::backend::wgpu::WgpuDevice::DefaultDevice);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_flex() {
    matches_flex::<burn::backend::Cuda>(&burn::backend::cuda::CudaDevice::new(0));
}
