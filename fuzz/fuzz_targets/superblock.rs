//! The ext2/3/4, EROFS and SquashFS superblock parsers and what is derived from them
//! (block sizes, geometry checks, filesystem sizes).
#![no_main]

use cartimage::superblock::{
    EROFS_SUPERBLOCK_SIZE, EXT_SUPERBLOCK_SIZE, ErofsSuperblock, ExtSuperblock,
    SQUASHFS_SUPERBLOCK_SIZE, SquashfsSuperblock, crc32c_raw,
};
use libfuzzer_sys::fuzz_target;

/// The first `N` bytes of `data`, zero-padded.
fn block<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut raw = [0u8; N];
    let n = data.len().min(N);
    raw[..n].copy_from_slice(&data[..n]);
    raw
}

fuzz_target!(|data: &[u8]| {
    if let Some(sb) = ExtSuperblock::parse(&block::<EXT_SUPERBLOCK_SIZE>(data)) {
        let _ = (sb.variant().name(), sb.has_checksum(), sb.block_size());
        let _ = (sb.geometry_problem(), sb.filesystem_bytes());
    }
    if let Some(sb) = ErofsSuperblock::parse(&block::<EROFS_SUPERBLOCK_SIZE>(data)) {
        let _ = (sb.has_checksum(), sb.block_size(), sb.checksum_span());
        let _ = (sb.geometry_problem(), sb.filesystem_bytes());
        let _ = ErofsSuperblock::compute_checksum(data);
    }
    if let Some(sb) = SquashfsSuperblock::parse(&block::<SQUASHFS_SUPERBLOCK_SIZE>(data)) {
        let _ = (sb.compression_name(), sb.geometry_problem());
    }
    let _ = crc32c_raw(!0, data);
});
