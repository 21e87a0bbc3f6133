//! Files in a tree the container controls, reached without following anything it planted.
//!
//! Every path inside a container is hostile: any component can be a symlink (absolute ones
//! resolve against whatever root the resolving process has), a magic link of `/proc`, or a
//! mount. These calls resolve one directory fd at a time with `openat2(2)`
//! (`RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH`, Linux 5.6; on older
//! kernels `openat` with `O_NOFOLLOW`, one component at a time), act on the fds they return
//! (`*at` calls, which never follow a final symlink here), and tell mounts apart by mount ID
//! (`statx(2)` `STATX_MNT_ID`, Linux 5.8), the same number `/proc/PID/mountinfo` prints first.
//! This is the answer to the CVE-2018-15664 / CVE-2021-30465 class (a path swapped for a
//! symlink between check and use).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};

use super::{Errno, errno};

/// `openat2(dir, path, O_PATH|O_CLOEXEC|O_NOFOLLOW|extra, RESOLVE_NO_SYMLINKS|
/// RESOLVE_NO_MAGICLINKS|RESOLVE_BENEATH)`: `path` (relative, no `..`) below `dir`, never
/// through a symlink, also not as its last component (ELOOP), never above `dir` (EXDEV).
/// Without `openat2` (ENOSYS), one `openat(O_NOFOLLOW)` per component (ELOOP or ENOTDIR
/// for a symlink).
fn open_beneath(dir: BorrowedFd<'_>, path: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH;
    match rustix::fs::openat2(dir, path, flags, Mode::empty(), resolve) {
        Err(rustix::io::Errno::NOSYS) => open_by_components(dir, path, flags),
        other => other.map_err(errno),
    }
}

/// [`open_beneath`] without `openat2`: one `openat(O_NOFOLLOW)` per component, `..` and
/// absolute paths refused (EXDEV).
fn open_by_components(dir: BorrowedFd<'_>, path: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    let names: Vec<&std::ffi::OsStr> = path
        .components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(Errno::EXDEV),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, parents)) = names.split_last() else {
        return Err(Errno::EINVAL);
    };
    let mut held: Option<OwnedFd> = None;
    for name in parents {
        let from = held.as_ref().map_or(dir, AsFd::as_fd);
        let next = rustix::fs::openat(
            from,
            *name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        held = Some(next);
    }
    let from = held.as_ref().map_or(dir, AsFd::as_fd);
    rustix::fs::openat(from, *last, flags, Mode::empty()).map_err(errno)
}

/// The directory `path` below `dir` as an `O_PATH` fd (see [`open_beneath`]).
pub fn open_dir(dir: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    open_beneath(dir, path, OFlags::PATH | OFlags::DIRECTORY)
}

/// Whatever `name` in `dir` is, a symlink included, as an `O_PATH|O_NOFOLLOW` fd: for
/// `mount(2)` to name through `/proc/self/fd/N`, which then means exactly that file.
pub fn open_entry(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// The device number of the filesystem `fd` lies on (`fstat`'s `st_dev`).
pub fn device(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    identity(fd).map(|(dev, _)| dev)
}

/// The (device, inode) of an open file: which file it is, whatever path led to it.
pub fn identity(fd: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    rustix::fs::fstat(fd)
        .map(|st| (st.st_dev, st.st_ino))
        .map_err(errno)
}

/// `/` of the calling process as an `O_PATH` directory fd.
pub fn open_root() -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// The ID of the mount `fd` lies on (`statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID)`): for the
/// fd of a mount point's directory, opened by walking to it, the mount on top there.
/// ENOSYS when the kernel does not report mount IDs (before Linux 5.8).
pub fn mount_id(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    statx_mount_id(fd, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
}

/// The ID of the mount `name` in `dir` is on, without following it if it is a symlink and
/// without triggering an automount (see [`mount_id`]).
pub fn mount_id_at(dir: BorrowedFd<'_>, name: &str) -> Result<u64, Errno> {
    statx_mount_id(dir, name, AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT)
}

/// `statx(dir, name, flags, STATX_MNT_ID)`'s mount ID; ENOSYS when the kernel leaves it out.
fn statx_mount_id(dir: BorrowedFd<'_>, name: &str, flags: AtFlags) -> Result<u64, Errno> {
    let stx = rustix::fs::statx(dir, name, flags, StatxFlags::MNT_ID).map_err(errno)?;
    if stx.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(Errno::ENOSYS);
    }
    Ok(stx.stx_mnt_id)
}

/// The ID of the mount `fd` lies on, from `fdinfo/N` (its `mnt_id:` line, Linux 3.15) of
/// the procfs `proc` (the host's, opened before joining and checked): for kernels whose
/// `statx` does not report mount IDs.
pub fn mount_id_from_fdinfo(proc: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    use std::os::fd::AsRawFd;
    // "self" is procfs's own link to the reader: `proc` is a procfs, so it is followed.
    let path = format!("self/fdinfo/{}", fd.as_raw_fd());
    let info = rustix::fs::openat(proc, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno)?;
    let mut buf = [0u8; 512];
    let n = rustix::io::read(&info, &mut buf).map_err(errno)?;
    parse_fdinfo_mnt_id(&String::from_utf8_lossy(&buf[..n])).ok_or(Errno::ENOSYS)
}

/// The `mnt_id:` of an `fdinfo` text.
fn parse_fdinfo_mnt_id(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What an entry is, as `fstatat(AT_SYMLINK_NOFOLLOW)` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device node, file, socket, FIFO).
    Other,
}

