//! Recognising an image from its superblock.
//!
//! [`open`] answers the questions a user's typo or a broken copy raises before anything is
//! attached to a loop device: does the file exist, is it a regular file, is it empty, which
//! filesystem does it hold, is the superblock sane, and is the file as long as the filesystem
//! says it is. Each answer is one [`DetectError`] whose message names the problem and the fix.
//!
//! The result, [`Detected`], says where in the file the filesystem lies (`offset`, `size`) so
//! that a GPT disk image whose partition holds the filesystem fits in later as one more case;
//! erofs, squashfs and GPT are recognised today and reported as not yet supported.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::superblock::{
    EROFS_MAGIC, EROFS_OFFSET, EXT_SUPERBLOCK_OFFSET, EXT_SUPERBLOCK_SIZE, ExtSuperblock,
    ExtVariant, SQUASHFS_MAGIC,
};

/// The filesystem an image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// ext2, ext3 or ext4.
    Ext {
        /// Which of the three.
        variant: ExtVariant,
        /// Block size in bytes.
        block_size: u64,
        /// `s_volume_name`.
        label: String,
    },
}

impl Format {
    /// The filesystem type to hand to the kernel (`fsopen`/`mount`).
    pub fn kernel_fstype(&self) -> &'static str {
        match self {
            // The ext4 driver mounts ext2 and ext3 as well (CONFIG_EXT4_USE_FOR_EXT2).
            Format::Ext { .. } => "ext4",
        }
    }

    /// A short human name, such as `ext4`.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Ext { variant, .. } => variant.name(),
        }
    }
}

/// What [`open`] found in an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The filesystem.
    pub format: Format,
    /// Byte offset of the filesystem in the file (0 unless the file is a partitioned disk).
    pub offset: u64,
    /// Bytes the filesystem spans from `offset`.
    pub size: u64,
}

/// Why a file cannot be used as an image. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The path does not exist.
    #[error(
        "image {0} does not exist: build one with `cartbuild recipes/net.toml` or give the path of an image"
    )]
    Missing(PathBuf),
    /// The path is a directory.
    #[error("image {0} is a directory, not an image file: give the path of the image file itself")]
    Directory(PathBuf),
    /// The path is a device, socket or fifo.
    #[error("image {0} is not a regular file: give the path of an image file")]
    NotAFile(PathBuf),
    /// The file has no bytes.
    #[error("image {0} is empty (0 bytes): rebuild it with `cartbuild` or copy it again")]
    Empty(PathBuf),
    /// Reading failed.
    #[error("cannot read image {path}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// No known superblock.
    #[error(
        "{0} is not a filesystem image (no ext2/ext3/ext4 superblock): give an image built by `cartbuild`"
    )]
    NotAFilesystem(PathBuf),
    /// A known format that this version cannot mount yet.
    #[error("image {path} holds {format}, which cartinject cannot mount yet: use an ext4 image")]
    Unsupported {
        /// The image.
        path: PathBuf,
        /// What it holds.
        format: &'static str,
    },
    /// The file is shorter than the filesystem.
    #[error(
        "image {path} is truncated: its {format} filesystem needs {needed} bytes but the file has {actual}: copy or build it again"
    )]
    Truncated {
        /// The image.
        path: PathBuf,
        /// Filesystem name.
        format: &'static str,
        /// Bytes the superblock says the filesystem spans.
        needed: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// The superblock is present but inconsistent.
    #[error("image {path} is corrupt ({reason}): build it again with `cartbuild`")]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// The first inconsistency found.
        reason: String,
    },
}

/// Opens `path` read-only and checks that it holds a filesystem cartinject can mount.
pub fn open(path: &Path) -> Result<(File, Detected), DetectError> {
    let io_err = |source: io::Error| DetectError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DetectError::Missing(path.to_owned()));
        }
        Err(e) => return Err(io_err(e)),
    };
    if meta.is_dir() {
        return Err(DetectError::Directory(path.to_owned()));
    }
    if !meta.is_file() {
        return Err(DetectError::NotAFile(path.to_owned()));
    }
    let file = File::open(path).map_err(io_err)?;
    // Look at the open file, not the path, in case it was replaced in between.
    let len = file.metadata().map_err(io_err)?.len();
    let detected = detect(&file, len, path)?;
    Ok((file, detected))
}

