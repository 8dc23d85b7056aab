//! A training run, as a recipe that reads top to bottom: [`run`] calls [`setup`] (model,
//! tokenizer, chat template, data, optimizer, resume state), [`train`] (the step loop with
//! evaluation and checkpoints), exact match on held-out chats (`evaluate.rs`) and the
//! export (`export.rs`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use temper_chat::ChatTemplate;
use temper_data::{
    Batch, Mixture, Pack, PrepareOptions, Prepared, Progress, Sampler, Tokenizer, collate,
    padded_length,
};
use temper_lora::ParamCount;
use temper_models::CausalLm;
use temper_optim::{AdamW, AdamWState, LrSchedule, lr_at};

use crate::checkpoint::{self, Fingerprint, Saved, TrainerState};
use crate::config::RunConfig;
use crate::distributed::{Rank, trainable_hash};
use crate::error::{Error, Result, io};
use crate::evaluate::{HeldOut, answer_held_out, eval_loss, held_out};
use crate::evaluator::{EvalSummary, compare, read_results};
use crate::export::{Export, export};
use crate::load::{RunModel, load_for_run};
use crate::memory::{self, MicroBatch, StepMemory};
use crate::metrics::{Metric, MetricsLog, loss_plot_svg};
use crate::output::{Start, check_output_dir, clear_earlier_run};
use crate::step::{StepOutcome, train_step_on};

/// The run's chat template, saved beside its checkpoints so that an export writes the template
/// the model was trained with.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
/// The training datasets' quality reports and shares of the mixture.
pub const DATA_REPORT_FILE: &str = "data_report.json";

/// The directory of a run's answer evaluations (`before/`, `step-N/`, `after/`), in its output
/// directory.
pub const EVAL_DIR: &str = "eval";

/// When in a run the held-out examples were answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalPoint {
    Before,
    /// After this step, with `eval.during_training`.
    Step(u64),
    After,
}

impl EvalPoint {
    /// The evaluation's directory under [`EVAL_DIR`].
    pub fn dir_name(self) -> String {
        match self {
            EvalPoint::Before => "before".into(),
            EvalPoint::Step(step) => format!("step-{step}"),
            EvalPoint::After => "after".into(),
        }
    }
}

impl std::fmt::Display for EvalPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalPoint::Before => f.write_str("before training"),
            EvalPoint::Step(step) => write!(f, "at step {step}"),
            EvalPoint::After => f.write_str("after training"),
        }
    }
}

/// What a run reports while it works (the CLI draws a progress bar from it).
#[derive(Debug, Clone)]
pub enum Event {
    /// Something worth a line: data loaded, a checkpoint written, ...
    Message(String),
    /// A dataset is being prepared (after each chunk of records).
    Preparing(Progress),
    /// Training starts (or resumes) at `first_step` of `total_steps`.
    Started { first_step: u64, total_steps: u64 },
    /// A step finished.
    Step(Metric),
    /// An evaluation finished.
    Eval(Metric),
    /// A generated answer to a held-out example next to the expected one (the first few of
    /// each evaluation), with the prompt as the chat template rendered it, and the first
    /// answer sampled with `eval.temperature` when `eval.samples` asks for samples.
    Answer {
        when: EvalPoint,
        prompt: String,
        expected: String,
        answer: String,
        sample: Option<String>,
    },
    /// The evaluation of the held-out answers, written to `dir` (`results.jsonl`,
    /// `summary.md`).
    Evaluation {
        when: EvalPoint,
        summary: Box<EvalSummary>,
        dir: PathBuf,
        seconds: f64,
    },
    /// Examples whose answer went from wrong to right (`fixed`) or back (`broken`) in training.
    Changed { fixed: usize, broken: usize },
}

