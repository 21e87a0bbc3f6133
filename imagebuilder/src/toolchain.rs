//! The musl C toolchain that builds every package, and its identity.
//!
//! Two toolchains are supported:
//!
//! - `musl-gcc` (Debian's `musl-tools`): it compiles with `-nostdinc` and sees only
//!   musl's headers, so we give it the host's kernel UAPI headers (`linux-libc-dev`)
//!   through a private directory of symlinks (`linux`, `asm`, `asm-generic`, `mtd`,
//!   `rdma`, `misc`, `sound`, `video`, `xen`; not `scsi`, musl has its own) added
//!   with `-isystem` by a wrapper script used as `CC`. It has to be in `CC` itself:
//!   libpcap's Makefile ignores `CPPFLAGS`, and `-isystem` keeps kernel-header
//!   warnings from tripping `-Werror` builds (strace).
//! - `zig cc -target <arch>-linux-musl` (zig ships musl and kernel headers), used
//!   when `musl-gcc` is missing or `--toolchain zig` asks for it.
//!
//! Both also get a `sysinclude` directory merging the libc headers with the kernel
//! headers, for builds that probe header files in one directory (lsof's
//! `LSOF_INCLUDE`). The identity, part of every build key, is a sha256 over the
//! compiler's version, the C library, the header set's contents and the wrapper
//! itself: a new compiler or new kernel headers rebuild everything.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use cartimage::arch::Arch;

use crate::cache::Cache;
use crate::seed::Seed;

/// Why no toolchain could be set up.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    /// No musl C compiler was found.
    #[error(
        "no musl C toolchain found (looked for {looked}): install one with `apt-get install musl-tools linux-libc-dev` (or `pip install ziglang`)"
    )]
    Missing {
        /// What was looked for.
        looked: String,
    },
    /// The kernel headers are missing.
    #[error(
        "kernel UAPI headers not found at {path}: install them with `apt-get install linux-libc-dev`"
    )]
    NoKernelHeaders {
        /// Where they were expected.
        path: PathBuf,
    },
    /// `strip` is missing.
    #[error("`strip` not found on PATH: install it with `apt-get install binutils`")]
    NoStrip,
    /// No kernel headers for a cross build's target.
    #[error(
        "no kernel UAPI headers for {arch} at {path}: install them with `apt-get install {package}`"
    )]
    NoCrossKernelHeaders {
        /// The target arch.
        arch: Arch,
        /// Where they were expected.
        path: PathBuf,
        /// Debian's package of them.
        package: String,
    },
    /// No `strip` that knows the target's ELF files.
    #[error(
        "no strip for {arch} ELF files (looked for {arch}-linux-gnu-strip and llvm-strip on PATH): install one with `apt-get install binutils-{arch}-linux-gnu`"
    )]
    NoCrossStrip {
        /// The target arch.
        arch: Arch,
    },
    /// `--toolchain musl-gcc` with a foreign `--arch`.
    #[error(
        "musl-gcc builds only for this machine's arch ({host}), not {arch}: drop `--toolchain musl-gcc` (cross builds use zig)"
    )]
    NotCross {
        /// This machine's arch.
        host: String,
        /// The arch asked for.
        arch: Arch,
    },
    /// A compiler was found but could not be inspected.
    #[error("cannot use {compiler}: {message}")]
    Broken {
        /// The compiler.
        compiler: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The wrapper directory could not be written.
    #[error("cannot set up the toolchain directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Which compiler to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// `musl-gcc` if present, else zig.
    #[default]
    Auto,
    /// Debian's `musl-gcc`.
    MuslGcc,
    /// `zig cc`.
    Zig,
}

