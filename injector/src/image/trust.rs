//! Whether anyone but root could change an image's bytes between their check and their use.
//!
//! The kernel's filesystem drivers are not hardened against a hostile disk (an ext4 image
//! crafted to crash or corrupt the kernel is a known class of bug), which is why cartinject
//! checks an image's digest and signature before it attaches it ([`crate::verify`]). That
//! check only means something if the bytes the loop device later reads are the bytes that
//! were hashed: if anyone but root can write the file, or replace it, they can change it
//! after it was read. So before anything is read, [`check`] looks through the open file
//! descriptor (not the path, which could be swapped) at:
//!
//! 1. the file: a regular file owned by uid 0, not writable by others, writable by its group
//!    only when that group is 0 and no POSIX ACL lets another user or group write (with an
//!    access ACL, the group bits of the mode are the ACL's mask: `acl(5)`);
//! 2. the directories of its real path (`/proc/self/fd/N`, so `./crashcart.img ->
//!    images/net.img` is checked where it leads), from `/` down: owned by uid 0 and not
//!    writable by group or others, unless sticky (`/tmp`), where only a file's owner may
//!    rename or remove it (`inode(7)`, `S_ISVTX`); the last name must still lead to the open
//!    file afterwards;
//! 3. the filesystem: not FUSE, whose daemon (which any user may run, `fusermount3`) says
//!    what owner and mode a file has and what each read returns, so it could hand the hash
//!    one set of bytes and the loop device another;
//! 4. writers that already hold the file open (opened before its mode was tightened, or a
//!    build still writing it): a read lease is refused while any exists
//!    ([`crate::sys::fd::no_writers`]).
//!
//! Hard links need no check of their own: a second name in a directory someone else can
//! write lets them remove or rename that name, not write the inode, whose owner and mode
//! are checked in step 1 whatever name it is reached by.
//!
//! Root in a container that has the image bind-mounted writable is root for the file too:
//! bind it read-only (`-v IMG:/img:ro`), as a read-only mount refuses writes to everyone.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::sys::fd;

/// Where cartinject suggests keeping images that only root can change.
const SAFE_DIR: &str = "/var/lib/crashcart";

/// `S_ISVTX`: the sticky bit.
const STICKY: u32 = 0o1000;
/// Write by group.
const GROUP_WRITE: u32 = 0o020;
/// Write by others.
const OTHER_WRITE: u32 = 0o002;

/// Why an image is refused before it is read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Someone but root could change the file's bytes.
    #[error(
        "{image} can be changed by {who}: the kernel would mount bytes that were not verified; {fix} (nothing was attached)"
    )]
    Changeable {
        /// The image, as given.
        image: PathBuf,
        /// Who, and why.
        who: String,
        /// What to do.
        fix: String,
    },
    /// The file lies on a FUSE filesystem.
    #[error(
        "{image} is on a FUSE filesystem, whose daemon decides what its owner is and what every read returns: the kernel could mount bytes other than those verified; copy it into a root-owned directory on a local filesystem, such as /var/lib/crashcart (nothing was attached)"
    )]
    Fuse {
        /// The image, as given.
        image: PathBuf,
    },
    /// A process holds the file open for writing.
    #[error(
        "{image} is open for writing by another process (a build still writing it, or one that opened it before its owner or mode changed): the kernel would mount bytes that were not verified; end that process (`fuser -v {image}` names it) and try again (nothing was attached)"
    )]
    OpenForWriting {
        /// The image, as given.
        image: PathBuf,
    },
    /// The file's name moved or was removed while it was checked.
    #[error(
        "image {image} was removed, moved or replaced while cartinject checked it ({real}): try again (nothing was attached)"
    )]
    Moved {
        /// The image, as given.
        image: PathBuf,
        /// Its real path, as the kernel named it.
        real: String,
    },
    /// A step of the check failed.
    #[error("cannot check who can change image {image}: {step}: {source} (nothing was attached)")]
    Check {
        /// The image, as given.
        image: PathBuf,
        /// What was being done.
        step: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What an ownership check found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    /// Who could change it (`uid 1000 (its owner)`).
    who: String,
    /// The directory at fault, `None` for the file itself.
    dir: Option<PathBuf>,
}

/// The owner and mode of a file or directory, as `fstat`/`lstat` give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
}

impl From<&std::fs::Metadata> for Owner {
    fn from(m: &std::fs::Metadata) -> Owner {
        Owner {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
        }
    }
}

/// `system.posix_acl_access` (`acl(5)`; `include/uapi/linux/posix_acl_xattr.h`).
const ACL_XATTR: &CStr = c"system.posix_acl_access";
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_WRITE: u16 = 0x02;

