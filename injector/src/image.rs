//! The image file: which one, whether it is usable, and getting it onto a loop device and
//! mounted (detached) for a child to place.
//!
//! [`Image::open`] opens the file once, without waiting (a FIFO put in its place cannot
//! hang cartinject), checks that only root can change it ([`trust`]), what it holds
//! ([`cartimage::detect`]) and that it is the image that was built ([`crate::verify`]), all
//! through that one descriptor; the loop device is then bound to the same inode.
//! [`Image::lock`] serialises cartinjects on the image, with a bounded, interruptible wait.

mod trust;

use std::fs::{File, TryLockError};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cartimage::detect::{self, DetectError, Detected};

use crate::child::EXIT_FAILURE;
use crate::features::KernelApi;
use crate::keep::{Keep, Kept};
use crate::loopdev::{Binding, LoopDevice, LoopError};
use crate::mount::{DetachedMount, ImageMount, MountError};
use crate::sys::{Errno, fd, mount_api, signal};
use crate::userns::UserNs;

pub use trust::TrustError;

/// The image used when none is given and `$CARTINJECT_IMAGE` is unset.
pub const DEFAULT_IMAGE: &str = "./crashcart.img";

/// How long [`Image::lock`] waits for a lock someone else holds, unless
/// [`LOCK_TIMEOUT_ENV`] says otherwise. Another cartinject holds it only while it attaches
/// and mounts the image (milliseconds); anything longer is a process that should not hold it.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// The variable that sets [`LOCK_TIMEOUT`], in seconds (`2`, `0.5`; `0`: try once).
pub const LOCK_TIMEOUT_ENV: &str = "CARTINJECT_LOCK_TIMEOUT";
/// The longest [`LOCK_TIMEOUT_ENV`] accepted: a day.
const LOCK_TIMEOUT_MAX: f64 = 86_400.0;
/// The first and the longest pause between two tries of the lock.
const LOCK_PAUSE: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(200));

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
    /// Someone but root could change the image (see [`trust`]).
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// flock failed.
    #[error("cannot lock image {path}: {source}")]
    Lock {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Someone else held the image's lock for longer than the limit.
    #[error(
        "image {path} is still locked by {holder} after {waited:.1?}: cartinject holds that lock only while it attaches the image, but anything that can open the file can take it (a container that has it bind-mounted, say); end that process, or wait longer with {LOCK_TIMEOUT_ENV}=SECONDS (nothing was attached)"
    )]
    LockTimeout {
        /// The image.
        path: PathBuf,
        /// `PID 123 (comm)` as `/proc/locks` tells, else `another process`.
        holder: String,
        /// How long cartinject waited.
        waited: Duration,
    },
    /// [`LOCK_TIMEOUT_ENV`] is not a number of seconds.
    #[error(
        "{LOCK_TIMEOUT_ENV}={value} is not a number of seconds from 0 to {LOCK_TIMEOUT_MAX}: give one such as 10 or 0.5"
    )]
    LockTimeoutValue {
        /// What it holds.
        value: String,
    },
    /// A stop signal came while cartinject waited for the lock.
    #[error("stopped by {} while waiting for the lock on image {path} (nothing was attached)", signal::name(*.signal))]
    Interrupted {
        /// The image.
        path: PathBuf,
        /// The signal.
        signal: i32,
    },
}

impl ImageError {
    /// The status cartinject exits with for this error: 128+N when signal N stopped it,
    /// else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            ImageError::Interrupted { signal, .. } => 128 + signal,
            _ => EXIT_FAILURE,
        }
    }
}

/// How much of `/proc/locks` is read to name a lock's holder.
const LOCKS_MAX: u64 = 4 << 20;

