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
//!
//! Everything in the container's tree is hostile: `/dev` or `/dev/crashcart` may be a
//! symlink (to `/proc/sys`, to `/`, to `../etc`), a mount the container made, or be swapped
//! for one while cartinject works. So nothing here resolves a path through the container's
//! tree: `/dev` and `/dev/crashcart` are opened one component at a time without following
//! any link (see [`crate::sys::resolve`]), directories are made with `mkdirat` on the `/dev`
//! fd, and every mount is made onto an fd (`move_mount(MOVE_MOUNT_T_EMPTY_PATH)`; for
//! `mount(2)`, the host's `/proc/self/fd/N` of that fd). `-u` detaches only a mount whose
//! mount ID it has matched with one it knows to be cartinject's (a loop device backed by an
//! image, or `-m`'s cover of `/dev`), with `UMOUNT_NOFOLLOW` from the `/dev` fd.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::display;
use crate::mount::ImageMount;
use crate::mountinfo::MountEntry;
use crate::sys::resolve::{self, Kind};
use crate::sys::{Errno, mount, mount_api, ns, process};

/// Where the image appears inside the target: the mount point every image is laid out for.
pub const MOUNT_POINT: &str = cartimage::manifest::MOUNT_POINT;
/// The source name of a session's `/dev` tmpfs, which `--list` recognises sessions by.
pub const SESSION_DEV_SOURCE: &str = "cartinject-session";
/// The source name of the tmpfs with which `-m` covers a read-only `/dev`, which `-u`
/// recognises it by.
pub const MOUNT_DEV_SOURCE: &str = "cartinject-dev";
/// The name of the mount point in `/dev`.
const CRASHCART: &str = "crashcart";
/// The file in a session's `/dev` cover that holds the target's environment, as
/// `/proc/PID/environ` gave it (NUL-separated), for reading (`crashcart-info --env`): never
/// executed, never passed on. Its path is [`crate::environ::TARGET_ENV_FILE`].
pub const TARGET_ENV: &str = "crashcart.env";

/// At most this many entries of the container's `/dev` are bound into a cover (each is one
/// mount, and a mount namespace holds at most `fs.mount-max` of them, 100,000 by default);
/// beyond it only [`STANDARD_DEV`] are.
const MAX_BOUND_ENTRIES: usize = 10_000;
/// The entries of `/dev` every container runtime makes (the OCI runtime spec's default
/// devices and links, plus what Docker and Podman mount there).
const STANDARD_DEV: [&str; 16] = [
    "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "pts", "shm", "mqueue",
    "fd", "stdin", "stdout", "stderr", "core",
];

/// A failed placement step. Paths and names from the container are printed escaped.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A mount syscall failed.
    #[error("{step} {}: {errno}", display::path(.path))]
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
        "the kernel cannot mount the image as {fstype} at {} ({errno}): the image is corrupt or not a filesystem the kernel supports; build it again",
        display::path(.path)
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
    /// The cover of `/dev` needs the new mount API.
    #[error(
        "cannot cover /dev without the new mount API (fsopen: {0}): cartinject needs Linux 5.2 or later"
    )]
    NoMountApi(Errno),
    /// Mount IDs are needed to tell cartinject's mount from the container's.
    #[error(
        "the kernel does not report mount IDs (statx STATX_MNT_ID: {0}): -u needs Linux 5.8 to tell cartinject's mount from the container's, so it changed nothing"
    )]
    NoMountIds(Errno),
    /// A file operation failed.
    #[error("{step} {}: {errno}", display::path(.path))]
    File {
        /// What was being done.
        step: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        errno: Errno,
    },
    /// Something in the container that cartinject did not make is where it would work.
    #[error("{path} in the container is {what}: {fix}")]
    Planted {
        /// Where (a fixed path: `/dev` or `/dev/crashcart`).
        path: &'static str,
        /// What is there, container strings escaped.
        what: String,
        /// What to do.
        fix: &'static str,
    },
}

