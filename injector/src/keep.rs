//! Keeping an image's loop device and filesystem for the next session, for a few seconds.
//!
//! Binding a loop device and mounting ext4 on it costs about as much as all the rest of a
//! session: a new device starts with an empty cache, and the kernel starts and stops the
//! device's and the filesystem's workers. So when a session ends, cartinject leaves the image
//! mounted, detached (in no mount namespace: visible nowhere, reachable by no container), in a
//! small process of its own named `cartinject-keep`, for [`LINGER`] (or
//! `$CARTINJECT_LINGER` seconds; `0`: not at all). A session that starts meanwhile reuses the
//! device (and the filesystem the kernel already has for it) and moves the deadline on. When
//! the deadline passes the keeper exits, and with autoclear the kernel detaches the device:
//! nothing is left once the last session is [`LINGER`] past. Killing the keeper leaks
//! nothing either: the kernel unmounts a detached mount when its last fd closes.
//!
//! What a session may reuse is decided by a note, never by looking for any device bound to
//! the file: `/run/cartinject/keep/NAME`, root's `0600` in root's `0700` directories (the
//! rules of [`crate::verify::record`]), where NAME is the state of the image file as `statx`
//! gave it when it was opened and checked (unique mount ID, device, inode, size, nanosecond
//! mtime and ctime) and where its filesystem starts. The note names the device cartinject
//! bound for that state and its disk sequence number, which the kernel never gives twice while
//! it runs. A device is reused only when the file is in that very state now (every write
//! changes the ctime), the device still has that sequence number (it was not detached and bound
//! again) and it serves that inode, read-only, from that offset: its bytes are the bytes that
//! were checked. A file changed in place and checked again gets a device of its own, never
//! the old one's cached blocks.
//!
//! The keeper holds the note's file with an exclusive `flock`: a session that cannot take the
//! lock knows a keeper lives and only moves the deadline (the note's mtime) on; one that can
//! starts a keeper.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::loopdev::{Binding, LoopDevice};
use crate::sys::inode::{self, Stamp};
use crate::sys::process::{self, Forked};
use crate::sys::{fd, resolve, signal};
use crate::verify::record::{BASE, Store};

/// How long the image stays attached after a session, unless [`LINGER_ENV`] says otherwise.
pub const LINGER: Duration = Duration::from_secs(5);
/// The variable that sets [`LINGER`], in seconds (`0`: release the device with the session).
pub const LINGER_ENV: &str = "CARTINJECT_LINGER";
/// The longest [`LINGER_ENV`] accepted: an hour.
const LINGER_MAX: u64 = 3600;
/// The keeper's name, as `ps` and `/proc/PID/comm` show it.
pub const KEEPER_NAME: &std::ffi::CStr = c"cartinject-keep";

/// The linger from [`LINGER_ENV`]'s value (`None` or empty: [`LINGER`]); `Err` is the line to
/// show.
pub fn linger(value: Option<&OsStr>) -> Result<Duration, String> {
    crate::image::seconds_setting(value, LINGER, LINGER_MAX as f64).map_err(|value| {
        format!(
            "{LINGER_ENV}={value} is not a number of seconds from 0 to {LINGER_MAX}: give one such as 5, or 0 to release the image's loop device with each session"
        )
    })
}

/// What a note holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Note {
    boot_id: String,
    /// N of `/dev/loopN`.
    device: u32,
    /// Its disk sequence number when cartinject bound it.
    diskseq: u64,
}

/// The note's name for a state of the image file and where its filesystem lies in it.
fn name_of(stamp: &Stamp, mnt_id: u64, binding: Binding) -> String {
    format!(
        "{mnt_id}-{}-{}-{}-{}.{:09}-{}.{:09}-{}-{}",
        stamp.dev,
        stamp.ino,
        stamp.size,
        stamp.mtime.0,
        stamp.mtime.1,
        stamp.ctime.0,
        stamp.ctime.1,
        binding.offset,
        binding.size_limit
    )
}

/// The note of one state of one image file.
pub struct Keep {
    store: Store,
    name: String,
    binding: Binding,
}

/// A device a session used, with a mount of its filesystem that is nobody else's, for a
/// keeper to hold once the session ends (see [`Kept::linger`]).
pub struct Kept {
    keep: Keep,
    device: (u32, u64),
    mount: OwnedFd,
}

impl Keep {
    /// The note for the image file in the state `stamp`, its filesystem at `binding`; `Err`
    /// says why there can be none, for `-v`.
    pub fn open(stamp: &Stamp, binding: Binding) -> Result<Keep, String> {
        let mnt_id = stamp
            .mnt_id
            .ok_or("the kernel gives no unique mount ID (STATX_MNT_ID_UNIQUE, Linux 6.8)")?;
        if (stamp.dev, stamp.ino) != (binding.dev, binding.ino) {
            return Err("the image's stamp and its binding are of two files".into());
        }
        let store = Store::open_named(Path::new(BASE), "keep")?;
        Ok(Keep {
            store,
            name: name_of(stamp, mnt_id, binding),
            binding,
        })
    }

