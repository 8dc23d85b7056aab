//! Naming a dataset: a file, a glob, or a directory (a Hugging Face dataset repository's
//! layout or a `save_to_disk` directory), and a split of it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::is_data_file;

/// A dataset and the split to read from it, as a configuration names it: a string (the path)
/// or a table `{ path = "...", split = "train" }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatasetSpec {
    /// A file, a glob (`data/train-*.parquet`) or a directory.
    pub path: PathBuf,
    /// The split of a directory: `train`, `test`, ... (a directory's `train` by default).
    pub split: Option<String>,
}

impl DatasetSpec {
    pub fn new(path: impl Into<PathBuf>, split: Option<String>) -> Self {
        DatasetSpec {
            path: path.into(),
            split,
        }
    }

    /// The files of the dataset, in order (see [`dataset_files`]).
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        dataset_files(&self.path, self.split.as_deref())
    }
}

impl From<&str> for DatasetSpec {
    fn from(path: &str) -> Self {
        DatasetSpec::new(path, None)
    }
}

impl From<PathBuf> for DatasetSpec {
    fn from(path: PathBuf) -> Self {
        DatasetSpec::new(path, None)
    }
}

impl std::fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.split {
            Some(split) => write!(f, "{} (split {split})", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

impl Serialize for DatasetSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Table<'a> {
            path: &'a Path,
            split: &'a str,
        }
        match &self.split {
            None => self.path.serialize(serializer),
            Some(split) => Table {
                path: &self.path,
                split,
            }
            .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for DatasetSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            path: PathBuf,
            split: Option<String>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = DatasetSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path, or a table with `path` and `split`")
            }
            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<DatasetSpec, E> {
                Ok(DatasetSpec::new(path, None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<DatasetSpec, A::Error> {
                let table = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(DatasetSpec::new(table.path, table.split))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Files that describe a dataset rather than hold its records.
const METADATA_FILES: [&str; 4] = [
    "dataset_info.json",
    "dataset_infos.json",
    "dataset_dict.json",
    "state.json",
];

/// The files of a dataset, in order:
/// - a file: itself;
/// - a glob (`*`, `?`, `[...]`): every file it matches, sorted;
/// - a `save_to_disk` directory: the Arrow files its `state.json` lists (for a dataset dict,
///   those of the split's directory);
/// - any other directory: its data files (any depth, hidden entries skipped, sorted) of the
///   split: files whose name begins with the split's name (`train-00000-of-00003.parquet`,
///   `train.jsonl`) or that sit in a directory of that name. Without a split, `train`'s
///   files, or every file when no file is named for a split.
pub fn dataset_files(path: &Path, split: Option<&str>) -> Result<Vec<PathBuf>> {
    let text = path.to_string_lossy();
    if !path.exists() && text.contains(['*', '?', '[']) {
        if split.is_some() {
            return Err(split_needs_directory(path));
        }
        return glob_files(&text, path);
    }
    let metadata = std::fs::metadata(path).map_err(|error| Error::Io {
        path: path.to_owned(),
        error,
    })?;
    if !metadata.is_dir() {
        if split.is_some() {
            return Err(split_needs_directory(path));
        }
        return Ok(vec![path.to_owned()]);
    }
    if path.join("dataset_dict.json").is_file() {
        let splits = read_json_key(&path.join("dataset_dict.json"), "splits")?;
        let splits: Vec<String> = string_list(&splits);
        let chosen = choose_split(path, split, &splits)?;
        return saved_dataset_files(&path.join(chosen));
    }
    if path.join("state.json").is_file() {
        return saved_dataset_files(path);
    }
    repository_files(path, split)
}

fn split_needs_directory(path: &Path) -> Error {
    Error::Config {
        key: "split".into(),
        message: format!(
            "{} is a file (or a glob); a split picks files of a dataset directory",
            path.display()
        ),
    }
}

fn glob_files(pattern: &str, path: &Path) -> Result<Vec<PathBuf>> {
    let matches = glob::glob(pattern).map_err(|error| Error::Config {
        key: "dataset".into(),
        message: format!("`{pattern}` is not a valid glob: {error}"),
    })?;
    let mut files: Vec<PathBuf> = matches
        .filter_map(std::result::Result::ok)
        .filter(|file| file.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::File {
            path: path.to_owned(),
            message: "matches no files".into(),
        });
    }
    Ok(files)
}

/// `key` of a JSON file.
fn read_json_key(file: &Path, key: &str) -> Result<serde_json::Value> {
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|error| Error::Io {
            path: file.to_owned(),
            error,
        })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|error| Error::File {
        path: file.to_owned(),
        message: format!("invalid JSON: {error}"),
    })?;
    value.get(key).cloned().ok_or_else(|| Error::File {
        path: file.to_owned(),
        message: format!("has no `{key}`"),
    })
}

fn string_list(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The split asked for, or `train`, or the only one there is.
fn choose_split<'a>(dir: &Path, split: Option<&str>, splits: &'a [String]) -> Result<&'a str> {
    let wanted = split.unwrap_or("train");
    if let Some(found) = splits.iter().find(|s| *s == wanted) {
        return Ok(found);
    }
    if split.is_none() && splits.len() == 1 {
        return Ok(&splits[0]);
    }
    Err(no_such_split(dir, wanted, splits))
}

fn no_such_split(dir: &Path, wanted: &str, splits: &[String]) -> Error {
    Error::Config {
        key: "split".into(),
        message: format!(
            "{} has no split `{wanted}`: it has {}",
            dir.display(),
            if splits.is_empty() {
                "no named splits".to_owned()
            } else {
                splits.join(", ")
            }
        ),
    }
}

/// The Arrow files of one `Dataset.save_to_disk` directory, from its `state.json`.
fn saved_dataset_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let state = dir.join("state.json");
    let data_files = read_json_key(&state, "_data_files")?;
    let files: Vec<PathBuf> = data_files
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("filename")?.as_str())
        .map(|name| dir.join(name))
        .collect();
    if files.is_empty() {
        return Err(Error::File {
            path: state,
            message: "lists no data files in `_data_files`".into(),
        });
    }
    Ok(files)
}

