//! Process control: fork, exec, wait, identity, root and working directory, and the `prctl`
//! switches a process needs before it enters a container.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::Errno;

/// Which side of a [`fork`] this is.
pub enum Forked {
    /// The parent, with the child's PID (in the parent's PID namespace).
    Parent(i32),
    /// The child.
    Child,
}

/// Set in every child [`fork`] made: a forked process has exactly one thread (the one that
/// called fork), and cartinject never starts another.
static FORKED_CHILD: AtomicBool = AtomicBool::new(false);

/// `fork(2)`, only from a single-threaded process: `EDEADLK` otherwise (a thread of the
/// parent could hold a lock, the allocator's say, that the child would then wait for
/// forever).
///
/// cartinject never starts a thread; the one library that would (the HTTP client for
/// `oci://` images) is gone before anything forks. This checks it: in the first process, by
/// the thread count `/proc/self/stat` gives; a forked child is single-threaded by
/// construction. (In unit tests the check is off: the test harness runs tests on threads;
/// [`single_threaded`] is tested on its own.)
pub fn fork() -> Result<Forked, Errno> {
    if !cfg!(test) && !FORKED_CHILD.load(Ordering::Relaxed) {
        let stat = std::fs::read_to_string("/proc/self/stat")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        single_threaded(&stat)?;
    }
    // SAFETY: the process is single-threaded (checked above, or a forked child), so the child
    // inherits no lock held by another thread and may allocate and run normal code.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw())),
        ForkResult::Child => {
            FORKED_CHILD.store(true, Ordering::Relaxed);
            Ok(Forked::Child)
        }
    }
}

/// `Ok` when the text of `/proc/self/stat` says one thread (`num_threads`, its 20th field,
/// counted after the parenthesised command name, which may hold spaces and parentheses);
/// `EDEADLK` for more, `EINVAL` for a text that does not parse.
pub fn single_threaded(stat: &str) -> Result<(), Errno> {
    let after_comm = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or(Errno::EINVAL)?;
    // Fields 3.. follow the command name: num_threads (field 20) is the 18th of them.
    let threads: u64 = after_comm
        .split_whitespace()
        .nth(17)
        .and_then(|n| n.parse().ok())
        .ok_or(Errno::EINVAL)?;
    match threads {
        1 => Ok(()),
        _ => Err(Errno::EDEADLK),
    }
}

/// `prctl(PR_SET_NAME)`: the name `ps` and `/proc/PID/comm` show (at most 15 bytes kept).
pub fn set_name(name: &CStr) -> Result<(), Errno> {
    nix::sys::prctl::set_name(name)
}

/// `_exit(2)`: ends a forked child without running the parent's exit handlers or flushing
/// buffers it inherited.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state. (nix 0.30 offers no _exit.)
    unsafe { libc::_exit(code) }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by signal N.
    Signaled(i32),
}

impl Ended {
    /// The shell convention: the code, or 128 + N for signal N.
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Signaled(sig) => 128 + sig,
        }
    }
}

/// Waits for child `pid` to end (stops and continues are waited through).
pub fn wait(pid: i32) -> Result<Ended, Errno> {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Ended::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Ended::Signaled(sig as i32)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reaps child `pid` if it has ended, without waiting.
pub fn try_wait(pid: i32) -> Result<Option<Ended>, Errno> {
    match nix::sys::wait::waitpid(
        Pid::from_raw(pid),
        Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
    ) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(Ended::Exited(code))),
        Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(Ended::Signaled(sig as i32))),
        Ok(_) => Ok(None),
        Err(Errno::EINTR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `prctl(PR_SET_DUMPABLE, 0)`: other processes of the same user cannot ptrace this one or
/// open its `/proc/PID/{exe,fd,mem}` (runc does this before joining: CVE-2019-5736).
pub fn set_non_dumpable() -> Result<(), Errno> {
    nix::sys::prctl::set_dumpable(false)
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: die with the parent, so a killed cartinject leaves no
/// session behind. The kernel clears it on every change of credentials (`commit_creds`, as
/// it resets the dumpable flag to `fs.suid_dumpable`), so callers set both again after
/// `setns(CLONE_NEWUSER)`, `setresuid` or `capset`.
pub fn die_with_parent() -> Result<(), Errno> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
}

/// `getpid()`.
pub fn pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// `getppid()`: 0 when the parent is in an ancestor PID namespace (`getppid(2)`).
pub fn parent_pid() -> i32 {
    nix::unistd::getppid().as_raw()
}

/// `setsid()`: a new session with no controlling terminal.
pub fn new_session() -> Result<(), Errno> {
    nix::unistd::setsid().map(|_| ())
}

/// `chroot(path)`.
pub fn chroot(path: &Path) -> Result<(), Errno> {
    nix::unistd::chroot(path)
}

/// `chdir(path)`.
pub fn chdir(path: &Path) -> Result<(), Errno> {
    nix::unistd::chdir(path)
}

/// `fchdir(fd)`.
pub fn fchdir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::unistd::fchdir(dir)
}