/// Reads `len` bytes' worth of `file` (named `path` in errors) and identifies its filesystem.
pub fn detect(file: &impl FileExt, len: u64, path: &Path) -> Result<Detected, DetectError> {
    if len == 0 {
        return Err(DetectError::Empty(path.to_owned()));
    }
    let read_at = |offset: u64, buf: &mut [u8]| -> Result<bool, DetectError> {
        let end = offset + u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if end > len {
            return Ok(false);
        }
        file.read_exact_at(buf, offset)
            .map(|()| true)
            .map_err(|source| DetectError::Io {
                path: path.to_owned(),
                source,
            })
    };

    let mut head = [0u8; 4];
    if read_at(0, &mut head)? && u32::from_le_bytes(head) == SQUASHFS_MAGIC {
        return Err(DetectError::Unsupported {
            path: path.to_owned(),
            format: "squashfs",
        });
    }
    let mut gpt = [0u8; 8];
    if read_at(512, &mut gpt)? && &gpt == b"EFI PART" {
        return Err(DetectError::Unsupported {
            path: path.to_owned(),
            format: "a GPT disk",
        });
    }
    let mut erofs = [0u8; 4];
    if read_at(EROFS_OFFSET, &mut erofs)? && u32::from_le_bytes(erofs) == EROFS_MAGIC {
        return Err(DetectError::Unsupported {
            path: path.to_owned(),
            format: "erofs",
        });
    }

    let mut raw = [0u8; EXT_SUPERBLOCK_SIZE];
    if !read_at(EXT_SUPERBLOCK_OFFSET, &mut raw)? {
        // Too short to hold even a superblock.
        return Err(DetectError::NotAFilesystem(path.to_owned()));
    }
    let Some(sb) = ExtSuperblock::parse(&raw) else {
        return Err(DetectError::NotAFilesystem(path.to_owned()));
    };
    let format_name = sb.variant().name();
    if let Some(reason) = sb.geometry_problem() {
        return Err(DetectError::Corrupt {
            path: path.to_owned(),
            reason,
        });
    }
    // geometry_problem() has checked the block size, so both are Some here.
    let (Some(block_size), Some(needed)) = (sb.block_size(), sb.filesystem_bytes()) else {
        return Err(DetectError::Corrupt {
            path: path.to_owned(),
            reason: "filesystem size overflows".into(),
        });
    };
    if needed > len {
        return Err(DetectError::Truncated {
            path: path.to_owned(),
            format: format_name,
            needed,
            actual: len,
        });
    }
    Ok(Detected {
        format: Format::Ext {
            variant: sb.variant(),
            block_size,
            label: sb.volume_name.clone(),
        },
        offset: 0,
        size: needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superblock::crc32c_raw;
    use std::io::Write;

    /// A minimal ext4 superblock: 1 KiB blocks, one group of 8192 blocks and 2048 inodes,
    /// metadata_csum with a correct checksum.
    fn ext4_superblock(blocks: u32) -> [u8; EXT_SUPERBLOCK_SIZE] {
        let mut sb = [0u8; EXT_SUPERBLOCK_SIZE];
        let put32 =
            |sb: &mut [u8], at: usize, v: u32| sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut sb, 0x00, 2048); // inodes
        put32(&mut sb, 0x04, blocks);
        put32(&mut sb, 0x14, 1); // first data block
        put32(&mut sb, 0x18, 0); // 1 KiB blocks
        put32(&mut sb, 0x20, 8192);
        put32(&mut sb, 0x28, 2048);
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        put32(&mut sb, 0x4C, 1); // dynamic rev
        sb[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        put32(&mut sb, 0x60, 0x40 | 0x80); // extents, 64bit
        put32(&mut sb, 0x64, 0x400); // metadata_csum
        sb[0x78..0x7D].copy_from_slice(b"cart\0");
        let csum = crc32c_raw(!0, &sb[..0x3FC]);
        put32(&mut sb, 0x3FC, csum);
        sb
    }

    fn image_file(sb: &[u8; EXT_SUPERBLOCK_SIZE], len: u64) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&[0u8; 1024]).expect("write");
        f.write_all(sb).expect("write");
        f.as_file().set_len(len).expect("set_len");
        f
    }

    #[test]
    fn a_good_ext4_image_is_detected() {
        let f = image_file(&ext4_superblock(8192), 8192 * 1024);
        let (_, d) = open(f.path()).expect("detected");
        assert_eq!(d.format.name(), "ext4");
        assert_eq!(d.format.kernel_fstype(), "ext4");
        assert_eq!(d.size, 8192 * 1024);
        assert!(matches!(&d.format, Format::Ext { label, .. } if label == "cart"));
    }

    #[test]
    fn a_short_file_is_truncated() {
        let f = image_file(&ext4_superblock(8192), 4096 * 1024);
        let err = open(f.path()).expect_err("truncated");
        assert!(matches!(err, DetectError::Truncated { needed, actual, .. }
            if needed == 8192 * 1024 && actual == 4096 * 1024));
    }

    #[test]
    fn a_flipped_byte_is_corrupt() {
        let mut sb = ext4_superblock(8192);
        sb[0x20] ^= 0x01; // blocks per group, checksum now wrong
        let f = image_file(&sb, 8192 * 1024);
        let err = open(f.path()).expect_err("corrupt");
        assert!(
            matches!(err, DetectError::Corrupt { ref reason, .. } if reason.contains("checksum"))
        );
    }

    #[test]
    fn bad_geometry_is_corrupt_without_a_checksum() {
        let mut sb = ext4_superblock(8192);
        sb[0x64..0x68].copy_from_slice(&0u32.to_le_bytes()); // no metadata_csum
        sb[0x00..0x04].copy_from_slice(&7u32.to_le_bytes()); // 7 inodes for 2048 per group
        let f = image_file(&sb, 8192 * 1024);
        let err = open(f.path()).expect_err("corrupt");
        assert!(
            matches!(err, DetectError::Corrupt { ref reason, .. } if reason.contains("inodes"))
        );
    }

    #[test]
    fn missing_empty_directory_and_junk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope.img");
        assert!(matches!(open(&missing), Err(DetectError::Missing(_))));
        assert!(matches!(open(dir.path()), Err(DetectError::Directory(_))));
        let empty = dir.path().join("empty.img");
        std::fs::write(&empty, b"").expect("write");
        assert!(matches!(open(&empty), Err(DetectError::Empty(_))));
        let junk = dir.path().join("junk.img");
        std::fs::write(&junk, vec![0x5au8; 64 * 1024]).expect("write");
        let err = open(&junk).expect_err("junk");
        assert!(matches!(err, DetectError::NotAFilesystem(_)));
        assert!(err.to_string().contains("not a filesystem image"));
        let tiny = dir.path().join("tiny.img");
        std::fs::write(&tiny, b"hello").expect("write");
        assert!(matches!(open(&tiny), Err(DetectError::NotAFilesystem(_))));
    }

    #[test]
    fn other_formats_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sq = dir.path().join("sq.img");
        let mut bytes = vec![0u8; 8192];
        bytes[..4].copy_from_slice(b"hsqs");
        std::fs::write(&sq, &bytes).expect("write");
        assert!(matches!(
            open(&sq),
            Err(DetectError::Unsupported {
                format: "squashfs",
                ..
            })
        ));
        let mut bytes = vec![0u8; 8192];
        bytes[512..520].copy_from_slice(b"EFI PART");
        let gpt = dir.path().join("gpt.img");
        std::fs::write(&gpt, &bytes).expect("write");
        assert!(matches!(
            open(&gpt),
            Err(DetectError::Unsupported {
                format: "a GPT disk",
                ..
            })
        ));
    }
}
