//! The sandbox every build script runs in: fresh user, mount, network, PID, IPC, UTS
//! and cgroup namespaces, a root of its own with nothing of the host but what a
//! compiler needs, and an unprivileged user.
//!
//! A recipe's script runs a tarball's own `configure` and `make`: code verified to be
//! the code we pinned, not to be harmless. Inside the sandbox it sees:
//!
//! | path | what | |
//! |---|---|---|
//! | `/usr`, `/bin`, `/sbin`, `/lib*` | the host's (merged-usr links stay links) | read-only |
//! | `/etc/alternatives`, `/etc/ld.so.cache`, `/etc/ld.so.conf{,.d}` | what compilers and the loader read | read-only |
//! | `/etc/passwd`, `/etc/group`, `/etc/hosts` | written for the sandbox (`cartbuild`, uid 1000) | read-only |
//! | `/toolchain` | the toolchain's wrapper and header directories, and whatever else [`Toolchain::inputs`] names, at its own path | read-only |
//! | `/toolchain/zig-cache`, `/toolchain-cxx/zig-cache` | zig's cache, the build's own: an overlay of an empty directory over zig's compiled runtime ([`crate::seed`]), which stays unchanged | read-write |
//! | `/build/src` | the unpacked source, the script's working directory | read-write |
//! | `/build/out` | `$OUT` | read-write |
//! | `/build/home` | `$HOME` | read-write |
//! | `/build/deps` | `$DEPS`, the outputs of its dependencies | read-only |
//! | `/build/script.sh` | the script | read-only |
//! | `/tmp`, `/dev/shm` | private tmpfs | read-write |
//! | `/dev` | `null`, `zero`, `full`, `random`, `urandom`, `tty` (bind mounts) | |
//! | `/proc` | a fresh procfs of its PID namespace (`/proc/sys` read-only) | |
//!
//! and nothing else: not the builder's home, not the cache (neither the sources nor
//! other packages' outputs), not signing keys. Its network namespace holds only a
//! loopback interface that is down: no network at all (sources are fetched and
//! verified before, outside). It runs as uid and gid 1000 with no capabilities, an
//! empty bounding set and `no_new_privs`.
//!
//! How, step by step:
//!
//! 1. cartbuild has threads, and `unshare(CLONE_NEWUSER)` fails in a multithreaded
//!    process (unshare(2), `EINVAL`), so the builder runs itself again as
//!    `cartbuild __sandbox SPEC` ([`Sandbox::command`]), a fresh single-threaded
//!    process ([`helper_main`]).
//! 2. The helper forks; the child unshares the namespaces; the helper, still in the
//!    caller's namespaces, writes the child's `uid_map` and `gid_map`: only a process
//!    of the parent namespace may map more than its own ID (user_namespaces(7)).
//!    As root, inside uid 0 is outside 0 (only to set up mounts, never left to the
//!    script) and inside 1000 is [`HOST_ID`], an ID no host account uses; the work
//!    directories are handed to [`HOST_ID`] for the build and back to root after.
//!    As an ordinary user, inside 1000 is the caller (with `setgroups` denied, as the
//!    kernel requires for an unprivileged mapping).
//! 3. The child forks the namespace's init (PID 1), which mounts a tmpfs as the new
//!    root, binds into it, mounts `/proc`, `pivot_root`s into it and detaches the old
//!    root, remounts `/` read-only, drops the bounding set, switches to uid 1000,
//!    clears every capability, sets `no_new_privs`, and forks the script. It reaps
//!    until the script exits, then exits with its status; the kernel then kills
//!    whatever the script left running (pid_namespaces(7)).
//! 4. Each process of the chain (helper, namespace child, init) dies with its
//!    parent (`PR_SET_PDEATHSIG` with `SIGKILL`, checked against a parent that went
//!    before it was set): a builder killed even by `SIGKILL` takes the init down,
//!    and the init its whole PID namespace, `make` and compilers included.
//!
//! Why the sandbox user is never the host's root: a process whose uid is global root
//! passes the owner check of `/proc/sys` files without any capability
//! (`kernel/sysctl.c`, `test_perm`), `core_pattern` included.

use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::UsageWho;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::toolchain::Toolchain;

/// The hidden subcommand that runs a script in the sandbox.
pub const HELPER_COMMAND: &str = "__sandbox";

/// The uid and gid scripts run as inside the sandbox.
pub const SANDBOX_ID: u32 = 1000;