fn mount_err(step: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> PlaceError {
    let path = path.into();
    move |errno| PlaceError::Mount { step, path, errno }
}

fn file_err(step: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> PlaceError {
    let path = path.into();
    move |errno| PlaceError::File { step, path, errno }
}

/// The host's root directory and its `/proc`, opened before joining anything; the legacy
/// mount path needs them to name the loop device by its host path and the mount point by
/// `/proc/self/fd/N` of its fd (a container's own `/proc` could be anything).
pub struct HostRoot {
    root: OwnedFd,
    proc: OwnedFd,
}

impl HostRoot {
    /// Opens `/` and `/proc` of the calling process, and checks that the latter is procfs.
    pub fn open() -> Result<HostRoot, PlaceError> {
        let root = resolve::open_root().map_err(file_err("open host root", "/"))?;
        let proc = resolve::open_procfs(root.as_fd()).map_err(|errno| match errno {
            Errno::EXDEV => PlaceError::File {
                step: "the host's /proc is not a procfs:",
                path: "/proc".into(),
                errno: Errno::EINVAL,
            },
            errno => file_err("open the host's", "/proc")(errno),
        })?;
        Ok(HostRoot { root, proc })
    }

    /// The host's root for `-m` and `-u`, which also need its `/proc` for mount IDs on
    /// kernels before 5.8; `None` when it cannot be opened (the mount path then needs none).
    pub fn for_mount_ids(image: Option<&ImageMount>) -> Result<Option<HostRoot>, PlaceError> {
        match (HostRoot::open(), image) {
            (Ok(host), _) => Ok(Some(host)),
            (Err(e), Some(ImageMount::Legacy { .. })) => Err(e),
            (Err(_), _) => Ok(None),
        }
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

/// What `name` in `dir` is, for a message: "a symlink to X" (escaped), "a file", ...
fn describe(dir: BorrowedFd<'_>, name: &str) -> String {
    match resolve::stat_at(dir, OsStr::new(name)) {
        Ok((Kind::Symlink, ..)) => match resolve::read_link_at(dir, OsStr::new(name)) {
            Ok(target) => format!(
                "a symlink to {}",
                display::escape(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))
            ),
            Err(_) => "a symlink".into(),
        },
        Ok((Kind::Dir, ..)) => "a directory that cannot be opened".into(),
        Ok((Kind::Other, ..)) => "not a directory".into(),
        Err(errno) => format!("unreadable ({errno})"),
    }
}

/// Whether opening a directory without following links failed because something that is
/// no plain directory is there (a symlink: ELOOP; a file: ENOTDIR; a magic link or
/// another filesystem's root crossed: EXDEV), which is refused as planted.
fn planted(errno: Errno) -> bool {
    matches!(errno, Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV)
}

/// `/dev` of the process root, a real directory (not a symlink: refused in one line).
fn open_dev(root: BorrowedFd<'_>, fix: &'static str) -> Result<OwnedFd, PlaceError> {
    resolve::open_dir(root, Path::new("dev")).map_err(|errno| match errno {
        errno if planted(errno) => PlaceError::Planted {
            path: "/dev",
            what: describe(root, "dev"),
            fix,
        },
        errno => PlaceError::File {
            step: "open",
            path: "/dev".into(),
            errno,
        },
    })
}

/// `/dev/crashcart` below the `/dev` fd `dev`, a real directory.
fn open_crashcart(dev: BorrowedFd<'_>, fix: &'static str) -> Result<OwnedFd, PlaceError> {
    resolve::open_dir(dev, Path::new(CRASHCART)).map_err(|errno| match errno {
        errno if planted(errno) => PlaceError::Planted {
            path: MOUNT_POINT,
            what: describe(dev, CRASHCART),
            fix,
        },
        errno => PlaceError::File {
            step: "open",
            path: MOUNT_POINT.into(),
            errno,
        },
    })
}

/// The ID of the mount `fd` lies on: `statx`, or before Linux 5.8 the host's
/// `/proc/self/fdinfo/N` when `host` is there.
fn mount_id(fd: BorrowedFd<'_>, path: &str, host: Option<&HostRoot>) -> Result<u64, PlaceError> {
    let found = match (resolve::mount_id(fd), host) {
        (Err(Errno::ENOSYS | Errno::EINVAL), Some(host)) => {
            resolve::mount_id_from_fdinfo(host.proc.as_fd(), fd)
        }
        (other, _) => other,
    };
    found.map_err(|errno| match errno {
        Errno::ENOSYS | Errno::EINVAL => PlaceError::NoMountIds(errno),
        errno => PlaceError::File {
            step: "find the mount ID of",
            path: path.into(),
            errno,
        },
    })
}

/// One entry of the container's `/dev`, as found before it is covered.
struct DevEntry {
    name: OsString,
    kind: DevKind,
}

enum DevKind {
    Dir(u32),
    Symlink(OsString),
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

/// How many entries a cover binds at most: [`MAX_BOUND_ENTRIES`], or a quarter of
/// `fs.mount-max` when that is lower (read below `root`, in the namespace joined, from a
/// procfs: a value the container fakes can only lower the bound).
fn bind_bound(root: BorrowedFd<'_>) -> usize {
    bound_of(
        resolve::read_procfs_value(root, Path::new("proc/sys/fs/mount-max"))
            .ok()
            .as_deref(),
    )
}

/// [`bind_bound`] from the text of `fs.mount-max`, if it could be read.
fn bound_of(mount_max: Option<&str>) -> usize {
    mount_max
        .and_then(|t| t.trim().parse::<usize>().ok())
        .map_or(MAX_BOUND_ENTRIES, |max| (max / 4).min(MAX_BOUND_ENTRIES))
}

/// The entries of the container's `/dev` (`names`, as listed) that a cover re-exposes:
/// all but cartinject's own names, or when there are more than `bound` of them only the
/// [`STANDARD_DEV`] ones, with a warning for the user.
fn dev_names_to_bind(mut names: Vec<OsString>, bound: usize) -> (Vec<OsString>, Option<String>) {
    names.retain(|n| n != CRASHCART && n != TARGET_ENV);
    if names.len() <= bound {
        return (names, None);
    }
    let total = names.len();
    names.retain(|n| STANDARD_DEV.iter().any(|s| n == s));
    let warning = format!(
        "the container's /dev holds {total} entries, more than the {bound} cartinject binds (one mount each): only its standard entries ({}) are shown in /dev",
        STANDARD_DEV.join(" ")
    );
    (names, Some(warning))
}

fn read_dev(
    root: BorrowedFd<'_>,
    dev: BorrowedFd<'_>,
    note: &mut dyn FnMut(String),
) -> Result<DevShape, PlaceError> {
    let (_, uid, gid, mode) =
        resolve::stat_at(dev, OsStr::new("")).map_err(file_err("stat", "/dev"))?;
    let listed = resolve::list(dev).map_err(file_err("list", "/dev"))?;
    let (names, warning) = dev_names_to_bind(listed, bind_bound(root));
    if let Some(warning) = warning {
        note(warning);
    }
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let kind = match resolve::stat_at(dev, &name) {
            Ok((Kind::Symlink, ..)) => match resolve::read_link_at(dev, &name) {
                Ok(target) => DevKind::Symlink(target),
                // Gone or changed since it was listed: left out.
                Err(_) => continue,
            },
            Ok((Kind::Dir, _, _, mode)) => DevKind::Dir(mode),
            Ok((Kind::Other, ..)) => DevKind::Other,
            Err(_) => continue,
        };
        entries.push(DevEntry { name, kind });
    }
    Ok(DevShape {
        entries,
        uid,
        gid,
        mode,
        read_only: resolve::is_read_only(dev).map_err(mount_err("statvfs", "/dev"))?,
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

/// What to do about a symlinked `/dev` in a session.
const SESSION_DEV_FIX: &str = "cartinject follows no link there and needs /dev to be a directory, so the session did not start";

/// Covers `/dev` of the process root (in a private namespace) with a tmpfs holding bind
/// mounts of everything the container's `/dev` holds, and an empty `crashcart` directory
/// (see [`cover_dev`]): with the new mount API, or with `mount(2)` when `legacy` holds the
/// host's root and `/proc` (opened before joining: see [`HostRoot`]). The target's
/// environment is written to [`TARGET_ENV`] in the cover (mode 0400, the cover's owner), and
/// each warning line is handed to `note`.
pub fn shadow_dev_with(
    legacy: Option<&HostRoot>,
    target_env: Option<&[u8]>,
    note: &mut dyn FnMut(String),
) -> Result<(), PlaceError> {
    let root = resolve::open_root().map_err(file_err("open", "/"))?;
    let dev = open_dev(root.as_fd(), SESSION_DEV_FIX)?;
    let files: Vec<(&str, &[u8])> = target_env.map(|e| (TARGET_ENV, e)).into_iter().collect();
    cover_dev(
        root.as_fd(),
        dev.as_fd(),
        SESSION_DEV_SOURCE,
        legacy,
        &files,
        note,
    )
    .map(drop)
}

/// Runs `f` with the working directory in the host's `/proc` (so that `self/fd/N` names
/// this process's fd N there), then goes back to `/`.
fn in_host_proc<T>(
    host: &HostRoot,
    f: impl FnOnce() -> Result<T, Errno>,
) -> Result<Result<T, Errno>, PlaceError> {
    process::fchdir(host.proc.as_fd()).map_err(mount_err("enter the host's", "/proc"))?;
    let result = f();
    process::chdir(Path::new("/")).map_err(mount_err("chdir", "/"))?;
    Ok(result)
}

/// `self/fd/N` for `fd`, relative to the host's `/proc`.
fn by_fd(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)))
}

/// Covers the directory `dev` (an fd of the container's `/dev`, below `root`) with a tmpfs
/// named `source` that re-exposes every entry of it by bind mount (symlinks are copied) and
/// holds an empty `crashcart` directory, and returns the cover's fd. The cover looks like
/// what it covers: the same owner and mode (so a user-namespaced container's `/dev` still
/// belongs to its root; entries are created with that owner's ids), and read-only when the
/// covered `/dev` is mounted read-only (the cover, and only it, is remounted read-only once
/// filled). Nothing is written to the covered `/dev`, and no path is resolved through it:
/// the tmpfs is made detached (`fsmount`) and moved onto the `/dev` fd, filled through its
/// fd, and each entry is cloned with `open_tree(dev, name, AT_SYMLINK_NOFOLLOW)` and moved
/// onto its place in the cover by fd. With `legacy` (`mount(2)` only), the tmpfs is mounted
/// on, and each entry bound from and onto, `/proc/self/fd/N` of `O_PATH|O_NOFOLLOW` fds,
/// through the host's `/proc`. The tmpfs is sized from the entries (4 KiB and an inode
/// each, above 1 MiB and 1,024 inodes), so no number of them fills it.
fn cover_dev(
    root: BorrowedFd<'_>,
    dev: BorrowedFd<'_>,
    source: &str,
    legacy: Option<&HostRoot>,
    files: &[(&str, &[u8])],
    note: &mut dyn FnMut(String),
) -> Result<OwnedFd, PlaceError> {
    let shape = read_dev(root, dev, note)?;
    let options = cover_options(&shape, files);
    let cover = match legacy {
        None => {
            let cover = mount_api::tmpfs(source, &options).map_err(|e| {
                if e.step == "fsopen" && e.errno == Errno::ENOSYS {
                    PlaceError::NoMountApi(e.errno)
                } else {
                    PlaceError::Mount {
                        step: "make a tmpfs (fsopen, fsconfig, fsmount) for",
                        path: "/dev".into(),
                        errno: e.errno,
                    }
                }
            })?;
            mount_api::attach_onto(cover.as_fd(), dev).map_err(mount_err("cover", "/dev"))?;
            cover
        }
        Some(host) => legacy_tmpfs(root, dev, source, &options, host)?,
    };
    {
        let _ids = FsIds::switch(shape.uid, shape.gid);
        for entry in &shape.entries {
            let made = match &entry.kind {
                DevKind::Symlink(to) => resolve::symlink_at(to, cover.as_fd(), &entry.name),
                DevKind::Dir(mode) => resolve::mkdir_at(cover.as_fd(), &entry.name, *mode),
                DevKind::Other => resolve::create_file_at(cover.as_fd(), &entry.name, 0o600),
            };
            made.map_err(file_err("create in the cover of /dev:", &entry.name))?;
        }
        resolve::mkdir_at(cover.as_fd(), OsStr::new(CRASHCART), 0o755)
            .map_err(file_err("mkdir", MOUNT_POINT))?;
        for (name, bytes) in files {
            resolve::write_file_at(cover.as_fd(), OsStr::new(name), 0o400, bytes)
                .map_err(file_err("write in the cover of /dev:", name))?;
        }
    }
    for entry in &shape.entries {
        if matches!(entry.kind, DevKind::Symlink(_)) {
            continue;
        }
        let at = || Path::new("/dev").join(&entry.name);
        let bound = match legacy {
            None => match mount_api::clone_tree(dev, &entry.name) {
                Ok(tree) => mount_api::attach_at(tree.as_fd(), cover.as_fd(), &entry.name),
                Err(errno) => Err(errno),
            },
            Some(host) => match resolve::open_entry(dev, &entry.name) {
                Ok(from) => {
                    let onto = resolve::open_entry(cover.as_fd(), &entry.name)
                        .map_err(file_err("open in the cover of /dev:", &entry.name))?;
                    in_host_proc(host, || {
                        mount::bind_recursive(&by_fd(from.as_fd()), &by_fd(onto.as_fd()))
                    })?
                }
                Err(errno) => Err(errno),
            },
        };
        match bound {
            Ok(()) => {}
            // Gone since it was listed: its place stays empty.
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(mount_err("bind", at())(errno)),
        }
    }
    if shape.read_only {
        process::fchdir(cover.as_fd()).map_err(mount_err("enter", "/dev"))?;
        let remounted = mount::remount_readonly_here();
        process::chdir(Path::new("/")).map_err(mount_err("chdir", "/"))?;
        remounted.map_err(mount_err("remount read-only", "/dev"))?;
    }
    Ok(cover)
}

/// The tmpfs options of a cover of `shape` that also holds `files`: the covered `/dev`'s
/// mode and (unless root's) owner, 4 KiB and an inode per entry above 1 MiB and 1,024
/// inodes, and each file's size and a page more.
fn cover_options(shape: &DevShape, files: &[(&str, &[u8])]) -> Vec<(&'static str, String)> {
    let count = shape.entries.len();
    let mut options = vec![
        ("mode", format!("{:o}", shape.mode)),
        (
            "size",
            (1024 * 1024 + 4096 * count + files.iter().map(|(_, b)| b.len() + 4096).sum::<usize>())
                .to_string(),
        ),
        ("nr_inodes", (1024 + count).to_string()),
    ];
    // tmpfs's root belongs to the mounter (root) unless told otherwise.
    if (shape.uid, shape.gid) != (0, 0) {
        options.push(("uid", shape.uid.to_string()));
        options.push(("gid", shape.gid.to_string()));
    }
    options
}

/// `mount(2)` of a tmpfs named `source` onto the directory fd `dev` (by the host's
/// `/proc/self/fd/N`), and its fd: `dev` below `root` opened again, which must now be a
/// filesystem other than the one `dev` lies on.
fn legacy_tmpfs(
    root: BorrowedFd<'_>,
    dev: BorrowedFd<'_>,
    source: &str,
    options: &[(&str, String)],
    host: &HostRoot,
) -> Result<OwnedFd, PlaceError> {
    let data = options
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    in_host_proc(host, || mount::mount_tmpfs(source, &by_fd(dev), &data))?
        .map_err(mount_err("mount a tmpfs on", "/dev"))?;
    let cover = open_dev(root, SESSION_DEV_FIX)?;
    let old = resolve::device(dev).map_err(file_err("stat", "/dev"))?;
    if resolve::device(cover.as_fd()).map_err(file_err("stat", "/dev"))? == old {
        return Err(PlaceError::Mount {
            step: "find the tmpfs just mounted on",
            path: "/dev".into(),
            errno: Errno::EXDEV,
        });
    }
    Ok(cover)
}

/// Mounts the image at `at` (an absolute path, normally [`MOUNT_POINT`]) below the process
/// root, resolved without following any link.
pub fn attach(
    image: &ImageMount,
    at: &Path,
    host_root: Option<&HostRoot>,
) -> Result<(), PlaceError> {
    let root = resolve::open_root().map_err(file_err("open", "/"))?;
    let relative = at.strip_prefix("/").unwrap_or(at);
    let target = resolve::open_dir(root.as_fd(), relative).map_err(file_err("open", at))?;
    attach_onto(image, target.as_fd(), at, host_root)
}

/// Mounts the image onto the directory fd `target` (`at` names it in messages).
fn attach_onto(
    image: &ImageMount,
    target: BorrowedFd<'_>,
    at: &Path,
    host_root: Option<&HostRoot>,
) -> Result<(), PlaceError> {
    match image {
        ImageMount::Detached(detached) => mount_api::attach_onto(detached.fd(), target)
            .map_err(mount_err("move_mount the image to", at)),
        ImageMount::Legacy { device, fstype } => {
            let host_root = host_root.ok_or(PlaceError::Mount {
                step: "legacy mount without the host root at",
                path: at.to_owned(),
                errno: Errno::EINVAL,
            })?;
            legacy_attach(device.path(), fstype, target, at, host_root)
        }
    }
}

/// `mount(2)` of `device` (a host path) onto the directory fd `target`: the root is pointed
/// at the host's for the one call (so the device is found by its host path, and no device
/// node is made in the target), the working directory at the host's `/proc` (checked to be
/// procfs when it was opened), and the mount point named `self/fd/N`, the magic link of
/// `target` itself; then the root is put back. Nothing of the container is resolved.
fn legacy_attach(
    device: &Path,
    fstype: &str,
    target: BorrowedFd<'_>,
    at: &Path,
    host_root: &HostRoot,
) -> Result<(), PlaceError> {
    let ns_root = resolve::open_root().map_err(file_err("open", "/"))?;
    let restore = |ns_root: &OwnedFd| -> Result<(), PlaceError> {
        process::fchdir(ns_root.as_fd()).map_err(mount_err("return to", "/"))?;
        process::chroot(Path::new(".")).map_err(mount_err("chroot back to", "/"))?;
        process::chdir(Path::new("/")).map_err(mount_err("chdir", "/"))
    };
    process::fchdir(host_root.root.as_fd()).map_err(mount_err("enter host root", "/"))?;
    if let Err(errno) = process::chroot(Path::new(".")) {
        restore(&ns_root)?;
        return Err(PlaceError::Mount {
            step: "chroot to the host root for",
            path: device.to_owned(),
            errno,
        });
    }
    let by_fd = PathBuf::from(format!(
        "self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&target)
    ));
    let result = process::fchdir(host_root.proc.as_fd())
        .and_then(|()| mount::mount_block_readonly(device, &by_fd, fstype));
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

/// What `-m` says to do about something planted at `/dev` or `/dev/crashcart`.
const MOUNT_FIX: &str = "it is not cartinject's, so -m left it as it is and followed no link; remove it there, or start a session instead (sessions do not use it)";

/// For `-m`, in a child that has joined the target's mount namespace (`own_ns`, an fd of that
/// namespace opened before joining): puts the image at `/dev/crashcart`.
///
/// `/dev` must be a directory and `/dev/crashcart`, if it is there, a directory that is no
/// mount point: a symlink or a mount the container planted is refused, never followed. The
/// directory is created with `mkdirat` on the `/dev` fd, with the ids of the container's
/// root (`owner`: a user-namespaced container's `/dev` refuses files of an unmapped owner),
/// and the image is moved onto its fd. When that `/dev` is read-only (EROFS), nothing is
/// written to it and nothing of the container is remounted: the child makes a private copy
/// of the namespace, covers `/dev` there with a tmpfs that re-exposes every entry by bind
/// mount plus `crashcart` and is itself remounted read-only, mounts the image on it, clones
/// that whole tree (`open_tree`), goes back to the container's own namespace and moves the
/// tree onto the `/dev` fd it opened there in one step. The workload then sees the same
/// entries, still read-only, plus `crashcart`; `-u` detaches the cover and with it all of
/// this. The cover needs the new mount API (Linux 5.2). Warnings go to `note`.
pub fn mount_in_place(
    image: &ImageMount,
    host_root: Option<&HostRoot>,
    owner: (u32, u32),
    own_ns: BorrowedFd<'_>,
    note: &mut dyn FnMut(String),
) -> Result<MountPlacement, PlaceError> {
    let root = resolve::open_root().map_err(file_err("open", "/"))?;
    let dev = open_dev(root.as_fd(), MOUNT_FIX)?;
    let made = {
        let _ids = FsIds::switch(owner.0, owner.1);
        resolve::mkdir_at(dev.as_fd(), OsStr::new(CRASHCART), 0o755)
    };
    let created = match after_mkdir(made)? {
        Made::Created => true,
        Made::Existing => false,
        Made::ReadOnly => {
            cover_for_mount(image, dev.as_fd(), own_ns, note)?;
            return Ok(MountPlacement::Cover);
        }
    };
    let undo = |dev: &OwnedFd| {
        if created {
            let _ = resolve::rmdir_at(dev.as_fd(), OsStr::new(CRASHCART));
        }
    };
    let at = open_crashcart(dev.as_fd(), MOUNT_FIX).inspect_err(|_| undo(&dev))?;
    if !created {
        let on = mount_id(at.as_fd(), MOUNT_POINT, host_root)?;
        if on != mount_id(dev.as_fd(), "/dev", host_root)? {
            return Err(PlaceError::Planted {
                path: MOUNT_POINT,
                what: format!("a mount point (mount ID {on})"),
                fix: MOUNT_FIX,
            });
        }
    }
    attach_onto(image, at.as_fd(), Path::new(MOUNT_POINT), host_root)
        .inspect_err(|_| undo(&dev))?;
    Ok(MountPlacement::Directory { created })
}

/// What `mkdir /dev/crashcart` found, for `-m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    /// Created it (and `-u` removes it).
    Created,
    /// Already there (to be checked: a plain directory that is no mount point).
    Existing,
    /// `/dev` is read-only: cover it instead (see [`cover_for_mount`]).
    ReadOnly,
}

/// [`Made`] from the result of `mkdirat(dev, "crashcart")`; any other failure is an error.
fn after_mkdir(made: Result<(), Errno>) -> Result<Made, PlaceError> {
    match made {
        Ok(()) => Ok(Made::Created),
        Err(Errno::EEXIST) => Ok(Made::Existing),
        Err(Errno::EROFS) => Ok(Made::ReadOnly),
        Err(errno) => Err(PlaceError::File {
            step: "create",
            path: MOUNT_POINT.into(),
            errno,
        }),
    }
}

/// The read-only-`/dev` case of [`mount_in_place`]; `dev` is the container's `/dev` in its
/// own namespace.
fn cover_for_mount(
    image: &ImageMount,
    dev: BorrowedFd<'_>,
    own_ns: BorrowedFd<'_>,
    note: &mut dyn FnMut(String),
) -> Result<(), PlaceError> {
    let ImageMount::Detached(detached) = image else {
        return Err(PlaceError::NeedsMountApi);
    };
    private_namespace()?;
    // The copy's own /dev: `dev` still lies in the container's namespace.
    let root = resolve::open_root().map_err(file_err("open", "/"))?;
    let copy_dev = open_dev(root.as_fd(), MOUNT_FIX)?;
    let cover = cover_dev(
        root.as_fd(),
        copy_dev.as_fd(),
        MOUNT_DEV_SOURCE,
        None,
        &[],
        note,
    )?;
    let at = open_crashcart(cover.as_fd(), MOUNT_FIX)?;
    mount_api::attach_onto(detached.fd(), at.as_fd())
        .map_err(mount_err("move_mount the image to", MOUNT_POINT))?;
    let tree = mount_api::clone_tree(cover.as_fd(), OsStr::new(""))
        .map_err(mount_err("open_tree (clone)", "/dev"))?;
    ns::setns(own_ns, nix::sched::CloneFlags::CLONE_NEWNS).map_err(mount_err(
        "return to the container's mount namespace at",
        "/",
    ))?;
    mount_api::attach_onto(tree.as_fd(), dev)
        .map_err(mount_err("move_mount the covered /dev onto", "/dev"))
}

/// The mounts of a target that are cartinject's, by mount ID, from its mountinfo (read in the
/// host before joining: the kernel's text) and the host's sysfs.
#[derive(Debug, Default, Clone)]
pub struct OwnMounts {
    /// Image mounts: at `.../dev/crashcart`, of a loop device whose backing file is an image.
    pub images: HashSet<u64>,
    /// `-m`'s covers of a read-only `/dev`: tmpfs named [`MOUNT_DEV_SOURCE`] at `.../dev`,
    /// holding one of `images`.
    pub covers: HashSet<u64>,
    /// Every mount, to describe one that is not cartinject's.
    pub mounts: Vec<MountEntry>,
}

impl OwnMounts {
    /// Picks cartinject's mounts out of `mounts` (`sys_root`: normally `/sys`).
    pub fn find(mounts: Vec<MountEntry>, sys_root: &Path) -> OwnMounts {
        let images: HashSet<u64> = mounts
            .iter()
            .filter(|m| is_image_mount(m, sys_root))
            .map(|m| u64::from(m.mount_id))
            .collect();
        let covers = mounts
            .iter()
            .filter(|m| {
                m.source == MOUNT_DEV_SOURCE
                    && m.fstype == "tmpfs"
                    && m.mount_point.ends_with("dev")
                    && mounts.iter().any(|c| {
                        c.parent_id == m.mount_id && images.contains(&u64::from(c.mount_id))
                    })
            })
            .map(|m| u64::from(m.mount_id))
            .collect();
        OwnMounts {
            images,
            covers,
            mounts,
        }
    }

    /// The mount with ID `id`.
    pub fn entry(&self, id: u64) -> Option<&MountEntry> {
        self.mounts.iter().find(|m| u64::from(m.mount_id) == id)
    }

    fn describe(&self, id: u64) -> String {
        match self.entry(id) {
            Some(m) => format!(
                "a {} mount of {}",
                display::escape(&m.fstype),
                display::escape(&m.source)
            ),
            None => format!("a mount (ID {id})"),
        }
    }
}

/// Whether `m` is an image mount as cartinject makes them: the whole filesystem (not a bind
/// of part of it) of a loop device whose backing file is a file, mounted read-only as one
/// of the filesystems images are, at `.../dev/crashcart`.
pub fn is_image_mount(m: &MountEntry, sys_root: &Path) -> bool {
    m.major == crate::loopdev::LOOP_MAJOR
        && m.root == Path::new("/")
        && matches!(
            m.fstype.as_str(),
            "ext4" | "ext3" | "ext2" | "erofs" | "squashfs"
        )
        && m.options.split(',').any(|o| o == "ro")
        && m.mount_point.ends_with("dev/crashcart")
        && crate::loopdev::backing_file(sys_root, m.major, m.minor).is_some()
}

/// What [`remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Detached the image mount with this ID, and removed the directory (`true`) or not.
    Image(u64, bool),
    /// Detached `-m`'s cover of `/dev` with this ID, and everything under it.
    Cover(u64),
    /// Nothing was mounted; removed the empty directory left at `/dev/crashcart`.
    EmptyDir,
    /// Nothing was mounted, and there was nothing to remove.
    Nothing,
}

impl Removed {
    /// A one-line encoding, for a child's report.
    pub fn encode(self) -> String {
        match self {
            Removed::Image(id, dir) => format!("image {id} {dir}"),
            Removed::Cover(id) => format!("cover {id}"),
            Removed::EmptyDir => "emptydir".into(),
            Removed::Nothing => "nothing".into(),
        }
    }

    /// The inverse of [`Removed::encode`].
    pub fn decode(text: &str) -> Option<Removed> {
        let words: Vec<&str> = text.split(' ').collect();
        match words.as_slice() {
            ["image", id, dir] => Some(Removed::Image(id.parse().ok()?, dir.parse().ok()?)),
            ["cover", id] => Some(Removed::Cover(id.parse().ok()?)),
            ["emptydir"] => Some(Removed::EmptyDir),
            ["nothing"] => Some(Removed::Nothing),
            _ => None,
        }
    }
}

/// What `-u` says about something that is not cartinject's.
const UNMOUNT_FIX: &str = "it is not cartinject's, so -u left it as it is (it follows no link and detaches only cartinject's own mounts)";

/// For `-u`, in a child that has joined the target's mount namespace: detaches cartinject's
/// mount at `/dev/crashcart` (lazily, so processes still running from it keep working until
/// they exit) and removes the directory if it is then empty; or, when `/dev` is `-m`'s
/// cover of a read-only `/dev`, detaches the cover and with it the image and the bind mounts
/// under it, which gives back the container's own `/dev` as it always was.
///
/// Only a mount whose ID is among `ours` is detached, and never through a link: `/dev` and
/// `/dev/crashcart` are opened without following any, the mount ID of the fd is matched,
/// then checked again on the name (`statx(AT_SYMLINK_NOFOLLOW)`) from the directory that
/// holds it, just before `umount2(name, MNT_DETACH|UMOUNT_NOFOLLOW)` there. A symlink, a
/// file or a mount of the container's at `/dev/crashcart` (or `/dev`) is refused and left
/// as it is.
pub fn remove(ours: &OwnMounts, host: Option<&HostRoot>) -> Result<Removed, PlaceError> {
    let root = resolve::open_root().map_err(file_err("open", "/"))?;
    let dev = open_dev(root.as_fd(), UNMOUNT_FIX)?;
    let dev_id = mount_id(dev.as_fd(), "/dev", host)?;
    if ours.covers.contains(&dev_id) {
        detach_checked(root.as_fd(), "dev", dev_id, host)?;
        return Ok(Removed::Cover(dev_id));
    }
    match resolve::stat_at(dev.as_fd(), OsStr::new(CRASHCART)) {
        Err(Errno::ENOENT) => return Ok(Removed::Nothing),
        Err(errno) => return Err(file_err("stat", MOUNT_POINT)(errno)),
        Ok(_) => {}
    }
    let at = open_crashcart(dev.as_fd(), UNMOUNT_FIX)?;
    let at_id = mount_id(at.as_fd(), MOUNT_POINT, host)?;
    if at_id == dev_id {
        // No mount: a directory -m left behind, removed when empty.
        return after_rmdir(resolve::rmdir_at(dev.as_fd(), OsStr::new(CRASHCART)));
    }
    if !ours.images.contains(&at_id) {
        return Err(PlaceError::Planted {
            path: MOUNT_POINT,
            what: ours.describe(at_id),
            fix: UNMOUNT_FIX,
        });
    }
    detach_checked(dev.as_fd(), CRASHCART, at_id, host)?;
    let removed = resolve::rmdir_at(dev.as_fd(), OsStr::new(CRASHCART)).is_ok();
    Ok(Removed::Image(at_id, removed))
}

/// What removing the directory `-m` left at `/dev/crashcart` (with nothing mounted on it)
/// did: a directory that is not empty, busy, on a read-only `/dev` or gone meanwhile is left
/// alone (nothing to report); any other failure is an error.
fn after_rmdir(result: Result<(), Errno>) -> Result<Removed, PlaceError> {
    match result {
        Ok(()) => Ok(Removed::EmptyDir),
        Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::EBUSY | Errno::EROFS | Errno::ENOENT) => {
            Ok(Removed::Nothing)
        }
        Err(errno) => Err(file_err("remove", MOUNT_POINT)(errno)),
    }
}

/// Detaches the mount on `name` in `dir` after checking, on the name itself and without
/// following it, that its mount ID is still `id`.
fn detach_checked(
    dir: BorrowedFd<'_>,
    name: &str,
    id: u64,
    host: Option<&HostRoot>,
) -> Result<(), PlaceError> {
    let path = if name == "dev" { "/dev" } else { MOUNT_POINT };
    let now = match resolve::mount_id_at(dir, name) {
        Err(Errno::ENOSYS | Errno::EINVAL) => {
            let fd = resolve::open_entry(dir, OsStr::new(name)).map_err(file_err("open", path))?;
            mount_id(fd.as_fd(), path, host)?
        }
        other => other.map_err(file_err("find the mount ID of", path))?,
    };
    if now != id {
        return Err(PlaceError::Planted {
            path,
            what: format!("now mount ID {now}, not cartinject's mount {id}"),
            fix: UNMOUNT_FIX,
        });
    }
    process::fchdir(dir).map_err(mount_err("enter the directory of", path))?;
    let result = mount::detach_here(name).map_err(mount_err("unmount", path));
    process::chdir(Path::new("/")).map_err(mount_err("chdir", "/"))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target's mountinfo: cartinject's image at `/dev/crashcart` (7:3) under its cover of
    /// `/dev`, and beside it what only looks like cartinject's.
    const MOUNTS: &str = "\
845 724 0:120 / / rw,relatime - overlay overlay rw,lowerdir=/a
847 845 0:123 / /dev ro,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
900 847 0:130 / /dev rw,nosuid,nodev,noexec - tmpfs cartinject-dev rw,size=1080k
901 900 7:3 / /dev/crashcart ro,nosuid,nodev,relatime - ext4 /dev/loop3 ro
910 845 7:4 /sub /mnt/dev/crashcart ro,relatime - ext4 /dev/loop4 ro
911 845 7:3 / /srv/dev/crashcart rw,relatime - ext4 /dev/loop3 rw
912 845 7:5 / /opt/dev/crashcart ro,relatime - ext4 /dev/loop5 ro
913 845 0:140 / /x/dev rw - tmpfs cartinject-dev rw
";

    fn sysfs() -> tempfile::TempDir {
        let sys = tempfile::tempdir().expect("temp dir");
        for n in [3, 4] {
            let dev = sys.path().join(format!("dev/block/7:{n}/loop"));
            std::fs::create_dir_all(&dev).expect("mkdir");
            std::fs::write(dev.join("backing_file"), "/images/crashcart.img\n").expect("write");
        }
        sys
    }

    #[test]
    fn only_whole_read_only_image_filesystems_and_their_covers_are_ours() {
        let sys = sysfs();
        let ours = OwnMounts::find(crate::mountinfo::parse(MOUNTS), sys.path());
        // 910 is a bind of part of a loop filesystem, 911 is writable, 912's loop device has
        // no backing file; 913 is named like a cover but holds no image.
        assert_eq!(ours.images, HashSet::from([901]));
        assert_eq!(ours.covers, HashSet::from([900]));
        assert_eq!(ours.entry(910).map(|m| m.minor), Some(4));
        assert_eq!(ours.describe(913), "a tmpfs mount of cartinject-dev");
        assert_eq!(ours.describe(999), "a mount (ID 999)");
    }

    #[test]
    fn a_foreign_mount_is_described_escaped() {
        let line = "920 845 0:150 / /dev/crashcart rw - tmpfs \\033]0;x\\007 rw\n";
        let ours = OwnMounts::find(crate::mountinfo::parse(line), Path::new("/nonexistent"));
        let text = ours.describe(920);
        assert_eq!(text, "a tmpfs mount of \\x1b]0;x\\x07");
        assert!(!text.bytes().any(|b| b < 0x20));
    }

    #[test]
    fn removals_survive_the_report_pipe() {
        for r in [
            Removed::Image(42, true),
            Removed::Image(7, false),
            Removed::Cover(900),
            Removed::EmptyDir,
            Removed::Nothing,
        ] {
            assert_eq!(Removed::decode(&r.encode()), Some(r));
        }
        assert_eq!(Removed::decode("image x true"), None);
    }

    #[test]
    fn planted_errors_are_one_line() {
        let e = PlaceError::Planted {
            path: MOUNT_POINT,
            what: format!("a symlink to {}", display::escape("/proc/sys\n\x1b[2J")),
            fix: UNMOUNT_FIX,
        };
        let text = e.to_string();
        assert!(!text.bytes().any(|b| b < 0x20), "{text}");
        let e = PlaceError::File {
            step: "create in the cover of /dev:",
            path: PathBuf::from("\x1b]0;pwned\x07"),
            errno: Errno::ENOSPC,
        };
        assert!(!e.to_string().bytes().any(|b| b < 0x20), "{e}");
    }

    fn shape(entries: usize, uid: u32, gid: u32, mode: u32) -> DevShape {
        DevShape {
            entries: (0..entries)
                .map(|i| DevEntry {
                    name: format!("e{i}").into(),
                    kind: DevKind::Other,
                })
                .collect(),
            uid,
            gid,
            mode,
            read_only: false,
        }
    }

    fn option<'a>(options: &'a [(&str, String)], key: &str) -> Option<&'a str> {
        options
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_cover_looks_like_roots_dev_and_grows_with_it() {
        let options = cover_options(&shape(10, 0, 0, 0o755), &[]);
        assert_eq!(option(&options, "mode"), Some("755"));
        assert_eq!(
            option(&options, "size"),
            Some((1024 * 1024 + 40960).to_string().as_str())
        );
        assert_eq!(option(&options, "nr_inodes"), Some("1034"));
        // Root's: the mounter's ids already.
        assert_eq!(option(&options, "uid"), None);
        assert_eq!(option(&options, "gid"), None);
    }

    #[test]
    fn a_user_namespaced_dev_keeps_its_owner_and_room_for_the_env_file() {
        let env = vec![b'x'; 10_000];
        let options = cover_options(&shape(0, 100_000, 100_000, 0o1777), &[(TARGET_ENV, &env)]);
        assert_eq!(option(&options, "mode"), Some("1777"));
        assert_eq!(option(&options, "uid"), Some("100000"));
        assert_eq!(option(&options, "gid"), Some("100000"));
        assert_eq!(
            option(&options, "size"),
            Some((1024 * 1024 + 10_000 + 4096).to_string().as_str())
        );
    }

    #[test]
    fn the_bind_bound_follows_mount_max_downwards_only() {
        assert_eq!(bound_of(None), MAX_BOUND_ENTRIES);
        assert_eq!(bound_of(Some("100000\n")), MAX_BOUND_ENTRIES);
        assert_eq!(bound_of(Some("1000\n")), 250);
        assert_eq!(bound_of(Some("junk")), MAX_BOUND_ENTRIES);
        assert_eq!(bound_of(Some("99999999999")), MAX_BOUND_ENTRIES);
    }

    #[test]
    fn cartinjects_own_names_are_never_bound() {
        let names = vec![
            "null".into(),
            CRASHCART.into(),
            TARGET_ENV.into(),
            "sda".into(),
        ];
        let (kept, warning) = dev_names_to_bind(names, 100);
        assert_eq!(kept, [OsString::from("null"), OsString::from("sda")]);
        assert_eq!(warning, None);
    }

    #[test]
    fn a_huge_dev_shows_only_the_standard_entries() {
        let mut names: Vec<OsString> = (0..20).map(|i| format!("junk{i}").into()).collect();
        names.push("null".into());
        names.push("pts".into());
        let (kept, warning) = dev_names_to_bind(names, 10);
        assert_eq!(kept, [OsString::from("null"), OsString::from("pts")]);
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("22 entries") && warning.contains("the 10 "),
            "{warning}"
        );
        // Exactly at the bound: everything.
        let names: Vec<OsString> = (0..10).map(|i| format!("d{i}").into()).collect();
        assert_eq!(dev_names_to_bind(names, 10).0.len(), 10);
    }

    #[test]
    fn what_m_does_after_mkdir() {
        assert_eq!(after_mkdir(Ok(())).ok(), Some(Made::Created));
        assert_eq!(after_mkdir(Err(Errno::EEXIST)).ok(), Some(Made::Existing));
        assert_eq!(after_mkdir(Err(Errno::EROFS)).ok(), Some(Made::ReadOnly));
        match after_mkdir(Err(Errno::EACCES)) {
            Err(PlaceError::File { step, path, errno }) => {
                assert_eq!((step, errno), ("create", Errno::EACCES));
                assert_eq!(path, PathBuf::from(MOUNT_POINT));
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn what_u_does_after_rmdir() {
        assert_eq!(after_rmdir(Ok(())).ok(), Some(Removed::EmptyDir));
        for errno in [Errno::ENOTEMPTY, Errno::EBUSY, Errno::EROFS, Errno::ENOENT] {
            assert_eq!(
                after_rmdir(Err(errno)).ok(),
                Some(Removed::Nothing),
                "{errno}"
            );
        }
        assert!(after_rmdir(Err(Errno::EPERM)).is_err());
    }

    #[test]
    fn links_files_and_crossings_are_planted() {
        for errno in [Errno::ELOOP, Errno::ENOTDIR, Errno::EXDEV] {
            assert!(planted(errno), "{errno}");
        }
        for errno in [Errno::ENOENT, Errno::EACCES, Errno::EIO] {
            assert!(!planted(errno), "{errno}");
        }
    }

    #[test]
    fn a_writable_or_partial_image_mount_is_not_ours() {
        let sys = sysfs();
        let entry = |line: &str| crate::mountinfo::parse_line(line).expect("a mountinfo line");
        assert!(is_image_mount(
            &entry("901 900 7:3 / /dev/crashcart ro,nosuid - ext4 /dev/loop3 ro"),
            sys.path()
        ));
        assert!(is_image_mount(
            &entry("901 900 7:3 / /jail/dev/crashcart ro - erofs /dev/loop3 ro"),
            sys.path()
        ));
        // Not a loop device, not an image filesystem, not at dev/crashcart.
        assert!(!is_image_mount(
            &entry("901 900 8:3 / /dev/crashcart ro - ext4 /dev/sda3 ro"),
            sys.path()
        ));
        assert!(!is_image_mount(
            &entry("901 900 7:3 / /dev/crashcart ro - xfs /dev/loop3 ro"),
            sys.path()
        ));
        assert!(!is_image_mount(
            &entry("901 900 7:3 / /dev/crashcart-x ro - ext4 /dev/loop3 ro"),
            sys.path()
        ));
    }
}
