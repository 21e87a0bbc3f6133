//! Joining a target's namespaces (`setns(2)`), in the order runc and nsenter use: every
//! namespace but the user namespace, then the user namespace, then whatever was refused with
//! EPERM before it.
//!
//! The target is pinned by a pidfd, so that a PID reused after the target exits cannot send
//! us into another process's namespaces. With a pidfd, Linux 5.8+ joins several namespaces
//! in one atomic `setns`. Without (older kernels, or legacy mode) the `/proc/PID/ns/*` files
//! are opened first, the target is checked to be the same process (PID and start time)
//! afterwards, and they are joined one by one.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use nix::sched::CloneFlags;

use crate::kernel::{Kernel, Procfs};
use crate::procfs;
use crate::sys::ns::{self, Namespace};
use crate::sys::{Errno, pidfd};

/// Failures to pin or join a target.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The target exited.
    #[error(
        "PID {0} exited while cartinject was joining it: check that the container is still running"
    )]
    Gone(i32),
    /// `pidfd_open` failed for another reason.
    #[error("cannot pin PID {pid} with a pidfd: {errno}")]
    Pin {
        /// The PID.
        pid: i32,
        /// Why.
        errno: Errno,
    },
    /// A namespace file could not be opened.
    #[error("cannot open /proc/{pid}/ns/{ns}: {source}")]
    Open {
        /// The PID.
        pid: i32,
        /// The namespace.
        ns: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// `setns` failed.
    #[error("cannot join the {ns} namespace of PID {pid}: {errno}")]
    Setns {
        /// The PID.
        pid: i32,
        /// Which namespace(s).
        ns: String,
        /// Why.
        errno: Errno,
    },
    /// /proc could not be read.
    #[error(transparent)]
    Proc(#[from] procfs::ProcError),
}

/// A target process, pinned.
pub struct Pin {
    pid: i32,
    start_time: u64,
    pidfd: Option<OwnedFd>,
}

impl Pin {
    /// Pins `pid`, whose start time was `start_time` when the target was resolved. Without
    /// `use_pidfd` (or on kernels before 5.3) the PID and start time stand in for a pidfd.
    pub fn new(pid: i32, start_time: u64, use_pidfd: bool) -> Result<Pin, JoinError> {
        let pidfd = if use_pidfd {
            match pidfd::open(pid) {
                Ok(fd) => Some(fd),
                Err(Errno::ENOSYS) => None,
                Err(Errno::ESRCH) => return Err(JoinError::Gone(pid)),
                Err(errno) => return Err(JoinError::Pin { pid, errno }),
            }
        } else {
            None
        };
        let pin = Pin {
            pid,
            start_time,
            pidfd,
        };
        // The pidfd (if any) names whatever process has the PID now: make sure it is the one
        // that was resolved.
        if !pin.is_alive() {
            return Err(JoinError::Gone(pid));
        }
        Ok(pin)
    }

    /// The target's PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Opens the target's `/proc/PID/ns/NAME` (from the host's `/proc`: call it before
    /// joining anything), checking afterwards that the target is still the same process.
    pub fn namespace_file(&self, ns: Namespace) -> Result<File, JoinError> {
        let file = File::open(ns.proc_path(Some(self.pid))).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                JoinError::Gone(self.pid)
            } else {
                JoinError::Open {
                    pid: self.pid,
                    ns: ns.proc_name(),
                    source,
                }
            }
        })?;
        if !self.is_alive() {
            return Err(JoinError::Gone(self.pid));
        }
        Ok(file)
    }

    /// The pinned process's start time (clock ticks after boot, `/proc/PID/stat` field 22).
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Whether a pidfd holds the target.
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// Whether the pinned process is still running (not a zombie, same start time).
    pub fn is_alive(&self) -> bool {
        if let Some(fd) = &self.pidfd
            && pidfd::send_signal(fd.as_fd(), 0).is_err()
        {
            return false;
        }
        same_process(&Procfs, self.pid, self.start_time)
    }
}

/// Whether `pid` is still the process that started at `start_time` (clock ticks after
/// boot): alive, not a zombie, and not a new process that reused the PID.
pub fn same_process(kernel: &impl Kernel, pid: i32, start_time: u64) -> bool {
    matches!(kernel.stat(pid), Ok(stat) if stat.start_time == start_time)
}

/// Which of a target's namespaces differ from ours: those to join, the user namespace
/// apart (it is joined last, see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinPlan {
    /// Every namespace but the user namespace, in the order asked for.
    pub non_user: Vec<Namespace>,
    /// Whether the user namespace differs.
    pub user: bool,
}

