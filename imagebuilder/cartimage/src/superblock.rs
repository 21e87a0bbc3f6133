//! Superblocks as they lie on disk, read without mounting anything.
//!
//! Only the fields that format detection needs are decoded. The layouts follow the kernel's
//! own headers: `struct ext4_super_block` (`fs/ext4/ext4.h`,
//! `Documentation/filesystems/ext4/super.rst`), `struct erofs_super_block`
//! (`fs/erofs/erofs_fs.h`) and `struct squashfs_super_block` (`fs/squashfs/squashfs_fs.h`);
//! the sanity checks are the ones each driver's `fill_super` makes before it reads anything
//! else, so an image that fails them is corrupt rather than of an unknown kind.

use crate::ext4::{compat, incompat, ro_compat};
use crate::le::{u16_at as le16, u32_at as le32, u64_at as le64};

/// Where the ext2/3/4 superblock starts in the filesystem ([`crate::ext4::SUPERBLOCK_OFFSET`]).
pub const EXT_SUPERBLOCK_OFFSET: u64 = crate::ext4::SUPERBLOCK_OFFSET;
/// Size of the ext2/3/4 superblock on disk.
pub const EXT_SUPERBLOCK_SIZE: usize = crate::ext4::SUPERBLOCK_SIZE;
/// `s_magic` of every ext2/3/4 filesystem.
pub const EXT_MAGIC: u16 = crate::ext4::MAGIC;
/// erofs' `EROFS_SUPER_MAGIC_V1`, little-endian at offset 1024 (`fs/erofs/erofs_fs.h`).
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// erofs superblock offset (`EROFS_SUPER_OFFSET`).
pub const EROFS_OFFSET: u64 = 1024;
/// squashfs' magic `hsqs`, little-endian at offset 0 (`fs/squashfs/squashfs_fs.h`).
pub const SQUASHFS_MAGIC: u32 = 0x7371_7368;

// Feature bits (`fs/ext4/ext4.h`, EXT4_FEATURE_*).
const COMPAT_HAS_JOURNAL: u32 = compat::HAS_JOURNAL;
const INCOMPAT_EXTENTS: u32 = incompat::EXTENTS;
const INCOMPAT_64BIT: u32 = incompat::BIT64;
const INCOMPAT_FLEX_BG: u32 = incompat::FLEX_BG;
const RO_COMPAT_HUGE_FILE: u32 = ro_compat::HUGE_FILE;
const RO_COMPAT_DIR_NLINK: u32 = ro_compat::DIR_NLINK;
const RO_COMPAT_EXTRA_ISIZE: u32 = ro_compat::EXTRA_ISIZE;
const RO_COMPAT_METADATA_CSUM: u32 = ro_compat::METADATA_CSUM;

/// Which member of the ext family a superblock describes.
///
/// The kernel's `ext4` driver mounts all three, so this is informational.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtVariant {
    /// No journal, no ext4 features.
    Ext2,
    /// A journal, no ext4 features.
    Ext3,
    /// Any of extents, 64bit, flex_bg, huge_file, dir_nlink, extra_isize, metadata_csum.
    Ext4,
}

impl ExtVariant {
    /// The name users know (`ext2`, `ext3`, `ext4`).
    pub fn name(self) -> &'static str {
        match self {
            ExtVariant::Ext2 => "ext2",
            ExtVariant::Ext3 => "ext3",
            ExtVariant::Ext4 => "ext4",
        }
    }
}

/// The decoded fields of an ext2/3/4 superblock that detection checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtSuperblock {
    /// `s_inodes_count`.
    pub inodes_count: u32,
    /// `s_blocks_count_lo` plus `s_blocks_count_hi` when the 64bit feature is set.
    pub blocks_count: u64,
    /// `s_first_data_block`: 1 for 1 KiB blocks, else 0.
    pub first_data_block: u32,
    /// `s_log_block_size`: the block size is `1024 << log_block_size`.
    pub log_block_size: u32,
    /// `s_blocks_per_group`.
    pub blocks_per_group: u32,
    /// `s_inodes_per_group`.
    pub inodes_per_group: u32,
    /// `s_magic`.
    pub magic: u16,
    /// `s_rev_level`: 0 is the original format with 128-byte inodes.
    pub rev_level: u32,
    /// `s_inode_size` (128 when `rev_level` is 0).
    pub inode_size: u16,
    /// `s_feature_compat`.
    pub feature_compat: u32,
    /// `s_feature_incompat`.
    pub feature_incompat: u32,
    /// `s_feature_ro_compat`.
    pub feature_ro_compat: u32,
    /// `s_volume_name`, up to the first NUL.
    pub volume_name: String,
    /// `s_checksum`: crc32c of the first 1020 bytes when metadata_csum is set.
    pub checksum: u32,
    /// The checksum computed over the bytes read.
    pub computed_checksum: u32,
}

