//! Process file descriptors: a handle on a process that cannot be confused with a later
//! process of the same PID (`pidfd_open(2)`, Linux 5.3; `pidfd_send_signal(2)`, Linux 5.1).
//!
//! `pidfd_open` is rustix's; `pidfd_send_signal` is a raw `syscall(2)`: rustix's `Signal`
//! cannot name the realtime signals a session forwards too, and nix 0.30 has neither call.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::Errno;

/// `pidfd_open(pid, 0)`: a close-on-exec fd referring to process `pid`.
pub fn open(pid: i32) -> Result<OwnedFd, Errno> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or(Errno::ESRCH)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(super::errno)
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