/// Paths and numbers of a finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub output_dir: PathBuf,
    pub steps: u64,
    pub final_loss: f64,
    pub eval: Option<Metric>,
    /// The evaluations of the held-out answers before and after training.
    pub evaluation_before: Option<EvalSummary>,
    pub evaluation_after: Option<EvalSummary>,
    pub metrics: PathBuf,
    pub loss_plot: PathBuf,
    pub adapter: Option<PathBuf>,
    pub merged: Option<PathBuf>,
    pub parameters: ParamCount,
    pub trainable_parameters: usize,
    /// Mean over steps of all tokens per second (of every rank).
    pub tokens_per_second: f64,
    /// Whether this process wrote the run's files: node 0 of a multi-node run does, the other
    /// nodes only train (their summary has no evaluations or exports).
    pub writes: bool,
}

/// Runs the training job `config` on `device`: a new run, one that replaces an earlier run's
/// files, or one that continues from a checkpoint (see [`Start`]). A run that fails before
/// its first step leaves the output directory as it was.
pub fn run<B: AutodiffBackend>(
    config: &RunConfig,
    start: Start<'_>,
    device: &B::Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<RunSummary> {
    run_on::<B>(config, start, std::slice::from_ref(device), on_event)
}

/// [`run`] with this node's ranks (`config.distributed`) on `devices`, one per rank or one
/// for all. With several ranks, each is a thread holding a copy of the model that trains on
/// its share of every step (docs/distributed.md); this thread is the node's first rank, and
/// on node 0 it is rank 0, which evaluates and writes everything.
pub fn run_on<B: AutodiffBackend>(
    config: &RunConfig,
    start: Start<'_>,
    devices: &[B::Device],
    on_event: &mut dyn FnMut(Event),
) -> Result<RunSummary> {
    let distributed = &config.distributed;
    let writes = distributed.node_rank == 0;
    let local_ranks = distributed.topology().local_ranks();
    if devices.is_empty() || (devices.len() > 1 && devices.len() != local_ranks) {
        return Err(Error::Collective(format!(
            "{} devices for {local_ranks} ranks on this node: give one device for all of them, or one per rank",
            devices.len()
        )));
    }
    let device = &devices[0];
    if writes {
        check_output_dir(config, start)?;
    }
    let resume = match start {
        Start::Resume(checkpoint) => Some(checkpoint),
        Start::Fresh | Start::Overwrite => None,
    };
    let Setup {
        model,
        tokenizer,
        template,
        train: train_data,
        eval,
        optimizer_state,
        schedule,
        sampler,
        resumed,
        fingerprint,
        parameters,
        data_report,
    } = setup::<B>(config, resume, device, on_event)?;
    // Every rank of this node: a copy of the model on its device (parameter ids shared)
    // and an optimizer, made before joining so that joining is the last thing that can fail
    // before training.
    let mut replicas = Vec::new();
    for local in 0..local_ranks {
        let device = devices.get(local).unwrap_or(device).clone();
        let model = if local == 0 {
            model.clone()
        } else {
            model.clone().fork(&device)
        };
        let optimizer = optimizer_for(config, &model, optimizer_state.as_ref(), &device)?;
        replicas.push((model, optimizer, device));
    }
    drop(optimizer_state);
    let ranks: Vec<Option<Rank<B::InnerBackend>>> = if distributed.world_size > 1 {
        on_event(Event::Message(format!(
            "joining {} ranks: {local_ranks} here (node {} of {})",
            distributed.world_size, distributed.node_rank, distributed.nodes
        )));
        let inner: Vec<_> = devices.iter().map(inner_device::<B>).collect();
        let ranks = distributed.topology().join::<B::InnerBackend>(&inner)?;
        ranks.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let output_dir = &config.train.output_dir;
    let first_step = resumed.as_ref().map_or(0, |(_, step)| *step) + 1;
    let metrics_path = output_dir.join("metrics.jsonl");
    let mut metrics = None;
    if writes {
        if start == Start::Overwrite {
            clear_earlier_run(output_dir)?;
        }
        write_run_files(output_dir, config, template.as_ref(), &data_report)?;
        metrics = Some(MetricsLog::open(&metrics_path, first_step - 1)?);
    }
    let mut evaluation_before = None;
    if let Some(metrics) = metrics
        .as_mut()
        .filter(|_| resumed.is_none() && config.eval.before_training)
    {
        let inference = model.valid();
        if let Some(metric) = eval_loss(&inference, &eval, 0, device)? {
            metrics.push(metric.clone())?;
            on_event(Event::Eval(metric));
        }
        evaluation_before = answer_held_out(
            &inference,
            &eval,
            &tokenizer,
            device,
            output_dir,
            EvalPoint::Before,
            on_event,
        )?;
    }
    let training = |optimizer, metrics, rank| Training {
        config,
        data: &train_data,
        tokenizer: &tokenizer,
        eval: &eval,
        optimizer,
        schedule,
        sampler: sampler.clone(),
        metrics,
        last_checkpoint: resumed.as_ref().map(|(dir, _)| dir.clone()),
        fingerprint: fingerprint.clone(),
        rank,
    };
    let mut replicas = replicas.into_iter().zip(ranks);
    let ((model, optimizer, _), own_rank) = replicas
        .next()
        .ok_or_else(|| Error::Collective("a node without ranks".into()))?;
    let (model, trained) = std::thread::scope(|scope| {
        let others: Vec<_> = replicas
            .map(|((model, optimizer, device), rank)| {
                let training = &training;
                scope.spawn(move || {
                    let mut run = training(optimizer, None, rank);
                    train_rank(&mut run, model, first_step, &device, &mut |_| {})?;
                    run.leave()
                })
            })
            .collect();
        let mut run = training(optimizer, metrics.as_mut(), own_rank);
        // Leaving waits for every rank of the run, the others of this node included.
        let own = train_rank(&mut run, model, first_step, device, on_event)
            .and_then(|own| run.leave().map(|()| own));
        let mut failed = None;
        for other in others {
            let outcome = other
                .join()
                .unwrap_or_else(|_| Err(Error::Collective("a rank panicked".into())));
            failed = failed.or(outcome.err());
        }
        let own = own?;
        match failed {
            Some(error) => Err(error),
            None => Ok(own),
        }
    })?;
    let Some(metrics) = metrics.as_mut() else {
        return Ok(RunSummary {
            output_dir: output_dir.clone(),
            steps: trained.total_steps,
            final_loss: trained.final_loss,
            eval: None,
            evaluation_before,
            evaluation_after: None,
            metrics: metrics_path,
            loss_plot: output_dir.join("loss.svg"),
            adapter: None,
            merged: None,
            trainable_parameters: parameters.trained,
            parameters: parameters.count,
            tokens_per_second: trained.tokens_per_second,
            writes: false,
        });
    };
    let mut last_eval = trained.last_eval;

    let trained_model = model.valid();
    let evaluation_after = answer_held_out(
        &trained_model,
        &eval,
        &tokenizer,
        device,
        output_dir,
        EvalPoint::After,
        on_event,
    )?;
    if let (Some(summary), Some(Metric::Eval { exact_match, .. })) =
        (&evaluation_after, &mut last_eval)
    {
        *exact_match = Some(summary.exact_share());
    }
    if evaluation_before.is_some() && evaluation_after.is_some() {
        let eval_dir = output_dir.join(EVAL_DIR);
        let changed = compare(
            &read_results(&eval_dir.join(EvalPoint::Before.dir_name()))?,
            &read_results(&eval_dir.join(EvalPoint::After.dir_name()))?,
        );
        let fixed = changed.iter().filter(|c| c.fixed).count();
        on_event(Event::Changed {
            fixed,
            broken: changed.len() - fixed,
        });
    }

    let loss_plot = output_dir.join("loss.svg");
    let title = format!(
        "{} on {}",
        config.model.path.display(),
        temper_data::mixture::sources_name(&config.dataset.train)
    );
    let svg = loss_plot_svg(metrics.lines(), &title);
    temper_store::write_atomic(&loss_plot, svg.as_bytes())?;

    let (adapter, merged) = export(
        &trained_model,
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
        evaluation_before,
        evaluation_after,
        metrics: metrics_path,
        loss_plot,
        adapter,
        merged,
        trainable_parameters: parameters.trained,
        parameters: parameters.count,
        tokens_per_second: trained.tokens_per_second,
        writes: true,
    })
}

/// [`train`] as one rank: when it fails (or panics) the rank is marked stopped, so that the
/// other ranks of this process stop waiting for it.
fn train_rank<B: AutodiffBackend>(
    run: &mut Training<'_, B>,
    model: CausalLm<B>,
    first_step: u64,
    device: &B::Device,
    on_event: &mut dyn FnMut(Event),
) -> Result<(CausalLm<B>, Trained)> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(run, model, first_step, device, on_event)
    }))
    .unwrap_or_else(|_| Err(Error::Collective("a rank panicked".into())));
    if let (Err(error), Some(rank)) = (&outcome, &run.rank) {
        rank.stop(&error.to_string());
    }
    outcome
}

