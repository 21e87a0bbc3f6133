//! The cache directory: verified sources, build outputs, logs, the toolchain.
//!
//! ```text
//! $XDG_CACHE_HOME/cartbuild/  (or ~/.cache/cartbuild, or --cache DIR)
//!   sources/sha256/<hex>     verified downloads, named by their content's sha256
//!   builds/<key>/out/        a package's output tree, named by its build key
//!   builds/<key>/build.log   the log of the build that made it
//!   builds/<key>/record.json what out/ held when it was made (a digest of the tree)
//!   logs/<name>-<key>.log    the log of the latest attempt (kept on failure)
//!   toolchain/<identity>/    the compiler wrapper and its kernel header directory
//!   tmp/                     downloads in progress, build work directories
//!   locks/                   one lock file per build key
//!   roots/<hash>.json        what the last two builds of one recipe used
//!   images/<hash>.json       the key and files of the image last written at one path
//!                            (see crate::uptodate)
//! ```
//!
//! Entries under `sources/` and `builds/` appear only by `rename(2)` of a
//! complete, verified temporary under `tmp/` (same filesystem), so a crash or a
//! failed check never leaves a partial entry behind; what a killed run left in
//! `tmp/` is removed by the next run that has the cache to itself.
//!
//! **Verified where used.** A cached entry is trusted only as far as it checks
//! out when it is about to be used: a source against its sha256 (by the
//! fetcher, and again while it is unpacked), a build output against the record
//! written beside it when it was made ([`seal`], [`Cache::verified_build`]). One
//! that does not match is removed with a warning and made again, never used.
//!
//! **Nothing piles up.** Each build records, before it builds anything, what its
//! recipe uses ([`Cache::record_root`]: build keys and source hashes; the last
//! [`GENERATIONS`] builds of each recipe file are kept). When it ends, and no
//! other cartbuild has the cache open, [`Cache::collect`] removes every output,
//! source, log and lock that no recorded build uses, and the records of recipe
//! files that no longer exist: an output superseded by an edit of its recipe
//! goes two builds later, and nothing of an abandoned recipe survives its next
//! collection. The toolchain directories (a few kilobytes each) are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// The record beside a build output (`builds/<key>/record.json`).
pub const RECORD: &str = "record.json";

/// How many builds of one recipe file keep what they used (the latest and the one
/// before: going back to the previous version of a recipe rebuilds nothing).
pub const GENERATIONS: usize = 2;

/// What one build of a recipe uses from the cache (see [`Cache::record_root`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Uses {
    /// Build keys of its packages (whether built yet or not).
    pub keys: BTreeSet<String>,
    /// sha256 of its sources.
    pub sources: BTreeSet<String>,
}

/// `roots/<hash>.json`: the recipe file and what its latest builds used, newest first.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Root {
    recipe: PathBuf,
    generations: Vec<Uses>,
}

/// What [`Cache::collect`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collected {
    /// Build outputs.
    pub outputs: usize,
    /// Sources.
    pub sources: usize,
    /// Bytes of files in them.
    pub bytes: u64,
}

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A directory could not be created.
    #[error("cannot create cache directory {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No cache directory could be determined.
    #[error("no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache DIR")]
    NoHome,
    /// A lock file could not be taken.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A cache directory, held open with a shared lock (see [`Cache::open`]).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    _held: std::sync::Arc<File>,
    /// Build keys whose output this process has verified.
    verified: Arc<Mutex<BTreeSet<String>>>,
}

