//! `--profile`: how much power the session's command gets.
//!
//! cartinject runs as root in the host with every capability; the session's command needs
//! some of them to debug a container that could not debug itself (`strace` ptrace,
//! `tcpdump` raw sockets, `lsof` reading other users' `/proc` files), and none of the ones
//! that reach past the container: `CAP_SYS_MODULE` loads kernel code, `CAP_DAC_READ_SEARCH`
//! opens host files by handle (`open_by_handle_at`, the 2014 "shocker" escape),
//! `CAP_SYS_ADMIN` mounts and much more, `CAP_SYS_RAWIO`, `CAP_SYS_BOOT`, `CAP_SYS_TIME`,
//! `CAP_MAC_*`, `CAP_SYSLOG` (kernel addresses), `CAP_BPF`, and `CAP_MKNOD` (a device node of
//! a host disk, opened if the session's device cgroup does not stop it). The profiles, named
//! as kubectl debug's are:
//!
//! - [`ProfileName::Debug`] (the default): [`DEBUG_CAPS`] and nothing else, in every set.
//! - [`ProfileName::Match`]: exactly the workload's power ([`crate::confine`]).
//! - [`ProfileName::Sysadmin`]: everything cartinject has, on request, with a warning.
//!
//! A container whose processes hold `CAP_SYS_PTRACE` over the host's user namespace can
//! seize any process of its PID namespace and make it run anything: against such a
//! container the session gets the `match` power (and says so), and `debug` or `sysadmin`
//! need `--allow-ptrace-escalation` ([`choose`]). The profile is applied in the namespace
//! child before it forks the command, so no process visible in the container ever holds
//! more, not even between `fork` and `execve`.

use std::os::fd::BorrowedFd;

use crate::confine;
use crate::sys::caps;

/// The capabilities `debug` keeps, with the tool that needs each.
pub const DEBUG_CAPS: [(u32, &str, &str); 15] = [
    (0, "CAP_CHOWN", "chown in the container's files"),
    (
        1,
        "CAP_DAC_OVERRIDE",
        "reading and writing the workload's files whatever their mode",
    ),
    (3, "CAP_FOWNER", "chmod and utime on the workload's files"),
    (4, "CAP_FSETID", "keeping set-id bits on files it changes"),
    (5, "CAP_KILL", "kill, and gdb/strace stopping the workload"),
    (6, "CAP_SETGID", "su/setpriv to the workload's group"),
    (7, "CAP_SETUID", "su/setpriv to the workload's user"),
    (
        8,
        "CAP_SETPCAP",
        "dropping capabilities further (capsh, setpriv)",
    ),
    (
        10,
        "CAP_NET_BIND_SERVICE",
        "a test server on a port below 1024",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        "ip, ss -K, ethtool, iptables in the container's network namespace",
    ),
    (13, "CAP_NET_RAW", "tcpdump, ping, mtr"),
    (18, "CAP_SYS_CHROOT", "chroot into the workload's root"),
    (
        caps::SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "strace -p, gdb -p, ltrace, lsof and /proc/PID of the workload",
    ),
    (
        29,
        "CAP_AUDIT_WRITE",
        "login-style tools that write audit records",
    ),
    (
        38,
        "CAP_PERFMON",
        "perf and bpftrace-free profiling of the workload",
    ),
];

/// Capabilities `debug` never holds: each reaches past the container.
pub const NEVER_IN_DEBUG: [(u32, &str); 11] = [
    (2, "CAP_DAC_READ_SEARCH"),
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (21, "CAP_SYS_ADMIN"),
    (22, "CAP_SYS_BOOT"),
    (25, "CAP_SYS_TIME"),
    (27, "CAP_MKNOD"),
    (32, "CAP_MAC_OVERRIDE"),
    (33, "CAP_MAC_ADMIN"),
    (34, "CAP_SYSLOG"),
    (39, "CAP_BPF"),
];

/// The mask of [`DEBUG_CAPS`].
pub fn debug_mask() -> u64 {
    DEBUG_CAPS
        .iter()
        .fold(0, |m, (cap, _, _)| m | caps::bit(*cap))
}

/// A profile, as `--profile` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileName {
    /// What debuggers need and nothing that reaches past the container (the default).
    Debug,
    /// Exactly the workload's power: its ids, capabilities, no_new_privs, seccomp filter
    /// and LSM label.
    Match,
    /// Every capability of cartinject, without seccomp: can reach past the container.
    Sysadmin,
}

