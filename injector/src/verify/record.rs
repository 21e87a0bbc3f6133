//! Verification records: an image hashed (and its signature checked) once is not hashed again
//! while it provably has not changed.
//!
//! A record is a file in a directory only root can reach (`/run/cartinject/verified`, created `0700` and refused
//! unless it is root's `0700`, reached without following a symlink), one per inode and mount,
//! written atomically (a new file renamed over the old). It holds what identified the file
//! when its bytes were hashed, from `statx` of the very descriptor that was hashed and is then
//! attached ([`Stamp`]), and what those bytes were found to be:
//!
//! - the boot (`/proc/sys/kernel/random/boot_id`) and the mount's unique ID
//!   (`STATX_MNT_ID_UNIQUE`, never reused while the system runs): a filesystem unmounted and
//!   mounted again, or another filesystem that came to have the same device number (a USB
//!   stick in the same slot, a loop device reused), whose inodes' timestamps are whatever its
//!   disk says, never matches;
//! - device, inode, size, and the nanosecond mtime and ctime: every write or `utimensat`
//!   changes the ctime to the kernel's clock, and nothing sets it back;
//! - the image's sha256, and for a signature that verified, the sha256 of the key (all of it:
//!   a key ID is chosen by whoever makes the key) and of the `.minisig` file as read.
//!
//! A record is written only when the image's ctime is earlier than the coarse clock read
//! before the first byte was hashed, and the [`Stamp`] after the hash is the one before it:
//! a change in the same clock tick as the hash (which could leave the ctime as it was) can
//! then not go unseen, as in git's "racy clean" rule. The sidecars are not part of a record:
//! they are read and parsed every time (they are small) and compared with what the record
//! says the image's bytes are.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sys::inode::{self, Stamp};
use crate::sys::{Errno, resolve};

/// Records are kept in `cartinject/verified` below this: `/run`, which only root writes (and
/// which is emptied at boot where it is a tmpfs; elsewhere the boot ID in each record tells an
/// old one apart).
pub const BASE: &str = "/run";

/// The most a record may hold: a few hundred bytes are written.
const RECORD_MAX: u64 = 4096;

/// The most records kept: past that, writing one removes the others (each is one image that
/// was used; a record for a file since removed is never used again).
const RECORDS_MAX: usize = 1024;

/// Filesystems whose files change only through this kernel, which stamps every change: ext4,
/// XFS, btrfs, tmpfs, F2FS (`include/uapi/linux/magic.h`). On a network or FUSE filesystem
/// the content can change behind the kernel's back, so every session hashes.
const LOCAL_FILESYSTEMS: [(i64, &str); 5] = [
    (0xEF53, "ext4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0xF2F5_2010, "f2fs"),
];

/// A signature that verified: which key, and which `.minisig` (both as sha256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureSeen {
    /// sha256 of the key's base64.
    pub key: String,
    /// sha256 of the `.minisig` file's bytes.
    pub minisig: String,
}

impl SignatureSeen {
    /// What identifies a check of `minisig` (the file's bytes) with `key_base64`.
    pub fn new(key_base64: &str, minisig: &[u8]) -> SignatureSeen {
        SignatureSeen {
            key: hex::encode(Sha256::digest(key_base64.as_bytes())),
            minisig: hex::encode(Sha256::digest(minisig)),
        }
    }
}

/// One record: the file as it was when its bytes were hashed, and what they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    boot_id: String,
    mnt_id: u64,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
    /// The image's sha256, hex.
    pub sha256: String,
    /// The signature that verified, if one was checked.
    pub signature: Option<SignatureSeen>,
}

/// The records' directory, open and checked.
pub struct Store {
    dir: OwnedFd,
    shown: PathBuf,
    boot_id: String,
}

/// What [`Store::find`] found.
#[derive(Debug)]
pub enum Lookup {
    /// A record for the file as it is now.
    Hit(Record, PathBuf),
    /// None, or one for another state of the file: why, for `-v`.
    Miss(String),
}