/// Who an access ACL (`posix_acl_xattr_header` then 8-byte entries: tag, perm, id, little
/// endian) lets write besides uid 0 and gid 0: a named user or group entry with write, when
/// the mask allows write too.
fn acl_writers(xattr: &[u8]) -> Option<String> {
    let entries = xattr.get(4..)?.chunks_exact(8);
    let mut mask_writes = true;
    let mut named = None;
    for e in entries {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        match tag {
            ACL_MASK => mask_writes = perm & ACL_WRITE != 0,
            ACL_USER if perm & ACL_WRITE != 0 && id != 0 => {
                named.get_or_insert(format!("uid {id} (a POSIX ACL lets it write)"));
            }
            ACL_GROUP if perm & ACL_WRITE != 0 && id != 0 => {
                named.get_or_insert(format!("group {id} (a POSIX ACL lets it write)"));
            }
            _ => {}
        }
    }
    named.filter(|_| mask_writes)
}

/// What is wrong with the image file itself; `acl` reads its access ACL when asked (only
/// when the mode lets group 0 write, the one case where the mode alone does not answer).
fn file_finding(
    st: Owner,
    acl: impl FnOnce() -> Result<Option<Vec<u8>>, std::io::Error>,
) -> Result<Option<Finding>, std::io::Error> {
    let mode = st.mode & 0o7777;
    let who = if st.uid != 0 {
        Some(format!("uid {} (its owner)", st.uid))
    } else if st.mode & OTHER_WRITE != 0 {
        Some(format!(
            "any user (it is writable by others, mode {mode:04o})"
        ))
    } else if st.mode & GROUP_WRITE != 0 && st.gid != 0 {
        Some(format!(
            "group {} (it is group-writable, mode {mode:04o})",
            st.gid
        ))
    } else if st.mode & GROUP_WRITE != 0 {
        acl()?.as_deref().and_then(acl_writers)
    } else {
        None
    };
    Ok(who.map(|who| Finding { who, dir: None }))
}

/// What is wrong with `dir`, a directory on the image's real path.
fn dir_finding(dir: &Path, st: Owner) -> Option<Finding> {
    let sticky = st.mode & STICKY != 0;
    let shown = dir.display();
    let who = if st.uid != 0 {
        format!("uid {} (the owner of {shown})", st.uid)
    } else if st.mode & OTHER_WRITE != 0 && !sticky {
        format!("any user ({shown} is writable by others and not sticky)")
    } else if st.mode & GROUP_WRITE != 0 && !sticky {
        format!(
            "group {} ({shown} is group-writable and not sticky)",
            st.gid
        )
    } else {
        return None;
    };
    Some(Finding {
        who,
        dir: Some(dir.to_path_buf()),
    })
}

impl Finding {
    fn into_error(self, image: &Path) -> TrustError {
        let fix = match &self.dir {
            None => format!(
                "chown root and chmod go-w it, or copy it into a root-owned directory such as {SAFE_DIR}"
            ),
            Some(dir) => format!(
                "make {} root's and not writable by group or others, or copy the image into a root-owned directory such as {SAFE_DIR}",
                dir.display()
            ),
        };
        TrustError::Changeable {
            image: image.to_path_buf(),
            who: self.who,
            fix,
        }
    }
}

/// What [`check`] found: a line for `-v`, and whether the kernel said that no process has the
/// file open for writing (verification records are used only then: `crate::verify::record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    /// For `-v`.
    pub note: String,
    /// Whether a read lease showed that no process has it open for writing.
    pub no_writers: bool,
}

