//! On-disk structures of ext4, as plain structs with explicit
//! little-endian serialisation.
//!
//! Nothing here decides where anything goes: the writer (`writer.rs`) lays the
//! image out and fills these structs in. Field names follow the kernel's
//! `fs/ext4/ext4.h` (without the `s_`/`bg_`/`i_`/`eh_` prefixes), and so do
//! the byte offsets, which the unit tests at the bottom pin down.
//!
//! Only the fields a read-only image without journal, checksums or `64bit`
//! needs are modelled; every other byte is written as zero. Each struct also
//! has a `decode` so that tests can read back what was encoded.

// The superblock's place, size and magic, and the feature bits, shared with cartimage's
// superblock detection; its little-endian readers too.
pub use cartimage::ext4::{MAGIC, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, compat, incompat, ro_compat};
use cartimage::le::{u16_at as get_u16, u32_at as get_u32};

/// Filesystem block size in bytes: 4 KiB (`s_log_block_size = 2`).
pub const BLOCK_SIZE: usize = 4096;
/// [`BLOCK_SIZE`] as a `u64`, for block arithmetic on byte offsets.
pub const BLOCK_SIZE_U64: u64 = 4096;
/// `s_log_block_size`: block size is `1024 << 2`.
pub const LOG_BLOCK_SIZE: u32 = 2;
/// Blocks per group: one 4 KiB bitmap block covers 32768 blocks.
pub const BLOCKS_PER_GROUP: u32 = 32768;
/// Largest number of inodes per group: one 4 KiB inode bitmap covers 32768.
pub const MAX_INODES_PER_GROUP: u32 = 32768;
/// On-disk inode size (`s_inode_size`).
pub const INODE_SIZE: usize = 256;
/// Inodes in one inode-table block.
pub const INODES_PER_BLOCK: u32 = 16;
/// Size of a group descriptor without the `64bit` feature.
pub const GROUP_DESC_SIZE: usize = 32;
/// Group descriptors per block.
pub const DESCS_PER_BLOCK: u32 = 128;

/// Inode number of the root directory.
pub const ROOT_INO: u32 = 2;
/// First inode that is not reserved (`s_first_ino`); mke2fs and e2fsck put
/// `lost+found` here.
pub const FIRST_INO: u32 = 11;
/// Inode of `lost+found`.
pub const LOST_AND_FOUND_INO: u32 = 11;

/// `i_extra_isize` and `s_{min,want}_extra_isize`: the extra inode fields up
/// to and including `i_projid` (what mke2fs 1.47 uses for 256-byte inodes).
pub const EXTRA_ISIZE: u16 = 32;

/// Longest file name in a directory entry (`EXT4_NAME_LEN`).
pub const NAME_MAX: usize = 255;
/// Most hard links one inode may have (`EXT4_LINK_MAX`).
pub const LINK_MAX: u32 = 65000;
/// A symlink target shorter than `i_block` (60 bytes) is stored inline: a
/// "fast" symlink (`ext4_inode_is_fast_symlink` in fs/ext4/inode.c).
pub const FAST_SYMLINK_MAX: usize = 59;

/// `s_state`: cleanly unmounted.
pub const STATE_VALID: u16 = 0x0001;
/// `s_errors`: continue on errors.
pub const ERRORS_CONTINUE: u16 = 1;
/// `s_flags`: directory hashes use signed chars (what mke2fs picks on x86;
/// without `dir_index` nothing hashes, but e2fsck wants one of the two set).
pub const FLAGS_SIGNED_HASH: u32 = 0x0001;
/// `s_def_hash_version`: half MD4, mke2fs's default.
pub const HASH_HALF_MD4: u8 = 1;

/// Inode mode: regular file.
pub const S_IFREG: u16 = 0o100_000;
/// Inode mode: directory.
pub const S_IFDIR: u16 = 0o040_000;
/// Inode mode: symbolic link.
pub const S_IFLNK: u16 = 0o120_000;

/// `i_flags`: the inode uses extents.
pub const EXTENTS_FL: u32 = 0x0008_0000;

/// Directory entry file types (`EXT4_FT_*`).
pub mod file_type {
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Symbolic link.
    pub const SYMLINK: u8 = 7;
}

