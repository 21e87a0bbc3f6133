//! The new mount API (`fsopen(2)`, `fsconfig(2)`, `fsmount(2)`, `move_mount(2)`; Linux 5.2).
//!
//! A filesystem is set up in the host and becomes a *detached* mount, an fd not attached
//! anywhere; a process that has joined another mount namespace can then attach it there with
//! `move_mount`, so nothing (no device node, no tool) is needed inside that namespace.
//! Through `rustix`, since nix 0.30 has none of these calls. `mount_setattr(2)` (Linux
//! 5.12; idmapped mounts) is in neither crate: [`idmap`] is a raw `syscall(2)`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_fd, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    open_tree,
};

use super::{Errno, errno};

/// A failed step of [`mount_readonly`], with what the filesystem said about it.
#[derive(Debug)]
pub struct FsMountError {
    /// The call that failed (`fsopen`, `fsconfig(source)`, ...).
    pub step: &'static str,
    /// Its errno.
    pub errno: Errno,
    /// The messages the filesystem logged on the context fd (`fsopen(2)`: "read(2) ... to
    /// retrieve error messages"), joined with "; ".
    pub log: String,
}

/// Reads the filesystem context's message log (lines such as `e ext4: bad geometry`).
fn drain_log(fs: BorrowedFd<'_>) -> String {
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    // Each read returns one message; EAGAIN/ENODATA ends the log.
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                let line = String::from_utf8_lossy(&buf[..n]);
                let line = line.trim_end();
                messages.push(line.strip_prefix("e ").unwrap_or(line).to_string());
            }
            _ => break,
        }
    }
    messages.join("; ")
}

/// A new filesystem of `fstype` as a detached mount: `fsopen`, `fsconfig` of `source`, of
/// each flag in `flags` and each `(key, value)` of `options`, `fsconfig(CMD_CREATE)`, and
/// `fsmount` with `attrs`. A failure names its step and carries the filesystem's messages.
fn new_mount(
    fstype: &str,
    source: &dyn rustix::path::Arg,
    flags: &[&str],
    options: &[(&str, String)],
    attrs: MountAttrFlags,
) -> Result<OwnedFd, FsMountError> {
    let fs = open_fs(fstype)?;
    let fail = failed(fs.as_fd());
    let source = source
        .as_cow_c_str()
        .map_err(|e| fail("fsconfig(source)", e))?;
    fsconfig_set_string(fs.as_fd(), "source", source.as_ref())
        .map_err(|e| fail("fsconfig(source)", e))?;
    for flag in flags {
        fsconfig_set_flag(fs.as_fd(), *flag).map_err(|e| fail("fsconfig(flag)", e))?;
    }
    for (key, value) in options {
        fsconfig_set_string(fs.as_fd(), *key, value.as_str())
            .map_err(|e| fail("fsconfig(option)", e))?;
    }
    create_and_mount(fs.as_fd(), attrs)
}

/// `fsopen(fstype)`, close-on-exec: the first step of every new mount here.
fn open_fs(fstype: &str) -> Result<OwnedFd, FsMountError> {
    fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| FsMountError {
        step: "fsopen",
        errno: errno(e),
        log: String::new(),
    })
}

/// How a step on the filesystem context `fs` failed: its name, its errno and the
/// messages the filesystem logged on `fs`.
fn failed(fs: BorrowedFd<'_>) -> impl Fn(&'static str, rustix::io::Errno) -> FsMountError {
    move |step, e| FsMountError {
        step,
        errno: errno(e),
        log: drain_log(fs),
    }
}

/// The last steps of every new mount here: `fsconfig(CMD_CREATE)` and `fsmount` of the
/// configured context `fs` with `attrs`, as a detached mount.
fn create_and_mount(fs: BorrowedFd<'_>, attrs: MountAttrFlags) -> Result<OwnedFd, FsMountError> {
    let fail = failed(fs);
    fsconfig_create(fs).map_err(|e| fail("fsconfig(create)", e))?;
    fsmount(fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| fail("fsmount", e))
}

/// Mounts `source` (a block device path in the caller's mount namespace) as `fstype`,
/// read-only, and returns the detached mount with `MOUNT_ATTR_RDONLY|NOSUID|NODEV`.
pub fn mount_readonly(fstype: &str, source: &Path) -> Result<OwnedFd, FsMountError> {
    new_mount(
        fstype,
        &source,
        &["ro"],
        &[],
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV,
    )
}