impl Cache {
    /// The default location: `$XDG_CACHE_HOME/cartbuild`, else `~/.cache/cartbuild`.
    pub fn default_dir() -> Result<PathBuf, CacheError> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or(CacheError::NoHome)?;
        Ok(base.join("cartbuild"))
    }

    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|source| CacheError::Create {
                    path: root.to_path_buf(),
                    source,
                })?
                .join(root)
        };
        for dir in [
            "sources/sha256",
            "builds",
            "logs",
            "toolchain",
            "tmp",
            "locks",
            "roots",
        ] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|source| CacheError::Create { path, source })?;
        }
        // Every cartbuild using this cache holds a shared lock on it. One that
        // gets the lock exclusively is alone, so whatever is in tmp/ was left by
        // an interrupted run (a killed build, a download cut short): remove it, and
        // the half-made toolchain directories and zig seeds in toolchain/.
        let path = root.join("locks/cache.lock");
        let lock_err = |source| CacheError::Lock {
            path: path.clone(),
            source,
        };
        let held = File::create(&path).map_err(lock_err)?;
        if held.try_lock().is_ok() {
            remove_leftovers(&root.join("tmp"), |_| true);
            remove_leftovers(&root.join("toolchain"), |name| {
                name.starts_with(crate::toolchain::TEMPORARY_PREFIX)
            });
            held.unlock().map_err(lock_err)?;
        }
        held.lock_shared().map_err(lock_err)?;
        Ok(Cache {
            root,
            _held: std::sync::Arc::new(held),
            verified: Arc::default(),
        })
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a verified source with this sha256 lives.
    pub fn source(&self, sha256: &str) -> PathBuf {
        self.root.join("sources/sha256").join(sha256)
    }

    /// Where a build output with this key lives.
    pub fn build(&self, key: &str) -> PathBuf {
        self.root.join("builds").join(key)
    }

    /// The log of the latest build attempt of a package.
    pub fn log(&self, name: &str, key: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{name}-{}.log", &key[..16.min(key.len())]))
    }

    /// How long the last build of `package` here took, in seconds, when one was recorded
    /// ([`Cache::record_build_seconds`]): the scheduler's estimate of the next.
    pub fn build_seconds(&self, package: &str) -> Option<f64> {
        let text = fs::read_to_string(self.root.join("times").join(package)).ok()?;
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
    }

    /// Records how long a build of `package` took (written whole, then renamed): the CPU
    /// time of its sandbox when there was one, else its wall time.
    pub fn record_build_seconds(&self, package: &str, seconds: f64) -> io::Result<()> {
        let dir = self.root.join("times");
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{package}.tmp"));
        fs::write(&tmp, format!("{seconds:.1}\n"))?;
        fs::rename(&tmp, dir.join(package))
    }

    /// The directory for temporaries (same filesystem as the cache entries).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The toolchain directory for an identity.
    pub fn toolchain(&self, identity: &str) -> PathBuf {
        self.root
            .join("toolchain")
            .join(&identity[..16.min(identity.len())])
    }

    /// Whether the build output of `package` under `key` is cached and matches
    /// its record. One that does not (changed, or without a record) is removed
    /// with a warning on stderr, so that it is built again; one that matches is
    /// not hashed again by this process.
    pub fn verified_build(&self, package: &str, key: &str) -> bool {
        let dir = self.build(key);
        if self.verified.lock().is_ok_and(|v| v.contains(key)) && dir.join("out").is_dir() {
            return true;
        }
        if fs::symlink_metadata(&dir).is_err() {
            return false;
        }
        match check_record(&dir) {
            Ok(()) => {
                if let Ok(mut v) = self.verified.lock() {
                    v.insert(key.to_string());
                }
                true
            }
            Err(why) => {
                let removed = match self.discard(&dir) {
                    Ok(()) => "removed it; building it again".to_string(),
                    Err(e) => format!("cannot remove it ({e}): remove {} by hand", dir.display()),
                };
                eprintln!(
                    "cartbuild: warning: package {package}: the cached output {} {why}: {removed}",
                    dir.display()
                );
                false
            }
        }
    }

    /// Moves `dir` out of the way (into tmp/, one rename) and removes it.
    fn discard(&self, dir: &Path) -> io::Result<()> {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let aside = self
            .tmp()
            .join(format!("discard-{name}-{}", std::process::id()));
        fs::rename(dir, &aside)?;
        remove_tree(&aside)
    }

    /// Records that the latest build of `recipe` (any path to it) uses `uses`, as the
    /// newest of its [`GENERATIONS`]; written whole, by rename, before anything is built,
    /// so that what a failed build finished stays for the next attempt.
    pub fn record_root(&self, recipe: &Path, uses: &Uses) -> io::Result<()> {
        let recipe = fs::canonicalize(recipe)?;
        let name = hex::encode(&Sha256::digest(recipe.as_os_str().as_encoded_bytes())[..16]);
        let path = self.root.join("roots").join(format!("{name}.json"));
        let mut generations = read_root(&path).map(|r| r.generations).unwrap_or_default();
        generations.retain(|g| g != uses);
        generations.insert(0, uses.clone());
        generations.truncate(GENERATIONS);
        let json = serde_json::to_string_pretty(&Root {
            recipe,
            generations,
        })
        .map_err(io::Error::other)?;
        let tmp = self
            .tmp()
            .join(format!("root-{name}-{}", std::process::id()));
        fs::write(&tmp, json + "\n")?;
        fs::rename(&tmp, &path)
    }

    /// Removes every build output, source, log and lock that no recorded build uses,
    /// and the records of recipe files that are gone; `None` (nothing done) when another
    /// cartbuild has the cache open, since what it uses may not be recorded yet.
    pub fn collect(&self) -> io::Result<Option<Collected>> {
        // flock converts our shared lock; a failed attempt drops it, so take it again.
        if self._held.try_lock().is_err() {
            self._held.lock_shared()?;
            return Ok(None);
        }
        let collected = self.collect_alone();
        self._held.lock_shared()?;
        collected.map(Some)
    }

    fn collect_alone(&self) -> io::Result<Collected> {
        let mut used = Uses::default();
        for e in fs::read_dir(self.root.join("roots"))?.flatten() {
            match read_root(&e.path()) {
                Some(root) if fs::metadata(&root.recipe).is_ok_and(|m| m.is_file()) => {
                    for g in root.generations {
                        used.keys.extend(g.keys);
                        used.sources.extend(g.sources);
                    }
                }
                // Its recipe is gone, or it is not a record: nothing keeps its entries.
                _ => fs::remove_file(e.path())?,
            }
        }
        let mut done = Collected::default();
        for e in fs::read_dir(self.root.join("builds"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !used.keys.contains(&name) {
                done.bytes += bytes_of(&e.path());
                self.discard(&e.path())?;
                done.outputs += 1;
            }
        }
        for e in fs::read_dir(self.root.join("sources/sha256"))?.flatten() {
            if !used.sources.contains(&*e.file_name().to_string_lossy()) {
                done.bytes += bytes_of(&e.path());
                fs::remove_file(e.path())?;
                done.sources += 1;
            }
        }
        // logs/<name>-<first 16 of the key>.log and locks/<key>.lock.
        let short: BTreeSet<&str> = used.keys.iter().map(|k| &k[..16.min(k.len())]).collect();
        for e in fs::read_dir(self.root.join("logs"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name
                .strip_suffix(".log")
                .and_then(|n| n.rsplit_once('-'))
                .map(|(_, k)| k);
            if !key.is_some_and(|k| short.contains(k)) {
                fs::remove_file(e.path())?;
            }
        }
        for e in fs::read_dir(self.root.join("locks"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(key) = name.strip_suffix(".lock")
                && key != "cache"
                && !used.keys.contains(key)
            {
                fs::remove_file(e.path())?;
            }
        }
        Ok(done)
    }

    /// Takes an exclusive lock named `name` (blocking until it is free); the lock
    /// is held until the returned file is dropped.
    pub fn lock(&self, name: &str) -> Result<File, CacheError> {
        let path = self.root.join("locks").join(name);
        let file = File::create(&path).map_err(|source| CacheError::Lock {
            path: path.clone(),
            source,
        })?;
        file.lock()
            .map_err(|source| CacheError::Lock { path, source })?;
        Ok(file)
    }
}

/// A root record, if `path` holds one.
fn read_root(path: &Path) -> Option<Root> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Bytes of the files under `path` (a file or a tree).
fn bytes_of(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Removes a tree, making read-only directories writable first.
pub fn remove_tree(root: &Path) -> io::Result<()> {
    for e in walkdir::WalkDir::new(root).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o755));
        }
    }
    fs::remove_dir_all(root)
}

