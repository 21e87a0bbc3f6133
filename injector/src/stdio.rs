//! What a session's command gets as stdin, stdout and stderr when cartinject has no
//! terminal: only anonymous pipes, never one of the host's files, terminals or sockets.
//!
//! Whatever fd the command holds, a process in the container with enough privilege over it
//! (the same capabilities, or `CAP_SYS_PTRACE`) can reopen through `/proc/PID/fd/N` or take
//! with `pidfd_getfd`. An anonymous pipe reopened that way is the same pipe: data, nothing
//! more. A host file reopened that way can be written (`cartinject IMG T -- sh < script`
//! would hand the container the host's `script`), a host terminal takes `TIOCSTI`, a named
//! FIFO or a device node is an inode of the host with its owner and mode. So every standard
//! fd that is not an anonymous pipe is replaced by one: cartinject copies a pipe's data to
//! the real stdout or stderr (see `session`), and a *feeder* process copies the real stdin
//! into a pipe. `/dev/null` as stdin needs no feeder: a pipe with no writer reads as end of
//! file, as `/dev/null` does.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::child;
use crate::sys::process::{self, Forked};
use crate::sys::{Errno, fd};

/// Whether `host` may be given to the command as it is.
pub fn passes_through(host: BorrowedFd<'_>) -> bool {
    fd::is_anonymous_pipe(host)
}

/// A process that copies cartinject's stdin into the command's stdin pipe; killed and
/// reaped on drop (when the session ends, whether or not it read everything).
pub struct Feeder {
    pid: i32,
}

impl Drop for Feeder {
    fn drop(&mut self) {
        let _ = crate::sys::pidfd::kill(self.pid, libc::SIGKILL);
        let _ = process::wait(self.pid);
    }
}

/// What replaces stdin, when it must be replaced: the read end for the command, and the
/// feeder that fills it (none for `/dev/null`).
pub fn replace_stdin(stdin: BorrowedFd<'_>) -> Result<Option<(OwnedFd, Option<Feeder>)>, Errno> {
    if passes_through(stdin) {
        return Ok(None);
    }
    let (read_end, write_end) = fd::pipe()?;
    if fd::is_dev_null(stdin) {
        return Ok(Some((read_end, None)));
    }
    let parent = process::pid();
    match process::fork()? {
        Forked::Child => {
            if child::tie_to_parent(&[parent]).is_err()
                || fd::close_all_except(&[write_end.as_raw_fd()]).is_err()
            {
                process::exit_now(1);
            }
            feed(stdin, write_end.as_fd());
            process::exit_now(0)
        }
        Forked::Parent(pid) => Ok(Some((read_end, Some(Feeder { pid })))),
    }
}

/// Copies `from` to `to` until end of file or until the reader goes away.
fn feed(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match fd::read(from, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if fd::write_all(to, &buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
