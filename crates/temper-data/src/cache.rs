//! The prepared-data cache: a prepared dataset's examples and rows as flat files, keyed by
//! everything that decides them, memory-mapped by later runs instead of tokenizing again.
//!
//! ```text
//! <cache>/prepared/<key>/   header.json      counts, skips, report, the key's description
//!                           ids.u32          every token              (native-endian arrays)
//!                           mask.u8          1 = trained
//!                           offsets.u64      example starts, then the end
//!                           lines.u64        each example's line or row
//!                           members.u32      each row's examples
//!                           row_offsets.u64  row starts, then the end
//! ```
//!
//! The key hashes the dataset's files (their paths and a hash of their bytes), the tokenizer
//! (its whole definition and special tokens), the template (name, source, special tokens),
//! the `[data]` options and the format version below. An entry is written into a temporary
//! directory that is renamed into place when complete, so a reader never sees half of one. A
//! damaged entry (missing file, wrong length, inconsistent offsets) is reported with a
//! warning and prepared again.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytemuck::Pod;
use serde::{Deserialize, Serialize};
use temper_chat::ChatTemplate;

use crate::error::{Error, Problem, Result};
use crate::pipeline::{DataConfig, Prepared};
use crate::report::QualityReport;
use crate::store::{Buffer, Examples, Rows};
use crate::tokenize::Tokenizer;

/// Where temper caches what it can make again: `$TEMPER_CACHE`, else `$XDG_CACHE_HOME/temper`,
/// else `~/.cache/temper`; `None` when none of them is set.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    var("TEMPER_CACHE")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|dir| PathBuf::from(dir).join("temper")))
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache/temper")))
}

/// The layout version: bump it when the files or what they mean change.
const VERSION: u32 = 1;

/// Everything a prepared dataset is besides its arrays.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u32,
    /// What the key was computed from, for a person reading the cache.
    describes: String,
    little_endian: bool,
    name: String,
    read: usize,
    skipped: BTreeMap<Problem, usize>,
    first_skips: BTreeMap<Problem, String>,
    max_length: usize,
    packing: bool,
    template: Option<String>,
    report: Option<QualityReport>,
}

/// One dataset's place in the cache.
#[derive(Debug)]
pub(crate) struct Entry {
    dir: PathBuf,
    describes: String,
}

impl Entry {
    /// The entry for `files` prepared with these settings, under `root/prepared/`.
    pub(crate) fn new(
        root: &Path,
        files: &[PathBuf],
        template: Option<&ChatTemplate>,
        tokenizer: &Tokenizer,
        config: &DataConfig,
    ) -> Result<Entry> {
        let absolute: Vec<PathBuf> = files
            .iter()
            .map(|file| std::path::absolute(file).unwrap_or_else(|_| file.clone()))
            .collect();
        let describes = format!(
            "version {VERSION}; files {absolute:?} ({}); tokenizer {} (bos {:?}, eos {:?}, pad {}); template {:?}; data {}",
            crate::dataset::content_identity(files)?,
            tokenizer.path().display(),
            tokenizer.bos,
            tokenizer.eos,
            tokenizer.pad_id,
            template.map(|t| (t.name(), t.bos_token(), t.eos_token())),
            serde_json::to_string(config).unwrap_or_default(),
        );
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        describes.hash(&mut hasher);
        tokenizer.definition().hash(&mut hasher);
        template.map(ChatTemplate::source).hash(&mut hasher);
        let key = hasher.finish();
        Ok(Entry {
            dir: root.join("prepared").join(format!("{key:016x}")),
            describes,
        })
    }

    /// The cached dataset, when the entry exists and is whole (and holds a report when one
    /// is wanted); a damaged entry is removed with a warning.
    pub(crate) fn load(&self, want_report: bool) -> Option<Prepared> {
        if !self.dir.join("header.json").is_file() {
            return None;
        }
        match self.read(want_report) {
            Ok(Some(prepared)) => Some(prepared),
            Ok(None) => None,
            Err(problem) => {
                tracing::warn!(
                    "the prepared-data cache entry {} is damaged ({problem}); preparing the dataset again",
                    self.dir.display()
                );
                let _ = std::fs::remove_dir_all(&self.dir);
                None
            }
        }
    }