impl ExtSuperblock {
    /// Decodes the 1024 bytes found at [`EXT_SUPERBLOCK_OFFSET`]. Returns `None` when the
    /// magic number is not ext's.
    pub fn parse(raw: &[u8; EXT_SUPERBLOCK_SIZE]) -> Option<ExtSuperblock> {
        let magic = le16(raw, 0x38);
        if magic != EXT_MAGIC {
            return None;
        }
        let feature_incompat = le32(raw, 0x60);
        let blocks_hi = if feature_incompat & INCOMPAT_64BIT != 0 {
            u64::from(le32(raw, 0x150))
        } else {
            0
        };
        let rev_level = le32(raw, 0x4C);
        let name = &raw[0x78..0x88];
        let name_len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Some(ExtSuperblock {
            inodes_count: le32(raw, 0x00),
            blocks_count: (blocks_hi << 32) | u64::from(le32(raw, 0x04)),
            first_data_block: le32(raw, 0x14),
            log_block_size: le32(raw, 0x18),
            blocks_per_group: le32(raw, 0x20),
            inodes_per_group: le32(raw, 0x28),
            magic,
            rev_level,
            inode_size: if rev_level == 0 { 128 } else { le16(raw, 0x58) },
            feature_compat: le32(raw, 0x5C),
            feature_incompat,
            feature_ro_compat: le32(raw, 0x64),
            volume_name: String::from_utf8_lossy(&name[..name_len]).into_owned(),
            checksum: le32(raw, 0x3FC),
            computed_checksum: crc32c_raw(!0, &raw[..0x3FC]),
        })
    }

    /// Which of ext2, ext3 or ext4 this is, by its feature bits.
    pub fn variant(&self) -> ExtVariant {
        let ext4_incompat = INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG;
        let ext4_ro = RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | RO_COMPAT_METADATA_CSUM;
        if self.feature_incompat & ext4_incompat != 0 || self.feature_ro_compat & ext4_ro != 0 {
            ExtVariant::Ext4
        } else if self.feature_compat & COMPAT_HAS_JOURNAL != 0 {
            ExtVariant::Ext3
        } else {
            ExtVariant::Ext2
        }
    }

    /// Whether the superblock carries a crc32c checksum (metadata_csum).
    pub fn has_checksum(&self) -> bool {
        self.feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }

    /// The block size in bytes, or `None` when `s_log_block_size` is out of range
    /// (the kernel accepts 1 KiB to 64 KiB: `EXT4_MAX_BLOCK_LOG_SIZE`).
    pub fn block_size(&self) -> Option<u64> {
        (self.log_block_size <= 6).then(|| 1024u64 << self.log_block_size)
    }

    /// The first reason, if any, why the kernel would refuse this superblock's geometry.
    ///
    /// These are the checks `ext4_fill_super` makes before it reads anything else, so an
    /// image that fails them is corrupt rather than of an unknown kind.
    pub fn geometry_problem(&self) -> Option<String> {
        let Some(block_size) = self.block_size() else {
            return Some(format!(
                "block size 2^(10+{}) is out of range",
                self.log_block_size
            ));
        };
        if self.has_checksum() && self.checksum != self.computed_checksum {
            return Some(format!(
                "superblock checksum is {:#010x}, computed {:#010x}",
                self.checksum, self.computed_checksum
            ));
        }
        if self.blocks_count == 0 || self.inodes_count == 0 {
            return Some("zero blocks or inodes".into());
        }
        let expected_first = u32::from(block_size == 1024);
        if self.first_data_block != expected_first {
            return Some(format!(
                "first data block is {}, expected {expected_first} for {block_size}-byte blocks",
                self.first_data_block
            ));
        }
        if self.blocks_per_group == 0 || u64::from(self.blocks_per_group) > block_size * 8 {
            return Some(format!("{} blocks per group", self.blocks_per_group));
        }
        if self.inodes_per_group == 0 || u64::from(self.inodes_per_group) > block_size * 8 {
            return Some(format!("{} inodes per group", self.inodes_per_group));
        }
        let inode_size = u64::from(self.inode_size);
        if !inode_size.is_power_of_two() || inode_size < 128 || inode_size > block_size {
            return Some(format!("inode size {inode_size}"));
        }
        if self.blocks_count <= u64::from(self.first_data_block) {
            return Some(format!("{} blocks in total", self.blocks_count));
        }
        let data_blocks = self.blocks_count - u64::from(self.first_data_block);
        let groups = data_blocks.div_ceil(u64::from(self.blocks_per_group));
        // ext4_fill_super: "inodes count not valid" unless inodes_count == groups * ipg.
        // A 64-bit block count can make the product overflow.
        if groups.checked_mul(u64::from(self.inodes_per_group))
            != Some(u64::from(self.inodes_count))
        {
            return Some(format!(
                "{} inodes for {groups} groups of {}",
                self.inodes_count, self.inodes_per_group
            ));
        }
        None
    }

