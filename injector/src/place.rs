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
//! both. A read-only `/dev` is never written to nor remounted: `-m` covers it instead with a
//! read-only copy of itself that adds `crashcart` (see [`mount_in_place`]), and `-u` takes
//! the cover away.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::mount::ImageMount;
use crate::sys::process;
use crate::sys::{Errno, mount, mount_api, ns};

/// Where the image appears inside the target: the mount point every image is laid out for.
pub const MOUNT_POINT: &str = cartimage::manifest::MOUNT_POINT;
/// The source name of a session's `/dev` tmpfs, which `--list` recognises sessions by.
pub const SESSION_DEV_SOURCE: &str = "cartinject-session";
/// The source name of the tmpfs with which `-m` covers a read-only `/dev`, which `-u`
/// recognises it by.
pub const MOUNT_DEV_SOURCE: &str = "cartinject-dev";

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
    /// A read-only `/dev` needs the new mount API for `-m`.
    #[error(
        "the container's /dev is read-only and has no /dev/crashcart: -m needs the new mount API (Linux 5.2) to add it without writing there; drop --legacy-mount, or start a session instead of -m"
    )]
    NeedsMountApi,
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

    /// The host's root when `image` is to be mounted with `mount(2)` (legacy); none for a
    /// detached mount, which needs no path.
    pub fn for_mount(image: &ImageMount) -> Result<Option<HostRoot>, PlaceError> {
        match image {
            ImageMount::Legacy { .. } => HostRoot::open().map(Some),
            ImageMount::Detached(_) => Ok(None),
        }
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

/// The container's `/dev` as it was before it was covered: its entries, owner, mode, and
/// whether it is mounted read-only.
struct DevShape {
    entries: Vec<DevEntry>,
    uid: u32,
    gid: u32,
    mode: u32,
    read_only: bool,
}

fn read_dev(dev: &Path) -> Result<DevShape, PlaceError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dev).map_err(file_err("stat", dev))?;
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
    Ok(DevShape {
        entries,
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        read_only: mount::is_read_only(dev).map_err(mount_err("statvfs", dev))?,
    })
}

/// Sets the filesystem ids for as long as it lives (see [`ns::set_fs_ids`]).
pub struct FsIds {
    old: (u32, u32),
}

impl FsIds {
    /// Creates files as `uid`/`gid` from now on (no change for 0/0).
    pub fn switch(uid: u32, gid: u32) -> FsIds {
        FsIds {
            old: ns::set_fs_ids(uid, gid),
        }
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        ns::set_fs_ids(self.old.0, self.old.1);
    }
}

/// Covers `/dev` (in a private namespace) with a tmpfs holding bind mounts of everything the
/// container's `/dev` holds, and an empty `crashcart` directory: see [`cover_dev`].
pub fn shadow_dev() -> Result<(), PlaceError> {
    cover_dev(SESSION_DEV_SOURCE)
}

