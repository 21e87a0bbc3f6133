//! The cache directory: verified sources, build outputs, logs, the toolchain.
//!
//! ```text
//! $XDG_CACHE_HOME/cartbuild/  (or ~/.cache/cartbuild, or --cache DIR)
//!   sources/sha256/<hex>     verified downloads, named by their content's sha256
//!   builds/<key>/out/        a package's output tree, named by its build key
//!   builds/<key>/build.log   the log of the build that made it
//!   logs/<name>-<key>.log    the log of the latest attempt (kept on failure)
//!   toolchain/<identity>/    the compiler wrapper and its kernel header directory
//!   tmp/                     downloads in progress, build work directories
//!   locks/                   one lock file per build key
//! ```
//!
//! Entries under `sources/` and `builds/` appear only by `rename(2)` of a
//! complete, verified temporary under `tmp/` (same filesystem), so a crash or a
//! failed check never leaves a partial entry behind; what a killed run left in
//! `tmp/` is removed by the next run that has the cache to itself.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

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
        ] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|source| CacheError::Create { path, source })?;
        }
        // Every cartbuild using this cache holds a shared lock on it. One that
        // gets the lock exclusively is alone, so whatever is in tmp/ was left by
        // an interrupted run (a killed build, a download cut short): remove it.
        let path = root.join("locks/cache.lock");
        let lock_err = |source| CacheError::Lock {
            path: path.clone(),
            source,
        };
        let held = File::create(&path).map_err(lock_err)?;
        if held.try_lock().is_ok() {
            if let Ok(rd) = fs::read_dir(root.join("tmp")) {
                for e in rd.flatten() {
                    let p = e.path();
                    let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                }
            }
            held.unlock().map_err(lock_err)?;
        }
        held.lock_shared().map_err(lock_err)?;
        Ok(Cache {
            root,
            _held: std::sync::Arc::new(held),
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
