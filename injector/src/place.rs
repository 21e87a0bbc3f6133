//! Putting the image at `/dev/crashcart` inside a target's mount namespace, and taking it
//! away. These run in a child that has already joined the namespace.
//!
//! A session never touches the container's own mounts or files. It unshares a private copy of
//! the target's mount namespace (propagation private, so nothing leaks either way) and in that
//! copy covers `/dev` with a small tmpfs of its own that re-exposes every entry of the
//! container's `/dev` by bind mount, plus a `crashcart` directory on which the image is
//! mounted. Creating `/dev/crashcart` in the container's real `/dev` instead would be visible
//! to the workload, would fail on a read-only `/dev`, and removing it when one session ended
//! would detach the mount of every other session that still used it (the kernel detaches
//! mounts on a removed dentry in all namespaces). The copy dies with the session's last
//! process, taking the mount with it even after `kill -9`, and the loop device then clears.
//!
//! `-m` places the image in the target's real namespace at `/dev/crashcart`, creating that
//! directory in the container's `/dev` (it is what `docker exec` will see), and `-u` removes
//! both.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::mount::ImageMount;
use crate::sys::process;
use crate::sys::{Errno, mount, mount_api, ns};

/// Where the image appears inside the target.
pub const MOUNT_POINT: &str = "/dev/crashcart";
/// The source name of a session's `/dev` tmpfs, which `--list` recognises sessions by.
pub const SESSION_DEV_SOURCE: &str = "cartinject-session";

