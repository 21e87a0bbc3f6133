//! Unpacking source and prebuilt tarballs, refusing anything that could escape,
//! within a budget.
//!
//! The compression (gzip, xz, bzip2, zstd, or none) is told by the file's magic
//! bytes, not its name. Every entry is checked before it is written: paths with
//! `..` or a root, hard links to outside or to anything but a file, device nodes
//! and FIFOs, and setuid/setgid bits are all refused with the entry's name. Every
//! write goes through [`crate::beneath`]: no entry is ever written through a
//! symlink, whether the tarball made it or not (the tar crate's own `unpack_in`
//! checks paths by text and canonicalises parents, which a later entry's link can
//! still subvert for a directory's mode; it is not used).
//!
//! **Bounds.** A few hundred KiB of zstd can hold gigabytes of zeros. The bytes
//! of files written and the number of entries are counted while streaming and
//! the unpacking stops at the first byte or entry past the package's
//! [`Limits`] (`max_unpacked_size`, default 4 GiB; `max_entries`, default
//! 200,000): a decompression bomb never reaches the disk beyond its limit, and
//! the caller's work directory (removed on error) is all it touched. Metadata
//! between two entries (pax headers, GNU long names, data of entries that carry
//! none, which the tar crate reads into memory or skips) is bounded too.
//!
//! **Verified where used.** [`unpack_package`] hashes the archive's bytes as they
//! are read and refuses the result if they are not the pinned sha256: a cached
//! source changed after it was fetched is never built from.
use std::cell::{Cell, RefCell};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::beneath::{Beneath, BeneathError, file_type};
use crate::plan::Package;

/// The default bound on the bytes of files an archive unpacks to (4 GiB).
pub const DEFAULT_MAX_UNPACKED_SIZE: u64 = 4 << 30;

/// The default bound on the number of entries of an archive.
pub const DEFAULT_MAX_ENTRIES: u64 = 200_000;

/// The most metadata read between two entries (pax headers, long names, the
/// unread data of an entry that should have none).
pub const MAX_METADATA: u64 = 1 << 20;

/// How much an archive may unpack to (`max_unpacked_size`, `max_entries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file content written, in total.
    pub max_bytes: u64,
    /// Entries (files, directories, links), in total.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: DEFAULT_MAX_UNPACKED_SIZE,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// A size in the units recipes use (`4G`, `512M`, `100K`, bytes).
pub fn size_text(n: u64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Which bound an archive went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `max_unpacked_size`.
    Size(u64),
    /// `max_entries`.
    Entries(u64),
    /// [`MAX_METADATA`] between two entries.
    Metadata,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Bound::Size(n) => write!(
                f,
                "it unpacks to more than {} (max_unpacked_size = \"{}\"; a decompression bomb?); if the archive is genuine, raise max_unpacked_size in its [[package]] table, e.g. max_unpacked_size = \"{}\"",
                crate::progress::human_bytes(n),
                size_text(n),
                size_text(n.saturating_mul(2))
            ),
            Bound::Entries(n) => write!(
                f,
                "it holds more than {n} entries (max_entries = {n}); if the archive is genuine, raise max_entries in its [[package]] table, e.g. max_entries = {}",
                n.saturating_mul(2)
            ),
            Bound::Metadata => write!(
                f,
                "more than {} of headers between two entries (a malformed or hostile archive)",
                crate::progress::human_bytes(MAX_METADATA)
            ),
        }
    }
}

/// Why a tarball could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive could not be read or written out.
    #[error("cannot unpack {archive}: {source}")]
    Io {
        /// The archive.
        archive: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An entry was refused.
    #[error("refusing to unpack {archive}: entry {entry:?} {reason}")]
    Refused {
        /// The archive.
        archive: PathBuf,
        /// The entry's path as stored.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The archive went past one of its limits; unpacking stopped there.
    #[error("refusing to unpack {archive}: {bound}")]
    Limit {
        /// The archive.
        archive: PathBuf,
        /// The bound it went past.
        bound: Bound,
    },
    /// The archive's bytes are not the pinned ones.
    #[error(
        "refusing to unpack {archive}: its sha256 is {actual}, not the pinned {expected}: the cached source changed after it was verified; build again to fetch it anew"
    )]
    Changed {
        /// The archive.
        archive: PathBuf,
        /// The pinned sha256.
        expected: String,
        /// What its bytes hash to.
        actual: String,
    },
}