    /// The number of bytes the filesystem spans: `blocks_count * block_size`.
    pub fn filesystem_bytes(&self) -> Option<u64> {
        self.blocks_count.checked_mul(self.block_size()?)
    }
}

/// Bytes of the erofs superblock that detection reads (the on-disk struct is 128 bytes).
pub const EROFS_SUPERBLOCK_SIZE: usize = 128;
/// `EROFS_FEATURE_COMPAT_SB_CHKSUM`: the superblock carries a crc32c.
const EROFS_FEATURE_COMPAT_SB_CHKSUM: u32 = 0x0000_0001;
/// The crc32c seed erofs uses for its superblock checksum (`EROFS_SUPER_MAGIC_V1`'s
/// companion in `erofs_superblock_csum_verify`).
const EROFS_SB_CSUM_SEED: u32 = 0x5045_B54A;

/// The decoded fields of an erofs superblock (`struct erofs_super_block`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsSuperblock {
    /// `checksum`: crc32c of the rest of the superblock block, when `SB_CHKSUM` is set.
    pub checksum: u32,
    /// `feature_compat`.
    pub feature_compat: u32,
    /// `blkszbits`: the block size is `1 << blkszbits`.
    pub blkszbits: u8,
    /// `blocks`: the filesystem's size in blocks.
    pub blocks: u32,
    /// `volume_name`, up to the first NUL.
    pub volume_name: String,
}

impl ErofsSuperblock {
    /// Decodes the bytes found at [`EROFS_OFFSET`]. Returns `None` when the magic number is
    /// not erofs'.
    pub fn parse(raw: &[u8; EROFS_SUPERBLOCK_SIZE]) -> Option<ErofsSuperblock> {
        if le32(raw, 0) != EROFS_MAGIC {
            return None;
        }
        let name = &raw[64..80];
        let name_len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Some(ErofsSuperblock {
            checksum: le32(raw, 4),
            feature_compat: le32(raw, 8),
            blkszbits: raw[12],
            blocks: le32(raw, 36),
            volume_name: String::from_utf8_lossy(&name[..name_len]).into_owned(),
        })
    }

    /// Whether the superblock carries a checksum.
    pub fn has_checksum(&self) -> bool {
        self.feature_compat & EROFS_FEATURE_COMPAT_SB_CHKSUM != 0
    }

    /// The block size in bytes, or `None` when `blkszbits` is outside what the kernel
    /// mounts (512 bytes to 64 KiB; `erofs_read_superblock` refuses the rest).
    pub fn block_size(&self) -> Option<u64> {
        (9..=16)
            .contains(&self.blkszbits)
            .then(|| 1u64 << self.blkszbits)
    }

    /// How many bytes of the first block, from the superblock's `checksum` field on, the
    /// checksum covers (`erofs_superblock_csum_verify`): the block minus the 1024 bytes
    /// before the superblock (when the block is larger) minus `magic` and `checksum`.
    pub fn checksum_span(&self) -> Option<u64> {
        let block = self.block_size()?;
        let after_offset = if block > EROFS_OFFSET {
            block - EROFS_OFFSET
        } else {
            block
        };
        after_offset.checked_sub(8)
    }

    /// The crc32c the kernel computes over `covered`: the [`Self::checksum_span`] bytes that
    /// follow the `checksum` field.
    pub fn compute_checksum(covered: &[u8]) -> u32 {
        crc32c_raw(EROFS_SB_CSUM_SEED, covered)
    }

    /// The first reason, if any, why the kernel would refuse this superblock's geometry.
    pub fn geometry_problem(&self) -> Option<String> {
        if self.block_size().is_none() {
            return Some(format!("block size 2^{} is out of range", self.blkszbits));
        }
        if self.blocks == 0 {
            return Some("zero blocks".into());
        }
        None
    }

    /// The number of bytes the filesystem spans: `blocks << blkszbits`.
    pub fn filesystem_bytes(&self) -> Option<u64> {
        u64::from(self.blocks).checked_mul(self.block_size()?)
    }
}