/// A ready toolchain.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// `CC`: the wrapper script.
    pub cc: PathBuf,
    /// `AR`.
    pub ar: String,
    /// `RANLIB`.
    pub ranlib: String,
    /// The `strip` used on outputs.
    pub strip: PathBuf,
    /// libc headers and kernel headers merged in one directory (`SYSINCLUDE`).
    pub sysinclude: PathBuf,
    /// The kernel header directory given to the compiler (`KERNEL_HEADERS`).
    pub kernel_headers: PathBuf,
    /// The directory holding the wrapper and header directories.
    pub dir: PathBuf,
    /// Target triple, e.g. `x86_64-linux-musl`.
    pub target: String,
    /// The machine it builds for.
    pub arch: Arch,
    /// A one-line description (`musl-gcc: gcc 12.2.0, musl 1.2.3`).
    pub description: String,
    /// Hex sha256 identifying compiler, libc and headers (and, after
    /// [`Toolchain::for_sandbox`], the sandbox scripts run in).
    pub identity: String,
    /// Host paths the toolchain reads besides `dir` (compiler, specs, libc and its
    /// headers, zig's installation): the sandbox shows them read-only.
    pub inputs: Vec<PathBuf>,
    /// Directories under `dir` that compilers write to (zig's cache): each build
    /// gets a private one in the sandbox, empty or over [`Toolchain::seed`].
    pub scratch: Vec<PathBuf>,
    /// zig's compiled C runtime, laid under each build's zig cache (zig only).
    pub seed: Option<Seed>,
    /// The C++ compiler, set up only when a recipe asks for one ([`Toolchain::with_cxx`]).
    pub cxx: Option<Cxx>,
}

/// The C++ compiler (`$CXX` of packages with `cxx = true`): `zig c++ -target
/// <arch>-linux-musl`, which brings libc++ and musl and links statically. Debian's
/// `musl-gcc` has no C++ (it has no libstdc++ built for musl).
#[derive(Debug, Clone)]
pub struct Cxx {
    /// The directory of the wrappers (`bin/c++`, and `bin/cc`, zig's C compiler,
    /// for builds that want one C library throughout).
    pub dir: PathBuf,
    /// Hex sha256 over the wrapper's format and zig's version and target.
    pub identity: String,
    /// A one-line description (`zig c++ 0.17.1 -target x86_64-linux-musl`).
    pub description: String,
    /// Host paths zig reads (its installation): shown read-only in the sandbox.
    pub inputs: Vec<PathBuf>,
    /// zig's compiled C and C++ runtime, laid under each build's zig cache.
    pub seed: Seed,
}

impl Cxx {
    /// Where each build's private zig cache is mounted, under [`Cxx::dir`]: over
    /// [`Cxx::seed`], and what the build writes there reaches no other build.
    pub const SCRATCH: &str = "zig-cache";

    /// The `CXX` wrapper.
    pub fn compiler(&self) -> PathBuf {
        self.dir.join("bin/c++")
    }
}

/// The UAPI directories handed to musl-gcc.
const UAPI_DIRS: &[&str] = &[
    "linux",
    "asm-generic",
    "mtd",
    "rdma",
    "misc",
    "sound",
    "video",
    "xen",
];

/// Bumped when the wrapper's shape changes, to change every identity.
const WRAPPER_FORMAT: &str = "cartbuild-toolchain-3";

/// Finds an executable on the caller's PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

impl Toolchain {
    /// The same toolchain with the sandbox its scripts run in (`sandbox::Mode::key`)
    /// mixed into its identity: an output built outside the sandbox is never taken
    /// for one built inside, nor the other way round.
    pub fn for_sandbox(mut self, sandbox: &str) -> Toolchain {
        let mut h = Sha256::new();
        h.update(&self.identity);
        h.update("\0sandbox=");
        h.update(sandbox);
        self.identity = hex::encode(h.finalize());
        self
    }

    /// The same toolchain with a C++ compiler: zig's (on PATH or PyPI's `ziglang`).
    pub fn with_cxx(mut self, cache: &Cache) -> Result<Toolchain, ToolchainError> {
        let zig = find_zig().ok_or_else(|| ToolchainError::Missing {
            looked: "a C++ compiler for musl: zig on PATH and python3 -m ziglang".into(),
        })?;
        let arch = self
            .target
            .split('-')
            .next()
            .unwrap_or("x86_64")
            .to_string();
        self.cxx = Some(zig_cxx(cache, &zig, &arch)?);
        Ok(self)
    }

