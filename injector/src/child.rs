//! A forked child that does namespace work and reports back over a pipe.
//!
//! `setns` into a mount namespace is refused to a multi-threaded process, and a process that
//! has joined a container should not go on to do the host-side work; so every step inside a
//! target runs in a child forked from the (single-threaded) cartinject process. The child
//! tells the parent what happened as lines on a close-on-exec pipe: notes for `-v`, the PID
//! of a grandchild, or one failure message with the exit code it stands for. When the child
//! execs or exits, the pipe closes and the parent sees the end.
//!
//! A child dies with cartinject (`PR_SET_PDEATHSIG`), checked against the race in which
//! cartinject is killed before the child has asked for that (`getppid` afterwards, as runc's
//! nsexec does), and stays non-dumpable; [`tie_to_parent`] asserts both again after each
//! change of credentials, which clears them. A grandchild inside the target's PID namespace
//! cannot use `getppid` for that (it says 0 for its parent and for the host's init alike):
//! it checks that its parent still holds the read end of their pipe
//! ([`Reporter::tie_to_reader`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::process::{self, Ended, Forked};
use crate::sys::{Errno, fd};

/// Exit code for cartinject's own failures (as `docker run` and `podman run` use it).
pub const EXIT_FAILURE: i32 = 125;

/// One message from a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Something `-v` shows.
    Note(String),
    /// The PID (in our PID namespace) of the process that runs the user's command.
    CommandPid(i32),
    /// The step that failed, as one line for the user, and the exit code it means.
    Failed {
        /// 125 for setup failures, 126/127 for a command that cannot run.
        code: i32,
        /// The message.
        message: String,
    },
}

impl Report {
    fn encode(&self) -> String {
        let flat = |s: &str| s.replace('\n', " ");
        match self {
            Report::Note(text) => format!("N {}\n", flat(text)),
            Report::CommandPid(pid) => format!("P {pid}\n"),
            Report::Failed { code, message } => format!("F {code} {}\n", flat(message)),
        }
    }

