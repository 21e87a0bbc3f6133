//! zig's compiled C runtime, made once and laid under every build that compiles with zig.
//!
//! `zig cc` and `zig c++` link musl, compiler-rt (and for C++ libc++, libc++abi and
//! libunwind) that zig compiles from source into its cache the first time a program is
//! linked: about a minute for C and as much again for C++ on 2 cores, in every build, because
//! each sandboxed build gets a private, empty zig cache (a cache one build could write
//! and another read would let a hostile build script plant objects in every later build).
//!
//! A seed is that cache filled once per zig version, target and kind (C, or C and C++),
//! by cartbuild itself rather than by any recipe: it links two fixed programs ([`SEED_C`],
//! [`SEED_CXX`]) at the optimisation levels that pick zig's runtime variants
//! ([`C_MODES`], [`CXX_MODES`]). A build then sees its zig cache
//! as an overlay ([`crate::sandbox::Layer`]): the seed below, read-only whatever the
//! script does, and its own empty directory above, where everything it writes lands. zig
//! finds the runtime already compiled; a variant the seed lacks is compiled into the upper
//! layer as before. What a build produces does not change (the same zig compiles the same
//! runtime either way), so the seed is not part of any build key.
//!
//! The seed's files belong to the sandbox's user ([`crate::sandbox::HOST_ID`] when
//! cartbuild is root): zig opens the manifests of its cache for writing (overlayfs then
//! copies them up), which a file of root's would refuse. No build sees the seed's own
//! directory, only the overlay.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::toolchain::make_dir_atomically;

/// Bumped when what a seed holds changes.
const SEED_FORMAT: &str = "cartbuild-zig-seed-1";

/// The optimisation levels a C seed is compiled at: each picks zig's runtime variant
/// (`-O2` and `-O3` one, `-Os` and `-Oz` another). `$CFLAGS` has `-O2`; some builds
/// (busybox) choose `-Os`.
pub const C_MODES: &[&str] = &["-O2", "-Os"];

/// The level of a C++ seed: `$CXXFLAGS` has `-Os` (C++ packages are built for size), and
/// the one C++ package of a recipe is usually alone in its build: a level it does not
/// use would only be work for nothing.
pub const CXX_MODES: &[&str] = &["-Os"];

/// The C program linked to fill a seed.
const SEED_C: &str = "#include <stdio.h>\nint main(void) { puts(\"seed\"); return 0; }\n";

/// The C++ program linked to fill a C++ seed.
const SEED_CXX: &str = "#include <iostream>\n#include <string>\nint main() { std::string s(\"seed\"); std::cout << s << std::endl; return 0; }\n";

/// Why a seed could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// zig failed.
    #[error("`{command}` failed: {message}")]
    Zig {
        /// The command.
        command: String,
        /// Its error output, or why it did not run.
        message: String,
    },
    /// The seed's directory could not be written.
    #[error("cannot write the zig seed {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Seeds being made or made by this process, by directory: whether each is ready.
static MADE: Mutex<BTreeMap<PathBuf, Arc<OnceLock<bool>>>> = Mutex::new(BTreeMap::new());

/// One zig runtime seed: where it is (or will be) and how to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Its directory in the cache; the zig cache itself is [`Seed::lower`].
    pub dir: PathBuf,
    zig: PathBuf,
    target: String,
    cxx: bool,
}

impl Seed {
    /// The seed of `zig` (whose `zig version` is `version`) for `target`, with libc++ when
    /// `cxx`.
    pub fn new(cache: &Cache, zig: &Path, version: &str, target: &str, cxx: bool) -> Seed {
        let mut h = Sha256::new();
        h.update(SEED_FORMAT);
        h.update([0]);
        h.update(version.trim());
        h.update([0]);
        h.update(target);
        h.update(if cxx { "\0c++" } else { "\0c" });
        for m in Self::modes_for(cxx) {
            h.update([0]);
            h.update(m);
        }
        Seed {
            dir: cache.toolchain(&hex::encode(h.finalize())),
            zig: zig.to_path_buf(),
            target: target.to_string(),
            cxx,
        }
    }

