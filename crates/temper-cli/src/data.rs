//! `temper data ...`

use std::io::IsTerminal;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use temper_chat::{ChatTemplate, TrainOn};
use temper_data::example::render_record;
use temper_data::{
    DataConfig, DatasetSpec, Filter, Format, OnError, PrepareOptions, Prepared, Progress,
    QualityReport, Tokenizer, Truncation, prepare_with,
};

use crate::progress::ProgressShown;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// The quality report, and the first examples with their trained tokens highlighted.
    Inspect {
        #[command(flatten)]
        input: InputArgs,
        /// How many examples to show.
        #[arg(long, default_value_t = 3)]
        examples: usize,
        /// Print the report and examples as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tokenize, mask, truncate and pack a file, and report throughput.
    Prepare {
        #[command(flatten)]
        input: InputArgs,
        /// Write the rows as JSON lines (`input_ids`, `loss_mask`, `position_ids`, `boundaries`,
        /// `examples`), through a temporary file. Never the input file or the tokenizer; an
        /// existing file only with `--overwrite`.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Replace an existing `--output` file.
        #[arg(long, requires = "output")]
        overwrite: bool,
        /// Prepare the dataset again instead of reading it from the prepared-data cache
        /// (`$TEMPER_CACHE/prepared`), and do not save it there.
        #[arg(long)]
        no_cache: bool,
        /// Print the statistics as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The dataset and how to read it (the `[data]` section of a run configuration).
#[derive(Debug, Args)]
pub struct InputArgs {
    /// The dataset: a file (.jsonl, .json, .csv, .tsv, .parquet, .arrow; optionally .gz or
    /// .zst), a glob, or a dataset directory (a Hugging Face repository layout or a
    /// `save_to_disk` directory).
    dataset: PathBuf,
    /// The `tokenizer.json` to tokenize with.
    #[arg(long)]
    tokenizer: PathBuf,
    /// A built-in template name, a `.jinja` file or a `tokenizer_config.json`.
    #[arg(long)]
    template: Option<String>,
    #[command(flatten)]
    records: RecordArgs,
    /// Which messages are trained: assistant, all, last_assistant.
    #[arg(long, default_value = "assistant")]
    train_on: TrainOn,
    #[arg(long, default_value_t = 1024)]
    /// The longest example (or packed row), in tokens.
    max_length: usize,
    /// keep_start, keep_end, drop or error.
    #[arg(long, default_value = "keep_start")]
    truncation: Truncation,
    /// Pack examples into rows of max_length instead of padding them.
    #[arg(long)]
    packing: bool,
    /// Drop (and count) duplicates, near_duplicates, empty_outputs or too_long examples
    /// (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    drop: Vec<Filter>,
    #[arg(long)]
    /// The end-of-sequence token, when the tokenizer files do not say.
    eos_token: Option<String>,
    /// The padding token (EOS pads when there is none, as for GPT-2).
    #[arg(long)]
    pad_token: Option<String>,
    #[arg(long)]
    /// The beginning-of-sequence token, when the tokenizer files do not say.
    bos_token: Option<String>,
}

/// How records are read from a dataset (shared by `temper data` and `temper eval`).
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The split of a dataset directory: train, test, ... (default: train).
    #[arg(long)]
    split: Option<String>,
    /// alpaca, messages, sharegpt, prompt_completion or text (detected when absent).
    #[arg(long)]
    format: Option<Format>,
    /// Map a field to another JSON key, e.g. `--field instruction=question`.
    #[arg(long = "field", value_parser = crate::key_value)]
    fields: Vec<(String, String)>,
    /// Skip (and count) bad records instead of stopping at the first.
    #[arg(long)]
    skip_errors: bool,
}

impl RecordArgs {
    /// The dataset at `path`, with the split asked for.
    pub fn dataset(&self, path: &Path) -> DatasetSpec {
        DatasetSpec::new(path, self.split.clone())
    }

    /// Sets the format, field names and error policy of `config`.
    pub fn apply(&self, config: &mut DataConfig) -> Result<()> {
        config.format = self.format;
        config.on_error = if self.skip_errors {
            OnError::Skip
        } else {
            OnError::Fail
        };
        for (field, key) in &self.fields {
            config.fields.set(field, key)?;
        }
        Ok(())
    }
}

impl InputArgs {
    fn config(&self) -> Result<DataConfig> {
        let mut config = DataConfig {
            template: self.template.clone(),
            train_on: self.train_on,
            max_length: self.max_length,
            truncation: self.truncation,
            packing: self.packing,
            drop: self.drop.clone(),
            eos_token: self.eos_token.clone(),
            bos_token: self.bos_token.clone(),
            pad_token: self.pad_token.clone(),
            ..DataConfig::default()
        };
        self.records.apply(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    fn dataset(&self) -> DatasetSpec {
        self.records.dataset(&self.dataset)
    }

    /// The dataset prepared with its template and `options`, with a progress bar; and the
    /// template.
    fn prepare(
        &self,
        config: &DataConfig,
        tokenizer: &Tokenizer,
        options: PrepareOptions<'_>,
    ) -> Result<(Prepared, Option<ChatTemplate>)> {
        let dataset = self.dataset();
        let template = temper_data::template_for(&dataset, config, tokenizer, None)?;
        let mut bar = ProgressShown::new();
        let prepared = prepare_with(
            &dataset,
            template.as_ref(),
            tokenizer,
            config,
            PrepareOptions {
                progress: Some(&mut |progress: &Progress| bar.show(progress)),
                ..options
            },
        );
        bar.finish();
        Ok((prepared?, template))
    }

    fn load(&self) -> Result<(DataConfig, Tokenizer)> {
        let config = self.config()?;
        let tokenizer = Tokenizer::from_file(&self.tokenizer, &config.special_token_names())?;
        Ok((config, tokenizer))
    }
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Inspect {
            input,
            examples,
            json,
        } => inspect(&input, examples, json),
        DataCommand::Prepare {
            input,
            output,
            overwrite,
            no_cache,
            json,
        } => prepare_command(&input, output.as_deref(), overwrite, no_cache, json),
    }
}

#[derive(Debug, Serialize)]
struct ShownExample {
    file: String,
    /// The line (JSON) or row (CSV, Parquet, Arrow) of the record in `file`.
    line: usize,
    text: String,
    input_ids: Vec<u32>,
    loss_mask: Vec<bool>,
    /// The trained text, token run by token run.
    trained_text: Vec<String>,
}

fn inspect(input: &InputArgs, count: usize, json: bool) -> Result<()> {
    let (config, tokenizer) = input.load()?;
    let dataset = input.dataset();
    let options = PrepareOptions {
        keep_records: count,
        report: true,
        ..PrepareOptions::default()
    };
    let (prepared, template) = input.prepare(&config, &tokenizer, options)?;
    let Some(report) = prepared.report.clone() else {
        bail!("{dataset}: no report was built");
    };
    let mut shown = Vec::new();
    for (record, example) in prepared
        .records
        .iter()
        .zip(&prepared.untruncated)
        .take(count)
    {
        let rendered = render_record(record, template.as_ref(), config.train_on)?;
        let (_, offsets) = tokenizer.encode(&rendered.text)?;
        let mut trained_text = Vec::new();
        let mut run: Option<Range<usize>> = None;
        for (&(start, end), &trained) in offsets.iter().zip(&example.loss_mask) {
            match (&mut run, trained && end > start) {
                (Some(range), true) => range.end = end,
                (None, true) => run = Some(start..end),
                (Some(_), false) => {
                    trained_text.extend(run.take().map(|r| rendered.text[r].to_owned()))
                }
                (None, false) => {}
            }
        }
        trained_text.extend(run.map(|r| rendered.text[r].to_owned()));
        let appended_eos = example.input_ids.len() > offsets.len();
        if appended_eos {
            trained_text.push(tokenizer.eos.text.clone());
        }
        shown.push((rendered.text, offsets, example, trained_text));
    }
    if json {
        let examples: Vec<ShownExample> = shown
            .into_iter()
            .zip(&prepared.records)
            .map(|((text, _, example, trained_text), record)| ShownExample {
                file: record.at.file.display().to_string(),
                line: record.at.position.number(),
                text,
                input_ids: example.input_ids.clone(),
                loss_mask: example.loss_mask.clone(),
                trained_text,
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "report": report, "examples": examples })
            )?
        );
        return Ok(());
    }
    print_report(&report, &prepared);
    for ((text, offsets, example, _), record) in shown.iter().zip(&prepared.records) {
        println!(
            "\n── example at {} · {} tokens, {} trained{}",
            record.at,
            example.len(),
            example.trained_tokens(),
            match config.effective_truncation() {
                _ if example.len() <= config.max_length => String::new(),
                Truncation::KeepStart | Truncation::KeepEnd => {
                    format!(
                        " · cut to {} tokens ({:?}) for training",
                        config.max_length,
                        config.effective_truncation()
                    )
                }
                Truncation::Drop | Truncation::Error =>
                    " · longer than max_length: dropped".to_owned(),
            }
        );
        let trained: Vec<Range<usize>> = offsets
            .iter()
            .zip(&example.loss_mask)
            .filter(|((s, e), m)| **m && e > s)
            .map(|(&(s, e), _)| s..e)
            .collect();
        print!("{}", highlight(text, &trained));
        if example.input_ids.len() > offsets.len() {
            print!("{}", style(&tokenizer.eos.text, true));
        }
        println!();
    }
    if !std::io::stdout().is_terminal() {
        println!("\n(trained text is between [[ and ]])");
    }
    Ok(())
}

