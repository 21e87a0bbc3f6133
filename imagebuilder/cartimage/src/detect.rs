//! Recognising an image from its superblock.
//!
//! [`open`] answers the questions a user's typo or a broken copy raises before anything is
//! attached to a loop device: does the file exist, is it a regular file, is it empty, which
//! filesystem does it hold, is the superblock sane, and is the file as long as the filesystem
//! says it is. Each answer is one [`DetectError`] whose message names the problem and the fix.
//!
//! Three filesystems are recognised by their superblocks: ext2/3/4 (`s_magic` 0xEF53 at
//! 1024 + 0x38), erofs (`EROFS_SUPER_MAGIC_V1` at 1024, its crc32c checked when it has one)
//! and squashfs 4.0 (`hsqs` at 0). A file that starts with a GPT (`EFI PART` in the header at
//! LBA 1, for 512- or 4096-byte sectors) is a disk image: the filesystem is the one in its
//! partition named [`PARTITION_NAME`], read with the `gpt` crate, and [`Detected`] says where
//! in the file that partition lies (`offset`, `size`) so the loop device can be limited to it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use gpt::disk::LogicalBlockSize;

use crate::superblock::{
    EROFS_MAGIC, EROFS_OFFSET, EROFS_SUPERBLOCK_SIZE, EXT_SUPERBLOCK_OFFSET, EXT_SUPERBLOCK_SIZE,
    ErofsSuperblock, ExtSuperblock, ExtVariant, SQUASHFS_MAGIC, SQUASHFS_SUPERBLOCK_SIZE,
    SquashfsSuperblock,
};

/// The name of the GPT partition that holds the filesystem in a disk image. `cartbuild`
/// writes disks with this name and `cartinject` looks for it: keep the two in step.
pub const PARTITION_NAME: &str = "crashcart";

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
    /// erofs (read-only by design).
    Erofs {
        /// Block size in bytes.
        block_size: u64,
        /// `volume_name`.
        label: String,
    },
    /// squashfs 4.0 (read-only, compressed).
    Squashfs {
        /// The compressor (`gzip`, `xz`, `zstd`, ...).
        compression: &'static str,
        /// Data block size in bytes.
        block_size: u32,
    },
}

impl Format {
    /// The filesystem type to hand to the kernel (`fsopen`/`mount`).
    pub fn kernel_fstype(&self) -> &'static str {
        match self {
            // The ext4 driver mounts ext2 and ext3 as well (CONFIG_EXT4_USE_FOR_EXT2).
            Format::Ext { .. } => "ext4",
            Format::Erofs { .. } => "erofs",
            Format::Squashfs { .. } => "squashfs",
        }
    }

    /// A short human name, such as `ext4`.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Ext { variant, .. } => variant.name(),
            Format::Erofs { .. } => "erofs",
            Format::Squashfs { .. } => "squashfs",
        }
    }
}

/// The GPT partition a filesystem was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its number in the table (1 for the first entry).
    pub number: u32,
    /// Its name ([`PARTITION_NAME`]).
    pub name: String,
}

