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
