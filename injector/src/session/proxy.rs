//! Step 4 of a session (see [`super`]): cartinject's side while the command runs. It copies
//! the pty or the output pipes, forwards signals to the command, ends the session when the
//! target exits, and returns how the namespace child ended.
//!
//! One [`Proxy`] holds the state; each turn of [`Proxy::run`] polls every source that is
//! still open and hands each ready one to its own handler, in a fixed order: the target's
//! exit, the namespace child's reports, signals, the pty's output, the user's input, the
//! output pipes.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::child::{Child, Report};
use crate::sys::fd::{stdin, stdout};
use crate::sys::process::{self, Ended};
use crate::sys::{Errno, fd, pidfd, pty, signal};
use crate::watch::TargetWatch;

/// The start of a note from the namespace child that is shown without `-v`.
pub(super) const WARNING: &str = "warning: ";

/// How the proxy loop ended.
pub(super) struct Outcome {
    /// How the namespace child ended (with the command's status).
    pub ended: Ended,
    /// A failure the child reported: exit code and message.
    pub failure: Option<(i32, String)>,
    /// A stop signal that came before the command started.
    pub aborted_by: Option<i32>,
    /// The target exited while the session ran.
    pub target_exited: bool,
}

/// The command process, once known, and how to signal it.
struct CommandProcess {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl CommandProcess {
    fn signal(&self, sig: i32) {
        let _ = match &self.pidfd {
            Some(fd) => pidfd::send_signal(fd.as_fd(), sig),
            None => pidfd::kill(self.pid, sig),
        };
    }
}

/// What one [`pump`] did.
#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    /// Copied some bytes.
    Data,
    /// Nothing to read now (only for non-blocking sources).
    Empty,
    /// End of file, or EIO, which a pty master returns once every slave fd is closed.
    Closed,
}

/// A source copied to a sink; once a write to the sink fails (a closed pipe), the source is
/// still drained but nothing more is written.
struct Stream {
    from: OwnedFd,
    to: BorrowedFd<'static>,
    sink_ok: bool,
}

/// One `read` from `from`, written to `to` (one read only: stdin is blocking, and setting
/// O_NONBLOCK on it would change the user's terminal for the shell that started us too).
fn pump(from: BorrowedFd<'_>, to: BorrowedFd<'_>, sink_ok: &mut bool) -> Pumped {
    let mut buf = [0u8; 16 * 1024];
    match fd::read(from, &mut buf) {
        Ok(0) => Pumped::Closed,
        Ok(n) => {
            if *sink_ok && fd::write_all(to, &buf[..n]).is_err() {
                // The reader went away (a closed pipe): keep draining, stop writing.
                *sink_ok = false;
            }
            Pumped::Data
        }
        Err(Errno::EAGAIN) => Pumped::Empty,
        Err(_) => Pumped::Closed,
    }
}

/// Pumps a non-blocking source until it has nothing more.
fn drain(from: BorrowedFd<'_>, to: BorrowedFd<'_>, sink_ok: &mut bool) {
    while pump(from, to, sink_ok) == Pumped::Data {}
}

/// A source [`Proxy::run`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The signalfd.
    Signals,
    /// The namespace child's report pipe.
    Reports,
    /// The pty master (the command's output).
    Output,
    /// The user's terminal (input for the command).
    Input,
    /// Output pipe number N.
    Pipe(usize),
    /// The target's pidfd: it exited.
    TargetExit,
}

/// The state of the proxy loop.
pub(super) struct Proxy<'a> {
    child: &'a mut Child,
    sigfd: &'a OwnedFd,
    watch: &'a mut TargetWatch,
    /// The pty master, until the command's side closes.
    master: Option<OwnedFd>,
    /// Writes to our stdout still succeed.
    stdout_ok: bool,
    /// The user's input is still read (interactive, and the pty still open).
    stdin_open: bool,
    /// Writes of the user's input to the pty still succeed.
    stdin_ok: bool,
    pipes: Vec<Stream>,
    /// The pipes found closed this turn.
    closed: Vec<usize>,
    interactive: bool,
    verbose: bool,
    command: Option<CommandProcess>,
    /// Signals that came before the command's PID was known.
    queued: Vec<i32>,
    failure: Option<(i32, String)>,
    aborted_by: Option<i32>,
    target_exited: bool,
}