impl ProfileName {
    /// The name as `--profile` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Debug => "debug",
            ProfileName::Match => "match",
            ProfileName::Sysadmin => "sysadmin",
        }
    }
}

/// What the user asked for about power.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request {
    /// `--profile` (or `--match-container`), when given.
    pub profile: Option<ProfileName>,
    /// `--allow-ptrace-escalation`.
    pub allow_ptrace_escalation: bool,
    /// `--allow-unmatched`: under `match`, go on (with a warning) when something cannot
    /// be copied.
    pub allow_unmatched: bool,
}

/// The profile a session gets, and the lines to print on stderr about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The profile.
    pub name: ProfileName,
    /// Warnings and notes for stderr (each one line, without the `cartinject: ` prefix).
    pub lines: Vec<String>,
}

/// Why the container could take over a session with more power than its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// A process of the target's PID namespace (or of one nested in it) holds
    /// `CAP_SYS_PTRACE` over the host's user namespace: it can seize the command.
    Ptrace,
    /// The container can rename the `/dev` under its root (it is no mount point in the
    /// target's mount namespace, as in a chroot into a plain directory, or the target may
    /// hold `CAP_SYS_ADMIN`): a path through `/dev/crashcart` could then lead to its files.
    Redirect,
}

impl Risk {
    fn why(self) -> &'static str {
        match self {
            Risk::Ptrace => {
                "processes of the target hold CAP_SYS_PTRACE over the host's user namespace and could seize the session's command"
            }
            Risk::Redirect => {
                "the target's /dev is no mount point of its own (or it may hold CAP_SYS_ADMIN), so the container could rename it under the session and put its own programs at /dev/crashcart"
            }
        }
    }
}

/// Chooses the profile. `risk` says whether (and why) the container could take over the
/// session's command; `target_bounding` is the target's bounding set: a profile that holds
/// nothing beyond it lends the container nothing, risk or not. An error is one line for the
/// user.
pub fn choose(
    request: &Request,
    risk: Option<Risk>,
    target_bounding: u64,
) -> Result<Chosen, String> {
    let mut lines = Vec::new();
    let exceeds = |name: ProfileName| match name {
        ProfileName::Debug => debug_mask() & !target_bounding != 0,
        ProfileName::Sysadmin => true,
        ProfileName::Match => false,
    };
    let risk = risk.filter(|_| exceeds(request.profile.unwrap_or(ProfileName::Debug)));
    let name = match (request.profile, risk) {
        (None, Some(risk)) => {
            lines.push(format!(
                "warning: {}: the session gets the workload's own power (--profile match); --profile debug --allow-ptrace-escalation gives more, and lends it to the container",
                risk.why()
            ));
            ProfileName::Match
        }
        (Some(ProfileName::Match), _) => ProfileName::Match,
        (Some(name), Some(risk)) if !request.allow_ptrace_escalation => {
            return Err(format!(
                "--profile {} refused: {}, and so use every capability the session holds; use --profile match, or add --allow-ptrace-escalation to accept that risk",
                name.as_str(),
                risk.why()
            ));
        }
        (Some(name), Some(risk)) => {
            lines.push(format!(
                "warning: --allow-ptrace-escalation: {}, and so use its --profile {} capabilities ({})",
                risk.why(),
                name.as_str(),
                match name {
                    ProfileName::Sysadmin => "all of them, which reach the host",
                    _ => "CAP_NET_ADMIN, CAP_SYS_PTRACE and the rest of the debug set",
                }
            ));
            name
        }
        (requested, None) => requested.unwrap_or(ProfileName::Debug),
    };
    if name == ProfileName::Sysadmin {
        lines.push("warning: --profile sysadmin: the session holds every capability of cartinject (CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_DAC_READ_SEARCH, ...) and no seccomp filter: it can reach past the container".into());
    }
    Ok(Chosen { name, lines })
}

/// What the namespace child applies before forking the command.
#[derive(Debug, Clone)]
pub enum Power {
    /// [`DEBUG_CAPS`] in every set.
    Debug,
    /// The workload's own power.
    Match(confine::Profile),
    /// Everything: nothing is changed.
    Sysadmin,
}

impl Power {
    /// Applies the power to the calling process (the namespace child, root in the target's
    /// user namespace, right before it forks the command). `procfs` is the host's procfs,
    /// opened and checked before any namespace was joined (for LSM attributes). Any failure
    /// fails the session.
    pub fn apply(&self, procfs: Option<BorrowedFd<'_>>) -> Result<(), String> {
        match self {
            Power::Sysadmin => Ok(()),
            Power::Match(profile) => profile
                .apply(procfs)
                .map_err(|e| format!("--profile match: {e}")),
            Power::Debug => limit_to(debug_mask()),
        }
    }

