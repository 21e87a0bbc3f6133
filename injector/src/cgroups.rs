//! Joining the target's cgroups, so that a session is accounted and limited like the
//! container it debugs (its pids, memory, CPU and device limits, its freezer).
//!
//! The target's cgroup in each hierarchy is in `/proc/PID/cgroup` (`cgroups(7)`): lines
//! `ID:CONTROLLERS:PATH` for cgroup v1 hierarchies (`4:memory:/docker/ID`,
//! `1:name=systemd:/…`) and `0::PATH` for the unified (v2) one; on a hybrid host like this
//! one, both. Each hierarchy is found among the host's mounts by its filesystem type and
//! super options (`cgroup` with `rw,memory`; `cgroup2`), and the cgroup's `cgroup.procs` is
//! that mount's directory plus PATH (less the mount's own root).
//!
//! The files are opened from the host, before any namespace is joined: inside the container
//! the cgroup filesystems are the container's own view (often read-only, or absent), and the
//! kernel checks a write to `cgroup.procs` against the credentials and cgroup namespace of
//! whoever *opened* it (`cgroup_procs_write_permission`, Linux 5.16; CVE-2021-4197). The
//! session's namespace child then writes `0` (itself) into each after it has placed the
//! image, so the command it forks is born inside the container's cgroups. The namespace child
//! counts there too (one pid more against a pids limit, like `docker exec`'s process), and a
//! v1 `devices` cgroup then keeps the session from the host's devices as it keeps the
//! container, which is why it is joined only after the image is mounted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::mountinfo::{self, MountEntry};

/// A failure to join one cgroup.
#[derive(Debug, thiserror::Error)]
#[error("cannot join cgroup {path}: {source}")]
pub struct CgroupError {
    /// The `cgroup.procs` file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// One hierarchy's line of `/proc/PID/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    /// Empty for the unified hierarchy; else the controllers (`cpu,cpuacct`) or
    /// `name=NAME`.
    controllers: String,
    /// The cgroup's path from the hierarchy's root.
    path: String,
}

fn memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let _id = fields.next()?;
            Some(Membership {
                controllers: fields.next()?.to_string(),
                path: fields.next()?.to_string(),
            })
        })
        .collect()
}

/// Whether `mount` holds the hierarchy of `controllers` (empty: the unified hierarchy).
fn holds(mount: &MountEntry, controllers: &str) -> bool {
    if controllers.is_empty() {
        return mount.fstype == "cgroup2";
    }
    mount.fstype == "cgroup"
        && controllers
            .split(',')
            .all(|c| mount.super_options.split(',').any(|o| o == c))
}

/// The `cgroup.procs` files to write to put a process where `target` (a `/proc/PID/cgroup`
/// text) is, for each hierarchy where it is not where `own` (ours) is, found through the
/// mounts of `mounts` (a `/proc/self/mountinfo` text). Hierarchies no mount shows are named in
/// the second list.
pub fn procs_files(target: &str, own: &str, mounts: &str) -> (Vec<PathBuf>, Vec<String>) {
    let mounts = mountinfo::parse(mounts);
    let own = memberships(own);
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for m in memberships(target) {
        if own.contains(&m) {
            continue;
        }
        let found = mounts
            .iter()
            .filter(|e| holds(e, &m.controllers))
            .find_map(|e| {
                let root = e.root.to_str()?;
                let rest = if root == "/" {
                    Some(m.path.as_str())
                } else {
                    m.path
                        .strip_prefix(root)
                        .filter(|r| r.is_empty() || r.starts_with('/'))
                }?;
                Some(
                    e.mount_point
                        .join(rest.trim_start_matches('/'))
                        .join("cgroup.procs"),
                )
            });
        match found {
            Some(file) => files.push(file),
            None => missing.push(if m.controllers.is_empty() {
                format!("unified:{}", m.path)
            } else {
                format!("{}:{}", m.controllers, m.path)
            }),
        }
    }
    (files, missing)
}

/// The target's cgroups, opened for joining.
pub struct CgroupJoin {
    files: Vec<(PathBuf, File)>,
}

impl CgroupJoin {
    /// Opens, in the host, the `cgroup.procs` of each of `pid`'s cgroups that is not ours.
    /// Returns them and one warning for each that cannot be joined (the session then runs
    /// outside that cgroup, and says so).
    pub fn open(pid: i32) -> (CgroupJoin, Vec<String>) {
        let read =
            |path: &str| crate::procfs::read_file_string(Path::new(path)).unwrap_or_default();
        let target = read(&format!("/proc/{pid}/cgroup"));
        let (paths, missing) = procs_files(
            &target,
            &read("/proc/self/cgroup"),
            &read("/proc/self/mountinfo"),
        );
        let mut warnings: Vec<String> = missing
            .into_iter()
            .map(|h| format!("no mount of the cgroup hierarchy of {h}: the session is not in it"))
            .collect();
        let mut files = Vec::new();
        for path in paths {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(file) => files.push((path, file)),
                Err(e) => warnings.push(format!(
                    "cannot open {} ({e}): the session is not in that cgroup",
                    path.display()
                )),
            }
        }
        (CgroupJoin { files }, warnings)
    }

    /// The `cgroup.procs` files that will be written.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// Moves the calling process into every cgroup (writes `0`, "the writer", into each
    /// `cgroup.procs`). Returns the ones that refused.
    pub fn enter(self) -> Vec<CgroupError> {
        let mut failed = Vec::new();
        for (path, mut file) in self.files {
            if let Err(source) = file.write_all(b"0") {
                failed.push(CgroupError { path, source });
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 31 0:39 /kubepods /mnt/kube-pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn v1_and_unified_hierarchies_of_a_hybrid_host() {
        let target = "\
9:name=systemd:/docker/abc
8:pids:/docker/abc
4:memory:/docker/abc
2:cpu,cpuacct:/docker/abc
1:blkio:/docker/abc
0::/docker/abc
";
        let own =
            "9:name=systemd:/\n8:pids:/\n4:memory:/docker/abc\n2:cpu,cpuacct:/\n1:blkio:/\n0::/\n";
        let (files, missing) = procs_files(target, own, MOUNTS);
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(
            files,
            [
                "/sys/fs/cgroup/systemd/docker/abc/cgroup.procs",
                "/sys/fs/cgroup/pids/docker/abc/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cgroup.procs",
                "/sys/fs/cgroup/unified/docker/abc/cgroup.procs",
            ]
        );
        // No blkio mount; memory is where we already are.
        assert_eq!(missing, ["blkio:/docker/abc"]);
    }

    #[test]
    fn a_mount_of_a_subtree_is_used_only_for_cgroups_below_it() {
        let only_sub = "\
50 31 0:39 /kubepods /mnt/kube-pids rw,relatime - cgroup cgroup rw,pids
";
        let (files, _) = procs_files("8:pids:/kubepods/pod1/c1\n", "8:pids:/\n", only_sub);
        assert_eq!(
            files,
            [PathBuf::from("/mnt/kube-pids/pod1/c1/cgroup.procs")]
        );
        let (files, missing) = procs_files("8:pids:/kubepodsX/c\n", "8:pids:/\n", only_sub);
        assert!(files.is_empty());
        assert_eq!(missing.len(), 1);
    }

    #[test]
    fn pure_cgroup_v2() {
        let mounts = "24 21 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let (files, missing) = procs_files(
            "0::/system.slice/docker-abc.scope\n",
            "0::/user.slice/session-1.scope\n",
            mounts,
        );
        assert_eq!(
            files,
            [PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-abc.scope/cgroup.procs"
            )]
        );
        assert!(missing.is_empty());
    }
}