/// Bytes of the squashfs superblock (`struct squashfs_super_block`).
pub const SQUASHFS_SUPERBLOCK_SIZE: usize = 96;
/// The same, as a file length.
const SQUASHFS_SUPERBLOCK_BYTES: u64 = 96;
/// `SQUASHFS_MAJOR`: the only format version Linux mounts.
const SQUASHFS_MAJOR: u16 = 4;

/// The decoded fields of a squashfs 4.0 superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashfsSuperblock {
    /// `inodes`.
    pub inodes: u32,
    /// `block_size`: bytes per data block.
    pub block_size: u32,
    /// `compression`: 1 gzip, 2 lzma, 3 lzo, 4 xz, 5 lz4, 6 zstd.
    pub compression: u16,
    /// `block_log`: log2 of `block_size`.
    pub block_log: u16,
    /// `s_major`.
    pub major: u16,
    /// `s_minor`.
    pub minor: u16,
    /// `bytes_used`: the filesystem's size in bytes.
    pub bytes_used: u64,
}

impl SquashfsSuperblock {
    /// Decodes the bytes at offset 0. Returns `None` when the magic number is not squashfs'.
    pub fn parse(raw: &[u8; SQUASHFS_SUPERBLOCK_SIZE]) -> Option<SquashfsSuperblock> {
        if le32(raw, 0) != SQUASHFS_MAGIC {
            return None;
        }
        Some(SquashfsSuperblock {
            inodes: le32(raw, 4),
            block_size: le32(raw, 12),
            compression: le16(raw, 20),
            block_log: le16(raw, 22),
            major: le16(raw, 28),
            minor: le16(raw, 30),
            bytes_used: le64(raw, 40),
        })
    }

    /// The compressor's name, as `mksquashfs -comp` spells it.
    pub fn compression_name(&self) -> &'static str {
        match self.compression {
            1 => "gzip",
            2 => "lzma",
            3 => "lzo",
            4 => "xz",
            5 => "lz4",
            6 => "zstd",
            _ => "unknown",
        }
    }

    /// The first reason, if any, why the kernel would refuse this superblock
    /// (`squashfs_fill_super`: version 4.0, a block size of 4 KiB to 1 MiB that matches
    /// `block_log`, a known compressor, at least one inode).
    pub fn geometry_problem(&self) -> Option<String> {
        if self.major != SQUASHFS_MAJOR || self.minor > 0 {
            return Some(format!(
                "squashfs version {}.{} (Linux mounts 4.0)",
                self.major, self.minor
            ));
        }
        if !(4096..=1 << 20).contains(&self.block_size)
            || u32::from(self.block_log) >= 32
            || 1u32 << self.block_log != self.block_size
        {
            return Some(format!(
                "block size {} with block_log {}",
                self.block_size, self.block_log
            ));
        }
        if self.compression_name() == "unknown" {
            return Some(format!("unknown compressor id {}", self.compression));
        }
        if self.inodes == 0 || self.bytes_used < SQUASHFS_SUPERBLOCK_BYTES {
            return Some("no inodes or no bytes used".into());
        }
        None
    }
}

/// CRC-32C (Castagnoli) as the kernel's `crc32c()` computes it: the given seed and no final
/// inversion, which is how ext4 stores `s_checksum` (`ext4_superblock_csum`).
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    let mut crc = seed;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" is 0xE3069283 (with the final inversion).
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn wrong_magic_is_not_ext() {
        let raw = [0u8; EXT_SUPERBLOCK_SIZE];
        assert!(ExtSuperblock::parse(&raw).is_none());
    }

    /// A 64-bit block count of 2^63 with one block and four inodes per group: the inode
    /// check's `groups * inodes_per_group` overflowed (a panic in debug builds, a wrapped
    /// product in release ones). Seen writing the fuzz target and confirmed with it
    /// (fuzz/corpus/superblock/seed-ext4-64bit-overflow); 45 s of fuzzing had not reached it.
    #[test]
    fn fuzz_regression_huge_block_counts_do_not_overflow_the_inode_check() {
        let mut raw = [0u8; EXT_SUPERBLOCK_SIZE];
        let mut put32 = |at: usize, v: u32| raw[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(0x00, 2); // inodes
        put32(0x14, 1); // first data block, for 1 KiB blocks
        put32(0x20, 1); // blocks per group
        put32(0x28, 4); // inodes per group
        put32(0x4C, 1); // dynamic revision
        put32(0x60, INCOMPAT_64BIT);
        put32(0x150, 0x8000_0000); // blocks_count_hi: 2^63 blocks
        raw[0x38..0x3A].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        raw[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        let sb = ExtSuperblock::parse(&raw).expect("ext magic");
        let problem = sb.geometry_problem().expect("refused");
        assert!(problem.contains("inodes for"), "{problem}");
    }
}
