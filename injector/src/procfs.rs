//! What `/proc/PID` says about a target process: whether it is a kernel thread or a zombie,
//! when it started (to recognise it again), its environment, root and working directory.
//!
//! The parsers take text, so unit tests feed them fixtures; only the `read_*` functions and
//! [`root_identity`] touch `/proc` (the decisions reach them through
//! [`crate::kernel::Procfs`], which tests replace with a fake).

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// `PF_KTHREAD` from `include/linux/sched.h`: the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Errors reading a process's `/proc` entries.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// `/proc/PID` is gone.
    #[error("no process with PID {0}: check the PID (`ps`), or give a container name or ID")]
    NoSuchProcess(i32),
    /// The process is a zombie: it has exited but not been reaped.
    #[error("PID {0} has exited (it is a zombie): give the PID of a running process")]
    Exited(i32),
    /// A kernel thread has no namespaces or filesystem of its own to join.
    #[error(
        "PID {pid} ({comm}) is a kernel thread, not a container process: give the PID of a process in the container"
    )]
    KernelThread {
        /// The PID.
        pid: i32,
        /// Its name.
        comm: String,
    },
    /// A `/proc` file could not be read or parsed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The fields of `/proc/PID/stat` that cartinject needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// `comm`, the executable's short name.
    pub comm: String,
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// `flags` (`PF_*`).
    pub flags: u64,
    /// `starttime` in clock ticks since boot: with the PID, it names one process for good.
    pub start_time: u64,
}

impl Stat {
    /// Parses the text of `/proc/PID/stat` (`proc(5)`). The command name may hold spaces and
    /// parentheses, so fields are counted from the last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
        // After ")": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9) ...
        // starttime(22).
        Some(Stat {
            comm,
            state: rest.first()?.chars().next()?,
            flags: rest.get(6)?.parse().ok()?,
            start_time: rest.get(19)?.parse().ok()?,
        })
    }

    /// Whether the task is a kernel thread.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// `/proc/PID/NAME`.
pub fn proc_path(pid: i32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

fn read_error(pid: i32, path: PathBuf, source: io::Error) -> ProcError {
    // ESRCH comes back from some /proc files of a process that is exiting.
    if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
        ProcError::NoSuchProcess(pid)
    } else {
        ProcError::Read { path, source }
    }
}

/// How much a `/proc` file is first read with: procfs reports size 0, so `std::fs::read`
/// starts at 32 bytes and doubles, and the kernel formats the whole file again for every
/// read (`/proc/PID/stat` took five reads, a cgroup file six).
const PROC_READ_START: usize = 4096;

/// Reads a whole `/proc` (or sysfs) file in as few reads as it takes: one, for the files a
/// session reads.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut bytes = Vec::with_capacity(PROC_READ_START);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub fn read_file_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read_file(path)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))
}

/// Reads and checks `/proc/PID/stat`: the process must exist, be alive and not be a kernel
/// thread.
pub fn read_stat(pid: i32) -> Result<Stat, ProcError> {
    let path = proc_path(pid, "stat");
    let text = read_file_string(&path).map_err(|e| read_error(pid, path.clone(), e))?;
    check_stat(pid, path, &text)
}

/// Parses and checks the text of `/proc/PID/stat` (read from `path`): the process must be
/// alive and not be a kernel thread.
pub fn check_stat(pid: i32, path: PathBuf, text: &str) -> Result<Stat, ProcError> {
    let stat = Stat::parse(text).ok_or_else(|| ProcError::Read {
        path,
        source: io::Error::new(io::ErrorKind::InvalidData, "unexpected format"),
    })?;
    if stat.is_kernel_thread() {
        return Err(ProcError::KernelThread {
            pid,
            comm: stat.comm,
        });
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(ProcError::Exited(pid));
    }
    Ok(stat)
}

/// Splits the NUL-separated `/proc/PID/environ` into `(name, value)` pairs.
pub fn parse_environ(raw: &[u8]) -> Vec<(OsString, OsString)> {
    raw.split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            let eq = entry.iter().position(|&b| b == b'=')?;
            Some((
                OsString::from_vec(entry[..eq].to_vec()),
                OsString::from_vec(entry[eq + 1..].to_vec()),
            ))
        })
        .collect()
}

/// The process's initial environment, as the kernel gives it (`NAME=value` entries, each
/// ended by a NUL).
pub fn read_environ_raw(pid: i32) -> Result<Vec<u8>, ProcError> {
    let path = proc_path(pid, "environ");
    read_file(&path).map_err(|e| read_error(pid, path, e))
}