    fn read(&self, want_report: bool) -> std::result::Result<Option<Prepared>, String> {
        let text = std::fs::read_to_string(self.dir.join("header.json"))
            .map_err(|error| format!("header.json: {error}"))?;
        let header: Header =
            serde_json::from_str(&text).map_err(|error| format!("header.json: {error}"))?;
        if header.version != VERSION
            || header.describes != self.describes
            || header.little_endian != cfg!(target_endian = "little")
        {
            return Err("header.json describes other data".into());
        }
        if want_report && header.report.is_none() {
            return Ok(None);
        }
        let examples = Examples {
            ids: self.map("ids.u32")?,
            mask: self.map("mask.u8")?,
            offsets: self.map("offsets.u64")?,
            lines: self.map("lines.u64")?,
        };
        let rows = Rows {
            members: self.map("members.u32")?,
            offsets: self.map("row_offsets.u64")?,
        };
        if !examples.is_consistent() || !rows.is_consistent(&examples) {
            return Err("its arrays disagree with each other".into());
        }
        Ok(Some(Prepared {
            name: header.name,
            read: header.read,
            records: Vec::new(),
            untruncated: Vec::new(),
            examples,
            rows,
            skipped: header.skipped,
            first_skips: header.first_skips,
            max_length: header.max_length,
            packing: header.packing,
            template: header.template,
            report: header.report,
            from_cache: true,
        }))
    }

    fn map<T: Pod>(&self, name: &str) -> std::result::Result<Buffer<T>, String> {
        Buffer::map(&self.dir.join(name))
            .map_err(|error| format!("{name}: {error}"))?
            .ok_or_else(|| format!("{name} is not a whole number of values"))
    }

    /// Saves `prepared` as this entry and gives it back. A cache that cannot be written is a
    /// warning, not an error: the dataset is prepared either way.
    pub(crate) fn save(&self, prepared: Prepared) -> Prepared {
        let Some(parent) = self.dir.parent() else {
            return prepared;
        };
        // Unique to this save: two runs (or threads) may prepare the same dataset at once.
        static SAVES: AtomicUsize = AtomicUsize::new(0);
        let temporary = parent.join(format!(
            ".{}.tmp-{}-{}",
            self.dir
                .file_name()
                .map_or_else(Default::default, |n| n.to_string_lossy()),
            std::process::id(),
            SAVES.fetch_add(1, Ordering::Relaxed)
        ));
        let written = self.write(&temporary, &prepared).and_then(|()| {
            let _ = std::fs::remove_dir_all(&self.dir);
            std::fs::rename(&temporary, &self.dir).map_err(|error| Error::Io {
                path: self.dir.clone(),
                error,
            })
        });
        if let Err(error) = written {
            let _ = std::fs::remove_dir_all(&temporary);
            // Another run that saved the same entry first is no failure.
            if self.dir.join("header.json").is_file() {
                return prepared;
            }
            tracing::warn!("could not save the prepared dataset in the cache: {error}");
        }
        prepared
    }

    fn write(&self, dir: &Path, prepared: &Prepared) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| Error::Io { path, error }
        };
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (examples, rows) = (&prepared.examples, &prepared.rows);
        write_array(&dir.join("ids.u32"), &examples.ids)?;
        write_array(&dir.join("mask.u8"), &examples.mask)?;
        write_array(&dir.join("offsets.u64"), &examples.offsets)?;
        write_array(&dir.join("lines.u64"), &examples.lines)?;
        write_array(&dir.join("members.u32"), &rows.members)?;
        write_array(&dir.join("row_offsets.u64"), &rows.offsets)?;
        let header = Header {
            version: VERSION,
            describes: self.describes.clone(),
            little_endian: cfg!(target_endian = "little"),
            name: prepared.name.clone(),
            read: prepared.read,
            skipped: prepared.skipped.clone(),
            first_skips: prepared.first_skips.clone(),
            max_length: prepared.max_length,
            packing: prepared.packing,
            template: prepared.template.clone(),
            report: prepared.report.clone(),
        };
        let path = dir.join("header.json");
        let text = serde_json::to_string_pretty(&header).map_err(|error| Error::File {
            path: path.clone(),
            message: error.to_string(),
        })?;
        std::fs::write(&path, text).map_err(io(&path))
    }
}

fn write_array<T: Pod>(path: &Path, values: &[T]) -> Result<()> {
    let io = |error| Error::Io {
        path: path.to_owned(),
        error,
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    file.write_all(bytemuck::cast_slice(values)).map_err(io)?;
    file.into_inner()
        .map_err(|error| io(error.into_error()))?
        .sync_all()
        .map_err(io)
}