/// What a build output held when it was made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The record's format.
    pub format: u32,
    /// [`tree_digest`] of `out/`.
    pub sha256: String,
    /// Entries under `out/`.
    pub entries: u64,
    /// Bytes of its files.
    pub bytes: u64,
}

/// A digest of everything in a tree that reaches an image or a dependent
/// build: each entry's relative path, kind, permission bits, a file's content
/// and a link's target, in sorted order, and which names are one file (hard
/// links). Times and owners are left out. Returns (sha256, entries, bytes).
pub fn tree_digest(root: &Path) -> io::Result<(String, u64, u64)> {
    let mut h = Sha256::new();
    let mut first: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let (mut entries, mut bytes) = (0u64, 0u64);
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.map_err(io::Error::other)?;
        let rel = e.path().strip_prefix(root).unwrap_or(e.path());
        let meta = fs::symlink_metadata(e.path())?;
        entries += 1;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(format!("\0{:o}\0", meta.mode() & 0o7777));
        let ft = meta.file_type();
        if ft.is_symlink() {
            h.update(b"l");
            h.update(fs::read_link(e.path())?.as_os_str().as_encoded_bytes());
        } else if ft.is_dir() {
            h.update(b"d");
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(p) = first.get(&(meta.dev(), meta.ino())) {
                    h.update(b"h");
                    h.update(p.as_os_str().as_encoded_bytes());
                    h.update([0]);
                    continue;
                }
                first.insert((meta.dev(), meta.ino()), rel.to_path_buf());
            }
            h.update(b"f");
            let mut f = File::open(e.path())?;
            bytes += io::copy(&mut f, &mut h)?;
        } else {
            h.update(b"?");
        }
        h.update([0]);
    }
    Ok((hex::encode(h.finalize()), entries, bytes))
}

