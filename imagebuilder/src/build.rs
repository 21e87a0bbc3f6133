//! Building packages into cached output trees, in dependency order.
//!
//! Each package's output is cached under its build key ([`crate::plan`]): a key
//! already in the cache is never rebuilt. Otherwise, in a work directory under the
//! cache's `tmp/`:
//!
//! 1. `unpack`: the verified source is unpacked (its single top-level directory,
//!    if it has one, becomes the current directory);
//! 2. `deps`: the outputs of every package it depends on (directly or not) are
//!    merged into `$DEPS`;
//! 3. `script`: the recipe's script runs under `/bin/sh -e -x` with the
//!    environment of [`script_env`] and nothing else of the caller's, in the
//!    [`crate::sandbox`] (unless the builder has none: `--no-sandbox`); it
//!    installs into `$OUT`;
//!    (An `archive` has no script: its output is what `install` selects of its
//!    tarball, nothing else.)
//! 4. `install`: the paths `install` selects must exist, every ELF file among
//!    them must be static, and they are stripped unless the recipe says
//!    `strip = false`.
//!
//! The finished tree is renamed into `builds/<key>/`. Packages whose dependencies
//! are done build in parallel, up to `jobs` at once. A failure names the package
//! and the step, prints the last 40 lines of the log and keeps the log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};

use crate::cache::{Cache, CacheError};
use crate::plan::{Install, Package, Plan};
use crate::progress::Reporter;
use crate::recipe::Kind;
use crate::sandbox::{self, Bind, Layer, Sandbox, Spec};
use crate::seed::Seed;
use crate::stage::{StageError, check_static, copy_paths, copy_tree, select};
use crate::toolchain::Toolchain;

/// How many log lines a failure shows.
pub const LOG_TAIL: usize = 40;

/// The mount point the image is used at; `$PREFIX` in scripts.
pub const MOUNT_POINT: &str = cartimage::manifest::MOUNT_POINT;

/// The `PATH` scripts run with.
pub const SCRIPT_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// The process groups of the scripts running without a sandbox (each its own
/// group, see `run_build`), for [`stop_scripts`]. Sandboxed scripts need no list:
/// their sandbox dies with cartbuild (see [`crate::sandbox`]).
static UNSANDBOXED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn unsandboxed() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    UNSANDBOXED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kills (SIGKILL) the process group of every script running without a sandbox;
/// for a handler of SIGINT/SIGTERM that is about to exit (sandboxed builds die
/// with the process). Returns the lock, which keeps new scripts from starting.
pub fn stop_scripts() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    let g = unsandboxed();
    for pgid in g.iter() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(*pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    g
}

/// Why a package could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A step failed; its log's tail was printed.
    #[error("package {package}: step {step} failed: {message}{}", log.as_ref().map(|l| format!("; log: {}", l.display())).unwrap_or_default())]
    Step {
        /// The package.
        package: String,
        /// The step (`unpack`, `deps`, `script`, `install`).
        step: &'static str,
        /// What failed.
        message: String,
        /// The log file, kept for inspection.
        log: Option<PathBuf>,
    },
    /// An output is not fit for the image (dynamic ELF, missing install path).
    #[error(transparent)]
    Output(#[from] StageError),
    /// The cache could not be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A `build` package but no toolchain.
    #[error("package {0} is built from source but no toolchain was set up")]
    NoToolchain(String),
    /// A source was not fetched before building.
    #[error("package {0}: its source was not fetched")]
    NoSource(String),
    /// The sandbox could not be prepared.
    #[error("package {package}: {source}")]
    Sandbox {
        /// The package.
        package: String,
        /// What failed.
        source: sandbox::SandboxError,
    },
}

/// A package's output tree.
#[derive(Debug, Clone)]
pub struct Output {
    /// The tree (`builds/<key>/out`).
    pub dir: PathBuf,
    /// The build key.
    pub key: String,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Builds a plan's packages.
pub struct Builder<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The toolchain (needed if any package is `kind = "build"`).
    pub toolchain: Option<&'a Toolchain>,
    /// The cache.
    pub cache: &'a Cache,
    /// Verified source files by package name.
    pub sources: &'a BTreeMap<String, PathBuf>,
    /// Packages built at once, and `$JOBS` of each build.
    pub jobs: usize,
    /// Progress.
    pub reporter: Reporter,
    /// The sandbox scripts run in; `None` runs them directly (`--no-sandbox`).
    pub sandbox: Option<&'a Sandbox>,
}