/// `move_mount(detached, "", target, "", MOVE_MOUNT_F_EMPTY_PATH|MOVE_MOUNT_T_EMPTY_PATH)`:
/// attaches a detached mount (or moves a mount) onto the directory `target` is an fd of,
/// with no path resolved at all. `target` must lie in the caller's mount namespace.
pub fn attach_onto(detached: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), Errno> {
    move_mount(
        detached,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(errno)
}

/// `move_mount(detached, "", dir, name, MOVE_MOUNT_F_EMPTY_PATH)`: attaches a detached
/// mount onto `name` in `dir` (without `MOVE_MOUNT_T_SYMLINKS`, a symlink there is not
/// followed).
pub fn attach_at(
    detached: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> Result<(), Errno> {
    move_mount(
        detached,
        "",
        dir,
        name,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(errno)
}

/// A new tmpfs as a detached mount (`fsopen("tmpfs")`, `fsconfig` of `source` and each of
/// `options`, `fsmount` with `MOUNT_ATTR_NOSUID|NODEV|NOEXEC`): it can be filled through
/// its fd (`mkdirat` and friends) and attached with [`attach_onto`].
pub fn tmpfs(source: &str, options: &[(&str, String)]) -> Result<OwnedFd, FsMountError> {
    new_mount(
        "tmpfs",
        &source,
        &[],
        options,
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
}

/// A new procfs of the PID namespace `pid_ns` (an fd of `/proc/PID/ns/pid`) as a detached
/// mount: `fsopen("proc")`, `fsconfig` of `pidns` (Linux 6.17, "procfs: make reference pidns
/// more user-visible") and `subset=pid`, `fsmount` with `MOUNT_ATTR_RDONLY|NOSUID|NODEV|
/// NOEXEC`. Its root lists exactly the processes of that namespace and of the namespaces
/// nested in it, by their PIDs there, as the kernel sees them: nothing a process of the
/// namespace does changes which ones are listed. The mount is in no mount namespace and goes
/// when its fd is closed. Older kernels refuse `pidns` (EINVAL); a caller without
/// `CAP_SYS_ADMIN` over the namespace's user namespace gets EPERM.
pub fn procfs_of_pid_ns(pid_ns: BorrowedFd<'_>) -> Result<OwnedFd, FsMountError> {
    let fs = open_fs("proc")?;
    let fail = failed(fs.as_fd());
    fsconfig_set_fd(fs.as_fd(), "pidns", pid_ns).map_err(|e| fail("fsconfig(pidns)", e))?;
    fsconfig_set_string(fs.as_fd(), "subset", "pid").map_err(|e| fail("fsconfig(subset)", e))?;
    create_and_mount(
        fs.as_fd(),
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
}

/// `MOUNT_ATTR_IDMAP` (`<linux/mount.h>`).
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (`<linux/mount.h>`, `MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(mount, "", AT_EMPTY_PATH, {MOUNT_ATTR_IDMAP, userns})`: makes a detached
/// mount show its files' owners as the user namespace `userns` maps them (host uid N appears
/// as whatever N is inside), so an image owned by host root is owned by the container's root
/// inside a user-namespaced container (`mount_setattr(2)`, "ID-mapped mounts"). Only a mount
/// not yet attached anywhere can be idmapped, and only on filesystems that allow it
/// (`FS_ALLOW_IDMAP`): other filesystems and older kernels say EINVAL, a kernel without
/// `mount_setattr` ENOSYS.
pub fn idmap(mount: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).map_err(|_| Errno::EBADF)?,
    };
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from `attr`, a properly laid
    // out `struct mount_attr` that outlives the call; the path is a valid empty C string; the
    // fds are valid for their borrows.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `open_tree(dir, name, OPEN_TREE_CLONE|AT_RECURSIVE|AT_SYMLINK_NOFOLLOW)` (`name` empty:
/// `AT_EMPTY_PATH`, `dir` itself): a detached copy of that file or directory and every
/// mount below it, which [`attach_onto`] or [`attach_at`] can then put anywhere, also in
/// another mount namespace (`open_tree(2)`). A symlink is never followed: `dir` is best an
/// `O_PATH|O_NOFOLLOW` fd of the entry itself.
pub fn clone_tree(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Result<OwnedFd, Errno> {
    let empty = if name.is_empty() {
        OpenTreeFlags::AT_EMPTY_PATH
    } else {
        OpenTreeFlags::empty()
    };
    open_tree(
        dir,
        name,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::AT_SYMLINK_NOFOLLOW
            | empty,
    )
    .map_err(errno)
}