    /// The note and its open file, if there is one for this boot.
    fn note(&self) -> Result<Option<(OwnedFd, Note)>, String> {
        let Some((file, bytes)) = self.store.read_small(&self.name)? else {
            return Ok(None);
        };
        let note = serde_json::from_slice::<Note>(&bytes).map_err(|_| {
            format!(
                "{} cannot be read as a note: ignored",
                self.store.shown(&self.name).display()
            )
        })?;
        Ok((note.boot_id == self.store.boot_id()).then_some((file, note)))
    }

    /// The device cartinject bound for this state of the file, held open, if it is still
    /// that binding (see [`LoopDevice::reuse`]); `Err` says why not, for `-v`.
    pub fn find(&self) -> Result<LoopDevice, String> {
        let Some((_, note)) = self.note()? else {
            return Err("no device kept for this state of the image".into());
        };
        LoopDevice::reuse(note.device, note.diskseq, self.binding)
    }

    /// Notes that `device` was bound for this state of the file.
    pub fn write(&self, device: &LoopDevice) -> Result<(), String> {
        let note = Note {
            boot_id: self.store.boot_id().to_string(),
            device: device.number(),
            diskseq: device.diskseq(),
        };
        let bytes = serde_json::to_vec(&note).map_err(|e| e.to_string())?;
        self.store.write_atomic(&self.name, &bytes).map(|_| ())
    }

    /// What a keeper of `device` needs: this note, and `mount`, a mount of the device's
    /// filesystem that is not attached anywhere.
    pub fn kept(&self, device: &LoopDevice, mount: OwnedFd) -> Result<Kept, String> {
        Ok(Kept {
            keep: Keep {
                store: self.store.try_clone()?,
                name: self.name.clone(),
                binding: self.binding,
            },
            device: (device.number(), device.diskseq()),
            mount,
        })
    }
}

impl Kept {
    /// Keeps the device for `linger` more: moves the note's deadline on, and starts a keeper
    /// when none holds the note. Returns what was done, for `-v`; `Err` says why nothing was
    /// (the note now names another device, say).
    pub fn linger(self, linger: Duration) -> Result<String, String> {
        let Kept {
            keep,
            device,
            mount,
        } = self;
        let shown = keep.store.shown(&keep.name);
        let Some((file, note)) = keep.note()? else {
            return Err(format!(
                "{} is gone: the device is not kept",
                shown.display()
            ));
        };
        if (note.device, note.diskseq) != device {
            return Err(format!(
                "{} names another device now: /dev/loop{} is not kept",
                shown.display(),
                device.0
            ));
        }
        let now = inode::coarse_realtime().map_err(|e| format!("clock_gettime: {e}"))?;
        let deadline = add(now, linger);
        inode::set_mtime(file.as_fd(), deadline)
            .map_err(|e| format!("cannot set the deadline on {}: {e}", shown.display()))?;
        let ours = inode::try_lock_exclusive(file.as_fd())
            .map_err(|e| format!("cannot lock {}: {e}", shown.display()))?;
        if !ours {
            return Ok(format!(
                "/dev/loop{} stays attached {linger:?} more (its {} holds it)",
                device.0,
                KEEPER_NAME.to_string_lossy()
            ));
        }
        let dir = keep
            .store
            .dir()
            .try_clone_to_owned()
            .map_err(|e| format!("cannot hold {}: {e}", shown.display()))?;
        let pid = spawn(file, mount, dir, &keep.name)?;
        Ok(format!(
            "/dev/loop{} stays attached for {linger:?} after the last session, held by {} (PID {pid})",
            device.0,
            KEEPER_NAME.to_string_lossy()
        ))
    }
}

/// `at` plus `span`.
fn add(at: inode::Instant, span: Duration) -> inode::Instant {
    let nanos = u64::from(at.1) + u64::from(span.subsec_nanos());
    let secs =
        at.0.saturating_add(i64::try_from(span.as_secs()).unwrap_or(i64::MAX));
    let secs = secs.saturating_add(i64::try_from(nanos / 1_000_000_000).unwrap_or(0));
    (secs, u32::try_from(nanos % 1_000_000_000).unwrap_or(0))
}

/// How long from `now` until `deadline` (zero when it has passed), at most [`LINGER_MAX`].
fn until(now: inode::Instant, deadline: inode::Instant) -> Duration {
    let now = i128::from(now.0) * 1_000_000_000 + i128::from(now.1);
    let deadline = i128::from(deadline.0) * 1_000_000_000 + i128::from(deadline.1);
    let nanos = u64::try_from((deadline - now).max(0)).unwrap_or(u64::MAX);
    Duration::from_nanos(nanos).min(Duration::from_secs(LINGER_MAX))
}

