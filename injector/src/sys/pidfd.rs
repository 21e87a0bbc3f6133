//! Process file descriptors: a handle on a process that cannot be confused with a later
//! process of the same PID (`pidfd_open(2)`, Linux 5.3; `pidfd_send_signal(2)`, Linux 5.1).
//!
//! Raw `syscall(2)` wrappers: nix 0.30 has neither call, and these two are one line each.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::Errno;

/// `pidfd_open(pid, 0)`: a close-on-exec fd referring to process `pid`.
pub fn open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(fd, sig, NULL, 0)`. Signal 0 checks that the process still exists.
pub fn send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: the fd is valid for the borrow; a NULL siginfo is documented to mean "as kill(2)".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `kill(pid, sig)` for kernels without pidfds.
pub fn kill(pid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: kill takes plain integers.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}
