//! File descriptors: pipes, non-blocking mode, polling, reading and writing.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::Errno;

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let flags = OFlag::from_bits_retain(nix::fcntl::fcntl(fd, FcntlArg::F_GETFL)?);
    nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}

/// Waits until one of `fds` is readable (or hung up), or `timeout_ms` passes (`None`: no
/// limit). Returns, for each fd, whether it is ready.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: Option<u16>) -> Result<Vec<bool>, Errno> {
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
        .collect();
    let timeout = timeout_ms.map_or(PollTimeout::NONE, PollTimeout::from);
    loop {
        match nix::poll::poll(&mut polls, timeout) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(polls
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

/// Whether the pipe whose write end is `fd` still has a reader: `poll` reports `POLLERR`
/// on a write end once every read end is closed (`pipe_poll` in `fs/pipe.c`). Does not wait.
pub fn has_reader(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut polls = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    loop {
        match nix::poll::poll(&mut polls, PollTimeout::ZERO) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(!polls[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLERR)))
}

/// `read(fd, buf)`, retried on EINTR.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Writes all of `buf` to `fd`, waiting when the fd is non-blocking and full.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                let mut polls = [PollFd::new(fd, PollFlags::POLLOUT)];
                nix::poll::poll(&mut polls, PollTimeout::NONE)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fd 0, which stays open for the life of the process.
pub fn stdin() -> BorrowedFd<'static> {
    // SAFETY: cartinject never closes fd 0 (and `ensure_std_fds_open` opened it at start).
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// fd 1, which stays open for the life of the process.
pub fn stdout() -> BorrowedFd<'static> {
    // SAFETY: as for stdin: cartinject never closes fd 1.
    unsafe { BorrowedFd::borrow_raw(1) }
}

/// fd 2, which stays open for the life of the process.
pub fn stderr() -> BorrowedFd<'static> {
    // SAFETY: as for stdin: cartinject never closes fd 2.
    unsafe { BorrowedFd::borrow_raw(2) }
}

/// Closes every fd above stderr except those in `keep` (`close_range(2)`, Linux 5.9, over
/// the gaps between them; on older kernels one `close` per number up to the fd limit).
///
/// For the processes that become visible inside a container: whatever they still hold, a
/// process there with `CAP_SYS_PTRACE` could take (`/proc/PID/fd`, `pidfd_getfd`). Only
/// fds that no Rust owner will close again may be closed this way: the callers are forked
/// children that end with `_exit` and never drop what their parent's frames own.
pub fn close_all_except(keep: &[RawFd]) -> Result<(), Errno> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: RawFd = 3;
    let mut ranges = Vec::new();
    for &fd in &keep {
        if fd > from {
            ranges.push((from, fd - 1));
        }
        from = fd + 1;
    }
    ranges.push((from, RawFd::MAX));
    for (first, last) in ranges {
        let (Ok(first), Ok(last)) = (libc::c_uint::try_from(first), libc::c_uint::try_from(last))
        else {
            continue;
        };
        // SAFETY: close_range takes plain integers; the caller guarantees that nothing will
        // use or close these fds again (see above).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if rc == 0 {
            continue;
        }
        if Errno::last() != Errno::ENOSYS {
            return Err(Errno::last());
        }
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft.min(1 << 20));
        let last = u64::from(last).min(limit);
        for fd in u64::from(first)..=last {
            if let Ok(fd) = RawFd::try_from(fd) {
                // SAFETY: as for close_range above; EBADF for numbers not open is fine.
                unsafe { libc::close(fd) };
            }
        }
    }
    Ok(())
}

/// `f_type` of `statfs(2)`, whose C type differs between C libraries (glibc's signed
/// `__fsword_t`, musl's `unsigned long`): as the unsigned magic number `magic.h` gives.
#[cfg_attr(target_env = "musl", allow(clippy::useless_conversion))]
fn fs_magic(fs: &nix::sys::statfs::Statfs) -> Option<u64> {
    u64::try_from(fs.filesystem_type().0).ok()
}

/// `PIPEFS_MAGIC` from `include/uapi/linux/magic.h`: the filesystem of anonymous pipes.
const PIPEFS_MAGIC: u64 = 0x5049_5045;