/// Covers `/dev` with a tmpfs named `source` that re-exposes every entry of the `/dev` below
/// it by bind mount (symlinks are copied) and holds an empty `crashcart` directory. The cover
/// looks like what it covers: the same owner and mode (so a user-namespaced container's
/// `/dev` still belongs to its root; entries are created with that owner's ids), and
/// read-only when the covered `/dev` is mounted read-only (the cover, and only it, is
/// remounted read-only once filled). Nothing is written to the covered `/dev`.
fn cover_dev(source: &str) -> Result<(), PlaceError> {
    let dev = Path::new("/dev");
    let old = open_path(dev).map_err(file_err("open", dev))?;
    let shape = read_dev(dev)?;
    let options = format!(
        "mode=755,uid={},gid={},size=1m,nr_inodes=4096",
        shape.uid, shape.gid
    );
    mount::mount_tmpfs(source, dev, &options).map_err(mount_err("mount a tmpfs on", dev))?;
    {
        let _ids = FsIds::switch(shape.uid, shape.gid);
        for entry in &shape.entries {
            let target = dev.join(&entry.name);
            match &entry.kind {
                DevKind::Symlink(to) => {
                    std::os::unix::fs::symlink(to, &target)
                        .map_err(file_err("symlink", &target))?;
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
        std::fs::set_permissions(dev, std::fs::Permissions::from_mode(shape.mode))
            .map_err(file_err("chmod", dev))?;
    }

    // Bind each entry from the covered /dev: the working directory still lies in it, so a
    // relative source resolves there while the absolute target resolves in the new tmpfs.
    process::fchdir(std::os::fd::AsFd::as_fd(&old)).map_err(mount_err("enter", dev))?;
    let result = shape
        .entries
        .iter()
        .filter(|e| !matches!(e.kind, DevKind::Symlink(_)))
        .try_for_each(|e| {
            let target = dev.join(&e.name);
            mount::bind_recursive(Path::new(&e.name), &target).map_err(mount_err("bind", target))
        });
    process::chdir(Path::new("/")).map_err(mount_err("chdir", "/"))?;
    result?;
    if shape.read_only {
        mount::remount_tmpfs_readonly(dev).map_err(mount_err("remount read-only", dev))?;
    }
    Ok(())
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

/// How `-m` placed the image in the target's own mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPlacement {
    /// On `/dev/crashcart` in the container's `/dev`, created now (`true`) or already there.
    Directory {
        /// Whether cartinject created the directory (and `-u` removes it).
        created: bool,
    },
    /// The container's `/dev` is read-only and has no `/dev/crashcart`: `/dev` is covered by
    /// a read-only copy of itself that adds it (see [`cover_dev`]).
    Cover,
}

/// For `-m`, in a child that has joined the target's mount namespace (`own_ns`, an fd of that
/// namespace opened before joining): puts the image at `/dev/crashcart`.
///
/// The directory is created in the container's `/dev` with the ids of the container's root
/// (`owner`: a user-namespaced container's `/dev` refuses files of an unmapped owner). When
/// that `/dev` is read-only (EROFS), nothing is written to it and nothing of the container is
/// remounted: the child makes a private copy of the namespace, covers `/dev` there with a
/// tmpfs that re-exposes every entry by bind mount plus `crashcart` and is itself remounted
/// read-only, mounts the image on it, clones that whole tree (`open_tree`), goes back to the
/// container's own namespace and moves the tree onto `/dev` in one step. The workload then
/// sees the same entries, still read-only, plus `crashcart`; `-u` detaches the cover and with
/// it all of this. The cover needs the new mount API (Linux 5.2).
pub fn mount_in_place(
    image: &ImageMount,
    host_root: Option<&HostRoot>,
    owner: (u32, u32),
    own_ns: std::os::fd::BorrowedFd<'_>,
) -> Result<MountPlacement, PlaceError> {
    let at = Path::new(MOUNT_POINT);
    let created = {
        let _ids = FsIds::switch(owner.0, owner.1);
        match DirBuilder::new().mode(0o755).create(at) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                drop(_ids);
                cover_for_mount(image, own_ns)?;
                return Ok(MountPlacement::Cover);
            }
            Err(e) => {
                return Err(PlaceError::File {
                    step: "create",
                    path: at.into(),
                    source: e,
                });
            }
        }
    };
    attach(image, at, host_root).inspect_err(|_| {
        if created {
            remove_mount_point();
        }
    })?;
    Ok(MountPlacement::Directory { created })
}

/// The read-only-`/dev` case of [`mount_in_place`].
fn cover_for_mount(
    image: &ImageMount,
    own_ns: std::os::fd::BorrowedFd<'_>,
) -> Result<(), PlaceError> {
    let dev = Path::new("/dev");
    if !matches!(image, ImageMount::Detached(_)) {
        return Err(PlaceError::NeedsMountApi);
    }
    private_namespace()?;
    cover_dev(MOUNT_DEV_SOURCE)?;
    attach(image, Path::new(MOUNT_POINT), None)?;
    let tree = mount_api::clone_tree(dev).map_err(mount_err("open_tree (clone)", dev))?;
    ns::setns(own_ns, nix::sched::CloneFlags::CLONE_NEWNS).map_err(mount_err(
        "return to the container's mount namespace at",
        "/",
    ))?;
    mount_api::attach(std::os::fd::AsFd::as_fd(&tree), dev)
        .map_err(mount_err("move_mount the covered /dev onto", dev))
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

/// For `-u` of a [`MountPlacement::Cover`]: detaches the cover of `/dev`, and with it the
/// image and the bind mounts under it (`umount2(MNT_DETACH)` takes the whole subtree),
/// which uncovers the container's own `/dev` as it always was.
pub fn remove_cover() -> Result<(), PlaceError> {
    mount::detach(Path::new("/dev")).map_err(mount_err("unmount the cover of", "/dev"))
}

/// Whether the mount at `/dev` in `entries` (a mountinfo) is a `-m` cover.
pub fn has_cover(entries: &[crate::mountinfo::MountEntry]) -> bool {
    crate::mountinfo::at(entries, "/dev")
        .last()
        .is_some_and(|dev| dev.source == MOUNT_DEV_SOURCE)
}

/// Removes `/dev/crashcart` after a failed `-m` that created it.
pub fn remove_mount_point() {
    let _ = std::fs::remove_dir(MOUNT_POINT);
}
