//! File descriptors: pipes, non-blocking mode, polling, reading and writing.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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
