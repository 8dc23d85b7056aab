//! The tiny recipe (`configs/tiny-smoke.toml`: random GPT-2-shaped model, LoRA, packing,
//! accumulation, checkpoints every 2 steps) end to end: train, resume from the state a kill
//! leaves, export, and reload the export.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::Int;
use serde_json::Value;
use temper_models::{CausalLm, ModelInput};
use temper_tests::{asset, copy_dir, metrics, root, scratch, shared_data, tiny};
use temper_train::{EvalPoint, RunConfig, Start, checkpoint};

type A = Autodiff<Flex>;

/// The backend's random generator is process-global and runs reseed it, so the tests of
/// this file (threads of one process) take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The error of a run that must fail.
fn run_error(config: &RunConfig, start: Start<'_>) -> String {
    temper_train::run::<A>(config, start, &Default::default(), &mut |_| {})
        .err()
        .map(|error| error.to_string())
        .expect("the run fails")
}

fn logits(model: &CausalLm<Flex>) -> Vec<f32> {
    let ids: Vec<i64> = (0..32).map(|i| (i * 977 + 13) % 50_000).collect();
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [2, 16]), &Default::default());
    model
        .forward(ModelInput::sequences(ids))
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn the_tiny_recipe_trains_resumes_bit_identically_and_exports() {
    let _serial = serial();
    let device = Default::default();
    let uninterrupted = scratch("uninterrupted");
    let summary = temper_train::run::<A>(
        &tiny(&uninterrupted, &[]),
        Start::Fresh,
        &device,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.steps, 8);
    let expected = metrics(&uninterrupted);
    assert_eq!(expected.iter().filter(|m| m["kind"] == "train").count(), 8);
    assert!(
        std::fs::read_to_string(&summary.loss_plot)
            .unwrap()
            .starts_with("<svg")
    );
    let saved: RunConfig =
        toml::from_str(&std::fs::read_to_string(uninterrupted.join("config.toml")).unwrap())
            .unwrap();
    assert_eq!(
        saved.train.max_steps, 8,
        "the resolved config is saved with the run"
    );
    // GPT-2 stores its projections as Conv1D, and every adapter file says so, as PEFT's do.
    let checkpoint = checkpoint::checkpoint_name(8);
    for adapter in [format!("{checkpoint}/adapter"), "adapter".to_owned()] {
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(uninterrupted.join(adapter).join(temper_lora::CONFIG_FILE))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(config["fan_in_fan_out"], true);
    }

    // What a kill during the checkpoint after step 6 leaves behind: the config, metrics up
    // to step 6, checkpoints 2 and 4, and a half-written temporary checkpoint directory.
    let killed = scratch("killed");
    std::fs::create_dir_all(&killed).unwrap();
    for file in ["config.toml", "metrics.jsonl"] {
        std::fs::copy(uninterrupted.join(file), killed.join(file)).unwrap();
    }
    for step in [2, 4] {
        let name = checkpoint::checkpoint_name(step);
        copy_dir(&uninterrupted.join(&name), &killed.join(&name));
    }
    let partial = temper_store::partial_path(&killed.join(checkpoint::checkpoint_name(6)));
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join(checkpoint::OPTIMIZER_FILE), b"half").unwrap();
    let latest = checkpoint::list_checkpoints(&killed).pop().unwrap().1;
    assert!(latest.ends_with(checkpoint::checkpoint_name(4)));

    temper_train::run::<A>(
        &tiny(&killed, &[]),
        Start::Resume(&latest),
        &device,
        &mut |_| {},
    )
    .unwrap();
    // Every line after the resumed step is recomputed, bit for bit.
    assert_eq!(metrics(&killed).len(), expected.len());
    for (ours, theirs) in metrics(&killed).iter().zip(&expected) {
        for key in [
            "step",
            "loss",
            "grad_norm",
            "learning_rate",
            "trained_tokens",
            "perplexity",
            "token_accuracy",
        ] {
            assert_eq!(ours.get(key), theirs.get(key), "{key} of {ours}");
        }
    }
    for file in [temper_lora::WEIGHTS_FILE, temper_lora::CONFIG_FILE] {
        assert_eq!(
            std::fs::read(killed.join("adapter").join(file)).unwrap(),
            std::fs::read(uninterrupted.join("adapter").join(file)).unwrap(),
            "{file}"
        );
    }

    // `temper export`: the adapter and the merged model; the merged directory reloads with
    // the logits of base + adapter.
    let (adapter_out, merged_out) = (killed.join("export-adapter"), killed.join("export-merged"));
    temper_train::export_checkpoint::<Flex>(
        &killed,
        None,
        Some(&adapter_out),
        Some(&merged_out),
        false,
        &device,
    )
    .unwrap();
    let config = tiny(&killed, &[]);
    let base =
        temper_train::load_for_run::<Flex>(&config.model, config.train.seed, &device).unwrap();
    let base_logits = logits(&base.model);
    let adapter = temper_lora::Adapter::load_peft(&adapter_out).unwrap();
    let lora = config.lora.as_ref().unwrap();
    let adapted = temper_lora::apply(
        temper_train::attach_lora(base.model, lora, &device).unwrap(),
        &adapter,
    )
    .unwrap();
    let (merged, _) = CausalLm::<Flex>::from_hf_dir(&merged_out, &device).unwrap();
    let (adapted_logits, merged_logits) = (logits(&adapted), logits(&merged));
    let difference = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    assert!(difference(&adapted_logits, &merged_logits) < 1e-4);
    assert!(
        difference(&adapted_logits, &base_logits) > 1e-3,
        "training changed the model"
    );
    assert!(merged_out.join("tokenizer.json").is_file());

    for dir in [uninterrupted, killed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn activation_checkpointing_and_neftune_are_options_of_the_same_step() {
    let _serial = serial();
    type Checkpointed =
        Autodiff<Flex, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>;
    let losses = |dir: &Path| -> Vec<f64> {
        metrics(dir)
            .iter()
            .filter(|m| m["kind"] == "train")
            .map(|m| m["loss"].as_f64().unwrap())
            .collect()
    };
    let short = [
        "train.max_steps=3".to_owned(),
        "train.save_steps=0".to_owned(),
    ];
    let (plain, checkpointed, noisy) = (
        scratch("plain"),
        scratch("checkpointed"),
        scratch("neftune"),
    );
    temper_train::run::<A>(
        &tiny(&plain, &short),
        Start::Fresh,
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    temper_train::run::<Checkpointed>(
        &tiny(&checkpointed, &short),
        Start::Fresh,
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    let mut with_noise = short.to_vec();
    with_noise.push("train.neftune_noise_alpha=5.0".into());
    temper_train::run::<A>(
        &tiny(&noisy, &with_noise),
        Start::Fresh,
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    // Recomputing activations changes memory, not results.
    for (a, b) in losses(&plain).iter().zip(losses(&checkpointed)) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "{a} vs {b}");
    }
    // NEFTune perturbs the embeddings, so the training losses move.
    assert_ne!(losses(&plain), losses(&noisy));
    for dir in [plain, checkpointed, noisy] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_diverging_run_stops_at_the_step_and_names_the_last_checkpoint() {
    let _serial = serial();
    let dir = scratch("diverging");
    let error = run_error(
        &tiny(
            &dir,
            &[
                "train.learning_rate=1e30".into(),
                "train.warmup_steps=0".into(),
            ],
        ),
        Start::Fresh,
    );
    assert!(error.starts_with("step "), "{error}");
    assert!(error.contains("the loss is"), "{error}");
    assert!(error.contains("last good checkpoint is"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The metrics of a run without the fields that measure time.
fn trajectory(dir: &Path) -> Vec<Value> {
    metrics(dir)
        .into_iter()
        .map(|mut line| {
            for timing in ["tokens_per_second", "elapsed_seconds"] {
                line.as_object_mut().unwrap().remove(timing);
            }
            line
        })
        .collect()
}

#[test]
fn two_identical_runs_write_identical_metrics() {
    let _serial = serial();
    let longer = [
        "train.max_steps=16".to_owned(),
        "train.save_steps=0".to_owned(),
    ];
    let (first, second) = (scratch("same-1"), scratch("same-2"));
    for dir in [&first, &second] {
        temper_train::run::<A>(
            &tiny(dir, &longer),
            Start::Fresh,
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
    }
    assert_eq!(trajectory(&first), trajectory(&second));
    for dir in [first, second] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn one_epoch_sees_every_row_once() {
    let _serial = serial();
    let dir = scratch("one-epoch");
    std::fs::create_dir_all(&dir).unwrap();
    // 10 one-row examples in steps of 2 x 2 rows: 4 + 4 + 2, the last step short.
    let train = dir.join("train.jsonl");
    let records: String = std::fs::read_to_string(root().join("datasets/tasks/train.alpaca.jsonl"))
        .unwrap()
        .lines()
        .take(10)
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&train, records).unwrap();
    let mut config = tiny(
        &dir.join("run"),
        &[
            "train.max_steps=0".into(),
            "train.num_train_epochs=1".into(),
            "data.packing=false".into(),
        ],
    );
    config.dataset.train = vec![temper_data::DatasetSpec::from(train.clone()).into()];
    config.dataset.eval = None;
    let summary =
        temper_train::run::<A>(&config, Start::Fresh, &Default::default(), &mut |_| {}).unwrap();
    assert_eq!(summary.steps, 3);
    let steps: Vec<Value> = metrics(&dir.join("run"))
        .into_iter()
        .filter(|m| m["kind"] == "train")
        .collect();
    assert!(steps.iter().all(|m| m["epoch"] == 0), "{steps:?}");
    let tokenizer =
        temper_data::Tokenizer::from_file(&asset("gpt2/tokenizer.json"), &Default::default())
            .unwrap();
    let prepared = temper_data::prepare(&train.clone().into(), &tokenizer, &config.data).unwrap();
    let trained: u64 = steps
        .iter()
        .map(|m| m["trained_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(trained as usize, prepared.trained_tokens());
    std::fs::remove_dir_all(dir).unwrap();
}

/// A Hugging Face directory of the tiny GPT-2 shape (random weights) with the GPT-2 tokenizer
/// and a ChatML chat template of its own.
fn model_dir_with_template(dir: &Path) {
    let config =
        temper_models::ModelConfig::from_file(&root().join("configs/models/gpt2-tiny/config.json"))
            .unwrap();
    CausalLm::<Flex>::init(&config, &Default::default())
        .save_hf_dir(dir)
        .unwrap();
    std::fs::copy(asset("gpt2/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let chatml =
        std::fs::read_to_string(root().join("crates/temper-chat/templates/chatml.jinja")).unwrap();
    let tokenizer_config =
        serde_json::json!({"eos_token": "<|endoftext|>", "chat_template": chatml});
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
}

#[test]
fn held_out_answers_during_training_are_written_per_step_with_samples() {
    let _serial = serial();
    let dir = scratch("answers");
    let config = tiny(
        &dir,
        &[
            "train.max_steps=4".into(),
            "train.eval_steps=2".into(),
            "eval.generate_examples=3".into(),
            "eval.max_new_tokens=3".into(),
            "eval.during_training=true".into(),
            "eval.samples=2".into(),
        ],
    );
    let mut evaluations = Vec::new();
    let mut sampled = 0;
    temper_train::run::<A>(
        &config,
        Start::Fresh,
        &Default::default(),
        &mut |event| match event {
            temper_train::Event::Evaluation { when, summary, .. } => {
                evaluations.push((when, summary.samples_per_example, summary.exact_share()))
            }
            temper_train::Event::Answer { sample, .. } => sampled += usize::from(sample.is_some()),
            _ => {}
        },
    )
    .unwrap();
    // At step 2 (the eval_steps), and after training: step 4 is the "after" evaluation.
    let points: Vec<_> = evaluations.iter().map(|(when, _, _)| *when).collect();
    assert_eq!(points, [EvalPoint::Step(2), EvalPoint::After]);
    assert!(evaluations.iter().all(|(_, k, _)| *k == 2));
    assert_eq!(
        sampled, 6,
        "the first three answers of each evaluation show a sample"
    );
    for name in ["step-2", "after"] {
        let results =
            std::fs::read_to_string(dir.join("eval").join(name).join("results.jsonl")).unwrap();
        assert_eq!(results.lines().count(), 3, "{name}");
        for line in results.lines() {
            let result: Value = serde_json::from_str(line).unwrap();
            assert_eq!(result["samples"].as_array().unwrap().len(), 2, "{name}");
        }
    }
    // The step's exact match goes with its held-out loss into metrics.jsonl.
    let at_step_2 = metrics(&dir)
        .into_iter()
        .find(|m| m["kind"] == "eval" && m["step"] == 2)
        .unwrap();
    assert_eq!(at_step_2["exact_match"].as_f64(), Some(evaluations[0].2));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn generation_prompts_with_the_template_the_data_was_rendered_with() {
    let _serial = serial();
    let dir = scratch("template");
    let model = dir.join("model");
    model_dir_with_template(&model);
    let mut config = tiny(
        &dir.join("run"),
        &[
            "train.max_steps=1".into(),
            "eval.generate_examples=2".into(),
            "eval.max_new_tokens=2".into(),
            "export.merged=true".into(),
        ],
    );
    config.model.path = model.clone();
    config.model.random_init = false;
    config.model.tokenizer = None;
    let mut prompts = Vec::new();
    temper_train::run::<A>(&config, Start::Fresh, &Default::default(), &mut |event| {
        if let temper_train::Event::Answer { prompt, .. } = event {
            prompts.push(prompt);
        }
    })
    .unwrap();
    // The records are alpaca records, so the data is rendered with the `alpaca` template,
    // not the model's ChatML; generation must ask the way training taught.
    assert_eq!(prompts.len(), 2);
    for prompt in &prompts {
        assert!(prompt.starts_with("### Instruction:\n"), "{prompt:?}");
        assert!(prompt.ends_with("### Response:\n"), "{prompt:?}");
    }
    let saved =
        std::fs::read_to_string(dir.join("run").join(temper_train::run::TEMPLATE_FILE)).unwrap();
    assert!(saved.contains("### Instruction"), "{saved}");
    // The export carries that template too.
    let exported: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run/merged/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(exported["chat_template"].as_str(), Some(saved.as_str()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_tokenizer_larger_than_the_model_is_refused_before_training() {
    let _serial = serial();
    let dir = scratch("vocab");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("configs/models/gpt2-tiny/config.json")).unwrap(),
    )
    .unwrap();
    config["vocab_size"] = 1000.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let mut run = tiny(&dir.join("run"), &[]);
    run.model.path = model;
    let error = run_error(&run, Start::Fresh);
    assert!(
        error.ends_with(
            "tokenizer.json: the tokenizer has 50257 token ids but the model's vocabulary has 1000; use the model's own tokenizer or one that fits it"
        ),
        "{error}"
    );
    assert!(!dir.join("run").exists(), "nothing was written");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn refused_starts_and_resumes_name_the_reason_and_change_nothing() {
    let _serial = serial();
    let dir = scratch("refused");
    let short = ["train.max_steps=4".to_owned()];
    temper_train::run::<A>(
        &tiny(&dir, &short),
        Start::Fresh,
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    let before = snapshot(&dir);
    let latest = checkpoint::list_checkpoints(&dir).pop().unwrap().1;
    let attempt = |extra: &[&str], start: Start<'_>| -> String {
        let mut overrides = short.to_vec();
        overrides.extend(extra.iter().map(|s| s.to_string()));
        let error = run_error(&tiny(&dir, &overrides), start);
        assert_eq!(
            snapshot(&dir),
            before,
            "a refused run changed files: {error}"
        );
        error
    };
    let error = attempt(&[], Start::Fresh);
    assert!(error.contains("already holds files"), "{error}");
    let error = attempt(&[], Start::Resume(&latest));
    assert!(
        error.contains("nothing is left to train; raise train.max_steps"),
        "{error}"
    );
    let error = attempt(
        &["train.max_steps=6", "lora.alpha=4.0", "data.max_length=96"],
        Start::Resume(&latest),
    );
    assert!(
        error.contains("data.max_length was 128, now 96")
            && error.contains("lora.alpha was 8.0, now 4.0"),
        "{error}"
    );
    // A run whose model fails to load changes nothing, even with --overwrite.
    let error = attempt(&["model.path=/nonexistent/model"], Start::Overwrite);
    assert!(error.contains("/nonexistent/model"), "{error}");

    // Hand-edited trainer states: step 0, a data position past the data, no optimizer state.
    let state_path = latest.join(checkpoint::STATE_FILE);
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    for (edit, expected) in [
        ("step", "at step 0"),
        ("position", "is past the"),
        ("param_steps", "the optimizer state is empty"),
    ] {
        let mut state = original.clone();
        match edit {
            "step" => state["step"] = 0.into(),
            "position" => state["sampler"]["position"] = 1_000_000.into(),
            _ => state["param_steps"] = serde_json::json!({}),
        }
        std::fs::write(&state_path, state.to_string()).unwrap();
        let error = run_error(
            &tiny(&dir, &["train.max_steps=6".to_owned()]),
            Start::Resume(&latest),
        );
        assert!(error.contains(expected), "{edit}: {error}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rows_longer_than_the_model_reads_are_refused_before_training() {
    let _serial = serial();
    let dir = scratch("too-long");
    for (extra, expected) in [
        (
            "data.max_length=1000000000",
            "data.max_length is 1000000000, but the model reads at most",
        ),
        (
            "data.pad_to_multiple_of=100000",
            "data.max_length is 128 (100000 with data.pad_to_multiple_of), but the model reads at most",
        ),
    ] {
        let error = run_error(&tiny(&dir, &[extra.to_owned()]), Start::Fresh);
        assert!(error.contains(expected), "{error}");
        assert!(!dir.exists(), "nothing was written");
    }
}

#[test]
fn data_dropped_entirely_is_an_error_that_counts_why() {
    let _serial = serial();
    let dir = scratch("dropped");
    std::fs::create_dir_all(&dir).unwrap();
    let error = run_error(
        &tiny(
            &dir.join("run"),
            &[
                "data.truncation=\"drop\"".into(),
                "data.max_length=8".into(),
            ],
        ),
        Start::Fresh,
    );
    assert!(
        error.contains("train.alpaca.jsonl: no trainable examples (2000 record(s) read, 2000 dropped as too_long, e.g. "),
        "{error}"
    );
    // A held-out file whose every example is too long is named too, not skipped in silence.
    let eval = dir.join("long.jsonl");
    let long = "word ".repeat(400);
    std::fs::write(
        &eval,
        format!("{{\"instruction\": \"Repeat\", \"input\": \"\", \"output\": \"{long}\"}}\n"),
    )
    .unwrap();
    let mut config = tiny(&dir.join("run"), &["data.truncation=\"drop\"".into()]);
    config.dataset.eval = Some(eval.into());
    let error = run_error(&config, Start::Fresh);
    assert!(
        error.contains("long.jsonl: no held-out examples (1 record(s) read, 1 dropped as too_long"),
        "{error}"
    );
    assert!(!dir.join("run").exists(), "nothing was written");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_mixture_of_gsm8k_and_the_tasks_resumes_to_the_same_batches() {
    let _serial = serial();
    let device = Default::default();
    let mixture = |output_dir: &Path| {
        let mut config = tiny(output_dir, &["train.max_steps=4".into()]);
        let gsm8k = temper_data::DatasetSpec::new(shared_data("gsm8k"), Some("train".into()));
        let mut fields = temper_data::FieldNames::default();
        fields.set("instruction", "question").unwrap();
        fields.set("output", "answer").unwrap();
        config.dataset.train = vec![
            temper_data::mixture::Source {
                fields: Some(fields),
                examples: Some(24),
                ..gsm8k.into()
            },
            temper_data::mixture::Source {
                weight: Some(0.5),
                ..config.dataset.train[0].clone()
            },
        ];
        config
    };
    let uninterrupted = scratch("mixture");
    temper_train::run::<A>(&mixture(&uninterrupted), Start::Fresh, &device, &mut |_| {}).unwrap();
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(uninterrupted.join("data_report.json")).unwrap(),
    )
    .unwrap();
    let shares = report["mixture"].as_array().unwrap();
    // GSM8K's 7,473 records, less those whose answer max_length 128 cuts away entirely.
    assert_eq!(report["datasets"][0]["records_by_format"]["alpaca"], 7473);
    assert_eq!(shares[0]["available"], report["datasets"][0]["examples"]);
    assert_eq!(shares[0]["taken"], 24);
    let tasks = shares[1]["available"].as_u64().unwrap();
    assert_eq!(report["datasets"][1]["examples"], tasks);
    assert_eq!(shares[1]["taken"], (tasks as f64 * 0.5).round() as u64);

    // Killed after the checkpoint of step 2: resuming recomputes steps 3 and 4 exactly.
    let killed = scratch("mixture-killed");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::copy(
        uninterrupted.join("config.toml"),
        killed.join("config.toml"),
    )
    .unwrap();
    let name = checkpoint::checkpoint_name(2);
    copy_dir(&uninterrupted.join(&name), &killed.join(&name));
    // Resumed without the prepared-data cache (the first run may have read it): the same
    // examples, prepared again from the files, and a key a resume may change.
    let mut resumed = mixture(&killed);
    resumed.data.cache = false;
    temper_train::run::<A>(
        &resumed,
        Start::Resume(&killed.join(&name)),
        &device,
        &mut |_| {},
    )
    .unwrap();
    let steps = |dir: &Path| -> Vec<Value> {
        trajectory(dir)
            .into_iter()
            .filter(|m| m["kind"] == "train" && m["step"].as_u64() > Some(2))
            .collect()
    };
    assert_eq!(steps(&killed).len(), 2);
    assert_eq!(steps(&killed), steps(&uninterrupted));
    for dir in [uninterrupted, killed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