/// The host uid and gid that [`SANDBOX_ID`] maps to when cartbuild runs as root: the
/// last ID of systemd's range for container users (`0x00080000`–`0x6FFFFFFF`,
/// systemd's UIDS-GIDS.md), which no host account has.
pub const HOST_ID: u32 = 0x6FFF_FFFF;

/// Where the build directory is inside the sandbox.
pub const BUILD_DIR: &str = "/build";

/// Where the toolchain directory is inside the sandbox.
pub const TOOLCHAIN_DIR: &str = "/toolchain";

/// Where the C++ compiler's wrappers are, for packages with `cxx = true`.
pub const CXX_DIR: &str = "/toolchain-cxx";

/// Bumped when what a script sees changes (part of every build key).
const LAYOUT: &str = "namespaces-1";

/// The exit status of the helper when the sandbox could not be set up.
pub const SETUP_FAILED: i32 = 125;

/// Whether build scripts ran in the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In fresh namespaces (the default).
    Namespaces,
    /// Directly, with the builder's rights (`--no-sandbox`).
    None,
}

impl Mode {
    /// What the manifest records: `namespaces` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Namespaces => "namespaces",
            Mode::None => "none",
        }
    }

    /// What goes into the toolchain's identity and every build key.
    pub fn key(self) -> &'static str {
        match self {
            Mode::Namespaces => LAYOUT,
            Mode::None => "none",
        }
    }
}

/// Why the sandbox cannot be used or set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Namespaces cannot be created here.
    #[error(
        "cannot run build scripts in a sandbox: {reason}; {hint}, or pass --no-sandbox to build without one (only for recipes and sources you trust)"
    )]
    Unavailable {
        /// What failed.
        reason: String,
        /// How to make it work.
        hint: &'static str,
    },
    /// The helper could not be started.
    #[error("cannot start the sandbox helper {path}: {source}")]
    Spawn {
        /// The cartbuild binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file or directory of the build could not be prepared.
    #[error("cannot prepare {path} for the sandbox: {source}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One bind mount of a host path into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// The host path.
    pub source: PathBuf,
    /// The absolute path inside the sandbox.
    pub target: PathBuf,
    /// Whether the script may write there.
    pub writable: bool,
}

/// A directory the script may write to over files it must not change: an overlay mount
/// at `target` whose lower layer is `lower` (read-only whatever the script does) and whose
/// upper layer is `upper`, where everything the script writes, changes or deletes there
/// lands (overlayfs copies a file up before it is changed). `work` is overlayfs's own
/// scratch directory, on the same filesystem as `upper`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The host directory below (shared by every build, never written).
    pub lower: PathBuf,
    /// The host directory above (this build's own).
    pub upper: PathBuf,
    /// overlayfs's work directory (this build's own).
    pub work: PathBuf,
    /// The absolute path inside the sandbox (an existing directory).
    pub target: PathBuf,
}

/// What the helper sets up: the layout, the working directory and the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// An empty host directory to mount the new root on (hidden by it).
    pub root: PathBuf,
    /// Bind mounts, in order (a parent before what is mounted inside it).
    pub binds: Vec<Bind>,
    /// Overlay mounts, after the bind mounts (their targets lie in bound directories).
    #[serde(default)]
    pub layers: Vec<Layer>,
    /// The nice value everything in the sandbox runs at (setpriority(2); 0 is the
    /// builder's own): builds off the critical path yield the CPU to those on it.
    #[serde(default)]
    pub nice: i32,
    /// Symbolic links to create: `(path inside, target)` (merged-usr `/bin -> usr/bin`).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// The working directory inside.
    pub cwd: PathBuf,
    /// The command and its arguments (the first is an absolute path inside).
    pub argv: Vec<String>,
}

/// The host's system directories, read-only: `/usr`, `/bin`, `/sbin`, `/lib*` (links
/// stay links) and the pieces of `/etc` that compilers and the loader read.
pub fn system(binds: &mut Vec<Bind>, symlinks: &mut Vec<(PathBuf, PathBuf)>) {
    let mut top = vec![PathBuf::from("/usr"), "/bin".into(), "/sbin".into()];
    if let Ok(rd) = fs::read_dir("/") {
        let mut libs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("lib"))
            })
            .collect();
        libs.sort();
        top.extend(libs);
    }
    for etc in ["alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d"] {
        top.push(Path::new("/etc").join(etc));
    }
    for p in top {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(to) = fs::read_link(&p) {
                    symlinks.push((p, to));
                }
            }
            Ok(_) => binds.push(Bind {
                source: p.clone(),
                target: p,
                writable: false,
            }),
            Err(_) => {}
        }
    }
}

