//! A session: the image's shell, or one command, inside every namespace of the target.
//!
//! The steps, in the order they happen:
//!
//! 1. In cartinject (the host): check the image, resolve and pin the target, read its
//!    environment, root and working directory, block every catchable signal into a signalfd,
//!    open a new pty (stdin is a terminal) or pipes (for whatever stdio is not an anonymous
//!    pipe: see [`crate::stdio`]), attach the loop device and mount the image detached.
//!    With `--match-container`, read the target's credentials, seccomp filter and LSM
//!    label (see [`crate::confine`]).
//! 2. Fork the *namespace child* (single-threaded): non-dumpable, joins every namespace of
//!    the target but the user namespace, unshares a private copy of the mount namespace,
//!    places the image there (see [`crate::place`]), enters the target's cgroups (opened in
//!    the host: see [`crate::cgroups`]), joins the user namespace, puts the session's stdio
//!    on fds 0-2, closes every other fd, takes the target's root and working directory (and
//!    `--match-container`'s profile), and forks.
//! 3. The *command process* (now inside the target's PID namespace, and visible there)
//!    takes a new session, the pty as controlling terminal, the default signal dispositions
//!    and mask, and execs.
//! 4. cartinject proxies the pty (raw mode, window size on SIGWINCH) or the pipes, forwards
//!    every other signal to the command, and when the namespace child exits (it waits for
//!    the command and exits with its status, 128+N for signal N) restores the terminal and
//!    exits with that status. The private namespace dies with the session's processes and the
//!    image's mount with it; the loop device, set to autoclear, then detaches itself.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use anyhow::Context;

use crate::cgroups::CgroupJoin;
use crate::child::{Child, EXIT_FAILURE, Report, Reporter};
use crate::exec::{self, ExecSpec, Stdio};
use crate::features::KernelApi;
use crate::image::Image;
use crate::join::{Joiner, Pin};
use crate::mount::ImageMount;
use crate::place::{self, HostRoot, MOUNT_POINT};
use crate::plan::{choose_power, in_cgroup_of};
use crate::procfs;
use crate::sys::ns::Namespace;
use crate::sys::process::{self, Forked};
use crate::sys::signal::{self, SignalSet};
use crate::sys::{fd, pty};
use crate::target::{self, Target};
use crate::userns::UserNs;

/// What the user asked for.
pub struct SessionArgs {
    /// The image file.
    pub image: PathBuf,
    /// The TARGET argument.
    pub target: String,
    /// The command, or `None` for the image's shell.
    pub command: Option<Vec<OsString>>,
    /// The kernel interfaces to use (`--legacy-mount`: `mount(2)` and no pidfds).
    pub api: KernelApi,
    /// What the image must satisfy (`--verify-key`).
    pub policy: crate::verify::Policy,
    /// Print each step.
    pub verbose: bool,
    /// `--profile` and its flags: the command's power (see [`crate::profile`]).
    pub power: crate::profile::Request,
}

mod proxy;

use proxy::{Proxy, WARNING};

/// Resolves the target and pins it: the shared first steps of every mode. Once pinned,
/// the process is checked again against the container it was resolved as (its ID in the
/// process's cgroup paths): a PID reused by another process between the runtime's answer
/// and the pin is refused.
pub fn pin_target(arg: &str, api: KernelApi) -> anyhow::Result<(Target, Pin)> {
    let target = target::resolve(arg, &target::resolvers())?;
    let stat = procfs::read_stat(target.pid)?;
    let pin = Pin::new(target.pid, stat.start_time, api.pidfds())?;
    if let Some(id) = &target.id {
        let cgroup =
            procfs::read_file(&procfs::proc_path(target.pid, "cgroup")).unwrap_or_default();
        if !pin.is_alive() || !in_cgroup_of(&cgroup, id) {
            anyhow::bail!(
                "pid {} is no longer the container {}: it exited or its PID was reused; run cartinject again",
                target.pid,
                crate::display::escape(id.chars().take(12).collect::<String>())
            );
        }
    }
    Ok((target, pin))
}

use crate::sys::fd::{stderr as stderr_fd, stdin, stdout};

