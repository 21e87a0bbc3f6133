//! `cartinject`'s command line: parses it and hands it to the library ([`cartinject`]).

#![forbid(unsafe_code)]

/// The allocator: dlmalloc rather than the C library's. The static build links musl, whose
/// allocator (mallocng) gives freed memory back to the kernel at once: a session made about
/// 45 `mmap`/`munmap` pairs, each a page-table change and a TLB flush, and dlmalloc (which
/// keeps what it freed for the next allocation) took 0.44 ms off a 4.1 ms session
/// (`tests/bench/inject_ab.sh`, 300 interleaved runs). Forking stays safe: cartinject forks
/// only while single-threaded ([`cartinject::sys::process`] checks), so no other thread can
/// hold the allocator's lock at a fork.
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};

use cartinject::child::EXIT_FAILURE;
use cartinject::features::KernelApi;
use cartinject::session::{ExitWith, SessionArgs};
use cartinject::{
    arch, command, display, image, kernel, oci, profile, session, sys, target, verify,
};

/// Give a container that has no shell a working shell and tools from a debug image.
///
/// With IMAGE and TARGET, mounts the image at /dev/crashcart for the target (privately: the
/// container does not see it) and starts the image's shell, or runs CMD, inside all of the
/// target's namespaces, with the target's root and working directory and PATH led by the
/// image's bin and sbin. When it ends, what was mounted goes away and cartinject exits with
/// its status (128+N for signal N, 127 for a command that does not exist).
///
/// IMAGE defaults to $CARTINJECT_IMAGE, then ./crashcart.img. TARGET is a PID, or a Docker
/// container name, full ID or unique ID prefix; `pid:N` and `docker:NAME` force the kind; an
/// ID of any runtime is also found in /proc/*/cgroup. A lone argument is the TARGET.
///
/// The debug process runs as the container's root with the `debug` profile: what tcpdump,
/// strace, lsof and gdb need (ptrace, raw sockets, network admin, DAC override) and none of
/// the capabilities that reach past the container (CAP_SYS_ADMIN, CAP_SYS_MODULE,
/// CAP_DAC_READ_SEARCH, ...). --profile match gives it exactly the workload's power,
/// --profile sysadmin everything. Its environment is built from an allow-list, never
/// inherited from the container.
///
/// Exit status: the command's, or 125 when cartinject itself fails, 2 for bad usage.
#[derive(Parser, Debug)]
#[command(name = "cartinject", version, verbatim_doc_comment)]
struct Cli {
    /// [IMAGE] TARGET
    #[arg(value_name = "ARGS", num_args = 0..=2)]
    args: Vec<PathBuf>,

    /// The command to run instead of the image's shell, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,

    /// Only mount the image at /dev/crashcart in the target (for docker exec, nsenter) and exit.
    #[arg(short = 'm', long = "mount", conflicts_with_all = ["unmount", "list"])]
    mount: bool,

    /// Remove an image that -m left at /dev/crashcart in the target.
    #[arg(short = 'u', long = "unmount", conflicts_with_all = ["list"])]
    unmount: bool,

    /// List where images are mounted now (target, image, loop device).
    #[arg(short = 'l', long = "list")]
    list: bool,

    /// With --list: print JSON.
    #[arg(long, requires = "list")]
    json: bool,

    /// Use mount(2) and /proc/PID/ns instead of the new mount API and pidfds, as on a
    /// kernel before 5.2 (also: CARTINJECT_LEGACY_MOUNT=1).
    #[arg(long, env = "CARTINJECT_LEGACY_MOUNT", value_parser = clap::builder::FalseyValueParser::new())]
    legacy_mount: bool,

    /// The debug process's power: `debug` (the default: what debuggers need, nothing that
    /// reaches past the container), `match` (exactly the target's uid, gids, capability
    /// sets, no_new_privs, seccomp filter and LSM label), `sysadmin` (every capability, with
    /// a warning). Against a container that can ptrace the session, the default is `match`.
    #[arg(long, value_enum, value_name = "NAME", conflicts_with_all = ["mount", "unmount", "list"])]
    profile: Option<profile::ProfileName>,