/// The toolchain, read-only: its directory at [`TOOLCHAIN_DIR`], and every host path
/// it reads that the system directories do not hold, at its own path.
pub fn toolchain(binds: &mut Vec<Bind>, toolchain: &Toolchain) {
    binds.push(Bind {
        source: toolchain.dir.clone(),
        target: TOOLCHAIN_DIR.into(),
        writable: false,
    });
    for p in &toolchain.inputs {
        let covered = binds
            .iter()
            .any(|b| b.source == b.target && p.starts_with(&b.source));
        if !covered && p.exists() {
            binds.push(Bind {
                source: p.clone(),
                target: p.clone(),
                writable: false,
            });
        }
    }
}

/// The C++ compiler, read-only: its wrappers at [`CXX_DIR`] and zig's installation
/// where it is on the host.
pub fn cxx(binds: &mut Vec<Bind>, cxx: &crate::toolchain::Cxx) {
    binds.push(Bind {
        source: cxx.dir.clone(),
        target: CXX_DIR.into(),
        writable: false,
    });
    for p in &cxx.inputs {
        let covered = binds
            .iter()
            .any(|b| b.source == b.target && p.starts_with(&b.source));
        if !covered && p.exists() {
            binds.push(Bind {
                source: p.clone(),
                target: p.clone(),
                writable: false,
            });
        }
    }
}

/// The toolchain as the script sees it inside the sandbox: the same, with its
/// directory at [`TOOLCHAIN_DIR`].
pub fn relocate(toolchain: &Toolchain) -> Toolchain {
    let inside = Path::new(TOOLCHAIN_DIR);
    let mv = |p: &Path| match p.strip_prefix(&toolchain.dir) {
        Ok(rel) => inside.join(rel),
        Err(_) => p.to_path_buf(),
    };
    let mv_str = |s: &str| mv(Path::new(s)).display().to_string();
    let mut t = toolchain.clone();
    t.cc = mv(&toolchain.cc);
    t.ar = mv_str(&toolchain.ar);
    t.ranlib = mv_str(&toolchain.ranlib);
    t.sysinclude = mv(&toolchain.sysinclude);
    t.kernel_headers = mv(&toolchain.kernel_headers);
    t.strip = mv(&toolchain.strip);
    t.dir = inside.to_path_buf();
    t
}

/// Runs build scripts in the sandbox through the cartbuild binary `helper`.
#[derive(Debug, Clone)]
pub struct Sandbox {
    helper: PathBuf,
}

impl Sandbox {
    /// A sandbox run by this very program: `/proc/self/exe`, which names the running
    /// binary even when its file was replaced or removed since it started.
    pub fn current() -> Sandbox {
        Sandbox {
            helper: PathBuf::from("/proc/self/exe"),
        }
    }

    /// A sandbox run by the cartbuild binary at `helper`.
    pub fn with_helper(helper: PathBuf) -> Sandbox {
        Sandbox { helper }
    }

    /// The command running `spec` in the sandbox; the caller sets its environment
    /// (which the script gets as is) and its standard streams.
    pub fn command(&self, spec: &Spec) -> Command {
        // OK to unwrap: a Spec holds only strings, paths and booleans.
        let json = serde_json::to_string(spec).expect("sandbox spec serialises");
        let mut c = Command::new(&self.helper);
        // Our PID: the helper checks that its parent is still us once it has asked
        // to die with it (see `die_with_parent`).
        c.arg(HELPER_COMMAND)
            .arg(json)
            .arg(std::process::id().to_string());
        c
    }

