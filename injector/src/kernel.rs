//! The seam between a session's decisions and the kernel: what those decisions read about a
//! target process (and about ourselves) from `/proc`, behind one narrow trait, [`Kernel`].
//!
//! The decisions (whether a PID is a live user process, and which container its cgroup
//! names: [`crate::target::pid::resolve_with`]; whether a pinned PID is still the same
//! process: [`crate::join::same_process`]; which namespaces to join:
//! [`crate::join::plan_joins`]; which profile:
//! [`crate::plan::decide_power`]; whether `/dev` can be renamed under the session:
//! [`crate::plan::dev_redirectable`]; the target's environment, root and working directory:
//! [`crate::plan::target_environment`], [`crate::plan::target_dirs`]; what `--profile match`
//! copies: [`crate::confine::read_with`]; the ids of a user-namespaced container's root:
//! [`crate::userns::root_ids`]) take a `&impl Kernel`. [`Procfs`] is the real one, built on
//! [`crate::procfs`], [`crate::confine`], [`crate::mountinfo`] and [`crate::sys`]; the unit
//! tests use `fake::FakeKernel` (compiled for tests only), an in-memory table of processes, and so run as an
//! ordinary user.
//!
//! Only reads are here, and only those the decisions need: what a session *does* (setns,
//! mount, fork, exec) stays in [`crate::sys`], where only root can test it.

use std::io;
use std::path::{Path, PathBuf};

use crate::arch::{BinfmtRaw, Exe};
use crate::confine::{ConfineError, Label, Status};
use crate::mountinfo::MountEntry;
use crate::procfs::{self, ProcError, Stat};
use crate::sys::Errno;
use crate::sys::ns::{self, Namespace};
use crate::sys::seccomp::{self, Filter};

/// Which id map of a process (`user_namespaces(7)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdMap {
    /// `/proc/PID/uid_map`.
    Uid,
    /// `/proc/PID/gid_map`.
    Gid,
}

impl IdMap {
    /// The file name under `/proc/PID/`.
    pub fn file_name(self) -> &'static str {
        match self {
            IdMap::Uid => "uid_map",
            IdMap::Gid => "gid_map",
        }
    }
}

/// What a session's decisions read from the kernel about a process. `pid` is a PID in our
/// PID namespace; errors name the file and the process as the real reads do.
pub trait Kernel {
    /// `/proc/PID/stat`, checked: the process exists, is alive and is no kernel thread.
    fn stat(&self, pid: i32) -> Result<Stat, ProcError>;
    /// The credential lines of `/proc/PID/status` (ids, capability sets, `NoNewPrivs`,
    /// `Seccomp`).
    fn status(&self, pid: i32) -> Result<Status, ConfineError>;
    /// The identity (nsfs device and inode) of namespace `ns` of process `pid`, or of our
    /// own for `None` (for pid and time, what our children would get). `NotFound` when the
    /// kernel lacks that kind of namespace (or the process is gone).
    fn namespace(&self, ns: Namespace, pid: Option<i32>) -> io::Result<(u64, u64)>;
    /// Where `/proc/PID/{root,cwd}` (`name`) points, as text in the process's mount
    /// namespace.
    fn link(&self, pid: i32, name: &str) -> Result<PathBuf, ProcError>;
    /// `/proc/PID/environ`, raw (NUL-ended `NAME=value` entries).
    fn environ(&self, pid: i32) -> Result<Vec<u8>, ProcError>;
    /// `/proc/PID/mountinfo`, parsed (mount points relative to the process's root).
    fn mountinfo(&self, pid: i32) -> io::Result<Vec<MountEntry>>;
    /// `/proc/PID/cgroup`, raw.
    fn cgroup(&self, pid: i32) -> io::Result<Vec<u8>>;
    /// `/proc/PID/uid_map` or `gid_map`.
    fn id_map(&self, pid: i32, which: IdMap) -> io::Result<String>;
    /// The process's seccomp filters (`PTRACE_SECCOMP_GET_FILTER`: stops it a moment).
    fn seccomp_filters(&self, pid: i32) -> Result<Vec<Filter>, Errno>;
    /// The process's LSM label (AppArmor profile or SELinux context).
    fn lsm_label(&self, pid: i32) -> Label;
    /// The first bytes of the executable `/proc/PID/exe` names (at most
    /// [`crate::arch::ELF_HEADER`]) and its device and inode.
    fn exe(&self, pid: i32) -> Result<Exe, ProcError>;
    /// The host's binfmt_misc (`/proc/sys/fs/binfmt_misc`), raw; empty when not mounted.
    fn binfmt_misc(&self) -> BinfmtRaw;
    /// The device and inode of the file `path` names in our mount namespace (symlinks
    /// followed).
    fn file_identity(&self, path: &Path) -> io::Result<(u64, u64)>;
}

