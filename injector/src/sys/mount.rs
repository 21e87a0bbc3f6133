//! Classic `mount(2)` and `umount2(2)`: propagation changes, tmpfs, bind mounts, and the
//! fallback for kernels without the new mount API.

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

/// `mount --rbind source target`. A relative `source` is resolved against the working
/// directory, which may lie in another mount tree than `target`.
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

/// `umount2(target, MNT_DETACH)`: detaches now; the filesystem is released once the last
/// process using it lets go (`umount(2)`).
pub fn detach(target: &Path) -> Result<(), Errno> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH)
}

/// Remounts the tmpfs mounted at `target` read-only, keeping nosuid, nodev, noexec
/// (`MS_REMOUNT|MS_BIND` changes the per-mount flags of that one mount only:
/// `mount(2)`, "Changing the mount flags of a bind mount").
pub fn remount_tmpfs_readonly(target: &Path) -> Result<(), Errno> {
    nix::mount::mount(
        None::<&str>,
        target,
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

/// Whether the filesystem at `path` is mounted read-only (`statvfs(3)`'s `ST_RDONLY`, set
/// for a read-only mount or a read-only superblock).
pub fn is_read_only(path: &Path) -> Result<bool, Errno> {
    let stat = nix::sys::statvfs::statvfs(path)?;
    Ok(stat.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}