/// Whether `fd` is an anonymous pipe (not a named FIFO, which is a file of some filesystem).
pub fn is_anonymous_pipe(fd: BorrowedFd<'_>) -> bool {
    nix::sys::statfs::fstatfs(fd).is_ok_and(|fs| fs_magic(&fs) == Some(PIPEFS_MAGIC))
}

/// `FUSE_SUPER_MAGIC` from `include/uapi/linux/magic.h`.
const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

/// Whether the file behind `fd` lies on a FUSE filesystem (`fstatfs(2)`), whose daemon,
/// not the kernel, answers every read and every `stat`.
pub fn is_fuse(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    nix::sys::statfs::fstatfs(fd).map(|fs| fs_magic(&fs) == Some(FUSE_SUPER_MAGIC))
}

/// Whether `fd` is `/dev/null` (the character device 1:3, `devices.txt`).
pub fn is_dev_null(fd: BorrowedFd<'_>) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| {
        st.st_mode & libc::S_IFMT == libc::S_IFCHR
            && nix::sys::stat::major(st.st_rdev) == 1
            && nix::sys::stat::minor(st.st_rdev) == 3
    })
}

/// Opens `/dev/null` on each of fds 0, 1 and 2 that is closed, so that no pipe or file
/// cartinject opens later takes one of their numbers (and is then mistaken for stdio).
pub fn ensure_std_fds_open() -> Result<(), Errno> {
    for fd in 0..=2 {
        // SAFETY: a plain number; F_GETFD on a closed fd fails with EBADF and changes nothing.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        if !open {
            // The lowest free number is `fd`, since the lower ones are open.
            let null = nix::fcntl::open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty())?;
            // Owned by the process from now on, as stdin/stdout/stderr are.
            std::mem::forget(null);
        }
    }
    Ok(())
}

/// Writes `text` to `name` under the directory `dir` (opened with `O_NOFOLLOW`: a symlink
/// there is refused), for procfs attributes.
pub fn write_at(dir: BorrowedFd<'_>, name: &str, text: &[u8]) -> Result<(), Errno> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    write_all(fd.as_fd(), text)
}

/// Opens `path` read-only, close-on-exec and with `O_NONBLOCK`, so that the open itself
/// cannot wait: not on a FIFO (which blocks until a writer comes, `fifo(7)`), nor on a file
/// under a lease (`fcntl(2)`, "Leases": a non-blocking open fails with EWOULDBLOCK
/// instead). On a regular file `O_NONBLOCK` changes nothing else.
pub fn open_nonblocking(path: &std::path::Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
}

/// Whether no process has the file behind `fd` (open read-only) open for writing, as the
/// kernel answers it: a read lease (`F_SETLEASE`, `F_RDLCK`) is refused with EAGAIN while
/// any open file description of the inode has write access (`fcntl(2)`, "Leases";
/// `check_conflicting_open` in `fs/locks.c`), including shared writable mappings and loop
/// devices bound read-write. The lease is released at once. Root may take a lease on any
/// file (CAP_LEASE). Other errors (a filesystem without leases, `fs.leases-enable=0`) are
/// returned as they are: the caller decides.
pub fn no_writers(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    // SAFETY: F_SETLEASE takes an int argument and acts only on `fd`. No owner is set
    // (F_SETOWN), so a lease break in the moment the lease is held sends no signal.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    if rc < 0 {
        let e = Errno::last();
        return if e == Errno::EAGAIN {
            Ok(false)
        } else {
            Err(e)
        };
    }
    // SAFETY: as above; F_UNLCK removes the lease just taken.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    Ok(true)
}

/// The extended attribute `name` of the file behind `fd` (`fgetxattr(2)`), at most 64 KiB
/// (the kernel's own limit for a value, `XATTR_SIZE_MAX`); `None` when the file has none
/// or the filesystem keeps no extended attributes.
pub fn xattr(fd: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = match rustix::fs::fgetxattr(fd, name, &mut buf) {
        Ok(n) => n,
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => return Ok(None),
        Err(e) => return Err(super::errno(e)),
    };
    buf.truncate(n);
    Ok(Some(buf))
}