/// The device of the inner backend that `device` wraps.
fn inner_device<B: AutodiffBackend>(device: &B::Device) -> burn::tensor::Device<B::InnerBackend> {
    Tensor::<B, 1>::zeros([1], device).inner().device()
}

/// AdamW for `model` on `device`, with a resumed run's moments.
fn optimizer_for<B: AutodiffBackend>(
    config: &RunConfig,
    model: &CausalLm<B>,
    state: Option<&AdamWState>,
    device: &B::Device,
) -> Result<AdamW<B>> {
    let mut optimizer = AdamW::<B>::new(config.optimizer.clone());
    if let Some(state) = state {
        optimizer.import_state(model, state, device)?;
    }
    Ok(optimizer)
}

/// The model's parameters and how many of them are trained.
struct Parameters {
    count: ParamCount,
    trained: usize,
}

/// Counts the model's parameters and reports them as PEFT does.
fn count_parameters<B: AutodiffBackend>(
    model: &CausalLm<B>,
    config: &RunConfig,
    on_event: &mut dyn FnMut(Event),
) -> Parameters {
    let count = temper_lora::count_parameters(model);
    let trained = match config.lora {
        Some(_) => count.adapter,
        None => count.total,
    };
    on_event(Event::Message(format!(
        "trainable params: {trained} || all params: {} || trainable%: {:.4}",
        count.total,
        100.0 * trained as f64 / count.total.max(1) as f64
    )));
    Parameters { count, trained }
}