impl Builder<'_> {
    /// Where a package's output is (or will be) cached.
    pub fn output_dir(cache: &Cache, key: &str) -> PathBuf {
        cache.build(key).join("out")
    }

    /// Whether a package's output is already cached.
    pub fn is_cached(cache: &Cache, pkg: &Package) -> bool {
        cache.verified_build(&pkg.name, &pkg.key)
    }

    /// Builds every package (or takes it from the cache); returns each output by
    /// package name. Stops at the first failure, after letting running builds end.
    pub fn build_all(&self) -> Result<BTreeMap<String, Output>, BuildError> {
        let mut done: BTreeMap<String, Output> = BTreeMap::new();
        let mut started: BTreeSet<String> = BTreeSet::new();
        let mut failure: Option<BuildError> = None;
        let jobs = self.jobs.max(1);
        // Ready packages start longest remaining chain first, so that a long build
        // (gdb) runs beside the short ones instead of alone at the end.
        let weights: BTreeMap<String, u64> = self
            .plan
            .packages
            .iter()
            .map(|p| (p.name.clone(), self.weight(p)))
            .collect();
        let chain = chains(self.plan, &weights);
        let by_priority = critical_path_order(self.plan, &chain);
        std::thread::scope(|scope| {
            // zig's runtime, compiled while the first packages build (those that need it
            // wait for it in `sandboxed`).
            for seed in self.seeds_needed() {
                scope.spawn(move || self.seed_ready(seed));
            }
            let (tx, rx) = mpsc::channel::<(String, Result<Output, BuildError>)>();
            let mut running = 0usize;
            loop {
                if failure.is_none() {
                    for pkg in &by_priority {
                        if running >= jobs {
                            break;
                        }
                        if started.contains(&pkg.name)
                            || !pkg.depends.iter().all(|d| done.contains_key(d))
                        {
                            continue;
                        }
                        started.insert(pkg.name.clone());
                        // The longest chain of work still ahead (the first package of
                        // by_priority not done yet heads it): builds on it, or nearly
                        // (within a tenth), run at normal priority, the others yield.
                        let lead = by_priority
                            .iter()
                            .find(|p| !done.contains_key(&p.name))
                            .map_or(0, |p| chain[p.name.as_str()]);
                        let own = chain[pkg.name.as_str()];
                        let nice = if own.saturating_mul(10) >= lead.saturating_mul(9) {
                            0
                        } else {
                            BACKGROUND_NICE
                        };
                        let deps: Vec<Output> = self
                            .plan
                            .closure(&pkg.name)
                            .iter()
                            .filter_map(|p| done.get(&p.name).cloned())
                            .collect();
                        let tx = tx.clone();
                        running += 1;
                        scope.spawn(move || {
                            let r = self.build_one(pkg, &deps, nice);
                            // The receiver outlives every sender in this scope.
                            let _ = tx.send((pkg.name.clone(), r));
                        });
                    }
                }
                if running == 0 {
                    break;
                }
                // OK to unwrap: `tx` is alive in this scope, so recv cannot fail.
                let (name, result) = rx.recv().unwrap();
                running -= 1;
                match result {
                    Ok(out) => {
                        done.insert(name, out);
                    }
                    Err(e) => {
                        if failure.is_none() {
                            failure = Some(e);
                        }
                    }
                }
            }
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// The zig runtime seeds that packages still to build will compile over (none
    /// without the sandbox, whose scripts share the toolchain's zig cache).
    fn seeds_needed(&self) -> Vec<&Seed> {
        let (Some(toolchain), Some(_)) = (self.toolchain, self.sandbox) else {
            return Vec::new();
        };
        let to_build: Vec<&Package> = self
            .plan
            .packages
            .iter()
            .filter(|p| p.kind == Kind::Build && !Self::is_cached(self.cache, p))
            .collect();
        let mut seeds = Vec::new();
        if let Some(seed) = &toolchain.seed
            && !to_build.is_empty()
        {
            seeds.push(seed);
        }
        if let Some(cxx) = &toolchain.cxx
            && to_build.iter().any(|p| p.cxx)
        {
            seeds.push(&cxx.seed);
        }
        seeds
    }

    /// Makes `seed` unless it is made (or being made: then waits for it); whether builds
    /// can use it. Says so when it is made here, or could not be.
    fn seed_ready(&self, seed: &Seed) -> bool {
        let starting = || {
            self.reporter.line(&format!(
                "[zig] compiling {} once, for every build that uses zig ({})",
                seed.describe(),
                seed.dir.display()
            ))
        };
        seed.ensure_once(starting, |made| match made {
            Ok(took) if !took.is_zero() => self.reporter.line(&format!(
                "[zig] {} done ({:.1} s)",
                seed.describe(),
                took.as_secs_f64()
            )),
            Ok(_) => {}
            Err(e) => self.reporter.line(&format!(
                "cartbuild: warning: {e}: each build compiles {} itself",
                seed.describe()
            )),
        })
    }

    /// How long `pkg` is expected to take, in milliseconds (at least 1): nothing when its
    /// output is cached; else as long as its last build in this cache took (its CPU time,
    /// see [`Cache::record_build_seconds`]); else a guess
    /// from its source's size, 1 ms per 100 bytes, four times that for C++ (a 23 MiB gdb
    /// of C++ takes far longer than a 50 MiB OpenSSL, whose tarball is mostly tests).
    fn weight(&self, pkg: &Package) -> u64 {
        if pkg.kind != Kind::Build || Self::is_cached(self.cache, pkg) {
            return 1;
        }
        if let Some(seconds) = self.cache.build_seconds(&pkg.name) {
            return ((seconds * 1000.0) as u64).max(1);
        }
        let bytes = self
            .sources
            .get(&pkg.name)
            .and_then(|s| fs::metadata(s).ok())
            .map_or(0, |m| m.len());
        let factor = if pkg.cxx { 4 } else { 1 };
        (bytes / 100).saturating_mul(factor).max(1)
    }

    fn build_one(&self, pkg: &Package, deps: &[Output], nice: i32) -> Result<Output, BuildError> {
        let final_dir = self.cache.build(&pkg.key);
        let out_dir = final_dir.join("out");
        let short = &pkg.key[..12];
        if Self::is_cached(self.cache, pkg) {
            self.reporter
                .step(&pkg.name, &format!("cached (key {short})"));
            return Ok(Output {
                dir: out_dir,
                key: pkg.key.clone(),
                cached: true,
            });
        }
        let _lock = self.cache.lock(&format!("{}.lock", pkg.key))?;
        if Self::is_cached(self.cache, pkg) {
            return Ok(Output {
                dir: out_dir,
                key: pkg.key.clone(),
                cached: true,
            });
        }
        let started = std::time::Instant::now();
        let work = WorkDir::new(self.cache.tmp().join(format!("work-{short}")));
        if work.path.exists() {
            fs::remove_dir_all(&work.path).map_err(io_err(pkg, "unpack"))?;
        }
        let out = work.path.join("out");
        for d in ["src", "out", "deps", "home", "tmp"] {
            fs::create_dir_all(work.path.join(d)).map_err(io_err(pkg, "unpack"))?;
        }
        let log_path = self.cache.log(&pkg.name, &pkg.key);
        let cpu = self.produce(pkg, deps, &work.path, &log_path, nice)?;
        self.check_and_strip(pkg, &work.path, &log_path)?;

        // Publish: out/ and the log, renamed into place in one step.
        let result = work.path.join("result");
        fs::create_dir(&result).map_err(io_err(pkg, "install"))?;
        fs::rename(&out, result.join("out")).map_err(io_err(pkg, "install"))?;
        if log_path.exists() {
            fs::copy(&log_path, result.join("build.log")).map_err(io_err(pkg, "install"))?;
        }
        crate::cache::seal(&result).map_err(io_err(pkg, "install"))?;
        fs::rename(&result, &final_dir).map_err(io_err(pkg, "install"))?;
        let took = started.elapsed().as_secs_f64();
        // Only a guide for the next build's schedule: not worth failing this one. The CPU
        // time when the sandbox measured it: a wall time taken beside other builds (or at
        // nice 10 behind one) says as much about them as about this package.
        let _ = self
            .cache
            .record_build_seconds(&pkg.name, cpu.unwrap_or(took));
        let cpu = cpu.map(|c| format!(", CPU {c:.1} s")).unwrap_or_default();
        self.reporter
            .step(&pkg.name, &format!("done (key {short}, {took:.1} s{cpu})"));
        Ok(Output {
            dir: out_dir,
            key: pkg.key.clone(),
            cached: false,
        })
    }

    /// Fills `work/out` with what `pkg` makes: built by its script, a file, an archive's
    /// selected paths, or a local path.
    fn produce(
        &self,
        pkg: &Package,
        deps: &[Output],
        work: &Path,
        log_path: &Path,
        nice: i32,
    ) -> Result<Option<f64>, BuildError> {
        let out = work.join("out");
        let source = || {
            self.sources
                .get(&pkg.name)
                .ok_or_else(|| BuildError::NoSource(pkg.name.clone()))
        };
        match pkg.kind {
            Kind::Build => return self.run_build(pkg, deps, source()?, work, log_path, nice),
            Kind::File => {
                if let Install::File(rel) = &pkg.install {
                    let to = out.join(rel);
                    if let Some(parent) = to.parent() {
                        fs::create_dir_all(parent).map_err(io_err(pkg, "install"))?;
                    }
                    fs::copy(source()?, &to).map_err(io_err(pkg, "install"))?;
                    crate::fetch::verify_copy(pkg, &to)
                        .map_err(|e| step_err(pkg, "install", e.to_string(), None))?;
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&to, fs::Permissions::from_mode(0o755))
                        .map_err(io_err(pkg, "install"))?;
                }
            }
            Kind::Archive => {
                self.reporter.step(&pkg.name, "unpack");
                let src_root = work.join("src");
                crate::unpack::unpack_package(pkg, source()?, &src_root)
                    .map_err(|e| step_err(pkg, "unpack", e.to_string(), None))?;
                let top = crate::unpack::single_top(&src_root).map_err(io_err(pkg, "unpack"))?;
                // Only what it installs is kept (and seen by its dependents): the rest of
                // a tarball would sit in the cache for nothing.
                let selected = select(&top, &pkg.install)
                    .map_err(|message| step_err(pkg, "install", message, None))?;
                copy_paths(&top, &selected, &out).map_err(io_err(pkg, "unpack"))?;
            }
            Kind::Local => {
                if let (Some(path), Install::Dir(rel)) = (&pkg.local, &pkg.install) {
                    let to = out.join(rel);
                    if path.is_dir() {
                        copy_tree(path, &to).map_err(io_err(pkg, "install"))?;
                    } else {
                        fs::create_dir_all(&to).map_err(io_err(pkg, "install"))?;
                        let name = path.file_name().unwrap_or_default();
                        fs::copy(path, to.join(name)).map_err(io_err(pkg, "install"))?;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Unpacks `source`, lays out the dependencies and runs the package's script (in the
    /// sandbox when there is one); returns the CPU time the sandbox measured.
    fn run_build(
        &self,
        pkg: &Package,
        deps: &[Output],
        source: &Path,
        work: &Path,
        log_path: &Path,
        nice: i32,
    ) -> Result<Option<f64>, BuildError> {
        let out = work.join("out");
        let toolchain = self
            .toolchain
            .ok_or_else(|| BuildError::NoToolchain(pkg.name.clone()))?;
        self.reporter
            .step(&pkg.name, &format!("unpack {}", pkg.version));
        let src_root = work.join("src");
        crate::unpack::unpack_package(pkg, source, &src_root)
            .map_err(|e| step_err(pkg, "unpack", e.to_string(), None))?;
        let src = crate::unpack::single_top(&src_root).map_err(io_err(pkg, "unpack"))?;
        let deps_dir = work.join("deps");
        for d in deps {
            copy_tree(&d.dir, &deps_dir).map_err(io_err(pkg, "deps"))?;
        }
        self.reporter.step(&pkg.name, "build");
        // OK to unwrap: build packages always have a script (plan::validate).
        let script = pkg.script.as_deref().unwrap_or("");
        let script_file = work.join("script.sh");
        fs::write(&script_file, format!("umask 022\nset -x\n{script}\n"))
            .map_err(io_err(pkg, "script"))?;
        let sandbox_err = |source| BuildError::Sandbox {
            package: pkg.name.clone(),
            source,
        };
        let cmd = match self.sandbox {
            None => {
                let cxx = match (pkg.cxx, &toolchain.cxx) {
                    (true, Some(c)) => Some(c.compiler()),
                    _ => None,
                };
                let env = script_env(
                    toolchain,
                    cxx.as_deref(),
                    work,
                    &out,
                    &deps_dir,
                    self.jobs,
                    self.plan.image.epoch,
                    pkg,
                );
                let mut cmd = Command::new("/bin/sh");
                // A group of its own, which an interrupted cartbuild kills whole.
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
                cmd.arg("-e")
                    .arg(&script_file)
                    .current_dir(&src)
                    .env_clear()
                    .envs(&env);
                cmd
            }
            Some(sb) => self
                .sandboxed(sb, toolchain, work, &src, pkg, nice)
                .map_err(sandbox_err)?,
        };
        let cpu = self.run_script(pkg, cmd, log_path)?;
        if self.sandbox.is_some() {
            sandbox::take_back(&out).map_err(sandbox_err)?;
        }
        Ok(cpu)
    }

    /// install: what goes into the image must exist, be static, be stripped.
    fn check_and_strip(
        &self,
        pkg: &Package,
        work: &Path,
        log_path: &Path,
    ) -> Result<(), BuildError> {
        let out = work.join("out");
        let selected = select(&out, &pkg.install).map_err(|message| {
            step_err(
                pkg,
                "install",
                message,
                log_path.exists().then(|| log_path.to_path_buf()),
            )
        })?;
        // Each inode once: the names of a hard-linked file (busybox's applets) are one
        // file, and strip rewrites a multiply-linked file in place (binutils keeps its
        // links), so checking and stripping every name would only repeat the work.
        let mut seen = std::collections::HashSet::new();
        let mut to_strip = Vec::new();
        for rel in &selected {
            let meta = fs::symlink_metadata(out.join(rel)).map_err(io_err(pkg, "install"))?;
            if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            check_static(&pkg.name, &out, rel, Some(self.plan.image.arch))?;
            if pkg.strip
                && crate::elf::inspect(&out.join(rel))
                    .map_err(StageError::from)?
                    .is_some_and(|info| info.is_loadable())
            {
                to_strip.push(rel.clone());
            }
        }
        if !to_strip.is_empty()
            && let Some(strip) = self.toolchain_for_strip()
        {
            self.strip(pkg, &strip, work, &to_strip)?;
        }
        Ok(())
    }

    /// The strip to use: the toolchain's, else the host's.
    fn toolchain_for_strip(&self) -> Option<PathBuf> {
        self.toolchain
            .map(|t| t.strip.clone())
            .or_else(|| crate::toolchain::which("strip"))
    }

    /// Strips `files` (relative to the work directory's `out/`) with `strip`: in the
    /// sandbox when there is one, since binutils then parses bytes a build script or a
    /// download made, and whatever it could be made to do stays in there.
    fn strip(
        &self,
        pkg: &Package,
        strip: &Path,
        work: &Path,
        files: &[PathBuf],
    ) -> Result<(), BuildError> {
        let out = work.join("out");
        let fail = |message: String| BuildError::Step {
            package: pkg.name.clone(),
            step: "install",
            message,
            log: None,
        };
        let sandbox_err = |source| BuildError::Sandbox {
            package: pkg.name.clone(),
            source,
        };
        let mut cmd = match self.sandbox {
            None => {
                let mut cmd = Command::new(strip);
                cmd.arg("--strip-all")
                    .arg("--")
                    .args(files.iter().map(|f| out.join(f)));
                cmd
            }
            Some(sb) => {
                let inside = Path::new(sandbox::BUILD_DIR).join("out");
                let root = work.join("root");
                fs::create_dir_all(&root)
                    .map_err(|e| fail(format!("cannot create {}: {e}", root.display())))?;
                let mut binds = Vec::new();
                let mut symlinks = Vec::new();
                sandbox::system(&mut binds, &mut symlinks);
                let strip = match self.toolchain {
                    Some(t) => {
                        sandbox::toolchain(&mut binds, t);
                        sandbox::relocate(t).strip
                    }
                    // The host's strip, wherever it is, read-only at a fixed path.
                    None => {
                        let at = Path::new(sandbox::TOOLCHAIN_DIR).join("strip");
                        binds.push(Bind {
                            source: fs::canonicalize(strip).map_err(|e| {
                                fail(format!("cannot find {}: {e}", strip.display()))
                            })?,
                            target: at.clone(),
                            writable: false,
                        });
                        at
                    }
                };
                binds.push(Bind {
                    source: out.clone(),
                    target: inside.clone(),
                    writable: true,
                });
                sandbox::hand_over(&[&out]).map_err(sandbox_err)?;
                let mut argv = vec![
                    strip.display().to_string(),
                    "--strip-all".into(),
                    "--".into(),
                ];
                argv.extend(files.iter().map(|f| inside.join(f).display().to_string()));
                let mut cmd = sb.command(&Spec {
                    root,
                    binds,
                    layers: Vec::new(),
                    nice: 0,
                    symlinks,
                    cwd: inside,
                    argv,
                });
                cmd.env_clear().env("PATH", SCRIPT_PATH);
                cmd
            }
        };
        let ran = cmd.stdin(Stdio::null()).output();
        if self.sandbox.is_some() {
            sandbox::take_back(&out).map_err(sandbox_err)?;
        }
        let ran = ran.map_err(|e| fail(format!("cannot run {}: {e}", strip.display())))?;
        if !ran.status.success() {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(fail(format!(
                "strip {} failed: {} (set strip = false to keep them as they are)",
                names.join(" "),
                String::from_utf8_lossy(&ran.stderr).trim()
            )));
        }
        Ok(())
    }

    /// A zig cache of the build's own at `target` (pushed onto `binds`, `layers` and
    /// `writable`): the directory `dir`, over `seed` when it is ready (see crate::seed).
    fn private_cache(
        &self,
        (binds, layers, writable): (&mut Vec<Bind>, &mut Vec<Layer>, &mut Vec<PathBuf>),
        dir: PathBuf,
        target: PathBuf,
        seed: Option<&Seed>,
    ) -> Result<(), sandbox::SandboxError> {
        fs::create_dir_all(&dir).map_err(prepare(&dir))?;
        match seed.filter(|s| self.seed_ready(s)) {
            Some(seed) => {
                let overlay_work = dir.with_extension("work");
                fs::create_dir_all(&overlay_work).map_err(prepare(&overlay_work))?;
                layers.push(Layer {
                    lower: seed.lower(),
                    upper: dir.clone(),
                    work: overlay_work.clone(),
                    target,
                });
                writable.push(overlay_work);
            }
            None => binds.push(Bind {
                source: dir.clone(),
                target,
                writable: true,
            }),
        }
        writable.push(dir);
        Ok(())
    }

    /// The command running a package's script in the sandbox: the work directory's
    /// parts at [`sandbox::BUILD_DIR`], the toolchain at [`sandbox::TOOLCHAIN_DIR`].
    fn sandboxed(
        &self,
        sb: &Sandbox,
        toolchain: &Toolchain,
        work: &Path,
        src: &Path,
        pkg: &Package,
        nice: i32,
    ) -> Result<Command, sandbox::SandboxError> {
        let inside = Path::new(sandbox::BUILD_DIR);
        let root = work.join("root");
        fs::create_dir_all(&root).map_err(prepare(&root))?;
        let mut binds = Vec::new();
        let mut symlinks = Vec::new();
        sandbox::system(&mut binds, &mut symlinks);
        sandbox::toolchain(&mut binds, toolchain);
        let mut writable = Vec::new();
        let mut layers = Vec::new();
        for rel in &toolchain.scratch {
            self.private_cache(
                (&mut binds, &mut layers, &mut writable),
                work.join("scratch").join(rel),
                Path::new(sandbox::TOOLCHAIN_DIR).join(rel),
                toolchain.seed.as_ref(),
            )?;
        }
        // C++ only for the packages that ask for it, each with a private zig cache.
        let cxx = match (pkg.cxx, &toolchain.cxx) {
            (true, Some(c)) => {
                sandbox::cxx(&mut binds, c);
                self.private_cache(
                    (&mut binds, &mut layers, &mut writable),
                    work.join("scratch-cxx"),
                    Path::new(sandbox::CXX_DIR).join(crate::toolchain::Cxx::SCRATCH),
                    Some(&c.seed),
                )?;
                Some(Path::new(sandbox::CXX_DIR).join("bin/c++"))
            }
            _ => None,
        };
        for (name, rw) in [
            ("src", true),
            ("out", true),
            ("home", true),
            ("deps", false),
        ] {
            binds.push(Bind {
                source: work.join(name),
                target: inside.join(name),
                writable: rw,
            });
            if rw {
                writable.push(work.join(name));
            }
        }
        binds.push(Bind {
            source: work.join("script.sh"),
            target: inside.join("script.sh"),
            writable: false,
        });
        let refs: Vec<&Path> = writable.iter().map(PathBuf::as_path).collect();
        sandbox::hand_over(&refs)?;
        let cwd = inside.join(src.strip_prefix(work).unwrap_or(Path::new("src")));
        let mut env = script_env(
            &sandbox::relocate(toolchain),
            cxx.as_deref(),
            inside,
            &inside.join("out"),
            &inside.join("deps"),
            self.jobs,
            self.plan.image.epoch,
            pkg,
        );
        // The private tmpfs, not a directory of the work tree.
        env.insert("TMPDIR".into(), "/tmp".into());
        let spec = Spec {
            root,
            binds,
            layers,
            nice,
            symlinks,
            cwd,
            argv: vec![
                "/bin/sh".into(),
                "-e".into(),
                inside.join("script.sh").display().to_string(),
            ],
        };
        let mut cmd = sb.command(&spec);
        cmd.env_clear().envs(&env);
        Ok(cmd)
    }

    fn run_script(
        &self,
        pkg: &Package,
        mut cmd: Command,
        log_path: &Path,
    ) -> Result<Option<f64>, BuildError> {
        let fail = |message: String| BuildError::Step {
            package: pkg.name.clone(),
            step: "script",
            message,
            log: Some(log_path.to_path_buf()),
        };
        let mut log =
            File::create(log_path).map_err(|e| fail(format!("cannot create the log: {e}")))?;
        let (reader, writer) = std::io::pipe().map_err(|e| fail(e.to_string()))?;
        let writer2 = writer.try_clone().map_err(|e| fail(e.to_string()))?;
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        let mut running = unsandboxed();
        let mut child = cmd.spawn().map_err(|e| {
            fail(format!(
                "cannot run {}: {e}",
                cmd.get_program().to_string_lossy()
            ))
        })?;
        let group = self.sandbox.is_none().then(|| child.id());
        let group = group.and_then(|id| i32::try_from(id).ok());
        if let Some(g) = group {
            running.insert(g);
        }
        drop(running);
        // Our copies of the pipe's write end must go, or the reader never sees EOF.
        drop(cmd);
        let mut tail: std::collections::VecDeque<String> = Default::default();
        let mut cpu = None;
        for line in BufReader::new(reader).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            // The script could print such a line too: only the last one counts, and
            // the sandbox writes its own after the script has exited. Without the
            // sandbox, no line is the builder's.
            cpu = line
                .strip_prefix(sandbox::CPU_LINE)
                .filter(|_| self.sandbox.is_some())
                .and_then(|t| t.strip_suffix(" s"))
                .and_then(|t| t.parse::<f64>().ok());
            let _ = writeln!(log, "{line}");
            self.reporter.log_line(&pkg.name, &line);
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        let status = child.wait();
        if let Some(g) = group {
            unsandboxed().remove(&g);
        }
        let status = status.map_err(|e| fail(e.to_string()))?;
        let _ = log.flush();
        if !status.success() {
            if !self.reporter.verbose() {
                self.reporter.line(&format!(
                    "[{}] last {} lines of {}:",
                    pkg.name,
                    tail.len(),
                    log_path.display()
                ));
                for l in &tail {
                    self.reporter.line(&format!("[{}] | {l}", pkg.name));
                }
            }
            return Err(fail(match status.code() {
                Some(c) => format!("the script exited with status {c}"),
                None => "the script was killed by a signal".into(),
            }));
        }
        Ok(cpu)
    }
}

/// The nice value of builds off the critical path (see [`Builder::build_all`]): when
/// they compete for the CPU with one on it, it gets about nine tenths.
pub const BACKGROUND_NICE: i32 = 10;

/// Each package's chain of work still ahead of it: its own weight plus the heaviest
/// chain of the packages that need it.
pub fn chains<'p>(plan: &'p Plan, weights: &BTreeMap<String, u64>) -> BTreeMap<&'p str, u64> {
    let mut chain: BTreeMap<&str, u64> = BTreeMap::new();
    // Plan order puts dependencies first, so walking it backwards sees every
    // dependent before the packages it needs.
    for pkg in plan.packages.iter().rev() {
        let after = plan
            .packages
            .iter()
            .filter(|p| p.depends.contains(&pkg.name))
            .filter_map(|p| chain.get(p.name.as_str()).copied())
            .max()
            .unwrap_or(0);
        let own = weights.get(&pkg.name).copied().unwrap_or(1);
        chain.insert(&pkg.name, own.saturating_add(after));
    }
    chain
}

/// The plan's packages, those with the longest chain of work still ahead of them
/// ([`chains`]) first; ties keep plan order. The scheduler starts ready packages in
/// this order.
pub fn critical_path_order<'p>(plan: &'p Plan, chain: &BTreeMap<&str, u64>) -> Vec<&'p Package> {
    let mut order: Vec<(usize, &Package)> = plan.packages.iter().enumerate().collect();
    order.sort_by_key(|(i, p)| (std::cmp::Reverse(chain[p.name.as_str()]), *i));
    order.into_iter().map(|(_, p)| p).collect()
}

/// The version of what [`script_env`] gives a script, part of every `build` package's key:
/// bumped whenever a value changes, so that no output built with the old environment is
/// taken for one built with the new (2: `-g0` in `CFLAGS`, `-Os` in `CXXFLAGS`; 3:
/// `CONFIG_SHELL`).
pub const SCRIPT_ENV: &str = "env-3";

/// `ARCH`, `HOST`, `BUILD` and `HOST_FLAGS` for a script (recipes/README.md): configure's
/// `--host` is the target triple; `--build` is the same triple for a native build (so
/// configure still runs its test programs) and this machine's GNU triple for a cross one.
fn cross_env(toolchain: &Toolchain) -> [(&'static str, String); 4] {
    let host = toolchain.target.clone();
    let native = toolchain.arch.name() == std::env::consts::ARCH;
    let build = if native {
        host.clone()
    } else {
        format!("{}-linux-gnu", std::env::consts::ARCH)
    };
    let flags = if native {
        String::new()
    } else {
        format!("--build={build} --host={host}")
    };
    [
        ("ARCH", toolchain.arch.to_string()),
        ("HOST", host),
        ("BUILD", build),
        ("HOST_FLAGS", flags),
    ]
}

/// The environment a build script gets, and nothing else (`recipes/README.md`
/// documents it).
#[allow(clippy::too_many_arguments)]
pub fn script_env(
    toolchain: &Toolchain,
    cxx: Option<&Path>,
    work: &Path,
    out: &Path,
    deps: &Path,
    jobs: usize,
    epoch: u64,
    pkg: &Package,
) -> BTreeMap<String, String> {
    let d = |p: &Path| p.display().to_string();
    // Map the work and toolchain directories to fixed names in anything compiled
    // (__FILE__, debug info), so outputs do not depend on the cache's location. -g0: no
    // debug information, which outputs lose to strip anyway; zig cc writes it unless told
    // not to, and gdb's objects with it took a quarter longer to compile and ten times the
    // space.
    let cflags = format!(
        "-O2 -g0 -ffile-prefix-map={}=/build -ffile-prefix-map={}=/toolchain",
        d(work),
        d(&toolchain.dir)
    );
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("CC", d(&toolchain.cc));
    if let Some(cxx) = cxx {
        // C++ for size: templates make large code, and -Os compiles it faster too.
        set("CXX", d(cxx));
        set("CXXFLAGS", cflags.replacen("-O2", "-Os", 1));
    }
    set("AR", toolchain.ar.clone());
    set("RANLIB", toolchain.ranlib.clone());
    set("CFLAGS", cflags);
    set("CPPFLAGS", format!("-I{}/include", d(deps)));
    set("LDFLAGS", format!("-static -L{}/lib", d(deps)));
    set("JOBS", jobs.max(1).to_string());
    set("OUT", d(out));
    set("DEPS", d(deps));
    set("PREFIX", MOUNT_POINT.to_string());
    set("SYSINCLUDE", d(&toolchain.sysinclude));
    set("KERNEL_HEADERS", d(&toolchain.kernel_headers));
    set("TARGET", toolchain.target.clone());
    for (name, value) in cross_env(toolchain) {
        set(name, value);
    }
    set("PKG_CONFIG_LIBDIR", format!("{}/lib/pkgconfig", d(deps)));
    set("PKG_CONFIG_PATH", String::new());
    set("SOURCE_DATE_EPOCH", epoch.to_string());
    set("LC_ALL", "C".into());
    set("TZ", "UTC".into());
    set("PATH", SCRIPT_PATH.into());
    set("HOME", d(&work.join("home")));
    set("TMPDIR", d(&work.join("tmp")));
    set("SHELL", "/bin/sh".into());
    // Autoconf's configure scripts look for a shell with more features than POSIX asks
    // (bash, where /bin/sh is dash) and run themselves, config.status and libtool with
    // it, unless CONFIG_SHELL names one: /bin/sh configures the same, in less CPU time.
    set("CONFIG_SHELL", "/bin/sh".into());
    set("USER", "cartbuild".into());
    set("LOGNAME", "cartbuild".into());
    set("NAME", pkg.name.clone());
    set("VERSION", pkg.version.clone());
    env
}

/// The error of preparing `path` for the sandbox.
fn prepare(path: &Path) -> impl FnOnce(std::io::Error) -> sandbox::SandboxError {
    let path = path.to_path_buf();
    move |source| sandbox::SandboxError::Prepare { path, source }
}

/// A failed step of building `pkg`.
fn step_err(
    pkg: &Package,
    step: &'static str,
    message: String,
    log: Option<PathBuf>,
) -> BuildError {
    BuildError::Step {
        package: pkg.name.clone(),
        step,
        message,
        log,
    }
}

/// The error of an I/O failure in `step` of building `pkg`.
fn io_err<'a>(
    pkg: &'a Package,
    step: &'static str,
) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |e| step_err(pkg, step, e.to_string(), None)
}

/// A build's work directory: removed when dropped (success or failure; the log
/// lives elsewhere).
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new(path: PathBuf) -> WorkDir {
        WorkDir { path }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.path.exists() {
            make_writable(&self.path);
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Some builds leave read-only directories behind; make them removable.
fn make_writable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(root).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o755));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Context;
    use crate::recipe::Recipe;

    fn plan(packages: &[(&str, &[&str])]) -> (tempfile::TempDir, Plan) {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("[image]\nname = \"t\"\nversion = \"1\"\n");
        for (name, deps) in packages {
            text.push_str(&format!(
                "[[package]]\nname = \"{name}\"\nversion = \"1\"\nurls = [\"http://127.0.0.1/{name}.tar.gz\"]\nsha256 = \"{}\"\ndepends = {deps:?}\nscript = \"true\"\n",
                "0".repeat(64)
            ));
        }
        let path = dir.path().join("r.toml");
        fs::write(&path, text).unwrap();
        let plan = Plan::resolve(&Recipe::load(&path).unwrap(), &Context::default()).unwrap();
        (dir, plan)
    }

    fn names(order: &[&Package]) -> Vec<String> {
        order.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn the_longest_chain_starts_first() {
        // lsof comes first in the recipe, but gmp leads to the long gdb build: with two
        // jobs, gmp and lsof start together rather than lsof and bash, and gdb does
        // not end up alone at the end.
        let (_dir, plan) = plan(&[
            ("lsof", &[]),
            ("bash", &[]),
            ("gmp", &[]),
            ("mpfr", &["gmp"]),
            ("gdb", &["gmp", "mpfr"]),
        ]);
        let weights: BTreeMap<String, u64> = [
            ("lsof", 5),
            ("bash", 10),
            ("gmp", 2),
            ("mpfr", 2),
            ("gdb", 30),
        ]
        .into_iter()
        .map(|(n, w)| (n.to_string(), w))
        .collect();
        let order = critical_path_order(&plan, &chains(&plan, &weights));
        assert_eq!(names(&order), ["gmp", "mpfr", "gdb", "bash", "lsof"]);
    }

    #[test]
    fn equal_chains_keep_recipe_order() {
        let (_dir, plan) = plan(&[("a", &[]), ("b", &[]), ("c", &["a"])]);
        let weights = BTreeMap::new();
        // a's chain is a + c = 2, b's 1, c's 1: b and c keep their recipe order.
        assert_eq!(
            names(&critical_path_order(&plan, &chains(&plan, &weights))),
            ["a", "b", "c"]
        );
    }
}
