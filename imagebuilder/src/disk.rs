//! `--format gpt`: a GPT disk image that holds the filesystem and describes
//! itself before anyone mounts it.
//!
//! The layout, in 512-byte sectors (LBA), every partition aligned to 1 MiB:
//!
//! ```text
//! LBA 0               protective MBR (one 0xEE partition over the whole disk)
//! LBA 1               primary GPT header
//! LBA 2-33            primary partition entries (128 × 128 bytes)
//! 1 MiB               partition 1 `crashcart`: the ext4 filesystem, byte for byte the
//!                     image `--format ext4` writes (type 0FC63DAF-…, Linux filesystem)
//! next MiB boundary   partition 2 `crashcart-meta`: FAT (label CRASHCART) holding
//!                     manifest.json, sbom.spdx.json, crashcart.sha256 and README.txt
//!                     (type EBD0A0A2-…, basic data, so any OS shows it)
//! last 33 sectors     backup partition entries and backup GPT header
//! ```
//!
//! The disk is a whole number of MiB. Nothing in it comes from randomness or
//! the clock: the disk and partition GUIDs are SHA-256 derived from the
//! filesystem's sha256 (RFC 9562 version 8, "custom"), the FAT volume ID
//! likewise, and every FAT time stamp is the build epoch (1980-01-01 when the
//! epoch is earlier, the first date FAT can hold). So two builds of the same
//! recipe give the same disk bytes.
//!
//! `cartimage::detect` finds the filesystem through the partition named
//! [`PARTITION_NAME`], so `cartinject` attaches such a disk as it does a bare
//! image. The GPT is written with the `gpt` crate and the FAT with `fatfs`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use gpt::disk::LogicalBlockSize;
use sha2::{Digest, Sha256};

pub use cartimage::detect::PARTITION_NAME;

/// Name of the FAT partition holding the manifest, SBOM and checksum.
pub const META_PARTITION_NAME: &str = "crashcart-meta";
/// FAT volume label of that partition.
pub const META_LABEL: [u8; 11] = *b"CRASHCART  ";
/// The manifest's name in the FAT partition.
pub const META_MANIFEST: &str = "manifest.json";
/// The SBOM's name in the FAT partition.
pub const META_SBOM: &str = "sbom.spdx.json";
/// The filesystem's checksum (`sha256sum` format) in the FAT partition.
pub const META_CHECKSUM: &str = "crashcart.sha256";
/// A short explanation for whoever opens the FAT partition.
pub const META_README: &str = "README.txt";

/// Sector size of the disk.
pub const SECTOR: u64 = 512;
/// Partition alignment, and the granularity of the disk's size.
pub const ALIGN: u64 = 1 << 20;
/// Sectors the backup GPT takes at the end: 32 of entries and the header.
const BACKUP_SECTORS: u64 = 33;

/// Why a disk could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The `gpt` crate refused.
    #[error("{path}: GPT: {reason}")]
    Gpt {
        /// The disk.
        path: PathBuf,
        /// What it said.
        reason: String,
    },
    /// The FAT partition could not be written or read.
    #[error("{path}: FAT partition `{META_PARTITION_NAME}`: {source}")]
    Fat {
        /// The disk.
        path: PathBuf,
        /// What fatfs said.
        source: io::Error,
    },
    /// The disk has no `crashcart-meta` partition.
    #[error(
        "{path} has no GPT partition named `{META_PARTITION_NAME}`: it was not written by `cartbuild --format gpt`"
    )]
    NoMeta {
        /// The disk.
        path: PathBuf,
    },
    /// The disk would be too large for the protective MBR's arithmetic.
    #[error("a disk of {bytes} bytes is too large")]
    TooLarge {
        /// Its size.
        bytes: u64,
    },
}

/// Where everything lies on the disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Length of the disk.
    pub disk_size: u64,
    /// Start of partition 1, `crashcart`.
    pub fs_offset: u64,
    /// Length of partition 1 (the filesystem's length, a multiple of 512).
    pub fs_size: u64,
    /// Start of partition 2, `crashcart-meta`.
    pub meta_offset: u64,
    /// Length of partition 2.
    pub meta_size: u64,
}

