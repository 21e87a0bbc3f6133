//! Running from a sealed in-memory copy of cartinject before any step that enters a
//! container (the CVE-2019-5736 class).
//!
//! A process inside a container that may open `/proc/PID/exe` of a cartinject process it
//! can see (a session's command process before its `execve`: the only one that enters a
//! container's PID namespace; `-m` and `-u` join only its mount namespace, where nothing in
//! the container can see them, and skip this) reaches the file cartinject was started
//! from, in the host. Non-dumpable (see `sys::process::set_non_dumpable`) refuses that to
//! everyone without `CAP_SYS_PTRACE` in cartinject's user namespace, but a container started
//! with `--cap-add SYS_PTRACE` and no user namespace holds exactly that. runc's answer, which
//! this follows (`libcontainer/exeseal/cloned_binary_linux.go`): before doing anything,
//! copy `/proc/self/exe` into a memfd, make it `0511`, seal it against writes, growth,
//! shrinking, exec-bit changes and further sealing, and `execveat` it with the same arguments
//! and environment. From then on `/proc/PID/exe` of every cartinject process is that sealed
//! copy, which nothing can change, never the host's file.
//!
//! What runc learnt and this keeps: the copy is made before anything else of the session,
//! in the host's cgroup (a memfd is charged to the memory cgroup of the process that fills
//! it, and a copy made after joining the container's cgroup counted against small
//! containers' limits: runc #1980); `MFD_EXEC` is asked for so hosts with
//! `vm.memfd_noexec=1` still allow the exec; the check whether we already run from a copy
//! looks at the seals of `/proc/self/exe` itself, not at an environment variable a caller
//! could set.
//!
//! The copy costs one `sendfile` of the whole binary and one more `execve`: about 0.7 ms per
//! MB of binary here, 6 ms for an 8.9 MB release build, on a full cycle of 5 ms
//! (`tests/bench/inject_hardening.sh` measures it). So it is made only when something in
//! the container could get past non-dumpable ([`tracers`]): a process of the target's
//! PID namespace that holds, or may gain, `CAP_SYS_PTRACE` in the host's user namespace
//! (`ptrace_may_access` lets exactly that through to a non-dumpable process: it checks the
//! capability in the user namespace of the process's memory, which is the host's), or a
//! target that shares our PID namespace. A process may only gain capabilities of its
//! bounding set, and its children inherit that, so what is not there when the session
//! starts can only come from outside the container (`docker exec --privileged`).
//!
//! Which processes are the container's is asked of the kernel by PID namespace, not by
//! cgroup: a procfs made for the target's PID namespace (`pidns=`, Linux 6.17) lists exactly
//! its processes and those of namespaces nested in it, and no process can leave its PID
//! namespace, so a session costs what the container's size costs, whatever runs on the
//! host. The container's cgroups (`cgroup.procs` of its cgroup and those below) would be as
//! cheap but are not a boundary here: a process may move itself to any cgroup whose
//! `cgroup.procs` it can open for writing, and a container with `CAP_SYS_ADMIN` in the
//! host's cgroup namespace (Docker's default on cgroup v1 and hybrid hosts such as this
//! one) mounts each hierarchy afresh and sees the host's root cgroup in it. Nor does the
//! target's own `CAP_SYS_PTRACE` vouch for the rest: it may have dropped it after a child
//! that kept it left (`tests/fixtures/attacks/escaper.c`; cgroup v2 with a private cgroup
//! namespace and `nsdelegate` would forbid the move, Docker's read-only cgroupfs only holds
//! containers without `CAP_SYS_ADMIN`). On kernels that cannot make that procfs, every
//! process of the host's `/proc` is looked at instead: slower, never less.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::sys::{Errno, memfd, mount_api, ns, resolve};

/// Where the running binary is.
const SELF_EXE: &str = "/proc/self/exe";

/// Failures making or running the sealed copy.
#[derive(Debug, thiserror::Error)]
pub enum ExeSealError {
    /// `/proc/self/exe` could not be opened or measured.
    #[error("cannot open {SELF_EXE}: {0}: is /proc mounted?")]
    Open(std::io::Error),
    /// A step on the memfd failed.
    #[error("cannot make a sealed in-memory copy of cartinject ({step}: {errno})")]
    Copy {
        /// `memfd_create`, `sendfile`, `seal`.
        step: &'static str,
        /// Why.
        errno: Errno,
    },
    /// `execveat` of the copy failed.
    #[error("cannot run the sealed in-memory copy of cartinject: {0}")]
    Exec(Errno),
}