/// `eh_magic`.
pub const EXTENT_MAGIC: u16 = 0xF30A;
/// Size of an extent header, extent or extent index.
pub const EXTENT_ENTRY_SIZE: usize = 12;
/// Entries that fit in `i_block` after the header.
pub const EXTENTS_IN_INODE: u16 = 4;
/// Entries that fit in one extent block after the header: (4096 - 12) / 12.
pub const EXTENTS_PER_BLOCK: u16 = 340;
/// Longest initialised extent (`EXT_INIT_MAX_LEN`).
pub const EXTENT_MAX_LEN: u16 = 32768;
/// Deepest extent tree the kernel accepts (`EXT4_MAX_EXTENT_DEPTH`).
pub const EXTENT_MAX_DEPTH: u16 = 5;

fn put_u16(buf: &mut [u8], offset: usize, value: u16) {
    buf[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

/// Splits a 64-bit value into its low and high 32-bit halves.
pub fn split_u64(value: u64) -> (u32, u32) {
    let bytes = value.to_le_bytes();
    let lo = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let hi = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    (lo, hi)
}

/// Joins low and high 32-bit halves.
pub fn join_u64(lo: u32, hi: u32) -> u64 {
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The superblock, at byte 1024 of the image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    /// `s_inodes_count`: inodes per group times groups.
    pub inodes_count: u32,
    /// `s_blocks_count_lo` (no `64bit`, so no high half).
    pub blocks_count: u32,
    /// `s_free_blocks_count_lo`.
    pub free_blocks_count: u32,
    /// `s_free_inodes_count`.
    pub free_inodes_count: u32,
    /// `s_inodes_per_group`.
    pub inodes_per_group: u32,
    /// `s_mtime`: last mount time (never mounted: 0).
    pub mtime: u32,
    /// `s_wtime`: last write time.
    pub wtime: u32,
    /// `s_lastcheck`.
    pub lastcheck: u32,
    /// `s_mkfs_time`.
    pub mkfs_time: u32,
    /// `s_feature_compat`.
    pub feature_compat: u32,
    /// `s_feature_incompat`.
    pub feature_incompat: u32,
    /// `s_feature_ro_compat`.
    pub feature_ro_compat: u32,
    /// `s_uuid`.
    pub uuid: [u8; 16],
    /// `s_volume_name`, NUL-padded.
    pub volume_name: [u8; 16],
    /// `s_hash_seed` (four little-endian words, kept as bytes).
    pub hash_seed: [u8; 16],
    /// `s_log_groups_per_flex`.
    pub log_groups_per_flex: u8,
}

impl Superblock {
    /// Serialises the superblock. Fixed fields (magic, geometry, revision,
    /// inode size, state, …) are written here, not taken from the struct.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        put_u32(&mut b, 0x00, self.inodes_count);
        put_u32(&mut b, 0x04, self.blocks_count);
        // 0x08 s_r_blocks_count_lo: no blocks reserved for root.
        put_u32(&mut b, 0x0C, self.free_blocks_count);
        put_u32(&mut b, 0x10, self.free_inodes_count);
        // 0x14 s_first_data_block: 0 with blocks larger than 1 KiB.
        put_u32(&mut b, 0x18, LOG_BLOCK_SIZE);
        put_u32(&mut b, 0x1C, LOG_BLOCK_SIZE); // s_log_cluster_size
        put_u32(&mut b, 0x20, BLOCKS_PER_GROUP);
        put_u32(&mut b, 0x24, BLOCKS_PER_GROUP); // s_clusters_per_group
        put_u32(&mut b, 0x28, self.inodes_per_group);
        put_u32(&mut b, 0x2C, self.mtime);
        put_u32(&mut b, 0x30, self.wtime);
        // 0x34 s_mnt_count = 0; 0x36 s_max_mnt_count = -1: no forced checks.
        put_u16(&mut b, 0x36, 0xFFFF);
        put_u16(&mut b, 0x38, MAGIC);
        put_u16(&mut b, 0x3A, STATE_VALID);
        put_u16(&mut b, 0x3C, ERRORS_CONTINUE);
        put_u32(&mut b, 0x40, self.lastcheck);
        // 0x44 s_checkinterval = 0; 0x48 s_creator_os = 0 (Linux).
        put_u32(&mut b, 0x4C, 1); // s_rev_level: dynamic
        put_u32(&mut b, 0x54, FIRST_INO);
        put_u16(&mut b, 0x58, 256); // s_inode_size
        put_u32(&mut b, 0x5C, self.feature_compat);
        put_u32(&mut b, 0x60, self.feature_incompat);
        put_u32(&mut b, 0x64, self.feature_ro_compat);
        b[0x68..0x78].copy_from_slice(&self.uuid);
        b[0x78..0x88].copy_from_slice(&self.volume_name);
        b[0xEC..0xFC].copy_from_slice(&self.hash_seed);
        b[0xFC] = HASH_HALF_MD4;
        // 0xFE s_desc_size: 0 without `64bit` (the kernel then uses 32).
        put_u32(&mut b, 0x108, self.mkfs_time);
        put_u16(&mut b, 0x15C, EXTRA_ISIZE); // s_min_extra_isize
        put_u16(&mut b, 0x15E, EXTRA_ISIZE); // s_want_extra_isize
        put_u32(&mut b, 0x160, FLAGS_SIGNED_HASH);
        b[0x174] = self.log_groups_per_flex;
        // 0x24C s_backup_bgs = [0, 0]: with sparse_super2, no backups.
        b
    }

    /// Parses what [`Superblock::encode`] wrote (for tests and read-back).
    pub fn decode(b: &[u8; SUPERBLOCK_SIZE]) -> Superblock {
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let mut volume_name = [0; 16];
        volume_name.copy_from_slice(&b[0x78..0x88]);
        let mut hash_seed = [0; 16];
        hash_seed.copy_from_slice(&b[0xEC..0xFC]);
        Superblock {
            inodes_count: get_u32(b, 0x00),
            blocks_count: get_u32(b, 0x04),
            free_blocks_count: get_u32(b, 0x0C),
            free_inodes_count: get_u32(b, 0x10),
            inodes_per_group: get_u32(b, 0x28),
            mtime: get_u32(b, 0x2C),
            wtime: get_u32(b, 0x30),
            lastcheck: get_u32(b, 0x40),
            mkfs_time: get_u32(b, 0x108),
            feature_compat: get_u32(b, 0x5C),
            feature_incompat: get_u32(b, 0x60),
            feature_ro_compat: get_u32(b, 0x64),
            uuid,
            volume_name,
            hash_seed,
            log_groups_per_flex: b[0x174],
        }
    }
}

/// A 32-byte group descriptor (no `64bit`, no checksums).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupDesc {
    /// `bg_block_bitmap_lo`.
    pub block_bitmap: u32,
    /// `bg_inode_bitmap_lo`.
    pub inode_bitmap: u32,
    /// `bg_inode_table_lo`.
    pub inode_table: u32,
    /// `bg_free_blocks_count_lo`.
    pub free_blocks_count: u16,
    /// `bg_free_inodes_count_lo`.
    pub free_inodes_count: u16,
    /// `bg_used_dirs_count_lo`.
    pub used_dirs_count: u16,
}