/// `dup2(fd, target)` without `O_CLOEXEC`, so `target` survives exec.
pub fn dup_onto(fd: BorrowedFd<'_>, target: i32) -> Result<(), Errno> {
    if fd.as_raw_fd() == target {
        // dup2 to itself keeps FD_CLOEXEC; clear it.
        let flags = nix::fcntl::FdFlag::empty();
        return nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags)).map(|_| ());
    }
    // SAFETY: dup2 takes two fd numbers; `fd` is valid for the borrow and `target` is one of
    // the standard descriptors, whose previous file is meant to be replaced.
    let rc = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`: every fd above stderr closes at exec, so none
/// of cartinject's (loop device, pidfds, host directories) leaks into the container
/// (CVE-2024-21626 class). Linux 5.11; older kernels get each fd marked by hand.
pub fn cloexec_from_3() -> Result<(), Errno> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes plain integers and only changes fd flags.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir("/proc/self/fd").map_err(|_| Errno::last())? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if fd > 2 {
            // SAFETY: F_SETFD on a number that may or may not be open is harmless (EBADF).
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// `setgroups([])`, `setresgid(0,0,0)`, `setresuid(0,0,0)`: become root of the user
/// namespace just joined (nsenter and runc do this after `setns(CLONE_NEWUSER)`).
pub fn become_root() -> Result<(), Errno> {
    // setgroups is refused in a user namespace with setgroups=deny; that is fine.
    let _ = nix::unistd::setgroups(&[]);
    let zero_g = Gid::from_raw(0);
    let zero_u = Uid::from_raw(0);
    nix::unistd::setresgid(zero_g, zero_g, zero_g)?;
    nix::unistd::setresuid(zero_u, zero_u, zero_u)
}

/// `setgroups(groups)`, `setresgid(gid)`, `setresuid(uid)`: take another user's ids (real,
/// effective, saved). A user namespace with `setgroups` denied refuses the first unless the
/// groups are already those.
pub fn set_ids(uid: [u32; 3], gid: [u32; 3], groups: &[u32]) -> Result<(), Errno> {
    let wanted: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
    match nix::unistd::setgroups(&wanted) {
        Ok(()) => {}
        Err(Errno::EPERM) if nix::unistd::getgroups().is_ok_and(|now| now == wanted) => {}
        Err(e) => return Err(e),
    }
    let [rg, eg, sg] = gid.map(Gid::from_raw);
    nix::unistd::setresgid(rg, eg, sg)?;
    let [ru, eu, su] = uid.map(Uid::from_raw);
    nix::unistd::setresuid(ru, eu, su)
}

/// `execve(path, argv, envp)`; returns only on failure.
pub fn exec(path: &CStr, argv: &[CString], envp: &[CString]) -> Errno {
    match nix::unistd::execve(path, argv, envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_needs_exactly_one_thread() {
        let one = "4242 (cart inject) x) S 1 4242 4242 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 123 4096 12";
        assert_eq!(single_threaded(one), Ok(()));
        let two = one.replace(" 20 0 1 0 ", " 20 0 2 0 ");
        assert_eq!(single_threaded(&two), Err(Errno::EDEADLK));
        assert_eq!(single_threaded("4242 (no end"), Err(Errno::EINVAL));
        assert_eq!(single_threaded("1 (x) S 1"), Err(Errno::EINVAL));
        // This process, with a thread of ours running: refused.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(single_threaded(&me), Err(Errno::EDEADLK));
        drop(tx);
        let _ = t.join();
    }
}
