//! What a run and an export may write where: a user's files are never replaced by accident.
//!
//! A new run refuses an output directory that already holds files, unless told to resume
//! the run there or to overwrite it; even then it never writes into (or removes) the model or
//! the data it reads. An overwrite removes only what a run writes ([`RUN_FILES`] and its
//! checkpoints), and only once the new run has loaded its model and data, so a run that
//! fails to start changes nothing. Exports refuse a target that holds files unless asked to
//! overwrite, and never write over the run's base model.

use std::path::{Path, PathBuf};

use crate::checkpoint::list_checkpoints;
use crate::config::RunConfig;
use crate::error::{Error, Result, io};
use crate::run::{DATA_REPORT_FILE, EVAL_DIR, TEMPLATE_FILE};

/// How a run treats its output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start<'a> {
    /// A new run: the output directory must be absent or empty.
    Fresh,
    /// A new run that replaces what an earlier run left in the output directory.
    Overwrite,
    /// Continue from this checkpoint.
    Resume(&'a Path),
}

/// The files and directories a run writes into its output directory, besides its
/// `checkpoint-NNNNNN` directories.
pub const RUN_FILES: [&str; 8] = [
    "config.toml",
    DATA_REPORT_FILE,
    "metrics.jsonl",
    "loss.svg",
    TEMPLATE_FILE,
    EVAL_DIR,
    "adapter",
    "merged",
];

/// Refuses an output directory that would overwrite something: an empty path, a directory
/// that holds (or is) the model, tokenizer or data the run reads, or, for a fresh run, a
/// directory that already holds files. Called before anything is loaded or written.
pub fn check_output_dir(config: &RunConfig, start: Start<'_>) -> Result<()> {
    let output_dir = &config.train.output_dir;
    let refuse = |reason: String| Error::OutputDir {
        dir: output_dir.clone(),
        reason,
    };
    if output_dir.as_os_str().is_empty() {
        return Err(refuse(
            "is empty; name a directory for checkpoints, metrics and exports".into(),
        ));
    }
    let eval = config.dataset.eval.as_ref().map(|spec| &spec.path);
    let datasets = config
        .dataset
        .train
        .iter()
        .map(|source| &source.path)
        .chain(eval);
    let inputs = [Some(&config.model.path), config.model.tokenizer.as_ref()];
    for input in inputs.into_iter().flatten().chain(datasets.clone()) {
        if contains(output_dir, input) {
            return Err(refuse(format!(
                "holds {}, which the run reads; a run writes into its output directory, so choose another",
                input.display()
            )));
        }
    }
    // A run's files (metrics.jsonl, ...) inside a dataset directory would become its data.
    for dataset in datasets.filter(|path| path.is_dir()) {
        if contains(dataset, output_dir) {
            return Err(refuse(format!(
                "is inside the dataset directory {}, whose files are read as data; choose a directory outside it",
                dataset.display()
            )));
        }
    }
    if start == Start::Fresh {
        let present = entries(output_dir);
        if !present.is_empty() {
            return Err(refuse(format!(
                "already holds files ({}); resume that run with --resume latest, choose another output_dir, or replace it with --overwrite",
                present.join(", ")
            )));
        }
    }
    Ok(())
}

