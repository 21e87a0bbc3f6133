//! Writing the staged tree into an image file.
//!
//! [`ImageWriter`] is the seam between the pipeline and a filesystem writer: it
//! takes the staged directory, the options (epoch, size, label) and an open
//! file, fills the file, and says what it wrote. [`Ext4`] implements it with
//! cartbuild's own writer ([`crate::ext4`]): no e2fsprogs and no root are needed
//! to build an image, and the same tree gives the same bytes on any machine.
//! (The `mke2fs -d` implementation this seam started with is gone from the
//! build; `tests/bench/ext4.sh` still runs mke2fs to compare against it.)
//!
//! The caller hands the writer a temporary file ([`crate::output::Pending`]) and
//! renames it into place only when the image and everything that describes it
//! are complete.

use std::fs::File;
use std::path::{Path, PathBuf};

use cartimage::manifest::{FileEntry, FileKind};

use crate::ext4;

/// Why the image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `--size` is too small for the content.
    #[error(
        "the content does not fit in {size} bytes (--size): it needs at least {needed} bytes; raise --size, or drop it to size the image to its content"
    )]
    TooSmall {
        /// The requested size.
        size: u64,
        /// The smallest size that holds the content.
        needed: u64,
    },
    /// The epoch does not fit in ext4's 32-bit time stamps as this writer
    /// writes them.
    #[error(
        "epoch {epoch} is after 2106-02-07T06:28:15Z, the last second an image's time stamps can hold: set SOURCE_DATE_EPOCH or the recipe's [image] epoch to an earlier time"
    )]
    EpochTooLate {
        /// The epoch asked for.
        epoch: u64,
    },
    /// The ext4 writer refused the tree or failed.
    #[error(transparent)]
    Ext4(ext4::Error),
}

/// How big the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSize {
    /// Just big enough for the content plus `free` bytes.
    Fit {
        /// Free space to leave, in bytes.
        free: u64,
    },
    /// Exactly this many bytes.
    Exact(u64),
}

/// The default free space of a fitted image: the ext4 writer's 64 KiB. The
/// image is mounted read-only, so free space only serves tools that expect
/// some; the image stays within a few percent of its content.
pub const DEFAULT_FREE: u64 = ext4::DEFAULT_FREE;

/// What the writer needs besides the tree.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Seconds since 1970 for every time stamp.
    pub epoch: u64,
    /// Size policy.
    pub size: ImageSize,
    /// Filesystem label (cut to the filesystem's limit, 16 bytes for ext4).
    pub label: String,
}

/// What a writer put into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Every entry, as read back from the writer's own record (sha256
    /// computed while the bytes were written), sorted by path. `package` is
    /// not known to the writer and left empty.
    pub files: Vec<FileEntry>,
    /// Length of the image in bytes.
    pub size: u64,
    /// Sum of the regular files' sizes (each hard-linked file once).
    pub content_bytes: u64,
}

/// Writes a staged directory into an image file.
pub trait ImageWriter {
    /// A short name for messages (`ext4`).
    fn name(&self) -> &'static str;
    /// Writes the tree at `staged` into `out` (an empty, writable file),
    /// calling `progress(bytes_done, bytes_total)` as file data goes in.
    fn write(
        &self,
        staged: &Path,
        opts: &ImageOptions,
        out: &mut File,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Written, ImageError>;
}

/// cartbuild's own ext4 writer ([`crate::ext4`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Ext4;

/// The epoch as the ext4 writer takes it: seconds in 32 bits, so at most
/// 2106-02-07T06:28:15Z.
pub fn ext4_epoch(epoch: u64) -> Result<u32, ImageError> {
    u32::try_from(epoch).map_err(|_| ImageError::EpochTooLate { epoch })
}

/// `label` cut to at most `max` bytes on a character boundary.
fn cut_label(label: &str, max: usize) -> String {
    let mut end = label.len().min(max);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label[..end].to_string()
}

impl ImageWriter for Ext4 {
    fn name(&self) -> &'static str {
        "the ext4 writer"
    }