    fn modes_for(cxx: bool) -> &'static [&'static str] {
        if cxx { CXX_MODES } else { C_MODES }
    }

    /// The zig cache the overlay puts below a build's own.
    pub fn lower(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Whether it is made.
    pub fn is_ready(&self) -> bool {
        self.lower().is_dir()
    }

    /// A line for the progress output.
    pub fn describe(&self) -> String {
        format!(
            "zig's {} runtime for {}",
            if self.cxx { "C and C++" } else { "C" },
            self.target
        )
    }

    /// Makes the seed unless it is made; returns how long that took (zero when it was
    /// there). Made as toolchain directories are ([`make_dir_atomically`]): complete or
    /// absent, also with two cartbuilds at once.
    pub fn ensure(&self) -> Result<Duration, SeedError> {
        let started = Instant::now();
        if self.is_ready() {
            return Ok(Duration::ZERO);
        }
        // What failed inside, kept whole (the helper passes on only I/O errors).
        let mut failed = None;
        make_dir_atomically(&self.dir, |tmp| {
            self.fill(tmp).map_err(|e| {
                let message = e.to_string();
                failed = Some(e);
                std::io::Error::other(message)
            })
        })
        .map_err(|source| {
            failed.take().unwrap_or_else(|| SeedError::Io {
                path: self.dir.clone(),
                source,
            })
        })?;
        Ok(started.elapsed())
    }

    /// Fills the temporary directory `tmp` of a seed: zig's cache in `tmp/cache`, handed
    /// to the sandbox user.
    fn fill(&self, tmp: &Path) -> Result<(), SeedError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SeedError::Io { path, source }
        };
        let cache = tmp.join("cache");
        let scratch = tmp.join("scratch");
        fs::create_dir(&cache).map_err(io(&cache))?;
        fs::create_dir(&scratch).map_err(io(&scratch))?;
        let mut programs = vec![("cc", "seed.c", SEED_C)];
        if self.cxx {
            programs.push(("c++", "seed.cc", SEED_CXX));
        }
        for (_, file, text) in &programs {
            let path = scratch.join(file);
            fs::write(&path, text).map_err(io(&path))?;
        }
        for mode in Self::modes_for(self.cxx) {
            for (driver, file, _) in &programs {
                self.link(&cache, &scratch, driver, mode, file)?;
            }
        }
        // zig's scratch space in the cache is not part of what it looks up.
        let _ = fs::remove_dir_all(cache.join("tmp"));
        fs::remove_dir_all(&scratch).map_err(io(&scratch))?;
        crate::sandbox::hand_over(&[&cache]).map_err(|e| SeedError::Io {
            path: cache.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// `zig DRIVER -target T -static MODE FILE`, with `cache` as zig's global cache and
    /// nothing of the caller's environment but `PATH`.
    fn link(
        &self,
        cache: &Path,
        scratch: &Path,
        driver: &str,
        mode: &str,
        file: &str,
    ) -> Result<(), SeedError> {
        let args = [
            driver,
            "-target",
            &self.target,
            "-static",
            mode,
            file,
            "-o",
            "seed",
        ];
        let command = format!("{} {}", self.zig.display(), args.join(" "));
        let mut zig = Command::new(&self.zig);
        zig.args(args)
            .current_dir(scratch)
            .env_clear()
            .env("PATH", crate::build::SCRIPT_PATH)
            .env("HOME", scratch)
            .env("ZIG_GLOBAL_CACHE_DIR", cache)
            .env("ZIG_LOCAL_CACHE_DIR", scratch.join("zig-local"));
        // zig dies with the thread that waits for it (prctl(2), PR_SET_PDEATHSIG: the
        // thread that forked it), so a cartbuild killed while it makes a seed leaves no
        // zig compiling the runtime for minutes. The files zig is writing are in the
        // seed's temporary directory, never in the seed.
        // SAFETY: the closure runs in the child between fork and exec and makes one
        // prctl(2) call, which is async-signal-safe and touches no memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut zig, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let out = zig.output().map_err(|e| SeedError::Zig {
            command: command.clone(),
            message: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(SeedError::Zig {
                command,
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// [`Seed::ensure`] once per process for every caller: the first makes it (calling
    /// `starting` first when there is work to do, and telling `report` how it went), the
    /// others wait for it. Whether the seed can be used; a
    /// seed that could not be made is not (builds then compile the runtime themselves).
    pub fn ensure_once(
        &self,
        starting: impl FnOnce(),
        report: impl FnOnce(&Result<Duration, SeedError>),
    ) -> bool {
        let cell = {
            let mut made = MADE.lock().unwrap_or_else(PoisonError::into_inner);
            made.entry(self.dir.clone()).or_default().clone()
        };
        *cell.get_or_init(|| {
            if !self.is_ready() {
                starting();
            }
            let made = self.ensure();
            report(&made);
            made.is_ok()
        })
    }
}
