//! Output files that appear whole or not at all.
//!
//! Every file `cartbuild` writes beside the user's other files (the image, its
//! `.sha256`, `.manifest.json` and `.spdx.json`) is first written completely
//! into a temporary file in the destination's directory ([`Pending`]) and only
//! renamed into place when everything is ready ([`Outputs::persist`]). A
//! failure before that removes the temporaries (their `Drop`), so a failed
//! build leaves neither a half-written image nor a checksum of one. rename(2)
//! within one directory is atomic, so a reader sees the old file or the new
//! one, never a mix.
//!
//! A signal that ends the process skips every `Drop`: the temporaries in flight
//! are also listed in a registry, which [`abandon_pending`] empties (removing
//! the files) for cartbuild's signal handler before it exits. Creating and
//! renaming take the same lock, so once the handler holds it no temporary
//! appears and no set of outputs is left half renamed.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cartimage::manifest;

/// Why an output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct OutputError {
    /// The file.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError {
        path: path.to_path_buf(),
        source,
    }
}

/// The temporaries of every [`Pending`] alive in this process.
static PENDING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn registry() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    // A panic while holding the lock left a set that is still a set.
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A temporary's entry in the registry, removed when the temporary goes.
#[derive(Debug)]
struct Registered(Option<PathBuf>);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            registry().remove(&p);
        }
    }
}

/// Removes every pending temporary output and returns the registry's lock:
/// while the caller holds it (until the process exits), no temporary output is
/// created and none is renamed into place. For a handler of SIGINT/SIGTERM that
/// is about to exit.
pub fn abandon_pending() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    let mut g = registry();
    for p in std::mem::take(&mut *g) {
        let _ = fs::remove_file(&p);
    }
    g
}

/// A complete output in a temporary file beside `dest`, not yet in place.
#[derive(Debug)]
pub struct Pending {
    // Dropped first: the file goes before its registry entry.
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    registered: Registered,
}

impl Pending {
    /// An empty temporary file in `dest`'s directory (created if missing),
    /// to be filled by the caller through [`Pending::file`].
    pub fn create(dest: &Path) -> Result<Pending, OutputError> {
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut registry = registry();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io_error(dir))?;
        registry.insert(tmp.path().to_path_buf());
        let registered = Registered(Some(tmp.path().to_path_buf()));
        Ok(Pending {
            tmp,
            dest: dest.to_path_buf(),
            registered,
        })
    }

    /// A pending file holding `bytes`.
    pub fn with_bytes(dest: &Path, bytes: &[u8]) -> Result<Pending, OutputError> {
        let mut p = Pending::create(dest)?;
        p.tmp.write_all(bytes).map_err(io_error(p.tmp.path()))?;
        Ok(p)
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// The temporary file's path (for messages).
    pub fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Where the file goes.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The sha256 (hex) and length of what has been written, read back
    /// through a fixed buffer.
    pub fn sha256(&mut self) -> Result<(String, u64), OutputError> {
        let path = self.tmp.path().to_path_buf();
        let file = self.tmp.as_file_mut();
        file.seek(SeekFrom::Start(0)).map_err(io_error(&path))?;
        manifest::sha256_reader(file).map_err(io_error(&path))
    }

    /// Syncs the data and makes the file readable by everyone (0644), ready
    /// to be renamed.
    fn seal(&mut self) -> Result<(), OutputError> {
        let path = self.tmp.path().to_path_buf();
        self.tmp.as_file_mut().sync_all().map_err(io_error(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(io_error(&path))
    }

    /// Renames the file into place.
    pub fn persist(mut self) -> Result<PathBuf, OutputError> {
        self.seal()?;
        let mut registry = registry();
        self.rename(&mut registry)
    }

    /// Renames the sealed file into place, with the registry's lock held.
    fn rename(self, registry: &mut BTreeSet<PathBuf>) -> Result<PathBuf, OutputError> {
        let Pending {
            tmp,
            dest,
            mut registered,
        } = self;
        if let Some(p) = registered.0.take() {
            registry.remove(&p);
        }
        tmp.persist(&dest).map_err(|e| OutputError {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }
}

/// A set of pending outputs renamed into place together.
#[derive(Debug, Default)]
pub struct Outputs {
    files: Vec<Pending>,
}

impl Outputs {
    /// An empty set.
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// Adds a file; files are renamed in the order they were added.
    pub fn push(&mut self, file: Pending) {
        self.files.push(file);
    }

    /// Syncs every file, then renames them into place in order, and returns
    /// their paths. The caller adds the image last: when a crash interrupts
    /// the renames, an old image finds itself beside new checksums, which
    /// fail to verify, rather than a new image beside stale ones that an
    /// unwary reader might trust.
    pub fn persist(self) -> Result<Vec<PathBuf>, OutputError> {
        let mut files = self.files;
        for f in &mut files {
            f.seal()?;
        }
        let mut done = Vec::with_capacity(files.len());
        let mut result = Ok(());
        let mut files = files.into_iter();
        // All of them or, when a signal came first, none.
        let mut registry = registry();
        for f in files.by_ref() {
            match f.rename(&mut registry) {
                Ok(p) => done.push(p),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // The lock goes before the files not renamed, whose drop takes it.
        drop(registry);
        drop(files);
        result.map(|()| done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_appears_until_persisted_and_nothing_stays_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("out/a.img");
        let b = dir.path().join("out/a.img.sha256");
        let mut outputs = Outputs::new();
        outputs.push(Pending::with_bytes(&b, b"sum\n").unwrap());
        let mut img = Pending::create(&a).unwrap();
        img.file().write_all(b"abc").unwrap();
        assert_eq!(
            img.sha256().unwrap(),
            (
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
                3
            )
        );
        assert!(!a.exists() && !b.exists());
        outputs.push(img);
        let done = outputs.persist().unwrap();
        assert_eq!(done, [b.clone(), a.clone()]);
        assert_eq!(fs::read(&a).unwrap(), b"abc");
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);

        let dropped = Pending::with_bytes(&dir.path().join("out/c"), b"x").unwrap();
        drop(dropped);
        let left: Vec<_> = fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, ["a.img", "a.img.sha256"]);
    }
}
