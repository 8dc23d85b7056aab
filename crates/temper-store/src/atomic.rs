//! Files and directories that appear whole or not at all: written under a temporary name in
//! the same directory, then renamed into place.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, io};

/// The temporary name beside `path` that its content is written under: `.NAME.partial`,
/// hidden, so a directory listing never shows it as a result.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".partial");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file and a rename; on failure the temporary
/// file is removed and `path` keeps what it had.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |out| out.write_all(bytes))
}

/// [`write_atomic`] for content written piece by piece (JSON lines, say) into a buffered
/// writer.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let temporary = partial_path(path);
    let written = File::create(&temporary)
        .and_then(|file| {
            let mut out = BufWriter::new(file);
            write(&mut out)?;
            out.flush()
        })
        .map_err(|e| io(&temporary, e))
        .and_then(|()| std::fs::rename(&temporary, path).map_err(|e| io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// A directory being written: files go into a hidden temporary directory beside `target`,
/// which [`AtomicDir::commit`] renames to `target`. Dropped without a commit, it removes the
/// temporary directory, so a failure leaves nothing behind.
#[derive(Debug)]
pub struct AtomicDir {
    temporary: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicDir {
    /// Starts writing `target` (its parent is created when missing). A temporary directory
    /// left by an earlier, killed attempt is removed first.
    pub fn new(target: &Path) -> Result<AtomicDir> {
        let temporary = partial_path(target);
        if temporary.exists() {
            std::fs::remove_dir_all(&temporary).map_err(|e| io(&temporary, e))?;
        }
        std::fs::create_dir_all(&temporary).map_err(|e| io(&temporary, e))?;
        Ok(AtomicDir {
            temporary,
            target: target.to_owned(),
            committed: false,
        })
    }

    /// Where to write the directory's files now.
    pub fn path(&self) -> &Path {
        &self.temporary
    }

    /// Moves the written directory to its target, replacing a directory that was there.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            std::fs::remove_dir_all(&self.target).map_err(|e| io(&self.target, e))?;
        }
        std::fs::rename(&self.temporary, &self.target).map_err(|e| io(&self.target, e))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("temper-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = scratch("file");
        let path = dir.join("config.json");
        write_atomic(&path, b"old").unwrap_or_else(|e| panic!("{e}"));
        // Renaming a file over a directory fails after the temporary file was written.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap_or_else(|e| panic!("{e}"));
        assert!(write_atomic(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&path).ok(), Some(b"old".to_vec()));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
    }

    #[test]
    fn a_directory_appears_only_when_committed() {
        let dir = scratch("dir");
        let target = dir.join("checkpoint-000002");
        {
            let writing = AtomicDir::new(&target).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(writing.path().join("a"), b"1").unwrap_or_else(|e| panic!("{e}"));
            // Dropped without commit: as if the write had failed.
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).ok(), Some(0));
        let writing = AtomicDir::new(&target).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(writing.path().join("a"), b"2").unwrap_or_else(|e| panic!("{e}"));
        writing.commit().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(target.join("a")).ok(), Some(b"2".to_vec()));
    }
}
