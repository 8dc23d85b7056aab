//! `temper eval`: a model (with an optional adapter) on a held-out dataset: answer loss, exact
//! and normalised match, instruction-following metrics, format overfitting, pass@k; and
//! `--compare BEFORE AFTER` for two evaluations.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use temper_chat::TrainOn;
use temper_data::{DataConfig, Truncation};
use temper_train::evaluator::{
    EvalSettings, Replace, check_output, compare, eval_cases, evaluate_cases, read_results,
    summary_markdown, write_results,
};

use crate::backend::{DEVICE_HELP, Device, OnDevice, on_device};
use crate::data::RecordArgs;
use crate::model::{ModelArgs, WEIGHTS_HELP, Weights};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// As for `temper generate` (a model directory or `.gguf` file); not with `--compare`.
    #[arg(long, required_unless_present = "compare")]
    model: Option<PathBuf>,
    /// A PEFT adapter directory to apply to the model in memory.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP, value_parser = Device::parse)]
    device: Device,
    #[arg(long, value_enum, default_value_t = Weights::F32, help = WEIGHTS_HELP)]
    weights: Weights,
    /// The held-out dataset (a file of any format `temper data` reads, a glob or a dataset
    /// directory; `--split` picks a directory's split): the last assistant message of each
    /// chat (or the alpaca `output`, or the completion) is the reference answer.
    #[arg(long, required_unless_present = "compare")]
    dataset: Option<PathBuf>,
    /// A built-in template name, a `.jinja` file or a `tokenizer_config.json` (default: as
    /// `temper train` picks it).
    #[arg(long)]
    template: Option<String>,
    #[command(flatten)]
    records: RecordArgs,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Prompts generated at once (left-padded, one key/value cache).
    #[arg(long, default_value_t = temper_train::evaluator::GENERATION_BATCH)]
    batch_size: usize,
    /// Evaluate only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Sampled answers per example besides the greedy one (pass@k).
    #[arg(long, default_value_t = 0)]
    samples: usize,
    /// The temperature of the sampled answers.
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write `results.jsonl` (every example) and `summary.md` into this directory.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Compare two `--output` directories: which examples changed.
    #[arg(long, num_args = 2, value_names = ["BEFORE", "AFTER"], conflicts_with = "dataset")]
    compare: Option<Vec<PathBuf>>,
}

pub fn eval_command(args: &EvalArgs) -> Result<()> {
    if let Some(dirs) = &args.compare {
        return compare_command(&dirs[0], &dirs[1]);
    }
    let Some(model) = &args.model else {
        bail!("--model is required to evaluate");
    };
    let model = ModelArgs::new(
        model.clone(),
        args.adapter.clone(),
        args.device,
        args.weights,
    );
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.samples > 0 && !(args.temperature.is_finite() && args.temperature > 0.0) {
        bail!(
            "--temperature must be above 0 to sample (got {})",
            args.temperature
        );
    }
    on_device(args.device, Eval(args, &model))
}

struct Eval<'a>(&'a EvalArgs, &'a ModelArgs);

impl OnDevice for Eval<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: &B::Device, _: &str) -> Result<()> {
        eval_on::<B>(self.0, self.1, device)
    }
}

fn eval_on<B: Backend>(args: &EvalArgs, model: &ModelArgs, device: &B::Device) -> Result<()> {
    let Some(path) = &args.dataset else {
        bail!("--dataset is required");
    };
    // A refused --output fails before the model is loaded, not after the evaluation.
    if let Some(dir) = &args.output {
        check_output(dir)?;
    }
    let mut loaded = model.load::<B>(device)?;
    let own_template = loaded.template.take();
    let tokenizer = loaded.tokenizer()?;
    let mut config = DataConfig {
        template: args.template.clone(),
        // The loss is the answer's: the last assistant message, kept whole.
        train_on: TrainOn::LastAssistant,
        max_length: loaded.model.max_positions(),
        truncation: Truncation::KeepEnd,
        ..DataConfig::default()
    };
    args.records.apply(&mut config)?;
    let dataset = args.records.dataset(path);
    let template = temper_data::template_for(&dataset, &config, tokenizer, own_template)?;
    let prepared = temper_data::prepare_with(
        &dataset,
        template.as_ref(),
        tokenizer,
        &config,
        temper_data::PrepareOptions {
            keep_records: usize::MAX,
            ..Default::default()
        },
    )?;
    let cases = eval_cases(&prepared, template.as_ref(), tokenizer, args.limit)?;
    if cases.is_empty() {
        bail!("{dataset}: no example to evaluate (chats must end with an assistant message)");
    }
    let settings = EvalSettings {
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size,
        samples: args.samples,
        temperature: args.temperature,
        seed: args.seed,
        stop_token_ids: temper_train::stop_token_ids(tokenizer),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(cases.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} examples, {per_sec} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("a valid template"),
        );
        bar
    });
    let (results, summary) = evaluate_cases(
        &loaded.model,
        tokenizer,
        &cases,
        &settings,
        device,
        |done| {
            if let Some(bar) = &bar {
                bar.set_position(done as u64);
            }
        },
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(dir) = &args.output {
        write_results(dir, &results, &summary, Replace::No)?;
        eprintln!("wrote {}/results.jsonl and summary.md", dir.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary_markdown(&summary));
    }
    Ok(())
}

fn compare_command(before: &std::path::Path, after: &std::path::Path) -> Result<()> {
    let (old, new) = (read_results(before)?, read_results(after)?);
    let changed = compare(&old, &new);
    let fixed = changed.iter().filter(|c| c.fixed).count();
    println!(
        "{} example(s) changed: {fixed} now match, {} no longer match",
        changed.len(),
        changed.len() - fixed
    );
    for change in &changed {
        println!(
            "{} line {}: {:?}\n    before: {:?}\n    after:  {:?}",
            if change.fixed { "+" } else { "-" },
            change.line,
            change.instruction,
            change.before,
            change.after
        );
    }
    Ok(())
}