/// Estimates what a step holds in memory (the largest micro-batch: `batch_size` of the
/// longest rows) and refuses a run that cannot fit in what this machine has left.
fn check_memory<B: Backend>(
    config: &RunConfig,
    model: &CausalLm<B>,
    parameters: &Parameters,
    train: &Prepared,
    on_event: &mut dyn FnMut(Event),
) -> Result<StepMemory> {
    let longest = (0..train.rows.len())
        .map(|row| train.row_len(row))
        .max()
        .unwrap_or(0);
    let batch = MicroBatch {
        rows: config.train.batch_size.min(train.rows.len()),
        length: padded_length(longest, config.data.pad_to_multiple_of),
    };
    let needed = StepMemory::estimate(
        &model.config().dimensions(),
        parameters.count.total,
        parameters.trained,
        batch,
        config.train.gradient_checkpointing,
    );
    on_event(Event::Message(format!(
        "a step of {} x {} tokens needs about {needed}",
        batch.rows, batch.length
    )));
    match memory::available() {
        Some(available) if needed.total() > available => Err(Error::Memory {
            needed: needed.to_string(),
            available: memory::gigabytes(available),
        }),
        _ => Ok(needed),
    }
}

/// Everything the step loop needs, set up once.
struct Setup<B: AutodiffBackend> {
    model: CausalLm<B>,
    tokenizer: Tokenizer,
    /// The template the data was rendered with; generation prompts with it too.
    template: Option<ChatTemplate>,
    train: Prepared,
    eval: HeldOut,
    /// A resumed run's AdamW moments.
    optimizer_state: Option<AdamWState>,
    schedule: LrSchedule,
    sampler: Sampler,
    /// The checkpoint a resumed run continues from, and its step.
    resumed: Option<(PathBuf, u64)>,
    fingerprint: Fingerprint,
    parameters: Parameters,
    /// Each training dataset's quality report and share of the mixture.
    data_report: serde_json::Value,
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
    check_length(config, &base)?;

