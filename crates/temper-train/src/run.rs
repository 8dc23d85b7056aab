//! The training loop: data, model (full or LoRA), steps with accumulation, evaluation,
//! metrics, checkpoints, resume and export.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use temper_chat::{ChatTemplate, Conversation, RenderOptions, Role};
use temper_data::{Batch, Pack, Prepared, Sample, Sampler, collate};
use temper_lora::ParamCount;
use temper_models::{CausalLm, GenerationConfig, generate};
use temper_optim::{AdamW, AdamWConfig, LrSchedule, lr_at};

use crate::checkpoint::{self, TrainerState};
use crate::config::RunConfig;
use crate::error::{Error, Result, io};
use crate::load::{Loaded, load_for_run, stop_token_ids};
use crate::metrics::{Metric, MetricsLog, loss_plot_svg};
use crate::step::{evaluate, train_step};

/// What a run reports while it works (the CLI draws a progress bar from it).
#[derive(Debug, Clone)]
pub enum Event {
    /// Something worth a line: data loaded, a checkpoint written, ...
    Message(String),
    /// Training starts (or resumes) at `first_step` of `total_steps`.
    Started { first_step: u64, total_steps: u64 },
    /// A step finished.
    Step(Metric),
    /// An evaluation finished.
    Eval(Metric),
    /// A generated answer to a held-out example next to the expected one (the first few of
    /// each exact-match evaluation).
    Answer {
        when: &'static str,
        expected: String,
        answer: String,
    },
    /// Exact match over generated answers; `when` is `before` or `after`.
    ExactMatch {
        when: &'static str,
        correct: usize,
        total: usize,
    },
}

/// Paths and numbers of a finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub output_dir: PathBuf,
    pub steps: u64,
    pub final_loss: f64,
    pub eval: Option<Metric>,
    pub exact_match_before: Option<(usize, usize)>,
    pub exact_match_after: Option<(usize, usize)>,
    pub metrics: PathBuf,
    pub loss_plot: PathBuf,
    pub adapter: Option<PathBuf>,
    pub merged: Option<PathBuf>,
    pub parameters: ParamCount,
    pub trainable_parameters: usize,
    /// Mean over steps of all tokens per second.
    pub tokens_per_second: f64,
}

/// One prepared held-out chat example: the prompt's token ids and the expected answer.
struct GenerationCase {
    prompt: Vec<u32>,
    expected: String,
}