/// Removes what an earlier run wrote into `output_dir` (its [`RUN_FILES`] and checkpoints);
/// anything else there stays.
pub fn clear_earlier_run(output_dir: &Path) -> Result<()> {
    let run_files = RUN_FILES.iter().map(|name| output_dir.join(name));
    let checkpoints = list_checkpoints(output_dir).into_iter().map(|(_, dir)| dir);
    for path in run_files.chain(checkpoints) {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else if path.exists() {
            std::fs::remove_file(&path)
        } else {
            Ok(())
        };
        removed.map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// Refuses an export target that holds files (unless `overwrite`) or that is, or holds, the
/// base model. `flag` names the option the target came from.
pub fn check_export_target(
    target: &Path,
    flag: &str,
    base_model: &Path,
    overwrite: bool,
) -> Result<()> {
    let refuse = |reason: String| Error::Export {
        flag: flag.to_owned(),
        path: target.to_owned(),
        reason,
    };
    if contains(target, base_model) {
        return Err(refuse(format!(
            "holds the run's base model {}; export elsewhere",
            base_model.display()
        )));
    }
    let present = entries(target);
    if !present.is_empty() && !overwrite {
        return Err(refuse(format!(
            "already holds files ({}); choose another directory or pass --overwrite to replace it",
            present.join(", ")
        )));
    }
    Ok(())
}

/// Whether `dir` is `path` or one of its ancestors (compared as absolute, resolved paths
/// where they exist).
fn contains(dir: &Path, path: &Path) -> bool {
    let (dir, path) = (resolved(dir), resolved(path));
    path.starts_with(&dir)
}

fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| std::path::absolute(path).unwrap_or_default())
}

/// The first few names in `dir` (none when it is absent or empty), for messages.
fn entries(dir: &Path) -> Vec<String> {
    const SHOWN: usize = 4;
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.len() > SHOWN {
        let more = names.len() - SHOWN;
        names.truncate(SHOWN);
        names.push(format!("and {more} more"));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("temper-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn config(output_dir: &Path, model: &Path) -> RunConfig {
        let mut config = RunConfig::default();
        config.train.output_dir = output_dir.to_owned();
        config.model.path = model.to_owned();
        config.dataset.train =
            vec![temper_data::DatasetSpec::from("datasets/tasks/train.alpaca.jsonl").into()];
        config
    }

    #[test]
    fn a_fresh_run_refuses_a_directory_with_files_and_any_run_refuses_its_inputs() {
        let dir = scratch("fresh");
        let model = dir.join("model");
        std::fs::create_dir_all(&model).unwrap_or_else(|e| panic!("{e}"));
        let out = dir.join("run");
        assert!(check_output_dir(&config(&out, &model), Start::Fresh).is_ok());
        std::fs::create_dir_all(out.join("checkpoint-000002")).unwrap_or_else(|e| panic!("{e}"));
        let error = check_output_dir(&config(&out, &model), Start::Fresh)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("train.output_dir ")
                && error.contains("already holds files (checkpoint-000002)"),
            "{error}"
        );
        assert!(check_output_dir(&config(&out, &model), Start::Overwrite).is_ok());
        for start in [Start::Overwrite, Start::Resume(&out)] {
            let error = check_output_dir(&config(&dir, &model), start)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("which the run reads"), "{error}");
        }
        let error = check_output_dir(&config(Path::new(""), &model), Start::Fresh)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("train.output_dir : is empty"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn clearing_an_earlier_run_keeps_what_a_run_did_not_write() {
        let dir = scratch("clear");
        for name in ["checkpoint-000004", "adapter"] {
            std::fs::create_dir_all(dir.join(name).join("x")).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(dir.join("checkpoint-000004/trainer_state.json"), "{}")
            .unwrap_or_else(|e| panic!("{e}"));
        for name in ["metrics.jsonl", "notes.txt"] {
            std::fs::write(dir.join(name), "x").unwrap_or_else(|e| panic!("{e}"));
        }
        clear_earlier_run(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entries(&dir), ["notes.txt"]);
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn an_export_never_replaces_the_base_model_or_files_unasked() {
        let dir = scratch("export");
        let model = dir.join("model");
        std::fs::create_dir_all(&model).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(model.join("config.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
        for overwrite in [false, true] {
            let error = check_export_target(&model, "--merged", &model, overwrite)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("holds the run's base model"), "{error}");
        }
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(other.join("a"), "x").unwrap_or_else(|e| panic!("{e}"));
        let error = check_export_target(&other, "--merged", &model, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("--merged "), "{error}");
        assert!(error.contains("already holds files (a)"), "{error}");
        assert!(check_export_target(&other, "--merged", &model, true).is_ok());
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }
}