    /// Checks that namespaces can be made here by running `true` in a sandbox of
    /// the system directories alone (a few milliseconds); `scratch` is an empty
    /// directory to use as its root's mount point.
    pub fn check(&self, scratch: &Path) -> Result<(), SandboxError> {
        let mut spec = Spec {
            root: scratch.to_path_buf(),
            binds: Vec::new(),
            layers: Vec::new(),
            nice: 0,
            symlinks: Vec::new(),
            cwd: "/".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "exit 0".into()],
        };
        system(&mut spec.binds, &mut spec.symlinks);
        let out = self
            .command(&spec)
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SandboxError::Spawn {
                path: self.helper.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim_start_matches("cartbuild: sandbox: ").to_string())
            .unwrap_or_else(|| format!("the sandbox helper failed ({})", out.status));
        let hint = if Uid::effective().is_root() {
            "user namespaces must be allowed (sysctl user.max_user_namespaces > 0)"
        } else {
            "unprivileged user namespaces must be allowed (sysctl user.max_user_namespaces > 0, \
             kernel.unprivileged_userns_clone = 1 where it exists, \
             kernel.apparmor_restrict_unprivileged_userns = 0 on Ubuntu)"
        };
        Err(SandboxError::Unavailable { reason, hint })
    }
}

/// Hands the writable directories of a build to the sandbox user before it runs
/// (when cartbuild is root; an ordinary user's files are already the sandbox user's).
pub fn hand_over(dirs: &[&Path]) -> Result<(), SandboxError> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    for d in dirs {
        chown_tree(d, HOST_ID)?;
    }
    Ok(())
}

/// Takes a build's output back from the sandbox user (as root), so nothing of the
/// cache belongs to [`HOST_ID`].
pub fn take_back(dir: &Path) -> Result<(), SandboxError> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    chown_tree(dir, 0)
}

/// `lchown -R` (links themselves, never what they point to).
fn chown_tree(dir: &Path, id: u32) -> Result<(), SandboxError> {
    for e in walkdir::WalkDir::new(dir) {
        let e = e.map_err(|e| SandboxError::Prepare {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        std::os::unix::fs::lchown(e.path(), Some(id), Some(id)).map_err(|source| {
            SandboxError::Prepare {
                path: e.path().to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The helper: `cartbuild __sandbox SPEC`, single-threaded from its first line.
// ---------------------------------------------------------------------------

/// A failed step of the helper, naming what it acted on.
#[derive(Debug, thiserror::Error)]
#[error("{step}{}{}: {errno}", if path.as_os_str().is_empty() { "" } else { " " }, path.display())]
struct StepError {
    step: &'static str,
    path: PathBuf,
    errno: Errno,
}

fn step<T>(step: &'static str, path: &Path, r: nix::Result<T>) -> Result<T, StepError> {
    r.map_err(|errno| StepError {
        step,
        path: path.to_path_buf(),
        errno,
    })
}

fn io_step<T>(s: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T, StepError> {
    step(
        s,
        path,
        r.map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)),
    )
}

/// The last line a sandbox writes to its output: the CPU time (user and system) of
/// everything that ran in it, in seconds (`cartbuild: sandbox: CPU time 12.3 s`).
/// The builder reports it with the build's wall time.
pub const CPU_LINE: &str = "cartbuild: sandbox: CPU time ";

/// The entry point of `cartbuild __sandbox SPEC`; returns the exit status (the
/// script's, or [`SETUP_FAILED`] with one `cartbuild: sandbox: …` line on stderr).
/// Must be called before the program starts any thread.
pub fn helper_main(args: &[OsString]) -> i32 {
    let spec: Spec = match args.get(2).map(|a| serde_json::from_slice(a.as_bytes())) {
        Some(Ok(s)) => s,
        _ => {
            eprintln!("cartbuild: sandbox: usage: cartbuild {HELPER_COMMAND} SPEC (internal)");
            return SETUP_FAILED;
        }
    };
    let parent = args
        .get(3)
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse::<i32>().ok())
        .map(Pid::from_raw);
    match helper(&spec, parent) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cartbuild: sandbox: {e}");
            SETUP_FAILED
        }
    }
}

/// SIGKILL for the calling process when its parent goes; then, if `parent` is
/// given, checks that it has not gone already (between fork and prctl the signal
/// could not be asked for: the process was reparented, and nothing would ever
/// kill it), and exits at once if so.
///
/// The setting is cleared by fork and by any change of effective or filesystem
/// IDs (prctl(2), PR_SET_PDEATHSIG), so each process of the chain (helper,
/// namespace child, the namespace's init after it drops privileges) sets it
/// itself; the script and everything it starts die with the init, which takes
/// its PID namespace with it (pid_namespaces(7)).
fn die_with_parent(parent: Option<Pid>) -> Result<(), StepError> {
    step(
        "set the parent-death signal",
        Path::new("/proc/self"),
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL),
    )?;
    if parent.is_some_and(|p| nix::unistd::getppid() != p) {
        std::process::exit(SETUP_FAILED);
    }
    Ok(())
}

/// Whether the process holding the write end of `alive` (the init's parent, in
/// another PID namespace, where getppid(2) says 0) has exited: the read end then
/// reports a hang-up.
fn parent_gone(alive: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(alive.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLIN)),
        Err(_) => true,
    }
}

