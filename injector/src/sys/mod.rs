//! The thin layer between cartinject and the kernel.
//!
//! Every `unsafe` block and every direct call into `libc`, `nix` or `rustix` that reaches a
//! syscall lives under this module, one file per kernel concept, each `unsafe` with its
//! `// SAFETY:` reason. The layers above call these functions and turn the returned [`Errno`]
//! into their own errors, which name the path, fd or PID involved.

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