/// The split a file of a repository layout is named for: the leading word of its name
/// (`train` of `train-00000-of-00003.parquet`, `test` of `test.jsonl`).
fn leading_word(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.chars().take_while(char::is_ascii_alphabetic).collect()
}

fn repository_files(dir: &Path, split: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(Error::File {
            path: dir.to_owned(),
            message: "holds no dataset files (.jsonl, .json, .csv, .tsv, .parquet, .arrow, optionally .gz or .zst)".into(),
        });
    }
    let in_split = |file: &Path, split: &str| {
        leading_word(file) == split
            || file
                .strip_prefix(dir)
                .ok()
                .and_then(Path::parent)
                .is_some_and(|parent| parent.components().any(|c| c.as_os_str() == split))
    };
    let wanted = split.unwrap_or("train");
    let chosen: Vec<PathBuf> = files
        .iter()
        .filter(|file| in_split(file, wanted))
        .cloned()
        .collect();
    if !chosen.is_empty() {
        return Ok(chosen);
    }
    let mut splits: Vec<String> = files.iter().map(|file| leading_word(file)).collect();
    splits.sort();
    splits.dedup();
    if split.is_none() && splits.len() == 1 {
        // One name for every file (`data-*.jsonl`, `gsm8k.parquet`): the dataset has no splits.
        return Ok(files);
    }
    Err(no_such_split(dir, wanted, &splits))
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let io = |error| Error::Io {
        path: dir.to_owned(),
        error,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || METADATA_FILES.contains(&name.as_ref()) {
            continue;
        }
        if entry.file_type().map_err(io)?.is_dir() {
            walk(&path, files)?;
        } else if is_data_file(&path) {
            files.push(path);
        }
    }
    Ok(())
}

/// An identity of the content of `files` (not a cryptographic hash): their count, total
/// size and FNV-1a over their bytes in order. Reads the files in blocks.
pub fn content_identity(files: &[PathBuf]) -> Result<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut total = 0u64;
    let mut block = vec![0u8; 1 << 20];
    for file in files {
        let io = |error| Error::Io {
            path: file.clone(),
            error,
        };
        let mut reader = std::fs::File::open(file).map_err(io)?;
        loop {
            let read = reader.read(&mut block).map_err(io)?;
            if read == 0 {
                break;
            }
            total += read as u64;
            hash = block[..read].iter().fold(hash, |hash, &byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        }
    }
    // One file reads as it did before datasets could have several (checkpoints compare it).
    Ok(match files.len() {
        1 => format!("{total} bytes, FNV-1a {hash:016x}"),
        n => format!("{n} files, {total} bytes, FNV-1a {hash:016x}"),
    })
}