/// Starts the keeper: a grandchild in a session of its own, so that it outlives cartinject and
/// is nobody's to wait for. Returns its PID once it is set up (named, and holding nothing of
/// the caller's).
fn spawn(note: OwnedFd, mount: OwnedFd, dir: OwnedFd, name: &str) -> Result<i32, String> {
    let (ready_read, ready_write) = fd::pipe().map_err(|e| format!("pipe: {e}"))?;
    match process::fork().map_err(|e| format!("cannot fork a keeper: {e}"))? {
        Forked::Parent(child) => {
            drop(ready_write);
            let _ = process::wait(child);
            let mut buf = [0u8; 4];
            let pid = match fd::read(ready_read.as_fd(), &mut buf) {
                Ok(4) => i32::from_ne_bytes(buf),
                _ => return Err("the keeper did not start".into()),
            };
            // End of file: the keeper has closed its end too.
            let _ = fd::read(ready_read.as_fd(), &mut buf);
            Ok(pid)
        }
        Forked::Child => {
            drop(ready_read);
            let _ = process::new_session();
            match process::fork() {
                Ok(Forked::Child) => keeper(&note, &mount, &dir, ready_write, name),
                _ => process::exit_now(0),
            }
        }
    }
}

/// The keeper: holds `mount` (and so the device) until the note's deadline (its mtime) has
/// passed, then removes the note if it is still its own, and exits. Says its PID on `ready`
/// once it holds nothing else.
fn keeper(note: &OwnedFd, mount: &OwnedFd, dir: &OwnedFd, ready: OwnedFd, name: &str) -> ! {
    // Nothing of the caller's: a `$(cartinject ...)` must not wait for the keeper to close
    // its stdout.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for std in 0..=2 {
            let _ = process::dup_onto(null.as_fd(), std);
        }
    }
    let _ = fd::close_all_except(&[
        note.as_raw_fd(),
        mount.as_raw_fd(),
        dir.as_raw_fd(),
        ready.as_raw_fd(),
    ]);
    let _ = signal::set_mask(&signal::SignalSet::of(&[]));
    signal::reset_dispositions();
    let _ = process::set_name(KEEPER_NAME);
    let _ = fd::write_all(ready.as_fd(), &process::pid().to_ne_bytes());
    drop(ready);
    while let (Ok(stamp), Ok(now)) = (inode::stamp(note.as_fd()), inode::coarse_realtime()) {
        let left = until(now, stamp.mtime);
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left);
    }
    // A note renamed over ours since is another device's.
    if let (Ok(mine), Ok(named)) = (
        resolve::identity(note.as_fd()),
        resolve::open_file(dir.as_fd(), Path::new(name)).and_then(|f| resolve::identity(f.as_fd())),
    ) && mine == named
    {
        let _ = resolve::unlink_at(dir.as_fd(), OsStr::new(name));
    }
    process::exit_now(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_is_seconds_up_to_an_hour() {
        assert_eq!(linger(None).unwrap(), LINGER);
        assert_eq!(linger(Some("".as_ref())).unwrap(), LINGER);
        assert_eq!(linger(Some("0".as_ref())).unwrap(), Duration::ZERO);
        assert_eq!(
            linger(Some(" 2.5 ".as_ref())).unwrap(),
            Duration::from_millis(2500)
        );
        for bad in ["-1", "x", "3601", "NaN", "inf", "1e9"] {
            let e = linger(Some(bad.as_ref())).unwrap_err();
            assert!(e.contains("is not a number of seconds"), "{e}");
            assert!(e.contains(LINGER_ENV), "{e}");
        }
        let e = linger(Some("\x1b[2J".as_ref())).unwrap_err();
        assert!(!e.contains('\x1b'), "{e:?}");
    }

    #[test]
    fn deadlines_add_and_count_down_in_nanoseconds() {
        assert_eq!(add((10, 999_999_999), Duration::from_nanos(2)), (11, 1));
        assert_eq!(add((10, 5), Duration::from_secs(5)), (15, 5));
        assert_eq!(until((15, 5), (10, 0)), Duration::ZERO);
        assert_eq!(until((10, 0), (10, 500)), Duration::from_nanos(500));
        assert_eq!(
            until((0, 0), (i64::MAX, 0)),
            Duration::from_secs(LINGER_MAX)
        );
    }

    fn stamp() -> Stamp {
        inode::example_stamp()
    }

    /// Every part of the file's state, and where the filesystem lies, is in the name: a note
    /// for one state never answers for another.
    #[test]
    fn a_note_is_named_by_every_part_of_the_state() {
        let b = Binding {
            dev: 2049,
            ino: 12,
            offset: 0,
            size_limit: 0,
        };
        let base = name_of(&stamp(), 77, b);
        let mut seen = std::collections::HashSet::new();
        seen.insert(base.clone());
        let changes: [fn(&mut Stamp, &mut Binding, &mut u64); 9] = [
            |s, _, _| s.dev += 1,
            |s, _, _| s.ino += 1,
            |s, _, _| s.size += 1,
            |s, _, _| s.mtime.1 += 1,
            |s, _, _| s.ctime.1 += 1,
            |s, _, _| s.ctime.0 += 1,
            |_, b, _| b.offset += 512,
            |_, b, _| b.size_limit += 512,
            |_, _, m| *m += 1,
        ];
        for change in changes {
            let (mut s, mut b2, mut m) = (stamp(), b, 77);
            change(&mut s, &mut b2, &mut m);
            assert!(seen.insert(name_of(&s, m, b2)), "{:?}", name_of(&s, m, b2));
        }
        assert!(!base.contains('/'));
    }
}