/// What [`open`] found in an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The filesystem.
    pub format: Format,
    /// Byte offset of the filesystem in the file (0 unless the file is a partitioned disk).
    pub offset: u64,
    /// Bytes from `offset` that belong to the filesystem: the filesystem's own size for a
    /// bare image, the whole partition for a disk (a loop device is limited to it).
    pub size: u64,
    /// The GPT partition, for a disk image.
    pub partition: Option<Partition>,
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
        "{0} is not a filesystem image (no ext2/ext3/ext4, erofs or squashfs superblock and no GPT): give an image built by `cartbuild`"
    )]
    NotAFilesystem(PathBuf),
    /// The `crashcart` partition of a disk holds no known filesystem.
    #[error(
        "partition {number} (`{PARTITION_NAME}`) of disk image {path} holds no ext2/ext3/ext4, erofs or squashfs filesystem: write the image into that partition again"
    )]
    PartitionNotAFilesystem {
        /// The disk image.
        path: PathBuf,
        /// The partition's number.
        number: u32,
    },
    /// A GPT disk without a partition named `crashcart`.
    #[error(
        "disk image {path} has no GPT partition named `{PARTITION_NAME}` (its partitions: {}): name the partition that holds the tools `{PARTITION_NAME}`, or give the filesystem image itself", names_or_none(.names)
    )]
    NoPartition {
        /// The disk image.
        path: PathBuf,
        /// The names of the partitions it has.
        names: Vec<String>,
    },
    /// More than one partition is named `crashcart`.
    #[error(
        "disk image {path} has {count} GPT partitions named `{PARTITION_NAME}`: keep exactly one"
    )]
    SeveralPartitions {
        /// The disk image.
        path: PathBuf,
        /// How many.
        count: usize,
    },
    /// The partition table could not be read.
    #[error("disk image {path} has a broken GPT ({reason}): write the disk image again")]
    BadPartitionTable {
        /// The disk image.
        path: PathBuf,
        /// What the `gpt` crate said.
        reason: String,
    },
    /// The file is shorter than the filesystem.
    #[error(
        "image {path} is truncated: its {format} needs {needed} bytes but the file has {actual}: copy or build it again"
    )]
    Truncated {
        /// The image.
        path: PathBuf,
        /// What is cut short (`ext4 filesystem`, `GPT partition 2`, ...).
        format: String,
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

fn names_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names
            .iter()
            .map(|n| {
                if n.is_empty() {
                    "(unnamed)".to_string()
                } else {
                    format!("`{n}`")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
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

/// Reads `len` bytes' worth of `file` (named `path` in errors) and identifies its filesystem,
/// or the filesystem in its `crashcart` partition when it is a GPT disk.
pub fn detect(file: &impl FileExt, len: u64, path: &Path) -> Result<Detected, DetectError> {
    if len == 0 {
        return Err(DetectError::Empty(path.to_owned()));
    }
    let window = Window {
        file,
        base: 0,
        len,
        path,
    };
    if let Some(block_size) = gpt_block_size(&window)? {
        return detect_partition(file, len, path, block_size);
    }
    let (format, size) = window
        .filesystem()?
        .ok_or_else(|| DetectError::NotAFilesystem(path.to_owned()))?;
    Ok(Detected {
        format,
        offset: 0,
        size,
        partition: None,
    })
}

/// A byte range of the image file, read with positioned reads.
struct Window<'a, F: FileExt> {
    file: &'a F,
    base: u64,
    len: u64,
    path: &'a Path,
}

impl<F: FileExt> Window<'_, F> {
    /// Fills `buf` from `offset` in the window; `false` when the window is too short.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<bool, DetectError> {
        let end = offset.checked_add(u64::try_from(buf.len()).unwrap_or(u64::MAX));
        if end.is_none_or(|end| end > self.len) {
            return Ok(false);
        }
        self.file
            .read_exact_at(buf, self.base + offset)
            .map(|()| true)
            .map_err(|source| DetectError::Io {
                path: self.path.to_owned(),
                source,
            })
    }

    fn corrupt(&self, reason: String) -> DetectError {
        DetectError::Corrupt {
            path: self.path.to_owned(),
            reason,
        }
    }

    fn truncated(&self, format: &str, needed: u64) -> DetectError {
        DetectError::Truncated {
            path: self.path.to_owned(),
            format: format!("{format} filesystem"),
            needed,
            actual: self.len,
        }
    }

    /// The filesystem in the window and the bytes it spans, or `None` for no known one.
    fn filesystem(&self) -> Result<Option<(Format, u64)>, DetectError> {
        let mut magic = [0u8; 4];
        if self.read_at(0, &mut magic)? && u32::from_le_bytes(magic) == SQUASHFS_MAGIC {
            return self.squashfs().map(Some);
        }
        if self.read_at(EROFS_OFFSET, &mut magic)? && u32::from_le_bytes(magic) == EROFS_MAGIC {
            return self.erofs().map(Some);
        }
        let mut raw = [0u8; EXT_SUPERBLOCK_SIZE];
        if !self.read_at(EXT_SUPERBLOCK_OFFSET, &mut raw)? {
            // Too short to hold even a superblock.
            return Ok(None);
        }
        match ExtSuperblock::parse(&raw) {
            Some(sb) => self.ext(&sb).map(Some),
            None => Ok(None),
        }
    }

    fn ext(&self, sb: &ExtSuperblock) -> Result<(Format, u64), DetectError> {
        if let Some(reason) = sb.geometry_problem() {
            return Err(self.corrupt(reason));
        }
        // geometry_problem() has checked the block size, so both are Some here.
        let (Some(block_size), Some(needed)) = (sb.block_size(), sb.filesystem_bytes()) else {
            return Err(self.corrupt("filesystem size overflows".into()));
        };
        if needed > self.len {
            return Err(self.truncated(sb.variant().name(), needed));
        }
        let format = Format::Ext {
            variant: sb.variant(),
            block_size,
            label: sb.volume_name.clone(),
        };
        Ok((format, needed))
    }

    fn erofs(&self) -> Result<(Format, u64), DetectError> {
        let mut raw = [0u8; EROFS_SUPERBLOCK_SIZE];
        if !self.read_at(EROFS_OFFSET, &mut raw)? {
            return Err(self.truncated("erofs", EROFS_OFFSET + 128));
        }
        let sb = ErofsSuperblock::parse(&raw)
            .ok_or_else(|| self.corrupt("erofs superblock vanished".into()))?;
        if let Some(reason) = sb.geometry_problem() {
            return Err(self.corrupt(reason));
        }
        let (Some(block_size), Some(needed), Some(span)) =
            (sb.block_size(), sb.filesystem_bytes(), sb.checksum_span())
        else {
            return Err(self.corrupt("filesystem size overflows".into()));
        };
        if needed > self.len {
            return Err(self.truncated("erofs", needed));
        }
        if sb.has_checksum() {
            let mut covered = vec![0u8; usize::try_from(span).unwrap_or(usize::MAX)];
            if !self.read_at(EROFS_OFFSET + 8, &mut covered)? {
                return Err(self.truncated("erofs", EROFS_OFFSET + 8 + span));
            }
            let computed = ErofsSuperblock::compute_checksum(&covered);
            if computed != sb.checksum {
                return Err(self.corrupt(format!(
                    "superblock checksum is {:#010x}, computed {computed:#010x}",
                    sb.checksum
                )));
            }
        }
        let format = Format::Erofs {
            block_size,
            label: sb.volume_name,
        };
        Ok((format, needed))
    }

    fn squashfs(&self) -> Result<(Format, u64), DetectError> {
        let mut raw = [0u8; SQUASHFS_SUPERBLOCK_SIZE];
        if !self.read_at(0, &mut raw)? {
            return Err(self.truncated("squashfs", 96));
        }
        let sb = SquashfsSuperblock::parse(&raw)
            .ok_or_else(|| self.corrupt("squashfs superblock vanished".into()))?;
        if let Some(reason) = sb.geometry_problem() {
            return Err(self.corrupt(reason));
        }
        if sb.bytes_used > self.len {
            return Err(self.truncated("squashfs", sb.bytes_used));
        }
        let format = Format::Squashfs {
            compression: sb.compression_name(),
            block_size: sb.block_size,
        };
        Ok((format, sb.bytes_used))
    }
}

/// The sector size of the GPT the window starts with: the header (`EFI PART`) is at LBA 1,
/// byte 512 or 4096 (UEFI 2.10, 5.3.1). `None` when there is no GPT.
fn gpt_block_size<F: FileExt>(
    window: &Window<'_, F>,
) -> Result<Option<LogicalBlockSize>, DetectError> {
    for (at, size) in [
        (512, LogicalBlockSize::Lb512),
        (4096, LogicalBlockSize::Lb4096),
    ] {
        let mut signature = [0u8; 8];
        if window.read_at(at, &mut signature)? && &signature == b"EFI PART" {
            return Ok(Some(size));
        }
    }
    Ok(None)
}

/// The only partition entry size the `gpt` crate reads (it panics on any other).
const GPT_ENTRY_SIZE: u32 = 128;
/// The most partition entries a GPT header may claim. The `gpt` crate reads the whole array
/// and holds it in memory, so a header claiming 2^32 entries would have it read and allocate
/// up to 512 GiB of a large (or sparse) image. Disks have 128; 16384 is 2 MiB of entries.
const MAX_GPT_ENTRIES: u32 = 16_384;

/// Refuses, before the `gpt` crate reads them, what it cannot read safely in the headers it
/// may use: the primary one at LBA 1 and the backup one in the last sector (which it uses
/// when the primary one's checksum is wrong). Found by fuzzing (fuzz/fuzz_targets/detect.rs).
fn check_gpt_headers<F: FileExt>(window: &Window<'_, F>, sector: u64) -> Result<(), DetectError> {
    let backup = (window.len >= 3 * sector).then(|| (window.len / sector - 1) * sector);
    for at in std::iter::once(sector).chain(backup) {
        let mut header = [0u8; 92];
        if !window.read_at(at, &mut header)? || &header[..8] != b"EFI PART" {
            continue;
        }
        let (entries, entry_size) = (
            crate::le::u32_at(&header, 80),
            crate::le::u32_at(&header, 84),
        );
        let reason = if entry_size != GPT_ENTRY_SIZE {
            format!(
                "the header at byte {at} gives {entry_size}-byte partition entries; only {GPT_ENTRY_SIZE}-byte entries are supported"
            )
        } else if entries > MAX_GPT_ENTRIES {
            format!(
                "the header at byte {at} claims {entries} partition entries, more than the {MAX_GPT_ENTRIES} read"
            )
        } else {
            continue;
        };
        return Err(DetectError::BadPartitionTable {
            path: window.path.to_owned(),
            reason,
        });
    }
    Ok(())
}

/// The filesystem in the `crashcart` partition of a GPT disk.
fn detect_partition(
    file: &impl FileExt,
    len: u64,
    path: &Path,
    block_size: LogicalBlockSize,
) -> Result<Detected, DetectError> {
    let bad = |reason: String| DetectError::BadPartitionTable {
        path: path.to_owned(),
        reason,
    };
    check_gpt_headers(
        &Window {
            file,
            base: 0,
            len,
            path,
        },
        u64::from(block_size),
    )?;
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(block_size)
        .open_from_device(ReadOnlyDevice {
            file,
            position: 0,
            len,
        })
        .map_err(|e| bad(e.to_string()))?;
    let used: Vec<(&u32, &gpt::partition::Partition)> = disk
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .collect();
    let named: Vec<_> = used
        .iter()
        .filter(|(_, p)| p.name == PARTITION_NAME)
        .collect();
    let (number, part) = match named.as_slice() {
        [one] => (*one.0, one.1),
        [] => {
            return Err(DetectError::NoPartition {
                path: path.to_owned(),
                names: used.iter().map(|(_, p)| p.name.clone()).collect(),
            });
        }
        many => {
            return Err(DetectError::SeveralPartitions {
                path: path.to_owned(),
                count: many.len(),
            });
        }
    };
    let offset = part
        .bytes_start(block_size)
        .map_err(|e| bad(e.to_string()))?;
    let size = part.bytes_len(block_size).map_err(|e| bad(e.to_string()))?;
    let end = offset
        .checked_add(size)
        .ok_or_else(|| bad(format!("partition {number} ends past 2^64 bytes")))?;
    if end > len {
        return Err(DetectError::Truncated {
            path: path.to_owned(),
            format: format!("GPT partition {number} (`{PARTITION_NAME}`)"),
            needed: end,
            actual: len,
        });
    }
    let window = Window {
        file,
        base: offset,
        len: size,
        path,
    };
    let (format, _) = window
        .filesystem()?
        .ok_or_else(|| DetectError::PartitionNotAFilesystem {
            path: path.to_owned(),
            number,
        })?;
    Ok(Detected {
        format,
        offset,
        size,
        partition: Some(Partition {
            number,
            name: PARTITION_NAME.to_string(),
        }),
    })
}

/// The image as the `gpt` crate's `DiskDevice` (`Read + Write + Seek`): positioned reads
/// of the open file, and every write refused, so reading the table can never change it.
struct ReadOnlyDevice<'a, F: FileExt> {
    file: &'a F,
    position: u64,
    len: u64,
}

