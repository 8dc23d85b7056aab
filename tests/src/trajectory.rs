//! The recorded training trajectories of `crates/temper-train/tests/fixtures/make_trajectories.py`
//! (PyTorch + PEFT): 20 optimizer steps of 2 packed, masked micro-batches each, AdamW with
//! parameter groups, warmup-cosine and clipping, on the tiny GPT-2 (full fine-tuning) and the
//! tiny Llama (LoRA r=4 on q/k/v/o, starting from torch's initial factors). The same steps run
//! here on any backend, so tests compare a backend with PyTorch or with another backend.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use safetensors::SafeTensors;
use serde_json::Value;
use temper_data::Batch;
use temper_lora::{Adapter, LoraConfig, TargetModules};
use temper_models::CausalLm;
use temper_optim::{AdamW, AdamWConfig, LrSchedule, ScheduleKind, lr_at};

use crate::root;

/// `crates/temper-train/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    root().join("crates/temper-train/tests/fixtures")
}

/// A tiny model of `crates/temper-models/tests/fixtures` (`gpt2`, `llama_gqa`).
pub fn model_fixture(name: &str) -> PathBuf {
    root()
        .join("crates/temper-models/tests/fixtures")
        .join(name)
}

/// A recorded trajectory: `trajectory_full.json` or `trajectory_lora.json`.
pub fn reference(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn numbers<T: TryFrom<u64>>(value: &Value) -> Vec<T> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|v| T::try_from(v).ok())
                .expect("a small non-negative integer")
        })
        .collect()
}

/// The reference's packed micro-batches, in order.
pub fn micro_batches(reference: &Value) -> Vec<Batch> {
    let size = |b: &Value, key: &str| b[key].as_u64().expect("a size") as usize;
    reference["micro_batches"]
        .as_array()
        .expect("micro_batches")
        .iter()
        .map(|b| Batch {
            batch_size: size(b, "batch_size"),
            seq_len: size(b, "seq_len"),
            input_ids: numbers(&b["input_ids"]),
            position_ids: numbers(&b["position_ids"]),
            segment_ids: numbers(&b["segment_ids"]),
            loss_mask: b["loss_mask"]
                .as_array()
                .expect("loss_mask")
                .iter()
                .map(|v| v.as_bool().expect("a bool"))
                .collect(),
        })
        .collect()
}

/// What one optimizer step reported.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub learning_rate: f64,
    pub loss: f64,
    pub grad_norm: f64,
    pub trained_tokens: u64,
}

/// Runs the first `steps` optimizer steps of the reference on `model` (on `device`).
pub fn train<B: AutodiffBackend>(
    reference: &Value,
    mut model: CausalLm<B>,
    device: &B::Device,
    steps: usize,
) -> (CausalLm<B>, Vec<Step>) {
    let f = |key: &str| reference[key].as_f64().expect(key);
    let schedule = LrSchedule {
        kind: ScheduleKind::Cosine,
        learning_rate: f("learning_rate"),
        warmup_steps: reference["warmup_steps"].as_u64().expect("warmup_steps"),
        total_steps: reference["total_steps"].as_u64().expect("total_steps"),
        min_lr_ratio: f("min_lr_ratio"),
    };
    let mut optimizer = AdamW::<B>::new(AdamWConfig {
        weight_decay: f("weight_decay"),
        ..AdamWConfig::default()
    });
    let batches = micro_batches(reference);
    let accumulation = reference["gradient_accumulation_steps"]
        .as_u64()
        .expect("gradient_accumulation_steps") as usize;
    let mut log = Vec::with_capacity(steps);
    for index in 0..steps {
        let learning_rate = lr_at(&schedule, index as u64);
        let step_batches = &batches[index * accumulation..(index + 1) * accumulation];
        let outcome;
        (model, outcome) = temper_train::train_step(
            model,
            &mut optimizer,
            step_batches,
            learning_rate,
            Some(f("max_grad_norm")),
            device,
        )
        .unwrap_or_else(|error| panic!("step {}: {error}", index + 1));
        log.push(Step {
            learning_rate,
            loss: outcome.loss,
            grad_norm: outcome.grad_norm,
            trained_tokens: outcome.trained_tokens as u64,
        });
    }
    (model, log)
}

/// The number of steps a reference recorded.
pub fn recorded_steps(reference: &Value) -> usize {
    reference["steps"].as_array().expect("steps").len()
}

/// The tiny GPT-2, to be fully fine-tuned along `trajectory_full.json`.
pub fn full_model<B: AutodiffBackend>(device: &B::Device) -> CausalLm<B> {
    CausalLm::<B>::from_hf_dir(&model_fixture("gpt2"), device)
        .expect("the tiny GPT-2 fixture")
        .0
}

/// The LoRA configuration of `trajectory_lora.json`.
pub fn lora_config() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        target_modules: TargetModules::Names(
            ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
        ),
    }
}

/// The tiny Llama with LoRA factors as torch initialised them (its RNG cannot be replayed, so
/// they are loaded as an adapter) and the base frozen, as `trajectory_lora.json` starts.
pub fn lora_model<B: AutodiffBackend>(device: &B::Device) -> CausalLm<B> {
    let dir = scratch_dir("lora-init");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    std::fs::copy(
        fixtures().join("lora_init.safetensors"),
        dir.join(temper_lora::WEIGHTS_FILE),
    )
    .expect("lora_init.safetensors");
    std::fs::write(
        dir.join(temper_lora::CONFIG_FILE),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}"#,
    )
    .expect("adapter_config.json");
    let initial = Adapter::load_peft(&dir).expect("the initial adapter");
    let _ = std::fs::remove_dir_all(&dir);

    let (base, _) = CausalLm::<B>::from_hf_dir(&model_fixture("llama_gqa"), device)
        .expect("the tiny Llama fixture");
    let model = temper_train::attach_lora(base, &lora_config(), device).expect("LoRA slots");
    temper_lora::freeze_base(temper_lora::apply(model, &initial).expect("the initial factors"))
}

/// Every weight of a model by its Hugging Face name (LoRA factors under their PEFT names).
pub fn weights<B: AutodiffBackend>(model: &CausalLm<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut all: Vec<_> = {
        let weights = model.valid().to_weights();
        weights
            .keys()
            .map(|key| {
                let tensor = weights.get(key).expect("a listed key");
                (key.to_owned(), tensor.shape.clone(), tensor.data.clone())
            })
            .collect()
    };
    if temper_train::has_adapters(model) {
        let dir = scratch_dir("adapter");
        temper_lora::extract(model, &lora_config())
            .save_peft(&dir, "llama_gqa")
            .expect("the trained adapter");
        all.extend(tensors(&dir.join(temper_lora::WEIGHTS_FILE)));
        let _ = std::fs::remove_dir_all(&dir);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The f32 tensors of a safetensors file, sorted by name.
pub fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let file = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut tensors = file.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect()
}

fn scratch_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "temper-trajectory-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}