/// Opens the image without waiting, and checks that it is a regular file, through the open
/// descriptor (a path checked first could be swapped before it is opened).
fn open_file(path: &Path) -> Result<File, DetectError> {
    let fd = fd::open_nonblocking(path).map_err(|errno| match errno {
        Errno::ENOENT => DetectError::Missing(path.to_owned()),
        Errno::ENXIO => DetectError::NotAFile(path.to_owned()),
        errno => DetectError::Io {
            path: path.to_owned(),
            source: errno.into(),
        },
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|source| DetectError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        return Err(DetectError::Directory(path.to_owned()));
    }
    if !meta.is_file() {
        return Err(DetectError::NotAFile(path.to_owned()));
    }
    Ok(file)
}

/// The lock wait's limit from [`LOCK_TIMEOUT_ENV`]'s value (`None` or empty: [`LOCK_TIMEOUT`]).
fn lock_timeout(value: Option<&std::ffi::OsStr>) -> Result<Duration, ImageError> {
    seconds_setting(value, LOCK_TIMEOUT, LOCK_TIMEOUT_MAX)
        .map_err(|value| ImageError::LockTimeoutValue { value })
}

/// A setting in seconds from the environment (`2`, `0.5`): `default` when unset or empty, else
/// the value when it is a number from 0 to `max`; `Err` is the value as given, escaped for a
/// message.
pub fn seconds_setting(
    value: Option<&std::ffi::OsStr>,
    default: Duration,
    max: f64,
) -> Result<Duration, String> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    let text = value.to_string_lossy();
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=max).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| crate::display::escape(text.as_bytes()))
}

