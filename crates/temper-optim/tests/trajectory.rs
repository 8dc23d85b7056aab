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
use temper_optim::{AdamW, AdamWConfig, LrSchedule, ScheduleKind, lr_at};

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

#[test]
fn adamw_schedule_and_clipping_follow_torch_step_for_step() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/adamw_trajectory.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let device = Default::default();
    let initial = &reference["initial"];
    let mut model = Toy::<B> {
        weight: Param::from_tensor(tensor2(&initial["weight"], &device)),
        bias: Param::from_tensor(tensor1(&initial["bias"], &device)),
        norm: Norm {
            weight: Param::from_tensor(tensor1(&initial["norm.weight"], &device)),
        },
        embed_tokens: Embedding {
            weight: Param::from_tensor(tensor2(&initial["embed_tokens.weight"], &device)),
        },
    };
    let x = tensor2(&reference["data"]["x"], &device);
    let target = tensor2(&reference["data"]["target"], &device);
    let ids: Vec<i64> = reference["data"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let n = ids.len();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device);

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
        let embedded =
            burn::tensor::module::embedding(model.embed_tokens.weight.val(), ids.clone())
                .reshape([n, 4]);
        let h = embedded + x.clone();
        let out = (h.matmul(model.weight.val()) + model.bias.val().unsqueeze())
            * model.norm.weight.val().unsqueeze();
        let loss = (out - target.clone()).square().mean();
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
