//! The last steps of a session, in the process that becomes the user's shell or command:
//! the target's root and working directory, the terminal or pipes, the environment, finding
//! the program, and `execve`.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::child::{EXIT_FAILURE, Reporter};
use crate::display;
use crate::place::MOUNT_POINT;
use crate::profile::Power;
use crate::sys::Errno;
use crate::sys::process;
use crate::sys::pty;
use crate::sys::signal::{self, SignalSet};

pub use crate::environ::session_env;

/// Shells looked for in the image's `bin/` when it has no bash, in order. Not zsh: it
/// always reads its compiled-in `/etc/zshenv`, which is the container's file (zsh(1),
/// STARTUP/SHUTDOWN FILES: "this cannot be overridden").
pub const SHELLS: [&str; 5] = ["bash", "mksh", "ash", "dash", "sh"];
/// Where an image may keep the rc file of an interactive session, in order
/// (`etc/crashcartrc` is where `recipes/base.toml` puts it).
pub const RC_FILES: [&str; 4] = [
    "etc/crashcartrc",
    "etc/bashrc",
    "etc/bash.bashrc",
    ".bashrc",
];

/// What the session's stdin, stdout and stderr are.
pub enum Stdio {
    /// The slave side of a new pty, for all three, as the controlling terminal.
    Pty(OwnedFd),
    /// Inherited from cartinject, except the given replacements (pipes standing in for
    /// anything that is not an anonymous pipe: see [`crate::stdio`]).
    Inherit {
        /// Replacement for fd 0.
        stdin: Option<OwnedFd>,
        /// Replacement for fd 1.
        stdout: Option<OwnedFd>,
        /// Replacement for fd 2.
        stderr: Option<OwnedFd>,
    },
    /// Already on fds 0, 1 and 2 (see [`install_stdio`]); `terminal` when they are the pty.
    Installed {
        /// Whether fd 0 is the session's pty, to become the controlling terminal.
        terminal: bool,
    },
}

/// Everything the command process needs, prepared in the host before forking.
pub struct ExecSpec {
    /// The command and its arguments; `None` for the image's shell.
    pub command: Option<Vec<OsString>>,
    /// The environment, `NAME=value`.
    pub env: Vec<CString>,
    /// The directories of PATH, in order.
    pub path: Vec<PathBuf>,
    /// The target's root inside its mount namespace (`/` unless it is chrooted).
    pub root: PathBuf,
    /// The (device, inode) of the target's root, as opened through the host's
    /// `/proc/PID/root`: the namespace child checks that [`ExecSpec::root`] still names it.
    pub root_id: (u64, u64),
    /// The target's working directory inside its root.
    pub cwd: PathBuf,
    /// Standard fds.
    pub stdio: Stdio,
    /// The signal mask to restore before exec.
    pub signal_mask: SignalSet,
    /// The session's power (`--profile`), applied last, before the command is forked
    /// (see [`crate::profile`]).
    pub power: Power,
    /// The host's procfs, opened and checked before joining (LSM labels are written only
    /// through it).
    pub procfs: Option<OwnedFd>,
}

/// Turns `(name, value)` pairs into `NAME=value` C strings (entries with NUL are dropped).
pub fn to_cstrings(env: &[(OsString, OsString)]) -> Vec<CString> {
    env.iter()
        .filter_map(|(k, v)| {
            let mut bytes = k.clone().into_vec();
            bytes.push(b'=');
            bytes.extend_from_slice(v.as_bytes());
            CString::new(bytes).ok()
        })
        .collect()
}

/// Splits a PATH value into directories.
pub fn split_path(value: &OsStr) -> Vec<PathBuf> {
    value
        .as_bytes()
        .split(|&b| b == b':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(OsStr::from_bytes(d)))
        .collect()
}

/// The directories of the `PATH` in a session's environment (see [`session_env`]), in
/// order; none without one.
pub fn path_of(env: &[(OsString, OsString)]) -> Vec<PathBuf> {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| split_path(v))
        .unwrap_or_default()
}

/// Where to look for `program`: itself when it holds a `/` (relative to the working
/// directory or absolute), else each directory of `path` in order.
pub fn candidates(program: &Path, path: &[PathBuf]) -> Vec<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        vec![program.to_path_buf()]
    } else {
        path.iter().map(|d| d.join(program)).collect()
    }
}

