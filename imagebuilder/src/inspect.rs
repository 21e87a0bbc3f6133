//! Reading an image back without root and without mounting it: its manifest,
//! and whether every entry matches it.
//!
//! [`open`] recognises the file with `cartimage::detect` (an ext4 image, or a
//! GPT disk whose `crashcart` partition holds one; truncated files and broken
//! superblocks are refused there with a message saying so), loads the
//! filesystem with `ext4-view` and reads `.crashcart/manifest.json`.
//! [`Image::verify`] then walks the whole filesystem and compares every entry
//! with the manifest: kind, permission bits, size, link target, and the sha256
//! of every regular file's bytes as the filesystem returns them (so a flipped
//! byte in a data block, or an extent that points elsewhere, shows). It also
//! checks what lies beside or around the image: `<image>.sha256` when there
//! is one, and on a disk the `crashcart-meta` partition's manifest and
//! checksum.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cartimage::detect::{self, DetectError, Detected};
use cartimage::manifest::{self, FileEntry, FileKind, Manifest, PATH_IN_IMAGE};
use ext4_view::Ext4;
use sha2::{Digest, Sha256};

use crate::disk::{self, DiskError};

/// Why an image could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Not a file, not a filesystem, truncated, or a broken superblock.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// A filesystem other than ext4.
    #[error("{path} holds {format}, not ext4: cartbuild inspects the ext4 images it builds")]
    NotExt4 {
        /// The image.
        path: PathBuf,
        /// What it holds.
        format: String,
    },
    /// ext4-view refused the filesystem.
    #[error("image {path} is corrupt ({reason}): build it again with `cartbuild`")]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// What ext4-view said.
        reason: String,
    },
    /// The image has no `.crashcart/manifest.json`.
    #[error(
        "image {path} has no manifest ({PATH_IN_IMAGE} is missing): it was not built by this cartbuild; build it again"
    )]
    NoManifest {
        /// The image.
        path: PathBuf,
    },
    /// The manifest is not one this version reads.
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    /// Reading the image failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// An ext4 filesystem at an offset of a file, for `ext4-view`.
struct Window {
    file: File,
    offset: u64,
    len: u64,
}

impl ext4_view::Ext4Read for Window {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let len = u64::try_from(dst.len()).unwrap_or(u64::MAX);
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(format!(
                "read of {len} bytes at {start} is past the filesystem's end ({} bytes)",
                self.len
            )
            .into());
        }
        self.file.read_exact_at(dst, self.offset + start)?;
        Ok(())
    }
}

/// An image opened for reading.
pub struct Image {
    /// The file.
    pub path: PathBuf,
    /// What `cartimage::detect` found (offset and size of the filesystem).
    pub detected: Detected,
    /// The manifest inside it.
    pub manifest: Manifest,
    /// The manifest's bytes as stored.
    pub manifest_bytes: Vec<u8>,
    fs: Ext4,
    file: File,
}

