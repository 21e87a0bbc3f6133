//! Writing beneath a directory without following any link in it.
//!
//! A tree someone else laid out (a tarball being unpacked, a package output, the
//! staged image that several packages fill) may hold symlinks pointing anywhere,
//! and a path written through one lands wherever it points: the class of runc's
//! CVE-2021-30465 and Docker's `docker cp` CVE-2018-15664. A textual check of the
//! link's target cannot see this (`a -> .` and `esc -> a/a/../..` each look
//! harmless). So nothing here resolves a path by name: every operation starts
//! from the root's directory descriptor and walks one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)` (a symlink gives `ELOOP`, anything else but
//! a directory `ENOTDIR`), creates missing directories with `mkdirat`, and makes
//! the last component with `O_CREAT | O_EXCL | O_NOFOLLOW`, `symlinkat` or
//! `linkat` (which never follows). Paths hold only plain names (no `..`, no root),
//! so the walk is `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` done by hand,
//! on every kernel. A link on the way is an error naming it, never a hop.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Why a path beneath the root could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    /// A component on the way is a symlink: the path would go through it.
    #[error("{path} is a symlink, and nothing is written through a symlink")]
    Link {
        /// The symlink, relative to the root.
        path: PathBuf,
    },
    /// A component on the way exists and is not a directory.
    #[error("{path} is not a directory")]
    NotDir {
        /// The component, relative to the root.
        path: PathBuf,
    },
    /// The path exists already, as something that cannot be replaced.
    #[error("{path} already exists as a {kind}")]
    Exists {
        /// The path, relative to the root.
        path: PathBuf,
        /// What it is (`directory`, `file`, `symlink`).
        kind: &'static str,
    },
    /// The path is not a plain relative path (`..`, a root).
    #[error("{path:?} is not a plain relative path")]
    BadPath {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The path, absolute.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl From<BeneathError> for io::Error {
    fn from(e: BeneathError) -> io::Error {
        match e {
            BeneathError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// What a [`Stat`] describes, in words for messages.
pub fn kind_name(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::RegularFile => "file",
        _ => "special file",
    }
}

/// The kind of a [`Stat`].
pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// A directory to write beneath, held open.
#[derive(Debug)]
pub struct Beneath {
    fd: OwnedFd,
    root: PathBuf,
}

/// The plain names of `rel` (`.` dropped); an error for `..` or a root.
fn names(rel: &Path) -> Result<Vec<&OsStr>, BeneathError> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(BeneathError::BadPath {
                    path: rel.to_path_buf(),
                });
            }
        }
    }
    Ok(out)
}