/// The compression of a file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// bzip2 (`BZh`).
    Bzip2,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// Plain tar.
    None,
}

/// Tells the compression from the magic bytes at the start of `head`.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Hashes the archive's bytes as the decompressor reads them.
struct Hashing {
    file: File,
    hasher: Rc<RefCell<Sha256>>,
}

impl Read for Hashing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// Counts the decompressed stream between two entries (the metadata budget).
#[derive(Default)]
struct Meter {
    /// Whether the tar reader is between entries (reading headers).
    between: Cell<bool>,
    /// Bytes read since it started reading headers.
    read: Cell<u64>,
    /// Set when the metadata budget ran out.
    tripped: Cell<bool>,
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        let want = if m.between.get() {
            let left = MAX_METADATA.saturating_sub(m.read.get());
            if left == 0 {
                m.tripped.set(true);
                return Err(io::Error::other("metadata budget exhausted"));
            }
            buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))
        } else {
            buf.len()
        };
        let n = self.inner.read(&mut buf[..want])?;
        if m.between.get() {
            m.read.set(m.read.get() + n as u64);
        }
        Ok(n)
    }
}

/// Unpacks a package's verified source `archive` into `dest` (which must exist)
/// within the package's limits, checking the bytes read against its sha256.
pub fn unpack_package(pkg: &Package, archive: &Path, dest: &Path) -> Result<(), UnpackError> {
    let sha256 = pkg.source.as_ref().map(|s| s.sha256.as_str());
    unpack_checked(archive, dest, &pkg.limits, sha256)
}

/// Unpacks `archive` into `dest` (which must exist) within `limits`.
pub fn unpack(archive: &Path, dest: &Path, limits: &Limits) -> Result<(), UnpackError> {
    unpack_checked(archive, dest, limits, None)
}