/// Whether `/proc/self/exe` is a memfd with (at least) the seals a copy gets.
pub fn running_sealed() -> bool {
    File::open(SELF_EXE)
        .ok()
        .and_then(|exe| memfd::seals(exe.as_fd()).ok())
        .is_some_and(|seals| seals & memfd::base_seals() == memfd::base_seals())
}

/// Who could get past non-dumpable into a session of a target (see [`tracers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tracers {
    /// The target shares our PID namespace: everything on the host sees the session.
    pub shares_our_pid_ns: bool,
    /// A process of the container (the target's PID namespace and those nested in it; the
    /// target itself when it shares ours) holds `CAP_SYS_PTRACE` over our user namespace.
    pub capable: bool,
    /// A namespace could not be read: assume the worst.
    pub unknown: bool,
}

impl Tracers {
    /// Whether the session must run from the sealed copy.
    pub fn needs_sealed_copy(&self) -> bool {
        self.shares_our_pid_ns || self.capable || self.unknown
    }

    /// Whether processes of the container could seize the session's command (and use its
    /// capabilities): the profile is then limited to the workload's (see
    /// [`crate::profile::choose`]).
    pub fn can_seize_session(&self) -> bool {
        self.capable || self.unknown
    }
}

/// The depth of a process's PID namespace below ours: the number of `NSpid` entries of its
/// `/proc/PID/status`, less one.
fn pid_ns_depth(status: &str) -> Option<usize> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().count().checked_sub(1)
}

/// Looks at the processes that can see a session's command in `target`'s PID namespace:
/// those of that namespace and of every PID namespace nested in it (a nested process can
/// still reach the session through the container's `/proc`), or, when the target shares
/// our PID namespace, the target itself. A process counts when it is in our user namespace
/// with `CAP_SYS_PTRACE` in its bounding, permitted or effective set.
///
/// The target is looked at first. The others are listed by a procfs of the target's PID
/// namespace ([`pid_ns_capable`]), so the cost follows the container's size; only where
/// the kernel cannot make one does every process of the host get looked at
/// ([`host_capable`]).
pub fn tracers(target: i32) -> Tracers {
    let ino = |path: String| ns::link_inode(Path::new(&path));
    let unknown = Tracers {
        unknown: true,
        ..Tracers::default()
    };
    let (Some(their_pid_ns), Some(our_pid_ns), Some(our_user_ns)) = (
        ino(format!("/proc/{target}/ns/pid")),
        ino("/proc/self/ns/pid".into()),
        ino("/proc/self/ns/user".into()),
    ) else {
        return unknown;
    };
    let capable = |pid: i32| host_may_ptrace(pid, our_user_ns);
    if their_pid_ns == our_pid_ns {
        return Tracers {
            shares_our_pid_ns: true,
            capable: capable(target),
            unknown: false,
        };
    }
    let Some(their_depth) =
        crate::procfs::read_file_string(&crate::procfs::proc_path(target, "status"))
            .ok()
            .and_then(|t| pid_ns_depth(&t))
    else {
        return unknown;
    };
    let capable = if capable(target) {
        true
    } else if let Some(found) = pid_ns_capable(target, their_pid_ns, our_user_ns) {
        found
    } else if let Some(found) = host_capable(their_pid_ns, their_depth, our_pid_ns, our_user_ns) {
        found
    } else {
        return unknown;
    };
    Tracers {
        shares_our_pid_ns: false,
        capable,
        unknown: false,
    }
}

/// Whether a process of `target`'s PID namespace (its inode `pid_ns`) or of one nested in
/// it, in the user namespace `user_ns`, may ptrace, as a procfs of that PID namespace
/// lists them (`mount_api::procfs_of_pid_ns`). `None` when no such procfs can be made (a
/// kernel before 6.17, no `CAP_SYS_ADMIN`), or the namespace is not `pid_ns` any more (the
/// PID was reused).
fn pid_ns_capable(target: i32, pid_ns: u64, user_ns: u64) -> Option<bool> {
    let ns = File::open(format!("/proc/{target}/ns/pid")).ok()?;
    if ns.metadata().ok()?.ino() != pid_ns {
        return None;
    }
    let proc = mount_api::procfs_of_pid_ns(ns.as_fd()).ok()?;
    let names = resolve::list(proc.as_fd()).ok()?;
    Some(
        names
            .iter()
            .filter_map(|name| name.to_str()?.parse::<u32>().ok())
            .any(|pid| {
                let at = |name: &str| PathBuf::from(format!("{pid}/{name}"));
                // Gone meanwhile: nothing to fear from it.
                ns::link_inode_at(proc.as_fd(), &at("ns/user")) == Some(user_ns)
                    && any_thread_may_ptrace(proc.as_fd(), pid)
            }),
    )
}

