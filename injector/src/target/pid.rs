//! A target given as a PID: check the process, and name its container when its cgroup
//! path carries a container ID.

use super::{ResolveError, Target, cgroup};
use crate::kernel::{Kernel, Procfs};

/// Checks that `pid` is a live user-space process and describes it.
pub fn resolve(pid: i32) -> Result<Target, ResolveError> {
    resolve_with(&Procfs, pid)
}

/// [`resolve`], through `kernel`.
pub fn resolve_with(kernel: &impl Kernel, pid: i32) -> Result<Target, ResolveError> {
    kernel.stat(pid)?;
    let id = kernel
        .cgroup(pid)
        .ok()
        .and_then(|raw| cgroup::container_id(&String::from_utf8_lossy(&raw)));
    Ok(Target {
        pid,
        runtime: "pid",
        id,
        name: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{FakeKernel, FakeProcess};
    use crate::procfs::ProcError;

    const ID: &str = "21bc7fa514958aaf1f7c57fdd0b34253eb0075eef878b247f7523f47f4da7db8";

    #[test]
    fn a_container_process_is_named_by_its_cgroup() {
        let mut process = FakeProcess::container();
        process.cgroup = Some(format!("0::/system.slice/docker-{ID}.scope\n").into_bytes());
        let t = resolve_with(&FakeKernel::with(42, process), 42).expect("resolved");
        assert_eq!((t.pid, t.runtime), (42, "pid"));
        assert_eq!(t.id.as_deref(), Some(ID));
        assert_eq!(t.label(), "21bc7fa51495");
    }

    #[test]
    fn a_host_process_or_an_unreadable_cgroup_has_no_id() {
        let mut process = FakeProcess::container();
        process.cgroup = Some(b"0::/user.slice/session-1.scope\n".to_vec());
        let k = FakeKernel::with(42, process.clone());
        assert_eq!(resolve_with(&k, 42).expect("resolved").id, None);
        process.cgroup = None;
        let k = FakeKernel::with(42, process);
        assert_eq!(resolve_with(&k, 42).expect("resolved").label(), "pid 42");
    }

    #[test]
    fn zombies_kernel_threads_and_missing_pids_are_refused() {
        let mut zombie = FakeProcess::container();
        zombie.stat =
            Some("42 (app) Z 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5000 0 0".into());
        let mut kthread = FakeProcess::container();
        kthread.stat =
            Some("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0".into());
        let k = FakeKernel {
            processes: [(42, zombie), (2, kthread)].into(),
            ..FakeKernel::default()
        };
        assert!(matches!(
            resolve_with(&k, 42),
            Err(ResolveError::Process(ProcError::Exited(42)))
        ));
        assert!(matches!(
            resolve_with(&k, 2),
            Err(ResolveError::Process(ProcError::KernelThread {
                pid: 2,
                ..
            }))
        ));
        assert!(matches!(
            resolve_with(&k, 5),
            Err(ResolveError::Process(ProcError::NoSuchProcess(5)))
        ));
    }
}