/// A failed placement step.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A mount syscall failed.
    #[error("{step} {path}: {errno}")]
    Mount {
        /// What was being done.
        step: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        errno: Errno,
    },
    /// `mount(2)` of the image was refused (legacy path).
    #[error(
        "the kernel cannot mount the image as {fstype} at {path} ({errno}): the image is corrupt or not a filesystem the kernel supports; build it again"
    )]
    Refused {
        /// The filesystem type.
        fstype: String,
        /// Where.
        path: PathBuf,
        /// Why.
        errno: Errno,
    },
    /// A file operation failed.
    #[error("{step} {path}: {source}")]
    File {
        /// What was being done.
        step: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn mount_err(step: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> PlaceError {
    let path = path.into();
    move |errno| PlaceError::Mount { step, path, errno }
}

fn file_err(step: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PlaceError {
    let path = path.into();
    move |source| PlaceError::File { step, path, source }
}

fn open_path(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// The host's root directory, opened before joining anything; the legacy mount path needs
/// it to name the loop device by its host path.
pub struct HostRoot(File);

impl HostRoot {
    /// Opens `/` of the calling process.
    pub fn open() -> Result<HostRoot, PlaceError> {
        open_path(Path::new("/"))
            .map(HostRoot)
            .map_err(file_err("open host root", "/"))
    }
}

/// Unshares a private copy of the current mount namespace with all propagation off.
pub fn private_namespace() -> Result<(), PlaceError> {
    ns::unshare_mount_ns().map_err(mount_err(
        "unshare a private copy of the mount namespace of",
        "/",
    ))?;
    mount::make_rprivate(Path::new("/")).map_err(mount_err("make private", "/"))
}

/// One entry of the container's `/dev`, as found before it is covered.
struct DevEntry {
    name: std::ffi::OsString,
    kind: DevKind,
}

enum DevKind {
    Dir(u32),
    Symlink(PathBuf),
    Other,
}

/// Covers `/dev` (in a private namespace) with a tmpfs holding bind mounts of everything the
/// container's `/dev` holds, and an empty `crashcart` directory.
pub fn shadow_dev() -> Result<(), PlaceError> {
    let dev = Path::new("/dev");
    let old = open_path(dev).map_err(file_err("open", dev))?;
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dev).map_err(file_err("list", dev))? {
        let entry = entry.map_err(file_err("list", dev))?;
        let name = entry.file_name();
        if name == "crashcart" {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(file_err("stat", &path))?;
        let kind = if meta.file_type().is_symlink() {
            DevKind::Symlink(std::fs::read_link(&path).map_err(file_err("read link", &path))?)
        } else if meta.is_dir() {
            DevKind::Dir(meta.permissions().mode() & 0o7777)
        } else {
            DevKind::Other
        };
        entries.push(DevEntry { name, kind });
    }

    mount::mount_tmpfs(SESSION_DEV_SOURCE, dev, "mode=755,size=1m,nr_inodes=4096")
        .map_err(mount_err("mount a session tmpfs on", dev))?;
    for entry in &entries {
        let target = dev.join(&entry.name);
        match &entry.kind {
            DevKind::Symlink(to) => {
                std::os::unix::fs::symlink(to, &target).map_err(file_err("symlink", &target))?;
            }
            DevKind::Dir(mode) => DirBuilder::new()
                .mode(*mode)
                .create(&target)
                .map_err(file_err("mkdir", &target))?,
            DevKind::Other => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(file_err("create mount point", &target))?;
            }
        }
    }
    DirBuilder::new()
        .mode(0o755)
        .create(dev.join("crashcart"))
        .map_err(file_err("mkdir", dev.join("crashcart")))?;

    // Bind each entry from the covered /dev: the working directory still lies in it, so a
    // relative source resolves there while the absolute target resolves in the new tmpfs.
    process::fchdir(std::os::fd::AsFd::as_fd(&old)).map_err(mount_err("enter", dev))?;
    let result = entries
        .iter()
        .filter(|e| !matches!(e.kind, DevKind::Symlink(_)))
        .try_for_each(|e| {
            let target = dev.join(&e.name);
            mount::bind_recursive(Path::new(&e.name), &target).map_err(mount_err("bind", target))
        });
    process::chdir(Path::new("/")).map_err(mount_err("chdir", "/"))?;
    result
}

/// Mounts the image at `at` in the current mount namespace.
pub fn attach(
    image: &ImageMount,
    at: &Path,
    host_root: Option<&HostRoot>,
) -> Result<(), PlaceError> {
    match image {
        ImageMount::Detached(detached) => {
            mount_api::attach(detached.fd(), at).map_err(mount_err("move_mount the image to", at))
        }
        ImageMount::Legacy { device, fstype } => {
            let host_root = host_root.ok_or(PlaceError::Mount {
                step: "legacy mount without the host root at",
                path: at.to_owned(),
                errno: Errno::EINVAL,
            })?;
            legacy_attach(device.path(), fstype, at, host_root)
        }
    }
}

/// `mount(2)` of `device` (a host path) at `at` (a path in the current namespace): the root
/// is pointed at the host's for the one call, with the working directory in the target
/// directory, then put back. No device node is created in the target.
fn legacy_attach(
    device: &Path,
    fstype: &str,
    at: &Path,
    host_root: &HostRoot,
) -> Result<(), PlaceError> {
    use std::os::fd::AsFd;
    let parent = at.parent().unwrap_or(Path::new("/"));
    let name = at
        .file_name()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let parent_dir = open_path(parent).map_err(file_err("open", parent))?;
    let ns_root = open_path(Path::new("/")).map_err(file_err("open", "/"))?;
    let restore = |ns_root: &File| -> Result<(), PlaceError> {
        process::fchdir(ns_root.as_fd()).map_err(mount_err("return to", "/"))?;
        process::chroot(Path::new(".")).map_err(mount_err("chroot back to", "/"))?;
        process::chdir(Path::new("/")).map_err(mount_err("chdir", "/"))
    };
    process::fchdir(host_root.0.as_fd()).map_err(mount_err("enter host root", "/"))?;
    if let Err(errno) = process::chroot(Path::new(".")) {
        restore(&ns_root)?;
        return Err(PlaceError::Mount {
            step: "chroot to the host root for",
            path: device.to_owned(),
            errno,
        });
    }
    let result = process::fchdir(parent_dir.as_fd())
        .and_then(|()| mount::mount_block_readonly(device, &name, fstype));
    restore(&ns_root)?;
    result.map_err(|errno| PlaceError::Refused {
        fstype: fstype.to_string(),
        path: at.to_owned(),
        errno,
    })
}

/// For `-m`: makes sure `/dev/crashcart` exists in the target's real `/dev`. Returns whether
/// it was created (so a failure afterwards removes it again).
pub fn ensure_mount_point() -> Result<bool, PlaceError> {
    match DirBuilder::new().mode(0o755).create(MOUNT_POINT) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(PlaceError::File {
            step: "create",
            path: MOUNT_POINT.into(),
            source: e,
        }),
    }
}

/// For `-u`: detaches every mount at `/dev/crashcart` (lazily, so processes still running
/// from it keep working until they exit) and removes the directory if it is empty. Returns
/// how many mounts were detached and whether the directory was removed.
pub fn remove() -> Result<(usize, bool), PlaceError> {
    let at = Path::new(MOUNT_POINT);
    let mut detached = 0;
    loop {
        match mount::detach(at) {
            Ok(()) => detached += 1,
            // EINVAL: not a mount point (any more). ENOENT: no directory.
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(errno) => {
                return Err(PlaceError::Mount {
                    step: "unmount",
                    path: at.into(),
                    errno,
                });
            }
        }
        if detached > 64 {
            break;
        }
    }
    let removed = match std::fs::remove_dir(at) {
        Ok(()) => true,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTEMPTY | libc::EBUSY | libc::EROFS)
            ) =>
        {
            false
        }
        Err(e) => {
            return Err(PlaceError::File {
                step: "remove",
                path: at.into(),
                source: e,
            });
        }
    };
    Ok((detached, removed))
}

/// Removes `/dev/crashcart` after a failed `-m` that created it.
pub fn remove_mount_point() {
    let _ = std::fs::remove_dir(MOUNT_POINT);
}
