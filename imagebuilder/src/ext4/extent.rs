//! Extent trees: how an inode maps its logical blocks to disk blocks.
//!
//! Up to four extents fit in the inode itself (`i_block`, depth 0). Beyond
//! that the extents go into leaf blocks of 340 entries each, and the inode
//! holds up to four index entries pointing at them (depth 1); with more than
//! 4 × 340 extents another level of index blocks is added, and so on
//! (Documentation/filesystems/ext4/dynamic.rst, "Extent Tree"). The tree's
//! blocks are laid out leaves first, then each index level, from
//! `first_block` on.

use super::format::{
    BLOCK_SIZE, EXTENT_ENTRY_SIZE, EXTENT_MAX_DEPTH, EXTENT_MAX_LEN, EXTENTS_IN_INODE,
    EXTENTS_PER_BLOCK, Extent, ExtentHeader, ExtentIndex,
};

/// The encoded tree: the inode's `i_block` and the blocks below it.
#[derive(Debug)]
pub struct ExtentTree {
    /// Contents of `i_block`.
    pub root: [u8; 60],
    /// Leaf and index blocks, to be written at `first_block`, `first_block + 1`, ….
    pub blocks: Vec<Box<[u8; BLOCK_SIZE]>>,
}

/// The tree would be deeper than the kernel accepts, or its blocks would lie
/// beyond block 2^32.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyExtents;

/// How many blocks (leaves and index nodes) an extent tree of `extents`
/// entries needs below the inode.
pub fn tree_blocks(extents: u64) -> u64 {
    let in_inode = u64::from(EXTENTS_IN_INODE);
    let per_block = u64::from(EXTENTS_PER_BLOCK);
    if extents <= in_inode {
        return 0;
    }
    let mut total = 0;
    let mut nodes = extents;
    loop {
        nodes = nodes.div_ceil(per_block);
        total += nodes;
        if nodes <= in_inode {
            return total;
        }
    }
}

/// Most extents needed to map `blocks` contiguous blocks.
pub fn extents_for_run(blocks: u64) -> u64 {
    blocks.div_ceil(u64::from(EXTENT_MAX_LEN))
}

/// Appends `len` blocks at logical block `logical`, physical `physical` to
/// `extents`, growing the last extent when both are contiguous with it and
/// it is not full.
pub fn push_run(extents: &mut Vec<Extent>, mut logical: u32, mut physical: u32, mut len: u32) {
    while len > 0 {
        if let Some(last) = extents.last_mut() {
            let end = u32::from(last.len);
            let room = u32::from(EXTENT_MAX_LEN) - end;
            if room > 0
                && last.block.checked_add(end) == Some(logical)
                && last.start.checked_add(end) == Some(physical)
            {
                let take = room.min(len);
                // OK to expect: `end + take` is at most EXTENT_MAX_LEN (32768).
                last.len = u16::try_from(end + take).expect("extent length within 32768");
                logical = logical.saturating_add(take);
                physical = physical.saturating_add(take);
                len -= take;
                continue;
            }
        }
        let take = len.min(u32::from(EXTENT_MAX_LEN));
        extents.push(Extent {
            block: logical,
            // OK to expect: `take` is at most EXTENT_MAX_LEN (32768).
            len: u16::try_from(take).expect("extent length within 32768"),
            start: physical,
        });
        logical = logical.saturating_add(take);
        physical = physical.saturating_add(take);
        len -= take;
    }
}

fn node(depth: u16, max: u16, entries: &[[u8; EXTENT_ENTRY_SIZE]], out: &mut [u8]) {
    // OK to expect: callers chunk entries by `max`, which is at most 340.
    let count = u16::try_from(entries.len()).expect("at most 340 entries per node");
    let header = ExtentHeader {
        entries: count,
        max,
        depth,
    };
    out[..EXTENT_ENTRY_SIZE].copy_from_slice(&header.encode());
    for (i, entry) in entries.iter().enumerate() {
        let at = EXTENT_ENTRY_SIZE * (i + 1);
        out[at..at + EXTENT_ENTRY_SIZE].copy_from_slice(entry);
    }
}

