//! Opening paths inside a filesystem tree the container controls without following its
//! symlinks (`openat2(2)` with `RESOLVE_NO_SYMLINKS`, Linux 5.6), and telling two opened
//! directories apart by their device and inode.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::Errno;

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// Opens the directory `path` (absolute, resolved from the process root) as an `O_PATH`
/// fd, refusing any symlink on the way, magic links included (ELOOP), and anything that is
/// not a directory (ENOTDIR).
pub fn open_dir_nofollow(path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(errno)
}

/// The (device, inode) of an open file.
pub fn identity(fd: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    let st = rustix::fs::fstat(fd.as_fd()).map_err(errno)?;
    Ok((st.st_dev, st.st_ino))
}