/// The real kernel: the host's `/proc` as cartinject sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Procfs;

impl Kernel for Procfs {
    fn stat(&self, pid: i32) -> Result<Stat, ProcError> {
        procfs::read_stat(pid)
    }

    fn status(&self, pid: i32) -> Result<Status, ConfineError> {
        crate::confine::read_status(pid)
    }

    fn namespace(&self, ns: Namespace, pid: Option<i32>) -> io::Result<(u64, u64)> {
        ns::identity(ns, pid)
    }

    fn link(&self, pid: i32, name: &str) -> Result<PathBuf, ProcError> {
        procfs::read_link(pid, name)
    }

    fn environ(&self, pid: i32) -> Result<Vec<u8>, ProcError> {
        procfs::read_environ_raw(pid)
    }

    fn mountinfo(&self, pid: i32) -> io::Result<Vec<MountEntry>> {
        crate::mountinfo::read(&procfs::proc_path(pid, "mountinfo"))
    }

    fn cgroup(&self, pid: i32) -> io::Result<Vec<u8>> {
        procfs::read_file(&procfs::proc_path(pid, "cgroup"))
    }

    fn id_map(&self, pid: i32, which: IdMap) -> io::Result<String> {
        procfs::read_file_string(&procfs::proc_path(pid, which.file_name()))
    }

    fn seccomp_filters(&self, pid: i32) -> Result<Vec<Filter>, Errno> {
        seccomp::read_filters(pid)
    }

    fn lsm_label(&self, pid: i32) -> Label {
        Label::read(
            Path::new("/proc"),
            pid,
            Path::new("/sys/fs/selinux/enforce").exists(),
        )
    }

    fn exe(&self, pid: i32) -> Result<Exe, ProcError> {
        crate::arch::read_exe_file(pid)
    }

    fn binfmt_misc(&self) -> BinfmtRaw {
        crate::arch::read_binfmt_misc(Path::new(crate::arch::BINFMT_MISC))
    }

    fn file_identity(&self, path: &Path) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
    }
}

#[cfg(test)]
pub mod fake {
    //! The test double: processes held in memory, each answering what it was given and
    //! failing (as the real `/proc` of a vanished process would) for what it was not.

    use std::collections::HashMap;
    use std::io;
    use std::path::{Path, PathBuf};

    use super::{IdMap, Kernel};
    use crate::arch::{BinfmtRaw, Exe};
    use crate::confine::{ConfineError, Label, Status};
    use crate::mountinfo::MountEntry;
    use crate::procfs::{ProcError, Stat};
    use crate::sys::Errno;
    use crate::sys::ns::Namespace;
    use crate::sys::seccomp::Filter;

    /// One process of the fake kernel. Fields left `None` fail to read.
    #[derive(Debug, Clone)]
    pub struct FakeProcess {
        /// `/proc/PID/stat` text.
        pub stat: Option<String>,
        /// `/proc/PID/status` text.
        pub status: Option<String>,
        /// Its namespaces; a kind missing here is `NotFound`.
        pub namespaces: HashMap<Namespace, (u64, u64)>,
        /// `root` and `cwd` links, by name.
        pub links: HashMap<&'static str, PathBuf>,
        /// `environ`.
        pub environ: Option<Vec<u8>>,
        /// `mountinfo` text.
        pub mountinfo: Option<String>,
        /// `cgroup` text.
        pub cgroup: Option<Vec<u8>>,
        /// `uid_map` and `gid_map` texts.
        pub maps: HashMap<IdMap, String>,
        /// What reading its seccomp filters gives.
        pub filters: Result<Vec<Filter>, Errno>,
        /// Its LSM label.
        pub label: Label,
        /// Its executable.
        pub exe: Option<Exe>,
    }

    /// The first 20 bytes of an x86_64 executable.
    pub const X86_64_HEADER: [u8; 20] = *b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x3e\0";

    /// `/proc/PID/status` of root in a container with Docker's default capabilities.
    pub const ROOT_STATUS: &str = "Name:\tapp\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n\
        CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t00000000a80425fb\n\
        CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n";