    /// The same as `--profile match`.
    #[arg(long, conflicts_with_all = ["mount", "unmount", "list", "profile"])]
    match_container: bool,

    /// With `--profile match`: start the session even when something of the target's power
    /// cannot be copied exactly (its seccomp filter, LSM label, ids), with a warning for each.
    #[arg(long, conflicts_with_all = ["mount", "unmount", "list"])]
    allow_unmatched: bool,

    /// Allow `--profile debug` or `sysadmin` against a container whose processes can ptrace
    /// the session (CAP_SYS_PTRACE over the host's user namespace), and so use its power.
    #[arg(long, conflicts_with_all = ["mount", "unmount", "list"])]
    allow_ptrace_escalation: bool,

    /// Refuse an image unless IMAGE.minisig beside it verifies with this minisign public key
    /// (a key file, as `cartbuild keygen` or `minisign -G` write it, or the base64 key). Every
    /// image is also checked against the IMAGE.sha256 or IMAGE.manifest.json beside it.
    #[arg(long, value_name = "KEY", env = "CARTINJECT_VERIFY_KEY")]
    verify_key: Option<String>,

    /// With IMAGE as oci://…: the largest image to pull, in bytes or with a K, M or G
    /// suffix (default 4G); its sidecars get at most 64M, its manifest at most 4M. A larger
    /// blob is refused before it is downloaded.
    #[arg(long, value_name = "BYTES", env = oci::MAX_SIZE_ENV, value_parser = oci::parse_size)]
    oci_max_size: Option<u64>,

    /// Print each step to stderr.
    #[arg(short, long)]
    verbose: bool,

    /// Write shell completions (bash, zsh, fish) and the man page under DIR and exit
    /// (./build.sh installs them).
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    generate_assets: Option<PathBuf>,
}

/// The exit status of bad usage, as `--help` says (clap's own parse errors exit 2 too).
const EXIT_USAGE: u8 = 2;

/// A command line that parses but asks for nothing cartinject can do: exit 2, one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(&'static str);

/// What the command line asks for, once its usage is checked.
enum Mode {
    /// `--list`.
    List,
    /// Everything that names a TARGET.
    Target {
        /// IMAGE, when given.
        image: Option<PathBuf>,
        /// TARGET.
        target: String,
    },
}

/// Checks the usage rules clap cannot express, before anything else (even the root check)
/// so that bad usage is always exit 2.
fn usage(cli: &Cli) -> Result<Mode, UsageError> {
    if cli.list {
        if !cli.args.is_empty() || !cli.command.is_empty() {
            return Err(UsageError("--list takes no IMAGE, TARGET or command"));
        }
        return Ok(Mode::List);
    }
    let (image, target) = match cli.args.as_slice() {
        [target] => (None, target),
        [image, target] => (Some(image.clone()), target),
        _ => {
            return Err(UsageError(
                "no TARGET given: name a container or PID, as in `cartinject IMAGE TARGET` (see --help)",
            ));
        }
    };
    if (cli.mount || cli.unmount) && !cli.command.is_empty() {
        return Err(UsageError(
            "-m and -u take no command: run `cartinject IMAGE TARGET -- CMD` for one",
        ));
    }
    Ok(Mode::Target {
        image,
        target: target.to_string_lossy().into_owned(),
    })
}