fn align_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

impl Layout {
    /// The layout for a filesystem of `fs_size` bytes and a FAT of
    /// `meta_size` bytes (both multiples of 512).
    pub fn new(fs_size: u64, meta_size: u64) -> Layout {
        let fs_offset = ALIGN;
        let meta_offset = align_up(fs_offset + fs_size, ALIGN);
        let disk_size = align_up(meta_offset + meta_size + BACKUP_SECTORS * SECTOR, ALIGN);
        Layout {
            disk_size,
            fs_offset,
            fs_size,
            meta_offset,
            meta_size,
        }
    }
}

/// A region of a file as a `Read + Write + Seek` stream (for fatfs).
#[derive(Debug)]
struct Slice<'f> {
    file: &'f File,
    base: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.file.read_at(&mut buf[..n], self.base + self.pos)?;
        self.pos += u64::try_from(n).unwrap_or(u64::MAX);
        Ok(n)
    }
}

impl Write for Slice<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = self.file.write_at(&buf[..n], self.base + self.pos)?;
        self.pos += u64::try_from(n).unwrap_or(u64::MAX);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the partition")
        })?;
        Ok(self.pos)
    }
}

/// Every FAT time stamp: the build epoch (FAT holds 1980 to 2107).
#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// The FAT date and time of `epoch`, clamped to what FAT can hold.
fn fat_time(epoch: u64) -> fatfs::DateTime {
    let (y, mo, d, h, mi, s) = crate::spdx::utc_parts(epoch);
    let (y, mo, d, h, mi, s) = if y < 1980 {
        (1980, 1, 1, 0, 0, 0)
    } else if y > 2107 {
        (2107, 12, 31, 23, 59, 58)
    } else {
        (y, mo, d, h, mi, s)
    };
    let n = |v: u64| u16::try_from(v).unwrap_or(0);
    fatfs::DateTime {
        date: fatfs::Date {
            year: n(y),
            month: n(mo),
            day: n(d),
        },
        time: fatfs::Time {
            hour: n(h),
            min: n(mi),
            sec: n(s),
            millis: 0,
        },
    }
}

/// 16 bytes derived from the filesystem's sha256 and a purpose.
fn derived(fs_sha256: &str, purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"crashcart gpt\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(fs_sha256.as_bytes());
    h.finalize().into()
}

fn derived_uuid(fs_sha256: &str, purpose: &str) -> uuid::Uuid {
    let d = derived(fs_sha256, purpose);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// The files of the FAT partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFiles {
    /// `manifest.json`: the manifest as inside the filesystem.
    pub manifest: Vec<u8>,
    /// `sbom.spdx.json`: the SBOM.
    pub sbom: Vec<u8>,
    /// `crashcart.sha256`: the filesystem's sha256 in `sha256sum` format.
    pub checksum: Vec<u8>,
    /// `README.txt`.
    pub readme: Vec<u8>,
}

impl MetaFiles {
    /// The four files for a filesystem named `fs_name` (the bare image's
    /// file name) with digest `fs_sha256`.
    pub fn new(manifest: &str, sbom: &str, fs_name: &str, fs_sha256: &str) -> MetaFiles {
        let readme = format!(
            "This disk holds a crashcart debug image.\r\n\
             \r\n\
             Partition 1 (GPT name `{PARTITION_NAME}`) is an ext4 filesystem, to be mounted\r\n\
             read-only at /dev/crashcart (cartinject does this for you). Its bytes are the\r\n\
             image {fs_name}; their sha256 is in {META_CHECKSUM}.\r\n\
             \r\n\
             {META_MANIFEST}    every package and file in it, with versions and sha256s\r\n\
             {META_SBOM}   the same as an SPDX 2.3 software bill of materials\r\n\
             {META_CHECKSUM}  sha256sum -c checks an extracted copy of partition 1\r\n"
        );
        MetaFiles {
            manifest: manifest.as_bytes().to_vec(),
            sbom: sbom.as_bytes().to_vec(),
            checksum: cartimage::manifest::checksum_line(fs_sha256, fs_name).into_bytes(),
            readme: readme.into_bytes(),
        }
    }

