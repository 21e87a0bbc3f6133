//! Classic `mount(2)` and `umount2(2)`: propagation changes, remounts, detaching, and the
//! fallback for kernels without the new mount API (tmpfs, bind mounts, block devices).

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use super::Errno;

/// `mount(NULL, path, NULL, MS_REC|MS_PRIVATE, NULL)`: nothing mounted below `path` in this
/// namespace propagates to or from any other (`mount_namespaces(7)`).
pub fn make_rprivate(path: &Path) -> Result<(), Errno> {
    nix::mount::mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// Mounts a new tmpfs named `source` at `target` with `options`, nosuid, nodev, noexec.
pub fn mount_tmpfs(source: &str, target: &Path, options: &str) -> Result<(), Errno> {
    nix::mount::mount(
        Some(source),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
}

/// `mount --rbind source target`.
pub fn bind_recursive(source: &Path, target: &Path) -> Result<(), Errno> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
}

/// Mounts block device `source` as `fstype` at `target`, read-only, nosuid, nodev.
pub fn mount_block_readonly(source: &Path, target: &Path, fstype: &str) -> Result<(), Errno> {
    nix::mount::mount(
        Some(source),
        target,
        Some(fstype),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
}

/// `umount2(name, MNT_DETACH|UMOUNT_NOFOLLOW)`, `name` relative to the working directory
/// (which the caller has put on the directory fd that holds it): detaches the mount on top
/// of `name` now, never through a symlink at `name`; the filesystem is released once the
/// last process using it lets go (`umount(2)`).
pub fn detach_here(name: &str) -> Result<(), Errno> {
    nix::mount::umount2(name, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
}

/// Remounts the mount the working directory is the root of read-only, keeping nosuid,
/// nodev, noexec (`MS_REMOUNT|MS_BIND` changes the per-mount flags of that one mount only:
/// `mount(2)`, "Changing the mount flags of a bind mount"). `"."` is the working directory
/// itself: nothing is resolved.
pub fn remount_readonly_here() -> Result<(), Errno> {
    nix::mount::mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}
