//! The last steps of a session, in the process that becomes the user's shell or command:
//! the target's root and working directory, the terminal or pipes, the environment, finding
//! the program, and `execve`.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::child::{EXIT_FAILURE, Reporter};
use crate::place::MOUNT_POINT;
use crate::profile::Power;
use crate::sys::Errno;
use crate::sys::process;
use crate::sys::pty;
use crate::sys::signal::{self, SignalSet};

/// The PATH a target gets when its environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Shells looked for in the image's `bin/` when it has no bash, in order.
pub const SHELLS: [&str; 6] = ["bash", "zsh", "mksh", "ash", "dash", "sh"];
/// Where an image may keep the rc file bash reads for an interactive session, in order
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

/// The session's environment: the target's own, with PATH led by the image's `bin` and
/// `sbin`, a prompt naming crashcart and the target, no shell history written into the
/// container, and the user's TERM when there is a terminal.
pub fn session_env(
    target_env: &[(OsString, OsString)],
    label: &str,
    term: Option<&OsStr>,
) -> Vec<(OsString, OsString)> {
    let drop = ["PATH", "PS1", "HISTFILE", "CRASHCART_TARGET"];
    let mut env: Vec<(OsString, OsString)> = target_env
        .iter()
        .filter(|(k, _)| !drop.iter().any(|d| k == d))
        .filter(|(k, _)| term.is_none() || k != "TERM")
        .cloned()
        .collect();
    let container_path = target_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or_else(|| OsString::from(DEFAULT_PATH), |(_, v)| v.clone());
    let mut path = OsString::from(format!("{MOUNT_POINT}/bin:{MOUNT_POINT}/sbin"));
    if !container_path.is_empty() {
        path.push(":");
        path.push(&container_path);
    }
    env.push(("PATH".into(), path));
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), "/".into()));
    }
    if let Some(term) = term {
        env.push(("TERM".into(), term.to_owned()));
    }
    env.push(("PS1".into(), format!("[crashcart {label}] \\w \\$ ").into()));
    // An empty HISTFILE: bash and ash keep no history file, so nothing is written into the
    // container's filesystem.
    env.push(("HISTFILE".into(), "".into()));
    env.push(("CRASHCART_TARGET".into(), label.into()));
    env
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

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The image's shell and its arguments: bash with the image's rc file when there is one,
/// else the first of [`SHELLS`] in the image's `bin/`.
fn shell(interactive: bool) -> Option<Vec<OsString>> {
    let bin = Path::new(MOUNT_POINT).join("bin");
    let shell = SHELLS
        .iter()
        .map(|s| bin.join(s))
        .find(|p| is_executable(p))?;
    let mut argv = vec![shell.clone().into_os_string()];
    if interactive {
        if shell.ends_with("bash")
            && let Some(rc) = RC_FILES
                .iter()
                .map(|rc| Path::new(MOUNT_POINT).join(rc))
                .find(|p| p.is_file())
        {
            argv.push("--rcfile".into());
            argv.push(rc.into_os_string());
        }
        argv.push("-i".into());
    }
    Some(argv)
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
    let argv = match &spec.command {
        Some(argv) => argv.clone(),
        None => match shell(interactive) {
            Some(argv) => argv,
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
    let candidates: Vec<PathBuf> = if program.as_os_str().as_bytes().contains(&b'/') {
        vec![program.to_path_buf()]
    } else {
        spec.path.iter().map(|d| d.join(program)).collect()
    };
    let mut denied = None;
    for candidate in &candidates {
        let Ok(c_path) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        match process::exec(&c_path, &c_argv, &spec.env) {
            Errno::ENOENT | Errno::ENOTDIR => continue,
            Errno::EACCES => {
                denied.get_or_insert_with(|| candidate.clone());
            }
            errno => {
                reporter.fail(126, format!("cannot run {}: {errno}", candidate.display()));
                return 126;
            }
        }
    }
    if let Some(path) = denied {
        reporter.fail(
            126,
            format!("cannot run {}: permission denied", path.display()),
        );
        return 126;
    }
    let name = program.display();
    let message = if candidates.len() == 1 && program.is_absolute() {
        format!("command not found: {name} does not exist in the target: check the path")
    } else {
        format!(
            "command not found: `{name}` is neither in the image ({MOUNT_POINT}/bin, {MOUNT_POINT}/sbin) nor in the target's PATH: check the name, or use an image that has it"
        )
    };
    reporter.fail(127, message);
    127
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

    fn get<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a OsString> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[test]
    fn path_prompt_and_history() {
        let target = vec![
            ("PATH".into(), "/app/bin:/bin".into()),
            ("APP_MODE".into(), "prod".into()),
            ("TERM".into(), "dumb".into()),
            ("HISTFILE".into(), "/root/.h".into()),
        ];
        let env = session_env(&target, "web", Some(OsStr::new("xterm-256color")));
        assert_eq!(
            get(&env, "PATH").map(|v| v.to_string_lossy().into_owned()),
            Some("/dev/crashcart/bin:/dev/crashcart/sbin:/app/bin:/bin".into())
        );
        assert_eq!(get(&env, "APP_MODE"), Some(&OsString::from("prod")));
        assert_eq!(get(&env, "TERM"), Some(&OsString::from("xterm-256color")));
        assert_eq!(get(&env, "HISTFILE"), Some(&OsString::from("")));
        assert_eq!(get(&env, "HOME"), Some(&OsString::from("/")));
        assert!(get(&env, "PS1").is_some_and(|p| p.to_string_lossy().contains("crashcart web")));
        assert_eq!(env.iter().filter(|(k, _)| k == "TERM").count(), 1);
    }

    #[test]
    fn default_path_without_one() {
        let env = session_env(&[], "pid 7", None);
        let path = get(&env, "PATH")
            .expect("PATH")
            .to_string_lossy()
            .into_owned();
        assert!(path.ends_with(DEFAULT_PATH), "{path}");
        assert_eq!(
            split_path(OsStr::new("/a::/b:")),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(to_cstrings(&env).len(), env.len());
    }
}
