//! Loop devices for images: attach read-only with autoclear, or reuse the device that already
//! serves the same image file, and map devices back to their images through sysfs.
//!
//! Autoclear (`LO_FLAGS_AUTOCLEAR`) makes the kernel detach the device when its last opener
//! and its last mount are gone, so cartinject never has to remember to detach, and a killed
//! cartinject leaks nothing: the [`LoopDevice`] guard only holds the device open until the
//! filesystem is mounted, which then keeps it alive for exactly as long as it is used.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::mountinfo::MountEntry;
use crate::sys::Errno;
use crate::sys::loopdev::{self, LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY};

/// How often to retry when another program takes the free device first.
const ATTACH_ATTEMPTS: usize = 32;
/// The major number of loop devices (`Documentation/admin-guide/devices.txt`).
pub const LOOP_MAJOR: u32 = 7;

/// Errors attaching or finding loop devices.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// `/dev/loop-control` could not be opened.
    #[error(
        "cannot open /dev/loop-control: {0}: load the loop module (`modprobe loop`) or run on a host with loop devices"
    )]
    Control(io::Error),
    /// No free device could be had.
    #[error("no free loop device for {image} after {ATTACH_ATTEMPTS} attempts: {last}")]
    Exhausted {
        /// The image.
        image: PathBuf,
        /// The last error.
        last: Errno,
    },
    /// An ioctl or open failed.
    #[error("{call} on {device} failed for {image}: {errno}")]
    Ioctl {
        /// What was called.
        call: &'static str,
        /// The device.
        device: PathBuf,
        /// The image.
        image: PathBuf,
        /// Why.
        errno: Errno,
    },
    /// The image could not be reopened for the device.
    #[error("cannot reopen image {image}: {source}")]
    Reopen {
        /// The image.
        image: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// An attached loop device, held open. Dropping it closes the device; with autoclear set,
/// the kernel detaches it then unless a mount uses it.
pub struct LoopDevice {
    /// Held only to keep the device bound (and ours) until a mount holds it.
    _device: File,
    path: PathBuf,
    reused: bool,
}

impl LoopDevice {
    /// The device node, such as `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an existing device for the same image was reused.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Attaches `image` (open, at byte `offset` for `size` bytes) read-only with autoclear,
    /// or reuses a device already attached to the same file (same device and inode, offset
    /// and flags). The caller serialises concurrent callers on the same image (cartinject
    /// holds an `flock` on it) so that they share one device.
    pub fn attach_or_reuse(
        image: &File,
        image_path: &Path,
        offset: u64,
        size: u64,
    ) -> Result<LoopDevice, LoopError> {
        let meta = image.metadata().map_err(|source| LoopError::Reopen {
            image: image_path.to_owned(),
            source,
        })?;
        // 0 means "to the end of the file"; a size limit only matters with an offset (a
        // partition of a disk image), where it keeps the filesystem inside its partition.
        let size_limit = if offset == 0 { 0 } else { size };
        if let Some(found) = find_attached(meta.dev(), meta.ino(), offset, size_limit) {
            return Ok(found);
        }
        // A second open file description for the device to hold: the loop driver keeps a
        // reference to it for as long as the device is bound (so not the one that holds our
        // flock, which would stay locked as long as the device exists). /proc/self/fd/N is
        // the open file itself, not its path looked up again: the same inode that was
        // checked and hashed through `image`, which the comparison below makes sure of.
        let reopen_err = |source| LoopError::Reopen {
            image: image_path.to_owned(),
            source,
        };
        let backing =
            File::open(format!("/proc/self/fd/{}", image.as_raw_fd())).map_err(reopen_err)?;
        let reopened = backing.metadata().map_err(reopen_err)?;
        if (reopened.dev(), reopened.ino()) != (meta.dev(), meta.ino()) {
            return Err(reopen_err(io::Error::other(
                "/proc/self/fd gave another file (is /proc a real procfs?)",
            )));
        }
        let control = File::open("/dev/loop-control").map_err(LoopError::Control)?;
        let mut last = Errno::EBUSY;
        for _ in 0..ATTACH_ATTEMPTS {
            let number =
                loopdev::ctl_get_free(control.as_fd()).map_err(|errno| LoopError::Ioctl {
                    call: "LOOP_CTL_GET_FREE",
                    device: "/dev/loop-control".into(),
                    image: image_path.to_owned(),
                    errno,
                })?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = match open_device(&path) {
                Ok(device) => device,
                // The node may not exist yet, or the device may be going away: try again.
                Err(e) => {
                    last = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                    continue;
                }
            };
            match loopdev::configure(
                device.as_fd(),
                backing.as_fd(),
                LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                offset,
                size_limit,
            ) {
                Ok(()) => {
                    return Ok(LoopDevice {
                        _device: device,
                        path,
                        reused: false,
                    });
                }
                // Another program bound it between GET_FREE and CONFIGURE.
                Err(Errno::EBUSY) => last = Errno::EBUSY,
                Err(errno) => {
                    return Err(LoopError::Ioctl {
                        call: "LOOP_CONFIGURE",
                        device: path,
                        image: image_path.to_owned(),
                        errno,
                    });
                }
            }
        }
        Err(LoopError::Exhausted {
            image: image_path.to_owned(),
            last,
        })
    }
}

fn open_device(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// A device bound read-only with autoclear to the file `(dev, ino)` at `offset` with
/// `size_limit`, opened (so it cannot go away under us) and checked with
/// `LOOP_GET_STATUS64` after opening.
///
/// The backing paths sysfs prints are not looked up: whoever attached a device named that
/// path (in their own mount namespace, perhaps), and a `stat` of it could wait on whatever
/// filesystem it leads to here. The device's own status names the backing inode.
fn find_attached(dev: u64, ino: u64, offset: u64, size_limit: u64) -> Option<LoopDevice> {
    for (number, _) in attached_devices(Path::new("/sys")) {
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let Ok(device) = open_device(&path) else {
            continue;
        };
        let wanted = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
        match loopdev::get_status(device.as_fd()) {
            Ok(status)
                if status.backing_dev == dev
                    && status.backing_inode == ino
                    && status.offset == offset
                    && status.size_limit == size_limit
                    && status.flags & wanted == wanted =>
            {
                return Some(LoopDevice {
                    _device: device,
                    path,
                    reused: true,
                });
            }
            _ => continue,
        }
    }
    None
}

/// Every bound loop device and its backing file as sysfs names it
/// (`/sys/block/loopN/loop/backing_file`), under `sys_root` (normally `/sys`).
pub fn attached_devices(sys_root: &Path) -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir(sys_root.join("block")) else {
        return found;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(backing) = backing_file(sys_root, LOOP_MAJOR, number) {
            found.push((number, backing));
        }
    }
    found.sort();
    found
}

/// The backing file of block device `major:minor` if it is a bound loop device, from
/// `/sys/dev/block/MAJOR:MINOR/loop/backing_file`.
pub fn backing_file(sys_root: &Path, major: u32, minor: u32) -> Option<PathBuf> {
    let path = sys_root.join(format!("dev/block/{major}:{minor}/loop/backing_file"));
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim_end_matches('\n');
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// The device `mount` is of, as users know it (`/dev/loopN` for a loop device, else the
/// mount's source), and for a loop device the image file behind it ([`backing_file`]).
pub fn device_of(sys_root: &Path, mount: &MountEntry) -> (String, Option<PathBuf>) {
    if mount.major == LOOP_MAJOR {
        (
            format!("/dev/loop{}", mount.minor),
            backing_file(sys_root, mount.major, mount.minor),
        )
    } else {
        (mount.source.clone(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_fixture_maps_devices_to_files() {
        let sys = tempfile::tempdir().expect("temp dir");
        let root = sys.path();
        for (n, backing) in [
            (0u32, Some("/images/a.img\n")),
            (1, None),
            (7, Some("/b c.img\n")),
        ] {
            std::fs::create_dir_all(root.join(format!("block/loop{n}"))).expect("mkdir");
            let dev = root.join(format!("dev/block/7:{n}/loop"));
            std::fs::create_dir_all(&dev).expect("mkdir");
            if let Some(b) = backing {
                std::fs::write(dev.join("backing_file"), b).expect("write");
            }
        }
        std::fs::create_dir_all(root.join("block/sda")).expect("mkdir");
        assert_eq!(
            attached_devices(root),
            vec![
                (0, PathBuf::from("/images/a.img")),
                (7, PathBuf::from("/b c.img"))
            ]
        );
        assert_eq!(backing_file(root, 7, 1), None);
    }
}
