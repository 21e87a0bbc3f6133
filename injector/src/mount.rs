//! The image's filesystem, mounted but not yet attached anywhere.
//!
//! With the new mount API the filesystem is set up from the host and held as a detached
//! mount ([`DetachedMount`]); a child that has joined the target's mount namespace attaches
//! it with `move_mount`. Kernels without that API (before 5.2), or
//! `CARTINJECT_LEGACY_MOUNT=1`, get [`ImageMount::Legacy`]: the child mounts the loop
//! device with `mount(2)` from inside the namespace, naming it by its host path while its
//! root briefly points at the host (see `place`), so no device node is made in the target.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::loopdev::LoopDevice;
use crate::sys::Errno;
use crate::sys::mount_api;

/// The kernel refused to mount the image.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The new mount API is not there (ENOSYS) — the caller falls back to `mount(2)`.
    #[error("the kernel has no new mount API (fsopen: {0})")]
    NoMountApi(Errno),
    /// The filesystem was refused, with the kernel's own words.
    #[error(
        "the kernel cannot mount image {image} as {fstype} ({step}: {errno}{detail}): the image is corrupt or not a filesystem the kernel supports; build it again"
    )]
    Refused {
        /// The image.
        image: PathBuf,
        /// The filesystem type.
        fstype: String,
        /// Which step failed.
        step: &'static str,
        /// Its errno.
        errno: Errno,
        /// The filesystem's log, `"; ext4: ..."`, or empty.
        detail: String,
    },
}

/// A filesystem mounted in no namespace yet (`fsmount(2)`'s fd). Dropping it before it is
/// attached unmounts it (the kernel does so when the last fd to a detached mount closes).
pub struct DetachedMount {
    fd: OwnedFd,
}

impl DetachedMount {
    /// Mounts `device` (whose image is `image`, for messages) as `fstype`, read-only,
    /// nosuid, nodev.
    pub fn new(device: &LoopDevice, fstype: &str, image: &Path) -> Result<Self, MountError> {
        mount_api::mount_readonly(fstype, device.path())
            .map(|fd| DetachedMount { fd })
            .map_err(|e| {
                if e.step == "fsopen" && e.errno == Errno::ENOSYS {
                    MountError::NoMountApi(e.errno)
                } else {
                    MountError::Refused {
                        image: image.to_owned(),
                        fstype: fstype.to_string(),
                        step: e.step,
                        errno: e.errno,
                        detail: if e.log.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", e.log)
                        },
                    }
                }
            })
    }

    /// The mount fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What a child gets to place the image with.
pub enum ImageMount {
    /// A detached mount to `move_mount` into place.
    Detached(DetachedMount),
    /// A held loop device to `mount(2)` from inside the namespace.
    Legacy {
        /// The device, held open until the mount holds it.
        device: LoopDevice,
        /// The filesystem type.
        fstype: &'static str,
    },
}