impl<'a> Proxy<'a> {
    /// A proxy for the namespace child `child`: signals from `sigfd`, the target watched by
    /// `watch`, the pty `master` (interactive) or the output `pipes` (read end, host fd).
    pub(super) fn new(
        child: &'a mut Child,
        sigfd: &'a OwnedFd,
        watch: &'a mut TargetWatch,
        master: Option<OwnedFd>,
        pipes: Vec<(OwnedFd, BorrowedFd<'static>)>,
        verbose: bool,
    ) -> Proxy<'a> {
        let interactive = master.is_some();
        Proxy {
            child,
            sigfd,
            watch,
            master,
            stdout_ok: true,
            stdin_open: interactive,
            stdin_ok: true,
            pipes: pipes
                .into_iter()
                .map(|(from, to)| Stream {
                    from,
                    to,
                    sink_ok: true,
                })
                .collect(),
            closed: Vec::new(),
            interactive,
            verbose,
            command: None,
            queued: Vec::new(),
            failure: None,
            aborted_by: None,
            target_exited: false,
        }
    }

    /// Runs until the namespace child has exited, then copies what the command wrote last.
    pub(super) fn run(mut self) -> io::Result<Outcome> {
        let ended = loop {
            let (ready, by_time) = self.poll()?;
            let exited = ready.contains(&Event::TargetExit) || (by_time && self.watch.gone());
            if exited {
                self.on_target_exit();
            }
            // Reports before signals, and looked for when a signal comes before the command's
            // PID: a signal sent right after the command started must find its PID known (the
            // namespace child reports it as soon as it has forked; the pipe is non-blocking).
            let signals = ready.contains(&Event::Signals);
            if ready.contains(&Event::Reports) || (signals && self.command.is_none()) {
                self.on_reports();
            }
            if signals {
                self.on_signals()?;
            }
            for event in ready {
                match event {
                    Event::Output => self.on_output(),
                    Event::Input => self.on_input(),
                    Event::Pipe(k) => self.on_pipe(k),
                    Event::Signals | Event::Reports | Event::TargetExit => {}
                }
            }
            let mut closed = std::mem::take(&mut self.closed);
            closed.sort_unstable();
            closed.dedup();
            for k in closed.into_iter().rev() {
                self.pipes.remove(k);
            }
            if self.master.is_none() && self.interactive {
                self.stdin_open = false;
            }
            if let Some(ended) = process::try_wait(self.child.pid()).map_err(io::Error::from)? {
                break ended;
            }
        };
        Ok(self.finish(ended))
    }