/// Tries `candidates` for `program` in order with `try_exec` (which returns only on
/// failure, with the errno), as `execvp` does: one that is not there (ENOENT, ENOTDIR) is
/// passed over, one that may not be run (EACCES) is remembered and the search goes on, any
/// other failure ends it. Returns the exit code (126: found but cannot run; 127: not found)
/// and the one line for the user.
pub fn search(
    program: &Path,
    candidates: &[PathBuf],
    try_exec: &mut dyn FnMut(&CString) -> Errno,
) -> (i32, String) {
    let mut denied = None;
    for candidate in candidates {
        let Ok(c_path) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        match try_exec(&c_path) {
            Errno::ENOENT | Errno::ENOTDIR => continue,
            Errno::EACCES => {
                denied.get_or_insert_with(|| candidate.clone());
            }
            errno => {
                return (
                    126,
                    format!("cannot run {}: {errno}", display::path(candidate)),
                );
            }
        }
    }
    if let Some(path) = denied {
        return (
            126,
            format!("cannot run {}: permission denied", display::path(&path)),
        );
    }
    let name = display::path(program);
    let message = if candidates.len() == 1 && program.is_absolute() {
        format!("command not found: {name} does not exist in the target: check the path")
    } else {
        format!(
            "command not found: `{name}` is neither in the image ({MOUNT_POINT}/bin, {MOUNT_POINT}/sbin) nor in the target's PATH: check the name, or use an image that has it"
        )
    };
    (127, message)
}

/// The image's shell: its arguments, and for an interactive session the `ENV` variable
/// that names the image's rc file.
struct Shell {
    argv: Vec<OsString>,
    env: Option<CString>,
}

/// The image's shell (the first of [`SHELLS`] in the image's `bin/`), started so that it
/// reads no file of the container's.
///
/// An interactive bash reads its compiled-in `SYS_BASHRC` even with `--rcfile` (Debian's
/// bash: `/etc/bash.bashrc`, the container's file; the image's own bash is built with every
/// such default in the image, see recipes/base.toml, but an image may carry another bash).
/// In POSIX mode it reads `$ENV` instead and nothing else (bash(1), INVOCATION), so it is
/// started as `bash --posix --noprofile -i` with `ENV` naming the image's rc file, which
/// turns POSIX mode off (`set +o posix`) first; with no rc file in the image, as
/// `bash --noprofile --norc -i`. The other shells read `$ENV` alone when interactive and not
/// a login shell. `HOME` is the image (see [`crate::environ`]), so `~/...` files are the
/// image's too.
fn shell(interactive: bool) -> Option<Shell> {
    shell_with(interactive, &|path: &Path| {
        std::fs::metadata(path).map_or(Found::Nothing, |m| {
            if !m.is_file() {
                Found::Nothing
            } else if m.permissions().mode() & 0o111 != 0 {
                Found::Executable
            } else {
                Found::File
            }
        })
    })
}

/// What is at a path of the image, as [`shell_with`] needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Nothing, or not a regular file.
    Nothing,
    /// A regular file without any execute bit.
    File,
    /// A regular file with one.
    Executable,
}

/// [`shell`], looking at the image's files through `probe`.
fn shell_with(interactive: bool, probe: &dyn Fn(&Path) -> Found) -> Option<Shell> {
    let bin = Path::new(MOUNT_POINT).join("bin");
    let (name, path) = SHELLS
        .iter()
        .map(|s| (*s, bin.join(s)))
        .find(|(_, p)| probe(p) == Found::Executable)?;
    let mut argv = vec![path.into_os_string()];
    if !interactive {
        return Some(Shell { argv, env: None });
    }
    let rc = RC_FILES
        .iter()
        .map(|rc| Path::new(MOUNT_POINT).join(rc))
        .find(|p| probe(p) != Found::Nothing);
    if name == "bash" {
        let flags: &[&str] = if rc.is_some() {
            &["--posix", "--noprofile"]
        } else {
            &["--noprofile", "--norc"]
        };
        argv.extend(flags.iter().map(OsString::from));
    }
    argv.push("-i".into());
    let env = rc.and_then(|rc| {
        let mut var = b"ENV=".to_vec();
        var.extend_from_slice(rc.as_os_str().as_bytes());
        CString::new(var).ok()
    });
    Some(Shell { argv, env })
}

