//! AdamW with parameter groups, warmup-cosine schedule and global-norm clipping follow
//! `torch.optim.AdamW` + `LambdaLR` + `clip_grad_norm_` step for step on a tiny model.
//! Reference: `fixtures/adamw_trajectory.json`, made by `fixtures/make_adamw_trajectory.py`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use serde_json::Value;
use temper_optim::{AdamW, AdamWConfig, AdamWState, LrSchedule, ScheduleKind, lr_at};

type B = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Norm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
struct Embedding<B: Backend> {
    weight: Param<Tensor<B, 2>>,
}

/// Parameters named as the reference names them: `weight`, `bias`, `norm.weight`,
/// `embed_tokens.weight`.
#[derive(Module, Debug)]
struct Toy<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
    norm: Norm<B>,
    embed_tokens: Embedding<B>,
}

fn matrix(value: &Value) -> (Vec<f32>, Vec<usize>) {
    let rows = value.as_array().unwrap();
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let cols = data.len() / rows.len();
    (data, vec![rows.len(), cols])
}

fn vector(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn tensor2(value: &Value, device: &burn::tensor::Device<B>) -> Tensor<B, 2> {
    let (data, shape) = matrix(value);
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn tensor1(value: &Value, device: &burn::tensor::Device<B>) -> Tensor<B, 1> {
    let data = vector(value);
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), device)
}

fn host<const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().to_vec().unwrap()
}

fn reference() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/adamw_trajectory.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The toy with the reference's initial values.
fn initial_toy(reference: &Value, device: &burn::tensor::Device<B>) -> Toy<B> {
    let initial = &reference["initial"];
    Toy {
        weight: Param::from_tensor(tensor2(&initial["weight"], device)),
        bias: Param::from_tensor(tensor1(&initial["bias"], device)),
        norm: Norm {
            weight: Param::from_tensor(tensor1(&initial["norm.weight"], device)),
        },
        embed_tokens: Embedding {
            weight: Param::from_tensor(tensor2(&initial["embed_tokens.weight"], device)),
        },
    }
}