/// More than a `/proc/PID/status` ever holds.
const STATUS_LIMIT: usize = 64 * 1024;

/// Whether any thread of process `pid` of the procfs `proc` shows `CAP_SYS_PTRACE`
/// ([`may_ptrace`]): capabilities belong to each thread, and a process whose main thread
/// dropped it may keep it in another (`/proc/PID/status` shows the main thread's alone).
/// A process gone meanwhile is nothing to fear.
fn any_thread_may_ptrace(proc: BorrowedFd<'_>, pid: u32) -> bool {
    let Ok(task) = resolve::open_dir(proc, Path::new(&format!("{pid}/task"))) else {
        return false;
    };
    resolve::list(task.as_fd()).is_ok_and(|tids| {
        tids.iter()
            .filter_map(|tid| tid.to_str()?.parse::<u32>().ok())
            .any(|tid| {
                resolve::read_text_at(
                    task.as_fd(),
                    Path::new(&format!("{tid}/status")),
                    STATUS_LIMIT,
                )
                .is_ok_and(|t| may_ptrace(&t))
            })
    })
}

/// Whether process `pid` of our own `/proc` is in the user namespace `user_ns` and one of
/// its threads may ptrace ([`any_thread_may_ptrace`]).
fn host_may_ptrace(pid: i32, user_ns: u64) -> bool {
    ns::link_inode(Path::new(&format!("/proc/{pid}/ns/user"))) == Some(user_ns)
        && File::open("/proc").is_ok_and(|proc| {
            u32::try_from(pid).is_ok_and(|pid| any_thread_may_ptrace(proc.as_fd(), pid))
        })
}

/// [`pid_ns_capable`] by looking at every process of the host's `/proc`: those of our own
/// namespace and shallower ones are skipped by their `ns/pid` link alone; only those of
/// other namespaces have their depth and ancestry read. `their_depth` is the depth of the
/// target's namespace (`their_pid_ns`) below ours. `None` when `/proc` cannot be listed.
fn host_capable(
    their_pid_ns: u64,
    their_depth: usize,
    our_pid_ns: u64,
    our_user_ns: u64,
) -> Option<bool> {
    let ino = |path: String| ns::link_inode(Path::new(&path));
    let capable = |pid: i32| host_may_ptrace(pid, our_user_ns);
    let dir = std::fs::read_dir("/proc").ok()?;
    // Whether a PID namespace (by inode) is the target's or nested in it, worked out once per
    // namespace (from the first of its processes met), so that a host with many containers
    // costs one status read and ancestry walk per namespace, not per process.
    let mut nested: std::collections::HashMap<u64, bool> = std::collections::HashMap::new();
    nested.insert(their_pid_ns, true);
    nested.insert(our_pid_ns, false);
    let mut in_container = |pid: i32| -> bool {
        let Some(ns) = ino(format!("/proc/{pid}/ns/pid")) else {
            return false;
        };
        if let Some(&known) = nested.get(&ns) {
            return known;
        }
        let Some(depth) = crate::procfs::read_file_string(&crate::procfs::proc_path(pid, "status"))
            .ok()
            .and_then(|t| pid_ns_depth(&t))
        else {
            // Gone meanwhile: say nothing of its namespace yet.
            return false;
        };
        if depth <= their_depth {
            nested.insert(ns, false);
            return false;
        }
        // The ancestor at the target's depth; a process gone meanwhile decides nothing.
        let Some(ancestor) = ns::pid_ns_ancestor(
            Path::new(&format!("/proc/{pid}/ns/pid")),
            depth - their_depth,
        ) else {
            return false;
        };
        let inside = ancestor == their_pid_ns;
        nested.insert(ns, inside);
        inside
    };
    Some(
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .any(|pid| in_container(pid) && capable(pid)),
    )
}

/// Whether a `/proc/PID/status` text shows `CAP_SYS_PTRACE` (19) in the bounding,
/// permitted or effective set.
fn may_ptrace(status: &str) -> bool {
    status
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(key, "CapBnd" | "CapPrm" | "CapEff")
                .then(|| u64::from_str_radix(value.trim(), 16).ok())?
        })
        .any(|mask| mask & (1 << 19) != 0)
}