/// Builds the extent tree for `extents` (sorted by logical block, disjoint),
/// placing its blocks from `first_block` on; exactly
/// `tree_blocks(extents.len())` of them.
pub fn build(extents: &[Extent], first_block: u32) -> Result<ExtentTree, TooManyExtents> {
    let mut root = [0u8; 60];
    let in_inode = usize::from(EXTENTS_IN_INODE);
    let per_block = usize::from(EXTENTS_PER_BLOCK);
    if extents.len() <= in_inode {
        let entries: Vec<_> = extents.iter().map(Extent::encode).collect();
        node(0, EXTENTS_IN_INODE, &entries, &mut root);
        return Ok(ExtentTree {
            root,
            blocks: Vec::new(),
        });
    }

    let mut blocks: Vec<Box<[u8; BLOCK_SIZE]>> = Vec::new();
    let next_block = |blocks: &Vec<Box<[u8; BLOCK_SIZE]>>| {
        u32::try_from(blocks.len())
            .ok()
            .and_then(|n| first_block.checked_add(n))
            .ok_or(TooManyExtents)
    };

    // Level 0: leaves. `level` holds (first logical block, block number) of
    // each node of the level just built.
    let mut level = Vec::new();
    for chunk in extents.chunks(per_block) {
        let at = next_block(&blocks)?;
        let entries: Vec<_> = chunk.iter().map(Extent::encode).collect();
        let mut block = Box::new([0u8; BLOCK_SIZE]);
        node(0, EXTENTS_PER_BLOCK, &entries, &mut block[..]);
        blocks.push(block);
        level.push(ExtentIndex {
            block: chunk[0].block,
            leaf: at,
        });
    }
    let mut depth = 1;
    while level.len() > in_inode {
        let mut upper = Vec::new();
        for chunk in level.chunks(per_block) {
            let at = next_block(&blocks)?;
            let entries: Vec<_> = chunk.iter().map(ExtentIndex::encode).collect();
            let mut block = Box::new([0u8; BLOCK_SIZE]);
            node(depth, EXTENTS_PER_BLOCK, &entries, &mut block[..]);
            blocks.push(block);
            upper.push(ExtentIndex {
                block: chunk[0].block,
                leaf: at,
            });
        }
        level = upper;
        depth += 1;
    }
    if depth > EXTENT_MAX_DEPTH {
        return Err(TooManyExtents);
    }
    let entries: Vec<_> = level.iter().map(ExtentIndex::encode).collect();
    node(depth, EXTENTS_IN_INODE, &entries, &mut root);
    Ok(ExtentTree { root, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks an encoded tree back into its extents, checking every header
    /// and that each index entry's logical block is its subtree's first.
    fn walk(node: &[u8], blocks: &[Box<[u8; BLOCK_SIZE]>], first: u32, out: &mut Vec<Extent>) {
        let header = ExtentHeader::decode(node).expect("extent magic");
        for i in 0..usize::from(header.entries) {
            let at = EXTENT_ENTRY_SIZE * (i + 1);
            let entry = &node[at..at + EXTENT_ENTRY_SIZE];
            if header.depth == 0 {
                out.push(Extent::decode(entry));
            } else {
                let index = ExtentIndex::decode(entry);
                let child = &blocks[usize::try_from(index.leaf - first).unwrap()][..];
                let child_header = ExtentHeader::decode(child).unwrap();
                assert_eq!(child_header.depth, header.depth - 1);
                assert_eq!(child_header.max, EXTENTS_PER_BLOCK);
                let before = out.len();
                walk(child, blocks, first, out);
                assert_eq!(out[before].block, index.block);
            }
        }
    }

    fn extents(n: u32) -> Vec<Extent> {
        // Every other block: no two extents can merge.
        (0..n)
            .map(|i| Extent {
                block: 2 * i,
                len: 1,
                start: 1000 + i,
            })
            .collect()
    }

    #[test]
    fn tree_shapes_match_the_block_count() {
        for (n, blocks, depth) in [
            (0, 0, 0),
            (4, 0, 0),
            (5, 1, 1),
            (340, 1, 1),
            (1360, 4, 1),
            (1361, 5 + 1, 2),
            (340 * 340 * 4, 340 * 4 + 4, 2),
            (340 * 340 * 4 + 1, 340 * 4 + 1 + 5 + 1, 3),
        ] {
            assert_eq!(tree_blocks(u64::from(n)), blocks, "{n} extents");
            if n > 200_000 {
                continue;
            }
            let input = extents(n);
            let tree = build(&input, 5000).unwrap();
            assert_eq!(tree.blocks.len(), usize::try_from(blocks).unwrap());
            let root = ExtentHeader::decode(&tree.root).unwrap();
            assert_eq!(root.depth, depth, "{n} extents");
            assert_eq!(root.max, 4);
            let mut back = Vec::new();
            walk(&tree.root, &tree.blocks, 5000, &mut back);
            assert_eq!(back, input);
        }
    }

    #[test]
    fn runs_merge_and_split_at_32768_blocks() {
        let mut e = Vec::new();
        push_run(&mut e, 0, 100, 10);
        push_run(&mut e, 10, 110, 5);
        assert_eq!(
            e,
            [Extent {
                block: 0,
                len: 15,
                start: 100
            }]
        );
        // A hole: logical jumps, physical does not.
        push_run(&mut e, 20, 115, 1);
        assert_eq!(e.len(), 2);
        let mut e = Vec::new();
        push_run(&mut e, 0, 0, 4 * 32768 + 1);
        assert_eq!(e.len(), 5);
        assert!(e[..4].iter().all(|x| x.len == 32768));
        assert_eq!(e[4].len, 1);
        assert_eq!(e[4].block, 4 * 32768);
        assert_eq!(extents_for_run(4 * 32768 + 1), 5);
        // More than 4 × 32768 blocks need an index block.
        assert_eq!(tree_blocks(5), 1);
    }
}