/// The owner, mode and kind of `name` in `dir` (itself when `name` is empty), not following
/// a symlink.
pub fn stat_at(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> Result<(Kind, u32, u32, u32), Errno> {
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let st = rustix::fs::statat(dir, name, flags).map_err(errno)?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    Ok((kind, st.st_uid, st.st_gid, st.st_mode & 0o7777))
}

/// The target of symlink `name` in `dir`.
pub fn read_link_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Result<OsString, Errno> {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|target| OsString::from_vec(target.into_bytes()))
        .map_err(errno)
}

/// The names in directory `dir` (any fd of it, `O_PATH` too), without `.` and `..`.
pub fn list(dir: BorrowedFd<'_>) -> Result<Vec<OsString>, Errno> {
    let mut names = Vec::new();
    // `.` of the directory fd is that directory itself: nothing is resolved.
    let readable = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let mut entries = rustix::fs::Dir::new(readable).map_err(errno)?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsString::from_vec(name.to_vec()));
    }
    Ok(names)
}

/// The text of the file `path` below `dir` (opened as [`open_beneath`] does, and without
/// blocking), at most `limit` bytes of it; bytes that are not UTF-8 are replaced.
pub fn read_text_at(dir: BorrowedFd<'_>, path: &Path, limit: usize) -> Result<String, Errno> {
    let file = open_file(dir, path)?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while text.len() < limit {
        let n = rustix::io::read(&file, &mut buf).map_err(errno)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n.min(limit - text.len())]);
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The file `path` below `dir` (as [`open_dir`] resolves it), read-only and without waiting
/// (`O_NONBLOCK`: a FIFO there cannot hang the reader).
pub fn open_file(dir: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    open_beneath(dir, path, OFlags::RDONLY | OFlags::NONBLOCK)
}

/// `renameat(dir, from, dir, to)`: replaces `to` at once (`rename(2)`: anyone opening `to`
/// sees the old file or the new one, never a part of one).
pub fn rename_at(
    dir: BorrowedFd<'_>,
    from: &std::ffi::OsStr,
    to: &std::ffi::OsStr,
) -> Result<(), Errno> {
    rustix::fs::renameat(dir, from, dir, to).map_err(errno)
}

/// `unlinkat(dir, name, 0)`: removes the file (a symlink itself, never what it names).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Result<(), Errno> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(errno)
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, mode: u32) -> Result<(), Errno> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)).map_err(errno)
}

/// `symlinkat(target, dir, name)`.
pub fn symlink_at(
    target: &std::ffi::OsStr,
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> Result<(), Errno> {
    rustix::fs::symlinkat(target, dir, name).map_err(errno)
}

/// Creates the empty file `name` in `dir` (`O_CREAT|O_EXCL|O_NOFOLLOW`) with `mode`.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, mode: u32) -> Result<(), Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map(drop)
    .map_err(errno)
}