impl JoinPlan {
    /// The namespaces that will be joined, for `-v`.
    pub fn describe(&self) -> String {
        let mut names: Vec<&str> = self.non_user.iter().map(|n| n.proc_name()).collect();
        if self.user {
            names.push("user");
        }
        if names.is_empty() {
            "none (the target shares all of ours)".into()
        } else {
            names.join(",")
        }
    }
}

/// Plans to join those of `wanted` that differ from the caller's, as `kernel` shows process
/// `pid`'s (joining one's own user namespace is an error, and the others would be no-ops).
/// A namespace the kernel does not have (no `/proc/PID/ns/NAME`) is skipped, unless the
/// target is gone (`alive` says whether it is still the pinned process).
pub fn plan_joins(
    kernel: &impl Kernel,
    pid: i32,
    wanted: &[Namespace],
    alive: &dyn Fn() -> bool,
) -> Result<JoinPlan, JoinError> {
    let mut plan = JoinPlan::default();
    for &ns in wanted {
        let theirs = match kernel.namespace(ns, Some(pid)) {
            Ok(id) => id,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !alive() {
                    return Err(JoinError::Gone(pid));
                }
                continue;
            }
            Err(source) => {
                return Err(JoinError::Open {
                    pid,
                    ns: ns.proc_name(),
                    source,
                });
            }
        };
        if kernel.namespace(ns, None).ok() == Some(theirs) {
            continue;
        }
        if ns == Namespace::User {
            plan.user = true;
        } else if !plan.non_user.contains(&ns) {
            plan.non_user.push(ns);
        }
    }
    Ok(plan)
}

/// What to do when joining one namespace through its `/proc/PID/ns` file failed with
/// `errno` before the user namespace was joined: EPERM may only need the user namespace
/// first (retried after it); anything else fails.
pub fn defer_after_user(errno: Errno) -> bool {
    errno == Errno::EPERM
}

/// Which of the target's namespaces differ from ours, and how to join them.
pub struct Joiner<'p> {
    pin: &'p Pin,
    non_user: Vec<Namespace>,
    user: bool,
    files: BTreeMap<&'static str, (Namespace, File)>,
    deferred: Vec<Namespace>,
}