/// Checks that only root can change the image open as `file` (named `image` in messages):
/// see the module documentation.
pub fn check(image: &Path, file: &File) -> Result<Trusted, TrustError> {
    let failed = |step: &str| {
        let step = step.to_string();
        let image = image.to_path_buf();
        move |source: std::io::Error| TrustError::Check {
            image,
            step,
            source,
        }
    };
    if fd::is_fuse(file.as_fd()).map_err(|e| failed("fstatfs")(std::io::Error::from(e)))? {
        return Err(TrustError::Fuse {
            image: image.to_path_buf(),
        });
    }
    let meta = file.metadata().map_err(failed("fstat"))?;
    if let Some(finding) = file_finding(Owner::from(&meta), || {
        fd::xattr(file.as_fd(), ACL_XATTR).map_err(std::io::Error::from)
    })
    .map_err(failed("reading its ACL"))?
    {
        return Err(finding.into_error(image));
    }

    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
    let real = std::fs::read_link(&link).map_err(failed(&format!("readlink {link}")))?;
    let moved = || TrustError::Moved {
        image: image.to_path_buf(),
        real: real.display().to_string(),
    };
    // An unlinked file reads as "PATH (deleted)"; a file beyond our root has no absolute path.
    if meta.nlink() == 0 || !real.is_absolute() {
        return Err(moved());
    }
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    dirs.reverse();
    for dir in dirs {
        let st = std::fs::symlink_metadata(dir).map_err(|_| moved())?;
        // The path the kernel gave has no symlinks: one now means it was changed since.
        if !st.is_dir() {
            return Err(moved());
        }
        if let Some(finding) = dir_finding(dir, Owner::from(&st)) {
            return Err(finding.into_error(image));
        }
    }
    // The directories checked are the ones that hold this file.
    match std::fs::symlink_metadata(&real) {
        Ok(st) if (st.dev(), st.ino()) == (meta.dev(), meta.ino()) => {}
        _ => return Err(moved()),
    }

    let no_writers = fd::no_writers(file.as_fd());
    let writers = match no_writers {
        Ok(true) => "no process has it open for writing",
        Ok(false) => {
            return Err(TrustError::OpenForWriting {
                image: image.to_path_buf(),
            });
        }
        // No leases on this filesystem (or fs.leases-enable=0): the ownership checks stand.
        Err(_) => "whether a process has it open for writing is unknown (no leases here)",
    };
    Ok(Trusted {
        note: format!(
            "only root can change {} (owner, mode and every directory above it checked; {writers})",
            real.display()
        ),
        no_writers: no_writers == Ok(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: u32, gid: u32, mode: u32) -> Owner {
        Owner { uid, gid, mode }
    }

    fn no_acl() -> Result<Option<Vec<u8>>, std::io::Error> {
        Ok(None)
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn the_file_must_be_roots_and_written_by_root_only() {
        let f = |st| file_finding(st, no_acl).unwrap().map(|f| f.who);
        assert_eq!(f(owner(0, 0, 0o100644)), None);
        assert_eq!(f(owner(0, 0, 0o100444)), None);
        assert_eq!(f(owner(0, 0, 0o100664)), None);
        assert_eq!(f(owner(1000, 0, 0o100644)).unwrap(), "uid 1000 (its owner)");
        assert!(f(owner(0, 0, 0o100666)).unwrap().contains("any user"));
        assert!(f(owner(0, 27, 0o100664)).unwrap().starts_with("group 27"));
        assert_eq!(f(owner(0, 27, 0o100644)), None);
    }

    #[test]
    fn an_acl_that_lets_a_user_write_counts_when_the_mask_does() {
        let with = |a: Vec<u8>| {
            file_finding(owner(0, 0, 0o100664), move || Ok(Some(a)))
                .unwrap()
                .map(|f| f.who)
        };
        let user = acl(&[
            (1, 6, 0),
            (ACL_USER, 6, 1000),
            (4, 4, 0),
            (ACL_MASK, 6, 0),
            (0x20, 4, 0),
        ]);
        assert_eq!(with(user).unwrap(), "uid 1000 (a POSIX ACL lets it write)");
        let group = acl(&[(ACL_GROUP, 2, 50), (ACL_MASK, 7, 0)]);
        assert!(with(group).unwrap().starts_with("group 50"));
        let masked = acl(&[(ACL_USER, 6, 1000), (ACL_MASK, 4, 0)]);
        assert_eq!(with(masked), None);
        let root_only = acl(&[(ACL_USER, 6, 0), (ACL_MASK, 6, 0)]);
        assert_eq!(with(root_only), None);
        assert_eq!(with(vec![2, 0]), None);
    }

    #[test]
    fn directories_must_be_roots_and_closed_unless_sticky() {
        let d = |st| dir_finding(Path::new("/x"), st).map(|f| f.who);
        assert_eq!(d(owner(0, 0, 0o40755)), None);
        assert_eq!(d(owner(0, 0, 0o40700)), None);
        assert_eq!(d(owner(0, 0, 0o41777)), None, "/tmp");
        assert_eq!(
            d(owner(1000, 0, 0o40755)).unwrap(),
            "uid 1000 (the owner of /x)"
        );
        assert_eq!(
            d(owner(1000, 0, 0o41777)).unwrap(),
            "uid 1000 (the owner of /x)"
        );
        assert!(d(owner(0, 50, 0o40775)).unwrap().starts_with("group 50"));
        assert!(d(owner(0, 0, 0o40757)).unwrap().starts_with("any user"));
    }

    #[test]
    #[ignore = "needs root: tests/run runs it as root (cargo test -p cartinject --lib -- --ignored)"]
    fn a_root_owned_file_in_a_private_temporary_directory_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, b"x").unwrap();
        let file = File::open(&path).unwrap();
        let line = check(&path, &file).unwrap().note;
        assert!(line.contains("only root can change"), "{line}");
    }
}
