//! The image file: which one, whether it is usable, and getting it onto a loop device and
//! mounted (detached) for a child to place.

use std::fs::File;
use std::path::{Path, PathBuf};

use cartimage::detect::{self, DetectError, Detected};

use crate::loopdev::{LoopDevice, LoopError};
use crate::mount::{DetachedMount, ImageMount, MountError};
use crate::sys::mount_api;
use crate::userns::UserNs;

/// The image used when none is given and `$CARTINJECT_IMAGE` is unset.
pub const DEFAULT_IMAGE: &str = "./crashcart.img";

/// Failures between the image file and a mounted filesystem.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file is not a usable image.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// No loop device.
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// The kernel refused the filesystem.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The image does not match what lies beside it, or its signature.
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
    /// flock failed.
    #[error("cannot lock image {path}: {source}")]
    Lock {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The image to use: the argument, else `$CARTINJECT_IMAGE`, else `./crashcart.img`.
pub fn choose(arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("CARTINJECT_IMAGE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE))
}

/// An image file, open and checked.
pub struct Image {
    path: PathBuf,
    file: File,
    detected: Detected,
    verified: crate::verify::Verified,
}

/// What [`Image::mount`] did: steps for `-v`, and warnings the user must always see.
#[derive(Debug, Default)]
pub struct MountNotes {
    /// Each step taken.
    pub steps: Vec<String>,
    /// What works less well than it should (the image's files owned by nobody, say).
    pub warnings: Vec<String>,
}

impl MountNotes {
    /// Says them on stderr: the steps with `-v` (`verbose`), the warnings always.
    pub fn show(&self, verbose: bool) {
        if verbose {
            for step in &self.steps {
                eprintln!("cartinject: {step}");
            }
        }
        for warning in &self.warnings {
            eprintln!("cartinject: warning: {warning}");
        }
    }
}

/// An exclusive `flock` on the image, so that concurrent cartinjects share one loop device
/// and do not mount twice; released on drop.
pub struct ImageLock<'a>(&'a File);

impl Drop for ImageLock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Image {
    /// Opens `path`, checks what it holds (see [`cartimage::detect`]) and that it is the image
    /// that was built (and signed), against what lies beside it (see [`crate::verify`]).
    pub fn open(path: &Path) -> Result<Image, ImageError> {
        let (file, detected) = detect::open(path)?;
        let verified = crate::verify::check(path, &file, crate::verify::policy())?;
        Ok(Image {
            path: path.to_owned(),
            file,
            detected,
            verified,
        })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Takes the image's lock.
    pub fn lock(&self) -> Result<ImageLock<'_>, ImageError> {
        self.file.lock().map_err(|source| ImageError::Lock {
            path: self.path.clone(),
            source,
        })?;
        Ok(ImageLock(&self.file))
    }

    /// Attaches (or reuses) a loop device and mounts it detached; with `legacy`, or on a
    /// kernel without the new mount API, returns the held loop device for `mount(2)`
    /// instead. For a target in a user namespace of its own (`userns`), the detached mount
    /// is idmapped to it, so the image's files belong to the container's root there; where
    /// the kernel cannot do that, a warning says so and the mount is used as it is. Callers
    /// hold [`Image::lock`].
    pub fn mount(
        &self,
        legacy: bool,
        userns: Option<&UserNs>,
    ) -> Result<(ImageMount, MountNotes), ImageError> {
        let mut notes = MountNotes::default();
        // What Image::open verified (or could not), said with the mount's own notes so that an
        // image refused later says only why.
        notes.steps.extend(self.verified.steps.iter().cloned());
        notes.warnings.extend(self.verified.notice.iter().cloned());
        let device = LoopDevice::attach_or_reuse(
            &self.file,
            &self.path,
            self.detected.offset,
            self.detected.size,
        )?;
        let part = self
            .detected
            .partition
            .as_ref()
            .map_or_else(String::new, |p| {
                format!(
                    " (GPT partition {} `{}`, bytes {}..{})",
                    p.number,
                    p.name,
                    self.detected.offset,
                    self.detected.offset + self.detected.size
                )
            });
        notes.steps.push(format!(
            "{} {} for {}{part}",
            if device.reused() {
                "reusing"
            } else {
                "attached"
            },
            device.path().display(),
            self.path.display()
        ));
        let fstype = self.detected.format.kernel_fstype();
        if !legacy {
            match DetachedMount::new(&device, fstype, &self.path) {
                Ok(detached) => {
                    notes
                        .steps
                        .push(format!("mounted {fstype} detached (fsopen/fsmount)"));
                    // The mount holds the device now; our fd can go.
                    drop(device);
                    if let Some(userns) = userns {
                        let (uid, gid) = userns.root_ids();
                        match mount_api::idmap(detached.fd(), userns.fd()) {
                            Ok(()) => notes.steps.push(format!(
                                "idmapped to the target's user namespace (its root is host uid {uid}, gid {gid})"
                            )),
                            Err(errno) => notes.warnings.push(format!(
                                "the kernel cannot idmap a {fstype} mount to the container's user namespace ({errno}): the image's files show as owned by nobody there, but can be read and run"
                            )),
                        }
                    }
                    return Ok((ImageMount::Detached(detached), notes));
                }
                Err(MountError::NoMountApi(_)) => {
                    notes
                        .steps
                        .push("no new mount API: falling back to mount(2)".into());
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            notes
                .steps
                .push("legacy mode: mount(2) from inside the namespace".into());
        }
        if userns.is_some() {
            notes.warnings.push(
                "mount(2) cannot idmap the image to the container's user namespace: its files show as owned by nobody there, but can be read and run".into(),
            );
        }
        Ok((ImageMount::Legacy { device, fstype }, notes))
    }
}
