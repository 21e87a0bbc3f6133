//! `--profile match` (alias `--match-container`): the debug process gets no more power than
//! the workload it debugs (see [`crate::profile`] for the other profiles). The command gets,
//! from the target process (its main thread),
//!
//! - its user, group and supplementary groups (from `/proc/PID/status`, mapped into its user
//!   namespace through `/proc/PID/uid_map` and `gid_map`);
//! - its capability sets: bounding, and what `execve` will leave of the permitted,
//!   effective, inheritable and ambient sets (`capabilities(7)`, "Transformation of
//!   capabilities during execve()"). A root workload whose permitted set is smaller than its
//!   bounding set is matched with `SECBIT_NOROOT` and an ambient set equal to it;
//! - `no_new_privs`;
//! - its seccomp filters, copied with `PTRACE_SECCOMP_GET_FILTER` (see
//!   [`crate::sys::seccomp`]: this stops the target's main thread for a moment);
//! - its LSM label: the AppArmor profile or SELinux context of `/proc/PID/attr/current`,
//!   written to `/proc/thread-self/attr/exec` so the kernel applies it at `execve`.
//!
//! The order of the steps in the command process is runc's (`setns_init_linux.go`):
//! `no_new_privs`, then the seccomp filter if `no_new_privs` is off (installing one without
//! it needs `CAP_SYS_ADMIN`, which is about to go), then capabilities and ids, then the LSM
//! label, and the seccomp filter last if `no_new_privs` is on.
//!
//! Matching fails closed: what cannot be copied exactly (a seccomp filter that cannot be
//! read, strict mode, a label that cannot be read, ids without a mapping, capabilities
//! `execve` cannot reproduce) is an [`Reading::unmatched`] line that stops the session unless
//! `--allow-unmatched` is given; what cannot be applied always fails the session. The LSM
//! label is written only through the host's procfs, opened and checked to be procfs before
//! any namespace was joined (runc CVE-2019-16884: a container's own `/proc` would swallow
//! the write).

use std::path::{Path, PathBuf};

use crate::kernel::{IdMap, Kernel};
use crate::sys::caps;
use crate::sys::seccomp::{self, Filter};
use crate::sys::{Errno, process};
use crate::userns::to_namespace;

