//! Namespaces: naming them, telling them apart, joining and leaving them (`setns(2)`,
//! `unshare(2)`, `namespaces(7)`).

use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

use super::Errno;

/// A kind of namespace, named as in `/proc/PID/ns/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Mount namespace.
    Mnt,
    /// Hostname and domain name.
    Uts,
    /// System V IPC and POSIX message queues.
    Ipc,
    /// Network stack.
    Net,
    /// Process IDs (applies to children: `pid_for_children`).
    Pid,
    /// Cgroup root.
    Cgroup,
    /// Boot and monotonic clocks (Linux 5.6).
    Time,
    /// User and group IDs and capabilities.
    User,
}

impl Namespace {
    /// The file name under `/proc/PID/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Namespace::Mnt => "mnt",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Pid => "pid",
            Namespace::Cgroup => "cgroup",
            Namespace::Time => "time",
            Namespace::User => "user",
        }
    }

    /// The `CLONE_NEW*` flag that selects it in `setns`/`unshare`.
    pub fn flag(self) -> CloneFlags {
        match self {
            Namespace::Mnt => CloneFlags::CLONE_NEWNS,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Net => CloneFlags::CLONE_NEWNET,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
            Namespace::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            // nix 0.30 has no CLONE_NEWTIME; the value is from <linux/sched.h>.
            Namespace::Time => CloneFlags::from_bits_retain(0x0000_0080),
            Namespace::User => CloneFlags::CLONE_NEWUSER,
        }
    }

    /// `/proc/PID/ns/NAME`, or `/proc/self/ns/NAME` for `None`. For the pid and time
    /// namespaces of ourselves, the `*_for_children` link, which is what a fork would get.
    pub fn proc_path(self, pid: Option<i32>) -> PathBuf {
        match pid {
            Some(pid) => PathBuf::from(format!("/proc/{pid}/ns/{}", self.proc_name())),
            None => PathBuf::from(format!("/proc/self/ns/{}", self.proc_name())),
        }
    }
}

/// The identity of a namespace: the device and inode of its nsfs file (`namespaces(7)`:
/// "if two processes are in the same namespace, then the device IDs and inode numbers of
/// their /proc/PID/ns/xxx symbolic links will be the same").
pub fn identity(ns: Namespace, pid: Option<i32>) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(ns.proc_path(pid))?;
    Ok((meta.dev(), meta.ino()))
}

/// `setns(fd, flags)`: `fd` is a pidfd (several flags at once, Linux 5.8) or a namespace
/// file from `/proc/PID/ns/` (its one flag).
pub fn setns(fd: BorrowedFd<'_>, flags: CloneFlags) -> Result<(), Errno> {
    nix::sched::setns(fd, flags)
}

/// `unshare(CLONE_NEWNS)`: a private copy of the current mount namespace for this process.
pub fn unshare_mount_ns() -> Result<(), Errno> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
}

/// `setfsgid(gid)` then `setfsuid(uid)`: the ids the kernel checks and gives new files for
/// filesystem operations, leaving the real and effective ids alone. Returns the previous
/// `(uid, gid)`. A filesystem mounted inside a user namespace refuses to create files for an
/// fsuid it cannot map (EOVERFLOW, `fs/namei.c` `may_create`), so operations there run with
/// the namespace root's host ids. Switching the fsuid away from 0 drops the filesystem
/// capabilities (DAC override and the like) until it is switched back (`setfsuid(2)`).
pub fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    let old_gid = nix::unistd::setfsgid(Gid::from_raw(gid));
    let old_uid = nix::unistd::setfsuid(Uid::from_raw(uid));
    (old_uid.as_raw(), old_gid.as_raw())
}
