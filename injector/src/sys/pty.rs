//! Terminals: new pseudo-terminals, raw mode, window size, controlling terminal
//! (`pty(7)`, `termios(3)`, `ioctl_tty(2)`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::termios::{self, SetArg, Termios};

use super::Errno;

/// A terminal's size (`struct winsize`).
pub type WinSize = libc::winsize;

nix::ioctl_read_bad!(
    /// `TIOCGWINSZ`: a terminal's size.
    tiocgwinsz,
    libc::TIOCGWINSZ,
    libc::winsize
);
nix::ioctl_write_ptr_bad!(
    /// `TIOCSWINSZ`: sets a terminal's size.
    tiocswinsz,
    libc::TIOCSWINSZ,
    libc::winsize
);
nix::ioctl_write_int_bad!(
    /// `TIOCSCTTY`: makes a terminal the session's controlling terminal.
    tiocsctty,
    libc::TIOCSCTTY
);

/// A new pty pair from the caller's `/dev/ptmx`: (master, slave), both close-on-exec.
pub fn open_pair(size: Option<&WinSize>) -> Result<(OwnedFd, OwnedFd), Errno> {
    let pair = nix::pty::openpty(size, None)?;
    for fd in [&pair.master, &pair.slave] {
        nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    Ok((pair.master, pair.slave))
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// The window size of terminal `fd`.
pub fn window_size(fd: BorrowedFd<'_>) -> Result<WinSize, Errno> {
    let mut size = WinSize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into `size`, which outlives the call.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// Sets the window size of terminal `fd` (on a pty master, the kernel then sends SIGWINCH to
/// the slave's foreground process group).
pub fn set_window_size(fd: BorrowedFd<'_>, size: &WinSize) -> Result<(), Errno> {
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from `size`, which outlives the call.
    unsafe { tiocswinsz(fd.as_raw_fd(), size) }.map(|_| ())
}

/// Makes terminal `fd` the controlling terminal of the calling session leader.
pub fn make_controlling(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal) and no memory.
    unsafe { tiocsctty(fd.as_raw_fd(), 0) }.map(|_| ())
}

/// Makes the terminal on fd 0 the controlling terminal of the calling session leader.
pub fn make_stdin_controlling() -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal) and no memory; fd 0 is a
    // plain number here, and an fd that is not a terminal gives ENOTTY.
    unsafe { tiocsctty(0, 0) }.map(|_| ())
}

/// A terminal in raw mode; dropping it restores the settings it had before.
pub struct RawMode<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Termios,
}

impl<'fd> RawMode<'fd> {
    /// Puts terminal `fd` into raw mode (`cfmakeraw`): every byte, Ctrl-C included, goes
    /// through to the program on the other side of the pty.
    pub fn enter(fd: BorrowedFd<'fd>) -> Result<RawMode<'fd>, Errno> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        // Nothing else can be done if the terminal went away.
        let _ = termios::tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}