/// Refuses an image the target cannot run, before anything is mounted; says in one line
/// when it runs through binfmt_misc (see [`crate::arch::check_image`]). An image with no
/// manifest beside it has no arch to check.
pub fn check_arch(image: &Image, pid: i32, note: &dyn Fn(&str)) -> anyhow::Result<()> {
    let Some(arch) = image.arch() else {
        note("the image has no manifest beside it: its arch is not checked");
        return Ok(());
    };
    let name = image
        .path()
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    match crate::arch::check_image(
        &crate::kernel::Procfs,
        pid,
        &crate::display::escape(&name),
        arch,
        crate::arch::host_arch(),
    )? {
        crate::arch::Fit::Same => {}
        crate::arch::Fit::Native(why) => note(&why),
        crate::arch::Fit::Emulated(line) => eprintln!("cartinject: {line}"),
    }
    Ok(())
}

/// `-v`'s notes: printed (escaped) when `verbose`.
fn noter(verbose: bool) -> impl Fn(&str) {
    move |text: &str| {
        if verbose {
            eprintln!("cartinject: {}", crate::display::escape(text));
        }
    }
}

/// What a session learns of its target before it forks: where the command runs.
struct TargetView {
    /// The target's environment, as read (the namespace child saves it in the session).
    env_raw: Vec<u8>,
    /// Its root directory (as the host sees its path) and working directory inside it.
    root: PathBuf,
    cwd: PathBuf,
    /// The root's device and inode, as the kernel holds it.
    root_id: (u64, u64),
}

impl TargetView {
    /// Reads it from `/proc/PID` (see [`crate::plan::target_environment`] and
    /// [`crate::plan::target_dirs`]: an unreadable environment is an empty one, an unreadable
    /// directory `/`).
    fn read(pid: i32, note: &dyn Fn(&str)) -> anyhow::Result<TargetView> {
        let kernel = crate::kernel::Procfs;
        let mut say = |text: String| note(&text);
        let env_raw = crate::plan::target_environment(&kernel, pid, &mut say)?;
        let (root, cwd) = crate::plan::target_dirs(&kernel, pid, &mut say)?;
        let root_id = procfs::root_identity(pid)?;
        Ok(TargetView {
            env_raw,
            root,
            cwd,
            root_id,
        })
    }
}

/// The session's stdio on cartinject's side: a pty (stdin is a terminal) or pipes for what
/// must not enter the container.
struct HostStdio {
    /// What the command gets.
    stdio: Stdio,
    /// The pty's master, when interactive.
    master: Option<OwnedFd>,
    /// Copies a stdin that must not enter the container into a pipe; lives (and is killed
    /// and reaped) with the session.
    stdin_feeder: Option<crate::stdio::Feeder>,
    /// Output pipes' read ends and the host fd each stands for.
    out_pipes: Vec<(OwnedFd, BorrowedFd<'static>)>,
}

impl HostStdio {
    /// Sets it up: a new pty with the terminal's size when `interactive`, else pipes for
    /// every stdio that is not an anonymous pipe (see [`crate::stdio`]).
    fn open(interactive: bool) -> anyhow::Result<HostStdio> {
        if interactive {
            let size = pty::window_size(stdin()).ok();
            let (m, slave) = pty::open_pair(size.as_ref()).context("failed to open a new pty")?;
            fd::set_nonblocking(m.as_fd()).context("failed to set up the pty")?;
            return Ok(HostStdio {
                stdio: Stdio::Pty(slave),
                master: Some(m),
                stdin_feeder: None,
                out_pipes: Vec::new(),
            });
        }
        // Never hand a file, terminal or socket of the host to the container: an output that
        // is not an anonymous pipe gets one that cartinject copies from.
        let mut out_pipes = Vec::new();
        let mut replace = |host: BorrowedFd<'static>| -> anyhow::Result<Option<OwnedFd>> {
            if crate::stdio::passes_through(host) {
                return Ok(None);
            }
            let (read_end, write_end) = fd::pipe().context("failed to create a pipe")?;
            fd::set_nonblocking(read_end.as_fd()).context("failed to set up a pipe")?;
            out_pipes.push((read_end, host));
            Ok(Some(write_end))
        };
        let stdout_pipe = replace(stdout())?;
        let stderr_pipe = replace(stderr_fd())?;
        let (stdin_pipe, stdin_feeder) = match crate::stdio::replace_stdin(stdin())
            .context("failed to set up a pipe for stdin")?
        {
            Some((read_end, feeder)) => (Some(read_end), feeder),
            None => (None, None),
        };
        Ok(HostStdio {
            stdio: Stdio::Inherit {
                stdin: stdin_pipe,
                stdout: stdout_pipe,
                stderr: stderr_pipe,
            },
            master: None,
            stdin_feeder,
            out_pipes,
        })
    }
}