/// Whether the file open as `fd`, stamped `stamp`, may have a record: on a local filesystem,
/// with a unique mount ID. `Err` says why not, for `-v`.
pub fn recordable(fd: std::os::fd::BorrowedFd<'_>, stamp: &Stamp) -> Result<(), String> {
    let magic = inode::fs_magic(fd).map_err(|e| format!("fstatfs: {e}"))?;
    if !LOCAL_FILESYSTEMS.iter().any(|&(m, _)| m == magic) {
        let names: Vec<&str> = LOCAL_FILESYSTEMS.iter().map(|&(_, n)| n).collect();
        return Err(format!(
            "its filesystem (type {magic:#x}) is not one of {}, whose files change only through this kernel",
            names.join(", ")
        ));
    }
    if stamp.mnt_id.is_none() {
        return Err("the kernel gives no unique mount ID (STATX_MNT_ID_UNIQUE, Linux 6.8)".into());
    }
    Ok(())
}

/// The record's name for a file: its mount, device and inode.
fn name_of(stamp: &Stamp) -> String {
    format!("{}-{}-{}", stamp.mnt_id.unwrap_or(0), stamp.dev, stamp.ino)
}

/// Opens the directory `name` in `parent`, creating it `0700` when missing, and checks that it
/// is root's and `0700` (`shown` names it in messages).
fn own_dir(parent: &OwnedFd, name: &str, shown: &Path) -> Result<OwnedFd, String> {
    match resolve::mkdir_at(parent.as_fd(), OsStr::new(name), 0o700) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(format!("cannot create {}: {e}", shown.display())),
    }
    let dir = resolve::open_dir(parent.as_fd(), Path::new(name)).map_err(|e| {
        format!(
            "cannot open {} (a symlink there is refused): {e}",
            shown.display()
        )
    })?;
    let (kind, uid, _, mode) = resolve::stat_at(dir.as_fd(), OsStr::new(""))
        .map_err(|e| format!("cannot stat {}: {e}", shown.display()))?;
    if kind != resolve::Kind::Dir || uid != 0 || mode != 0o700 {
        return Err(format!(
            "{} is not a directory of root's with mode 0700 (uid {uid}, mode {mode:04o}): remove it, cartinject makes it again",
            shown.display()
        ));
    }
    Ok(dir)
}

/// This boot's ID (`/proc/sys/kernel/random/boot_id`), read through the procfs below `root`
/// once per process: the verification records and the device notes both need it, and it
/// cannot change while the process runs.
fn boot_id(root: std::os::fd::BorrowedFd<'_>) -> Result<String, String> {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id.clone());
    }
    let proc = resolve::open_procfs(root).map_err(|e| format!("cannot open /proc: {e}"))?;
    let id = resolve::read_procfs_value(proc.as_fd(), Path::new("sys/kernel/random/boot_id"))
        .map_err(|e| format!("cannot read /proc/sys/kernel/random/boot_id: {e}"))?
        .trim()
        .to_string();
    if id.is_empty() {
        return Err("/proc/sys/kernel/random/boot_id is empty".into());
    }
    Ok(BOOT_ID.get_or_init(|| id).clone())
}

impl Store {
    /// Opens `base`/cartinject/verified, creating what is missing: `base` must be root's and
    /// not writable by group or others, and is reached without following a symlink; the two
    /// directories below it must be root's `0700`. `Err` says what is wrong.
    pub fn open_in(base: &Path) -> Result<Store, String> {
        Store::open_named(base, "verified")
    }

    /// [`Store::open_in`] for the directory `base`/cartinject/`sub` (`keep`, say: the same
    /// rules hold for every small root-only file cartinject keeps between runs).
    pub(crate) fn open_named(base: &Path, sub: &str) -> Result<Store, String> {
        let root = resolve::open_root().map_err(|e| format!("cannot open /: {e}"))?;
        let relative = base.strip_prefix("/").unwrap_or(base);
        let base_fd = resolve::open_dir(root.as_fd(), relative).map_err(|e| {
            format!(
                "cannot open {} without following a symlink: {e}",
                base.display()
            )
        })?;
        let (_, uid, _, mode) = resolve::stat_at(base_fd.as_fd(), OsStr::new(""))
            .map_err(|e| format!("cannot stat {}: {e}", base.display()))?;
        if uid != 0 || mode & 0o022 != 0 {
            return Err(format!(
                "{} is not root's, or is writable by group or others (uid {uid}, mode {mode:04o})",
                base.display()
            ));
        }
        let ours = own_dir(&base_fd, "cartinject", &base.join("cartinject"))?;
        let shown = base.join("cartinject").join(sub);
        let dir = own_dir(&ours, sub, &shown)?;
        let boot_id = boot_id(root.as_fd())?;
        Ok(Store {
            dir,
            shown,
            boot_id,
        })
    }

