//! A training run, as a recipe that reads top to bottom: [`setup`] (model, tokenizer, chat
//! template, data, optimizer, resume state), [`train`] (the step loop with evaluation and
//! checkpoints), [`exact_matches`] on held-out chats, and [`export`].

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use temper_chat::{ChatTemplate, Conversation, RenderOptions, Role};
use temper_data::{Batch, Pack, Prepared, Sample, Sampler, Tokenizer, collate};
use temper_lora::{LoraConfig, ParamCount};
use temper_models::{CausalLm, GenerationConfig, generate};
use temper_optim::{AdamW, LrSchedule, lr_at};

use crate::checkpoint::{self, Saved, TrainerState};
use crate::config::RunConfig;
use crate::error::{Error, Result, io};
use crate::load::{RunModel, load_for_run, stop_token_ids};
use crate::metrics::{Metric, MetricsLog, loss_plot_svg};
use crate::step::{evaluate, train_step};

/// The run's chat template, saved beside its checkpoints so that an export writes the template
/// the model was trained with.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";

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
    /// each exact-match evaluation), with the prompt as the chat template rendered it.
    Answer {
        when: &'static str,
        prompt: String,
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

/// Runs (or, with `resume`, continues from that checkpoint) the training job `config` on
/// `device`.
pub fn run<B: AutodiffBackend>(
    config: &RunConfig,
    resume: Option<&Path>,
    device: &B::Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<RunSummary> {
    let Setup {
        model,
        tokenizer,
        template,
        train: train_data,
        eval,
        mut optimizer,
        schedule,
        sampler,
        resumed,
    } = setup::<B>(config, resume, device, on_event)?;
    let output_dir = &config.train.output_dir;
    write_run_files(output_dir, config, template.as_ref())?;

    let first_step = resumed.as_ref().map_or(0, |(_, step)| *step) + 1;
    let metrics_path = output_dir.join("metrics.jsonl");
    let mut metrics = MetricsLog::open(&metrics_path, first_step - 1)?;
    let mut exact_match_before = None;
    if resumed.is_none() && config.eval.before_training {
        if let Some(metric) = eval_loss(&model.valid(), &eval, 0, device)? {
            metrics.push(metric.clone())?;
            on_event(Event::Eval(metric));
        }
        exact_match_before = exact_matches(
            &model.valid(),
            &eval,
            &tokenizer,
            device,
            "before",
            on_event,
        )?;
    }
    let parameters = temper_lora::count_parameters(&model);
    let trainable_parameters = match config.lora {
        Some(_) => parameters.adapter,
        None => parameters.total,
    };
    on_event(Event::Message(format!(
        "trainable params: {trainable_parameters} || all params: {} || trainable%: {:.4}",
        parameters.total,
        100.0 * trainable_parameters as f64 / parameters.total.max(1) as f64
    )));

    let mut run = Training {
        config,
        data: &train_data,
        pad_id: tokenizer.pad_id,
        eval: &eval,
        optimizer: &mut optimizer,
        schedule,
        sampler,
        metrics: &mut metrics,
        last_checkpoint: resumed.map(|(dir, _)| dir),
    };
    let (model, trained) = train(&mut run, model, first_step, device, on_event)?;
    let mut last_eval = trained.last_eval;

    let exact_match_after =
        exact_matches(&model.valid(), &eval, &tokenizer, device, "after", on_event)?;
    if let (Some((correct, total)), Some(Metric::Eval { exact_match, .. })) =
        (exact_match_after, &mut last_eval)
    {
        *exact_match = Some(correct as f64 / total as f64);
    }

    let loss_plot = output_dir.join("loss.svg");
    let title = format!(
        "{} on {}",
        config.model.path.display(),
        config.dataset.train.display()
    );
    let svg = loss_plot_svg(metrics.lines(), &title);
    temper_store::write_atomic(&loss_plot, svg.as_bytes())?;

    let exported = export(
        &model.valid(),
        &Export {
            lora: config.lora.as_ref(),
            base_model: &config.model.path,
            tokenizer: &tokenizer,
            template: template.as_ref(),
        },
        config
            .export
            .adapter
            .then(|| output_dir.join("adapter"))
            .filter(|_| config.lora.is_some())
            .as_deref(),
        config
            .export
            .merged
            .then(|| output_dir.join("merged"))
            .as_deref(),
    )?;
    Ok(RunSummary {
        output_dir: output_dir.clone(),
        steps: trained.total_steps,
        final_loss: trained.final_loss,
        eval: last_eval,
        exact_match_before,
        exact_match_after,
        metrics: metrics_path,
        loss_plot,
        adapter: exported.0,
        merged: exported.1,
        parameters,
        trainable_parameters,
        tokens_per_second: trained.tokens_per_second,
    })
}

/// Everything the step loop needs, set up once.
struct Setup<B: AutodiffBackend> {
    model: CausalLm<B>,
    tokenizer: Tokenizer,
    /// The template the data was rendered with; generation prompts with it too.
    template: Option<ChatTemplate>,
    train: Prepared,
    eval: HeldOut,
    optimizer: AdamW<B>,
    schedule: LrSchedule,
    sampler: Sampler,
    /// The checkpoint a resumed run continues from, and its step.
    resumed: Option<(PathBuf, u64)>,
}

/// The held-out data, prepared once: batches for the loss, chats for exact match.
struct HeldOut {
    batches: Vec<Batch>,
    cases: Vec<GenerationCase>,
    generation: GenerationConfig,
}

/// One held-out chat: the prompt as rendered, its token ids, and the expected answer.
struct GenerationCase {
    text: String,
    prompt: Vec<u32>,
    expected: String,
}

/// Loads the model and tokenizer, resolves the chat template once, prepares the data with
/// it, attaches LoRA, and restores a checkpoint's model, optimizer and data position when
/// resuming.
fn setup<B: AutodiffBackend>(
    config: &RunConfig,
    resume: Option<&Path>,
    device: &B::Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<Setup<B>> {
    B::seed(device, config.train.seed);
    let RunModel {
        model: base,
        tokenizer,
        template: own_template,
    } = load_for_run::<B>(&config.model, config.train.seed, device)?;

    let read = temper_data::pipeline::read_dataset(&config.dataset.train, &config.data)?;
    let template = temper_data::pipeline::resolve_template(
        &config.data,
        &tokenizer,
        &read.records,
        own_template,
    )?;
    let records = read.records.len();
    let train = temper_data::pipeline::prepare_records(
        &config.dataset.train,
        read,
        template.as_ref(),
        &tokenizer,
        &config.data,
    )?;
    if train.rows.is_empty() {
        return Err(Error::NoTrainableExamples {
            path: config.dataset.train.clone(),
            records,
            skipped: describe_skips(&train),
        });
    }
    on_event(Event::Message(format!(
        "{}: {} examples in {} rows, {} tokens ({} trained)",
        config.dataset.train.display(),
        train.examples.len(),
        train.rows.len(),
        train.total_tokens(),
        train.trained_tokens()
    )));
    let eval = held_out(config, &tokenizer, template.as_ref())?;

    let lora = config.lora.as_ref();
    let mut optimizer = AdamW::<B>::new(config.optimizer.clone());
    let mut sampler = Sampler::new(train.rows.len(), config.train.seed);
    let (model, resumed) = match resume {
        Some(dir) => {
            let (state, optimizer_state) = checkpoint::read_state(dir)?;
            let model = checkpoint::load_model(dir, base, lora, device)?;
            optimizer.import_state(&model, &optimizer_state, device)?;
            sampler = Sampler::from_state(train.rows.len(), state.sampler);
            on_event(Event::Message(format!(
                "resuming from {} at step {}",
                dir.display(),
                state.step
            )));
            (model, Some((dir.to_owned(), state.step)))
        }
        None => match lora {
            Some(lora) => (
                temper_lora::init_peft(crate::attach_lora(base, lora, device)?),
                None,
            ),
            None => (base, None),
        },
    };
    let model = match lora {
        Some(_) => temper_lora::freeze_base(model),
        None => model,
    };
    let model = model.with_embedding_noise(config.train.neftune_noise_alpha);
    let schedule = schedule(config, train.rows.len());
    Ok(Setup {
        model,
        tokenizer,
        template,
        train,
        eval,
        optimizer,
        schedule,
        sampler,
        resumed,
    })
}

/// Why every example of a file was dropped, as counts by reason.
fn describe_skips(prepared: &Prepared) -> String {
    if prepared.skipped.is_empty() {
        return "none of them holds a trained token".to_owned();
    }
    let reasons: Vec<String> = prepared
        .skipped
        .iter()
        .map(|(problem, count)| {
            let example = prepared
                .first_skips
                .get(problem)
                .map(|first| format!(", e.g. {first}"))
                .unwrap_or_default();
            format!("{count} dropped as {}{example}", problem.as_str())
        })
        .collect();
    reasons.join("; ")
}

/// The held-out file's batches and generation cases, rendered with the training template.
fn held_out(
    config: &RunConfig,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<HeldOut> {
    let generation = GenerationConfig {
        max_new_tokens: config.eval.max_new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: config.train.seed,
        stop_token_ids: stop_token_ids(tokenizer),
    };
    let Some(path) = &config.dataset.eval else {
        return Ok(HeldOut {
            batches: Vec::new(),
            cases: Vec::new(),
            generation,
        });
    };
    let read = temper_data::pipeline::read_dataset(path, &config.data)?;
    let eval =
        temper_data::pipeline::prepare_records(path, read, template, tokenizer, &config.data)?;
    let batches = batches_of(
        &eval.rows,
        config.eval.max_rows,
        config.train.batch_size,
        tokenizer.pad_id,
        config.data.pad_to_multiple_of,
    );
    let cases = match template {
        Some(template) if config.eval.generate_examples > 0 => {
            generation_cases(&eval, template, tokenizer, config.eval.generate_examples)?
        }
        _ => Vec::new(),
    };
    Ok(HeldOut {
        batches,
        cases,
        generation,
    })
}

/// The learning-rate schedule over the run's steps: `max_steps`, or whole epochs of
/// `rows` (an epoch's last step takes the rows that are left).
fn schedule(config: &RunConfig, rows: usize) -> LrSchedule {
    let t = &config.train;
    let rows_per_step = t.batch_size.saturating_mul(t.gradient_accumulation_steps);
    let steps_per_epoch = rows.div_ceil(rows_per_step.max(1)) as u64;
    let total_steps = if t.max_steps > 0 {
        t.max_steps
    } else {
        steps_per_epoch.saturating_mul(t.num_train_epochs)
    };
    let warmup_steps = if t.warmup_steps > 0 {
        t.warmup_steps
    } else {
        (t.warmup_ratio * total_steps as f64).ceil() as u64
    };
    LrSchedule {
        kind: t.lr_scheduler,
        learning_rate: t.learning_rate,
        warmup_steps,
        total_steps,
        min_lr_ratio: t.min_lr_ratio,
    }
}

/// `config.toml` (the resolved configuration) and the chat template, written before step 1.
fn write_run_files(
    output_dir: &Path,
    config: &RunConfig,
    template: Option<&ChatTemplate>,
) -> Result<()> {
    std::fs::create_dir_all(output_dir).map_err(|e| io(output_dir, e))?;
    temper_store::write_atomic(&output_dir.join("config.toml"), config.to_toml().as_bytes())?;
    if let Some(template) = template {
        temper_store::write_atomic(
            &output_dir.join(TEMPLATE_FILE),
            template.source().as_bytes(),
        )?;
    }
    Ok(())
}

/// The step loop's state.
struct Training<'a, B: AutodiffBackend> {
    config: &'a RunConfig,
    data: &'a Prepared,
    pad_id: u32,
    eval: &'a HeldOut,
    optimizer: &'a mut AdamW<B>,
    schedule: LrSchedule,
    sampler: Sampler,
    metrics: &'a mut MetricsLog,
    last_checkpoint: Option<PathBuf>,
}

/// What the step loop measured.
struct Trained {
    total_steps: u64,
    final_loss: f64,
    last_eval: Option<Metric>,
    tokens_per_second: f64,
}

/// Steps `first_step..=total_steps`: each takes the next rows of the epoch, accumulates
/// over micro-batches, clips and updates; evaluates and checkpoints on schedule.
fn train<B: AutodiffBackend>(
    run: &mut Training<'_, B>,
    mut model: CausalLm<B>,
    first_step: u64,
    device: &B::Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<(CausalLm<B>, Trained)> {
    let t = &run.config.train;
    let total_steps = run.schedule.total_steps;
    on_event(Event::Started {
        first_step,
        total_steps,
    });
    let started = Instant::now();
    let mut trained = Trained {
        total_steps,
        final_loss: f64::NAN,
        last_eval: None,
        tokens_per_second: 0.0,
    };
    let mut tokens_seen = 0usize;
    let max_grad_norm = (t.max_grad_norm > 0.0).then_some(t.max_grad_norm);
    for step in first_step..=total_steps {
        // Dropout's randomness depends only on (seed, step), so a resumed run draws the same.
        B::seed(device, t.seed.wrapping_mul(1_000_003).wrapping_add(step));
        let rows = run
            .sampler
            .next_batch_in_epoch(t.batch_size.saturating_mul(t.gradient_accumulation_steps));
        let micro_batches: Vec<Batch> = rows
            .chunks(t.batch_size)
            .map(|indices| {
                let rows: Vec<&Pack> = indices.iter().map(|&i| &run.data.rows[i]).collect();
                collate(&rows, run.pad_id, run.config.data.pad_to_multiple_of)
            })
            .collect();
        let lr = lr_at(&run.schedule, step - 1);
        let step_started = Instant::now();
        let outcome;
        (model, outcome) = train_step(
            model,
            run.optimizer,
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
                last_checkpoint: run.last_checkpoint.clone(),
            });
        }
        trained.final_loss = outcome.loss;
        tokens_seen += outcome.tokens;
        let metric = Metric::Train {
            step,
            epoch: run.sampler.state().epoch,
            loss: outcome.loss,
            learning_rate: lr,
            grad_norm: outcome.grad_norm,
            trained_tokens: outcome.trained_tokens,
            tokens: outcome.tokens,
            tokens_per_second: outcome.tokens as f64
                / step_started.elapsed().as_secs_f64().max(1e-9),
            elapsed_seconds: started.elapsed().as_secs_f64(),
        };
        let last = step == total_steps;
        if step % t.logging_steps.max(1) == 0 || last {
            run.metrics.push(metric.clone())?;
        }
        on_event(Event::Step(metric));

        let evaluate_now = last || (t.eval_steps > 0 && step % t.eval_steps == 0);
        if evaluate_now && let Some(metric) = eval_loss(&model.valid(), run.eval, step, device)? {
            run.metrics.push(metric.clone())?;
            on_event(Event::Eval(metric.clone()));
            trained.last_eval = Some(metric);
        }
        if last || (t.save_steps > 0 && step % t.save_steps == 0) {
            let state = TrainerState {
                format: checkpoint::FORMAT_VERSION,
                step,
                total_steps,
                sampler: run.sampler.state(),
                param_steps: Default::default(),
                loss: outcome.loss,
            };
            let saved = Saved {
                model: &model,
                lora: run.config.lora.as_ref(),
                base_model: &run.config.model.path.display().to_string(),
                optimizer: run.optimizer,
            };
            let path = checkpoint::save(&t.output_dir, &saved, &state, t.save_total_limit)?;
            on_event(Event::Message(format!("saved {}", path.display())));
            run.last_checkpoint = Some(path);
        }
    }
    trained.tokens_per_second = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok((model, trained))
}

/// The held-out loss after `step`, when there is held-out data.
fn eval_loss<B: Backend>(
    model: &CausalLm<B>,
    eval: &HeldOut,
    step: u64,
    device: &B::Device,
) -> Result<Option<Metric>> {
    if eval.batches.is_empty() {
        return Ok(None);
    }
    let sums = evaluate(model, &eval.batches, device)?;
    Ok(Some(Metric::Eval {
        step,
        loss: sums.mean(),
        perplexity: sums.mean().exp(),
        token_accuracy: sums.correct as f64 / sums.tokens.max(1) as f64,
        exact_match: None,
    }))
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
    tokenizer: &Tokenizer,
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
        if last.role != Role::Assistant {
            continue;
        }
        let prompt = Conversation {
            messages: before.to_vec(),
            ..conversation.clone()
        };
        let text = template.render_text(&prompt, &options)?;
        let encoded = tokenizer.encode(&text)?;
        cases.push(GenerationCase {
            text,
            prompt: encoded.0,
            expected: last.content.clone().unwrap_or_default(),
        });
    }
    Ok(cases)
}

/// How many greedy answers to the held-out chats equal the expected answer (both trimmed),
/// out of how many; reports the first few answers and the count as events labelled `when`.
/// `None` when there are no held-out chats to answer.
fn exact_matches<B: Backend>(
    model: &CausalLm<B>,
    eval: &HeldOut,
    tokenizer: &Tokenizer,
    device: &B::Device,
    when: &'static str,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<(usize, usize)>> {
    const SHOWN: usize = 3;
    if eval.cases.is_empty() {
        return Ok(None);
    }
    let config = &eval.generation;
    let mut correct = 0;
    for (index, case) in eval.cases.iter().enumerate() {
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
                prompt: case.text.clone(),
                expected: case.expected.clone(),
                answer,
            });
        }
    }
    let total = eval.cases.len();
    on_event(Event::ExactMatch {
        when,
        correct,
        total,
    });
    Ok(Some((correct, total)))
}