/// Who in the target's PID namespace could trace a process of ours there; when something
/// could get past non-dumpable, cartinject first re-executes itself from a sealed copy (which
/// then comes back here; see [`crate::exeseal`]).
fn sealed_against(pid: i32, note: &dyn Fn(&str)) -> anyhow::Result<crate::exeseal::Tracers> {
    let tracers = crate::exeseal::tracers(pid);
    if !crate::exeseal::running_sealed() && tracers.needs_sealed_copy() {
        crate::exeseal::ensure()
            .context("failed to protect cartinject's binary before entering a container")?;
    }
    if crate::exeseal::running_sealed() {
        note("running from a sealed in-memory copy of cartinject");
    }
    Ok(tracers)
}

/// The target's cgroups, opened here in the host (the namespace child enters them), with a
/// warning for each that cannot be (a container with its own cgroup namespace names its
/// sub-cgroups: the paths are escaped).
fn open_cgroups(pid: i32, note: &dyn Fn(&str)) -> CgroupJoin {
    let (cgroups, warnings) = CgroupJoin::open(pid);
    for warning in &warnings {
        eprintln!("cartinject: warning: {}", crate::display::escape(warning));
    }
    for path in cgroups.paths() {
        note(&format!("joining cgroup {}", path.display()));
    }
    cgroups
}

/// Runs a session and returns the exit status cartinject should exit with.
pub fn run(args: SessionArgs) -> anyhow::Result<i32> {
    let verbose = args.verbose;
    let note = noter(verbose);
    let linger = crate::keep::linger(std::env::var_os(crate::keep::LINGER_ENV).as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    let image = Image::open(&args.image, &args.policy)?;
    let (target, pin) = pin_target(&args.target, args.api)?;
    check_arch(&image, target.pid, &note)?;
    let tracers = sealed_against(target.pid, &note)?;
    let mut watch = crate::watch::TargetWatch::new(&target, &pin);
    let userns = UserNs::of(&pin)?;
    let power = choose_power(&args.power, &tracers, target.pid, verbose)?;
    let pinned = if pin.has_pidfd() {
        "by pidfd"
    } else {
        "by PID and start time"
    };
    note(&format!("target {target}, pinned {pinned}"));
    let view = TargetView::read(target.pid, &note)?;
    // The target's root as the kernel holds it, opened through the host's procfs: the
    // namespace child chroots only into the directory that is this one.
    let host_procfs = crate::sys::resolve::open_root()
        .and_then(|root| crate::sys::resolve::open_procfs(std::os::fd::AsFd::as_fd(&root)))
        .map_err(|e| anyhow::anyhow!("cannot open the host's /proc as procfs: {e}"))?;
    let joiner = Joiner::plan(&pin, &Namespace::ALL)?;
    note(&format!("joining namespaces: {}", joiner.describe()));
    let cgroups = open_cgroups(target.pid, &note);

    // Signals first, so none is lost between here and the command's start.
    let catchable = SignalSet::of(&signal::catchable());
    let saved_mask = signal::block(&catchable).context("failed to block signals")?;
    let sigfd = signal::signalfd(&catchable).context("failed to create a signalfd")?;

    let interactive = pty::is_terminal(stdin());
    let term = interactive.then(|| std::env::var_os("TERM").unwrap_or_else(|| "xterm".into()));
    let target_env = procfs::parse_environ(&view.env_raw);
    let env = exec::session_env(&target_env, &target.label(), term.as_deref());
    let path = exec::path_of(&env);
    let host = HostStdio::open(interactive)?;
    let spec = ExecSpec {
        command: args.command.clone(),
        env: exec::to_cstrings(&env),
        path,
        root: view.root,
        root_id: view.root_id,
        cwd: view.cwd,
        stdio: host.stdio,
        signal_mask: saved_mask,
        power,
        procfs: Some(host_procfs),
    };

    let (image_mount, notes, kept) = {
        // A bounded wait, ended by a stop signal (blocked above, so still pending).
        let _lock = image
            .lock(&|| signal::pending_of(&signal::STOPPING))
            .map_err(|e| ExitWith {
                code: e.exit_code(),
                message: e.to_string(),
            })?;
        image.mount_keeping(args.api, userns.as_ref(), !linger.is_zero())?
    };
    notes.show(verbose);
    let host_root = HostRoot::for_mount(&image_mount).map_err(|e| anyhow::anyhow!("{e}"))?;

    // The closure owns the pty slave, the pipes' write ends, the detached mount or loop
    // device: in the parent they are dropped (closed) as soon as the child is forked.
    let env_raw = view.env_raw;
    let mut child = Child::spawn(move |reporter| {
        namespace_child(
            reporter,
            joiner,
            image_mount,
            host_root,
            cgroups,
            spec,
            &env_raw,
        )
    })
    .context("failed to fork")?;

    let raw = if interactive {
        Some(pty::RawMode::enter(stdin()).context("failed to put the terminal in raw mode")?)
    } else {
        None
    };
    let outcome = Proxy::new(
        &mut child,
        &sigfd,
        &mut watch,
        host.master,
        host.out_pipes,
        verbose,
    )
    .run();
    drop(raw);
    drop(host.stdin_feeder);
    let outcome = outcome?;
    // The device stays for the next session (see crate::keep), unless this one failed.
    if let Some(kept) = kept
        && outcome.failure.is_none()
    {
        match kept.linger(linger) {
            Ok(step) => note(&step),
            Err(why) => note(&format!("the image's device is not kept: {why}")),
        }
    }
    conclude(outcome, &watch)
}

/// The exit status of a session that ended with `outcome` (`watch`: its target's watch).
fn conclude(outcome: proxy::Outcome, watch: &crate::watch::TargetWatch) -> anyhow::Result<i32> {
    if outcome.target_exited {
        eprintln!("cartinject: {}", watch.message());
    }
    if let Some((code, message)) = outcome.failure {
        anyhow::bail!(ExitWith { code, message });
    }
    if let Some(sig) = outcome.aborted_by {
        return Ok(128 + sig);
    }
    Ok(outcome.ended.code())
}

/// A failure with its own exit code (126, 127, or 125).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitWith {
    /// The exit code.
    pub code: i32,
    /// The message.
    pub message: String,
}