/// Makes sure cartinject runs from a sealed copy of itself: returns at once when it already
/// does, else re-executes from one with the same arguments and environment (and so returns
/// only on failure).
pub fn ensure() -> Result<(), ExeSealError> {
    if running_sealed() {
        return Ok(());
    }
    let exe = File::open(SELF_EXE).map_err(ExeSealError::Open)?;
    let len = exe.metadata().map_err(ExeSealError::Open)?.len();
    let copy = memfd::create_executable(c"cartinject").map_err(|errno| ExeSealError::Copy {
        step: "memfd_create",
        errno,
    })?;
    memfd::copy(exe.as_fd(), copy.as_fd(), len).map_err(|errno| ExeSealError::Copy {
        step: "sendfile",
        errno,
    })?;
    drop(exe);
    memfd::seal(copy.as_fd()).map_err(|errno| ExeSealError::Copy {
        step: "F_ADD_SEALS",
        errno,
    })?;
    let to_c = |s: std::ffi::OsString| CString::new(s.into_vec()).ok();
    let argv: Vec<CString> = std::env::args_os().filter_map(to_c).collect();
    let envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut pair = k.into_vec();
            pair.push(b'=');
            pair.extend(v.into_vec());
            CString::new(pair).ok()
        })
        .collect();
    // The memfd is close-on-exec: once the kernel has loaded it, no fd of it is left, only
    // the mapping and /proc/self/exe.
    Err(ExeSealError::Exec(memfd::exec(&copy, &argv, &envp)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptrace_in_any_set() {
        let docker = "CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\n\
            CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n";
        assert!(!may_ptrace(docker));
        assert!(may_ptrace(&docker.replace(
            "CapBnd:\t00000000a80425fb",
            "CapBnd:\t00000000a80c25fb"
        )));
        assert!(may_ptrace("CapEff:\t000001ffffffffff\n"));
        assert!(!may_ptrace("Name:\tx\n"));
    }

    #[test]
    fn our_own_namespace_needs_it() {
        let tracers = tracers(std::process::id().try_into().expect("pid"));
        assert!(tracers.shares_our_pid_ns && tracers.needs_sealed_copy());
    }

    /// The PIDs a procfs of `pid`'s PID namespace lists.
    fn listed(pid: u32) -> Vec<u32> {
        let ns = File::open(format!("/proc/{pid}/ns/pid")).expect("ns");
        let proc = mount_api::procfs_of_pid_ns(ns.as_fd()).expect("procfs of the namespace");
        let mut pids: Vec<u32> = resolve::list(proc.as_fd())
            .expect("list")
            .iter()
            .filter_map(|n| n.to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    #[test]
    #[ignore = "needs root: tests/run runs it as root (cargo test -p cartinject --lib -- --ignored)"]
    fn a_procfs_of_a_pid_namespace_lists_that_namespace_and_those_nested_in_it() {
        // unshare's child is PID 1 of a new namespace; it starts a second namespace nested
        // in it, whose init is PID 3 there (and 1 in its own).
        let mut outer = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sh", "-c"])
            .arg("unshare --pid --fork --kill-child sleep 60 & exec sleep 60")
            .spawn()
            .expect("unshare (util-linux)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let children = |pid: u32| -> Vec<u32> {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        };
        let (init, nested) = loop {
            let init = children(outer.id()).first().copied();
            let nested = init.and_then(|i| children(i).first().copied());
            if let (Some(init), Some(n)) = (init, nested.and_then(|n| children(n).first().copied()))
            {
                break (init, n);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no nested namespace came up"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let outer_list = listed(init);
        let nested_list = listed(nested);
        outer.kill().expect("kill");
        outer.wait().expect("wait");
        assert_eq!(outer_list, [1, 2, 3], "outer namespace");
        assert_eq!(nested_list, [1], "nested namespace");
    }

    #[test]
    fn depth_from_nspid() {
        assert_eq!(pid_ns_depth("Name:\tx\nNSpid:\t42\n"), Some(0));
        assert_eq!(pid_ns_depth("NSpid:\t4242\t1\n"), Some(1));
        assert_eq!(pid_ns_depth("NSpid:\t9\t7\t1\n"), Some(2));
        assert_eq!(pid_ns_depth("Name:\tx\n"), None);
    }
}