/// What an export writes besides the model: how to name and complete it.
struct Export<'a> {
    /// The run's LoRA configuration; `None` for full fine-tuning.
    lora: Option<&'a LoraConfig>,
    /// The base model's path, recorded in the adapter's configuration and the source of its
    /// `tokenizer_config.json`.
    base_model: &'a Path,
    tokenizer: &'a Tokenizer,
    /// The template the run trained with.
    template: Option<&'a ChatTemplate>,
}

/// Writes the adapter in PEFT's format to `adapter_out` and/or the model, merged with its
/// adapter, as a Hugging Face directory with its tokenizer to `merged_out`. Used at the end
/// of a run and by [`export_checkpoint`].
fn export<B: Backend>(
    model: &CausalLm<B>,
    export: &Export<'_>,
    adapter_out: Option<&Path>,
    merged_out: Option<&Path>,
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    let base_model = export.base_model.display().to_string();
    if let (Some(out), Some(lora)) = (adapter_out, export.lora) {
        crate::adapters::extract_adapter(model, lora).save_peft(out, &base_model)?;
    }
    if let Some(out) = merged_out {
        let merged = match export.lora {
            Some(lora) => temper_lora::merge(model.clone(), lora),
            None => model.clone(),
        };
        merged.save_hf_dir(out)?;
        write_tokenizer_files(out, export)?;
    }
    Ok((
        adapter_out
            .filter(|_| export.lora.is_some())
            .map(Path::to_owned),
        merged_out.map(Path::to_owned),
    ))
}

