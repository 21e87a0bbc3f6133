//! ext2/3/4 on-disk constants shared by superblock detection ([`crate::superblock`]) and
//! cartbuild's ext4 writer (`imagebuilder/src/ext4/format.rs`, which re-exports them).
//!
//! Values from the kernel's `fs/ext4/ext4.h` and `Documentation/filesystems/ext4/super.rst`.

/// Where the superblock starts in the filesystem ("the superblock is located at offset
/// 1024").
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the superblock on disk.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// `s_magic` of every ext2/3/4 filesystem.
pub const MAGIC: u16 = 0xEF53;

/// Compatible features (`EXT4_FEATURE_COMPAT_*`).
pub mod compat {
    /// `has_journal`: the filesystem has a journal (ext3 and later).
    pub const HAS_JOURNAL: u32 = 0x0004;
    /// `sparse_super2`: backup superblocks only in `s_backup_bgs`.
    pub const SPARSE_SUPER2: u32 = 0x0200;
}

/// Incompatible features (`EXT4_FEATURE_INCOMPAT_*`).
pub mod incompat {
    /// Directory entries carry the file type.
    pub const FILETYPE: u32 = 0x0002;
    /// Inodes map their blocks with extents.
    pub const EXTENTS: u32 = 0x0040;
    /// Block numbers have 64 bits.
    pub const BIT64: u32 = 0x0080;
    /// Bitmaps and inode tables may sit anywhere in the filesystem.
    pub const FLEX_BG: u32 = 0x0200;
}

/// Read-only compatible features (`EXT4_FEATURE_RO_COMPAT_*`).
pub mod ro_compat {
    /// Superblock backups only in some groups.
    pub const SPARSE_SUPER: u32 = 0x0001;
    /// Files of 2 GiB and more (`i_size_high`).
    pub const LARGE_FILE: u32 = 0x0002;
    /// `i_blocks` has 48 bits (`l_i_blocks_hi`).
    pub const HUGE_FILE: u32 = 0x0008;
    /// Directories with more than 65000 subdirectories have `i_links_count = 1`.
    pub const DIR_NLINK: u32 = 0x0020;
    /// Inodes have `i_extra_isize` bytes of extra fields.
    pub const EXTRA_ISIZE: u32 = 0x0040;
    /// Metadata checksums (crc32c).
    pub const METADATA_CSUM: u32 = 0x0400;
    /// The kernel mounts the filesystem read-only only (fs/ext4/super.c: "filesystem is
    /// read-only").
    pub const READONLY: u32 = 0x1000;
}