impl<'p> Joiner<'p> {
    /// Plans to join those of `wanted` that differ from the caller's (see [`plan_joins`]).
    pub fn plan(pin: &'p Pin, wanted: &[Namespace]) -> Result<Joiner<'p>, JoinError> {
        let plan = plan_joins(&Procfs, pin.pid, wanted, &|| pin.is_alive())?;
        Ok(Joiner {
            pin,
            non_user: plan.non_user,
            user: plan.user,
            files: BTreeMap::new(),
            deferred: Vec::new(),
        })
    }

    /// The namespaces that will be joined.
    pub fn describe(&self) -> String {
        JoinPlan {
            non_user: self.non_user.clone(),
            user: self.user,
        }
        .describe()
    }

    /// Opens `/proc/PID/ns/*` for the one-by-one path, then checks the target is still the
    /// same process, so the files are known to be its.
    fn open_files(&mut self) -> Result<(), JoinError> {
        if !self.files.is_empty() {
            return Ok(());
        }
        let mut all = self.non_user.clone();
        if self.user {
            all.push(Namespace::User);
        }
        for ns in all {
            let file = File::open(ns.proc_path(Some(self.pin.pid))).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    JoinError::Gone(self.pin.pid)
                } else {
                    JoinError::Open {
                        pid: self.pin.pid,
                        ns: ns.proc_name(),
                        source,
                    }
                }
            })?;
            self.files.insert(ns.proc_name(), (ns, file));
        }
        if !self.pin.is_alive() {
            return Err(JoinError::Gone(self.pin.pid));
        }
        Ok(())
    }

    /// Prepares the one-by-one path ahead of time when there is no pidfd (the files must be
    /// opened before the first namespace is joined, while `/proc` is still the host's).
    pub fn prepare(&mut self) -> Result<(), JoinError> {
        if self.pin.pidfd.is_none() {
            self.open_files()?;
        }
        Ok(())
    }

    fn setns_error(&self, ns: String, errno: Errno) -> JoinError {
        if errno == Errno::ESRCH || !self.pin.is_alive() {
            JoinError::Gone(self.pin.pid)
        } else {
            JoinError::Setns {
                pid: self.pin.pid,
                ns,
                errno,
            }
        }
    }

    /// Joins every planned namespace except the user namespace. Returns how (for `-v`).
    pub fn join_non_user(&mut self) -> Result<&'static str, JoinError> {
        if self.non_user.is_empty() {
            return Ok("nothing to join");
        }
        if let Some(pidfd) = &self.pin.pidfd {
            let flags = self
                .non_user
                .iter()
                .fold(CloneFlags::empty(), |acc, ns| acc | ns.flag());
            match ns::setns(pidfd.as_fd(), flags) {
                Ok(()) => return Ok("one setns through the pidfd"),
                Err(Errno::ESRCH) => return Err(JoinError::Gone(self.pin.pid)),
                // EINVAL: a kernel before 5.8 takes no pidfd here. EPERM: some namespace
                // needs the user namespace first. Either way, one by one.
                Err(_) => {}
            }
        }
        self.open_files()?;
        for ns in self.non_user.clone() {
            let (_, file) = &self.files[ns.proc_name()];
            match ns::setns(file.as_fd(), ns.flag()) {
                Ok(()) => {}
                Err(errno) if defer_after_user(errno) => self.deferred.push(ns),
                Err(errno) => return Err(self.setns_error(ns.proc_name().into(), errno)),
            }
        }
        Ok("/proc/PID/ns files one by one")
    }

    /// Joins the user namespace (if it differs), becomes its root, then retries what EPERM
    /// refused before.
    pub fn join_user_and_rest(&mut self) -> Result<(), JoinError> {
        if self.user {
            let result = match &self.pin.pidfd {
                Some(pidfd) => ns::setns(pidfd.as_fd(), CloneFlags::CLONE_NEWUSER),
                None => {
                    self.open_files()?;
                    let (_, file) = &self.files["user"];
                    ns::setns(file.as_fd(), CloneFlags::CLONE_NEWUSER)
                }
            };
            result.map_err(|errno| self.setns_error("user".into(), errno))?;
            crate::sys::process::become_root()
                .map_err(|errno| self.setns_error("user (setresuid 0)".into(), errno))?;
        }
        for ns in std::mem::take(&mut self.deferred) {
            let (_, file) = &self.files[ns.proc_name()];
            ns::setns(file.as_fd(), ns.flag())
                .map_err(|errno| self.setns_error(ns.proc_name().into(), errno))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{FakeKernel, FakeProcess};

    const ALL: [Namespace; 8] = Namespace::ALL;

    fn plan(kernel: &FakeKernel, alive: bool) -> Result<JoinPlan, JoinError> {
        plan_joins(kernel, 42, &ALL, &|| alive)
    }

    #[test]
    fn a_container_is_joined_in_every_namespace_the_user_namespace_last() {
        let k = FakeKernel::with(42, FakeProcess::container());
        let p = plan(&k, true).expect("plan");
        assert_eq!(p.non_user, ALL[..7].to_vec());
        assert!(p.user);
        assert_eq!(p.describe(), "cgroup,ipc,uts,net,pid,mnt,time,user");
    }

    #[test]
    fn shared_namespaces_are_not_joined() {
        let process = FakeProcess::container()
            .sharing(Namespace::User)
            .sharing(Namespace::Net)
            .sharing(Namespace::Time);
        let p = plan(&FakeKernel::with(42, process), true).expect("plan");
        assert!(!p.user, "joining our own user namespace is EINVAL");
        assert!(!p.non_user.contains(&Namespace::Net));
        assert!(!p.non_user.contains(&Namespace::Time));
        assert_eq!(p.describe(), "cgroup,ipc,uts,pid,mnt");
    }

    #[test]
    fn a_host_process_needs_nothing_joined() {
        let process = ALL
            .iter()
            .fold(FakeProcess::container(), |p, &ns| p.sharing(ns));
        let p = plan(&FakeKernel::with(42, process), true).expect("plan");
        assert_eq!(p, JoinPlan::default());
        assert_eq!(p.describe(), "none (the target shares all of ours)");
    }

    #[test]
    fn a_kind_of_namespace_the_kernel_lacks_is_skipped() {
        let mut process = FakeProcess::container();
        process.namespaces.remove(&Namespace::Time);
        let p = plan(&FakeKernel::with(42, process), true).expect("plan");
        assert!(!p.non_user.contains(&Namespace::Time));
        assert_eq!(p.non_user.len(), 6);
    }

    #[test]
    fn a_missing_namespace_of_a_dead_target_is_gone() {
        let mut process = FakeProcess::container();
        process.namespaces.remove(&Namespace::Time);
        match plan(&FakeKernel::with(42, process), false) {
            Err(JoinError::Gone(42)) => {}
            other => panic!("expected Gone(42), got {other:?}"),
        }
    }

    #[test]
    fn a_vanished_target_is_gone() {
        let k = FakeKernel::default();
        assert!(matches!(plan(&k, false), Err(JoinError::Gone(42))));
    }

    #[test]
    fn an_unreadable_namespace_names_the_file() {
        struct Denied;
        impl Kernel for Denied {
            fn stat(&self, pid: i32) -> Result<procfs::Stat, procfs::ProcError> {
                Err(procfs::ProcError::NoSuchProcess(pid))
            }
            fn status(
                &self,
                pid: i32,
            ) -> Result<crate::confine::Status, crate::confine::ConfineError> {
                Err(crate::confine::ConfineError::Status {
                    pid,
                    path: "/proc/x/status".into(),
                    detail: "denied".into(),
                })
            }
            fn namespace(&self, _: Namespace, _: Option<i32>) -> std::io::Result<(u64, u64)> {
                Err(std::io::ErrorKind::PermissionDenied.into())
            }
            fn link(&self, pid: i32, _: &str) -> Result<std::path::PathBuf, procfs::ProcError> {
                Err(procfs::ProcError::NoSuchProcess(pid))
            }
            fn environ(&self, pid: i32) -> Result<Vec<u8>, procfs::ProcError> {
                Err(procfs::ProcError::NoSuchProcess(pid))
            }
            fn mountinfo(&self, _: i32) -> std::io::Result<Vec<crate::mountinfo::MountEntry>> {
                Err(std::io::ErrorKind::PermissionDenied.into())
            }
            fn cgroup(&self, _: i32) -> std::io::Result<Vec<u8>> {
                Err(std::io::ErrorKind::PermissionDenied.into())
            }
            fn id_map(&self, _: i32, _: crate::kernel::IdMap) -> std::io::Result<String> {
                Err(std::io::ErrorKind::PermissionDenied.into())
            }
            fn seccomp_filters(&self, _: i32) -> Result<Vec<crate::sys::seccomp::Filter>, Errno> {
                Err(Errno::EPERM)
            }
            fn lsm_label(&self, _: i32) -> crate::confine::Label {
                crate::confine::Label::NoLsm
            }
            fn exe(&self, pid: i32) -> Result<crate::arch::Exe, procfs::ProcError> {
                Err(procfs::ProcError::NoSuchProcess(pid))
            }
            fn binfmt_misc(&self) -> crate::arch::BinfmtRaw {
                crate::arch::BinfmtRaw::default()
            }
            fn file_identity(&self, _: &std::path::Path) -> std::io::Result<(u64, u64)> {
                Err(std::io::ErrorKind::PermissionDenied.into())
            }
        }
        let err = plan_joins(&Denied, 42, &[Namespace::Net], &|| true).expect_err("denied");
        assert!(
            matches!(
                err,
                JoinError::Open {
                    pid: 42,
                    ns: "net",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("/proc/42/ns/net"), "{err}");
    }

    #[test]
    fn asking_twice_joins_once() {
        let k = FakeKernel::with(42, FakeProcess::container());
        let p = plan_joins(&k, 42, &[Namespace::Net, Namespace::Net], &|| true).expect("plan");
        assert_eq!(p.non_user, vec![Namespace::Net]);
    }

    #[test]
    fn only_eperm_waits_for_the_user_namespace() {
        assert!(defer_after_user(Errno::EPERM));
        for errno in [Errno::EINVAL, Errno::ESRCH, Errno::EBADF, Errno::ENOMEM] {
            assert!(!defer_after_user(errno), "{errno}");
        }
    }

    #[test]
    fn join_errors_name_the_pid_and_the_fix() {
        let gone = JoinError::Gone(42).to_string();
        assert!(
            gone.contains("PID 42") && gone.contains("still running"),
            "{gone}"
        );
        let setns = JoinError::Setns {
            pid: 7,
            ns: "user (setresuid 0)".into(),
            errno: Errno::EPERM,
        }
        .to_string();
        assert!(
            setns.contains("user (setresuid 0)") && setns.contains("PID 7"),
            "{setns}"
        );
    }

    #[test]
    fn a_pinned_process_is_known_by_its_start_time() {
        let k = FakeKernel::with(42, FakeProcess::container());
        assert!(same_process(&k, 42, 5000));
        // The PID was reused by a process that started later.
        assert!(!same_process(&k, 42, 4999));
        assert!(!same_process(&k, 43, 5000));
        let mut zombie = FakeProcess::container();
        zombie.stat =
            Some("42 (app) Z 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5000 0 0".into());
        assert!(!same_process(&FakeKernel::with(42, zombie), 42, 5000));
    }
}