    fn list(&self) -> [(&'static str, &[u8]); 4] {
        [
            (META_MANIFEST, &self.manifest),
            (META_SBOM, &self.sbom),
            (META_CHECKSUM, &self.checksum),
            (META_README, &self.readme),
        ]
    }

    /// A FAT size that holds the files: their bytes in 4 KiB clusters plus
    /// room for the FATs and directories, in whole MiB.
    fn fat_size(&self) -> u64 {
        let data: u64 = self
            .list()
            .iter()
            .map(|(_, b)| align_up(u64::try_from(b.len()).unwrap_or(u64::MAX), 4096))
            .sum();
        align_up(data + data / 8 + (256 << 10), ALIGN)
    }
}

/// Writes the disk into `out` (truncated first): `fs` (a filesystem image of
/// `fs_size` bytes whose sha256 is `fs_sha256`) in partition 1, `meta` in a
/// FAT in partition 2. `out_path` names the disk in errors.
pub fn write_disk(
    fs: &File,
    fs_size: u64,
    fs_sha256: &str,
    meta: &MetaFiles,
    epoch: u64,
    out: &mut File,
    out_path: &Path,
) -> Result<Layout, DiskError> {
    let io = |source| DiskError::Io {
        path: out_path.to_path_buf(),
        source,
    };
    let mut meta_size = meta.fat_size();
    loop {
        let layout = Layout::new(align_up(fs_size, SECTOR), meta_size);
        out.set_len(0).map_err(io)?;
        out.set_len(layout.disk_size).map_err(io)?;
        copy_filesystem(fs, fs_size, out, layout.fs_offset).map_err(io)?;
        match write_fat(out, &layout, meta, fs_sha256, epoch) {
            Ok(()) => {}
            // Too small after all: double it (deterministically) and retry.
            Err(e)
                if e.kind() == io::ErrorKind::WriteZero
                    || e.kind() == io::ErrorKind::StorageFull
                    || e.to_string().contains("No space") =>
            {
                if meta_size >= 64 * meta.fat_size() {
                    return Err(DiskError::Fat {
                        path: out_path.to_path_buf(),
                        source: e,
                    });
                }
                meta_size *= 2;
                continue;
            }
            Err(source) => {
                return Err(DiskError::Fat {
                    path: out_path.to_path_buf(),
                    source,
                });
            }
        }
        write_gpt(out, &layout, fs_sha256, out_path)?;
        return Ok(layout);
    }
}

/// Copies the filesystem to `offset`, leaving all-zero blocks as holes.
fn copy_filesystem(fs: &File, len: u64, out: &File, offset: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from(len - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        fs.read_exact_at(&mut buf[..n], at)?;
        // Write the non-zero 4 KiB blocks; the rest stays a hole.
        for (i, block) in buf[..n].chunks(4096).enumerate() {
            if block.iter().any(|&b| b != 0) {
                let i = u64::try_from(i).unwrap_or(u64::MAX);
                out.write_all_at(block, offset + at + i * 4096)?;
            }
        }
        at += u64::try_from(n).unwrap_or(u64::MAX);
    }
    Ok(())
}

fn write_fat(
    out: &File,
    layout: &Layout,
    meta: &MetaFiles,
    fs_sha256: &str,
    epoch: u64,
) -> io::Result<()> {
    let slice = || Slice {
        file: out,
        base: layout.meta_offset,
        len: layout.meta_size,
        pos: 0,
    };
    let d = derived(fs_sha256, "fat volume id");
    let volume_id = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    fatfs::format_volume(
        slice(),
        fatfs::FormatVolumeOptions::new()
            .volume_id(volume_id)
            .volume_label(META_LABEL),
    )?;
    // fatfs takes its clock as a `&'static`: one small provider per disk
    // written, leaked on purpose (a build writes at most one disk).
    let clock: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    let fs = fatfs::FileSystem::new(
        slice(),
        fatfs::FsOptions::new()
            .time_provider(clock)
            .update_accessed_date(false),
    )?;
    {
        let root = fs.root_dir();
        for (name, bytes) in meta.list() {
            let mut f = root.create_file(name)?;
            f.truncate()?;
            f.write_all(bytes)?;
            f.flush()?;
        }
    }
    fs.unmount()
}

fn write_gpt(
    out: &mut File,
    layout: &Layout,
    fs_sha256: &str,
    path: &Path,
) -> Result<(), DiskError> {
    let gpt_err = |e: &dyn std::fmt::Display| DiskError::Gpt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut *out, Some(derived_uuid(fs_sha256, "disk")))
        .map_err(|e| gpt_err(&e))?;
    let part = |name: &str, kind: gpt::partition_types::Type, offset: u64, size: u64| {
        gpt::partition::Partition {
            part_type_guid: kind,
            part_guid: derived_uuid(fs_sha256, name),
            first_lba: offset / SECTOR,
            last_lba: (offset + size) / SECTOR - 1,
            flags: 0,
            name: name.to_string(),
        }
    };
    let partitions = [
        (
            1,
            part(
                PARTITION_NAME,
                gpt::partition_types::LINUX_FS,
                layout.fs_offset,
                layout.fs_size,
            ),
        ),
        (
            2,
            part(
                META_PARTITION_NAME,
                gpt::partition_types::BASIC,
                layout.meta_offset,
                layout.meta_size,
            ),
        ),
    ]
    .into_iter()
    .collect();
    disk.update_partitions(partitions)
        .map_err(|e| gpt_err(&e))?;
    disk.write().map_err(|e| gpt_err(&e))?;
    let sectors = layout.disk_size / SECTOR - 1;
    let mbr_len = u32::try_from(sectors).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(mbr_len)
        .overwrite_lba0(out)
        .map_err(|e| gpt_err(&e))?;
    Ok(())
}

