//! Block and inode bitmaps: one 4 KiB block per group, bit `i` set when the
//! group's `i`-th block (or inode) is in use.
//!
//! Bits past the end of the group (a short last group, or inodes beyond
//! `s_inodes_per_group`) must be set too: e2fsck reports "Padding at end of
//! block bitmap is not set" otherwise (e2fsck/pass5.c,
//! `check_block_bitmap_end` / `check_inode_end`).

use super::format::BLOCK_SIZE;

/// Bits in one bitmap block.
pub const BITS_PER_BLOCK: u64 = 8 * 4096;

fn set_bits(bitmap: &mut [u8; BLOCK_SIZE], start: u64, end: u64) {
    // OK to expect: callers keep bits at most BITS_PER_BLOCK.
    let start = usize::try_from(start).expect("bit index within a block");
    let end = usize::try_from(end).expect("bit index within a block");
    let mut bit = start;
    while bit < end {
        if bit % 8 == 0 && end - bit >= 8 {
            // Whole bytes at once.
            let bytes = (end - bit) / 8;
            bitmap[bit / 8..bit / 8 + bytes].fill(0xFF);
            bit += bytes * 8;
        } else {
            bitmap[bit / 8] |= 1 << (bit % 8);
            bit += 1;
        }
    }
}

/// The bitmap for the `len` items numbered from `base` on, given the items
/// in use as sorted, disjoint half-open ranges of absolute numbers. Returns
/// the block and how many of the group's items are in use.
pub fn group_bitmap(used: &[(u64, u64)], base: u64, len: u64) -> (Box<[u8; BLOCK_SIZE]>, u64) {
    debug_assert!(len <= BITS_PER_BLOCK);
    let mut bitmap = Box::new([0u8; BLOCK_SIZE]);
    let end = base + len;
    let mut count = 0;
    for &(start, stop) in used {
        let (start, stop) = (start.max(base), stop.min(end));
        if start < stop {
            set_bits(&mut bitmap, start - base, stop - base);
            count += stop - start;
        }
    }
    set_bits(&mut bitmap, len, BITS_PER_BLOCK);
    (bitmap, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_set(bitmap: &[u8; BLOCK_SIZE], bit: u64) -> bool {
        let bit = usize::try_from(bit).unwrap();
        bitmap[bit / 8] & (1 << (bit % 8)) != 0
    }

    #[test]
    fn ranges_are_clipped_to_the_group_and_padding_is_set() {
        let used = [(0, 3), (32_760, 32_780), (40_000, 40_001)];
        let (first, n) = group_bitmap(&used, 0, 32_768);
        assert_eq!(n, 3 + 8);
        assert!(is_set(&first, 0) && is_set(&first, 2) && !is_set(&first, 3));
        assert!(is_set(&first, 32_767) && !is_set(&first, 32_759));

        // A short last group of 10000 blocks starting at 32768.
        let (last, n) = group_bitmap(&used, 32_768, 10_000);
        assert_eq!(n, 12 + 1);
        assert!(is_set(&last, 11) && !is_set(&last, 12));
        assert!(is_set(&last, 40_000 - 32_768));
        assert!(!is_set(&last, 9_999));
        assert!(is_set(&last, 10_000), "padding");
        assert!(is_set(&last, 32_767), "padding");
    }
}