impl GroupDesc {
    /// Serialises the descriptor.
    pub fn encode(&self) -> [u8; GROUP_DESC_SIZE] {
        let mut b = [0u8; GROUP_DESC_SIZE];
        put_u32(&mut b, 0x00, self.block_bitmap);
        put_u32(&mut b, 0x04, self.inode_bitmap);
        put_u32(&mut b, 0x08, self.inode_table);
        put_u16(&mut b, 0x0C, self.free_blocks_count);
        put_u16(&mut b, 0x0E, self.free_inodes_count);
        put_u16(&mut b, 0x10, self.used_dirs_count);
        // 0x12 bg_flags = 0: every bitmap and table is initialised
        // (no uninit_bg / metadata_csum, so no lazy init and no checksum).
        b
    }

    /// Parses what [`GroupDesc::encode`] wrote.
    pub fn decode(b: &[u8; GROUP_DESC_SIZE]) -> GroupDesc {
        GroupDesc {
            block_bitmap: get_u32(b, 0x00),
            inode_bitmap: get_u32(b, 0x04),
            inode_table: get_u32(b, 0x08),
            free_blocks_count: get_u16(b, 0x0C),
            free_inodes_count: get_u16(b, 0x0E),
            used_dirs_count: get_u16(b, 0x10),
        }
    }
}