/// Puts the session's stdio on fds 0, 1 and 2 of the calling process (the namespace child,
/// before it forks the command, so that the command holds nothing of cartinject's own stdio
/// at any moment) and closes the originals.
pub fn install_stdio(spec: &mut ExecSpec) -> Result<(), String> {
    let stdio = std::mem::replace(&mut spec.stdio, Stdio::Installed { terminal: false });
    dup_stdio(&stdio)?;
    let terminal = match &stdio {
        Stdio::Pty(_) => true,
        Stdio::Inherit { .. } => false,
        Stdio::Installed { terminal } => *terminal,
    };
    drop(stdio);
    spec.stdio = Stdio::Installed { terminal };
    Ok(())
}

/// Duplicates `stdio`'s fds onto 0, 1 and 2 (the pty's slave onto all three, each
/// replacement onto its own); nothing for [`Stdio::Installed`], which is there already.
fn dup_stdio(stdio: &Stdio) -> Result<(), String> {
    match stdio {
        Stdio::Pty(slave) => {
            for target in 0..=2 {
                process::dup_onto(slave.as_fd(), target).map_err(|e| format!("dup2 pty: {e}"))?;
            }
        }
        Stdio::Inherit {
            stdin,
            stdout,
            stderr,
        } => {
            for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                if let Some(fd) = fd {
                    process::dup_onto(fd.as_fd(), target).map_err(|e| format!("dup2: {e}"))?;
                }
            }
        }
        Stdio::Installed { .. } => {}
    }
    Ok(())
}

/// Sets up the process and execs the command. Returns (the exit code to use) only when
/// that fails, after reporting why.
pub fn exec(spec: ExecSpec, reporter: &Reporter) -> i32 {
    match prepare(&spec) {
        Ok(()) => {}
        Err(message) => {
            reporter.fail(EXIT_FAILURE, message);
            return EXIT_FAILURE;
        }
    }
    let interactive = matches!(
        spec.stdio,
        Stdio::Pty(_) | Stdio::Installed { terminal: true }
    );
    let mut env = spec.env.clone();
    let argv = match &spec.command {
        Some(argv) => argv.clone(),
        None => match shell(interactive) {
            Some(shell) => {
                env.extend(shell.env);
                shell.argv
            }
            None => {
                reporter.fail(
                    127,
                    format!(
                        "the image has no shell in {MOUNT_POINT}/bin (looked for {}): give a command after `--`",
                        SHELLS.join(", ")
                    ),
                );
                return 127;
            }
        },
    };
    let Some(c_argv) = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).ok())
        .collect::<Option<Vec<CString>>>()
    else {
        reporter.fail(EXIT_FAILURE, "an argument holds a NUL byte");
        return EXIT_FAILURE;
    };
    let program = Path::new(&argv[0]);
    let candidates = candidates(program, &spec.path);
    let (code, message) = search(program, &candidates, &mut |path| {
        process::exec(path, &c_argv, &env)
    });
    reporter.fail(code, message);
    code
}

/// The target's working directory, then the session's power (`--profile`: the debug set,
/// or the target's credentials, seccomp filter and LSM label): done by the namespace child,
/// already inside the target's root, right before it forks the command process, which so
/// has them from its first instruction. That process is visible inside the container from
/// then on; it never holds more than its profile, not even before its `execve`.
pub fn settle(spec: &mut ExecSpec) -> Result<(), String> {
    if process::chdir(&spec.cwd).is_err() {
        process::chdir(Path::new("/")).map_err(|e| format!("cannot chdir to /: {e}"))?;
    }
    let procfs = spec.procfs.take();
    spec.power.apply(procfs.as_ref().map(AsFd::as_fd))
}