/// Unpacks `archive` into `dest` within `limits`; when `sha256` is given, the
/// archive's bytes must hash to it, else [`UnpackError::Changed`] whatever else
/// went wrong (a changed file explains any other failure).
pub fn unpack_checked(
    archive: &Path,
    dest: &Path,
    limits: &Limits,
    sha256: Option<&str>,
) -> Result<(), UnpackError> {
    let io = |source| UnpackError::Io {
        archive: archive.to_path_buf(),
        source,
    };
    let mut head = [0u8; 6];
    let n = File::open(archive)
        .and_then(|mut f| f.read(&mut head))
        .map_err(io)?;
    let file = File::open(archive).map_err(io)?;
    // Shares the file offset: what the decompressor leaves unread after the
    // tar's end is read from here, so the hash covers every byte.
    let mut rest = file.try_clone().map_err(io)?;
    let hasher = Rc::new(RefCell::new(Sha256::new()));
    let f = BufReader::new(Hashing {
        file,
        hasher: hasher.clone(),
    });
    let result = (|| {
        let reader: Box<dyn Read> = match sniff(&head[..n]) {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
            Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(f)),
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(f)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f).map_err(io)?),
            Compression::None => Box::new(f),
        };
        unpack_stream(reader, archive, dest, limits)
    })();
    let Some(expected) = sha256 else {
        return result;
    };
    // The rest of the file (after the tar's end), through the same descriptor.
    let mut h = hasher.borrow_mut();
    io::copy(&mut rest, &mut *h).map_err(io)?;
    let actual = hex::encode(h.clone().finalize());
    if actual != expected {
        return Err(UnpackError::Changed {
            archive: archive.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    result
}

/// Why a [`BeneathError`] refused an entry (the reason), or the I/O error it was.
fn refusal(e: BeneathError) -> Result<String, io::Error> {
    Ok(match e {
        BeneathError::Link { path } => {
            format!("would be written through the symlink {}", path.display())
        }
        BeneathError::NotDir { path } => format!(
            "would be written under {}, which is not a directory",
            path.display()
        ),
        BeneathError::Exists { path, kind } => {
            format!("would replace {}, a {kind}", path.display())
        }
        BeneathError::BadPath { .. } => "leaves the destination".into(),
        BeneathError::Io { source, .. } => return Err(source),
    })
}

/// Why a hard link to `target` is refused, if it is: only to a file the archive wrote
/// before it, not through a symlink.
fn hard_link_refusal(tree: &Beneath, target: &Path) -> Result<Option<String>, BeneathError> {
    Ok(match tree.lstat(target) {
        Ok(Some(st)) if file_type(&st).is_file() => None,
        Ok(Some(st)) => Some(format!(
            "is a hard link to {}, a {} (only files can be hard-linked)",
            target.display(),
            crate::beneath::kind_name(&st)
        )),
        Ok(None) => Some(format!(
            "is a hard link to {}, which is not in the archive before it",
            target.display()
        )),
        Err(BeneathError::Link { .. }) => Some("is a hard link through a symlink".into()),
        Err(e) => return Err(e),
    })
}

/// An entry to write: its path (relative, free of `..`), type and mode.
type Admitted = (PathBuf, tar::EntryType, u32);

/// What an archive entry is, if it is written at all. `Err(Ok(reason))` refuses it;
/// `Err(Err(e))` is an I/O error.
fn admit<R: Read>(
    entry: &tar::Entry<'_, R>,
) -> Result<Option<Admitted>, Result<String, io::Error>> {
    use tar::EntryType as T;
    let rel = contained(&entry.path().map_err(Err)?)
        .ok_or_else(|| Ok("leaves the destination (absolute path or '..')".to_string()))?;
    let kind = entry.header().entry_type();
    match kind {
        T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link => {}
        T::Char | T::Block => return Err(Ok("is a device node".into())),
        T::Fifo => return Err(Ok("is a FIFO".into())),
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(None),
        other => return Err(Ok(format!("has unsupported type {other:?}"))),
    }
    let mode = entry.header().mode().map_err(Err)?;
    if mode & 0o6000 != 0 {
        return Err(Ok(format!(
            "has setuid/setgid bits (mode {:o})",
            mode & 0o7777
        )));
    }
    if rel.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some((rel, kind, mode)))
}

/// Why [`copy_bounded`] stopped.
enum Copy {
    Read(io::Error),
    Write(io::Error),
    Limit,
}

/// Copies `from` to `to` through `buf`, adding to `bytes`, until the end or until `bytes`
/// passes `max`.
fn copy_bounded(
    from: &mut impl Read,
    to: &mut File,
    buf: &mut [u8],
    bytes: &mut u64,
    max: u64,
) -> Result<(), Copy> {
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        *bytes += n as u64;
        if *bytes > max {
            return Err(Copy::Limit);
        }
        to.write_all(&buf[..n]).map_err(Copy::Write)?;
    }
}