/// Where `/proc/PID/{root,cwd}` point, as paths inside the process's mount namespace
/// (the kernel prints them relative to that namespace's root when it is not ours).
pub fn read_link(pid: i32, name: &str) -> Result<PathBuf, ProcError> {
    let path = proc_path(pid, name);
    std::fs::read_link(&path).map_err(|e| read_error(pid, path, e))
}

/// The path a proc link names, or `/` when the kernel marks it unreachable or deleted.
pub fn usable_dir(link: &Path) -> PathBuf {
    let text = link.to_string_lossy();
    if !text.starts_with('/') || text.ends_with(" (deleted)") {
        PathBuf::from("/")
    } else {
        link.to_path_buf()
    }
}

/// The (device, inode) of process `pid`'s root directory, through the host's
/// `/proc/PID/root` (the kernel's own reference to it, whatever the path text says).
pub fn root_identity(pid: i32) -> Result<(u64, u64), ProcError> {
    use std::os::unix::fs::MetadataExt;
    let path = proc_path(pid, "root");
    let meta = std::fs::metadata(&path).map_err(|e| read_error(pid, path, e))?;
    Ok((meta.dev(), meta.ino()))
}

/// The working directory `cwd` (as `/proc/PID/cwd` names it, from the mount namespace's
/// root) as a path inside the process's root `root`: `/j/app` with root `/j` is `/app`. A
/// directory outside the root (or an unusable one) is `/`.
pub fn inside_root(cwd: &Path, root: &Path) -> PathBuf {
    match cwd.strip_prefix(root) {
        Ok(rest) => Path::new("/").join(rest),
        Err(_) => PathBuf::from("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_directories_inside_a_chroot() {
        assert_eq!(
            inside_root(Path::new("/app"), Path::new("/")),
            PathBuf::from("/app")
        );
        assert_eq!(
            inside_root(Path::new("/j/app"), Path::new("/j")),
            PathBuf::from("/app")
        );
        assert_eq!(
            inside_root(Path::new("/j"), Path::new("/j")),
            PathBuf::from("/")
        );
        assert_eq!(
            inside_root(Path::new("/elsewhere"), Path::new("/j")),
            PathBuf::from("/")
        );
    }

    #[test]
    fn stat_of_a_process_with_a_strange_name() {
        let text = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100 0 0";
        let stat = Stat::parse(text).expect("parses");
        assert_eq!(stat.comm, "my (odd) name");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.flags, 4_194_560);
        assert_eq!(stat.start_time, 98765);
        assert!(!stat.is_kernel_thread());
    }

    #[test]
    fn kthreadd_is_a_kernel_thread() {
        let text =
            "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0 18446744073709551615";
        assert!(Stat::parse(text).expect("parses").is_kernel_thread());
    }

    #[test]
    fn environ_pairs() {
        let env = parse_environ(b"PATH=/bin:/usr/bin\0EMPTY=\0A=b=c\0junk\0");
        assert_eq!(
            env,
            vec![
                ("PATH".into(), "/bin:/usr/bin".into()),
                ("EMPTY".into(), "".into()),
                ("A".into(), "b=c".into()),
            ]
        );
    }

    #[test]
    fn unreachable_links_fall_back_to_root() {
        assert_eq!(usable_dir(Path::new("/app")), PathBuf::from("/app"));
        assert_eq!(usable_dir(Path::new("/gone (deleted)")), PathBuf::from("/"));
        assert_eq!(usable_dir(Path::new("pipe:[1234]")), PathBuf::from("/"));
    }

    #[test]
    fn stat_checks() {
        let path = PathBuf::from("/proc/9/stat");
        let alive = "9 (sh) S 1 9 9 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0";
        assert_eq!(
            check_stat(9, path.clone(), alive)
                .expect("alive")
                .start_time,
            77
        );
        for state in ["Z", "X"] {
            let dead = alive.replace(" S ", &format!(" {state} "));
            assert!(matches!(
                check_stat(9, path.clone(), &dead),
                Err(ProcError::Exited(9))
            ));
        }
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0";
        match check_stat(2, path.clone(), kthread) {
            Err(e @ ProcError::KernelThread { .. }) => {
                assert!(e.to_string().contains("kthreadd"), "{e}");
            }
            other => panic!("expected a kernel thread, got {other:?}"),
        }
        match check_stat(9, path, "garbage") {
            Err(ProcError::Read { path, .. }) => assert_eq!(path, PathBuf::from("/proc/9/stat")),
            other => panic!("expected a read error, got {other:?}"),
        }
    }
}