    /// Polls every open source; returns the ready ones in poll order, and whether the target
    /// is watched by time instead (no pidfd: the poll then wakes twice a second).
    fn poll(&self) -> io::Result<(Vec<Event>, bool)> {
        let mut sources: Vec<(BorrowedFd<'_>, Event)> = vec![(self.sigfd.as_fd(), Event::Signals)];
        if let Some(r) = self.child.reports_fd() {
            sources.push((r, Event::Reports));
        }
        if let Some(m) = &self.master {
            sources.push((m.as_fd(), Event::Output));
        }
        if self.stdin_open {
            sources.push((stdin(), Event::Input));
        }
        for (k, p) in self.pipes.iter().enumerate() {
            sources.push((p.from.as_fd(), Event::Pipe(k)));
        }
        let watched = (!self.target_exited).then(|| self.watch.fd()).flatten();
        if let Some(w) = watched {
            sources.push((w, Event::TargetExit));
        }
        let timeout = (watched.is_none() && !self.target_exited).then_some(500);
        let fds: Vec<BorrowedFd<'_>> = sources.iter().map(|(fd, _)| *fd).collect();
        let ready = fd::poll_readable(&fds, timeout).map_err(io::Error::from)?;
        let events: Vec<Event> = sources
            .iter()
            .zip(&ready)
            .filter(|(_, r)| **r)
            .map(|((_, e), _)| *e)
            .collect();
        Ok((events, timeout.is_some()))
    }

    /// The target exited: the session belongs to it, so end the command (when the target was
    /// the first process of its PID namespace, the kernel has already killed it).
    fn on_target_exit(&mut self) {
        self.watch.noticed();
        self.target_exited = true;
        match &self.command {
            Some(cmd) => cmd.signal(libc::SIGKILL),
            None => {
                let _ = pidfd::kill(self.child.pid(), libc::SIGKILL);
            }
        }
    }

    /// Notes to show, the command's PID (and the signals queued for it), a failure.
    fn on_reports(&mut self) {
        let eol = if self.interactive { "\r\n" } else { "\n" };
        for report in self.child.read_reports() {
            match report {
                Report::Note(text) => {
                    if self.verbose || text.starts_with(WARNING) {
                        let text = crate::display::escape(&text);
                        eprint!("cartinject: {text}{eol}");
                    }
                }
                Report::CommandPid(pid) if self.command.is_none() => {
                    let cmd = CommandProcess {
                        pid,
                        pidfd: pidfd::open(pid).ok(),
                    };
                    for sig in self.queued.drain(..) {
                        cmd.signal(sig);
                    }
                    self.command = Some(cmd);
                }
                Report::CommandPid(_) => {}
                Report::Failed { code, message } => {
                    self.failure.get_or_insert((code, message));
                }
            }
        }
    }

    /// Every pending signal: the window size to the pty, a stop signal before the command
    /// started ends the session, every other one goes to the command (or waits for it).
    fn on_signals(&mut self) -> io::Result<()> {
        while let Some(sig) = signal::read_signal(self.sigfd.as_fd()).map_err(io::Error::from)? {
            if sig == libc::SIGCHLD {
                continue;
            }
            if sig == libc::SIGWINCH && self.interactive {
                if let (Some(m), Ok(size)) = (&self.master, pty::window_size(stdin())) {
                    let _ = pty::set_window_size(m.as_fd(), &size);
                }
                continue;
            }
            match &self.command {
                Some(cmd) => cmd.signal(sig),
                None if signal::STOPPING.contains(&sig) => {
                    // Interrupted while setting up: stop the child; the kernel undoes the rest.
                    let _ = pidfd::kill(self.child.pid(), libc::SIGKILL);
                    self.aborted_by = Some(sig);
                }
                None => self.queued.push(sig),
            }
        }
        Ok(())
    }

    /// The command's output on the pty, to our stdout.
    fn on_output(&mut self) {
        if let Some(m) = &self.master
            && pump(m.as_fd(), stdout(), &mut self.stdout_ok) == Pumped::Closed
        {
            self.master = None;
        }
    }

    /// The user's input, to the pty.
    fn on_input(&mut self) {
        if let Some(m) = &self.master
            && pump(stdin(), m.as_fd(), &mut self.stdin_ok) == Pumped::Closed
        {
            self.stdin_open = false;
        }
    }

    /// Output pipe `k`, to the host fd it stands for.
    fn on_pipe(&mut self, k: usize) {
        let Some(p) = self.pipes.get_mut(k) else {
            return;
        };
        if pump(p.from.as_fd(), p.to, &mut p.sink_ok) == Pumped::Closed {
            // Dropped after this turn: the indices of this turn's events stay valid till then.
            self.closed.push(k);
        }
    }

    /// The namespace child has ended: whatever the command wrote last, and a failure it
    /// reported at the end.
    fn finish(mut self, ended: Ended) -> Outcome {
        if let Some(m) = &self.master {
            drain(m.as_fd(), stdout(), &mut self.stdout_ok);
        }
        for p in &mut self.pipes {
            drain(p.from.as_fd(), p.to, &mut p.sink_ok);
        }
        for report in self.child.read_reports() {
            if let Report::Failed { code, message } = report {
                self.failure.get_or_insert((code, message));
            }
        }
        Outcome {
            ended,
            failure: self.failure,
            aborted_by: self.aborted_by,
            target_exited: self.target_exited,
        }
    }
}