    fn write(
        &self,
        staged: &Path,
        opts: &ImageOptions,
        out: &mut File,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Written, ImageError> {
        let options = ext4::Options {
            epoch: ext4_epoch(opts.epoch)?,
            size: match opts.size {
                ImageSize::Fit { free } => ext4::ImageSize::Fit { free },
                ImageSize::Exact(n) => ext4::ImageSize::Exact(n),
            },
            label: cut_label(&opts.label, 16),
        };
        let tree = ext4::Tree::from_dir(staged).map_err(ImageError::Ext4)?;
        let report = ext4::write_image_with_progress(&tree, out, &options, progress).map_err(
            |e| match e {
                ext4::Error::TooSmall { needed, requested } => ImageError::TooSmall {
                    size: requested,
                    needed,
                },
                e => ImageError::Ext4(e),
            },
        )?;
        let mut files: Vec<FileEntry> = report.files.iter().map(entry_of).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Written {
            files,
            size: report.image_size,
            content_bytes: report.content_bytes,
        })
    }
}

/// The manifest's view of one entry the ext4 writer reports.
pub fn entry_of(r: &ext4::FileReport) -> FileEntry {
    let (kind, size) = match r.kind {
        ext4::FileKind::Dir => (FileKind::Dir, 0),
        ext4::FileKind::File => (FileKind::File, r.size),
        ext4::FileKind::Symlink => (FileKind::Symlink, r.size),
    };
    FileEntry {
        path: r.path.to_string_lossy().into_owned(),
        kind,
        mode: u32::from(r.mode),
        size,
        sha256: r.sha256.map(hex::encode),
        target: r.target.as_ref().map(|t| t.to_string_lossy().into_owned()),
        package: None,
        link: None,
    }
}

/// Parses a size: bytes, or with a suffix K, M, G (powers of 1024; `KiB`, `MB`
/// and lower case accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use e.g. 4096, 512K, 64M or 1G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}: use K, M or G")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn epochs_past_2106_are_refused_with_the_date() {
        assert_eq!(ext4_epoch(0).unwrap(), 0);
        assert_eq!(ext4_epoch(u64::from(u32::MAX)).unwrap(), u32::MAX);
        let err = ext4_epoch(u64::from(u32::MAX) + 1).unwrap_err();
        assert!(
            err.to_string().contains("after 2106-02-07T06:28:15Z"),
            "{err}"
        );
    }

    #[test]
    fn labels_are_cut_on_character_boundaries() {
        assert_eq!(cut_label("net", 16), "net");
        assert_eq!(cut_label("a-very-long-image-name", 16), "a-very-long-imag");
        assert_eq!(cut_label("ééééééééé", 16), "éééééééé");
    }

    #[test]
    fn the_ext4_writer_reports_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("staged");
        std::fs::create_dir_all(staged.join("bin")).unwrap();
        std::fs::write(staged.join("bin/tool"), b"abc").unwrap();
        std::os::unix::fs::symlink("tool", staged.join("bin/alias")).unwrap();
        let mut out = tempfile::tempfile().unwrap();
        let opts = ImageOptions {
            epoch: 1,
            size: ImageSize::Fit { free: DEFAULT_FREE },
            label: "t".into(),
        };
        let w = Ext4
            .write(&staged, &opts, &mut out, &mut |_, _| {})
            .unwrap();
        let paths: Vec<_> = w.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["bin", "bin/alias", "bin/tool"]);
        assert_eq!(w.files[1].target.as_deref(), Some("tool"));
        assert_eq!(w.files[1].mode, 0o777);
        assert_eq!(
            w.files[2].sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(w.size, out.metadata().unwrap().len());
        let exact = ImageOptions {
            size: ImageSize::Exact(8192),
            ..opts
        };
        let err = Ext4
            .write(&staged, &exact, &mut out, &mut |_, _| {})
            .unwrap_err();
        assert!(
            matches!(err, ImageError::TooSmall { size: 8192, .. }),
            "{err}"
        );
    }
}