    impl FakeProcess {
        /// A running root process of a container with its own namespaces (every identity
        /// `(1, 1000 + n)`), root `/`, working directory `/app`, no environment, `/dev` a
        /// tmpfs mount, Docker's default capabilities, no seccomp, no LSM.
        pub fn container() -> FakeProcess {
            let all = [
                Namespace::Mnt,
                Namespace::Uts,
                Namespace::Ipc,
                Namespace::Net,
                Namespace::Pid,
                Namespace::Cgroup,
                Namespace::Time,
                Namespace::User,
            ];
            FakeProcess {
                stat: Some("42 (app) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5000 0 0".into()),
                status: Some(ROOT_STATUS.into()),
                namespaces: all
                    .iter()
                    .enumerate()
                    .map(|(n, &ns)| (ns, (1, 1000 + n as u64)))
                    .collect(),
                links: HashMap::from([("root", "/".into()), ("cwd", "/app".into())]),
                environ: Some(Vec::new()),
                mountinfo: Some(
                    "1 0 0:1 / / rw - overlay overlay rw\n2 1 0:2 / /dev rw,nosuid - tmpfs tmpfs rw\n"
                        .into(),
                ),
                cgroup: Some(b"0::/system.slice/docker-abc.scope\n".to_vec()),
                maps: HashMap::from([
                    (IdMap::Uid, "0 0 4294967295\n".into()),
                    (IdMap::Gid, "0 0 4294967295\n".into()),
                ]),
                filters: Ok(Vec::new()),
                label: Label::NoLsm,
                exe: Some(Exe {
                    header: X86_64_HEADER.to_vec(),
                    id: (1, 99),
                }),
            }
        }

        /// Shares namespace `ns` with us (the fake's own identities are `(1, n)`).
        pub fn sharing(mut self, ns: Namespace) -> FakeProcess {
            self.namespaces.insert(ns, FakeKernel::our(ns));
            self
        }

        /// With `text` as its `/proc/PID/status`.
        pub fn with_status(mut self, text: &str) -> FakeProcess {
            self.status = Some(text.into());
            self
        }

        /// With `text` as its mountinfo.
        pub fn with_mountinfo(mut self, text: &str) -> FakeProcess {
            self.mountinfo = Some(text.into());
            self
        }
    }

    /// The fake kernel: our namespaces, and the processes by PID.
    #[derive(Debug, Clone, Default)]
    pub struct FakeKernel {
        /// The processes.
        pub processes: HashMap<i32, FakeProcess>,
        /// Kinds of namespace this kernel lacks (no `/proc/self/ns/NAME` either).
        pub lacking: Vec<Namespace>,
        /// binfmt_misc.
        pub binfmt: BinfmtRaw,
        /// The identities of the host's files, by path; others are missing.
        pub files: HashMap<PathBuf, (u64, u64)>,
    }

    impl FakeKernel {
        /// A kernel with one process, `pid`.
        pub fn with(pid: i32, process: FakeProcess) -> FakeKernel {
            FakeKernel {
                processes: HashMap::from([(pid, process)]),
                ..FakeKernel::default()
            }
        }

        /// Our own identity of namespace `ns`.
        pub fn our(ns: Namespace) -> (u64, u64) {
            (1, ns.flag().bits() as u64)
        }

        fn process(&self, pid: i32) -> Result<&FakeProcess, ProcError> {
            self.processes
                .get(&pid)
                .ok_or(ProcError::NoSuchProcess(pid))
        }

        fn read<T: Clone>(
            &self,
            pid: i32,
            name: &str,
            field: impl Fn(&FakeProcess) -> Option<T>,
        ) -> Result<T, ProcError> {
            field(self.process(pid)?).ok_or_else(|| ProcError::Read {
                path: PathBuf::from(format!("/proc/{pid}/{name}")),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            })
        }
    }

    fn io_error(e: ProcError) -> io::Error {
        match e {
            ProcError::Read { source, .. } => source,
            other => io::Error::new(io::ErrorKind::NotFound, other.to_string()),
        }
    }

    impl Kernel for FakeKernel {
        fn stat(&self, pid: i32) -> Result<Stat, ProcError> {
            let text = self.read(pid, "stat", |p| p.stat.clone())?;
            crate::procfs::check_stat(pid, PathBuf::from(format!("/proc/{pid}/stat")), &text)
        }