/// Opens an image or GPT disk and reads its manifest.
pub fn open(path: &Path) -> Result<Image, InspectError> {
    let (file, detected) = detect::open(path)?;
    if detected.format.kernel_fstype() != "ext4" {
        return Err(InspectError::NotExt4 {
            path: path.to_path_buf(),
            format: detected.format.name().to_string(),
        });
    }
    let io = |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let window = Window {
        file: file.try_clone().map_err(io)?,
        offset: detected.offset,
        len: detected.size,
    };
    let corrupt = |e: ext4_view::Ext4Error| InspectError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let fs = Ext4::load(Box::new(window)).map_err(corrupt)?;
    let manifest_path = format!("/{PATH_IN_IMAGE}");
    let manifest_bytes = match fs.read(manifest_path.as_str()) {
        Ok(b) => b,
        Err(ext4_view::Ext4Error::NotFound | ext4_view::Ext4Error::NotADirectory) => {
            return Err(InspectError::NoManifest {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(corrupt(e)),
    };
    let manifest = Manifest::from_slice(&manifest_bytes, &path.join(PATH_IN_IMAGE))?;
    Ok(Image {
        path: path.to_path_buf(),
        detected,
        manifest,
        manifest_bytes,
        fs,
        file,
    })
}

/// One way the image differs from its manifest (or its sidecars).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The entry (a path in the image) or the sidecar.
    pub path: String,
    /// What is wrong.
    pub what: String,
}

/// What [`Image::verify`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// Entries compared (the manifest's, plus the manifest itself).
    pub entries: usize,
    /// Bytes of file data hashed.
    pub bytes: u64,
    /// Further checks that passed, one line each (`<image>.sha256`, …).
    pub checks: Vec<String>,
    /// Everything that did not match.
    pub problems: Vec<Problem>,
}

/// Entries as read from the filesystem by path; `None` for one that could
/// not be read (already reported as a problem).
type Seen = BTreeMap<String, Option<FileEntry>>;

impl Image {
    /// Walks the filesystem and compares every entry with the manifest,
    /// calling `progress(bytes_done, bytes_total)` while hashing.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Verified {
        let mut v = Verified::default();
        let expected: BTreeMap<&str, &FileEntry> = self
            .manifest
            .files
            .iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        let total: u64 = self
            .manifest
            .files
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .map(|f| f.size)
            .sum();
        let mut done = 0u64;
        let mut seen = Seen::new();
        self.walk(&mut seen, &mut v.problems, &mut |n| {
            done += n;
            progress(done, total);
        });
        for (path, want) in &expected {
            match seen.remove(*path) {
                None => v.problems.push(Problem {
                    path: path.to_string(),
                    what: "missing from the image".into(),
                }),
                Some(None) => v.entries += 1,
                Some(Some(got)) => {
                    v.entries += 1;
                    if got.kind == FileKind::File {
                        v.bytes += got.size;
                    }
                    if let Some(what) = differs(want, &got) {
                        v.problems.push(Problem {
                            path: path.to_string(),
                            what,
                        });
                    }
                }
            }
        }
        // The manifest file itself is the one entry the manifest cannot list.
        if seen.remove(PATH_IN_IMAGE).is_some() {
            v.entries += 1;
        }
        for path in seen.keys() {
            v.problems.push(Problem {
                path: path.clone(),
                what: "in the image but not in its manifest".into(),
            });
        }
        self.check_sidecar(&mut v);
        self.check_disk(&mut v);
        v
    }

    /// Every entry of the filesystem but the root and `lost+found`.
    fn walk(&self, seen: &mut Seen, problems: &mut Vec<Problem>, progress: &mut dyn FnMut(u64)) {
        let mut pending = vec![String::new()];
        while let Some(dir) = pending.pop() {
            let abs = format!("/{dir}");
            let entries = match self.fs.read_dir(abs.as_str()) {
                Ok(rd) => rd,
                Err(e) => {
                    problems.push(Problem {
                        path: display_dir(&dir),
                        what: format!("cannot read the directory: {e}"),
                    });
                    continue;
                }
            };
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        problems.push(Problem {
                            path: display_dir(&dir),
                            what: format!("cannot read an entry: {e}"),
                        });
                        continue;
                    }
                };
                let name = String::from_utf8_lossy(entry.file_name().as_ref()).into_owned();
                if name == "." || name == ".." || (dir.is_empty() && name == "lost+found") {
                    continue;
                }
                let rel = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                match self.read_entry(&rel, progress) {
                    Ok(entry) => {
                        if entry.kind == FileKind::Dir {
                            pending.push(rel.clone());
                        }
                        seen.insert(rel, Some(entry));
                    }
                    Err(what) => {
                        problems.push(Problem {
                            path: rel.clone(),
                            what,
                        });
                        seen.insert(rel, None);
                    }
                }
            }
        }
    }

    fn read_entry(&self, rel: &str, progress: &mut dyn FnMut(u64)) -> Result<FileEntry, String> {
        let abs = format!("/{rel}");
        let md = self
            .fs
            .symlink_metadata(abs.as_str())
            .map_err(|e| format!("cannot read its inode: {e}"))?;
        let ft = md.file_type();
        let mode = u32::from(md.mode());
        let mut entry = FileEntry {
            path: rel.to_string(),
            kind: FileKind::File,
            mode,
            size: md.len(),
            sha256: None,
            target: None,
            package: None,
            link: None,
        };
        if ft.is_dir() {
            entry.kind = FileKind::Dir;
            entry.size = 0;
        } else if ft.is_symlink() {
            entry.kind = FileKind::Symlink;
            let target = self
                .fs
                .read_link(abs.as_str())
                .map_err(|e| format!("cannot read the link target: {e}"))?;
            entry.target = Some(String::from_utf8_lossy(target.as_ref()).into_owned());
        } else if ft.is_regular_file() {
            let f = self
                .fs
                .open(abs.as_str())
                .map_err(|e| format!("cannot open: {e}"))?;
            let mut h = Sha256::new();
            let read = manifest::read_chunks(f, 256 << 10, |chunk| {
                h.update(chunk);
                progress(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
            })
            .map_err(|e| format!("cannot read its data: {e}"))?;
            if read != entry.size {
                return Err(format!(
                    "its inode says {} bytes but {read} could be read",
                    entry.size
                ));
            }
            entry.sha256 = Some(hex::encode(h.finalize()));
        } else {
            return Err("a device, FIFO or socket: images hold none".into());
        }
        Ok(entry)
    }

    /// `<image>.sha256` beside the image, when there is one.
    fn check_sidecar(&self, v: &mut Verified) {
        let sum = manifest::sidecar(&self.path, manifest::CHECKSUM_SUFFIX);
        if !sum.exists() {
            return;
        }
        let shown = sum.display().to_string();
        match (
            manifest::read_checksum_file(&sum),
            manifest::sha256_file(&self.path),
        ) {
            (Ok(want), Ok(got)) if want == got => v
                .checks
                .push(format!("{shown}: the image's sha256 matches")),
            (Ok(want), Ok(got)) => v.problems.push(Problem {
                path: shown,
                what: format!("says sha256 {want} but the image's is {got}"),
            }),
            (Err(e), _) | (_, Err(e)) => v.problems.push(Problem {
                path: shown,
                what: e.to_string(),
            }),
        }
    }

    /// On a GPT disk: the `crashcart-meta` partition holds this manifest and
    /// the `crashcart` partition's sha256.
    fn check_disk(&self, v: &mut Verified) {
        if self.detected.partition.is_none() {
            return;
        }
        let meta = match disk::read_meta(&self.file, &self.path) {
            Ok(m) => m,
            Err(e) => {
                v.problems.push(Problem {
                    path: format!("partition `{}`", disk::META_PARTITION_NAME),
                    what: meta_error(e),
                });
                return;
            }
        };
        let file = |name: &str| {
            meta.files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.as_slice())
        };
        let at = |name: &str| format!("{}:{name}", disk::META_PARTITION_NAME);
        match file(disk::META_MANIFEST) {
            Some(b) if b == self.manifest_bytes => v.checks.push(format!(
                "{}: same as the manifest inside",
                at(disk::META_MANIFEST)
            )),
            Some(_) => v.problems.push(Problem {
                path: at(disk::META_MANIFEST),
                what: "differs from the manifest inside the filesystem".into(),
            }),
            None => v.problems.push(Problem {
                path: at(disk::META_MANIFEST),
                what: "missing".into(),
            }),
        }
        if file(disk::META_SBOM).is_none() {
            v.problems.push(Problem {
                path: at(disk::META_SBOM),
                what: "missing".into(),
            });
        }
        let Some(sum) = file(disk::META_CHECKSUM) else {
            v.problems.push(Problem {
                path: at(disk::META_CHECKSUM),
                what: "missing".into(),
            });
            return;
        };
        let want = String::from_utf8_lossy(sum)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        match self.filesystem_sha256() {
            Ok(got) if got == want => v.checks.push(format!(
                "{}: partition `{}`'s sha256 matches",
                at(disk::META_CHECKSUM),
                disk::PARTITION_NAME
            )),
            Ok(got) => v.problems.push(Problem {
                path: at(disk::META_CHECKSUM),
                what: format!(
                    "says sha256 {want} but partition `{}` holds {got}",
                    disk::PARTITION_NAME
                ),
            }),
            Err(e) => v.problems.push(Problem {
                path: format!("partition `{}`", disk::PARTITION_NAME),
                what: e.to_string(),
            }),
        }
    }

    /// sha256 of the filesystem's bytes (the partition, on a disk).
    pub fn filesystem_sha256(&self) -> std::io::Result<String> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < self.detected.size {
            let n = usize::try_from(self.detected.size - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            self.file
                .read_exact_at(&mut buf[..n], self.detected.offset + at)?;
            h.update(&buf[..n]);
            at += u64::try_from(n).unwrap_or(u64::MAX);
        }
        Ok(hex::encode(h.finalize()))
    }
}

