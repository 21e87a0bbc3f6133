//! Where images are mounted now, read from the kernel rather than from a state file, so the
//! answer stays true after `kill -9`, reboots of cartinject, or other tools.
//!
//! Every process's mount namespace is looked at once: a mount at `/dev/crashcart` in it is
//! an image placed by `-m` (in a container's own namespace) or a running session (in a
//! private namespace whose `/dev` is the session tmpfs). Loop devices are mapped to their
//! image files through sysfs, and sessions to their container through the PID namespace
//! they share with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::loopdev;
use crate::mountinfo;
use crate::place::{MOUNT_POINT, SESSION_DEV_SOURCE};
use crate::target::cgroup;

/// One image mounted somewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// `mount` (left by `-m`) or `session` (a running session's private namespace).
    pub kind: &'static str,
    /// A process of the target (its lowest PID), or of the session when the target is gone.
    pub target_pid: i32,
    /// The lowest PID of the session's processes, for sessions.
    pub session_pid: Option<i32>,
    /// The container's ID, when its cgroup names one.
    pub container_id: Option<String>,
    /// The container's name, when a runtime knows it.
    pub container_name: Option<String>,
    /// The image file backing the loop device, as sysfs names it.
    pub image: Option<PathBuf>,
    /// The block device mounted (`/dev/loopN` for images).
    pub device: String,
    /// The mount namespace (inode of `/proc/PID/ns/mnt`).
    pub mount_ns: u64,
}

fn ns_inode(proc_root: &Path, pid: i32, ns: &str) -> Option<u64> {
    crate::sys::ns::link_inode(&proc_root.join(format!("{pid}/ns/{ns}")))
}

/// Scans the procfs at `proc_root` and the sysfs at `sys_root`.
pub fn scan(proc_root: &Path, sys_root: &Path) -> Vec<Placement> {
    let mut pids: Vec<i32> = std::fs::read_dir(proc_root)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();

    // Mount namespace -> the lowest PID in it; PID -> the PID namespace its children get.
    let mut by_mnt: BTreeMap<u64, i32> = BTreeMap::new();
    let mut pid_ns_of: BTreeMap<i32, u64> = BTreeMap::new();
    let mut mnt_of: BTreeMap<i32, u64> = BTreeMap::new();
    for &pid in &pids {
        let Some(mnt) = ns_inode(proc_root, pid, "mnt") else {
            continue;
        };
        by_mnt.entry(mnt).or_insert(pid);
        mnt_of.insert(pid, mnt);
        // pid_for_children: a session's namespace child is still in the host's PID namespace
        // but forks into the target's.
        if let Some(pidns) = ns_inode(proc_root, pid, "pid_for_children") {
            pid_ns_of.insert(pid, pidns);
        }
    }

    let mut found = Vec::new();
    let mut session_mnts = Vec::new();
    for (&mnt, &pid) in &by_mnt {
        let Ok(entries) = mountinfo::read(&proc_root.join(format!("{pid}/mountinfo"))) else {
            continue;
        };
        let Some(top) = mountinfo::at(&entries, MOUNT_POINT).last().copied() else {
            continue;
        };
        let is_session = mountinfo::at(&entries, "/dev")
            .last()
            .is_some_and(|dev| dev.source == SESSION_DEV_SOURCE);
        if is_session {
            session_mnts.push(mnt);
        }
        let (device, image) = loopdev::device_of(sys_root, top);
        found.push(Placement {
            kind: if is_session { "session" } else { "mount" },
            target_pid: pid,
            session_pid: is_session.then_some(pid),
            container_id: None,
            container_name: None,
            image,
            device,
            mount_ns: mnt,
        });
    }

    // A session's processes live in the target's PID namespace: the target is the lowest PID
    // there whose mount namespace is not a session's.
    for placement in &mut found {
        if placement.kind == "session"
            && let Some(pidns) = pid_ns_of.get(&placement.target_pid)
            && let Some((&pid, _)) = pid_ns_of.iter().find(|(p, ns)| {
                *ns == pidns && mnt_of.get(p).is_some_and(|m| !session_mnts.contains(m))
            })
        {
            placement.target_pid = pid;
        }
        placement.container_id =
            std::fs::read_to_string(proc_root.join(format!("{}/cgroup", placement.target_pid)))
                .ok()
                .and_then(|t| cgroup::container_id(&t));
    }
    found
}