/// `--generate-assets DIR`: `DIR/completions/{bash/cartinject,zsh/_cartinject,
/// fish/cartinject.fish}` and `DIR/man/man1/cartinject.1`.
fn generate_assets(dir: &Path) -> anyhow::Result<()> {
    use clap_complete::Shell;
    let write = |path: PathBuf, bytes: &[u8]| -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("failed to write {}", path.display()))
    };
    for (shell, file) in [
        (Shell::Bash, "bash/cartinject"),
        (Shell::Zsh, "zsh/_cartinject"),
        (Shell::Fish, "fish/cartinject.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "cartinject", &mut script);
        write(dir.join("completions").join(file), &script)?;
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .context("failed to render the man page")?;
    write(dir.join("man/man1/cartinject.1"), &page)
}

fn run(cli: Cli, mode: Mode) -> anyhow::Result<i32> {
    if !sys::process::is_root() {
        anyhow::bail!(
            "cartinject must run as root (it attaches loop devices and joins namespaces): run it with sudo"
        );
    }
    let (image_arg, target) = match mode {
        Mode::List => return command::list::run(cli.json),
        Mode::Target { image, target } => (image, target),
    };
    let image = image::choose(image_arg.as_deref());
    let api = KernelApi::from_legacy_flag(cli.legacy_mount);
    if cli.unmount {
        return command::unmount::run(&target, api);
    }
    // Only what attaches an image needs its key (-u and --list never read one).
    let policy = verify::Policy::from_key(cli.verify_key.as_deref())?;
    // IMAGE as oci://HOST/REPO:TAG or @sha256:…: pulled (or found in the cache) now, with
    // the HTTP client gone before anything forks (see oci).
    let image = if oci::is_reference(&image) {
        let options = oci::PullOptions {
            max_size: cli.oci_max_size.unwrap_or(oci::DEFAULT_MAX_SIZE),
            keyed: policy.demands_signature(),
        };
        // Asked only when the reference names an index: which of its images to take.
        let mut target_arch = || -> Result<arch::Arch, String> {
            let resolved =
                target::resolve(&target, &target::resolvers()).map_err(|e| e.to_string())?;
            arch::target_arch(&kernel::Procfs, resolved.pid)
                .map(|t| t.arch())
                .map_err(|e| e.to_string())
        };
        let pulled = oci::localize(
            &image.to_string_lossy(),
            &oci::cache_base(),
            options,
            &mut target_arch,
        )
        .context("failed to pull the image")?;
        if cli.verbose {
            for step in &pulled.steps {
                eprintln!("cartinject: {step}");
            }
        }
        if let Some(summary) = &pulled.summary {
            eprintln!("cartinject: {summary}");
        }
        pulled.image
    } else {
        image
    };
    if cli.mount {
        return command::mount::run(&image, &target, api, &policy, cli.verbose);
    }
    session::run(SessionArgs {
        image,
        target,
        command: (!cli.command.is_empty()).then_some(cli.command),
        api,
        policy,
        verbose: cli.verbose,
        power: profile::Request {
            profile: if cli.match_container {
                Some(profile::ProfileName::Match)
            } else {
                cli.profile
            },
            allow_ptrace_escalation: cli.allow_ptrace_escalation,
            allow_unmatched: cli.allow_unmatched,
        },
    })
}

/// The error and its causes on one line, each cause once (our messages often already
/// quote their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    // Messages quote names, paths and entries read from containers: whatever slipped
    // through unescaped is escaped here, before it reaches the operator's terminal.
    display::controls(line.replace('\n', " "))
}

fn main() -> ExitCode {
    // Non-dumpable from the start, and so every child too: nothing in a container may open
    // /proc/PID/{exe,fd,mem} of a cartinject process or ptrace it without CAP_SYS_PTRACE in
    // our user namespace (runc does this before joining: CVE-2019-5736). Core dumps of
    // cartinject are off as a consequence.
    if let Err(e) = sys::process::set_non_dumpable() {
        eprintln!("cartinject: cannot make the process non-dumpable (prctl: {e})");
        return ExitCode::from(u8::try_from(EXIT_FAILURE).unwrap_or(1));
    }
    // A closed stdin, stdout or stderr reads as /dev/null: a pipe opened later must not
    // take its number and pass for it.
    if let Err(e) = sys::fd::ensure_std_fds_open() {
        eprintln!("cartinject: cannot open /dev/null for a closed standard fd: {e}");
        return ExitCode::from(u8::try_from(EXIT_FAILURE).unwrap_or(1));
    }
    let cli = Cli::parse();
    if let Some(dir) = &cli.generate_assets {
        return match generate_assets(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cartinject: {}", one_line(&e));
                ExitCode::from(u8::try_from(EXIT_FAILURE).unwrap_or(1))
            }
        };
    }
    let mode = match usage(&cli) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("cartinject: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(cli, mode) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(e) => {
            eprintln!("cartinject: {}", one_line(&e));
            let code = e
                .downcast_ref::<ExitWith>()
                .map_or(EXIT_FAILURE, |x| x.code);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}