/// `tokenizer.json`, and a `tokenizer_config.json` (the base model's, when it has one)
/// carrying the chat template the run trained with, so the exported directory is a complete
/// chat model.
fn write_tokenizer_files(dir: &Path, export: &Export<'_>) -> Result<()> {
    let tokenizer = export.tokenizer;
    let path = dir.join("tokenizer.json");
    let json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| Error::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    temper_store::write_atomic(&path, json.as_bytes())?;

    let source = export.base_model.join("tokenizer_config.json");
    let mut config = if source.is_file() {
        let text = std::fs::read_to_string(&source).map_err(|e| io(&source, e))?;
        serde_json::from_str(&text).map_err(|e| Error::File {
            path: source.clone(),
            reason: format!("invalid JSON: {e}"),
        })?
    } else {
        serde_json::json!({
            "bos_token": tokenizer.bos.as_ref().map(|t| t.text.clone()),
            "eos_token": tokenizer.eos.text,
        })
    };
    if let (Some(template), Some(object)) = (export.template, config.as_object_mut()) {
        object.insert("chat_template".into(), template.source().into());
    }
    let text = serde_json::to_string_pretty(&config).expect("JSON serialises");
    temper_store::write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    Ok(())
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
    let config = RunConfig::load(&run_dir.join("config.toml"), &[])?;
    if adapter_out.is_some() && config.lora.is_none() {
        return Err(Error::NoAdapter {
            run_dir: run_dir.to_owned(),
        });
    }
    let checkpoint = match checkpoint {
        Some(dir) => dir.to_owned(),
        None => checkpoint::list_checkpoints(run_dir)
            .pop()
            .map(|(_, dir)| dir)
            .ok_or_else(|| Error::NoCheckpoint {
                run_dir: run_dir.to_owned(),
            })?,
    };
    let RunModel {
        model, tokenizer, ..
    } = load_for_run::<B>(&config.model, config.train.seed, device)?;
    let model = checkpoint::load_model(&checkpoint, model, config.lora.as_ref(), device)?;
    let template_path = run_dir.join(TEMPLATE_FILE);
    let template = if template_path.is_file() {
        let source = std::fs::read_to_string(&template_path).map_err(|e| io(&template_path, e))?;
        Some(ChatTemplate::from_source(
            template_path.display().to_string(),
            source,
        )?)
    } else {
        None
    };
    let (adapter, merged) = export(
        &model,
        &Export {
            lora: config.lora.as_ref(),
            base_model: &config.model.path,
            tokenizer: &tokenizer,
            template: template.as_ref(),
        },
        adapter_out,
        merged_out,
    )?;
    Ok(Exported {
        checkpoint,
        adapter,
        merged,
    })
}
