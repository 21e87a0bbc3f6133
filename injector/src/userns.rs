//! The target's user namespace, when it has one of its own: the namespace fd an idmapped
//! mount needs, and the host ids of the container's root.
//!
//! In a user-namespaced container (`podman --userns=auto`, Docker's userns-remap), the
//! container's root is an unprivileged host uid, say 2147483647. Files of the image, owned by
//! host root, would show there as the overflow uid (`nobody`). An idmapped mount
//! (`mount_setattr(MOUNT_ATTR_IDMAP)` with this namespace, Linux 5.12, on filesystems that
//! allow it) shows them as owned by the container's root instead. Files that cartinject
//! creates in the container's own filesystems (the `-m` mount point in its `/dev`) must be
//! created with the container root's host ids, or the kernel refuses (EOVERFLOW): see
//! [`crate::sys::ns::set_fs_ids`].

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use crate::join::{JoinError, Pin};
use crate::kernel::{IdMap, Kernel, Procfs};
use crate::sys::ns::Namespace;

/// Failures to look at a target's user namespace.
#[derive(Debug, thiserror::Error)]
pub enum UserNsError {
    /// A file of `/proc/PID` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The target exited.
    #[error(transparent)]
    Gone(#[from] JoinError),
}

/// A target's user namespace, other than ours.
pub struct UserNs {
    file: File,
    root: (u32, u32),
}

impl UserNs {
    /// The user namespace of the pinned target, or `None` when it is ours.
    pub fn of(pin: &Pin) -> Result<Option<UserNs>, UserNsError> {
        let pid = pin.pid();
        let Some(root) = root_ids(&Procfs, pid)? else {
            return Ok(None);
        };
        let path = Namespace::User.proc_path(Some(pid));
        let file = File::open(&path).map_err(|source| UserNsError::Read { path, source })?;
        // The file opened above is the target's only if it is still the same process (and
        // so in the namespace whose ids were read).
        if !pin.is_alive() {
            return Err(JoinError::Gone(pid).into());
        }
        Ok(Some(UserNs { file, root }))
    }

    /// The namespace fd (`/proc/PID/ns/user`), for `mount_setattr(MOUNT_ATTR_IDMAP)`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The host uid and gid of the namespace's root.
    pub fn root_ids(&self) -> (u32, u32) {
        self.root
    }
}

/// The host uid and gid of the root of process `pid`'s user namespace, or `None` when that
/// namespace is ours. A namespace that does not map 0 has no root to act as: host root's
/// ids stand for it (files created there then fail as they would without a user
/// namespace).
pub fn root_ids(kernel: &impl Kernel, pid: i32) -> Result<Option<(u32, u32)>, UserNsError> {
    let read_err = |path: PathBuf| move |source| UserNsError::Read { path, source };
    let theirs = kernel
        .namespace(Namespace::User, Some(pid))
        .map_err(read_err(Namespace::User.proc_path(Some(pid))))?;
    if kernel.namespace(Namespace::User, None).ok() == Some(theirs) {
        return Ok(None);
    }
    let map = |which: IdMap| {
        kernel
            .id_map(pid, which)
            .map(|text| host_id_of_root(&text).unwrap_or(0))
            .map_err(read_err(PathBuf::from(format!(
                "/proc/{pid}/{}",
                which.file_name()
            ))))
    };
    Ok(Some((map(IdMap::Uid)?, map(IdMap::Gid)?)))
}

/// One line of a `/proc/PID/uid_map` (or `gid_map`): `count` ids from `inside` in the
/// namespace are the ids from `outside` in its parent (`user_namespaces(7)`).
struct IdRange {
    inside: u64,
    outside: u64,
    count: u64,
}

/// The lines of a `uid_map` or `gid_map` text, `INSIDE OUTSIDE COUNT`; lines that are not
/// three numbers are passed over.
fn id_ranges(map: &str) -> impl Iterator<Item = IdRange> + '_ {
    map.lines().filter_map(|line| {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [inside, outside, count] = fields.as_slice() else {
            return None;
        };
        Some(IdRange {
            inside: *inside,
            outside: *outside,
            count: *count,
        })
    })
}

/// The host id that id 0 maps to in a `/proc/PID/uid_map` (or `gid_map`) text.
pub fn host_id_of_root(map: &str) -> Option<u32> {
    id_ranges(map).find_map(|r| {
        (r.inside == 0 && r.count > 0)
            .then(|| u32::try_from(r.outside).ok())
            .flatten()
    })
}

/// Maps host id `id` into a user namespace through its `uid_map`/`gid_map` text.
pub fn to_namespace(id: u32, map: &str) -> Option<u32> {
    let id = u64::from(id);
    id_ranges(map).find_map(|r| {
        (id >= r.outside && id - r.outside < r.count)
            .then(|| u32::try_from(r.inside + (id - r.outside)).ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_of_a_map() {
        assert_eq!(
            host_id_of_root("         0 2147483647       1024\n"),
            Some(2_147_483_647)
        );
        assert_eq!(host_id_of_root("1000 100000 65536\n0 1000 1\n"), Some(1000));
        // The initial namespace maps everything to itself.
        assert_eq!(host_id_of_root("0 0 4294967295\n"), Some(0));
        assert_eq!(host_id_of_root("1 2000 10\n"), None);
        assert_eq!(host_id_of_root("junk\n"), None);
    }

    use crate::kernel::fake::{FakeKernel, FakeProcess};

    #[test]
    fn a_shared_user_namespace_has_no_ids_to_take() {
        let process = FakeProcess::container().sharing(Namespace::User);
        let k = FakeKernel::with(9, process);
        assert_eq!(root_ids(&k, 9).expect("ids"), None);
    }

    #[test]
    fn a_remapped_root_is_found_in_both_maps() {
        let mut process = FakeProcess::container();
        process.maps.insert(IdMap::Uid, "0 100000 65536\n".into());
        process.maps.insert(IdMap::Gid, "0 200000 65536\n".into());
        let k = FakeKernel::with(9, process);
        assert_eq!(root_ids(&k, 9).expect("ids"), Some((100_000, 200_000)));
    }

    #[test]
    fn a_namespace_without_root_keeps_host_roots_ids() {
        let mut process = FakeProcess::container();
        process.maps.insert(IdMap::Uid, "1000 1000 1\n".into());
        let k = FakeKernel::with(9, process);
        assert_eq!(root_ids(&k, 9).expect("ids"), Some((0, 0)));
    }

    #[test]
    fn an_unreadable_map_names_the_file() {
        let mut process = FakeProcess::container();
        process.maps.remove(&IdMap::Gid);
        let k = FakeKernel::with(9, process);
        let err = root_ids(&k, 9).expect_err("no gid_map");
        assert!(err.to_string().contains("/proc/9/gid_map"), "{err}");
        let gone = root_ids(&FakeKernel::default(), 9).expect_err("gone");
        assert!(gone.to_string().contains("/proc/9/ns/user"), "{gone}");
    }

    #[test]
    fn host_ids_map_into_a_namespace_range_by_range() {
        let map = "0 100000 1000\n1000 5000 10\n";
        assert_eq!(to_namespace(100_999, map), Some(999));
        assert_eq!(to_namespace(101_000, map), None);
        assert_eq!(to_namespace(5009, map), Some(1009));
        assert_eq!(to_namespace(4999, map), None);
    }
}
