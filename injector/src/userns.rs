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
use crate::sys::ns::{self, Namespace};

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
        let read_err = |path: PathBuf| move |source| UserNsError::Read { path, source };
        let path = Namespace::User.proc_path(Some(pid));
        let theirs = ns::identity(Namespace::User, Some(pid)).map_err(read_err(path.clone()))?;
        if ns::identity(Namespace::User, None).ok() == Some(theirs) {
            return Ok(None);
        }
        let file = File::open(&path).map_err(read_err(path))?;
        let map = |name: &str| {
            let path = PathBuf::from(format!("/proc/{pid}/{name}"));
            std::fs::read_to_string(&path)
                .map(|text| host_id_of_root(&text))
                .map_err(read_err(path))
        };
        // A namespace that does not map 0 has no root to act as: keep host root's ids (files
        // created there then fail as they would without a user namespace).
        let root = (map("uid_map")?.unwrap_or(0), map("gid_map")?.unwrap_or(0));
        // The files opened above are the target's only if it is still the same process.
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
}