fn unpack_stream(
    reader: Box<dyn Read>,
    archive: &Path,
    dest: &Path,
    limits: &Limits,
) -> Result<(), UnpackError> {
    let io = |source| UnpackError::Io {
        archive: archive.to_path_buf(),
        source,
    };
    let meter = Rc::new(Meter::default());
    // A read error from the meter is the metadata bound, not I/O.
    let tripped = |e: io::Error| match meter.tripped.get() {
        true => UnpackError::Limit {
            archive: archive.to_path_buf(),
            bound: Bound::Metadata,
        },
        false => io(e),
    };
    let mut tar = tar::Archive::new(Metered {
        inner: reader,
        meter: meter.clone(),
    });
    let tree = Beneath::open(dest).map_err(|e| io(e.into()))?;
    let mut entries = tar.entries().map_err(tripped)?;
    let mut count: u64 = 0;
    let mut bytes: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        meter.read.set(0);
        meter.between.set(true);
        let next = entries.next();
        meter.between.set(false);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(tripped)?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |reason: &str| UnpackError::Refused {
            archive: archive.to_path_buf(),
            entry: raw_path.clone(),
            reason: reason.to_string(),
        };
        count += 1;
        if count > limits.max_entries {
            return Err(UnpackError::Limit {
                archive: archive.to_path_buf(),
                bound: Bound::Entries(limits.max_entries),
            });
        }
        let Some((rel, kind, mode)) = admit(&entry).map_err(|e| match e {
            Ok(reason) => refuse(&reason),
            Err(source) => io(source),
        })?
        else {
            continue;
        };
        use tar::EntryType as T;
        let blocked = |e: BeneathError| match refusal(e) {
            Ok(reason) => refuse(&reason),
            Err(source) => io(source),
        };
        match kind {
            T::Directory => tree.mkdir(&rel).map_err(blocked)?,
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(io)?
                    .ok_or_else(|| refuse("is a symlink without a target"))?;
                tree.symlink(&rel, &target, true).map_err(blocked)?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(io)?
                    .ok_or_else(|| refuse("is a hard link without a target"))?;
                let target = contained(&target)
                    .ok_or_else(|| refuse("is a hard link to outside the destination"))?;
                if let Some(reason) = hard_link_refusal(&tree, &target).map_err(blocked)? {
                    return Err(refuse(&reason));
                }
                tree.hard_link(&target, &rel, true).map_err(blocked)?;
            }
            _ => {
                let size = entry.size();
                let limit = || UnpackError::Limit {
                    archive: archive.to_path_buf(),
                    bound: Bound::Size(limits.max_bytes),
                };
                if bytes.saturating_add(size) > limits.max_bytes {
                    return Err(limit());
                }
                let mut out = tree
                    .create_file(&rel, mode & 0o777, true)
                    .map_err(blocked)?;
                copy_bounded(&mut entry, &mut out, &mut buf, &mut bytes, limits.max_bytes)
                    .map_err(|e| match e {
                        Copy::Read(e) => tripped(e),
                        Copy::Write(e) => io(e),
                        Copy::Limit => limit(),
                    })?;
                // Builds compare time stamps (make, autotools): keep the archive's.
                let mtime = entry.header().mtime().unwrap_or(0);
                Beneath::set_mtime(&out, i64::try_from(mtime).unwrap_or(0)).map_err(io)?;
            }
        }
    }
    Ok(())
}