/// The PIDs holding an `flock` on inode `ino` of device `major:minor`, from the text of
/// `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF`: the device in hex, the
/// inode in decimal; lines with `->` are waiters, not holders; `proc(5)`).
fn flock_holders(locks: &str, major: u64, minor: u64, ino: u64) -> Vec<i32> {
    locks
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            if fields.next()? != "FLOCK" {
                return None;
            }
            let pid: i32 = fields.nth(2)?.parse().ok()?;
            let mut id = fields.next()?.split(':');
            let m = u64::from_str_radix(id.next()?, 16).ok()?;
            let n = u64::from_str_radix(id.next()?, 16).ok()?;
            let i: u64 = id.next()?.parse().ok()?;
            ((m, n, i) == (major, minor, ino) && pid > 0).then_some(pid)
        })
        .collect()
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
    /// The note of a device kept for this state of the file (see [`crate::keep`]), or why
    /// there is none.
    keep: Result<Keep, String>,
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
    /// Opens `path`, checks that only root can change it (see [`trust`]), what it holds (see
    /// [`cartimage::detect`]) and that it is the image that was built (and signed), against
    /// what lies beside it (see [`crate::verify`]): all through the one descriptor that is
    /// later bound to the loop device.
    pub fn open(path: &Path, policy: &crate::verify::Policy) -> Result<Image, ImageError> {
        let file = open_file(path)?;
        let trusted = trust::check(path, &file)?;
        let len = file
            .metadata()
            .map_err(|source| DetectError::Io {
                path: path.to_owned(),
                source,
            })?
            .len();
        let detected = detect::detect(&file, len, path)?;
        // A record vouches for the file only while only root can change it and nobody has it
        // open for writing: both are known only now.
        let records = if trusted.no_writers {
            crate::verify::Records::At(Path::new(crate::verify::record::BASE))
        } else {
            crate::verify::Records::Off("whether a process has it open for writing is unknown")
        };
        // The state of the file whose bytes are checked next, as a kept device's note names it:
        // taken before the check, so that a change during or after it (which stamps the file
        // later) never finds this state's device.
        let keep = if trusted.no_writers {
            let meta = file.metadata().map_err(|source| DetectError::Io {
                path: path.to_owned(),
                source,
            })?;
            let binding = Binding::of(&meta, detected.offset, detected.size);
            crate::sys::inode::stamp(std::os::fd::AsFd::as_fd(&file))
                .map_err(|e| format!("statx: {e}"))
                .and_then(|stamp| Keep::open(&stamp, binding))
        } else {
            Err("whether a process has the image open for writing is unknown".into())
        };
        let mut verified = crate::verify::check(path, &file, policy, records)?;
        verified.steps.insert(0, trusted.note);
        Ok(Image {
            path: path.to_owned(),
            file,
            detected,
            verified,
            keep,
        })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The arch the manifest beside it names, when one does (see [`crate::arch`]).
    pub fn arch(&self) -> Option<&str> {
        self.verified.arch.as_deref()
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Takes the image's lock, waiting at most [`LOCK_TIMEOUT`] (or [`LOCK_TIMEOUT_ENV`])
    /// for someone else to release it, and not at all once `interrupted` names a signal
    /// (the caller's pending SIGINT, SIGTERM, SIGHUP or SIGQUIT): [`ImageError::Interrupted`]
    /// then, whose [`ImageError::exit_code`] is 128+N.
    ///
    /// `flock(2)` without `LOCK_NB` would wait forever, and anything that can open the file
    /// can hold the lock: a container that has the image bind-mounted read-only, say. So the
    /// lock is tried without waiting, again after 20 ms, then after pauses growing to 200 ms.
    pub fn lock(&self, interrupted: &dyn Fn() -> Option<i32>) -> Result<ImageLock<'_>, ImageError> {
        let limit = lock_timeout(std::env::var_os(LOCK_TIMEOUT_ENV).as_deref())?;
        self.lock_within(limit, interrupted)
    }

    /// [`Image::lock`] with the limit given.
    fn lock_within(
        &self,
        limit: Duration,
        interrupted: &dyn Fn() -> Option<i32>,
    ) -> Result<ImageLock<'_>, ImageError> {
        let start = Instant::now();
        let mut pause = LOCK_PAUSE.0;
        loop {
            match self.file.try_lock() {
                Ok(()) => return Ok(ImageLock(&self.file)),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(source)) => {
                    return Err(ImageError::Lock {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
            if let Some(signal) = interrupted() {
                return Err(ImageError::Interrupted {
                    path: self.path.clone(),
                    signal,
                });
            }
            let waited = start.elapsed();
            if waited >= limit {
                return Err(ImageError::LockTimeout {
                    path: self.path.clone(),
                    holder: self.lock_holder(),
                    waited,
                });
            }
            std::thread::sleep(pause.min(limit - waited));
            pause = (pause * 2).min(LOCK_PAUSE.1);
        }
    }

    /// Who holds the image's `flock`, as `/proc/locks` tells: `PID 123 (name)`, the name
    /// escaped (a process in a container names itself), else `another process`.
    fn lock_holder(&self) -> String {
        let Ok(meta) = self.file.metadata() else {
            return "another process".into();
        };
        let dev = meta.dev();
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        let mut text = String::new();
        // Bounded: anything that can open a file can add lines to /proc/locks.
        let _ = File::open("/proc/locks").and_then(|f| f.take(LOCKS_MAX).read_to_string(&mut text));
        let holders = flock_holders(&text, major, minor, meta.ino());
        match holders.first() {
            Some(&pid) => {
                let mut comm = String::new();
                let _ = File::open(format!("/proc/{pid}/comm"))
                    .and_then(|f| f.take(64).read_to_string(&mut comm));
                let comm = comm.trim_end_matches('\n');
                if comm.is_empty() {
                    format!("PID {pid}")
                } else {
                    format!("PID {pid} ({})", crate::display::escape(comm))
                }
            }
            None => "another process".into(),
        }
    }

    /// Attaches (or reuses) a loop device and mounts it detached; with [`KernelApi::Legacy`], or on a
    /// kernel without the new mount API, returns the held loop device for `mount(2)`
    /// instead. For a target in a user namespace of its own (`userns`), the detached mount
    /// is idmapped to it, so the image's files belong to the container's root there; where
    /// the kernel cannot do that, a warning says so and the mount is used as it is. Callers
    /// hold [`Image::lock`].
    pub fn mount(
        &self,
        api: KernelApi,
        userns: Option<&UserNs>,
    ) -> Result<(ImageMount, MountNotes), ImageError> {
        self.mount_keeping(api, userns, false)
            .map(|(mount, notes, _)| (mount, notes))
    }

    /// [`Image::mount`], and with `keep`, what a keeper needs to hold the device once the
    /// session ends (see [`crate::keep`]): only with the new mount API, for a file whose state
    /// can be noted.
    pub fn mount_keeping(
        &self,
        api: KernelApi,
        userns: Option<&UserNs>,
        keep: bool,
    ) -> Result<(ImageMount, MountNotes, Option<Kept>), ImageError> {
        let mut notes = MountNotes::default();
        // What Image::open verified (or could not), said with the mount's own notes so that an
        // image refused later says only why.
        notes.steps.extend(self.verified.steps.iter().cloned());
        notes.warnings.extend(self.verified.notice.iter().cloned());
        notes
            .warnings
            .extend(self.verified.warnings.iter().cloned());
        let device = self.device(&mut notes)?;
        let fstype = self.detected.format.kernel_fstype();
        if api.mount_api() {
            match DetachedMount::new(&device, fstype, &self.path) {
                Ok(detached) => {
                    notes
                        .steps
                        .push(format!("mounted {fstype} detached (fsopen/fsmount)"));
                    let kept = if keep {
                        self.kept(&device, &detached, &mut notes)
                    } else {
                        None
                    };
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
                    return Ok((ImageMount::Detached(detached), notes, kept));
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
        Ok((ImageMount::Legacy { device, fstype }, notes, None))
    }

    /// The device cartinject kept for this very state of the file (see [`crate::keep`]), or a
    /// new one, noted for the sessions after this one.
    fn device(&self, notes: &mut MountNotes) -> Result<LoopDevice, ImageError> {
        let found = match &self.keep {
            Ok(keep) => keep.find(),
            Err(why) => Err(format!("no device can be kept for this image: {why}")),
        };
        let device = match found {
            Ok(device) => device,
            Err(why) => {
                notes.steps.push(why);
                let device = LoopDevice::attach(
                    &self.file,
                    &self.path,
                    self.detected.offset,
                    self.detected.size,
                )?;
                if let Ok(keep) = &self.keep
                    && let Err(why) = keep.write(&device)
                {
                    notes.steps.push(format!("cannot note the device: {why}"));
                }
                device
            }
        };
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
        Ok(device)
    }

    /// A second mount of `detached`'s filesystem, not idmapped and attached nowhere, for a
    /// keeper to hold: `None` (and why, for `-v`) when there can be none.
    fn kept(
        &self,
        device: &LoopDevice,
        detached: &DetachedMount,
        notes: &mut MountNotes,
    ) -> Option<Kept> {
        let keep = self.keep.as_ref().ok()?;
        let kept = mount_api::clone_tree(detached.fd(), std::ffi::OsStr::new(""))
            .map_err(|errno| format!("cannot clone the mount for a keeper: {errno}"))
            .and_then(|mount| keep.kept(device, mount));
        kept.map_err(|why| notes.steps.push(why)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_names_the_holder_not_the_waiters() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 777 fd:01:1234 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 99 fd:01:1234 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 5 fd:01:999 0 EOF\n\
                    4: OFDLCK ADVISORY  READ  -1 00:06:1 0 EOF\n";
        assert_eq!(flock_holders(text, 0xfd, 1, 1234), vec![4242]);
        assert_eq!(flock_holders(text, 0xfd, 1, 4), Vec::<i32>::new());
        assert_eq!(flock_holders("garbage\n\n", 1, 1, 1), Vec::<i32>::new());
    }

    #[test]
    fn the_lock_timeout_is_seconds() {
        assert_eq!(lock_timeout(None).unwrap(), LOCK_TIMEOUT);
        assert_eq!(lock_timeout(Some("".as_ref())).unwrap(), LOCK_TIMEOUT);
        assert_eq!(
            lock_timeout(Some("2".as_ref())).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            lock_timeout(Some("0.5".as_ref())).unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["-1", "x", "1e9", "NaN", "inf"] {
            let e = lock_timeout(Some(bad.as_ref())).unwrap_err();
            assert!(e.to_string().contains("not a number of seconds"), "{e}");
        }
    }

    /// A lock held through another open file description: bounded wait, then the holder;
    /// a stop signal ends the wait at once.
    #[test]
    fn a_held_lock_is_waited_for_within_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, b"x").unwrap();
        let image = Image {
            path: path.clone(),
            file: File::open(&path).unwrap(),
            detected: Detected {
                format: cartimage::detect::Format::Squashfs {
                    compression: "gzip",
                    block_size: 4096,
                },
                offset: 0,
                size: 1,
                partition: None,
            },
            verified: crate::verify::Verified::default(),
            keep: Err("not in this test".into()),
        };
        let holder = File::open(&path).unwrap();
        holder.lock().unwrap();
        let start = Instant::now();
        let e = image
            .lock_within(Duration::from_millis(300), &|| None)
            .err()
            .unwrap();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        let me = format!("is still locked by PID {} (", std::process::id());
        assert!(e.to_string().contains(&me), "{e}");
        let start = Instant::now();
        let e = image.lock(&|| Some(libc::SIGTERM)).err().unwrap();
        assert_eq!(e.exit_code(), 128 + libc::SIGTERM);
        assert!(e.to_string().contains("stopped by SIGTERM"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(1));
        holder.unlock().unwrap();
        let lock = image.lock(&|| None).unwrap();
        drop(lock);
        assert!(holder.try_lock().is_ok());
    }
}
