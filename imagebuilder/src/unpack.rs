//! Unpacking source and prebuilt tarballs, refusing anything that could escape.
//!
//! The compression (gzip, xz, bzip2, zstd, or none) is told by the file's magic
//! bytes, not its name. Every entry is checked before it is written: paths with
//! `..` or a root, writes through a symlink (an entry whose parent, inside the
//! destination, is a symlink), hard links to outside, device nodes and FIFOs, and
//! setuid/setgid bits are all refused with the entry's name. `tar::Entry::unpack_in`
//! then does the write and re-checks containment itself.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

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

/// Unpacks `archive` into `dest` (which must exist).
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), UnpackError> {
    let io = |source| UnpackError::Io {
        archive: archive.to_path_buf(),
        source,
    };
    let mut head = [0u8; 6];
    let mut f = File::open(archive).map_err(io)?;
    let n = f.read(&mut head).map_err(io)?;
    let f = BufReader::new(File::open(archive).map_err(io)?);
    let reader: Box<dyn Read> = match sniff(&head[..n]) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(f)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(f)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f).map_err(io)?),
        Compression::None => Box::new(f),
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(false);
    tar.set_preserve_ownerships(false);
    tar.set_unpack_xattrs(false);
    tar.set_preserve_mtime(true);
    tar.set_overwrite(true);
    let dest = fs::canonicalize(dest).map_err(io)?;
    for entry in tar.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |reason: &str| UnpackError::Refused {
            archive: archive.to_path_buf(),
            entry: raw_path.clone(),
            reason: reason.to_string(),
        };
        let rel = contained(&entry.path().map_err(io)?)
            .ok_or_else(|| refuse("leaves the destination (absolute path or '..')"))?;
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link => {}
            T::Char | T::Block => return Err(refuse("is a device node")),
            T::Fifo => return Err(refuse("is a FIFO")),
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => return Err(refuse(&format!("has unsupported type {other:?}"))),
        }
        let mode = entry.header().mode().map_err(io)?;
        if mode & 0o6000 != 0 {
            return Err(refuse(&format!(
                "has setuid/setgid bits (mode {:o})",
                mode & 0o7777
            )));
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        if through_symlink(&dest, &rel) {
            return Err(refuse("would be written through a symlink"));
        }
        if kind == T::Link {
            let target = entry
                .link_name()
                .map_err(io)?
                .ok_or_else(|| refuse("is a hard link without a target"))?;
            let target = contained(&target)
                .ok_or_else(|| refuse("is a hard link to outside the destination"))?;
            if through_symlink(&dest, &target)
                || fs::symlink_metadata(dest.join(&target))
                    .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(refuse("is a hard link through a symlink"));
            }
        }
        let written = entry.unpack_in(&dest).map_err(io)?;
        if !written {
            return Err(refuse("leaves the destination"));
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

/// Whether any existing ancestor of `rel` under `dest` is a symlink.
fn through_symlink(dest: &Path, rel: &Path) -> bool {
    let mut cur = dest.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
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
        let e = unpack(&path, &dir.path().join("out"))
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
            unpack(&a, &out).unwrap();
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
            e.contains("\"link/evil\" would be written through a symlink"),
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
    fn refuses_hard_link_outside() {
        let e = unpack_err(|b| raw_entry(b, "h", T::Link, 0o644, Some("../../etc/passwd"), b""));
        assert!(e.contains("hard link to outside"), "{e}");
    }
}