/// Session, terminal, signals and fds, in the command process, in that order.
///
/// This process is visible inside the container from its first instruction: it holds only
/// fds 0, 1, 2 and its report pipe (the namespace child closed everything else before
/// forking it), its root and working directory are the container's (see [`settle`]), and it
/// runs from the sealed copy of cartinject (see [`crate::exeseal`]).
fn prepare(spec: &ExecSpec) -> Result<(), String> {
    process::new_session().map_err(|e| format!("setsid: {e}"))?;
    let controlling = match &spec.stdio {
        Stdio::Pty(slave) => pty::make_controlling(slave.as_fd()),
        Stdio::Installed { terminal: true } => pty::make_stdin_controlling(),
        Stdio::Inherit { .. } | Stdio::Installed { terminal: false } => Ok(()),
    };
    controlling.map_err(|e| format!("cannot take the new pty as controlling terminal: {e}"))?;
    dup_stdio(&spec.stdio)?;
    signal::reset_dispositions();
    signal::set_mask(&spec.signal_mask).map_err(|e| format!("sigprocmask: {e}"))?;
    process::cloexec_from_3().map_err(|e| format!("close_range: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_c_strings() {
        assert_eq!(
            split_path(OsStr::new("/a::/b:")),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        let env = session_env(&[], "pid 7", None);
        assert_eq!(to_cstrings(&env).len(), env.len());
        let with_nul = [(OsString::from("A"), OsString::from("x\0y"))];
        assert!(to_cstrings(&with_nul).is_empty());
    }

    fn image(files: &'static [(&'static str, Found)]) -> impl Fn(&Path) -> Found {
        move |path: &Path| {
            files
                .iter()
                .find(|(p, _)| Path::new(p) == path)
                .map_or(Found::Nothing, |(_, f)| *f)
        }
    }

    fn argv(shell: &Shell) -> Vec<&str> {
        shell
            .argv
            .iter()
            .map(|a| a.to_str().expect("UTF-8"))
            .collect()
    }

    #[test]
    fn bash_with_the_images_rc_file_reads_it_through_env() {
        let probe = image(&[
            ("/dev/crashcart/bin/bash", Found::Executable),
            ("/dev/crashcart/bin/sh", Found::Executable),
            ("/dev/crashcart/etc/crashcartrc", Found::File),
        ]);
        let shell = shell_with(true, &probe).expect("a shell");
        assert_eq!(
            argv(&shell),
            ["/dev/crashcart/bin/bash", "--posix", "--noprofile", "-i"]
        );
        assert_eq!(
            shell.env,
            Some(CString::new("ENV=/dev/crashcart/etc/crashcartrc").expect("no NUL"))
        );
    }

    #[test]
    fn bash_without_an_rc_file_reads_none() {
        let probe = image(&[("/dev/crashcart/bin/bash", Found::Executable)]);
        let shell = shell_with(true, &probe).expect("a shell");
        assert_eq!(
            argv(&shell),
            ["/dev/crashcart/bin/bash", "--noprofile", "--norc", "-i"]
        );
        assert_eq!(shell.env, None);
    }

    #[test]
    fn a_non_interactive_shell_gets_no_flags() {
        let probe = image(&[
            ("/dev/crashcart/bin/bash", Found::Executable),
            ("/dev/crashcart/etc/bashrc", Found::File),
        ]);
        let shell = shell_with(false, &probe).expect("a shell");
        assert_eq!(argv(&shell), ["/dev/crashcart/bin/bash"]);
        assert_eq!(shell.env, None);
    }

    #[test]
    fn without_bash_the_next_executable_shell_is_taken() {
        // A bash without an execute bit is passed over; rc files are taken in order.
        let probe = image(&[
            ("/dev/crashcart/bin/bash", Found::File),
            ("/dev/crashcart/bin/ash", Found::Executable),
            ("/dev/crashcart/bin/sh", Found::Executable),
            ("/dev/crashcart/etc/bash.bashrc", Found::File),
            ("/dev/crashcart/.bashrc", Found::File),
        ]);
        let shell = shell_with(true, &probe).expect("a shell");
        assert_eq!(argv(&shell), ["/dev/crashcart/bin/ash", "-i"]);
        assert_eq!(
            shell.env,
            Some(CString::new("ENV=/dev/crashcart/etc/bash.bashrc").expect("no NUL"))
        );
    }

    #[test]
    fn an_image_without_a_shell_has_none() {
        let probe = image(&[("/dev/crashcart/bin/zsh", Found::Executable)]);
        assert!(shell_with(true, &probe).is_none());
        assert!(
            !SHELLS.contains(&"zsh"),
            "zsh reads the container's /etc/zshenv"
        );
    }

    #[test]
    fn a_program_name_is_looked_up_in_path_order() {
        let path = [
            PathBuf::from("/dev/crashcart/bin"),
            PathBuf::from("/usr/bin"),
        ];
        assert_eq!(
            candidates(Path::new("ls"), &path),
            [
                PathBuf::from("/dev/crashcart/bin/ls"),
                PathBuf::from("/usr/bin/ls")
            ]
        );
        // With a slash, as given, whatever PATH says.
        assert_eq!(
            candidates(Path::new("./run"), &path),
            [PathBuf::from("./run")]
        );
        assert_eq!(
            candidates(Path::new("/bin/ls"), &path),
            [PathBuf::from("/bin/ls")]
        );
        assert!(candidates(Path::new("ls"), &[]).is_empty());
    }

    #[test]
    fn the_path_comes_from_the_session_environment() {
        let env = session_env(
            &[(OsString::from("PATH"), OsString::from("/app:/bin"))],
            "x",
            None,
        );
        assert_eq!(
            path_of(&env),
            [
                PathBuf::from("/dev/crashcart/bin"),
                PathBuf::from("/dev/crashcart/sbin"),
                PathBuf::from("/app"),
                PathBuf::from("/bin"),
            ]
        );
        assert!(path_of(&[]).is_empty());
    }

    fn run(program: &str, path: &[&str], results: &[(&str, Errno)]) -> (i32, String, Vec<String>) {
        let path: Vec<PathBuf> = path.iter().map(PathBuf::from).collect();
        let program = Path::new(program);
        let list = candidates(program, &path);
        let mut tried = Vec::new();
        let (code, message) = search(program, &list, &mut |c| {
            let c = c.to_str().expect("UTF-8").to_string();
            let errno = results
                .iter()
                .find(|(p, _)| *p == c)
                .map_or(Errno::ENOENT, |(_, e)| *e);
            tried.push(c);
            errno
        });
        (code, message, tried)
    }

    #[test]
    fn a_missing_command_is_127_after_every_directory() {
        let (code, message, tried) = run("nope", &["/a", "/b"], &[]);
        assert_eq!(code, 127);
        assert_eq!(tried, ["/a/nope", "/b/nope"]);
        assert!(
            message.contains("`nope` is neither in the image"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_absolute_path_says_so() {
        let (code, message, _) = run("/opt/tool", &["/a"], &[]);
        assert_eq!(code, 127);
        assert!(
            message.contains("/opt/tool does not exist in the target"),
            "{message}"
        );
    }

    #[test]
    fn permission_denied_goes_on_then_is_126() {
        let (code, message, tried) = run("ls", &["/a", "/b"], &[("/a/ls", Errno::EACCES)]);
        assert_eq!(tried, ["/a/ls", "/b/ls"]);
        assert_eq!(code, 126);
        assert_eq!(message, "cannot run /a/ls: permission denied");
    }

    #[test]
    fn a_not_a_directory_entry_is_passed_over() {
        let (code, _, tried) = run("ls", &["/f", "/b"], &[("/f/ls", Errno::ENOTDIR)]);
        assert_eq!(tried, ["/f/ls", "/b/ls"]);
        assert_eq!(code, 127);
    }

    #[test]
    fn any_other_failure_stops_the_search_with_126() {
        let (code, message, tried) = run("ls", &["/a", "/b"], &[("/a/ls", Errno::ENOEXEC)]);
        assert_eq!(tried, ["/a/ls"]);
        assert_eq!(code, 126);
        assert!(message.starts_with("cannot run /a/ls: "), "{message}");
    }

    #[test]
    fn a_hostile_program_name_is_escaped() {
        let (code, message, _) = run("x\x1b[2J", &["/a"], &[]);
        assert_eq!(code, 127);
        assert!(!message.bytes().any(|b| b < 0x20), "{message:?}");
    }
}
