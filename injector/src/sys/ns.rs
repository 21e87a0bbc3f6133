//! Namespaces: naming them, telling them apart, joining and leaving them (`setns(2)`,
//! `unshare(2)`, `namespaces(7)`).

use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    /// Every namespace a session joins, in the order it joins them (the user namespace last:
    /// once in it, cartinject could no longer join the others).
    pub const ALL: [Namespace; 8] = [
        Namespace::Cgroup,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Net,
        Namespace::Pid,
        Namespace::Mnt,
        Namespace::Time,
        Namespace::User,
    ];
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

/// The inode of the namespace a `/proc/PID/ns/NAME` link names, read from the link's text
/// (`pid:[4026531836]`). Equal inodes mean one namespace (the nsfs device is the same for
/// all). `readlink` formats the name without the nsfs dentry that following the link
/// (`stat`) looks up or creates, which makes it about twice as fast: it matters where every
/// process on the host is looked at (`exeseal::tracers`, `list::scan`). `None` when the
/// link cannot be read (the process is gone, or is not ours to look at).
pub fn link_inode(path: &Path) -> Option<u64> {
    inode_of_link_text(std::fs::read_link(path).ok()?.as_os_str())
}

/// [`link_inode`] of the link `path` below the directory `dir` (`readlinkat(2)`), for a
/// procfs opened by fd (see `mount_api::procfs_of_pid_ns`).
pub fn link_inode_at(dir: BorrowedFd<'_>, path: &Path) -> Option<u64> {
    inode_of_link_text(
        super::resolve::read_link_at(dir, path.as_os_str())
            .ok()?
            .as_os_str(),
    )
}

/// The inode of a namespace link's text, `pid:[4026531836]`.
fn inode_of_link_text(text: &std::ffi::OsStr) -> Option<u64> {
    let (_, rest) = text.to_str()?.split_once(":[")?;
    rest.strip_suffix(']')?.parse().ok()
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

/// `NS_GET_PARENT` (`include/uapi/linux/nsfs.h`: `_IO(0xb7, 0x2)`).
const NS_GET_PARENT: libc::Ioctl = 0xb702;

/// The inode of the PID namespace `levels` levels above the one `/proc/PID/ns/pid` at
/// `path` names (`ioctl_ns(2)`, `NS_GET_PARENT`); `None` when a level cannot be read (the
/// process is gone, or the ancestor lies outside our own PID namespace: EPERM).
pub fn pid_ns_ancestor(path: &Path, levels: usize) -> Option<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    let mut current: OwnedFd = std::fs::File::open(path).ok()?.into();
    for _ in 0..levels {
        // SAFETY: NS_GET_PARENT takes no argument and returns a new fd or -1; `current` is
        // an open nsfs fd for the duration of the call.
        let rc = unsafe { libc::ioctl(current.as_raw_fd(), NS_GET_PARENT) };
        if rc < 0 {
            return None;
        }
        // SAFETY: on success the ioctl returned a new fd that nothing else owns.
        current = unsafe { OwnedFd::from_raw_fd(rc) };
    }
    std::fs::File::from(current)
        .metadata()
        .ok()
        .map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_inode_is_the_inode_stat_sees() {
        let path = Namespace::Pid.proc_path(Some(std::process::id() as i32));
        let ino = std::fs::metadata(&path).expect("stat").ino();
        assert_eq!(link_inode(&path), Some(ino));
    }

    #[test]
    fn link_inode_reads_the_link_text_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::os::unix::fs::symlink(text, &path).expect("symlink");
            link_inode(&path)
        };
        assert_eq!(link("a", "mnt:[4026531841]"), Some(4026531841));
        assert_eq!(link("b", "mnt:[4026531841"), None);
        assert_eq!(link("c", "/proc/1/ns/mnt"), None);
        assert_eq!(link("d", "mnt:[x]"), None);
        assert_eq!(link_inode(&dir.path().join("missing")), None);
    }
}
