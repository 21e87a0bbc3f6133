//! What tells one state of a file from another, for the verification records
//! (`crate::verify::record`): `statx(2)` of an open file, its filesystem's type, the clock
//! the kernel stamps changes with, and an open file's owner and mode.

use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, StatxFlags};

use super::{Errno, errno};

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8, `include/uapi/linux/stat.h`): a 64-bit mount ID that is
/// never reused while the system runs (the old `STATX_MNT_ID` is, like a PID).
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// An instant as the kernel stamps inodes with it: seconds and nanoseconds.
pub type Instant = (i64, u32);

/// Which inode an open file is, on which mount, and its last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// The unique ID of the mount the fd was opened through; `None` before Linux 6.8.
    pub mnt_id: Option<u64>,
    /// `st_size`.
    pub size: u64,
    /// Last change of the content (any owner of the file may set it).
    pub mtime: Instant,
    /// Last change of the content or the inode: the kernel sets it to its clock on every change
    /// and no call sets it to anything else (`inode(7)`, "Last status change timestamp").
    pub ctime: Instant,
}

/// The [`Stamp`] of the file open as `fd` (`statx(fd, "", AT_EMPTY_PATH, ...)`).
pub fn stamp(fd: BorrowedFd<'_>) -> Result<Stamp, Errno> {
    let want = StatxFlags::BASIC_STATS | StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let stx = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, want).map_err(errno)?;
    let needed =
        (StatxFlags::INO | StatxFlags::SIZE | StatxFlags::MTIME | StatxFlags::CTIME).bits();
    if stx.stx_mask & needed != needed {
        return Err(Errno::ENODATA);
    }
    Ok(Stamp {
        dev: nix::sys::stat::makedev(u64::from(stx.stx_dev_major), u64::from(stx.stx_dev_minor)),
        ino: stx.stx_ino,
        mnt_id: (stx.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(stx.stx_mnt_id),
        size: stx.stx_size,
        mtime: (stx.stx_mtime.tv_sec, stx.stx_mtime.tv_nsec),
        ctime: (stx.stx_ctime.tv_sec, stx.stx_ctime.tv_nsec),
    })
}

/// The magic number of the filesystem `fd` lies on (`fstatfs(2)`'s `f_type`).
pub fn fs_magic(fd: BorrowedFd<'_>) -> Result<i64, Errno> {
    let st = rustix::fs::fstatfs(fd).map_err(errno)?;
    // `f_type` is an i64 on 64-bit targets and narrower on others.
    #[allow(clippy::useless_conversion)]
    Ok(i64::from(st.f_type))
}

/// `CLOCK_REALTIME_COARSE`: the clock an inode's timestamps are taken from
/// (`current_time()` in `fs/inode.c`; with multigrain timestamps, Linux 6.13, never earlier
/// than it). Whatever changes a file after this instant stamps it with this instant or a later
/// one, as long as nobody sets the system clock back.
pub fn coarse_realtime() -> Result<Instant, Errno> {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    Ok((
        ts.tv_sec,
        u32::try_from(ts.tv_nsec).map_err(|_| Errno::EINVAL)?,
    ))
}

/// The uid, mode and size of the open file `fd` (`fstat(2)`), and whether it is a regular file.
pub fn owner(fd: BorrowedFd<'_>) -> Result<(u32, u32, u64, bool), Errno> {
    let st = rustix::fs::fstat(fd).map_err(errno)?;
    let regular =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    Ok((
        st.st_uid,
        st.st_mode & 0o7777,
        u64::try_from(st.st_size).unwrap_or(0),
        regular,
    ))
}

/// Sets the mtime of the open file `fd` to `mtime` and its atime to now (`futimens(2)`; the
/// owner or a holder of `CAP_FOWNER` may set any time).
pub fn set_mtime(fd: BorrowedFd<'_>, mtime: Instant) -> Result<(), Errno> {
    let now = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    let mtime = rustix::fs::Timespec {
        tv_sec: mtime.0,
        tv_nsec: mtime.1.into(),
    };
    rustix::fs::futimens(
        fd,
        &rustix::fs::Timestamps {
            last_access: now,
            last_modification: mtime,
        },
    )
    .map_err(errno)
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file description holds a
/// lock on the file.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    match rustix::fs::flock(fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(errno(e)),
    }
}

/// A stamp of no real file, for unit tests of what is keyed by stamps.
#[cfg(test)]
pub fn example_stamp() -> Stamp {
    Stamp {
        dev: 2049,
        ino: 12,
        mnt_id: Some(0x8000_0001),
        size: 4096,
        mtime: (1_700_000_000, 5),
        ctime: (1_700_000_001, 7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A file changed after the coarse clock was read carries a ctime no earlier than it.
    #[test]
    fn a_change_after_the_clock_is_read_is_stamped_no_earlier() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let before = stamp(f.as_fd()).unwrap();
        let t0 = coarse_realtime().unwrap();
        std::fs::write(&path, b"y").unwrap();
        let after = stamp(f.as_fd()).unwrap();
        assert!(after.ctime >= t0, "{after:?} {t0:?}");
        assert_eq!((before.dev, before.ino), (after.dev, after.ino));
    }
}