/// Steps 2 and 3 of the module doc, in the namespace child. Returns its exit code.
fn namespace_child(
    reporter: &Reporter,
    mut joiner: Joiner<'_>,
    image: ImageMount,
    host_root: Option<HostRoot>,
    cgroups: CgroupJoin,
    mut spec: ExecSpec,
    target_env: &[u8],
) -> i32 {
    let entered = enter_and_place(
        reporter,
        &mut joiner,
        image,
        host_root.as_ref(),
        cgroups,
        (&spec.root, spec.root_id),
        target_env,
    )
    .and_then(|()| {
        drop(joiner);
        drop(host_root);
        contain_for_fork(reporter, &mut spec)
    });
    let (exec_reports, exec_reporter) = match entered.and_then(|()| {
        Reporter::pipe().map_err(|e| format!("cannot create a pipe inside the target: {e}"))
    }) {
        Ok(pipe) => pipe,
        Err(message) => {
            reporter.fail(EXIT_FAILURE, message);
            return EXIT_FAILURE;
        }
    };
    match process::fork() {
        Ok(Forked::Child) => {
            // Visible inside the container from here on. Its parent is outside our PID
            // namespace unless the target shares the host's; either way its parent's life
            // is the read end of the exec pipe, once our own copy of it is closed.
            if fd::close_all_except(&[exec_reporter.raw_fd()]).is_err()
                || exec_reporter.tie_to_reader().is_err()
            {
                process::exit_now(EXIT_FAILURE);
            }
            let code = exec::exec(spec, &exec_reporter);
            process::exit_now(code)
        }
        Ok(Forked::Parent(pid)) => {
            reporter.send(&Report::CommandPid(pid));
            drop(spec);
            drop(exec_reporter);
            let code = match process::wait(pid) {
                Ok(ended) => ended.code(),
                Err(e) => {
                    reporter.fail(EXIT_FAILURE, format!("waiting for the command: {e}"));
                    EXIT_FAILURE
                }
            };
            // Only a failure is passed on, never a PID: whatever reached the command's fds
            // could have written to its pipe.
            if let Some((code, message)) = crate::child::read_failure(exec_reports.as_fd()) {
                reporter.fail(code, message);
            }
            code
        }
        Err(e) => {
            reporter.fail(EXIT_FAILURE, format!("cannot fork inside the target: {e}"));
            EXIT_FAILURE
        }
    }
}