/// An inode timestamp: seconds since 1970 as ext4 stores them, a signed
/// 32-bit field plus two epoch bits in the `*_extra` field
/// (`ext4_encode_extra_time` in fs/ext4/ext4.h; nanoseconds are always 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timestamp {
    /// The 32-bit seconds field (`i_mtime` etc.).
    pub seconds: u32,
    /// The `*_extra` field: epoch bits, nanoseconds (always 0) shifted by 2.
    pub extra: u32,
}

impl Timestamp {
    /// Encodes an unsigned 32-bit epoch. Times from 2038 on (bit 31 set) read
    /// as negative in the signed seconds field, so the first epoch bit makes
    /// up for it: the kernel decodes `(s32)seconds + (extra & 3) << 32`.
    pub fn from_epoch(epoch: u32) -> Timestamp {
        Timestamp {
            seconds: epoch,
            extra: u32::from(epoch >= 0x8000_0000),
        }
    }
}

/// A 256-byte inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// `i_mode`: file type and permission bits.
    pub mode: u16,
    /// Owner (`i_uid` and `l_i_uid_high`).
    pub uid: u32,
    /// Group (`i_gid` and `l_i_gid_high`).
    pub gid: u32,
    /// Size in bytes (`i_size_lo` and `i_size_high`).
    pub size: u64,
    /// Access, change, modification and creation time: all the same here.
    pub time: Timestamp,
    /// `i_links_count`.
    pub links_count: u16,
    /// `i_blocks_lo` (low 32 bits of the 512-byte sector count).
    pub blocks_lo: u32,
    /// `l_i_blocks_hi` (high 16 bits, with `huge_file`).
    pub blocks_hi: u16,
    /// `i_flags`.
    pub flags: u32,
    /// `i_block`: extent tree root, or a fast symlink's target.
    pub block: [u8; 60],
}

impl Default for Inode {
    fn default() -> Inode {
        Inode {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            time: Timestamp::default(),
            links_count: 0,
            blocks_lo: 0,
            blocks_hi: 0,
            flags: 0,
            block: [0; 60],
        }
    }
}

impl Inode {
    /// Serialises the inode.
    pub fn encode(&self) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        let (size_lo, size_hi) = split_u64(self.size);
        let [uid_lo0, uid_lo1, uid_hi0, uid_hi1] = self.uid.to_le_bytes();
        let [gid_lo0, gid_lo1, gid_hi0, gid_hi1] = self.gid.to_le_bytes();
        put_u16(&mut b, 0x00, self.mode);
        b[0x02..0x04].copy_from_slice(&[uid_lo0, uid_lo1]);
        put_u32(&mut b, 0x04, size_lo);
        put_u32(&mut b, 0x08, self.time.seconds); // i_atime
        put_u32(&mut b, 0x0C, self.time.seconds); // i_ctime
        put_u32(&mut b, 0x10, self.time.seconds); // i_mtime
        // 0x14 i_dtime = 0
        b[0x18..0x1A].copy_from_slice(&[gid_lo0, gid_lo1]);
        put_u16(&mut b, 0x1A, self.links_count);
        put_u32(&mut b, 0x1C, self.blocks_lo);
        put_u32(&mut b, 0x20, self.flags);
        // 0x24 osd1 (i_version) = 0
        b[0x28..0x64].copy_from_slice(&self.block);
        // 0x64 i_generation = 0, 0x68 i_file_acl_lo = 0
        put_u32(&mut b, 0x6C, size_hi);
        put_u16(&mut b, 0x74, self.blocks_hi);
        b[0x78..0x7A].copy_from_slice(&[uid_hi0, uid_hi1]);
        b[0x7A..0x7C].copy_from_slice(&[gid_hi0, gid_hi1]);
        put_u16(&mut b, 0x80, EXTRA_ISIZE);
        put_u32(&mut b, 0x84, self.time.extra); // i_ctime_extra
        put_u32(&mut b, 0x88, self.time.extra); // i_mtime_extra
        put_u32(&mut b, 0x8C, self.time.extra); // i_atime_extra
        put_u32(&mut b, 0x90, self.time.seconds); // i_crtime
        put_u32(&mut b, 0x94, self.time.extra); // i_crtime_extra
        b
    }

    /// Parses what [`Inode::encode`] wrote.
    pub fn decode(b: &[u8; INODE_SIZE]) -> Inode {
        let mut block = [0; 60];
        block.copy_from_slice(&b[0x28..0x64]);
        let uid = u32::from_le_bytes([b[0x02], b[0x03], b[0x78], b[0x79]]);
        let gid = u32::from_le_bytes([b[0x18], b[0x19], b[0x7A], b[0x7B]]);
        Inode {
            mode: get_u16(b, 0x00),
            uid,
            gid,
            size: join_u64(get_u32(b, 0x04), get_u32(b, 0x6C)),
            time: Timestamp {
                seconds: get_u32(b, 0x10),
                extra: get_u32(b, 0x88),
            },
            links_count: get_u16(b, 0x1A),
            blocks_lo: get_u32(b, 0x1C),
            blocks_hi: get_u16(b, 0x74),
            flags: get_u32(b, 0x20),
            block,
        }
    }
}