        fn status(&self, pid: i32) -> Result<Status, ConfineError> {
            let path = PathBuf::from(format!("/proc/{pid}/status"));
            let text = self
                .read(pid, "status", |p| p.status.clone())
                .map_err(|e| ConfineError::Status {
                    pid,
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            crate::confine::parse_status(&text).map_err(|detail| ConfineError::Status {
                pid,
                path,
                detail,
            })
        }

        fn namespace(&self, ns: Namespace, pid: Option<i32>) -> io::Result<(u64, u64)> {
            if self.lacking.contains(&ns) {
                return Err(io::ErrorKind::NotFound.into());
            }
            match pid {
                None => Ok(FakeKernel::our(ns)),
                Some(pid) => self
                    .process(pid)
                    .map_err(io_error)?
                    .namespaces
                    .get(&ns)
                    .copied()
                    .ok_or_else(|| io::ErrorKind::NotFound.into()),
            }
        }

        fn link(&self, pid: i32, name: &str) -> Result<PathBuf, ProcError> {
            self.read(pid, name, |p| p.links.get(name).cloned())
        }

        fn environ(&self, pid: i32) -> Result<Vec<u8>, ProcError> {
            self.read(pid, "environ", |p| p.environ.clone())
        }

        fn mountinfo(&self, pid: i32) -> io::Result<Vec<MountEntry>> {
            let text = self
                .read(pid, "mountinfo", |p| p.mountinfo.clone())
                .map_err(io_error)?;
            Ok(crate::mountinfo::parse(&text))
        }

        fn cgroup(&self, pid: i32) -> io::Result<Vec<u8>> {
            self.read(pid, "cgroup", |p| p.cgroup.clone())
                .map_err(io_error)
        }

        fn id_map(&self, pid: i32, which: IdMap) -> io::Result<String> {
            self.read(pid, which.file_name(), |p| p.maps.get(&which).cloned())
                .map_err(io_error)
        }

        fn seccomp_filters(&self, pid: i32) -> Result<Vec<Filter>, Errno> {
            self.process(pid).map_err(|_| Errno::ESRCH)?.filters.clone()
        }

        fn lsm_label(&self, pid: i32) -> Label {
            self.process(pid)
                .map_or_else(|e| Label::Unreadable(e.to_string()), |p| p.label.clone())
        }

        fn exe(&self, pid: i32) -> Result<Exe, ProcError> {
            self.read(pid, "exe", |p| p.exe.clone())
        }

        fn binfmt_misc(&self) -> BinfmtRaw {
            self.binfmt.clone()
        }

        fn file_identity(&self, path: &Path) -> io::Result<(u64, u64)> {
            self.files
                .get(path)
                .copied()
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeKernel, FakeProcess};
    use super::*;

    #[test]
    fn id_map_file_names() {
        assert_eq!(IdMap::Uid.file_name(), "uid_map");
        assert_eq!(IdMap::Gid.file_name(), "gid_map");
    }

    #[test]
    fn the_real_kernel_reads_our_own_process() {
        // Any user may read its own /proc entries: this runs as nobody too.
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let k = Procfs;
        let stat = k.stat(me).expect("own stat");
        assert!(!stat.is_kernel_thread());
        let status = k.status(me).expect("own status");
        assert_eq!(status.uid[0], nix::unistd::getuid().as_raw());
        assert_eq!(
            k.namespace(Namespace::Net, Some(me)).expect("own net ns"),
            k.namespace(Namespace::Net, None).expect("our net ns")
        );
        assert!(!k.mountinfo(me).expect("own mountinfo").is_empty());
        assert!(k.id_map(me, IdMap::Uid).expect("own uid_map").contains(' '));
        assert!(k.link(me, "cwd").expect("own cwd").is_absolute());
    }

    #[test]
    fn the_real_kernel_names_a_missing_process() {
        // PIDs never reach i32::MAX (pid_max is at most 2^22).
        match Procfs.stat(i32::MAX) {
            Err(ProcError::NoSuchProcess(pid)) => assert_eq!(pid, i32::MAX),
            other => panic!("expected NoSuchProcess, got {other:?}"),
        }
        assert!(Procfs.status(i32::MAX).is_err());
        assert_eq!(
            Procfs
                .namespace(Namespace::Mnt, Some(i32::MAX))
                .map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn the_fake_answers_what_it_was_given_and_fails_the_rest() {
        let mut process = FakeProcess::container();
        process.environ = None;
        let k = FakeKernel::with(42, process);
        assert_eq!(k.stat(42).expect("stat").start_time, 5000);
        assert_eq!(k.status(42).expect("status").bounding, 0xa804_25fb);
        assert_ne!(
            k.namespace(Namespace::Net, Some(42)).expect("net"),
            k.namespace(Namespace::Net, None).expect("ours")
        );
        assert!(matches!(k.environ(42), Err(ProcError::Read { .. })));
        assert!(matches!(k.stat(7), Err(ProcError::NoSuchProcess(7))));
        assert_eq!(
            k.cgroup(7).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }
}
