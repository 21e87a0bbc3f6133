//! Linear directories: entries packed into 4 KiB blocks.
//!
//! Each block holds whole entries (an entry never crosses a block), and the
//! last entry's `rec_len` stretches to the end of its block
//! (Documentation/filesystems/ext4/directory.rst, "Linear (Classic)
//! Directories"). Without `dir_index` the kernel and e2fsck read such
//! directories of any size by scanning them, so no hash tree is built.

use super::format::{BLOCK_SIZE, Dirent};

/// One entry of a directory, `.` and `..` included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// The name, 1 to 255 bytes.
    pub name: &'a [u8],
    /// The inode it names.
    pub ino: u32,
    /// `file_type` for the entry.
    pub file_type: u8,
}

/// Number of blocks [`pack`] produces for entries with these name lengths.
pub fn block_count(name_lens: impl IntoIterator<Item = usize>) -> u64 {
    let mut blocks = 1;
    let mut used = 0;
    for len in name_lens {
        let rec_len = Dirent::min_rec_len(len);
        if used + rec_len > BLOCK_SIZE {
            blocks += 1;
            used = 0;
        }
        used += rec_len;
    }
    blocks
}

/// Packs `entries` into directory blocks, in order, handing each finished
/// block to `emit`.
pub fn pack<E>(
    entries: &[DirEntry<'_>],
    mut emit: impl FnMut(&[u8; BLOCK_SIZE]) -> Result<(), E>,
) -> Result<(), E> {
    let mut block = [0u8; BLOCK_SIZE];
    let mut used = 0;
    let mut last = 0;
    for entry in entries {
        let rec_len = Dirent::min_rec_len(entry.name.len());
        if used + rec_len > BLOCK_SIZE {
            stretch_last(&mut block, last);
            emit(&block)?;
            block = [0u8; BLOCK_SIZE];
            used = 0;
        }
        Dirent {
            inode: entry.ino,
            // OK to expect: a record is at most 8 + 255 bytes, rounded up.
            rec_len: u16::try_from(rec_len).expect("rec_len below 4096"),
            file_type: entry.file_type,
            name: entry.name,
        }
        .encode_into(&mut block[used..used + rec_len]);
        last = used;
        used += rec_len;
    }
    stretch_last(&mut block, last);
    emit(&block)
}

/// Makes the entry at `last` reach the end of the block.
fn stretch_last(block: &mut [u8; BLOCK_SIZE], last: usize) {
    // OK to expect: `last` is inside a 4096-byte block.
    let rec_len = u16::try_from(BLOCK_SIZE - last).expect("rec_len below 4096");
    block[last + 4..last + 6].copy_from_slice(&rec_len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::format::file_type;

    /// Reads the entries back, checking that they tile every block exactly.
    fn unpack(blocks: &[[u8; BLOCK_SIZE]]) -> Vec<(Vec<u8>, u32)> {
        let mut out = Vec::new();
        for block in blocks {
            let mut at = 0;
            while at < BLOCK_SIZE {
                let d = Dirent::decode(&block[at..]);
                assert!(usize::from(d.rec_len) >= Dirent::min_rec_len(d.name.len()));
                out.push((d.name.to_vec(), d.inode));
                at += usize::from(d.rec_len);
            }
            assert_eq!(at, BLOCK_SIZE, "entries tile the block");
        }
        out
    }

    #[test]
    fn entries_fill_blocks_and_never_cross_them() {
        let names: Vec<Vec<u8>> = (0..5000)
            .map(|i| format!("entry-{i:05}-{}", "x".repeat(i % 300 % 240)).into_bytes())
            .collect();
        let mut entries = vec![
            DirEntry {
                name: b".",
                ino: 12,
                file_type: file_type::DIR,
            },
            DirEntry {
                name: b"..",
                ino: 2,
                file_type: file_type::DIR,
            },
        ];
        for (i, name) in names.iter().enumerate() {
            entries.push(DirEntry {
                name,
                ino: 13 + u32::try_from(i).unwrap(),
                file_type: file_type::REG,
            });
        }
        let mut blocks = Vec::new();
        pack(&entries, |b| {
            blocks.push(*b);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(
            u64::try_from(blocks.len()).unwrap(),
            block_count(entries.iter().map(|e| e.name.len()))
        );
        let back = unpack(&blocks);
        let expected: Vec<(Vec<u8>, u32)> =
            entries.iter().map(|e| (e.name.to_vec(), e.ino)).collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn an_empty_directory_is_one_block() {
        assert_eq!(block_count([1, 2]), 1);
        // 4096 / 264 = 15 entries of 255-byte names per block.
        assert_eq!(block_count([255; 15]), 1);
        assert_eq!(block_count([255; 16]), 2);
    }
}