/// The header that starts every extent tree node (in `i_block` or in a block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtentHeader {
    /// `eh_entries`: valid entries that follow.
    pub entries: u16,
    /// `eh_max`: capacity of this node.
    pub max: u16,
    /// `eh_depth`: 0 for a leaf (entries are extents), else index entries.
    pub depth: u16,
}

impl ExtentHeader {
    /// Serialises the header (`eh_magic` included, `eh_generation` 0).
    pub fn encode(&self) -> [u8; EXTENT_ENTRY_SIZE] {
        let mut b = [0u8; EXTENT_ENTRY_SIZE];
        put_u16(&mut b, 0, EXTENT_MAGIC);
        put_u16(&mut b, 2, self.entries);
        put_u16(&mut b, 4, self.max);
        put_u16(&mut b, 6, self.depth);
        b
    }

    /// Parses a header; `None` when the magic is wrong.
    pub fn decode(b: &[u8]) -> Option<ExtentHeader> {
        (get_u16(b, 0) == EXTENT_MAGIC).then(|| ExtentHeader {
            entries: get_u16(b, 2),
            max: get_u16(b, 4),
            depth: get_u16(b, 6),
        })
    }
}

/// A leaf entry: `len` blocks from logical block `block` live at `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    /// `ee_block`: first logical block.
    pub block: u32,
    /// `ee_len`: number of blocks, 1..=32768 (initialised extent).
    pub len: u16,
    /// `ee_start_lo` (`ee_start_hi` is 0 without `64bit`).
    pub start: u32,
}

impl Extent {
    /// Serialises the extent.
    pub fn encode(&self) -> [u8; EXTENT_ENTRY_SIZE] {
        let mut b = [0u8; EXTENT_ENTRY_SIZE];
        put_u32(&mut b, 0, self.block);
        put_u16(&mut b, 4, self.len);
        // 6: ee_start_hi = 0
        put_u32(&mut b, 8, self.start);
        b
    }

    /// Parses an extent.
    pub fn decode(b: &[u8]) -> Extent {
        Extent {
            block: get_u32(b, 0),
            len: get_u16(b, 4),
            start: get_u32(b, 8),
        }
    }
}

/// An index entry: the subtree at block `leaf` covers logical blocks from
/// `block` on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtentIndex {
    /// `ei_block`: first logical block the subtree covers.
    pub block: u32,
    /// `ei_leaf_lo` (`ei_leaf_hi` is 0 without `64bit`).
    pub leaf: u32,
}

impl ExtentIndex {
    /// Serialises the index entry.
    pub fn encode(&self) -> [u8; EXTENT_ENTRY_SIZE] {
        let mut b = [0u8; EXTENT_ENTRY_SIZE];
        put_u32(&mut b, 0, self.block);
        put_u32(&mut b, 4, self.leaf);
        b
    }