    /// Finds a toolchain for `arch` and writes its wrapper into the cache. Another arch
    /// than this machine's is built with zig only (Debian's musl-gcc is native).
    pub fn detect(cache: &Cache, flavor: Flavor, arch: Arch) -> Result<Toolchain, ToolchainError> {
        let host = std::env::consts::ARCH;
        let native = arch.name() == host;
        if !native && flavor == Flavor::MuslGcc {
            return Err(ToolchainError::NotCross {
                host: host.to_string(),
                arch,
            });
        }
        let musl = which("musl-gcc").filter(|_| native);
        let zig = find_zig();
        match (flavor, musl, zig) {
            (Flavor::Auto | Flavor::MuslGcc, Some(gcc), _) => musl_gcc(cache, &gcc, arch),
            (Flavor::Auto | Flavor::Zig, _, Some(zig)) => zig_cc(cache, &zig, arch),
            (Flavor::MuslGcc, None, _) => Err(ToolchainError::Missing {
                looked: "musl-gcc on PATH".into(),
            }),
            (Flavor::Zig, _, None) => Err(ToolchainError::Missing {
                looked: "zig on PATH and python3 -m ziglang".into(),
            }),
            (Flavor::Auto, None, None) => Err(ToolchainError::Missing {
                looked: "musl-gcc and zig on PATH, python3 -m ziglang".into(),
            }),
        }
    }
}

