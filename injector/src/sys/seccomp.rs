//! Seccomp filters: reading another process's classic BPF filters through ptrace
//! (`PTRACE_SECCOMP_GET_FILTER` and `PTRACE_SECCOMP_GET_METADATA`, Linux 4.4 and 4.16, both
//! needing `CONFIG_CHECKPOINT_RESTORE`, `CAP_SYS_ADMIN`, and a caller not itself under
//! seccomp: `ptrace(2)`), and installing one (`seccomp(2)` `SECCOMP_SET_MODE_FILTER`).
//!
//! Reading stops the target for a moment: the filters can only be read from a tracee in a
//! ptrace-stop. It is seized (`PTRACE_SEIZE`, which stops nothing), interrupted, read and
//! detached; a signal that arrives meanwhile is handed back on detach, so the target loses
//! nothing (criu reads filters the same way).

use nix::sys::ptrace;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::Errno;

/// `PTRACE_SECCOMP_GET_FILTER` and `PTRACE_SECCOMP_GET_METADATA` (`include/uapi/linux/ptrace.h`).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// `SECCOMP_SET_MODE_FILTER` (`include/uapi/linux/seccomp.h`).
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
/// `SECCOMP_RET_ACTION_FULL` and `SECCOMP_RET_USER_NOTIF`.
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `BPF_RET | BPF_K` (`include/uapi/linux/filter.h`): return a constant.
const BPF_RET_K: u16 = 0x06;

/// One classic BPF seccomp filter and the flags it was installed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The instructions.
    pub program: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*` as `PTRACE_SECCOMP_GET_METADATA` reports them (only `LOG`).
    pub flags: u64,
}

impl Filter {
    /// Whether the filter hands syscalls to a user-space supervisor
    /// (`SECCOMP_RET_USER_NOTIF`): a copy has no supervisor, and those syscalls then fail
    /// with ENOSYS (`seccomp_unotify(2)`).
    pub fn uses_user_notif(&self) -> bool {
        self.program
            .iter()
            .any(|i| i.code == BPF_RET_K && i.k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF)
    }
}

#[repr(C)]
struct Metadata {
    filter_off: u64,
    flags: u64,
}

fn raw_ptrace(
    request: libc::c_uint,
    pid: i32,
    addr: usize,
    data: *mut libc::c_void,
) -> Result<i64, Errno> {
    // SAFETY: the requests used here read at most `addr` bytes (metadata) or the filter's
    // instruction count of sock_filter structs into `data`, which the callers size for it,
    // or write nothing when `data` is NULL.
    // (`as _`: the request is `c_uint` in glibc, `c_int` in musl.)
    let rc = unsafe { libc::ptrace(request as _, pid, addr as *mut libc::c_void, data) };
    if rc < 0 { Err(Errno::last()) } else { Ok(rc) }
}

/// The filters of a stopped tracee, oldest first (the kernel numbers them newest first).
fn read_stopped(pid: i32) -> Result<Vec<Filter>, Errno> {
    let mut filters = Vec::new();
    for index in 0usize.. {
        let count = match raw_ptrace(PTRACE_SECCOMP_GET_FILTER, pid, index, std::ptr::null_mut()) {
            Ok(n) => usize::try_from(n).map_err(|_| Errno::EINVAL)?,
            // ENOENT: no filter at this index, so no more.
            Err(Errno::ENOENT) => break,
            Err(e) => return Err(e),
        };
        let empty = libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0,
        };
        let mut program = vec![empty; count];
        let got = raw_ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            pid,
            index,
            program.as_mut_ptr().cast(),
        )?;
        program.truncate(usize::try_from(got).map_err(|_| Errno::EINVAL)?);
        let mut meta = Metadata {
            filter_off: u64::try_from(index).map_err(|_| Errno::EINVAL)?,
            flags: 0,
        };
        raw_ptrace(
            PTRACE_SECCOMP_GET_METADATA,
            pid,
            std::mem::size_of::<Metadata>(),
            (&raw mut meta).cast(),
        )?;
        filters.push(Filter {
            program,
            flags: meta.flags,
        });
    }
    filters.reverse();
    Ok(filters)
}

/// Reads the seccomp filters of process `pid` (its thread `pid`), oldest first, stopping it
/// for the moment it takes. EPERM: it is traced by someone else; EACCES: we are under
/// seccomp or lack `CAP_SYS_ADMIN`; EMEDIUMTYPE: an eBPF filter, which cannot be read back.
pub fn read_filters(pid: i32) -> Result<Vec<Filter>, Errno> {
    let tracee = Pid::from_raw(pid);
    ptrace::seize(tracee, ptrace::Options::empty())?;
    let mut pending = None;
    let result = (|| {
        ptrace::interrupt(tracee)?;
        // A target that cannot stop (frozen by its cgroup's freezer, say) never reports the
        // stop: wait a bounded time (2 s), then give up with ETIMEDOUT.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match nix::sys::wait::waitpid(tracee, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG))
            {
                Ok(WaitStatus::StillAlive) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Errno::ETIMEDOUT);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(WaitStatus::PtraceEvent(..)) => break,
                Ok(WaitStatus::Stopped(_, sig)) => {
                    // A signal arrived first: keep it for the detach, read in this stop.
                    pending = Some(sig);
                    break;
                }
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return Err(Errno::ESRCH),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        read_stopped(pid)
    })();
    let _ = ptrace::detach(tracee, pending);
    result
}

/// Installs `filter` on the calling thread.
pub fn install(filter: &Filter) -> Result<(), Errno> {
    let len = u16::try_from(filter.program.len()).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.program.as_ptr().cast_mut(),
    };
    let flags = libc::c_ulong::try_from(filter.flags).map_err(|_| Errno::EINVAL)?;
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `prog` and the `len` instructions it
    // points to, which `filter` owns for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &raw const prog,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}