/// The target could not be looked at.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `/proc/PID/status` could not be read or parsed.
    #[error("cannot read the credentials of PID {pid} from {path}: {detail}")]
    Status {
        /// The target.
        pid: i32,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// The credential lines of `/proc/PID/status` (`proc_pid_status(5)`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Real, effective, saved and filesystem uid, as the reader's user namespace sees them.
    pub uid: [u32; 4],
    /// The same for gids.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// `CapInh`.
    pub inheritable: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapEff`.
    pub effective: u64,
    /// `CapBnd`.
    pub bounding: u64,
    /// `CapAmb` (0 on kernels before 4.3, which lack the line).
    pub ambient: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
    /// `Seccomp`: 0 off, 1 strict, 2 filter.
    pub seccomp: u8,
}

/// Parses the credential lines of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Result<Status, String> {
    let mut status = Status::default();
    let mut seen = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let ids = |v: &str| -> Result<[u32; 4], String> {
            let list: Vec<u32> = v
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{key}: {e}"))?;
            <[u32; 4]>::try_from(list).map_err(|_| format!("{key}: not four ids"))
        };
        let mask = |v: &str| u64::from_str_radix(v, 16).map_err(|e| format!("{key}: {e}"));
        match key {
            "Uid" => status.uid = ids(value)?,
            "Gid" => status.gid = ids(value)?,
            "Groups" => {
                status.groups = value
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("Groups: {e}"))?;
            }
            "CapInh" => status.inheritable = mask(value)?,
            "CapPrm" => status.permitted = mask(value)?,
            "CapEff" => status.effective = mask(value)?,
            "CapBnd" => status.bounding = mask(value)?,
            "CapAmb" => status.ambient = mask(value)?,
            "NoNewPrivs" => status.no_new_privs = value == "1",
            "Seccomp" => status.seccomp = value.parse().map_err(|e| format!("Seccomp: {e}"))?,
            _ => continue,
        }
        seen += 1;
    }
    if seen < 7 {
        return Err("missing Uid, Gid or capability lines".into());
    }
    Ok(status)
}

/// Reads and parses `/proc/PID/status`.
pub fn read_status(pid: i32) -> Result<Status, ConfineError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = crate::procfs::read_file_string(&path).map_err(|e| ConfineError::Status {
        pid,
        path: path.clone(),
        detail: e.to_string(),
    })?;
    parse_status(&text).map_err(|detail| ConfineError::Status { pid, path, detail })
}

/// A Linux security module label to carry over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// No LSM that labels processes is active on this host.
    NoLsm,
    /// The target is unconfined: nothing to apply.
    Unconfined(&'static str),
    /// An AppArmor profile, by name.
    AppArmor(String),
    /// An SELinux context.
    SeLinux(String),
    /// An LSM labels processes, but the target's label could not be read.
    Unreadable(String),
}

impl Label {
    /// Reads the label of process `pid` under `proc_root`; `selinux` says whether SELinux is
    /// the active LSM (`/sys/fs/selinux` is mounted) when the shared `attr/current` answers.
    pub fn read(proc_root: &Path, pid: i32, selinux: bool) -> Label {
        let read = |name: &str| {
            std::fs::read_to_string(proc_root.join(format!("{pid}/attr/{name}")))
                .map(|t| t.trim_end_matches(['\n', '\0']).to_string())
        };
        // AppArmor's own file (Linux 5.8+, when LSMs are stacked), then the shared one,
        // which answers EINVAL when no LSM provides it.
        if let Some(label) = read("apparmor/current").ok().filter(|l| !l.is_empty()) {
            return Label::apparmor(&label);
        }
        match read("current") {
            Ok(label) if label.is_empty() => Label::NoLsm,
            Ok(label) if selinux => Label::SeLinux(label),
            Ok(label) => Label::apparmor(&label),
            // EINVAL: no LSM provides the attribute.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Label::NoLsm,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !selinux => Label::NoLsm,
            Err(e) => Label::Unreadable(e.to_string()),
        }
    }

    /// An AppArmor label as `attr/current` shows it: `PROFILE (MODE)` or `unconfined`.
    fn apparmor(label: &str) -> Label {
        let profile = label
            .rsplit_once(" (")
            .filter(|(_, mode)| mode.ends_with(')'))
            .map_or(label, |(name, _)| name);
        if profile == "unconfined" {
            Label::Unconfined("AppArmor")
        } else {
            Label::AppArmor(profile.to_string())
        }
    }

    /// The file under procfs (relative to its root) and the text to write there before
    /// exec; `exists` says whether a file under procfs exists.
    fn exec_attr(&self, exists: impl Fn(&str) -> bool) -> Option<(&'static str, String)> {
        match self {
            Label::AppArmor(profile) => {
                let own = "thread-self/attr/apparmor/exec";
                let file = if exists(own) {
                    own
                } else {
                    "thread-self/attr/exec"
                };
                Some((file, format!("exec {profile}")))
            }
            Label::SeLinux(context) => Some(("thread-self/attr/exec", context.clone())),
            Label::NoLsm | Label::Unconfined(_) | Label::Unreadable(_) => None,
        }
    }
}

/// What the command process applies before its `execve` (see the module doc).
#[derive(Debug, Clone)]
pub struct Profile {
    uid: [u32; 3],
    gid: [u32; 3],
    groups: Vec<u32>,
    bounding: u64,
    permitted: u64,
    effective: u64,
    inheritable: u64,
    ambient: u64,
    noroot: bool,
    no_new_privs: bool,
    filters: Vec<Filter>,
    label: Label,
}

/// The capability sets to set before exec so that `execve` leaves the target's: (effective,
/// permitted, inheritable, ambient, noroot), and what still differs, for stderr.
fn plan_caps(root: bool, t: &Status) -> ((u64, u64, u64, u64, bool), Vec<String>) {
    let mut differs = Vec::new();
    if root {
        // Root without SECBIT_NOROOT: execve gives P' = E' = I | bounding.
        let natural = t.inheritable | t.bounding;
        if t.permitted == natural {
            if t.effective != t.permitted {
                differs.push(format!(
                    "its effective capabilities ({}) are fewer than its permitted ones: the debug process gets all permitted ones in effect",
                    caps::names(t.effective)
                ));
            }
            return (
                (t.effective, t.permitted, t.inheritable, t.ambient, false),
                differs,
            );
        }
        // Root with fewer permitted than bounding: root gets nothing special at exec
        // (SECBIT_NOROOT) and keeps exactly its permitted set through the ambient set.
        let inheritable = t.inheritable | t.permitted;
        if inheritable != t.inheritable {
            differs.push(format!(
                "its inheritable set ({}) is widened to its permitted set so that they survive exec without root's privileges",
                caps::names(t.inheritable)
            ));
        }
        return (
            (t.permitted, t.permitted, inheritable, t.permitted, true),
            differs,
        );
    }
    // Another uid: execve leaves the ambient set (the image's files carry no file
    // capabilities: it is mounted nosuid).
    if t.permitted != t.ambient {
        differs.push(format!(
            "it runs as uid {} with permitted capabilities ({}) beyond its ambient set, which execve would not keep: the debug process gets only the ambient ones",
            t.uid[1],
            caps::names(t.permitted)
        ));
    }
    (
        (
            t.ambient,
            t.permitted | t.ambient,
            t.inheritable | t.ambient,
            t.ambient,
            false,
        ),
        differs,
    )
}

/// What [`read`] found.
#[derive(Debug)]
pub struct Reading {
    /// What the command gets.
    pub profile: Profile,
    /// Lines for stderr about differences that give the command no more power than the
    /// workload (nothing to match: no LSM; the effective set widened to the permitted set).
    pub notes: Vec<String>,
    /// What could not be copied: each stops the session unless `--allow-unmatched`.
    pub unmatched: Vec<String>,
}

/// Reads what `--profile match` applies from target `pid`, whose `/proc/PID/status` is
/// `status` (see [`read_status`]).
pub fn read(pid: i32, status: Status) -> Reading {
    read_with(&crate::kernel::Procfs, pid, status)
}

/// [`read`], through `kernel`: the id maps, seccomp filters and LSM label of `pid`.
pub fn read_with(kernel: &impl Kernel, pid: i32, status: Status) -> Reading {
    let mut notes = Vec::new();
    let mut unmatched = Vec::new();
    let map_text = |which: IdMap| kernel.id_map(pid, which).ok();
    let (uid_map, gid_map) = (map_text(IdMap::Uid), map_text(IdMap::Gid));
    let map = |id: u32, text: &Option<String>, what: &str, notes: &mut Vec<String>| {
        text.as_deref()
            .and_then(|m| to_namespace(id, m))
            .unwrap_or_else(|| {
                notes.push(format!(
                    "its {what} {id} has no mapping in its user namespace: using 65534"
                ));
                65534
            })
    };
    let uid = [0, 1, 2].map(|i| map(status.uid[i], &uid_map, "uid", &mut unmatched));
    let gid = [0, 1, 2].map(|i| map(status.gid[i], &gid_map, "gid", &mut unmatched));
    let groups = status
        .groups
        .iter()
        .filter_map(|&g| gid_map.as_deref().and_then(|m| to_namespace(g, m)))
        .collect();
    let root = uid[1] == 0;
    let ((effective, permitted, inheritable, ambient, noroot), differs) = plan_caps(root, &status);
    // Root's differences give the command no more than the workload could give itself; a
    // non-root workload's permitted set beyond its ambient one cannot be carried over.
    if root {
        notes.extend(differs);
    } else {
        unmatched.extend(differs);
    }

    let filters = match status.seccomp {
        0 => Vec::new(),
        1 => {
            unmatched.push(
                "it runs in seccomp strict mode, which a shell cannot: no filter is installed"
                    .into(),
            );
            Vec::new()
        }
        _ => match kernel.seccomp_filters(pid) {
            Ok(filters) => {
                if filters.iter().any(Filter::uses_user_notif) {
                    unmatched.push("its seccomp filter hands some syscalls to a supervisor (SECCOMP_RET_USER_NOTIF): in the copy they fail with ENOSYS".into());
                }
                filters
            }
            Err(e) => {
                let why = match e {
                    Errno::EPERM => "it is being traced by another process".to_string(),
                    Errno::EACCES => {
                        "cartinject itself runs under seccomp or without CAP_SYS_ADMIN".into()
                    }
                    Errno::EMEDIUMTYPE => "it is an eBPF filter, which cannot be read back".into(),
                    Errno::ETIMEDOUT => {
                        "the target did not stop to have it read within 2 s (is it frozen?)".into()
                    }
                    Errno::EIO | Errno::EINVAL => {
                        "this kernel cannot read filters (CONFIG_CHECKPOINT_RESTORE is off)".into()
                    }
                    other => other.to_string(),
                };
                unmatched.push(format!("its seccomp filter cannot be copied ({why})"));
                Vec::new()
            }
        },
    };
    let label = kernel.lsm_label(pid);
    match &label {
        Label::NoLsm => notes.push(
            "no LSM (AppArmor, SELinux) labels processes on this host: there is no profile to match"
                .into(),
        ),
        Label::Unconfined(lsm) => notes.push(format!(
            "it is unconfined by {lsm}: there is no profile to match"
        )),
        Label::Unreadable(why) => unmatched.push(format!("its LSM label cannot be read ({why})")),
        Label::AppArmor(_) | Label::SeLinux(_) => {}
    }
    Reading {
        profile: Profile {
            uid,
            gid,
            groups,
            bounding: status.bounding,
            permitted,
            effective,
            inheritable,
            ambient,
            noroot,
            no_new_privs: status.no_new_privs,
            filters,
            label,
        },
        notes,
        unmatched,
    }
}

impl Profile {
    /// One line for `-v`: what the debug process will have.
    pub fn describe(&self) -> String {
        format!(
            "uid {} gid {}, capabilities {} (bounding {}), no_new_privs {}, {} seccomp filter(s), LSM {:?}",
            self.uid[1],
            self.gid[1],
            caps::names(self.permitted),
            caps::names(self.bounding),
            self.no_new_privs,
            self.filters.len(),
            self.label
        )
    }

    fn install_filters(&self) -> Result<(), String> {
        for filter in &self.filters {
            seccomp::install(filter)
                .map_err(|e| format!("cannot install the target's seccomp filter: {e}"))?;
        }
        Ok(())
    }

    /// Applies the profile to the calling process (the namespace child, right before it
    /// forks the command). `procfs` is the host's procfs, opened and checked before joining
    /// (see [`crate::sys::resolve::open_procfs`]): the LSM label is written only through it. Any
    /// failure fails the session: running with more power than asked is not an option.
    pub fn apply(&self, procfs: Option<std::os::fd::BorrowedFd<'_>>) -> Result<(), String> {
        let parent = process::parent_pid();
        if self.no_new_privs {
            caps::set_no_new_privs().map_err(|e| format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))?;
        } else {
            self.install_filters()?;
        }
        caps::limit_bounding(self.bounding)
            .map_err(|e| format!("cannot limit the capability bounding set: {e}"))?;
        if self.noroot {
            caps::add_securebits(caps::SECBIT_NOROOT)
                .map_err(|e| format!("prctl(PR_SET_SECUREBITS): {e}"))?;
        }
        let changes_ids = self.uid != [0; 3] || self.gid != [0; 3] || !self.groups.is_empty();
        if changes_ids {
            caps::keep_across_setuid(true).map_err(|e| format!("prctl(PR_SET_KEEPCAPS): {e}"))?;
            process::set_ids(self.uid, self.gid, &self.groups).map_err(|e| {
                format!(
                    "cannot take the target's uid {} and gid {}: {e}",
                    self.uid[1], self.gid[1]
                )
            })?;
            caps::keep_across_setuid(false).map_err(|e| format!("prctl(PR_SET_KEEPCAPS): {e}"))?;
        }
        caps::set(self.effective, self.permitted, self.inheritable)
            .map_err(|e| format!("capset: {e}"))?;
        caps::raise_ambient(self.ambient)
            .map_err(|e| format!("cannot raise the ambient capabilities: {e}"))?;
        let exists = |name: &str| {
            procfs.is_some_and(|p| {
                crate::sys::resolve::stat_at(p, std::ffi::OsStr::new(name)).is_ok()
            })
        };
        if let Some((file, text)) = self.label.exec_attr(exists) {
            let procfs = procfs.ok_or_else(|| {
                format!(
                    "cannot apply the target's LSM label {:?}: the host's procfs was not opened",
                    self.label
                )
            })?;
            crate::sys::fd::write_at(procfs, file, text.as_bytes()).map_err(|e| {
                format!(
                    "cannot apply the target's LSM label {:?} (/proc/{file}): {e}",
                    self.label
                )
            })?;
        }
        // The changes of credentials above cleared the parent-death signal and reset the
        // dumpable flag: set both again, and make sure the parent did not go meanwhile.
        crate::child::tie_to_parent(&[parent])
            .map_err(|e| format!("cartinject went away, or prctl failed: {e}"))?;
        if self.no_new_privs {
            self.install_filters()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credential lines of a process in a Docker container with the default
    /// capabilities and seccomp profile.
    const DOCKER_DEFAULT: &str = "Name:\thttpd\nUmask:\t0022\nState:\tS (sleeping)\n\
        Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t0 1 2 3 4 6 10 11 20 26 27 \n\
        CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t00000000a80425fb\n\
        CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t2\n\
        Seccomp_filters:\t1\n";

    #[test]
    fn status_of_a_docker_container() {
        let s = parse_status(DOCKER_DEFAULT).expect("parse");
        assert_eq!(s.uid, [0; 4]);
        assert_eq!(s.groups.len(), 11);
        assert_eq!(s.bounding, 0xa804_25fb);
        assert_eq!(s.seccomp, 2);
        assert!(!s.no_new_privs);
        assert!(parse_status("Name:\tx\n").is_err());
    }

    #[test]
    fn capability_plans() {
        let docker = parse_status(DOCKER_DEFAULT).expect("parse");
        let ((e, p, i, a, noroot), differs) = plan_caps(true, &docker);
        assert_eq!(
            (e, p, i, a, noroot),
            (0xa804_25fb, 0xa804_25fb, 0, 0, false)
        );
        assert!(differs.is_empty(), "{differs:?}");

        // Root that dropped capabilities its bounding set still has.
        let dropped = Status {
            permitted: 0x3,
            effective: 0x3,
            bounding: 0xff,
            ..docker.clone()
        };
        let ((e, p, i, a, noroot), differs) = plan_caps(true, &dropped);
        assert_eq!((e, p, i, a, noroot), (0x3, 0x3, 0x3, 0x3, true));
        assert_eq!(differs.len(), 1);

        // A non-root workload with no capabilities.
        let user = Status {
            uid: [1000; 4],
            permitted: 0,
            effective: 0,
            ..docker
        };
        let (plan, differs) = plan_caps(false, &user);
        assert_eq!(plan, (0, 0, 0, 0, false));
        assert!(differs.is_empty());
    }

    #[test]
    fn ids_map_into_a_user_namespace() {
        assert_eq!(to_namespace(1000, "0 0 4294967295\n"), Some(1000));
        assert_eq!(to_namespace(100_005, "0 100000 65536\n"), Some(5));
        assert_eq!(to_namespace(5, "0 100000 65536\n"), None);
        assert_eq!(to_namespace(2000, "0 1000 1\n1 2000 10\n"), Some(1));
    }

    #[test]
    fn labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let attr = dir.path().join("7/attr");
        std::fs::create_dir_all(attr.join("apparmor")).expect("mkdir");
        assert_eq!(Label::read(dir.path(), 7, false), Label::NoLsm);
        std::fs::write(attr.join("current"), "docker-default (enforce)\n").expect("write");
        assert_eq!(
            Label::read(dir.path(), 7, false),
            Label::AppArmor("docker-default".into())
        );
        std::fs::write(
            attr.join("current"),
            "system_u:system_r:container_t:s0:c1,c2\0",
        )
        .expect("write");
        let selinux = Label::read(dir.path(), 7, true);
        assert_eq!(
            selinux,
            Label::SeLinux("system_u:system_r:container_t:s0:c1,c2".into())
        );
        let (file, text) = selinux.exec_attr(|_| true).expect("attr");
        assert_eq!(file, "thread-self/attr/exec");
        assert_eq!(text, "system_u:system_r:container_t:s0:c1,c2");
        std::fs::write(attr.join("apparmor/current"), "unconfined\n").expect("write");
        assert_eq!(
            Label::read(dir.path(), 7, false),
            Label::Unconfined("AppArmor")
        );
    }

    use crate::kernel::fake::{FakeKernel, FakeProcess};

    const PID: i32 = 42;

    fn reading(process: FakeProcess) -> Reading {
        let k = FakeKernel::with(PID, process);
        let status = crate::kernel::Kernel::status(&k, PID).expect("status");
        read_with(&k, PID, status)
    }

    #[test]
    fn a_default_docker_root_is_matched_exactly() {
        let mut process = FakeProcess::container().with_status(DOCKER_DEFAULT);
        process.label = Label::AppArmor("docker-default".into());
        let r = reading(process);
        assert!(r.unmatched.is_empty(), "{:?}", r.unmatched);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        assert_eq!(r.profile.uid, [0; 3]);
        assert_eq!(r.profile.groups.len(), 11);
        assert_eq!(r.profile.permitted, 0xa804_25fb);
        assert_eq!(r.profile.label, Label::AppArmor("docker-default".into()));
        assert!(
            r.profile.filters.is_empty(),
            "no filter was read: Seccomp is 2 but the fake has none"
        );
    }

    #[test]
    fn ids_are_mapped_into_the_targets_user_namespace() {
        let mut process = FakeProcess::container().with_status(
            &DOCKER_DEFAULT
                .replace("Uid:\t0\t0\t0\t0", "Uid:\t101000\t101000\t101000\t101000")
                .replace("Gid:\t0\t0\t0\t0", "Gid:\t101000\t101000\t101000\t101000")
                .replace("Groups:\t0 1 2 3 4 6 10 11 20 26 27 ", "Groups:\t101000 5"),
        );
        process.maps.insert(IdMap::Uid, "0 100000 65536\n".into());
        process.maps.insert(IdMap::Gid, "0 100000 65536\n".into());
        let r = reading(process);
        assert_eq!(r.profile.uid, [1000; 3]);
        assert_eq!(r.profile.gid, [1000; 3]);
        // Group 5 (a host group) has no mapping: dropped, not widened.
        assert_eq!(r.profile.groups, [1000]);
    }

    #[test]
    fn an_unmapped_id_becomes_nobody_and_is_unmatched() {
        let mut process = FakeProcess::container();
        process.maps.insert(IdMap::Uid, "0 100000 65536\n".into());
        process.maps.remove(&IdMap::Gid);
        let r = reading(process);
        assert_eq!(r.profile.uid, [65534; 3]);
        assert_eq!(r.profile.gid, [65534; 3]);
        // Six ids, and nobody cannot keep root's capabilities through execve.
        assert_eq!(r.unmatched.len(), 7, "{:?}", r.unmatched);
        assert!(
            r.unmatched[0].contains("uid 0 has no mapping"),
            "{:?}",
            r.unmatched
        );
        assert!(
            r.unmatched[6].contains("beyond its ambient set"),
            "{:?}",
            r.unmatched
        );
    }

    #[test]
    fn a_non_root_workloads_extra_permitted_caps_are_unmatched() {
        let status = "Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t\n\
            CapInh:\t0\nCapPrm:\t2000\nCapEff:\t2000\nCapBnd:\ta80425fb\nCapAmb:\t0\n\
            NoNewPrivs:\t1\nSeccomp:\t0\n";
        let r = reading(FakeProcess::container().with_status(status));
        assert_eq!(r.unmatched.len(), 1, "{:?}", r.unmatched);
        assert!(r.unmatched[0].contains("uid 1000"), "{:?}", r.unmatched);
        assert!(r.profile.no_new_privs);
        // execve as uid 1000 keeps only the ambient set (empty) in effect.
        assert_eq!((r.profile.effective, r.profile.ambient), (0, 0));
    }

    fn with_seccomp(filters: Result<Vec<Filter>, Errno>) -> Reading {
        let mut process = FakeProcess::container()
            .with_status(&crate::kernel::fake::ROOT_STATUS.replace("Seccomp:\t0", "Seccomp:\t2"));
        process.filters = filters;
        reading(process)
    }

    #[test]
    fn why_a_seccomp_filter_cannot_be_copied() {
        for (errno, why) in [
            (Errno::EPERM, "traced by another process"),
            (Errno::EACCES, "without CAP_SYS_ADMIN"),
            (Errno::EMEDIUMTYPE, "eBPF"),
            (Errno::ETIMEDOUT, "frozen"),
            (Errno::EINVAL, "CONFIG_CHECKPOINT_RESTORE"),
        ] {
            let r = with_seccomp(Err(errno));
            assert_eq!(r.unmatched.len(), 1, "{errno}: {:?}", r.unmatched);
            assert!(r.unmatched[0].contains(why), "{errno}: {:?}", r.unmatched);
            assert!(r.profile.filters.is_empty());
        }
    }

    #[test]
    fn a_copied_filter_is_kept_and_user_notif_is_unmatched() {
        let allow = libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        };
        let notify = libc::sock_filter {
            k: 0x7fc0_0000,
            ..allow
        };
        let plain = Filter {
            program: vec![allow],
            flags: 0,
        };
        let r = with_seccomp(Ok(vec![plain.clone()]));
        assert!(r.unmatched.is_empty(), "{:?}", r.unmatched);
        assert_eq!(r.profile.filters, [plain]);
        let supervised = Filter {
            program: vec![notify],
            flags: 0,
        };
        let r = with_seccomp(Ok(vec![supervised]));
        assert_eq!(r.unmatched.len(), 1);
        assert!(
            r.unmatched[0].contains("SECCOMP_RET_USER_NOTIF"),
            "{:?}",
            r.unmatched
        );
    }

    #[test]
    fn labels_decide_notes_and_refusals() {
        let mut process = FakeProcess::container();
        process.label = Label::Unconfined("AppArmor");
        let r = reading(process.clone());
        assert!(r.unmatched.is_empty());
        assert!(
            r.notes.iter().any(|n| n.contains("unconfined by AppArmor")),
            "{:?}",
            r.notes
        );
        process.label = Label::Unreadable("permission denied".into());
        let r = reading(process);
        assert_eq!(r.unmatched.len(), 1);
        assert!(
            r.unmatched[0].contains("LSM label cannot be read"),
            "{:?}",
            r.unmatched
        );
    }

    #[test]
    fn apparmor_exec_attribute_prefers_its_own_file() {
        let label = Label::AppArmor("p".into());
        assert_eq!(
            label.exec_attr(|_| true),
            Some(("thread-self/attr/apparmor/exec", "exec p".into()))
        );
        assert_eq!(
            label.exec_attr(|_| false),
            Some(("thread-self/attr/exec", "exec p".into()))
        );
        assert_eq!(Label::NoLsm.exec_attr(|_| true), None);
        assert_eq!(Label::apparmor("unconfined"), Label::Unconfined("AppArmor"));
        assert_eq!(
            Label::apparmor("a (b) (complain)"),
            Label::AppArmor("a (b)".into())
        );
    }
}