    let mut train_files = Vec::new();
    for source in &config.dataset.train {
        train_files.extend(source.dataset().files()?);
    }
    let fingerprint = checkpoint::fingerprint(
        config,
        &base,
        &temper_data::dataset::content_identity(&train_files)?,
    );
    let cache = temper_data::cache_dir();
    let Mixture {
        prepared: train,
        template,
        reports,
        shares,
    } = temper_data::prepare_mixture(
        &config.dataset.train,
        &config.data,
        &tokenizer,
        own_template,
        config.train.seed,
        PrepareOptions {
            cache: cache.as_deref(),
            progress: Some(&mut |progress: &Progress| on_event(Event::Preparing(progress.clone()))),
            ..PrepareOptions::default()
        },
    )?;
    require_examples(&train, "trainable", train.read)?;
    if shares.len() > 1 {
        for share in &shares {
            on_event(Event::Message(format!(
                "{}: {} of {} examples taken, {:.1}% of the trained tokens",
                share.dataset,
                share.taken,
                share.available,
                100.0 * share.trained_token_share
            )));
        }
    }
    on_event(Event::Message(format!(
        "{}: {} examples in {} rows, {} tokens ({} trained)",
        train.name,
        train.examples.len(),
        train.rows.len(),
        train.total_tokens(),
        train.trained_tokens()
    )));
    let data_report = serde_json::json!({ "datasets": reports, "mixture": shares });
    let mut eval = held_out(config, &tokenizer, template.as_ref())?;

    let lora = config.lora.as_ref();
    let mut sampler = Sampler::new(train.rows.len(), config.train.seed);
    let schedule = schedule(config, train.rows.len());
    let (model, resumed, optimizer_state) = match resume {
        Some(dir) => {
            let (state, optimizer_state) = checkpoint::read_state(dir)?;
            let problem = checkpoint::resume_problem(
                &state,
                &fingerprint,
                train.rows.len(),
                schedule.total_steps,
            );
            if let Some(reason) = problem {
                return Err(Error::Resume {
                    checkpoint: dir.to_owned(),
                    reason,
                });
            }
            if state.total_steps != schedule.total_steps {
                on_event(Event::Message(format!(
                    "the run was planned for {} steps and now runs to {}: the learning-rate schedule after step {} follows the new length",
                    state.total_steps, schedule.total_steps, state.step
                )));
            }
            let model = checkpoint::load_model(dir, base, lora, device)?;
            sampler = Sampler::from_state(train.rows.len(), state.sampler);
            on_event(Event::Message(format!(
                "resuming from {} at step {}",
                dir.display(),
                state.step
            )));
            (
                model,
                Some((dir.to_owned(), state.step)),
                Some(optimizer_state),
            )
        }
        None => match lora {
            Some(lora) => (
                temper_lora::init_peft(crate::attach_lora(base, lora, device)?),
                None,
                None,
            ),
            None => (base, None, None),
        },
    };
    let model = match lora {
        Some(_) => temper_lora::freeze_base(model),
        None => model,
    };
    let model = model.with_embedding_noise(config.train.neftune_noise_alpha);
    let parameters = count_parameters(&model, config, on_event);
    let needed = check_memory(config, &model, &parameters, &train, on_event)?;
    // Answers come faster from the model with its adapter folded in (no idle low-rank
    // products), which costs a copy of the weights: made when that copy fits in what a
    // step's activations take, which are free while evaluating.
    let merge = lora.filter(|_| needed.weights <= needed.activations + needed.logits);
    eval.merge = merge.cloned();
    Ok(Setup {
        model,
        tokenizer,
        template,
        train,
        eval,
        optimizer_state,
        schedule,
        sampler,
        resumed,
        fingerprint,
        parameters,
        data_report,
    })
}