/// Writes the record of `result/out` into `result` (a build about to be
/// renamed into `builds/<key>/`).
pub fn seal(result: &Path) -> io::Result<()> {
    let (sha256, entries, bytes) = tree_digest(&result.join("out"))?;
    let record = Record {
        format: 1,
        sha256,
        entries,
        bytes,
    };
    let json = serde_json::to_string_pretty(&record).map_err(io::Error::other)?;
    fs::write(result.join(RECORD), json + "\n")
}

/// Checks a cached build directory against its record; the error says how it
/// differs.
fn check_record(dir: &Path) -> Result<(), String> {
    let out = dir.join("out");
    if !fs::symlink_metadata(&out).is_ok_and(|m| m.is_dir()) {
        return Err("has no out/ directory".into());
    }
    let text = match fs::read_to_string(dir.join(RECORD)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("has no {RECORD} (made by an older cartbuild?)"));
        }
        Err(e) => return Err(format!("has an unreadable {RECORD} ({e})")),
    };
    let record: Record =
        serde_json::from_str(&text).map_err(|e| format!("has a malformed {RECORD} ({e})"))?;
    let (sha256, entries, bytes) =
        tree_digest(&out).map_err(|e| format!("cannot be read ({e})"))?;
    if sha256 != record.sha256 {
        return Err(format!(
            "does not match its record (out/ holds {entries} entries, {bytes} bytes, digest {sha256}; the record says {} entries, {} bytes, digest {})",
            record.entries, record.bytes, record.sha256
        ));
    }
    Ok(())
}

/// Removes every entry of `dir` (a directory with what it holds, or a file) whose name
/// `leftover` picks; what cannot be removed stays, for the next run to try.
fn remove_leftovers(dir: &Path, leftover: impl Fn(&str) -> bool) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if !leftover(&e.file_name().to_string_lossy()) {
            continue;
        }
        let p = e.path();
        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_output_fails_its_record_and_is_discarded() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = "k".repeat(64);
        let dir = cache.build(&key);
        fs::create_dir_all(dir.join("out/bin")).unwrap();
        fs::write(dir.join("out/bin/a"), "a").unwrap();
        fs::hard_link(dir.join("out/bin/a"), dir.join("out/bin/b")).unwrap();
        assert!(!cache.verified_build("p", &key), "no record, not used");
        assert!(!dir.exists(), "and removed");

        fs::create_dir_all(dir.join("out/bin")).unwrap();
        fs::write(dir.join("out/bin/a"), "a").unwrap();
        fs::hard_link(dir.join("out/bin/a"), dir.join("out/bin/b")).unwrap();
        seal(&dir).unwrap();
        let fresh = Cache::open(d.path()).unwrap();
        assert!(fresh.verified_build("p", &key));

        // Same bytes, but no longer one file: a change.
        let before = tree_digest(&dir.join("out")).unwrap();
        fs::remove_file(dir.join("out/bin/b")).unwrap();
        fs::write(dir.join("out/bin/b"), "a").unwrap();
        assert_ne!(tree_digest(&dir.join("out")).unwrap().0, before.0);
        let fresh = Cache::open(d.path()).unwrap();
        assert!(!fresh.verified_build("p", &key));
        assert!(!dir.exists());
        assert_eq!(fs::read_dir(cache.tmp()).unwrap().count(), 0);
    }
}
