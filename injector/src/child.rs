//! A forked child that does namespace work and reports back over a pipe.
//!
//! `setns` into a mount namespace is refused to a multi-threaded process, and a process that
//! has joined a container should not go on to do the host-side work; so every step inside a
//! target runs in a child forked from the (single-threaded) cartinject process. The child
//! tells the parent what happened as lines on a close-on-exec pipe: notes for `-v`, the PID
//! of a grandchild, or one failure message with the exit code it stands for. When the child
//! execs or exits, the pipe closes and the parent sees the end.

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
        match process::fork()? {
            Forked::Child => {
                drop(read_end);
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