fn joined(parts: &[&OsStr]) -> PathBuf {
    parts.iter().collect()
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Beneath {
    /// Opens `root` (which must be a directory) to write beneath it.
    pub fn open(root: &Path) -> Result<Beneath, BeneathError> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| BeneathError::Io {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Beneath {
            fd,
            root: root.to_path_buf(),
        })
    }

    /// The root's path (for messages).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(&self, rel: &Path, e: Errno) -> BeneathError {
        BeneathError::Io {
            path: self.root.join(rel),
            source: e.into(),
        }
    }

    /// Why `name` in `dir` (at `rel`) could not be opened as a directory.
    fn blocked(&self, dir: &OwnedFd, name: &OsStr, rel: PathBuf, e: Errno) -> BeneathError {
        if e == Errno::LOOP || e == Errno::NOTDIR {
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if file_type(&st) == FileType::Symlink => BeneathError::Link { path: rel },
                Ok(st) if file_type(&st) != FileType::Directory => {
                    BeneathError::NotDir { path: rel }
                }
                _ => self.io(&rel, e),
            }
        } else {
            self.io(&rel, e)
        }
    }

    /// Opens the directory of `parts` (all plain names), creating missing ones
    /// (mode 0755) when `create`; `Ok(None)` when one is missing and not created.
    fn walk(&self, parts: &[&OsStr], create: bool) -> Result<Option<OwnedFd>, BeneathError> {
        let mut cur = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| self.io(Path::new(""), e))?;
        for (i, name) in parts.iter().enumerate() {
            let rel = joined(&parts[..=i]);
            let next = match rustix::fs::openat(&cur, *name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, *name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io(&rel, e)),
                    }
                    rustix::fs::openat(&cur, *name, DIR_FLAGS, Mode::empty())
                        .map_err(|e| self.blocked(&cur, name, rel.clone(), e))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.blocked(&cur, name, rel, e)),
            };
            cur = next;
        }
        Ok(Some(cur))
    }

    /// The directory holding `rel` (created when `create`) and `rel`'s last name.
    fn parent<'a>(
        &self,
        rel: &'a Path,
        create: bool,
    ) -> Result<Option<(OwnedFd, &'a OsStr)>, BeneathError> {
        let parts = names(rel)?;
        let Some((last, dirs)) = parts.split_last() else {
            return Err(BeneathError::BadPath {
                path: rel.to_path_buf(),
            });
        };
        Ok(self.walk(dirs, create)?.map(|fd| (fd, *last)))
    }

    /// What is at `rel`, not following a link there; `None` when it (or a
    /// directory on the way) does not exist. A link on the way is an error.
    pub fn lstat(&self, rel: &Path) -> Result<Option<Stat>, BeneathError> {
        if names(rel)?.is_empty() {
            return rustix::fs::fstat(&self.fd)
                .map(Some)
                .map_err(|e| self.io(rel, e));
        }
        let Some((dir, name)) = self.parent(rel, false)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io(rel, e)),
        }
    }

    /// The target of the symlink at `rel`.
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf, BeneathError> {
        let Some((dir, name)) = self.parent(rel, false)? else {
            return Err(self.io(rel, Errno::NOENT));
        };
        let target = rustix::fs::readlinkat(&dir, name, Vec::new()).map_err(|e| self.io(rel, e))?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// Creates the directory `rel` and every missing one above it; an existing
    /// directory is fine, a link or anything else is an error.
    pub fn mkdir(&self, rel: &Path) -> Result<(), BeneathError> {
        let parts = names(rel)?;
        self.walk(&parts, true).map(|_| ())
    }

    /// Makes room for a new entry `name` in `dir`: an existing non-directory is
    /// removed when `replace`, else it is an error, as is a directory.
    fn clear(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        replace: bool,
    ) -> Result<(), BeneathError> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(rel, e)),
            Ok(st) if replace && file_type(&st) != FileType::Directory => {
                rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| self.io(rel, e))
            }
            Ok(st) => Err(BeneathError::Exists {
                path: rel.to_path_buf(),
                kind: kind_name(&st),
            }),
        }
    }

    /// Creates the file `rel` (mode `mode`), never through a link; an existing
    /// file or link there is replaced when `replace`.
    pub fn create_file(&self, rel: &Path, mode: u32, replace: bool) -> Result<File, BeneathError> {
        let Some((dir, name)) = self.parent(rel, true)? else {
            return Err(self.io(rel, Errno::NOENT));
        };
        self.clear(&dir, name, rel, replace)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(mode & 0o777)).map_err(
            |e| match e {
                Errno::EXIST => BeneathError::Exists {
                    path: rel.to_path_buf(),
                    kind: "file",
                },
                e => self.io(rel, e),
            },
        )?;
        // The umask narrowed the mode given to open: set it exactly.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777)).map_err(|e| self.io(rel, e))?;
        Ok(File::from(fd))
    }

    /// Creates the symlink `rel -> target`; an existing file or link there is
    /// replaced when `replace`.
    pub fn symlink(&self, rel: &Path, target: &Path, replace: bool) -> Result<(), BeneathError> {
        let Some((dir, name)) = self.parent(rel, true)? else {
            return Err(self.io(rel, Errno::NOENT));
        };
        self.clear(&dir, name, rel, replace)?;
        rustix::fs::symlinkat(target, &dir, name).map_err(|e| match e {
            Errno::EXIST => BeneathError::Exists {
                path: rel.to_path_buf(),
                kind: "file",
            },
            e => self.io(rel, e),
        })
    }

    /// Makes `rel` a second name of the existing file `existing` (both beneath
    /// the root; a link at `existing` is linked itself, never followed).
    pub fn hard_link(
        &self,
        existing: &Path,
        rel: &Path,
        replace: bool,
    ) -> Result<(), BeneathError> {
        let Some((from_dir, from_name)) = self.parent(existing, false)? else {
            return Err(self.io(existing, Errno::NOENT));
        };
        let Some((dir, name)) = self.parent(rel, true)? else {
            return Err(self.io(rel, Errno::NOENT));
        };
        self.clear(&dir, name, rel, replace)?;
        rustix::fs::linkat(&from_dir, from_name, &dir, name, AtFlags::empty())
            .map_err(|e| self.io(rel, e))
    }

    /// Sets the modification (and access) time of the open file `file`.
    pub fn set_mtime(file: &File, secs: i64) -> io::Result<()> {
        let t = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        rustix::fs::futimens(
            file,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
        )
        .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, symlink};

    #[test]
    fn writes_beneath_and_never_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let t = Beneath::open(&root).unwrap();
        t.create_file(Path::new("a/b/c"), 0o644, false)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(fs::read(root.join("a/b/c")).unwrap(), b"x");

        // A link to outside, and a link chain back up.
        symlink(&outside, root.join("out")).unwrap();
        symlink(".", root.join("up")).unwrap();
        for rel in ["out/f", "out/d/f", "up/f"] {
            let e = t.create_file(Path::new(rel), 0o644, true).unwrap_err();
            assert!(matches!(e, BeneathError::Link { .. }), "{rel}: {e}");
        }
        assert!(matches!(
            t.mkdir(Path::new("out/d")).unwrap_err(),
            BeneathError::Link { path } if path == Path::new("out")
        ));
        assert!(matches!(
            t.symlink(Path::new("out/l"), Path::new("x"), true)
                .unwrap_err(),
            BeneathError::Link { .. }
        ));
        assert!(matches!(
            t.hard_link(Path::new("a/b/c"), Path::new("out/h"), true)
                .unwrap_err(),
            BeneathError::Link { .. }
        ));
        assert!(matches!(
            t.lstat(Path::new("out/x")).unwrap_err(),
            BeneathError::Link { .. }
        ));
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

        // A file on the way is not a directory; `..` is refused.
        assert!(matches!(
            t.mkdir(Path::new("a/b/c/d")).unwrap_err(),
            BeneathError::NotDir { .. }
        ));
        assert!(matches!(
            t.mkdir(Path::new("a/../x")).unwrap_err(),
            BeneathError::BadPath { .. }
        ));

        // Replacing a link replaces the link, not what it points at.
        fs::write(outside.join("victim"), b"keep").unwrap();
        symlink(outside.join("victim"), root.join("v")).unwrap();
        assert!(matches!(
            t.create_file(Path::new("v"), 0o644, false).unwrap_err(),
            BeneathError::Exists {
                kind: "symlink",
                ..
            }
        ));
        t.create_file(Path::new("v"), 0o644, true)
            .unwrap()
            .write_all(b"new")
            .unwrap();
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(fs::read(root.join("v")).unwrap(), b"new");

        // Hard links are one inode.
        t.hard_link(Path::new("a/b/c"), Path::new("h/c2"), false)
            .unwrap();
        let m1 = fs::metadata(root.join("a/b/c")).unwrap();
        let m2 = fs::metadata(root.join("h/c2")).unwrap();
        assert_eq!(m1.ino(), m2.ino());
        assert_eq!(m1.nlink(), 2);
        assert_eq!(t.read_link(Path::new("up")).unwrap(), Path::new("."));
    }
}