fn meta_error(e: DiskError) -> String {
    match e {
        DiskError::NoMeta { .. } => {
            "missing: the disk was not written by `cartbuild --format gpt`".into()
        }
        e => e.to_string(),
    }
}

fn display_dir(dir: &str) -> String {
    if dir.is_empty() {
        "/".into()
    } else {
        dir.to_string()
    }
}

/// What differs between the manifest's entry and the image's, if anything.
pub fn differs(want: &FileEntry, got: &FileEntry) -> Option<String> {
    let mut what = Vec::new();
    if want.kind != got.kind {
        what.push(format!(
            "is a {} but the manifest says a {}",
            got.kind.name(),
            want.kind.name()
        ));
        return Some(what.join("; "));
    }
    if want.mode != got.mode {
        what.push(format!(
            "mode {:04o}, the manifest says {:04o}",
            got.mode, want.mode
        ));
    }
    if want.size != got.size {
        what.push(format!(
            "{} bytes, the manifest says {}",
            got.size, want.size
        ));
    }
    if want.target != got.target {
        what.push(format!(
            "points to {:?}, the manifest says {:?}",
            got.target.as_deref().unwrap_or(""),
            want.target.as_deref().unwrap_or("")
        ));
    }
    if want.kind == FileKind::File && want.sha256 != got.sha256 {
        what.push(format!(
            "sha256 {}, the manifest says {}",
            got.sha256.as_deref().unwrap_or("?"),
            want.sha256.as_deref().unwrap_or("?")
        ));
    }
    (!what.is_empty()).then(|| what.join("; "))
}