/// Creates the file `name` in `dir` (never through a symlink, never over an existing file)
/// with `mode`, and writes `bytes` to it.
pub fn write_file_at(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    mode: u32,
    bytes: &[u8],
) -> Result<(), Errno> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(errno)?;
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rustix::io::write(&fd, rest).map_err(errno)?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        rest = &rest[n..];
    }
    Ok(())
}

/// `unlinkat(dir, name, AT_REMOVEDIR)`: removes the empty directory `name` (a symlink there
/// is never followed: ENOTDIR).
pub fn rmdir_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Result<(), Errno> {
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(errno)
}

/// Whether the mount `fd` lies on is read-only (`fstatvfs(3)`'s `ST_RDONLY`).
pub fn is_read_only(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let st = rustix::fs::fstatvfs(fd).map_err(errno)?;
    Ok(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// The first bytes (at most 64) of the procfs file `path` below `dir`, opened without
/// following any link and without blocking (`O_NONBLOCK`: a FIFO planted there cannot hang
/// the reader), and read only when it lies on a procfs.
pub fn read_procfs_value(dir: BorrowedFd<'_>, path: &Path) -> Result<String, Errno> {
    let file = open_beneath(dir, path, OFlags::RDONLY | OFlags::NONBLOCK)?;
    if !is_procfs(file.as_fd()) {
        return Err(Errno::EXDEV);
    }
    let mut buf = [0u8; 64];
    let n = rustix::io::read(&file, &mut buf).map_err(errno)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `proc` below `root` (the host's `/`), as an `O_PATH` directory fd, checked to be a
/// procfs (see [`is_procfs`]; EXDEV when it is not): open it before joining any namespace.
pub fn open_procfs(root: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let proc = open_dir(root, Path::new("proc"))?;
    if is_procfs(proc.as_fd()) {
        Ok(proc)
    } else {
        Err(Errno::EXDEV)
    }
}

/// `PROC_SUPER_MAGIC` (`include/uapi/linux/magic.h`).
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Whether `fd` lies on a procfs (`fstatfs(2)`), as a host `/proc` opened before joining
/// must: a container can plant anything at its own `/proc` (runc CVE-2019-16884).
pub fn is_procfs(fd: BorrowedFd<'_>) -> bool {
    // `f_type` is an i64 on 64-bit targets and narrower on others.
    #[allow(clippy::useless_conversion)]
    rustix::fs::fstatfs(fd).is_ok_and(|st| i64::from(st.f_type) == PROC_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_mount_ids() {
        let text = "pos:\t0\nflags:\t012100000\nmnt_id:\t1043\nino:\t2\n";
        assert_eq!(parse_fdinfo_mnt_id(text), Some(1043));
        assert_eq!(parse_fdinfo_mnt_id("pos:\t0\n"), None);
    }

    #[test]
    fn components_are_opened_without_following_links() {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(tmp.path().join("a/b")).expect("mkdir");
        std::os::unix::fs::symlink("a", tmp.path().join("link")).expect("symlink");
        let base = rustix::fs::open(tmp.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .expect("open the temp dir");
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        for open in [open_by_components, open_beneath] {
            assert!(open(base.as_fd(), Path::new("a/b"), dir_flags).is_ok());
            for bad in ["link", "link/b", "../x", "/etc"] {
                let err = open(base.as_fd(), Path::new(bad), dir_flags).expect_err(bad);
                assert!(
                    matches!(err, Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV),
                    "{bad}: {err}"
                );
            }
        }
    }

    /// The fallback for kernels before 5.8 gives what statx gives (this process's own fds
    /// and procfs).
    #[test]
    fn fdinfo_and_statx_agree() {
        let root = open_root().expect("open /");
        let proc = open_dir(root.as_fd(), Path::new("proc")).expect("open /proc");
        assert!(is_procfs(proc.as_fd()));
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = rustix::fs::open(tmp.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .expect("open the temp dir");
        for fd in [root.as_fd(), proc.as_fd(), dir.as_fd()] {
            assert_eq!(
                mount_id_from_fdinfo(proc.as_fd(), fd).expect("fdinfo"),
                mount_id(fd).expect("statx")
            );
        }
    }
}