/// `zig` on PATH, else the one PyPI's `ziglang` package installs (used as
/// `python3 -m ziglang`).
fn find_zig() -> Option<PathBuf> {
    // The real file, not a link to it (.ci/setup links /usr/local/bin/zig into a
    // virtualenv): zig finds its lib/ beside itself, and the sandbox shows the
    // directory that holds both.
    if let Some(z) = which("zig") {
        return Some(fs::canonicalize(&z).unwrap_or(z));
    }
    let python = which("python3")?;
    let out = Command::new(python)
        .args([
            "-c",
            "import ziglang, os; print(os.path.dirname(ziglang.__file__))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let zig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("zig");
    zig.is_file().then_some(zig)
}

fn run(program: &Path, args: &[&str]) -> Result<String, ToolchainError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ToolchainError::Broken {
            compiler: program.to_path_buf(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ToolchainError::Broken {
            compiler: program.to_path_buf(),
            message: format!(
                "`{} {}` failed: {}",
                program.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// sha256 over every file under each directory (paths and contents), following
/// the symlinks our header directory is made of.
fn hash_dirs(h: &mut Sha256, dirs: &[PathBuf]) -> std::io::Result<()> {
    for dir in dirs {
        for entry in walkdir::WalkDir::new(dir)
            .follow_links(true)
            .sort_by_file_name()
        {
            let entry = entry.map_err(std::io::Error::other)?;
            if entry.file_type().is_file() {
                let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
                h.update(rel.as_os_str().as_encoded_bytes());
                h.update([0]);
                h.update(fs::read(entry.path())?);
            }
        }
    }
    Ok(())
}

/// The host's UAPI header sources: `(name in our dir, host path)`.
fn host_uapi(arch: &str) -> Result<Vec<(String, PathBuf)>, ToolchainError> {
    let inc = Path::new("/usr/include");
    if !inc.join("linux/version.h").exists() {
        return Err(ToolchainError::NoKernelHeaders {
            path: inc.join("linux"),
        });
    }
    let multiarch = inc.join(format!("{arch}-linux-gnu/asm"));
    let asm = if multiarch.is_dir() {
        multiarch
    } else {
        inc.join("asm")
    };
    if !asm.is_dir() {
        return Err(ToolchainError::NoKernelHeaders { path: asm });
    }
    Ok(uapi_dirs(inc, asm))
}

/// `asm` and every directory of [`UAPI_DIRS`] that `inc` holds, sorted by name: `(name in
/// our dir, path)`.
fn uapi_dirs(inc: &Path, asm: PathBuf) -> Vec<(String, PathBuf)> {
    let mut out = vec![("asm".to_string(), asm)];
    for d in UAPI_DIRS {
        let p = inc.join(d);
        if p.is_dir() {
            out.push((d.to_string(), p));
        }
    }
    out.sort();
    out
}

/// Debian's kernel UAPI headers for `arch` (`linux-libc-dev-<debian arch>-cross`, in
/// `/usr/<arch>-linux-gnu/include`): `(name in our dir, path)`.
fn cross_uapi(arch: Arch) -> Result<Vec<(String, PathBuf)>, ToolchainError> {
    let inc = PathBuf::from(format!("/usr/{arch}-linux-gnu/include"));
    if !inc.join("linux/version.h").is_file() || !inc.join("asm").is_dir() {
        return Err(ToolchainError::NoCrossKernelHeaders {
            arch,
            path: inc,
            package: format!("linux-libc-dev-{}-cross", arch.oci()),
        });
    }
    Ok(uapi_dirs(&inc, inc.join("asm")))
}

/// Creates `dir` atomically from `fill` (built in a sibling temporary, renamed).
fn create_dir_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), ToolchainError> {
    make_dir_atomically(dir, fill).map_err(|source| ToolchainError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// How the temporaries of [`make_dir_atomically`] begin: one a killed cartbuild left is
/// removed by the next that has the cache to itself ([`crate::cache::Cache::open`]).
pub(crate) const TEMPORARY_PREFIX: &str = ".toolchain-";

/// Creates `dir` (and its parent) unless it exists: `fill` fills a temporary sibling,
/// which is then renamed into place whole, so `dir` is complete or absent, also with two
/// cartbuilds at once (the one that comes second keeps the first one's, identical).
/// Toolchain directories and zig's runtime seeds ([`crate::seed`]) are made so.
pub(crate) fn make_dir_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .tempdir_in(parent)?;
    fill(tmp.path())?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
    match fs::rename(tmp.path(), dir) {
        Ok(()) => {
            // The directory now lives at `dir`; nothing for the guard to remove.
            let _ = tmp.keep();
            Ok(())
        }
        // Another cartbuild made it first: theirs is identical.
        Err(_) if dir.exists() => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_script(path: &Path, text: &str) -> std::io::Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// Symlinks every entry of `from` (each in order; the first of a name wins) into `to`.
fn merge_into(to: &Path, from: &[PathBuf]) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for dir in from {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let link = to.join(e.file_name());
            if fs::symlink_metadata(&link).is_err() {
                symlink(e.path(), &link)?;
            }
        }
    }
    Ok(())
}

/// The `strip` for `arch`'s ELF files: the host's own for this machine's arch, else
/// binutils' `<arch>-linux-gnu-strip` or `llvm-strip`.
fn find_strip(arch: Arch) -> Result<PathBuf, ToolchainError> {
    if arch.name() == std::env::consts::ARCH {
        return which("strip").ok_or(ToolchainError::NoStrip);
    }
    which(&format!("{arch}-linux-gnu-strip"))
        .or_else(|| which("llvm-strip"))
        .ok_or(ToolchainError::NoCrossStrip { arch })
}

fn musl_gcc(cache: &Cache, gcc: &Path, arch: Arch) -> Result<Toolchain, ToolchainError> {
    let broken = |message: String| ToolchainError::Broken {
        compiler: gcc.to_path_buf(),
        message,
    };
    // Debian's musl-gcc is a script naming its specs file; the specs name musl's
    // include directory (`-isystem DIR`), and libc.a sits beside the specs.
    let script = fs::read_to_string(gcc).unwrap_or_default();
    let specs = script
        .split('"')
        .find(|s| s.ends_with("musl-gcc.specs"))
        .map(PathBuf::from)
        .ok_or_else(|| broken("cannot find its specs file (is it Debian's musl-tools?)".into()))?;
    let specs_text = fs::read_to_string(&specs)
        .map_err(|e| broken(format!("cannot read {}: {e}", specs.display())))?;
    let libc_include = specs_text
        .split_whitespace()
        .skip_while(|w| *w != "-isystem")
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| broken(format!("no include directory in {}", specs.display())))?;
    let libdir = specs.parent().unwrap_or(Path::new("/"));
    let version = run(gcc, &["--version"])?;
    let version_line = version.lines().next().unwrap_or("").to_string();
    let strip = which("strip").ok_or(ToolchainError::NoStrip)?;
    let strip_version = run(&strip, &["--version"])?;
    let uapi = host_uapi(arch.name())?;

    let mut h = Sha256::new();
    h.update(WRAPPER_FORMAT);
    h.update(&version);
    h.update(&strip_version);
    h.update(&specs_text);
    h.update(
        fs::read(libdir.join("libc.a")).map_err(|e| broken(format!("cannot read libc.a: {e}")))?,
    );
    let uapi_paths: Vec<PathBuf> = uapi.iter().map(|(_, p)| p.clone()).collect();
    for (name, _) in &uapi {
        h.update(name);
    }
    hash_dirs(&mut h, &uapi_paths)
        .map_err(|e| broken(format!("cannot read kernel headers: {e}")))?;
    hash_dirs(&mut h, std::slice::from_ref(&libc_include))
        .map_err(|e| broken(format!("cannot read musl headers: {e}")))?;
    let identity = hex::encode(h.finalize());

    let dir = cache.toolchain(&identity);
    let gcc_owned = gcc.to_path_buf();
    let uapi_for_fill = uapi.clone();
    let libc_include_fill = libc_include.clone();
    create_dir_atomically(&dir, move |tmp| {
        let kh = tmp.join("kernel-headers");
        fs::create_dir(&kh)?;
        for (name, path) in &uapi_for_fill {
            symlink(path, kh.join(name))?;
        }
        fs::create_dir(tmp.join("bin"))?;
        write_script(
            &tmp.join("bin/cc"),
            &format!(
                "#!/bin/sh\n# {WRAPPER_FORMAT}: musl-gcc with the host's kernel UAPI headers.\nexec {} -isystem \"$(dirname \"$0\")/../kernel-headers\" \"$@\"\n",
                sh_quote(&gcc_owned)
            ),
        )?;
        // `asm` must come from the arch directory, so link it first.
        let sys = tmp.join("sysinclude");
        fs::create_dir(&sys)?;
        if let Some((_, asm)) = uapi_for_fill.iter().find(|(n, _)| n == "asm") {
            symlink(asm, sys.join("asm"))?;
        }
        // libc first (its scsi/ wins), then each kernel directory by name.
        merge_into(&sys, std::slice::from_ref(&libc_include_fill))?;
        for (name, path) in &uapi_for_fill {
            let link = sys.join(name);
            if fs::symlink_metadata(&link).is_err() {
                symlink(path, link)?;
            }
        }
        Ok(())
    })?;
    Ok(Toolchain {
        cc: dir.join("bin/cc"),
        ar: "ar".into(),
        ranlib: "ranlib".into(),
        strip,
        sysinclude: dir.join("sysinclude"),
        kernel_headers: dir.join("kernel-headers"),
        target: format!("{arch}-linux-musl"),
        arch,
        description: format!(
            "musl-gcc ({version_line}), musl from {}, kernel headers from /usr/include",
            libdir.display()
        ),
        dir,
        identity,
        inputs: [gcc.to_path_buf(), specs.clone(), libdir.to_path_buf()]
            .into_iter()
            .chain([libc_include])
            .chain(uapi_paths)
            .collect(),
        scratch: Vec::new(),
        seed: None,
        cxx: None,
    })
}

/// What the zig wrapper appends to every command for the kernel headers `uapi` (nothing
/// without them). zig puts its own headers before any -isystem, so the kernel's come as the
/// last -I (after the build's own -I directories, before zig's), marked system headers
/// (their warnings do not trip -Werror builds), as -isystem would.
fn kernel_headers_last(uapi: &[(String, PathBuf)]) -> String {
    if uapi.is_empty() {
        return String::new();
    }
    let mut a = " -I\"$(dirname \"$0\")/../kernel-headers\"".to_string();
    for (name, _) in uapi {
        a.push_str(&format!(" --system-header-prefix={name}/"));
    }
    a
}

/// zig's include search list for `target` (from `zig cc -E -v`): its compiler headers,
/// then musl's and the kernel's for the target.
fn zig_includes(zig: &Path, target: &str) -> Result<Vec<PathBuf>, ToolchainError> {
    // zig prints its include search list on `-E -v`; those directories hold its
    // musl and kernel headers for the target.
    let probe = Command::new(zig)
        .args([
            "cc",
            "-target",
            target,
            "-E",
            "-v",
            "-x",
            "c",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .output()
        .map_err(|e| ToolchainError::Broken {
            compiler: zig.to_path_buf(),
            message: e.to_string(),
        })?;
    let stderr = String::from_utf8_lossy(&probe.stderr);
    let includes: Vec<PathBuf> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("#include <...>"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.is_dir())
        .collect();
    if includes.is_empty() {
        return Err(ToolchainError::Broken {
            compiler: zig.to_path_buf(),
            message: "cannot find its include directories from `zig cc -E -v`".into(),
        });
    }
    Ok(includes)
}

fn zig_cc(cache: &Cache, zig: &Path, arch: Arch) -> Result<Toolchain, ToolchainError> {
    let version = run(zig, &["version"])?;
    let target = format!("{arch}-linux-musl");
    let strip = find_strip(arch)?;
    let strip_version = run(&strip, &["--version"])?;
    let includes = zig_includes(zig, &target)?;
    let mut h = Sha256::new();
    h.update(WRAPPER_FORMAT);
    h.update("zig");
    h.update(&version);
    h.update(&target);
    h.update(&strip_version);
    // A cross build compiles against Debian's kernel headers for the target, the same
    // kernel version as native builds' (zig's own are newer than what older tools know).
    let uapi = if arch.name() == std::env::consts::ARCH {
        h.update("kernel-headers=sysinclude");
        Vec::new()
    } else {
        cross_uapi(arch)?
    };
    for (name, _) in &uapi {
        h.update(name);
    }
    let uapi_paths: Vec<PathBuf> = uapi.iter().map(|(_, p)| p.clone()).collect();
    hash_dirs(&mut h, &uapi_paths).map_err(|e| ToolchainError::Broken {
        compiler: zig.to_path_buf(),
        message: format!("cannot read the kernel headers: {e}"),
    })?;
    let after = kernel_headers_last(&uapi);
    h.update(&after);
    h.update("sysinclude=libc+kernel");
    hash_dirs(&mut h, &includes).map_err(|e| ToolchainError::Broken {
        compiler: zig.to_path_buf(),
        message: format!("cannot read its headers: {e}"),
    })?;
    let identity = hex::encode(h.finalize());
    let dir = cache.toolchain(&identity);
    let zq = sh_quote(zig);
    let target_fill = target.clone();
    let includes_fill = includes.clone();
    let uapi_fill = uapi.clone();
    let after_fill = after.clone();
    create_dir_atomically(&dir, move |tmp| {
        fs::create_dir(tmp.join("bin"))?;
        // The mount point of each sandboxed build's private zig cache.
        fs::create_dir(tmp.join("zig-cache"))?;
        // zig caches the musl it compiles in its global cache, by default under
        // $HOME, which is a fresh scratch directory in every build: keep it
        // beside the wrapper so musl is compiled once.
        let env =
            "ZIG_GLOBAL_CACHE_DIR=\"$(dirname \"$0\")/../zig-cache\"\nexport ZIG_GLOBAL_CACHE_DIR";
        write_script(
            &tmp.join("bin/cc"),
            &format!(
                "#!/bin/sh\n# {WRAPPER_FORMAT}: zig cc for {target_fill}.\n{env}\nexec {zq} cc -target {target_fill} \"$@\"{after_fill}\n"
            ),
        )?;
        for tool in ["ar", "ranlib"] {
            write_script(
                &tmp.join("bin").join(tool),
                &format!("#!/bin/sh\n{env}\nexec {zq} {tool} \"$@\"\n"),
            )?;
        }
        let kh = tmp.join("kernel-headers");
        fs::create_dir(&kh)?;
        let sys = tmp.join("sysinclude");
        fs::create_dir(&sys)?;
        // The kernel's directories first: they win over zig's in the merge too.
        for (name, path) in &uapi_fill {
            symlink(path, kh.join(name))?;
            symlink(path, sys.join(name))?;
        }
        // The C library's headers, not the compiler's own (lib/include: stdint.h and the
        // like, which #include_next the C library's and break when found through a merge).
        let libc: Vec<PathBuf> = includes_fill
            .iter()
            .filter(|p| !p.ends_with("lib/include"))
            .cloned()
            .collect();
        merge_into(&sys, &libc)
    })?;
    let seed = Seed::new(cache, zig, &version, &target, false);
    Ok(Toolchain {
        cc: dir.join("bin/cc"),
        ar: dir.join("bin/ar").display().to_string(),
        ranlib: dir.join("bin/ranlib").display().to_string(),
        strip,
        sysinclude: dir.join("sysinclude"),
        // Debian's for the target in a cross build; else zig's, merged in sysinclude.
        kernel_headers: dir.join(if uapi.is_empty() {
            "sysinclude"
        } else {
            "kernel-headers"
        }),
        target,
        arch,
        description: format!("zig cc {} -target {arch}-linux-musl", version.trim()),
        dir,
        identity,
        // zig's own directory holds its lib/ (musl and headers); the kernel headers.
        inputs: std::iter::once(zig.parent().unwrap_or(zig).to_path_buf())
            .chain(uapi_paths)
            .collect(),
        scratch: vec![PathBuf::from("zig-cache")],
        seed: Some(seed),
        cxx: None,
    })
}

/// Writes the C++ wrappers (`zig c++`, and `zig cc` beside it) for `arch` into the cache.
fn zig_cxx(cache: &Cache, zig: &Path, arch: &str) -> Result<Cxx, ToolchainError> {
    const CXX_FORMAT: &str = "cartbuild-cxx-2";
    let version = run(zig, &["version"])?;
    let target = format!("{arch}-linux-musl");
    let mut h = Sha256::new();
    h.update(CXX_FORMAT);
    h.update(&version);
    h.update(&target);
    let identity = hex::encode(h.finalize());
    let dir = cache.toolchain(&identity);
    let zq = sh_quote(zig);
    let target_fill = target.clone();
    create_dir_atomically(&dir, move |tmp| {
        fs::create_dir(tmp.join("bin"))?;
        fs::create_dir(tmp.join(Cxx::SCRATCH))?;
        let env = format!(
            "ZIG_GLOBAL_CACHE_DIR=\"$(dirname \"$0\")/../{}\"\nexport ZIG_GLOBAL_CACHE_DIR",
            Cxx::SCRATCH
        );
        for (name, mode) in [("c++", "c++"), ("cc", "cc")] {
            write_script(
                &tmp.join("bin").join(name),
                &format!(
                    "#!/bin/sh\n# {CXX_FORMAT}: zig {mode} for {target_fill}.\n{env}\nexec {zq} {mode} -target {target_fill} \"$@\"\n"
                ),
            )?;
        }
        Ok(())
    })?;
    Ok(Cxx {
        dir,
        identity,
        description: format!("zig c++ {} -target {target}", version.trim()),
        inputs: vec![zig.parent().unwrap_or(zig).to_path_buf()],
        seed: Seed::new(cache, zig, &version, &target, true),
    })
}

/// Quotes a path for a POSIX shell script.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn musl_gcc_is_refused_for_another_arch_before_anything_is_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let host = Arch::host().unwrap();
        let other = Arch::ALL.into_iter().find(|&a| a != host).unwrap();
        let err = Toolchain::detect(&cache, Flavor::MuslGcc, other).unwrap_err();
        assert!(matches!(err, ToolchainError::NotCross { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "musl-gcc builds only for this machine's arch ({host}), not {other}: drop `--toolchain musl-gcc` (cross builds use zig)"
            )
        );
    }

    #[test]
    fn a_cross_build_strips_with_a_strip_for_its_arch() {
        // .ci/setup installs binutils-aarch64-linux-gnu for it.
        let host = Arch::host().unwrap();
        let other = Arch::ALL.into_iter().find(|&a| a != host).unwrap();
        let strip = find_strip(other).unwrap();
        let name = strip.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name == format!("{other}-linux-gnu-strip") || name == "llvm-strip",
            "{}",
            strip.display()
        );
        assert_eq!(find_strip(host).unwrap(), which("strip").unwrap());
    }
}