    /// A line for `-v`.
    pub fn describe(&self) -> String {
        match self {
            Power::Sysadmin => "profile sysadmin: every capability".into(),
            Power::Debug => format!("profile debug: {}", caps::names(debug_mask())),
            Power::Match(profile) => format!("profile match: {}", profile.describe()),
        }
    }
}

/// Leaves the calling process `keep` (and what it already lacks of it) in its bounding,
/// permitted and effective sets, and nothing in its inheritable and ambient sets: as root,
/// `execve` then gives the command exactly that (`capabilities(7)`: P' = bounding ∩ all,
/// with an empty inheritable set).
fn limit_to(keep: u64) -> Result<(), String> {
    caps::limit_bounding(keep).map_err(|e| format!("cannot limit the bounding set: {e}"))?;
    let (_, permitted, _) = caps::get().map_err(|e| format!("capget: {e}"))?;
    caps::set(permitted & keep, permitted & keep, 0).map_err(|e| format!("capset: {e}"))?;
    caps::raise_ambient(0).map_err(|e| format!("cannot clear the ambient set: {e}"))?;
    // Fail closed: read the sets back.
    let (effective, permitted, inheritable) = caps::get().map_err(|e| format!("capget: {e}"))?;
    let never = NEVER_IN_DEBUG
        .iter()
        .fold(0, |m, (cap, _)| m | caps::bit(*cap));
    if (effective | permitted | inheritable) & never != 0 {
        return Err(format!(
            "the debug profile still holds {} after dropping it",
            caps::names((effective | permitted | inheritable) & never)
        ));
    }
    // Changing capabilities does not change the dumpable flag (only ids do), but be sure.
    crate::sys::process::set_non_dumpable().map_err(|e| format!("prctl: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_keeps_what_tools_need_and_nothing_that_reaches_the_host() {
        let mask = debug_mask();
        for (cap, name) in NEVER_IN_DEBUG {
            assert_eq!(mask & caps::bit(cap), 0, "{name} in the debug set");
            assert_eq!(caps::names(caps::bit(cap)), name);
        }
        for (cap, name, _) in DEBUG_CAPS {
            assert_eq!(caps::names(caps::bit(cap)), name);
        }
        assert_ne!(mask & caps::bit(caps::SYS_PTRACE), 0);
        assert_eq!(mask.count_ones(), 15);
    }

    #[test]
    fn choices() {
        let req = |profile, allow| Request {
            profile,
            allow_ptrace_escalation: allow,
            allow_unmatched: false,
        };
        // Docker's default bounding set, and CAP_SYS_PTRACE added to it.
        let docker = 0xa804_25fb_u64;
        let ptrace = Some(Risk::Ptrace);
        let plain = choose(&req(None, false), None, docker).expect("default");
        assert_eq!(plain.name, ProfileName::Debug);
        assert!(plain.lines.is_empty());
        let forced = choose(&req(None, false), ptrace, docker).expect("ptrace");
        assert_eq!(forced.name, ProfileName::Match);
        assert_eq!(forced.lines.len(), 1);
        let redirect = choose(&req(None, false), Some(Risk::Redirect), docker).expect("chroot");
        assert_eq!(redirect.name, ProfileName::Match);
        assert!(redirect.lines[0].contains("rename"));
        let refused = choose(&req(Some(ProfileName::Debug), false), ptrace, docker);
        assert!(refused.is_err_and(|e| e.contains("--allow-ptrace-escalation")));
        let allowed =
            choose(&req(Some(ProfileName::Sysadmin), true), ptrace, docker).expect("allowed");
        assert_eq!(allowed.name, ProfileName::Sysadmin);
        assert_eq!(allowed.lines.len(), 2);
        let admin = choose(&req(Some(ProfileName::Sysadmin), false), None, docker).expect("admin");
        assert_eq!(admin.lines.len(), 1);
        assert_eq!(
            choose(&req(Some(ProfileName::Match), false), ptrace, docker)
                .expect("match")
                .name,
            ProfileName::Match
        );
        // A privileged container lends nothing to a debug session: no risk to speak of.
        let privileged = choose(&req(None, false), ptrace, u64::MAX).expect("privileged");
        assert_eq!(privileged.name, ProfileName::Debug);
        assert!(privileged.lines.is_empty());
    }
}