/// The `crashcart-meta` partition of a disk, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMeta {
    /// Byte range of the partition.
    pub offset: u64,
    /// Its length.
    pub size: u64,
    /// Every file in its root directory, by name, sorted.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Reads the files of a disk's `crashcart-meta` partition (no mount, no root).
pub fn read_meta(file: &File, path: &Path) -> Result<ReadMeta, DiskError> {
    let gpt_err = |e: &dyn std::fmt::Display| DiskError::Gpt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let device = file.try_clone().map_err(|source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(device)
        .map_err(|e| gpt_err(&e))?;
    let part = disk
        .partitions()
        .values()
        .find(|p| p.is_used() && p.name == META_PARTITION_NAME)
        .ok_or_else(|| DiskError::NoMeta {
            path: path.to_path_buf(),
        })?;
    let offset = part
        .bytes_start(LogicalBlockSize::Lb512)
        .map_err(|e| gpt_err(&e))?;
    let size = part
        .bytes_len(LogicalBlockSize::Lb512)
        .map_err(|e| gpt_err(&e))?;
    let fat_err = |source| DiskError::Fat {
        path: path.to_path_buf(),
        source,
    };
    // fatfs opens read-write; a copy of the partition in memory keeps the
    // disk untouched (the partition is small: see `MetaFiles::fat_size`).
    let mut bytes =
        vec![0u8; usize::try_from(size).map_err(|_| DiskError::TooLarge { bytes: size })?];
    file.read_exact_at(&mut bytes, offset).map_err(fat_err)?;
    let fs =
        fatfs::FileSystem::new(io::Cursor::new(bytes), fatfs::FsOptions::new()).map_err(fat_err)?;
    let mut files = Vec::new();
    for entry in fs.root_dir().iter() {
        let entry = entry.map_err(fat_err)?;
        if !entry.is_file() {
            continue;
        }
        let mut content = Vec::new();
        entry.to_file().read_to_end(&mut content).map_err(fat_err)?;
        files.push((entry.file_name(), content));
    }
    files.sort();
    Ok(ReadMeta {
        offset,
        size,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new, empty file at `path`, open for reading and writing.
    fn scratch(path: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn layout_aligns_partitions_and_leaves_room_for_the_backup_gpt() {
        let l = Layout::new(5 * 4096, 1 << 20);
        assert_eq!(l.fs_offset, 1 << 20);
        assert_eq!(l.meta_offset, 2 << 20);
        assert_eq!(l.disk_size, 4 << 20);
        assert!(l.meta_offset + l.meta_size + 33 * 512 <= l.disk_size);
        let l = Layout::new(1 << 20, 1 << 20);
        assert_eq!(l.meta_offset, 2 << 20);
    }

    #[test]
    fn large_descriptions_get_a_larger_fat() {
        let dir = tempfile::tempdir().unwrap();
        let fs_path = dir.path().join("fs.img");
        let mut fs = scratch(&fs_path);
        crate::ext4::write_image(
            &crate::ext4::Tree::new(),
            &mut fs,
            &crate::ext4::Options::default(),
        )
        .unwrap();
        let fs_len = fs.metadata().unwrap().len();
        // A manifest of a tree with some 50 000 entries.
        let big = "x".repeat(9 << 20);
        let meta = MetaFiles::new(&big, &big, "t-1.img", &"b".repeat(64));
        let path = dir.path().join("d.img");
        let mut out = scratch(&path);
        let layout = write_disk(&fs, fs_len, &"b".repeat(64), &meta, 0, &mut out, &path).unwrap();
        assert!(layout.meta_size >= 18 << 20, "{layout:?}");
        let read = read_meta(&out, &path).unwrap();
        let manifest = read.files.iter().find(|(n, _)| n == META_MANIFEST).unwrap();
        assert_eq!(manifest.1.len(), big.len());
    }

    #[test]
    fn fat_times_are_clamped() {
        assert_eq!(fat_time(0).date.year, 1980);
        let t = fat_time(1_767_225_600);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2026, 1, 1));
        assert_eq!(fat_time(u64::from(u32::MAX)).date.year, 2106);
    }

    #[test]
    fn a_disk_round_trips_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let fs_path = dir.path().join("fs.img");
        let mut tree = crate::ext4::Tree::new();
        let data = crate::ext4::FileData::Bytes(vec![7; 100_000]);
        tree.add_file("f", crate::ext4::Meta::root(0o644), data)
            .unwrap();
        let mut fs = scratch(&fs_path);
        crate::ext4::write_image(&tree, &mut fs, &crate::ext4::Options::default()).unwrap();
        let fs_bytes = std::fs::read(&fs_path).unwrap();
        let fs_len = u64::try_from(fs_bytes.len()).unwrap();
        let meta = MetaFiles::new("{}\n", "{\"spdx\": 1}\n", "t-1.img", &"a".repeat(64));
        let mut digests = Vec::new();
        for name in ["a.disk", "b.disk"] {
            let path = dir.path().join(name);
            let mut out = scratch(&path);
            let layout =
                write_disk(&fs, fs_len, &"a".repeat(64), &meta, 0, &mut out, &path).unwrap();
            assert_eq!(layout.disk_size, out.metadata().unwrap().len());
            let mut copy = vec![0u8; fs_bytes.len()];
            out.read_exact_at(&mut copy, layout.fs_offset).unwrap();
            assert_eq!(copy, fs_bytes);
            let read = read_meta(&out, &path).unwrap();
            let names: Vec<&str> = read.files.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [META_README, META_CHECKSUM, META_MANIFEST, META_SBOM]
            );
            assert_eq!(read.files[2].1, b"{}\n");
            let (_, detected) = cartimage::detect::open(&path).unwrap();
            assert_eq!(detected.offset, layout.fs_offset);
            digests.push(cartimage::manifest::sha256_file(&path).unwrap());
        }
        assert_eq!(digests[0], digests[1]);
    }
}