    fn decode(line: &str) -> Option<Report> {
        let (kind, rest) = line.split_once(' ')?;
        match kind {
            "N" => Some(Report::Note(rest.to_string())),
            "P" => rest.parse().ok().map(Report::CommandPid),
            "F" => {
                let (code, message) = rest.split_once(' ')?;
                Some(Report::Failed {
                    code: code.parse().ok()?,
                    message: message.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// The child's end of the report pipe.
pub struct Reporter {
    fd: OwnedFd,
}

impl Reporter {
    /// A new report pipe for a grandchild: (the read end, non-blocking, and its reporter).
    /// A process that becomes visible inside the container reports through one of these to
    /// its parent, never on cartinject's own pipe: whatever can reach that process's fds can
    /// write to the pipe, and only its parent (also inside) reads it.
    pub fn pipe() -> Result<(OwnedFd, Reporter), Errno> {
        let (read_end, write_end) = fd::pipe()?;
        fd::set_nonblocking(read_end.as_fd())?;
        Ok((read_end, Reporter { fd: write_end }))
    }

    /// The fd number, to keep it open when closing all others.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// [`tie_to_parent`] for a grandchild whose parent is in an ancestor PID namespace,
    /// where `getppid` says 0 both for that parent and for the host's init it would be
    /// handed to if it died (orphans go to the reaper of the dying parent's namespace). The
    /// parent's life is then the read end of this pipe, which only the parent holds (the
    /// caller has closed its own copy): the parent-death signal is set first, so a parent
    /// that dies afterwards kills us, and one that died before has closed its read end.
    pub fn tie_to_reader(&self) -> Result<(), Errno> {
        process::set_non_dumpable()?;
        process::die_with_parent()?;
        if fd::has_reader(self.fd.as_fd())? {
            Ok(())
        } else {
            Err(Errno::ESRCH)
        }
    }

    /// Sends one report. A parent that has gone away is not an error worth dying for.
    pub fn send(&self, report: &Report) {
        let _ = fd::write_all(self.fd.as_fd(), report.encode().as_bytes());
    }

    /// Sends a note.
    pub fn note(&self, text: impl Into<String>) {
        self.send(&Report::Note(text.into()));
    }

    /// Sends a failure.
    pub fn fail(&self, code: i32, message: impl Into<String>) {
        self.send(&Report::Failed {
            code,
            message: message.into(),
        });
    }
}

/// The parent's handle on a forked child.
pub struct Child {
    pid: i32,
    reports: Option<OwnedFd>,
    pending: Vec<u8>,
}

impl Child {
    /// Forks; the child runs `work` and exits with the code it returns (125 if it panics).
    pub fn spawn(work: impl FnOnce(&Reporter) -> i32) -> Result<Child, Errno> {
        let (read_end, write_end) = fd::pipe()?;
        let parent = process::pid();
        match process::fork()? {
            Forked::Child => {
                drop(read_end);
                if tie_to_parent(&[parent]).is_err() {
                    process::exit_now(EXIT_FAILURE);
                }
                let reporter = Reporter { fd: write_end };
                let code =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&reporter)))
                        .unwrap_or_else(|_| {
                            reporter.fail(EXIT_FAILURE, "internal error in the namespace child");
                            EXIT_FAILURE
                        });
                process::exit_now(code)
            }
            Forked::Parent(pid) => {
                drop(write_end);
                fd::set_nonblocking(read_end.as_fd())?;
                Ok(Child {
                    pid,
                    reports: Some(read_end),
                    pending: Vec::new(),
                })
            }
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The report pipe while it is open, for polling.
    pub fn reports_fd(&self) -> Option<BorrowedFd<'_>> {
        self.reports.as_ref().map(AsFd::as_fd)
    }

    /// Reads what is available on the report pipe; closes it at end of file.
    pub fn read_reports(&mut self) -> Vec<Report> {
        let mut out = Vec::new();
        let Some(pipe) = &self.reports else {
            return out;
        };
        let mut buf = [0u8; 4096];
        let mut closed = false;
        loop {
            match fd::read(pipe.as_fd(), &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            if let Some(report) = Report::decode(String::from_utf8_lossy(&line[..nl]).as_ref()) {
                out.push(report);
            }
        }
        if closed {
            self.reports = None;
        }
        out
    }

    /// Waits for the pipe to close and the child to exit; returns every report and how it
    /// ended. For short children (mount, unmount).
    pub fn finish(mut self) -> Result<(Vec<Report>, Ended), Errno> {
        let mut all = Vec::new();
        while let Some(pipe) = self.reports_fd() {
            fd::poll_readable(&[pipe], None)?;
            all.extend(self.read_reports());
        }
        let ended = process::wait(self.pid)?;
        Ok((all, ended))
    }
}

/// Makes the calling child non-dumpable and tied to its parent's life, then checks that its
/// parent is still one of `parents` (as `getppid` shows it: 0 for a parent outside our PID
/// namespace). Called right after `fork` and again after each change of credentials,
/// which clears both (see `sys::process::die_with_parent`). An error means the parent is
/// gone or the flags could not be set: the caller exits.
pub fn tie_to_parent(parents: &[i32]) -> Result<(), Errno> {
    process::set_non_dumpable()?;
    process::die_with_parent()?;
    if parents.contains(&process::parent_pid()) {
        Ok(())
    } else {
        Err(Errno::ESRCH)
    }
}

/// The first failure on a grandchild's report pipe (see [`Reporter::pipe`]), read without
/// waiting: call it once the grandchild has exited.
pub fn read_failure(pipe: BorrowedFd<'_>) -> Option<(i32, String)> {
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = fd::read(pipe, &mut buf) {
        if n == 0 || text.len() > 1 << 16 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|line| match Report::decode(line) {
            Some(Report::Failed { code, message }) => Some((code, message)),
            _ => None,
        })
}

/// The first failure among `reports`, if any.
pub fn failure(reports: &[Report]) -> Option<(i32, &str)> {
    reports.iter().find_map(|r| match r {
        Report::Failed { code, message } => Some((*code, message.as_str())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grandchild_goes_on_only_while_its_parent_holds_the_read_end() {
        // The grandchild's check, in a forked process (it sets process-wide flags): a
        // parent that died before the parent-death signal was set has closed its read end,
        // and the grandchild must not go on (getppid cannot tell: it says 0 either way).
        for parent_alive in [true, false] {
            let (read_end, reporter) = Reporter::pipe().unwrap();
            let read_end = parent_alive.then_some(read_end);
            let pid = match process::fork().unwrap() {
                Forked::Child => {
                    // As the session's grandchild does: its own copy of the read end goes.
                    drop(read_end);
                    let code = match reporter.tie_to_reader() {
                        Ok(()) => 0,
                        Err(Errno::ESRCH) => 3,
                        Err(_) => 4,
                    };
                    process::exit_now(code)
                }
                Forked::Parent(pid) => pid,
            };
            let ended = process::wait(pid).unwrap();
            drop(read_end);
            drop(reporter);
            let expected = if parent_alive { 0 } else { 3 };
            assert_eq!(
                ended,
                Ended::Exited(expected),
                "parent alive: {parent_alive}"
            );
        }
    }

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Note("joined mnt".into()),
            Report::CommandPid(4242),
            Report::Failed {
                code: 127,
                message: "not found".into(),
            },
        ] {
            let line = r.encode();
            assert_eq!(Report::decode(line.trim_end_matches('\n')), Some(r));
        }
        assert_eq!(
            Report::decode(Report::Note("two\nlines".into()).encode().trim_end()),
            Some(Report::Note("two lines".into()))
        );
    }

    #[test]
    fn a_child_reports_and_exits() {
        let child = Child::spawn(|r| {
            r.note("hello");
            r.fail(3, "boom");
            3
        })
        .expect("fork");
        let (reports, ended) = child.finish().expect("finish");
        assert_eq!(ended, Ended::Exited(3));
        assert_eq!(failure(&reports), Some((3, "boom")));
        assert_eq!(reports[0], Report::Note("hello".into()));
    }
}