    /// A second handle on the same directory.
    pub(crate) fn try_clone(&self) -> Result<Store, String> {
        Ok(Store {
            dir: self
                .dir
                .try_clone()
                .map_err(|e| format!("cannot hold {}: {e}", self.shown.display()))?,
            shown: self.shown.clone(),
            boot_id: self.boot_id.clone(),
        })
    }

    /// This boot's ID (`/proc/sys/kernel/random/boot_id`).
    pub(crate) fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The directory, open.
    pub(crate) fn dir(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Where the file `name` is, for messages.
    pub(crate) fn shown(&self, name: &str) -> PathBuf {
        self.shown.join(name)
    }

    /// The file `name`, open, and its bytes: `Ok(None)` when there is none; `Err` (why, for
    /// `-v`) unless it is a small regular file of root's with mode `0600`.
    pub(crate) fn read_small(&self, name: &str) -> Result<Option<(OwnedFd, Vec<u8>)>, String> {
        let path = self.shown.join(name);
        let file = match resolve::open_file(self.dir.as_fd(), Path::new(name)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        };
        match inode::owner(file.as_fd()) {
            Ok((0, mode, size, true)) if mode & 0o077 == 0 && size <= RECORD_MAX => {}
            Ok(_) => {
                return Err(format!(
                    "{} is not a small regular file of root's with mode 0600: ignored",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("cannot stat {}: {e}", path.display())),
        }
        let mut buf = vec![0u8; usize::try_from(RECORD_MAX).unwrap_or(4096)];
        let mut len = 0;
        loop {
            match crate::sys::fd::read(file.as_fd(), &mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    if len == buf.len() {
                        break;
                    }
                }
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        buf.truncate(len);
        Ok(Some((file, buf)))
    }

    /// Writes `bytes` to the file `name` (mode `0600`) atomically: a new file renamed over
    /// the old, after removing the others once there are more than [`RECORDS_MAX`]. Returns
    /// its path.
    pub(crate) fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        let path = self.shown.join(name);
        self.prune(name);
        let temp = OsString::from(format!(".{name}.{}", std::process::id()));
        // A temporary file of ours left by a killed cartinject of the same PID.
        let _ = resolve::unlink_at(self.dir.as_fd(), &temp);
        resolve::write_file_at(self.dir.as_fd(), &temp, 0o600, bytes)
            .map_err(|e| format!("cannot write {}: {e}", self.shown.join(&temp).display()))?;
        resolve::rename_at(self.dir.as_fd(), &temp, OsStr::new(name)).map_err(|e| {
            let _ = resolve::unlink_at(self.dir.as_fd(), &temp);
            format!("cannot rename a new file to {}: {e}", path.display())
        })?;
        Ok(path)
    }

    /// The record of the file stamped `stamp`, if there is one and it is for the file as it is
    /// now (same boot, mount, device, inode, size, mtime and ctime).
    pub fn find(&self, stamp: &Stamp) -> Lookup {
        let name = name_of(stamp);
        let path = self.shown.join(&name);
        let buf = match self.read_small(&name) {
            Ok(Some((_, buf))) => buf,
            Ok(None) => return Lookup::Miss(format!("no record in {}", self.shown.display())),
            Err(why) => return Lookup::Miss(why),
        };
        let Ok(record) = serde_json::from_slice::<Record>(&buf) else {
            return Lookup::Miss(format!(
                "{} cannot be read as a record: ignored",
                path.display()
            ));
        };
        if record.boot_id != self.boot_id
            || Some(record.mnt_id) != stamp.mnt_id
            || (record.dev, record.ino) != (stamp.dev, stamp.ino)
            || record.size != stamp.size
            || record.mtime != stamp.mtime
            || record.ctime != stamp.ctime
        {
            return Lookup::Miss(format!(
                "the record {} is for another state of the file (its size, mtime or ctime changed since, or it is another mount or boot)",
                path.display()
            ));
        }
        Lookup::Hit(record, path)
    }

    /// Records that the file stamped `stamp` holds bytes whose sha256 is `sha256` (and which
    /// `signature` verified), replacing any record of it. Returns the record's path.
    pub fn keep(
        &self,
        stamp: &Stamp,
        sha256: &str,
        signature: Option<SignatureSeen>,
    ) -> Result<PathBuf, String> {
        let mnt_id = stamp
            .mnt_id
            .ok_or_else(|| "no unique mount ID".to_string())?;
        let record = Record {
            boot_id: self.boot_id.clone(),
            mnt_id,
            dev: stamp.dev,
            ino: stamp.ino,
            size: stamp.size,
            mtime: stamp.mtime,
            ctime: stamp.ctime,
            sha256: sha256.to_string(),
            signature,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        self.write_atomic(&name_of(stamp), &bytes)
    }

    /// Removes every record but `keep` once there are more than [`RECORDS_MAX`].
    fn prune(&self, keep: &str) {
        let Ok(names) = resolve::list(self.dir.as_fd()) else {
            return;
        };
        if names.len() < RECORDS_MAX {
            return;
        }
        for name in names.iter().filter(|n| n.as_os_str() != OsStr::new(keep)) {
            let _ = resolve::unlink_at(self.dir.as_fd(), name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        inode::example_stamp()
    }

    #[test]
    #[ignore = "needs root: tests/run runs it as root (cargo test -p cartinject --lib -- --ignored)"]
    fn a_record_matches_only_the_state_it_was_written_for() {
        let base = tempfile::tempdir().unwrap();
        let store = Store::open_in(base.path()).unwrap();
        let s = stamp();
        assert!(matches!(store.find(&s), Lookup::Miss(m) if m.contains("no record")));
        let sig = SignatureSeen::new("RWQ", b"sig");
        store.keep(&s, "ab", Some(sig.clone())).unwrap();
        match store.find(&s) {
            Lookup::Hit(r, _) => {
                assert_eq!(r.sha256, "ab");
                assert_eq!(r.signature, Some(sig));
            }
            Lookup::Miss(m) => panic!("{m}"),
        }
        for other in [
            Stamp {
                ctime: (1_700_000_001, 8),
                ..s
            },
            Stamp {
                mtime: (1_700_000_000, 6),
                ..s
            },
            Stamp { size: 4097, ..s },
        ] {
            assert!(matches!(store.find(&other), Lookup::Miss(m) if m.contains("another state")));
        }
        // Another mount or device is another record's name: none there.
        for other in [
            Stamp {
                mnt_id: Some(9),
                ..s
            },
            Stamp { dev: 7, ..s },
        ] {
            assert!(matches!(store.find(&other), Lookup::Miss(m) if m.contains("no record")));
        }
        // A record written in another boot is not believed.
        let again = Store {
            boot_id: "another".into(),
            ..Store::open_in(base.path()).unwrap()
        };
        assert!(matches!(again.find(&s), Lookup::Miss(m) if m.contains("another state")));
    }

    #[test]
    #[ignore = "needs root: tests/run runs it as root (cargo test -p cartinject --lib -- --ignored)"]
    fn the_directory_must_be_roots_0700() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        Store::open_in(base.path()).unwrap();
        let verified = base.path().join("cartinject/verified");
        assert_eq!(
            std::fs::metadata(&verified).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        std::fs::set_permissions(&verified, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Store::open_in(base.path()).err().unwrap();
        assert!(e.contains("mode 0700"), "{e}");
        std::fs::remove_dir(&verified).unwrap();
        std::os::unix::fs::symlink("/tmp", &verified).unwrap();
        let e = Store::open_in(base.path()).err().unwrap();
        assert!(e.contains("symlink"), "{e}");
        std::fs::remove_file(&verified).unwrap();
        std::os::unix::fs::chown(base.path().join("cartinject"), Some(1000), None).unwrap();
        let e = Store::open_in(base.path()).err().unwrap();
        assert!(e.contains("uid 1000"), "{e}");
    }
}
