//! The thin layer between cartinject and the kernel.
//!
//! Every `unsafe` block and every direct call into `libc`, `nix` or `rustix` that reaches a
//! syscall lives under this module, one file per kernel concept, each `unsafe` with its
//! `// SAFETY:` reason. The layers above call these functions and turn the returned [`Errno`]
//! into their own errors, which name the path, fd or PID involved.
//!
//! nix and rustix come first; a call is written by hand (`libc`) only where neither covers
//! it, and the file says why: the loop device ioctls (`LOOP_CONFIGURE`, `BLKGETDISKSEQ`),
//! `mount_setattr` for idmapped mounts, `PTRACE_SECCOMP_GET_FILTER`, capability sets and
//! the bounding and ambient `prctl`s, `F_SETLEASE`, `close_range`, and the signal calls
//! (signal sets, masks, `signalfd`, `pidfd_send_signal`, `kill`), because nix's and rustix's
//! signal types cannot name the realtime signals a session forwards.

pub mod caps;
pub mod fd;
pub mod inode;
pub mod loopdev;
pub mod memfd;
pub mod mount;
pub mod mount_api;
pub mod ns;
pub mod pidfd;
pub mod process;
pub mod pty;
pub mod resolve;
pub mod seccomp;
pub mod signal;

pub use nix::errno::Errno;

/// A rustix error as the [`Errno`] every function of this layer returns.
fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}
