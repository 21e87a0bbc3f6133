//! Loop devices for images: attach read-only with autoclear, or reuse a device cartinject
//! attached itself to the same state of the same file (see [`crate::keep`]), and map devices
//! back to their images through sysfs.
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
    number: u32,
    diskseq: u64,
    reused: bool,
}

/// What a device must be bound to for [`LoopDevice::reuse`]: a file's device and inode, at
/// an offset, with a size limit (0: to the end of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// `st_dev` of the image file.
    pub dev: u64,
    /// `st_ino` of the image file.
    pub ino: u64,
    /// Where the filesystem starts in the file.
    pub offset: u64,
    /// How many bytes of it the device serves (0: all, to the end).
    pub size_limit: u64,
}

impl Binding {
    /// The binding of `image`'s filesystem at `offset` for `size` bytes: a size limit only
    /// matters with an offset (a partition of a disk image), where it keeps the filesystem
    /// inside its partition; 0 means "to the end of the file".
    pub fn of(meta: &std::fs::Metadata, offset: u64, size: u64) -> Binding {
        Binding {
            dev: meta.dev(),
            ino: meta.ino(),
            offset,
            size_limit: if offset == 0 { 0 } else { size },
        }
    }
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

    /// The device number N of `/dev/loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The device's disk sequence number (see [`loopdev::disk_seq`]): which binding it is.
    pub fn diskseq(&self) -> u64 {
        self.diskseq
    }

    /// `/dev/loop{number}`, opened (so it cannot go away under us), if it is still the binding
    /// `diskseq` of `want` with read-only and autoclear set; `Err` says why not, for `-v`.
    ///
    /// The disk sequence number tells the very binding apart: a device detached and bound
    /// again, even to the same file, has another. The status is read after opening, so what
    /// was checked is what is held.
    pub fn reuse(number: u32, diskseq: u64, want: Binding) -> Result<LoopDevice, String> {
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device =
            open_device(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
        let status = loopdev::get_status(device.as_fd())
            .map_err(|e| format!("{} is not bound ({e})", path.display()))?;
        let seq = loopdev::disk_seq(device.as_fd())
            .map_err(|e| format!("cannot read the disk sequence of {}: {e}", path.display()))?;
        if seq != diskseq {
            return Err(format!(
                "{} was bound again since (disk sequence {seq}, not {diskseq})",
                path.display()
            ));
        }
        let have = Binding {
            dev: status.backing_dev,
            ino: status.backing_inode,
            offset: status.offset,
            size_limit: status.size_limit,
        };
        if have != want || status.flags & flags != flags {
            return Err(format!("{} serves something else", path.display()));
        }
        Ok(LoopDevice {
            _device: device,
            path,
            number,
            diskseq,
            reused: true,
        })
    }

    /// Attaches `image` (open, at byte `offset` for `size` bytes) read-only with autoclear.
    pub fn attach(
        image: &File,
        image_path: &Path,
        offset: u64,
        size: u64,
    ) -> Result<LoopDevice, LoopError> {
        let meta = image.metadata().map_err(|source| LoopError::Reopen {
            image: image_path.to_owned(),
            source,
        })?;
        let size_limit = Binding::of(&meta, offset, size).size_limit;
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
                    let diskseq =
                        loopdev::disk_seq(device.as_fd()).map_err(|errno| LoopError::Ioctl {
                            call: "BLKGETDISKSEQ",
                            device: path.clone(),
                            image: image_path.to_owned(),
                            errno,
                        })?;
                    return Ok(LoopDevice {
                        _device: device,
                        path,
                        number,
                        diskseq,
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
    fn sysfs_names_the_backing_files_of_bound_devices() {
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
        assert_eq!(
            backing_file(root, 7, 0),
            Some(PathBuf::from("/images/a.img"))
        );
        assert_eq!(backing_file(root, 7, 7), Some(PathBuf::from("/b c.img")));
        assert_eq!(backing_file(root, 7, 1), None);
        assert_eq!(backing_file(root, 7, 9), None);
    }
}