/// Refuses rows longer than the model reads: `data.max_length`, rounded up to
/// `data.pad_to_multiple_of`, must fit the model's positions.
fn check_length<B: Backend>(config: &RunConfig, model: &CausalLm<B>) -> Result<()> {
    let data = &config.data;
    let longest = padded_length(data.max_length, data.pad_to_multiple_of);
    let context = model.max_positions();
    if longest > context {
        return Err(Error::TooLong {
            max_length: data.max_length,
            padded: longest,
            context,
        });
    }
    Ok(())
}

/// Refuses a prepared file without rows, saying how many of its `records` were dropped and
/// why (by reason, with the first example of each).
pub(crate) fn require_examples(
    prepared: &Prepared,
    which: &'static str,
    records: usize,
) -> Result<()> {
    if !prepared.rows.is_empty() {
        return Ok(());
    }
    let skipped = if prepared.skipped.is_empty() {
        "none of them holds a trained token".to_owned()
    } else {
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
    };
    Err(Error::NoExamples {
        which,
        dataset: prepared.name.clone(),
        records,
        skipped,
    })
}

/// Rows of one optimizer step, over every rank.
fn rows_per_step(config: &RunConfig) -> usize {
    let t = &config.train;
    t.batch_size
        .saturating_mul(t.gradient_accumulation_steps)
        .saturating_mul(config.distributed.world_size)
}