    /// Parses an index entry.
    pub fn decode(b: &[u8]) -> ExtentIndex {
        ExtentIndex {
            block: get_u32(b, 0),
            leaf: get_u32(b, 4),
        }
    }
}

/// A linear directory entry (`ext4_dir_entry_2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent<'a> {
    /// `inode`.
    pub inode: u32,
    /// `rec_len`: bytes from this entry to the next (or the block's end).
    pub rec_len: u16,
    /// `file_type`: one of [`file_type`].
    pub file_type: u8,
    /// `name` (`name_len` is its length, at most 255).
    pub name: &'a [u8],
}

impl Dirent<'_> {
    /// Size of the fixed part before the name.
    pub const HEADER_SIZE: usize = 8;

    /// The smallest `rec_len` for a name of `name_len` bytes: header plus
    /// name, rounded up to 4 bytes (`EXT4_DIR_REC_LEN`).
    pub fn min_rec_len(name_len: usize) -> usize {
        (Self::HEADER_SIZE + name_len).next_multiple_of(4)
    }

    /// Writes the entry at the start of `buf`, which must hold `rec_len`
    /// bytes; the padding after the name is left as it is (zero).
    ///
    /// # Panics
    /// If the name is longer than 255 bytes or `buf` is shorter than the
    /// header and the name: the directory packer never produces either.
    pub fn encode_into(&self, buf: &mut [u8]) {
        // OK to expect: names are checked against NAME_MAX when the tree is
        // built, so this is an internal invariant.
        let name_len = u8::try_from(self.name.len()).expect("name checked against NAME_MAX");
        put_u32(buf, 0, self.inode);
        put_u16(buf, 4, self.rec_len);
        buf[6] = name_len;
        buf[7] = self.file_type;
        buf[Self::HEADER_SIZE..Self::HEADER_SIZE + self.name.len()].copy_from_slice(self.name);
    }

    /// Parses the entry at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Dirent<'_> {
        let name_len = usize::from(buf[6]);
        Dirent {
            inode: get_u32(buf, 0),
            rec_len: get_u16(buf, 4),
            file_type: buf[7],
            name: &buf[Self::HEADER_SIZE..Self::HEADER_SIZE + name_len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_fields_sit_at_the_kernels_offsets() {
        let sb = Superblock {
            inodes_count: 0x1122_3344,
            blocks_count: 0x5566_7788,
            free_blocks_count: 7,
            free_inodes_count: 8,
            inodes_per_group: 32,
            wtime: 1_700_000_000,
            mkfs_time: 1_700_000_001,
            lastcheck: 1_700_000_002,
            feature_compat: compat::SPARSE_SUPER2,
            feature_incompat: incompat::FILETYPE | incompat::EXTENTS,
            feature_ro_compat: ro_compat::READONLY,
            uuid: [0xAB; 16],
            volume_name: *b"crashcart\0\0\0\0\0\0\0",
            hash_seed: [0xCD; 16],
            log_groups_per_flex: 4,
            ..Superblock::default()
        };
        let b = sb.encode();
        assert_eq!(&b[0x38..0x3A], &[0x53, 0xEF], "s_magic");
        assert_eq!(&b[0x00..0x04], &[0x44, 0x33, 0x22, 0x11], "s_inodes_count");
        assert_eq!(
            &b[0x04..0x08],
            &[0x88, 0x77, 0x66, 0x55],
            "s_blocks_count_lo"
        );
        assert_eq!(get_u32(&b, 0x18), 2, "s_log_block_size");
        assert_eq!(get_u32(&b, 0x20), 32768, "s_blocks_per_group");
        assert_eq!(get_u32(&b, 0x4C), 1, "s_rev_level");
        assert_eq!(get_u32(&b, 0x54), 11, "s_first_ino");
        assert_eq!(get_u16(&b, 0x58), 256, "s_inode_size");
        assert_eq!(&b[0x68..0x78], &[0xAB; 16], "s_uuid");
        assert_eq!(&b[0x78..0x81], b"crashcart", "s_volume_name");
        assert_eq!(&b[0xEC..0xFC], &[0xCD; 16], "s_hash_seed");
        assert_eq!(get_u32(&b, 0x108), 1_700_000_001, "s_mkfs_time");
        assert_eq!(get_u16(&b, 0x15C), 32, "s_min_extra_isize");
        assert_eq!(b[0x174], 4, "s_log_groups_per_flex");
        assert_eq!(&b[0x24C..0x254], &[0; 8], "s_backup_bgs");
        assert_eq!(Superblock::decode(&b), sb);
    }

    #[test]
    fn group_desc_round_trips() {
        let gd = GroupDesc {
            block_bitmap: 100,
            inode_bitmap: 101,
            inode_table: 102,
            free_blocks_count: 5,
            free_inodes_count: 6,
            used_dirs_count: 7,
        };
        let b = gd.encode();
        assert_eq!(get_u32(&b, 8), 102, "bg_inode_table_lo");
        assert_eq!(get_u16(&b, 0x10), 7, "bg_used_dirs_count_lo");
        assert_eq!(GroupDesc::decode(&b), gd);
    }

    #[test]
    fn inode_splits_wide_fields_into_their_halves() {
        let inode = Inode {
            mode: S_IFREG | 0o644,
            uid: 0x0001_0002,
            gid: 0x0003_0004,
            size: 0x0000_0005_0000_0006,
            time: Timestamp::from_epoch(1_700_000_000),
            links_count: 3,
            blocks_lo: 8,
            blocks_hi: 1,
            flags: EXTENTS_FL,
            block: [9; 60],
        };
        let b = inode.encode();
        assert_eq!(get_u16(&b, 0x02), 2, "i_uid low half");
        assert_eq!(get_u16(&b, 0x78), 1, "l_i_uid_high");
        assert_eq!(get_u16(&b, 0x18), 4, "i_gid low half");
        assert_eq!(get_u16(&b, 0x7A), 3, "l_i_gid_high");
        assert_eq!(get_u32(&b, 0x04), 6, "i_size_lo");
        assert_eq!(get_u32(&b, 0x6C), 5, "i_size_high");
        assert_eq!(get_u16(&b, 0x80), 32, "i_extra_isize");
        assert_eq!(get_u32(&b, 0x90), 1_700_000_000, "i_crtime");
        assert_eq!(Inode::decode(&b), inode);
    }

    #[test]
    fn times_after_2038_use_the_epoch_bit() {
        // 2^31 seconds reads as -2^31 in the signed field; epoch bit 1 adds
        // 2^32 back.
        let t = Timestamp::from_epoch(0x8000_0000);
        assert_eq!((t.seconds, t.extra), (0x8000_0000, 1));
        let t = Timestamp::from_epoch(0x7FFF_FFFF);
        assert_eq!((t.seconds, t.extra), (0x7FFF_FFFF, 0));
    }

    #[test]
    fn extent_structures_round_trip() {
        let h = ExtentHeader {
            entries: 3,
            max: 4,
            depth: 1,
        };
        assert_eq!(ExtentHeader::decode(&h.encode()), Some(h));
        assert_eq!(ExtentHeader::decode(&[0; 12]), None);
        let e = Extent {
            block: 7,
            len: 32768,
            start: 0xDEAD_BEEF,
        };
        let b = e.encode();
        assert_eq!(get_u16(&b, 6), 0, "ee_start_hi");
        assert_eq!(Extent::decode(&b), e);
        let i = ExtentIndex {
            block: 9,
            leaf: 1234,
        };
        assert_eq!(ExtentIndex::decode(&i.encode()), i);
    }

    #[test]
    fn dirent_rec_len_is_four_byte_aligned() {
        assert_eq!(Dirent::min_rec_len(1), 12);
        assert_eq!(Dirent::min_rec_len(2), 12);
        assert_eq!(Dirent::min_rec_len(4), 12);
        assert_eq!(Dirent::min_rec_len(5), 16);
        assert_eq!(Dirent::min_rec_len(255), 264);
        let mut buf = [0u8; 16];
        let d = Dirent {
            inode: 12,
            rec_len: 16,
            file_type: file_type::REG,
            name: b"hello",
        };
        d.encode_into(&mut buf);
        assert_eq!(&buf[..8], &[12, 0, 0, 0, 16, 0, 5, 1]);
        assert_eq!(Dirent::decode(&buf), d);
    }
}