/// Forks the namespace child and maps its IDs from outside.
fn helper(spec: &Spec, parent: Option<Pid>) -> Result<i32, StepError> {
    let here = Path::new("/proc/self");
    // The helper dies with the builder thread that waits for it (a thread that
    // lives until the helper exits, see `Command::output`/`wait`).
    die_with_parent(parent)?;
    if spec.nice > 0 {
        // Inherited by every process the sandbox starts; lowering one's own priority
        // needs no privilege.
        step(
            "lower the priority of",
            here,
            rustix::process::setpriority_process(None, spec.nice)
                .map_err(|e| Errno::from_raw(e.raw_os_error())),
        )?;
    }
    let me = nix::unistd::getpid();
    let (unshared_r, unshared_w) = step("pipe", here, nix::unistd::pipe())?;
    let (mapped_r, mapped_w) = step("pipe", here, nix::unistd::pipe())?;
    let (uid, gid) = (Uid::effective(), Gid::effective());
    // SAFETY: the helper is single-threaded (it is called from main before anything
    // starts a thread), so the child may do anything the parent could.
    match step("fork", here, unsafe { nix::unistd::fork() })? {
        ForkResult::Child => {
            drop(unshared_r);
            drop(mapped_w);
            let code = match namespace_child(spec, me, unshared_w, mapped_r) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("cartbuild: sandbox: {e}");
                    SETUP_FAILED
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(unshared_w);
            drop(mapped_r);
            let mut byte = [0u8; 1];
            let unshared = File::from(unshared_r).read(&mut byte).unwrap_or(0) == 1;
            if unshared {
                if let Err(e) = write_maps(child, uid, gid) {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Err(e);
                }
                let _ = File::from(mapped_w).write_all(&[1]);
            } else {
                drop(mapped_w);
            }
            let status = step("wait for", Path::new("the sandbox"), waitpid(child, None))?;
            // Every process of the sandbox was reaped by its parent (the init reaps
            // orphans), so the helper's children's usage is the whole build's.
            if let Ok(usage) = nix::sys::resource::getrusage(UsageWho::RUSAGE_CHILDREN) {
                let secs =
                    |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
                eprintln!(
                    "{CPU_LINE}{:.1} s",
                    secs(usage.user_time()) + secs(usage.system_time())
                );
            }
            Ok(exit_code(status))
        }
    }
}

/// The child's `uid_map`, `gid_map` (and `setgroups`), written from the parent
/// namespace.
fn write_maps(child: Pid, uid: Uid, gid: Gid) -> Result<(), StepError> {
    let proc = PathBuf::from(format!("/proc/{child}"));
    let write = |name: &str, text: &str| {
        let p = proc.join(name);
        io_step("write", &p, fs::write(&p, text))
    };
    if uid.is_root() {
        // Inside 0 is outside 0 only for the init's mounts; the script runs as
        // SANDBOX_ID, outside HOST_ID. setgroups stays allowed so that init can drop
        // root's supplementary groups.
        write("uid_map", &format!("0 0 1\n{SANDBOX_ID} {HOST_ID} 1\n"))?;
        write("gid_map", &format!("0 0 1\n{SANDBOX_ID} {HOST_ID} 1\n"))?;
    } else {
        // An unprivileged process may map only its own IDs, and its gid only with
        // setgroups denied (user_namespaces(7), since Linux 3.19).
        write("setgroups", "deny")?;
        write("uid_map", &format!("{SANDBOX_ID} {uid} 1\n"))?;
        write("gid_map", &format!("{SANDBOX_ID} {gid} 1\n"))?;
    }
    Ok(())
}

fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => SETUP_FAILED,
    }
}