impl<F: FileExt> std::fmt::Debug for ReadOnlyDevice<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "image at byte {} of {}", self.position, self.len)
    }
}

impl<F: FileExt> Read for ReadOnlyDevice<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.position)?;
        self.position += u64::try_from(n).map_err(io::Error::other)?;
        Ok(n)
    }
}

impl<F: FileExt> Write for ReadOnlyDevice<'_, F> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the image is opened read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<F: FileExt> Seek for ReadOnlyDevice<'_, F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "seek out of range");
        self.position = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::End(delta) => self.len.checked_add_signed(delta).ok_or_else(invalid)?,
            SeekFrom::Current(delta) => self
                .position
                .checked_add_signed(delta)
                .ok_or_else(invalid)?,
        };
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superblock::crc32c_raw;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

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

    /// An erofs superblock block (4 KiB blocks, `blocks` of them) with a correct checksum.
    fn erofs_head(blocks: u32) -> Vec<u8> {
        let mut head = vec![0u8; 4096];
        head[1024..1028].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        head[1032..1036].copy_from_slice(&1u32.to_le_bytes()); // SB_CHKSUM
        head[1036] = 12;
        head[1060..1064].copy_from_slice(&blocks.to_le_bytes());
        head[1088..1093].copy_from_slice(b"tools");
        let crc = ErofsSuperblock::compute_checksum(&head[1032..4096]);
        head[1028..1032].copy_from_slice(&crc.to_le_bytes());
        head
    }

    /// A squashfs superblock (gzip, 128 KiB blocks) saying it uses `bytes_used` bytes.
    fn squashfs_head(bytes_used: u64) -> Vec<u8> {
        let mut head = vec![0u8; 4096];
        head[0..4].copy_from_slice(b"hsqs");
        head[4..8].copy_from_slice(&3u32.to_le_bytes()); // inodes
        head[12..16].copy_from_slice(&(128u32 * 1024).to_le_bytes());
        head[20..22].copy_from_slice(&1u16.to_le_bytes()); // gzip
        head[22..24].copy_from_slice(&17u16.to_le_bytes());
        head[28..30].copy_from_slice(&4u16.to_le_bytes());
        head[40..48].copy_from_slice(&bytes_used.to_le_bytes());
        head
    }

    fn file_with(dir: &Path, name: &str, head: &[u8], len: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, head).expect("write");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(len)
            .expect("set_len");
        path
    }

    #[test]
    fn erofs_is_detected_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = file_with(dir.path(), "e.img", &erofs_head(16), 16 * 4096);
        let (_, d) = open(&good).expect("erofs");
        assert_eq!(
            (d.format.name(), d.format.kernel_fstype()),
            ("erofs", "erofs")
        );
        assert_eq!((d.offset, d.size, d.partition), (0, 16 * 4096, None));
        assert!(matches!(&d.format, Format::Erofs { label, block_size: 4096 } if label == "tools"));

        let short = file_with(dir.path(), "s.img", &erofs_head(16), 8 * 4096);
        assert!(
            matches!(open(&short), Err(DetectError::Truncated { needed, .. }) if needed == 16 * 4096)
        );

        let mut head = erofs_head(16);
        head[2000] ^= 1; // inside the checksummed block
        let flipped = file_with(dir.path(), "f.img", &head, 16 * 4096);
        let err = open(&flipped).expect_err("corrupt");
        assert!(
            matches!(&err, DetectError::Corrupt { reason, .. } if reason.contains("checksum")),
            "{err}"
        );

        let mut head = erofs_head(16);
        head[1036] = 30; // block size 2^30
        let huge = file_with(dir.path(), "h.img", &head, 16 * 4096);
        assert!(matches!(open(&huge), Err(DetectError::Corrupt { .. })));
    }

    #[test]
    fn squashfs_is_detected_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = file_with(dir.path(), "q.img", &squashfs_head(10_000), 12_288);
        let (_, d) = open(&good).expect("squashfs");
        assert_eq!(d.format.kernel_fstype(), "squashfs");
        assert_eq!(d.size, 10_000);
        assert!(matches!(
            d.format,
            Format::Squashfs {
                compression: "gzip",
                block_size: 131_072
            }
        ));

        let short = file_with(dir.path(), "s.img", &squashfs_head(10_000), 5_000);
        assert!(matches!(open(&short), Err(DetectError::Truncated { .. })));

        let mut head = squashfs_head(10_000);
        head[28] = 3; // squashfs 3.x
        let old = file_with(dir.path(), "o.img", &head, 12_288);
        let err = open(&old).expect_err("old");
        assert!(err.to_string().contains("version 3.0"), "{err}");

        let mut head = squashfs_head(10_000);
        head[22] = 16; // block_log disagrees with block_size
        let bad = file_with(dir.path(), "b.img", &head, 12_288);
        assert!(matches!(open(&bad), Err(DetectError::Corrupt { .. })));
    }

    /// A 4 MiB GPT disk with the given partitions (name, bytes), each filled by `fill`.
    fn gpt_disk(dir: &Path, parts: &[(&str, u64, Option<&[u8]>)]) -> PathBuf {
        let path = dir.join("disk.img");
        let file = File::create(&path).expect("create");
        file.set_len(4 << 20).expect("set_len");
        drop(file);
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .create_from_device(device, None)
            .expect("gpt");
        let mut starts = Vec::new();
        for (name, bytes, _) in parts {
            let id = disk
                .add_partition(name, *bytes, gpt::partition_types::LINUX_FS, 0, None)
                .expect("add");
            let start = disk.partitions()[&id]
                .bytes_start(LogicalBlockSize::Lb512)
                .expect("start");
            starts.push(start);
        }
        disk.write().expect("write table");
        let device = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        for ((_, _, fill), start) in parts.iter().zip(starts) {
            if let Some(fill) = fill {
                device.write_all_at(fill, start).expect("fill");
            }
        }
        path
    }

    #[test]
    fn a_gpt_disk_gives_its_crashcart_partition() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ext = vec![0u8; 1024];
        ext.extend_from_slice(&ext4_superblock(1024));
        let path = gpt_disk(
            dir.path(),
            &[
                ("boot", 1 << 20, None),
                (PARTITION_NAME, 1 << 20, Some(&ext)),
            ],
        );
        let (_, d) = open(&path).expect("detected");
        assert_eq!(d.format.name(), "ext4");
        assert!(d.offset >= 1 << 20, "offset {}", d.offset);
        assert_eq!(d.size, 1 << 20);
        assert_eq!(
            d.partition,
            Some(Partition {
                number: 2,
                name: PARTITION_NAME.into()
            })
        );

        // A filesystem larger than its partition is truncated.
        let mut big = vec![0u8; 1024];
        big.extend_from_slice(&ext4_superblock(8192));
        let path = gpt_disk(dir.path(), &[(PARTITION_NAME, 1 << 20, Some(&big))]);
        assert!(matches!(open(&path), Err(DetectError::Truncated { .. })));
    }

    #[test]
    fn gpt_disks_without_one_crashcart_partition_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = gpt_disk(
            dir.path(),
            &[("boot", 1 << 20, None), ("root", 1 << 20, None)],
        );
        let err = open(&path).expect_err("no crashcart");
        assert!(
            matches!(&err, DetectError::NoPartition { names, .. } if names == &["boot", "root"])
        );
        assert!(
            err.to_string()
                .contains("no GPT partition named `crashcart` (its partitions: `boot`, `root`)"),
            "{err}"
        );

        let path = gpt_disk(dir.path(), &[(PARTITION_NAME, 1 << 20, None)]);
        assert!(matches!(
            open(&path),
            Err(DetectError::PartitionNotAFilesystem { number: 1, .. })
        ));

        let path = gpt_disk(
            dir.path(),
            &[
                (PARTITION_NAME, 1 << 20, None),
                (PARTITION_NAME, 1 << 20, None),
            ],
        );
        assert!(matches!(
            open(&path),
            Err(DetectError::SeveralPartitions { count: 2, .. })
        ));

        // A header signature with nothing behind it.
        let mut bytes = vec![0u8; 8192];
        bytes[512..520].copy_from_slice(b"EFI PART");
        let broken = dir.path().join("broken.img");
        std::fs::write(&broken, &bytes).expect("write");
        assert!(matches!(
            open(&broken),
            Err(DetectError::BadPartitionTable { .. })
        ));
    }

    /// Sets the entry count and size of the GPT header at byte `at`, with a right checksum.
    fn patch_gpt_header(bytes: &mut [u8], at: usize, entries: u32, entry_size: u32) {
        bytes[at + 80..at + 84].copy_from_slice(&entries.to_le_bytes());
        bytes[at + 84..at + 88].copy_from_slice(&entry_size.to_le_bytes());
        bytes[at + 16..at + 20].fill(0);
        let crc = crc32fast::hash(&bytes[at..at + 92]);
        bytes[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
    }

    /// Found by fuzzing (fuzz/fuzz_targets/detect.rs): a GPT header with a right checksum and
    /// 32768-byte entries made the `gpt` crate panic (it asserts 128-byte entries); one
    /// claiming billions of entries has it read and allocate the whole array. Both headers it
    /// may use are checked: the backup one counts when the primary one's checksum is wrong.
    #[test]
    fn fuzz_regression_gpt_headers_the_gpt_crate_cannot_read_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = gpt_disk(dir.path(), &[(PARTITION_NAME, 1 << 20, None)]);
        let good = std::fs::read(&path).expect("read");
        let last = good.len() - 512;
        let broken = dir.path().join("broken.img");
        let mut primary_broken = good.clone();
        primary_broken[512 + 16] ^= 1;
        for (mut bytes, at, entries, entry_size, says) in [
            (good.clone(), 512, 4, 32768, "32768-byte partition entries"),
            (
                good.clone(),
                512,
                1 << 31,
                128,
                "claims 2147483648 partition entries",
            ),
            (primary_broken, last, 64, 256, "256-byte partition entries"),
        ] {
            patch_gpt_header(&mut bytes, at, entries, entry_size);
            std::fs::write(&broken, &bytes).expect("write");
            let err = open(&broken).expect_err("refused");
            assert!(
                matches!(err, DetectError::BadPartitionTable { .. }),
                "{err}"
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("header at byte {at}")),
                "{message}"
            );
            assert!(message.contains(says), "{message}");
        }
    }
}