/// The learning-rate schedule over the run's steps: `max_steps`, or whole epochs of
/// `rows` (an epoch's last step takes the rows that are left).
fn schedule(config: &RunConfig, rows: usize) -> LrSchedule {
    let t = &config.train;
    let steps_per_epoch = rows.div_ceil(rows_per_step(config).max(1)) as u64;
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

/// `config.toml` (the resolved configuration), the chat template and the training data's
/// report, written before step 1.
fn write_run_files(
    output_dir: &Path,
    config: &RunConfig,
    template: Option<&ChatTemplate>,
    data_report: &serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(output_dir).map_err(|e| io(output_dir, e))?;
    temper_store::write_atomic(&output_dir.join("config.toml"), config.to_toml().as_bytes())?;
    let report = serde_json::to_string_pretty(data_report).unwrap_or_default();
    temper_store::write_atomic(&output_dir.join(DATA_REPORT_FILE), report.as_bytes())?;
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
    tokenizer: &'a Tokenizer,
    eval: &'a HeldOut,
    optimizer: AdamW<B>,
    schedule: LrSchedule,
    sampler: Sampler,
    /// The writer's log (the only rank of a single-process run, or rank 0).
    metrics: Option<&'a mut MetricsLog>,
    last_checkpoint: Option<PathBuf>,
    fingerprint: Fingerprint,
    /// This thread's rank in a data-parallel run.
    rank: Option<Rank<B::InnerBackend>>,
}

impl<B: AutodiffBackend> Training<'_, B> {
    /// Leaves the collective of a data-parallel run.
    fn leave(&mut self) -> Result<()> {
        self.rank.take().map_or(Ok(()), Rank::leave)
    }
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
    let writes = run.metrics.is_some();
    for step in first_step..=total_steps {
        // Dropout's randomness depends only on (seed, step, rank), so a resumed run draws the
        // same.
        let rank_seed = run.rank.as_ref().map_or(0, |rank| {
            (rank.rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        B::seed(
            device,
            t.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(step)
                .wrapping_add(rank_seed),
        );
        // Every rank draws the whole step's rows from the same sampler, and takes its share.
        let rows = run.sampler.next_batch_in_epoch(rows_per_step(run.config));
        let rows = match &run.rank {
            Some(rank) => share(&rows, rank.rank, rank.world_size),
            None => &rows,
        };
        let micro_batches: Vec<Batch> = rows
            .chunks(t.batch_size)
            .map(|indices| {
                let rows: Vec<Pack> = indices.iter().map(|&i| run.data.row(i)).collect();
                collate(
                    &rows.iter().collect::<Vec<_>>(),
                    run.tokenizer.pad_id,
                    run.config.data.pad_to_multiple_of,
                )
            })
            .collect();
        let lr = lr_at(&run.schedule, step - 1);
        let step_started = Instant::now();
        let outcome: StepOutcome;
        (model, outcome) = train_step_on(
            model,
            &mut run.optimizer,
            &micro_batches,
            lr,
            max_grad_norm,
            device,
            run.rank.as_ref(),
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
            all_reduce_seconds: run.rank.as_ref().map(|_| outcome.all_reduce.as_secs_f64()),
        };
        let last = step == total_steps;
        if step % t.logging_steps.max(1) == 0 || last {
            if let Some(metrics) = run.metrics.as_mut() {
                metrics.push(metric.clone())?;
            }
            if let Some(rank) = &run.rank
                && !rank.agree(trainable_hash(&model))?
            {
                return Err(Error::Collective(format!(
                    "the ranks' trainable weights differ after step {step}: the replicas diverged"
                )));
            }
        }
        on_event(Event::Step(metric));

        let evaluate_now = last || (t.eval_steps > 0 && step % t.eval_steps == 0);
        if writes && evaluate_now {
            let inference = model.valid();
            let loss = eval_loss(&inference, run.eval, step, device)?;
            // The last step's answers are the run's "after" evaluation.
            let answers = if run.config.eval.during_training && !last {
                answer_held_out(
                    &inference,
                    run.eval,
                    run.tokenizer,
                    device,
                    &t.output_dir,
                    EvalPoint::Step(step),
                    on_event,
                )?
            } else {
                None
            };
            if let Some(mut metric) = loss {
                if let (Some(summary), Metric::Eval { exact_match, .. }) = (&answers, &mut metric) {
                    *exact_match = Some(summary.exact_share());
                }
                if let Some(metrics) = run.metrics.as_mut() {
                    metrics.push(metric.clone())?;
                }
                on_event(Event::Eval(metric.clone()));
                trained.last_eval = Some(metric);
            }
        }
        if writes && (last || (t.save_steps > 0 && step % t.save_steps == 0)) {
            let state = TrainerState {
                format: checkpoint::FORMAT_VERSION,
                step,
                total_steps,
                sampler: run.sampler.state(),
                param_steps: Default::default(),
                loss: outcome.loss,
                fingerprint: run.fingerprint.clone(),
            };
            let saved = Saved {
                model: &model,
                lora: run.config.lora.as_ref(),
                base_model: &run.config.model.path.display().to_string(),
                optimizer: &run.optimizer,
            };
            let path = checkpoint::save(&t.output_dir, &saved, &state, t.save_total_limit)?;
            on_event(Event::Message(format!("saved {}", path.display())));
            run.last_checkpoint = Some(path);
        }
    }
    trained.tokens_per_second = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok((model, trained))
}

/// Rank `rank`'s share of a step's `rows`: consecutive, the same size on every rank but the
/// last ones of an epoch's short last step.
fn share(rows: &[usize], rank: usize, world_size: usize) -> &[usize] {
    rows.chunks(rows.len().div_ceil(world_size).max(1))
        .nth(rank)
        .unwrap_or(&[])
}