/// Unshares the namespaces, waits for the maps, forks the namespace's init and
/// returns its status.
fn namespace_child(
    spec: &Spec,
    helper: Pid,
    unshared: OwnedFd,
    mapped: OwnedFd,
) -> Result<i32, StepError> {
    let here = Path::new("/proc/self");
    die_with_parent(Some(helper))?;
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    step(
        "cannot create user, mount, network, PID, IPC, UTS and cgroup namespaces",
        Path::new(""),
        nix::sched::unshare(flags),
    )?;
    let _ = File::from(unshared).write_all(&[1]);
    let mut byte = [0u8; 1];
    if File::from(mapped).read(&mut byte).unwrap_or(0) != 1 {
        return Ok(SETUP_FAILED);
    }
    // The init learns that this process is gone from the pipe's hang-up.
    let (alive_r, alive_w) = step("pipe", here, nix::unistd::pipe())?;
    // SAFETY: still single-threaded (see `helper`).
    match step("fork", here, unsafe { nix::unistd::fork() })? {
        ForkResult::Child => {
            drop(alive_w);
            let code = match init(spec, &alive_r) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("cartbuild: sandbox: {e}");
                    SETUP_FAILED
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            let status = step(
                "wait for",
                Path::new("the sandbox's init"),
                waitpid(child, None),
            )?;
            drop(alive_w);
            Ok(exit_code(status))
        }
    }
}

/// [`die_with_parent`] for the init, whose parent is in another PID namespace
/// (getppid(2) says 0 there): whether that parent went before is read from the
/// hang-up of `alive` instead.
fn init_dies_with_parent(alive: &OwnedFd) -> Result<(), StepError> {
    die_with_parent(None)?;
    if parent_gone(alive) {
        std::process::exit(SETUP_FAILED);
    }
    Ok(())
}