#[test]
fn adamw_schedule_and_clipping_follow_torch_step_for_step() {
    let reference = reference();
    let device = Default::default();
    let mut model = initial_toy(&reference, &device);

    let config = &reference["config"];
    let steps = config["steps"].as_u64().unwrap();
    let schedule = LrSchedule {
        kind: ScheduleKind::Cosine,
        learning_rate: config["learning_rate"].as_f64().unwrap(),
        warmup_steps: config["warmup_steps"].as_u64().unwrap(),
        total_steps: steps,
        min_lr_ratio: config["min_lr_ratio"].as_f64().unwrap(),
    };
    let mut optimizer = AdamW::<B>::new(AdamWConfig {
        weight_decay: config["weight_decay"].as_f64().unwrap(),
        ..AdamWConfig::default()
    });
    let max_grad_norm = config["max_grad_norm"].as_f64().unwrap();

    for (step, expected) in reference["steps"].as_array().unwrap().iter().enumerate() {
        let loss = toy_loss(&model, &reference, &device);
        let loss_value = f64::from(host(loss.clone())[0]);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs().max(1e-3);
        assert!(
            close(loss_value, expected["loss"].as_f64().unwrap()),
            "step {step}: loss {loss_value} vs {}",
            expected["loss"]
        );
        let lr = lr_at(&schedule, step as u64);
        assert!(
            close(lr, expected["lr"].as_f64().unwrap()),
            "step {step}: lr {lr} vs {}",
            expected["lr"]
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (updated, report) = optimizer.step(lr, model, grads, Some(max_grad_norm));
        model = updated;
        assert!(
            close(report.grad_norm, expected["grad_norm"].as_f64().unwrap()),
            "step {step}: grad norm {} vs {}",
            report.grad_norm,
            expected["grad_norm"]
        );
        assert_eq!(
            (report.updated, report.decayed),
            (4, 1),
            "only `weight` is decayed"
        );
    }
    assert_eq!(steps as usize, reference["steps"].as_array().unwrap().len());

    let final_values = &reference["final"];
    let compare = |name: &str, actual: Vec<f32>, expected: Vec<f32>| {
        let diff = actual
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{name}: final values differ by {diff}");
    };
    compare(
        "weight",
        host(model.weight.val()),
        matrix(&final_values["weight"]).0,
    );
    compare(
        "bias",
        host(model.bias.val()),
        vector(&final_values["bias"]),
    );
    compare(
        "norm.weight",
        host(model.norm.weight.val()),
        vector(&final_values["norm.weight"]),
    );
    compare(
        "embed_tokens.weight",
        host(model.embed_tokens.weight.val()),
        matrix(&final_values["embed_tokens.weight"]).0,
    );
}

/// The toy's loss on the reference data.
fn toy_loss(model: &Toy<B>, reference: &Value, device: &burn::tensor::Device<B>) -> Tensor<B, 1> {
    let x = tensor2(&reference["data"]["x"], device);
    let target = tensor2(&reference["data"]["target"], device);
    let ids: Vec<i64> = reference["data"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let n = ids.len();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    let h =
        burn::tensor::module::embedding(model.embed_tokens.weight.val(), ids).reshape([n, 4]) + x;
    let out = (h.matmul(model.weight.val()) + model.bias.val().unsqueeze())
        * model.norm.weight.val().unsqueeze();
    (out - target).square().mean()
}

/// A copy of the model with fresh parameter ids, as a reload from disk gives.
fn reloaded(model: &Toy<B>, device: &burn::tensor::Device<B>) -> Toy<B> {
    let copy2 = |t: Tensor<B, 2>| Param::from_tensor(Tensor::from_data(t.into_data(), device));
    let copy1 = |t: Tensor<B, 1>| Param::from_tensor(Tensor::from_data(t.into_data(), device));
    Toy {
        weight: copy2(model.weight.val()),
        bias: copy1(model.bias.val()),
        norm: Norm {
            weight: copy1(model.norm.weight.val()),
        },
        embed_tokens: Embedding {
            weight: copy2(model.embed_tokens.weight.val()),
        },
    }
}

#[test]
fn exported_state_resumes_bit_identically() {
    let reference = reference();
    let device = Default::default();
    let fresh = || initial_toy(&reference, &device);
    let schedule = LrSchedule {
        kind: ScheduleKind::Cosine,
        learning_rate: 0.05,
        warmup_steps: 2,
        total_steps: 6,
        min_lr_ratio: 0.0,
    };
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let run = |mut model: Toy<B>, optimizer: &mut AdamW<B>, steps: std::ops::Range<u64>| {
        for step in steps {
            let grads = GradientsParams::from_grads(
                toy_loss(&model, &reference, &device).backward(),
                &model,
            );
            model = optimizer
                .step(lr_at(&schedule, step), model, grads, Some(0.5))
                .0;
        }
        model
    };

    let mut straight = AdamW::<B>::new(config.clone());
    let uninterrupted = run(fresh(), &mut straight, 0..6);

    let mut first = AdamW::<B>::new(config.clone());
    let halfway = run(fresh(), &mut first, 0..3);
    let saved: AdamWState =
        serde_json::from_str(&serde_json::to_string(&first.export_state(&halfway)).unwrap())
            .unwrap();
    assert_eq!(saved.params.len(), 4);
    assert_eq!(saved.params["norm.weight"].step, 3);
    let model = reloaded(&halfway, &device);
    let mut second = AdamW::<B>::new(config);
    second.import_state(&model, &saved, &device).unwrap();
    let resumed = run(model, &mut second, 3..6);

    assert_eq!(host(resumed.weight.val()), host(uninterrupted.weight.val()));
    assert_eq!(host(resumed.bias.val()), host(uninterrupted.bias.val()));
    assert_eq!(
        host(resumed.norm.weight.val()),
        host(uninterrupted.norm.weight.val())
    );
    assert_eq!(
        host(resumed.embed_tokens.weight.val()),
        host(uninterrupted.embed_tokens.weight.val())
    );

    // State for another model is refused with the parameter's name.
    let mut wrong = saved.clone();
    let moments = wrong.params.remove("bias").unwrap();
    wrong.params.insert("lm_head.bias".into(), moments);
    let error = AdamW::<B>::new(AdamWConfig::default())
        .import_state(&resumed, &wrong, &device)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "optimizer state: parameter `lm_head.bias` is not in the model"
    );
    let mut short = saved;
    short.params.get_mut("bias").unwrap().first.pop();
    let error = AdamW::<B>::new(AdamWConfig::default())
        .import_state(&resumed, &short, &device)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "optimizer state: parameter `bias` has 2 values saved, the model's has 3"
    );
}