/// Runs (or, with `resume`, continues) the training job `config` on `device`.
pub fn run<B: AutodiffBackend>(
    config: &RunConfig,
    resume: Option<&Path>,
    device: &B::Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<RunSummary> {
    let mut config = config.clone();
    let output_dir = config.train.output_dir.clone();
    std::fs::create_dir_all(&output_dir).map_err(|e| io(&output_dir, e))?;
    B::seed(device, config.train.seed);

    let Loaded {
        model,
        tokenizer,
        template,
        template_source,
    } = load_for_run::<B>(&config.model, config.train.seed, device)?;
    // A GGUF's template lives in its metadata: save it beside the run so the data pipeline
    // (and whoever reads the saved config) can use it by path.
    if config.data.template.is_none()
        && let Some(source) = &template_source
    {
        let path = output_dir.join("chat_template.jinja");
        checkpoint::write_atomic(&path, source.as_bytes())?;
        config.data.template = Some(path.display().to_string());
    }
    checkpoint::write_atomic(&output_dir.join("config.toml"), config.to_toml().as_bytes())?;

    let train = temper_data::prepare(&config.dataset.train, &tokenizer, &config.data)?;
    if train.rows.is_empty() {
        return Err(Error::Other(format!(
            "{}: no trainable examples",
            config.dataset.train.display()
        )));
    }
    on_event(Event::Message(format!(
        "{}: {} examples in {} rows, {} tokens ({} trained)",
        config.dataset.train.display(),
        train.examples.len(),
        train.rows.len(),
        train.total_tokens(),
        train.trained_tokens()
    )));
    let eval = match &config.dataset.eval {
        Some(path) => Some(temper_data::prepare(path, &tokenizer, &config.data)?),
        None => None,
    };
    let pad_id = tokenizer.pad_id;
    let eval_batches = eval
        .as_ref()
        .map(|e| {
            batches_of(
                &e.rows,
                config.eval.max_rows,
                config.train.batch_size,
                pad_id,
                config.data.pad_to_multiple_of,
            )
        })
        .unwrap_or_default();
    let template = match &config.data.template {
        Some(spec) => Some(temper_data::load_template(spec, &tokenizer)?),
        None => template,
    };
    let cases = match (&eval, &template) {
        (Some(eval), Some(template)) if config.eval.generate_examples > 0 => {
            generation_cases(eval, template, &tokenizer, config.eval.generate_examples)?
        }
        _ => Vec::new(),
    };
    let generation = GenerationConfig {
        max_new_tokens: config.eval.max_new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: config.train.seed,
        stop_token_ids: stop_token_ids(&tokenizer),
    };

    // The model: full fine-tuning, or frozen base weights with LoRA slots.
    let model = match &config.lora {
        Some(lora) => {
            let model = crate::attach_lora(model, lora, device)?;
            temper_lora::freeze_base(temper_lora::init_peft(model))
        }
        None => model,
    };
    let mut model = model.with_embedding_noise(config.train.neftune_noise_alpha);

    let t = &config.train;
    let rows_per_step = t.batch_size * t.gradient_accumulation_steps;
    let steps_per_epoch = train.rows.len().div_ceil(rows_per_step) as u64;
    let total_steps = if t.max_steps > 0 {
        t.max_steps
    } else {
        steps_per_epoch * t.num_train_epochs
    };
    let warmup_steps = if t.warmup_steps > 0 {
        t.warmup_steps
    } else {
        (t.warmup_ratio * total_steps as f64).ceil() as u64
    };
    let schedule = LrSchedule {
        kind: t.lr_scheduler,
        learning_rate: t.learning_rate,
        warmup_steps,
        total_steps,
        min_lr_ratio: t.min_lr_ratio,
    };
    let mut optimizer = AdamW::<B>::new(AdamWConfig {
        adam_beta1: t.adam_beta1,
        adam_beta2: t.adam_beta2,
        adam_epsilon: t.adam_epsilon,
        weight_decay: t.weight_decay,
        ..AdamWConfig::default()
    });
    let mut sampler = Sampler::new(train.rows.len(), t.seed);
    let mut first_step = 1;
    let mut last_checkpoint = "none (no checkpoint was written yet)".to_owned();

    let mut exact_match_before = None;
    let mut before_eval = None;
    if let Some(dir) = resume {
        let (state, optimizer_state) = checkpoint::read_state(dir)?;
        model = match &config.lora {
            Some(_) => {
                let adapter = temper_lora::Adapter::load_peft(&dir.join(checkpoint::ADAPTER_DIR))?;
                temper_lora::freeze_base(temper_lora::apply(model, &adapter)?)
            }
            None => CausalLm::from_hf_dir(&dir.join(checkpoint::MODEL_DIR), device)?.0,
        };
        optimizer.import_state(&model, &optimizer_state, device)?;
        sampler = Sampler::from_state(train.rows.len(), state.sampler);
        first_step = state.step + 1;
        last_checkpoint = dir.display().to_string();
        on_event(Event::Message(format!(
            "resuming from {} at step {}",
            dir.display(),
            state.step
        )));
    } else if config.eval.before_training && !eval_batches.is_empty() {
        let metric = eval_metric(0, evaluate(&model.valid(), &eval_batches, device)?);
        before_eval = Some(metric.clone());
        on_event(Event::Eval(metric));
    }
    if resume.is_none() && config.eval.before_training && !cases.is_empty() {
        let correct = exact_matches(
            &model.valid(),
            &cases,
            &tokenizer,
            &generation,
            device,
            "before",
            on_event,
        )?;
        exact_match_before = Some((correct, cases.len()));
    }

    let parameters = temper_lora::count_parameters(&model);
    let trainable_parameters = if config.lora.is_some() {
        parameters.adapter
    } else {
        parameters.total
    };
    on_event(Event::Message(format!(
        "trainable params: {trainable_parameters} || all params: {} || trainable%: {:.4}",
        parameters.total,
        100.0 * trainable_parameters as f64 / parameters.total.max(1) as f64
    )));
    let metrics_path = output_dir.join("metrics.jsonl");
    let mut metrics = MetricsLog::open(&metrics_path, first_step - 1)?;
    if let Some(metric) = before_eval {
        metrics.push(metric)?;
    }
    on_event(Event::Started {
        first_step,
        total_steps,
    });

    let started = Instant::now();
    let mut final_loss = f64::NAN;
    let mut tokens_seen = 0usize;
    let mut last_eval = None;
    let max_grad_norm = (t.max_grad_norm > 0.0).then_some(t.max_grad_norm);
    for step in first_step..=total_steps {
        // Dropout's randomness depends only on (seed, step), so a resumed run draws the same.
        B::seed(device, t.seed.wrapping_mul(1_000_003).wrapping_add(step));
        let micro_batches: Vec<Batch> = (0..t.gradient_accumulation_steps)
            .map(|_| sampler.next_batch(t.batch_size))
            .filter(|indices| !indices.is_empty())
            .map(|indices| {
                let rows: Vec<&Pack> = indices.iter().map(|&i| &train.rows[i]).collect();
                collate(&rows, pad_id, config.data.pad_to_multiple_of)
            })
            .collect();
        let lr = lr_at(&schedule, step - 1);
        let step_started = Instant::now();
        let outcome;
        (model, outcome) = train_step(
            model,
            &mut optimizer,
            &micro_batches,
            lr,
            max_grad_norm,
            device,
        )?;
        if !outcome.loss.is_finite() || !outcome.grad_norm.is_finite() {
            return Err(Error::NonFinite {
                step,
                loss: outcome.loss,
                grad_norm: outcome.grad_norm,
                last_checkpoint,
            });
        }
        final_loss = outcome.loss;
        tokens_seen += outcome.tokens;
        let metric = Metric::Train {
            step,
            epoch: sampler.state().epoch,
            loss: outcome.loss,
            learning_rate: lr,
            grad_norm: outcome.grad_norm,
            trained_tokens: outcome.trained_tokens,
            tokens: outcome.tokens,
            tokens_per_second: outcome.tokens as f64
                / step_started.elapsed().as_secs_f64().max(1e-9),
            elapsed_seconds: started.elapsed().as_secs_f64(),
        };
        if step % t.logging_steps.max(1) == 0 || step == total_steps {
            metrics.push(metric.clone())?;
        }
        on_event(Event::Step(metric));

        let last = step == total_steps;
        if !eval_batches.is_empty() && (last || (t.eval_steps > 0 && step % t.eval_steps == 0)) {
            let metric = eval_metric(step, evaluate(&model.valid(), &eval_batches, device)?);
            metrics.push(metric.clone())?;
            on_event(Event::Eval(metric.clone()));
            last_eval = Some(metric);
        }
        if last || (t.save_steps > 0 && step % t.save_steps == 0) {
            let state = TrainerState {
                step,
                total_steps,
                sampler: sampler.state(),
                param_steps: Default::default(),
                loss: outcome.loss,
            };
            let path = save_checkpoint(&config, &output_dir, &model, &optimizer, &state)?;
            last_checkpoint = path.display().to_string();
            on_event(Event::Message(format!("saved {}", path.display())));
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    let mut exact_match_after = None;
    if !cases.is_empty() {
        let correct = exact_matches(
            &model.valid(),
            &cases,
            &tokenizer,
            &generation,
            device,
            "after",
            on_event,
        )?;
        exact_match_after = Some((correct, cases.len()));
        if let Some(Metric::Eval { exact_match, .. }) = &mut last_eval {
            *exact_match = Some(correct as f64 / cases.len() as f64);
        }
    }

    let loss_plot = output_dir.join("loss.svg");
    let title = format!(
        "{} on {}",
        config.model.path.display(),
        config.dataset.train.display()
    );
    checkpoint::write_atomic(
        &loss_plot,
        loss_plot_svg(metrics.lines(), &title).as_bytes(),
    )?;

    let (adapter, merged) = export(&config, &model, &output_dir, &tokenizer)?;
    Ok(RunSummary {
        output_dir,
        steps: total_steps,
        final_loss,
        eval: last_eval,
        exact_match_before,
        exact_match_after,
        metrics: metrics_path,
        loss_plot,
        adapter,
        merged,
        parameters,
        trainable_parameters,
        tokens_per_second: tokens_seen as f64 / seconds.max(1e-9),
    })
}

/// The metrics line of an evaluation after `step`.
fn eval_metric(step: u64, sums: crate::loss::LossSums) -> Metric {
    Metric::Eval {
        step,
        loss: sums.mean(),
        perplexity: sums.mean().exp(),
        token_accuracy: sums.correct as f64 / sums.tokens.max(1) as f64,
        exact_match: None,
    }
}

/// Writes a checkpoint of `model` and `optimizer` after `state.step`.
fn save_checkpoint<B: AutodiffBackend>(
    config: &RunConfig,
    output_dir: &Path,
    model: &CausalLm<B>,
    optimizer: &AdamW<B>,
    state: &TrainerState,
) -> Result<PathBuf> {
    let temporary = output_dir.join(format!(".{}.tmp", checkpoint::checkpoint_name(state.step)));
    if temporary.exists() {
        std::fs::remove_dir_all(&temporary).map_err(|e| io(&temporary, e))?;
    }
    std::fs::create_dir_all(&temporary).map_err(|e| io(&temporary, e))?;
    match &config.lora {
        Some(lora) => temper_lora::extract(model, lora).save_peft(
            &temporary.join(checkpoint::ADAPTER_DIR),
            &config.model.path.display().to_string(),
        )?,
        None => model
            .valid()
            .save_hf_dir(&temporary.join(checkpoint::MODEL_DIR))?,
    }
    checkpoint::write_state(&temporary, state, &optimizer.export_state(model))?;
    checkpoint::commit(
        &temporary,
        output_dir,
        state.step,
        config.train.save_total_limit,
    )
}

/// Writes the adapter (PEFT) and/or the merged model (HF directory with the tokenizer).
fn export<B: AutodiffBackend>(
    config: &RunConfig,
    model: &CausalLm<B>,
    output_dir: &Path,
    tokenizer: &temper_data::Tokenizer,
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    let mut adapter = None;
    if let (Some(lora), true) = (&config.lora, config.export.adapter) {
        let dir = output_dir.join("adapter");
        let mut extracted = temper_lora::extract(model, lora);
        extracted.fan_in_fan_out = matches!(model, CausalLm::Gpt2(_));
        extracted.save_peft(&dir, &config.model.path.display().to_string())?;
        adapter = Some(dir);
    }
    let mut merged = None;
    if config.export.merged {
        let dir = output_dir.join("merged");
        let plain = model.valid();
        let plain = match &config.lora {
            Some(lora) => temper_lora::merge(plain, lora),
            None => plain,
        };
        plain.save_hf_dir(&dir)?;
        write_tokenizer_files(&dir, tokenizer, config)?;
        merged = Some(dir);
    }
    Ok((adapter, merged))
}

/// Padded micro-batches of (at most `max_rows` of) `rows`, in order.
fn batches_of(
    rows: &[Pack],
    max_rows: usize,
    batch_size: usize,
    pad_id: u32,
    pad_to_multiple_of: Option<usize>,
) -> Vec<Batch> {
    let take = if max_rows == 0 {
        rows.len()
    } else {
        max_rows.min(rows.len())
    };
    rows[..take]
        .chunks(batch_size)
        .map(|chunk| {
            collate(
                &chunk.iter().collect::<Vec<_>>(),
                pad_id,
                pad_to_multiple_of,
            )
        })
        .collect()
}

/// The first `count` chat examples of `eval` whose last message is the assistant's: their
/// prompt (everything before it, with the generation prompt) and the expected answer.
fn generation_cases(
    eval: &Prepared,
    template: &ChatTemplate,
    tokenizer: &temper_data::Tokenizer,
    count: usize,
) -> Result<Vec<GenerationCase>> {
    let options = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    let mut cases = Vec::new();
    for record in &eval.records {
        if cases.len() == count {
            break;
        }
        let Sample::Chat(conversation) = &record.sample else {
            continue;
        };
        let Some((last, before)) = conversation.messages.split_last() else {
            continue;
        };
        if last.role != Some(Role::Assistant) {
            continue;
        }
        let prompt = Conversation {
            messages: before.to_vec(),
            ..conversation.clone()
        };
        let text = template.render_text(&prompt, &options)?;
        let encoded = tokenizer.encode(&text)?;
        cases.push(GenerationCase {
            prompt: encoded.0,
            expected: last.content.clone().unwrap_or_default(),
        });
    }
    Ok(cases)
}

/// How many greedy answers equal the expected answer (both trimmed); reports the first
/// few answers and the count as events labelled `when`.
fn exact_matches<B: Backend>(
    model: &CausalLm<B>,
    cases: &[GenerationCase],
    tokenizer: &temper_data::Tokenizer,
    config: &GenerationConfig,
    device: &B::Device,
    when: &'static str,
    on_event: &mut dyn FnMut(Event),
) -> Result<usize> {
    const SHOWN: usize = 3;
    let mut correct = 0;
    for (index, case) in cases.iter().enumerate() {
        let generation = generate(model, &case.prompt, config, device, |_| {
            ControlFlow::Continue(())
        })?;
        let answer: Vec<u32> = generation
            .tokens
            .iter()
            .copied()
            .filter(|id| !config.stop_token_ids.contains(id))
            .collect();
        let answer = tokenizer.decode(&answer);
        if answer.trim() == case.expected.trim() {
            correct += 1;
        }
        if index < SHOWN {
            on_event(Event::Answer {
                when,
                expected: case.expected.clone(),
                answer,
            });
        }
    }
    on_event(Event::ExactMatch {
        when,
        correct,
        total: cases.len(),
    });
    Ok(correct)
}

/// What [`export_checkpoint`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub checkpoint: PathBuf,
    pub adapter: Option<PathBuf>,
    pub merged: Option<PathBuf>,
}

/// Exports a checkpoint of the run in `run_dir` (the newest one when `checkpoint` is
/// `None`): the adapter in PEFT's format to `adapter_out` (LoRA runs) and/or the model,
/// merged with its adapter, as a Hugging Face directory with its tokenizer to `merged_out`.
pub fn export_checkpoint<B: Backend>(
    run_dir: &Path,
    checkpoint: Option<&Path>,
    adapter_out: Option<&Path>,
    merged_out: Option<&Path>,
    device: &B::Device,
) -> Result<Exported> {
    let config_path = run_dir.join("config.toml");
    let config = RunConfig::load(&config_path, &[])?;
    let checkpoint = match checkpoint {
        Some(dir) => dir.to_owned(),
        None => checkpoint::list_checkpoints(run_dir)
            .pop()
            .map(|(_, dir)| dir)
            .ok_or_else(|| {
                Error::Other(format!("{}: the run has no checkpoint", run_dir.display()))
            })?,
    };
    let Loaded {
        model, tokenizer, ..
    } = load_for_run::<B>(&config.model, config.train.seed, device)?;
    let (model, adapter) = match &config.lora {
        Some(lora) => {
            let adapter =
                temper_lora::Adapter::load_peft(&checkpoint.join(checkpoint::ADAPTER_DIR))?;
            let model = temper_lora::apply(crate::attach_lora(model, lora, device)?, &adapter)?;
            (model, Some(adapter))
        }
        None => (
            CausalLm::from_hf_dir(&checkpoint.join(checkpoint::MODEL_DIR), device)?.0,
            None,
        ),
    };
    let mut exported = Exported {
        checkpoint: checkpoint.clone(),
        adapter: None,
        merged: None,
    };
    if let (Some(out), Some(adapter)) = (adapter_out, &adapter) {
        let mut adapter = adapter.clone();
        adapter.fan_in_fan_out = matches!(model, CausalLm::Gpt2(_));
        adapter.save_peft(out, &config.model.path.display().to_string())?;
        exported.adapter = Some(out.to_owned());
    } else if adapter_out.is_some() {
        return Err(Error::Other(format!(
            "{}: a full fine-tuning run has no adapter; export --merged instead",
            run_dir.display()
        )));
    }
    if let Some(out) = merged_out {
        let model = match &config.lora {
            Some(lora) => temper_lora::merge(model, lora),
            None => model,
        };
        model.save_hf_dir(out)?;
        write_tokenizer_files(out, &tokenizer, &config)?;
        exported.merged = Some(out.to_owned());
    }
    Ok(exported)
}

/// `tokenizer.json`, and a `tokenizer_config.json` carrying the chat template the run
/// trained with, so the exported directory is a complete chat model.
fn write_tokenizer_files(
    dir: &Path,
    tokenizer: &temper_data::Tokenizer,
    config: &RunConfig,
) -> Result<()> {
    let json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| Error::Other(e.to_string()))?;
    checkpoint::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
    let source_config = config.model.path.join("tokenizer_config.json");
    let template_file = config
        .data
        .template
        .as_ref()
        .map(PathBuf::from)
        .filter(|p| p.extension().is_some_and(|ext| ext == "jinja") && p.is_file());
    if source_config.is_file() {
        let bytes = std::fs::read(&source_config).map_err(|e| io(&source_config, e))?;
        checkpoint::write_atomic(&dir.join("tokenizer_config.json"), &bytes)?;
    } else if let Some(template) = template_file {
        let source = std::fs::read_to_string(&template).map_err(|e| io(&template, e))?;
        let tokenizer_config = serde_json::json!({
            "bos_token": tokenizer.bos.as_ref().map(|t| t.text.clone()),
            "eos_token": tokenizer.eos.text,
            "chat_template": source,
        });
        let text = serde_json::to_string_pretty(&tokenizer_config).expect("JSON serialises");
        checkpoint::write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    }
    Ok(())
}