/// PID 1 of the sandbox: builds the root, drops every privilege, runs the script,
/// reaps until it exits.
fn init(spec: &Spec, alive: &OwnedFd) -> Result<i32, StepError> {
    init_dies_with_parent(alive)?;
    // Everything the script will execute is prepared before the root changes.
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(63);
    build_root(spec)?;
    drop_privileges(last_cap)?;
    // setresuid/setresgid cleared the parent-death signal when they changed the
    // effective IDs (as root: 0 became HOST_ID): without it, a killed builder left
    // this init and the whole build running.
    init_dies_with_parent(alive)?;
    let cwd = spec.cwd.clone();
    // SAFETY: single-threaded (see `helper`).
    match step("fork", Path::new("/"), unsafe { nix::unistd::fork() })? {
        ForkResult::Child => {
            let e = exec(&cwd, &argv, &env);
            eprintln!("cartbuild: sandbox: {e}");
            std::process::exit(127);
        }
        ForkResult::Parent { child } => loop {
            // As PID 1, inherit and reap every orphan; the script's status ends it.
            match waitpid(None, None) {
                Ok(st @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                    if pid == child =>
                {
                    return Ok(exit_code(st));
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return step("wait for", Path::new("the script"), Err(e)),
            }
        },
    }
}

fn exec(cwd: &Path, argv: &[CString], env: &[CString]) -> StepError {
    if let Err(e) = step("chdir", cwd, nix::unistd::chdir(cwd)) {
        return e;
    }
    // Nothing of the builder's but stdin, stdout and stderr (CVE-2024-21626 was a
    // leaked directory fd); everything above is CLOEXEC already, this is for sure.
    // SAFETY: close_range(2) takes plain integers and touches no memory.
    unsafe {
        nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    let Some(prog) = argv.first() else {
        return StepError {
            step: "run",
            path: PathBuf::new(),
            errno: Errno::EINVAL,
        };
    };
    let path = PathBuf::from(prog.to_string_lossy().into_owned());
    match nix::unistd::execve(prog, argv, env) {
        Err(errno) => StepError {
            step: "run",
            path,
            errno,
        },
        Ok(never) => match never {},
    }
}

/// `mount(2)` with nix's generic arguments spelled out once.
fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StepError> {
    step(
        "mount",
        target,
        nix::mount::mount(source, target, fstype, flags, data),
    )
}

/// Mounts `layer` at `target` (overlayfs, with its extended attributes in the `user.`
/// namespace, the only one a user namespace may write). When overlayfs refuses (a kernel
/// without it in user namespaces, an upper filesystem it cannot use, a path its option
/// syntax cannot carry), the upper directory alone is bound there instead, with one line
/// on stderr (the build's log): the build then starts from an empty directory, slower but
/// the same.
fn mount_layer(layer: &Layer, target: &Path) -> Result<(), StepError> {
    let dirs = [&layer.lower, &layer.upper, &layer.work];
    let tried = if dirs.iter().any(|d| {
        d.as_os_str()
            .as_encoded_bytes()
            .iter()
            .any(|b| matches!(b, b',' | b':' | b'\\'))
    }) {
        Err(Errno::EINVAL)
    } else {
        let options = format!(
            "lowerdir={},upperdir={},workdir={},userxattr",
            layer.lower.display(),
            layer.upper.display(),
            layer.work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
    };
    if let Err(errno) = tried {
        eprintln!(
            "cartbuild: sandbox: cannot layer {} over {} ({errno}): it starts empty",
            target.display(),
            layer.lower.display()
        );
        mount(
            Some(&layer.upper),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None,
        )?;
    }
    Ok(())
}

/// Remounts a bind mount read-only, keeping the flags the kernel locks on mounts
/// copied into a less privileged namespace (mount_namespaces(7)): without them the
/// remount is refused with `EPERM`.
/// A new tmpfs at the directory `target` (created when missing), with `flags` and `mode`.
fn mount_tmpfs(target: &Path, flags: MsFlags, mode: &str) -> Result<(), StepError> {
    io_step("mkdir", target, fs::create_dir_all(target))?;
    mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        flags,
        Some(&format!("mode={mode}")),
    )
}

fn remount_read_only(target: &Path) -> Result<(), StepError> {
    use nix::sys::statvfs::FsFlags;
    let st = step("statvfs", target, nix::sys::statvfs::statvfs(target))?;
    let f = st.flags();
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    for (s, m) in [
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(s) {
            flags |= m;
        }
    }
    mount(None, target, None, flags, None)
}

/// `root` + an absolute path inside.
fn under(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// A mount point for `source` at `target`: a directory for a directory, an empty
/// file otherwise.
fn mount_point(source: &Path, target: &Path) -> Result<(), StepError> {
    let is_dir = io_step("stat", source, fs::metadata(source))?.is_dir();
    if is_dir {
        io_step("mkdir", target, fs::create_dir_all(target))
    } else {
        if let Some(parent) = target.parent() {
            io_step("mkdir", parent, fs::create_dir_all(parent))?;
        }
        io_step("create", target, File::create(target).map(drop))
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), StepError> {
    if let Some(parent) = path.parent() {
        io_step("mkdir", parent, fs::create_dir_all(parent))?;
    }
    io_step("write", path, fs::write(path, text))
}

/// `root/dev`: a tmpfs with the harmless devices bound from the host, read-only.
fn fill_dev(root: &Path) -> Result<(), StepError> {
    let dev = root.join("dev");
    mount_tmpfs(&dev, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "0755")?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        io_step("create", &target, File::create(&target).map(drop))?;
        mount(
            Some(&host),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let at = dev.join(name);
        io_step("symlink", &at, std::os::unix::fs::symlink(to, &at))?;
    }
    for scratch in [dev.join("shm"), root.join("tmp")] {
        mount_tmpfs(&scratch, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "1777")?;
    }
    remount_read_only(&dev)?;
    Ok(())
}

/// `root/etc/{passwd,group,hosts}`: who the script is, for tools that ask (id, whoami,
/// configure scripts).
fn write_identity(root: &Path) -> Result<(), StepError> {
    let etc = root.join("etc");
    write_file(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/:/bin/sh\ncartbuild:x:{SANDBOX_ID}:{SANDBOX_ID}:cartbuild:{BUILD_DIR}/home:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
        ),
    )?;
    write_file(
        &etc.join("group"),
        &format!("root:x:0:\ncartbuild:x:{SANDBOX_ID}:\nnogroup:x:65534:\n"),
    )?;
    write_file(
        &etc.join("hosts"),
        "127.0.0.1\tlocalhost cartbuild\n::1\tlocalhost\n",
    )?;
    Ok(())
}

/// Mounts the new root on `spec.root`, fills it, and pivots into it.
fn build_root(spec: &Spec) -> Result<(), StepError> {
    let none: Option<&Path> = None;
    // Nothing we mount propagates back to the host.
    mount(
        none,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let root = &spec.root;
    mount_tmpfs(root, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "0755")?;
    for b in &spec.binds {
        let target = under(root, &b.target);
        mount_point(&b.source, &target)?;
        mount(
            Some(&b.source),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None,
        )?;
        if !b.writable {
            remount_read_only(&target)?;
        }
    }
    for layer in &spec.layers {
        mount_layer(layer, &under(root, &layer.target))?;
    }
    for (link, to) in &spec.symlinks {
        let at = under(root, link);
        if let Some(parent) = at.parent() {
            io_step("mkdir", parent, fs::create_dir_all(parent))?;
        }
        io_step("symlink", &at, std::os::unix::fs::symlink(to, &at))?;
    }

    fill_dev(root)?;

    // A fresh procfs of the new PID namespace; its sysctls read-only.
    let proc = root.join("proc");
    io_step("mkdir", &proc, fs::create_dir_all(&proc))?;
    mount(
        Some(Path::new("proc")),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let sys = proc.join("sys");
    mount(
        Some(&sys),
        &sys,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    remount_read_only(&sys)?;

    write_identity(root)?;

    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves
    // nothing of the host but what was bound (the runc trick, pivot_root(2)).
    step("chdir", root, nix::unistd::chdir(root.as_path()))?;
    step("pivot_root", root, nix::unistd::pivot_root(".", "."))?;
    step(
        "detach the old root",
        root,
        nix::mount::umount2(".", MntFlags::MNT_DETACH),
    )?;
    step("chdir", Path::new("/"), nix::unistd::chdir("/"))?;
    mount(
        none,
        Path::new("/"),
        None,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None,
    )?;
    step(
        "set the host name in",
        Path::new("/proc/sys/kernel/hostname"),
        nix::unistd::sethostname("cartbuild"),
    )?;
    Ok(())
}

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct` (linux/capability.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two `CapData`, 64 capabilities.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the bounding and ambient sets, becomes [`SANDBOX_ID`], clears every
/// capability and sets `no_new_privs`.
fn drop_privileges(last_cap: u32) -> Result<(), StepError> {
    let here = Path::new("/proc/self/status");
    for cap in 0..=last_cap {
        // SAFETY: prctl(2) with integer arguments only.
        let r = unsafe {
            nix::libc::prctl(
                nix::libc::PR_CAPBSET_DROP,
                nix::libc::c_ulong::from(cap),
                0,
                0,
                0,
            )
        };
        step("drop from the bounding set", here, Errno::result(r))?;
    }
    // SAFETY: prctl(2) with integer arguments only.
    let r = unsafe {
        nix::libc::prctl(
            nix::libc::PR_CAP_AMBIENT,
            nix::libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    step("clear the ambient capabilities", here, Errno::result(r))?;
    if Uid::current().is_root() {
        // Root's supplementary groups (outside) would still open group-readable files.
        step("setgroups", here, nix::unistd::setgroups(&[]))?;
    }
    let id = Gid::from_raw(SANDBOX_ID);
    step("setresgid", here, nix::unistd::setresgid(id, id, id))?;
    let id = Uid::from_raw(SANDBOX_ID);
    step("setresuid", here, nix::unistd::setresuid(id, id, id))?;
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) reads one header and, for version 3, two data structs, which
    // both pointers provide for the duration of the call.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capset,
            &header as *const CapHeader,
            data.as_ptr(),
        )
    };
    step("clear the capabilities", here, Errno::result(r))?;
    step(
        "set no_new_privs",
        here,
        nix::sys::prctl::set_no_new_privs(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_the_helper_argument() {
        let mut spec = Spec {
            root: "/x".into(),
            binds: vec![],
            layers: vec![Layer {
                lower: "/cache/seed".into(),
                upper: "/work/zig-cache".into(),
                work: "/work/zig-cache.work".into(),
                target: "/toolchain/zig-cache".into(),
            }],
            nice: 10,
            symlinks: vec![],
            cwd: "/build/src".into(),
            argv: vec!["/bin/sh".into()],
        };
        system(&mut spec.binds, &mut spec.symlinks);
        assert!(spec.binds.iter().any(|b| b.target == Path::new("/usr")));
        assert!(spec.binds.iter().all(|b| !b.writable));
        let c = Sandbox::with_helper("/bin/cartbuild".into()).command(&spec);
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args[0], HELPER_COMMAND);
        let back: Spec = serde_json::from_slice(args[1].as_bytes()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn modes_have_distinct_keys() {
        assert_ne!(Mode::Namespaces.key(), Mode::None.key());
        assert_eq!(Mode::Namespaces.name(), "namespaces");
    }
}
