//! Little-endian fields read out of on-disk structures: the one set of readers that
//! superblock detection and cartbuild's ext4 writer (its `decode`s) share.
//!
//! Each panics when `at` and the field's width run past `b`, like slice indexing: callers
//! read fixed-size structures whose length they checked.

/// The `u16` at byte `at` of `b`.
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut bytes = [0; 2];
    bytes.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(bytes)
}

/// The `u32` at byte `at` of `b`.
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(bytes)
}

/// The `u64` at byte `at` of `b`.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_little_endian_at_their_offset() {
        let b = [0xFF, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
        assert_eq!(u16_at(&b, 1), 0x0201);
        assert_eq!(u32_at(&b, 1), 0x0403_0201);
        assert_eq!(u64_at(&b, 1), 0x0807_0605_0403_0201);
    }

    #[test]
    #[should_panic(expected = "range end index 10 out of range")]
    fn a_field_past_the_end_panics() {
        let _ = u64_at(&[0; 9], 2);
    }
}