/// `path` made relative and free of `..`, or `None` if it would leave its root.
fn contained(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The directory a source tree lives in after unpacking into `dir`: the single
/// top-level directory if there is exactly one entry and it is a directory, else
/// `dir` itself.
pub fn single_top(dir: &Path) -> std::io::Result<PathBuf> {
    let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    if entries.len() == 1 && entries[0].file_type()?.is_dir() {
        // OK to unwrap: the vector has exactly one element.
        return Ok(entries.pop().unwrap().path());
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A raw tar entry with any name (tar::Builder refuses the bad ones).
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn archive(entries: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        entries(&mut b);
        let bytes = b.into_inner().unwrap();
        let path = dir.path().join("a.tar.gz");
        let mut gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        (dir, path)
    }

    fn unpack_err(entries: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> String {
        let (dir, path) = archive(entries);
        let e = unpack(&path, &dir.path().join("out"), &Limits::default())
            .unwrap_err()
            .to_string();
        // Nothing outside `out` was written.
        assert!(!dir.path().join("evil").exists());
        e
    }

    use tar::EntryType as T;

    #[test]
    fn unpacks_every_compression() {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(
            &mut b,
            "pkg-1/hello.c",
            T::Regular,
            0o644,
            None,
            b"int main(){}",
        );
        let plain = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let variants: Vec<(&str, Vec<u8>)> = vec![
            ("tar", plain.clone()),
            ("gz", {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&plain).unwrap();
                e.finish().unwrap()
            }),
            ("xz", {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(&plain).unwrap();
                e.finish().unwrap()
            }),
            ("bz2", {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(&plain).unwrap();
                e.finish().unwrap()
            }),
            ("zst", zstd::encode_all(&plain[..], 1).unwrap()),
        ];
        for (name, bytes) in variants {
            let a = dir.path().join(format!("a.{name}"));
            fs::write(&a, bytes).unwrap();
            let out = dir.path().join(format!("out-{name}"));
            fs::create_dir(&out).unwrap();
            unpack(&a, &out, &Limits::default()).unwrap();
            assert_eq!(
                fs::read(out.join("pkg-1/hello.c")).unwrap(),
                b"int main(){}",
                "{name}"
            );
            assert_eq!(single_top(&out).unwrap(), out.join("pkg-1"));
        }
    }

    #[test]
    fn refuses_dotdot() {
        let e = unpack_err(|b| raw_entry(b, "pkg/../../evil", T::Regular, 0o644, None, b"x"));
        assert!(
            e.contains("\"pkg/../../evil\" leaves the destination"),
            "{e}"
        );
    }

    #[test]
    fn refuses_absolute() {
        let e = unpack_err(|b| raw_entry(b, "/tmp/evil", T::Regular, 0o644, None, b"x"));
        assert!(e.contains("leaves the destination"), "{e}");
    }

    #[test]
    fn refuses_write_through_symlink() {
        let e = unpack_err(|b| {
            raw_entry(b, "link", T::Symlink, 0o777, Some(".."), b"");
            raw_entry(b, "link/evil", T::Regular, 0o644, None, b"x");
        });
        assert!(
            e.contains("\"link/evil\" would be written through the symlink link"),
            "{e}"
        );
    }

    #[test]
    fn refuses_devices_and_setid() {
        let e = unpack_err(|b| raw_entry(b, "dev", T::Char, 0o644, None, b""));
        assert!(e.contains("is a device node"), "{e}");
        let e = unpack_err(|b| raw_entry(b, "sh", T::Regular, 0o4755, None, b"x"));
        assert!(e.contains("setuid/setgid"), "{e}");
        let e = unpack_err(|b| raw_entry(b, "sh", T::Regular, 0o2755, None, b"x"));
        assert!(e.contains("setuid/setgid"), "{e}");
    }

    #[test]
    fn a_directory_entry_over_a_link_is_refused() {
        // tar's own unpack_in would chmod the link's target for the directory entry.
        let e = unpack_err(|b| {
            raw_entry(b, "d", T::Symlink, 0o777, Some(".."), b"");
            raw_entry(b, "d/", T::Directory, 0o700, None, b"");
        });
        assert!(
            e.contains("\"d/\" would be written through the symlink d"),
            "{e}"
        );
        // A file entry replaces a link of the same name, never writes through it.
        let (dir, path) = archive(|b| {
            raw_entry(b, "f", T::Symlink, 0o777, Some("../evil"), b"");
            raw_entry(b, "f", T::Regular, 0o644, None, b"x");
        });
        unpack(&path, &dir.path().join("out"), &Limits::default()).unwrap();
        assert!(!dir.path().join("evil").exists());
        assert_eq!(fs::read(dir.path().join("out/f")).unwrap(), b"x");
    }

    #[test]
    fn refuses_hard_links_to_links_and_missing_files() {
        let e = unpack_err(|b| {
            raw_entry(b, "l", T::Symlink, 0o777, Some("../evil"), b"");
            raw_entry(b, "h", T::Link, 0o644, Some("l"), b"");
        });
        assert!(e.contains("is a hard link to l, a symlink"), "{e}");
        let e = unpack_err(|b| raw_entry(b, "h", T::Link, 0o644, Some("nope"), b""));
        assert!(e.contains("not in the archive before it"), "{e}");
    }

    #[test]
    fn keeps_hard_links() {
        let (dir, path) = archive(|b| {
            raw_entry(b, "bin/busybox", T::Regular, 0o755, None, b"elf");
            raw_entry(b, "bin/ls", T::Link, 0o755, Some("bin/busybox"), b"");
        });
        let out = dir.path().join("out");
        unpack(&path, &out, &Limits::default()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(out.join("bin/ls")).unwrap();
        assert_eq!(
            m.ino(),
            fs::metadata(out.join("bin/busybox")).unwrap().ino()
        );
        assert_eq!(m.nlink(), 2);
    }

    /// A zstd tarball of one `size`-byte file of zeros, streamed (never held).
    fn zstd_bomb(dir: &Path, size: u64) -> PathBuf {
        let path = dir.join("bomb.tar.zst");
        let mut enc = zstd::stream::write::Encoder::new(File::create(&path).unwrap(), 19).unwrap();
        {
            let mut b = tar::Builder::new(&mut enc);
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "bomb/zeros", std::io::repeat(0).take(size))
                .unwrap();
            b.finish().unwrap();
        }
        enc.finish().unwrap();
        path
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let bomb = zstd_bomb(dir.path(), 64 << 20);
        assert!(fs::metadata(&bomb).unwrap().len() < 64 << 10);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let limits = Limits {
            max_bytes: 8 << 20,
            max_entries: 10,
        };
        let e = unpack(&bomb, &out, &limits).unwrap_err();
        assert!(matches!(e, UnpackError::Limit { bound: Bound::Size(n), .. } if n == 8 << 20));
        let e = e.to_string();
        assert!(
            e.contains("it unpacks to more than 8.0 MiB (max_unpacked_size = \"8M\""),
            "{e}"
        );
        assert!(
            e.contains(
                "raise max_unpacked_size in its [[package]] table, e.g. max_unpacked_size = \"16M\""
            ),
            "{e}"
        );
        // Refused from the header's size: nothing was written at all.
        let written: u64 = walkdir::WalkDir::new(&out)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert_eq!(written, 0);
        // Within the limit it unpacks.
        let limits = Limits {
            max_bytes: 64 << 20,
            max_entries: 10,
        };
        unpack(&bomb, &out, &limits).unwrap();
    }

    #[test]
    fn defaults_are_documented() {
        let l = Limits::default();
        assert_eq!(l.max_bytes, 4 << 30);
        assert_eq!(l.max_entries, 200_000);
        assert_eq!(size_text(l.max_bytes), "4G");
        assert_eq!(
            crate::image::parse_size(&size_text(l.max_bytes)).unwrap(),
            l.max_bytes
        );
    }

    #[test]
    fn an_entry_count_bomb_stops_at_the_limit() {
        let (dir, path) = archive(|b| {
            for i in 0..50 {
                raw_entry(b, &format!("f{i}"), T::Regular, 0o644, None, b"");
            }
        });
        let out = dir.path().join("out");
        let limits = Limits {
            max_bytes: 1 << 20,
            max_entries: 20,
        };
        let e = unpack(&path, &out, &limits).unwrap_err().to_string();
        assert!(
            e.contains("it holds more than 20 entries (max_entries = 20)"),
            "{e}"
        );
        assert!(e.contains("e.g. max_entries = 40"), "{e}");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 20);
    }

    #[test]
    fn a_huge_header_is_bounded() {
        // A GNU long name the tar crate would read into memory whole.
        let (dir, path) = archive(|b| {
            raw_entry(
                b,
                "././@LongLink",
                T::GNULongName,
                0o644,
                None,
                &vec![b'a'; 2 << 20],
            );
            raw_entry(b, "x", T::Regular, 0o644, None, b"x");
        });
        let e = unpack(&path, &dir.path().join("out"), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("of headers between two entries"), "{e}");
    }

    #[test]
    fn a_changed_archive_is_refused() {
        let (dir, path) = archive(|b| raw_entry(b, "f", T::Regular, 0o644, None, b"x"));
        let bytes = fs::read(&path).unwrap();
        let sha = hex::encode(Sha256::digest(&bytes));
        let out = dir.path().join("out");
        unpack_checked(&path, &out, &Limits::default(), Some(&sha)).unwrap();
        let other = "0".repeat(64);
        let e = unpack_checked(&path, &out, &Limits::default(), Some(&other))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("its sha256 is {sha}, not the pinned {other}")),
            "{e}"
        );
    }

    #[test]
    fn refuses_hard_link_outside() {
        let e = unpack_err(|b| raw_entry(b, "h", T::Link, 0o644, Some("../../etc/passwd"), b""));
        assert!(e.contains("hard link to outside"), "{e}");
    }
}
