//! Signals: blocking them and reading them from a signalfd, so that the parent of a session
//! sees every catchable signal as data and forwards it (`signalfd(2)`, `sigprocmask(2)`).

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::Errno;

/// A set of signals (`sigset_t`).
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

/// Every signal number that can be caught: 1..=31 except SIGKILL and SIGSTOP, and the
/// real-time signals SIGRTMIN..=SIGRTMAX that the C library leaves to programs.
pub fn catchable() -> Vec<i32> {
    let mut all: Vec<i32> = (1..=31)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .collect();
    all.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    all
}

impl SignalSet {
    /// The set of `signals`.
    pub fn of(signals: &[i32]) -> SignalSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given.
        unsafe { libc::sigemptyset(set.as_mut_ptr()) };
        // SAFETY: initialised just above.
        let mut set = unsafe { set.assume_init() };
        for &sig in signals {
            // SAFETY: `set` is an initialised sigset_t; invalid numbers are rejected (EINVAL)
            // without touching it.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        SignalSet(set)
    }
}

/// Blocks `set` for this thread and returns the mask that was in force before.
pub fn block(set: &SignalSet) -> Result<SignalSet, Errno> {
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: both pointers are valid for the call; the kernel fills `old`.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set.0, old.as_mut_ptr()) };
    if rc != 0 {
        return Err(Errno::from_raw(rc));
    }
    // SAFETY: pthread_sigmask succeeded and so wrote `old`.
    Ok(SignalSet(unsafe { old.assume_init() }))
}

/// Sets the signal mask to `set` (used by children before exec to undo [`block`]).
pub fn set_mask(set: &SignalSet) -> Result<(), Errno> {
    // SAFETY: `set` is a valid sigset_t; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set.0, std::ptr::null_mut()) };
    if rc != 0 {
        Err(Errno::from_raw(rc))
    } else {
        Ok(())
    }
}

/// Resets every catchable signal's disposition to the default. Exec keeps "ignored", and the
/// Rust runtime ignores SIGPIPE, which a command such as `yes | head` relies on.
pub fn reset_dispositions() {
    for sig in catchable() {
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// `signalfd(-1, set, SFD_NONBLOCK|SFD_CLOEXEC)`: blocked signals in `set` become readable.
pub fn signalfd(set: &SignalSet) -> Result<OwnedFd, Errno> {
    // SAFETY: `set` is a valid sigset_t; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal from a signalfd, or `None` when there is none.
pub fn read_signal(fd: BorrowedFd<'_>) -> Result<Option<i32>, Errno> {
    let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` has room for one signalfd_siginfo, which is what one read returns.
    let n = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
    if n < 0 {
        let e = Errno::last();
        return if e == Errno::EAGAIN { Ok(None) } else { Err(e) };
    }
    if usize::try_from(n).ok() != Some(size) {
        return Ok(None);
    }
    // SAFETY: the kernel wrote a whole signalfd_siginfo.
    let info = unsafe { info.assume_init() };
    Ok(i32::try_from(info.ssi_signo).ok())
}

/// The signals that ask cartinject to stop (the terminal's Ctrl-C and Ctrl-\, a hang-up,
/// `kill`): a wait before the session's command starts ends on any of them.
pub const STOPPING: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The first of `signals` that is blocked and pending for this thread or the process
/// (`sigpending(2)`), without taking it: it stays pending (and readable from a signalfd).
pub fn pending_of(signals: &[i32]) -> Option<i32> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given.
    if unsafe { libc::sigpending(set.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: sigpending succeeded and so initialised `set`.
    let set = unsafe { set.assume_init() };
    signals
        .iter()
        .copied()
        // SAFETY: `set` is an initialised sigset_t; an invalid number gives -1, not 1.
        .find(|&sig| unsafe { libc::sigismember(&set, sig) } == 1)
}

/// The name of a signal that stops cartinject (`SIGTERM`), or `signal N`.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        _ => format!("signal {sig}"),
    }
}