/// The text with trained byte ranges marked: green on a terminal, `[[...]]` otherwise.
pub fn highlight(text: &str, trained: &[Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len() + 8 * trained.len());
    let mut cursor = 0;
    let mut merged: Vec<Range<usize>> = Vec::new();
    for range in trained {
        match merged.last_mut() {
            Some(last) if last.end >= range.start => last.end = last.end.max(range.end),
            _ => merged.push(range.clone()),
        }
    }
    for range in merged {
        let start = range.start.max(cursor);
        out.push_str(&text[cursor..start]);
        out.push_str(&style(&text[start..range.end], true));
        cursor = range.end;
    }
    out.push_str(&text[cursor..]);
    out
}

fn style(text: &str, trained: bool) -> String {
    match (trained, std::io::stdout().is_terminal()) {
        (false, _) => text.to_owned(),
        (true, true) => format!("\x1b[1;32m{text}\x1b[0m"),
        (true, false) => format!("[[{text}]]"),
    }
}

fn print_report(report: &QualityReport, prepared: &Prepared) {
    let formats: Vec<String> = report
        .records_by_format
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect();
    let skipped: Vec<String> = report
        .skipped
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    println!("file              {}", report.file);
    println!(
        "records           {} ({})",
        report.records_by_format.values().sum::<usize>(),
        formats.join(", ")
    );
    println!(
        "skipped           {}",
        if skipped.is_empty() {
            "none".into()
        } else {
            skipped.join(", ")
        }
    );
    for (problem, message) in &prepared.first_skips {
        println!("  first {problem}: {message}");
    }
    println!(
        "template          {}",
        report.template.as_deref().unwrap_or("none (plain text)")
    );
    println!(
        "examples          {} (max_length {})",
        report.examples, report.max_length
    );
    println!(
        "tokens            {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "min", "mean", "p50", "p90", "p99", "max"
    );
    for (name, stats) in [
        ("  prompt", &report.prompt_tokens),
        ("  response", &report.response_tokens),
        ("  total", &report.total_tokens),
    ] {
        println!(
            "{name:<18}{:>8} {:>8.1} {:>8} {:>8} {:>8} {:>8}",
            stats.min, stats.mean, stats.p50, stats.p90, stats.p99, stats.max
        );
    }
    println!("over max_length   {}", report.over_max_length);
    println!(
        "trained tokens    {:.1}% of all tokens",
        100.0 * report.trained_token_fraction
    );
    println!(
        "instructions      {} unique (diversity {:.3} over the records that have one)",
        report.unique_instructions, report.instruction_diversity
    );
    let prefixes = |list: &[temper_data::report::RepeatedPrefix]| {
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.iter()
                .map(|p| format!("\"{}\" x{}", p.prefix, p.count))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!(
        "repeated openings instructions: {}",
        prefixes(&report.repeated_instruction_prefixes)
    );
    println!(
        "                  outputs: {}",
        prefixes(&report.repeated_output_prefixes)
    );
    println!(
        "duplicates        {} exact, {} near (>= 80% shared word 3-grams)",
        report.exact_duplicates, report.near_duplicates
    );
    println!("empty outputs     {}", report.empty_outputs);
    println!(
        "rows              {} {} · {:.1}% of rows of max_length tokens is real tokens",
        report.rows,
        if report.packing {
            "packed"
        } else {
            "padded (one example each; batches pad to their longest row, so their fill is higher)"
        },
        100.0 * report.packing_efficiency
    );
}

#[derive(Debug, Serialize)]
struct PrepareStats {
    file: String,
    examples: usize,
    kept: usize,
    skipped: std::collections::BTreeMap<String, usize>,
    seconds: f64,
    examples_per_second: f64,
    tokens: usize,
    trained_tokens: usize,
    tokens_per_second: f64,
    packs: usize,
    packing_efficiency: f64,
    threads: usize,
    /// Whether the rows came from the prepared-data cache.
    from_cache: bool,
}

fn prepare_command(
    input: &InputArgs,
    output: Option<&Path>,
    overwrite: bool,
    no_cache: bool,
    json: bool,
) -> Result<()> {
    if let Some(output) = output {
        check_output(output, input, overwrite)?;
    }
    let (config, tokenizer) = input.load()?;
    let started = Instant::now();
    let cache = temper_data::cache_dir().filter(|_| !no_cache);
    let options = PrepareOptions {
        cache: cache.as_deref(),
        ..PrepareOptions::default()
    };
    let (prepared, _) = input.prepare(&config, &tokenizer, options)?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = PrepareStats {
        file: prepared.name.clone(),
        examples: prepared.read,
        kept: prepared.examples.len(),
        skipped: prepared
            .skipped
            .iter()
            .map(|(p, n)| (p.as_str().to_owned(), *n))
            .collect(),
        seconds,
        examples_per_second: prepared.read as f64 / seconds,
        tokens: prepared.total_tokens(),
        trained_tokens: prepared.trained_tokens(),
        tokens_per_second: prepared.total_tokens() as f64 / seconds,
        packs: prepared.rows.len(),
        packing_efficiency: prepared.packing_efficiency(),
        threads: rayon::current_num_threads(),
        from_cache: prepared.from_cache,
    };
    if let Some(output) = output {
        write_rows(output, &prepared)?;
    }
    if json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        println!(
            "{} examples -> {} kept, {} rows ({:.1}% full) in {:.2}s: {:.0} examples/s, {:.0} tokens/s on {} threads{}",
            stats.examples,
            stats.kept,
            stats.packs,
            100.0 * stats.packing_efficiency,
            stats.seconds,
            stats.examples_per_second,
            stats.tokens_per_second,
            stats.threads,
            if stats.from_cache {
                " (from the prepared-data cache)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Refuses an `--output` that is one of the command's inputs or lies in the dataset's
/// directory, or an existing file unless `overwrite`.
fn check_output(output: &Path, input: &InputArgs, overwrite: bool) -> Result<()> {
    let resolved = |path: &Path| std::fs::canonicalize(path).ok();
    let target = resolved(output).or_else(|| {
        let parent = output.parent().filter(|p| !p.as_os_str().is_empty());
        Some(resolved(parent.unwrap_or(Path::new(".")))?.join(output.file_name()?))
    });
    let mut inputs = input.dataset().files().unwrap_or_default();
    inputs.push(input.tokenizer.clone());
    if let Some(read) = inputs.iter().find(|read| resolved(read) == target) {
        bail!(
            "--output {}: that is {}, which this command reads; write the rows elsewhere",
            output.display(),
            read.display()
        );
    }
    if input.dataset.is_dir()
        && let (Some(dir), Some(target)) = (resolved(&input.dataset), &target)
        && target.starts_with(&dir)
    {
        bail!(
            "--output {}: that is inside the dataset directory {}, whose files are read as data; write the rows elsewhere",
            output.display(),
            input.dataset.display()
        );
    }
    if output.exists() && !overwrite {
        bail!(
            "--output {}: the file exists; choose another path or pass --overwrite to replace it",
            output.display()
        );
    }
    Ok(())
}

/// Writes rows as JSON lines through a temporary file, so a failure leaves nothing behind.
fn write_rows(path: &Path, prepared: &Prepared) -> Result<()> {
    temper_store::write_atomic_with(path, |out| {
        for row in 0..prepared.rows.len() {
            serde_json::to_writer(&mut *out, &prepared.row(row))?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Ok(())
}