/// What the namespace child does between joining everything and forking the command (the
/// CVE-2024-21626 class): the session's stdio goes on fds 0 to 2, every other fd is closed
/// (the pidfd, the image file, the host's root in legacy mode, the cgroup files,
/// cartinject's own stdio, the pty master, the signalfd: whatever the fork copied), root and
/// working directory become the target's, and `--match-container`'s profile is applied. The
/// command process is forked with nothing else.
fn contain_for_fork(reporter: &Reporter, spec: &mut ExecSpec) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    exec::install_stdio(spec)?;
    let mut keep = vec![reporter.raw_fd()];
    keep.extend(spec.procfs.as_ref().map(AsRawFd::as_raw_fd));
    fd::close_all_except(&keep).map_err(|e| format!("cannot close inherited fds: {e}"))?;
    // settle closes the procfs fd once the profile is applied.
    exec::settle(spec)
}

fn enter_and_place(
    reporter: &Reporter,
    joiner: &mut Joiner<'_>,
    image: ImageMount,
    host_root: Option<&HostRoot>,
    cgroups: CgroupJoin,
    target_root: (&std::path::Path, (u64, u64)),
    target_env: &[u8],
) -> Result<(), String> {
    let cartinject = process::parent_pid();
    process::set_non_dumpable().map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    process::die_with_parent().map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    joiner.prepare().map_err(|e| e.to_string())?;
    let how = joiner.join_non_user().map_err(|e| e.to_string())?;
    reporter.note(format!("joined the target's namespaces: {how}"));
    place::private_namespace().map_err(|e| {
        format!("cannot place the image in a private mount namespace of the target: {e}")
    })?;
    enter_target_root(target_root.0, target_root.1)?;
    let placed = place::shadow_dev_with(host_root, Some(target_env), &mut |warning| {
        reporter.note(format!("{WARNING}{warning}"));
    })
    .and_then(|()| place::attach(&image, std::path::Path::new(MOUNT_POINT), host_root));
    placed.map_err(|e| {
        format!("cannot place the image in a private mount namespace of the target: {e}")
    })?;
    reporter.note(format!(
        "image placed at {MOUNT_POINT} in a private mount namespace"
    ));
    // The mount holds the filesystem and the loop device from here on.
    drop(image);
    // Into the container's cgroups before the command is forked, so it is born there.
    for failed in cgroups.enter() {
        reporter.note(format!(
            "{WARNING}{failed}: the session runs outside that cgroup"
        ));
    }
    joiner.join_user_and_rest().map_err(|e| e.to_string())?;
    // Joining a user namespace and becoming its root changed our credentials, which clears
    // the parent-death signal and resets the dumpable flag to fs.suid_dumpable.
    crate::child::tie_to_parent(&[cartinject])
        .map_err(|e| format!("cartinject went away, or prctl failed: {e}"))?;
    Ok(())
}

/// Makes the target's root (`path` in its mount namespace, whose (device, inode) the host
/// saw through `/proc/PID/root` as `expected`) the root of the calling process, so that the
/// image is placed inside it: a target that chrooted itself then finds the real image at
/// `/dev/crashcart`, never one planted at `ROOT/dev/crashcart`. The path is opened without
/// following any symlink and must be the very directory the kernel holds as the target's
/// root; anything else (a rename or a mount over it since) refuses the session.
fn enter_target_root(path: &std::path::Path, expected: (u64, u64)) -> Result<(), String> {
    use crate::sys::resolve;
    let shown = crate::display::path(path);
    let opened = resolve::open_root().and_then(|root| match path.strip_prefix("/") {
        Ok(below) if below.as_os_str().is_empty() => Ok(root),
        Ok(below) => resolve::open_dir(root.as_fd(), below),
        Err(_) => Err(crate::sys::Errno::EINVAL),
    });
    let dir = opened.map_err(|e| format!("cannot open the target's root {shown} without following symlinks ({e}): the container changed it; run cartinject again"))?;
    let found = resolve::identity(dir.as_fd()).map_err(|e| format!("fstat {shown}: {e}"))?;
    if found != expected {
        return Err(format!(
            "the target's root {shown} is no longer the directory the target runs in (the container renamed or covered it): refusing to place the image there"
        ));
    }
    if path != std::path::Path::new("/") {
        process::fchdir(dir.as_fd()).map_err(|e| format!("fchdir {shown}: {e}"))?;
        process::chroot(std::path::Path::new("."))
            .map_err(|e| format!("cannot chroot to the target's root {shown}: {e}"))?;
        process::chdir(std::path::Path::new("/")).map_err(|e| format!("chdir /: {e}"))?;
    }
    Ok(())
}
