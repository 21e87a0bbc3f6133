//! Layout and allocation: turns a [`Tree`] into an image.
//!
//! The image is laid out in one pass over the tree and one streaming pass
//! over the file data:
//!
//! ```text
//! block 0     superblock (at byte 1024)
//! 1..         group descriptor table (32 bytes per group)
//! then        directory blocks and long symlink targets (known up front)
//! then        file data, all files back to back (streamed, zero blocks left out)
//! then        extent tree blocks of files with more than 4 extents
//! then        block bitmaps, inode bitmaps, inode tables of every group
//! then        free space (`ImageSize::Fit::free`, or what `Exact` leaves)
//! ```
//!
//! `flex_bg` is what allows all bitmaps and inode tables to sit together at
//! the end, after the data, so their size (which depends on the number of
//! groups, which depends on how much data there was) is decided last. Inode
//! tables are sized to the inodes the tree needs, rounded up to a multiple of
//! 16 per group, instead of mke2fs's one inode per 16 KiB.
//!
//! Inodes are numbered in a fixed walk: root is 2, `lost+found` 11, then
//! each directory's entries in name order get the next numbers, directory by
//! directory, depth first. Directory blocks and file data follow inode order.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bitmap::{self, BITS_PER_BLOCK};
use super::data::{BlockOut, DataOut, Written};
use super::dirent::{self, DirEntry};
use super::error::{Error, Result};
use super::extent::{self, ExtentTree};
use super::format::{
    self, BLOCK_SIZE, BLOCK_SIZE_U64, BLOCKS_PER_GROUP, DESCS_PER_BLOCK, EXTENTS_FL,
    FAST_SYMLINK_MAX, FIRST_INO, GROUP_DESC_SIZE, GroupDesc, INODE_SIZE, INODES_PER_BLOCK, Inode,
    LINK_MAX, LOST_AND_FOUND_INO, MAX_INODES_PER_GROUP, ROOT_INO, S_IFDIR, S_IFLNK, S_IFREG,
    SUPERBLOCK_OFFSET, Superblock, Timestamp, compat, file_type, incompat, ro_compat,
};
use super::tree::{FileData, Meta, NodeId, NodeKind, Tree};

/// Free space [`ImageSize::default`] leaves on top of the content: 64 KiB.
/// The image is read-only, so free space only serves tools that expect some.
pub const DEFAULT_FREE: u64 = 64 * 1024;

/// `s_log_groups_per_flex`: 16 groups per flex group, mke2fs's default. With
/// all metadata at one place it only guides the kernel's allocator, which
/// never runs on a read-only filesystem; keep it below 32 (fs/ext4/super.c,
/// `ext4_fill_flex_info`).
const LOG_GROUPS_PER_FLEX: u8 = 4;

/// How to write an image. The default: epoch 0, [`ImageSize::default`], no label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Seconds since 1970 for every inode time and the superblock's times
    /// (the caller resolves `SOURCE_DATE_EPOCH` or the recipe's epoch).
    pub epoch: u32,
    /// How large the image is.
    pub size: ImageSize,
    /// Volume label, at most 16 bytes.
    pub label: String,
}

/// How large the image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSize {
    /// Just large enough for the content, plus `free` bytes of free space
    /// (rounded up to whole 4 KiB blocks).
    Fit {
        /// Free space on top of the content, in bytes.
        free: u64,
    },
    /// Exactly this many bytes (the filesystem uses the whole 4 KiB blocks
    /// in it); [`Error::TooSmall`] says how much is needed if that is not
    /// enough.
    Exact(u64),
}

impl Default for ImageSize {
    fn default() -> ImageSize {
        ImageSize::Fit { free: DEFAULT_FREE }
    }
}

/// What kind of entry a [`FileReport`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// One entry written into the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    /// Path inside the image, relative to its root (`bin/bash`).
    pub path: PathBuf,
    /// Directory, file or symlink.
    pub kind: FileKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes: file length, symlink target length, or directory
    /// blocks × 4096.
    pub size: u64,
    /// Inode number; hard links share one.
    pub inode: u32,
    /// Link count of the inode.
    pub links: u32,
    /// Filesystem blocks the inode owns (data and extent tree; holes are free).
    pub blocks: u64,
    /// sha256 of a regular file's bytes, computed while writing them.
    pub sha256: Option<[u8; 32]>,
    /// A symlink's target.
    pub target: Option<PathBuf>,
}

/// What [`write_image`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Every entry of the tree (not the root, not `lost+found`), ordered by
    /// path; each hard link has its own entry.
    pub files: Vec<FileReport>,
    /// Length of the image file in bytes.
    pub image_size: u64,
    /// Filesystem block size (4096).
    pub block_size: u32,
    /// Blocks in the filesystem.
    pub blocks_count: u64,
    /// Blocks left free.
    pub free_blocks: u64,
    /// Inodes in the filesystem.
    pub inodes_count: u32,
    /// Inodes left free.
    pub free_inodes: u32,
    /// Sum of the sizes of the regular files (each hard-linked file once).
    pub content_bytes: u64,
    /// Filesystem UUID, derived from the content.
    pub uuid: [u8; 16],
}

/// Writes `tree` as an ext4 image into `out`, which is truncated first and
/// left at the image's size. Nothing is synced: the caller writes into a
/// temporary file, syncs it and renames it into place.
///
/// The same tree and options give the same bytes, whoever runs it and
/// whenever. Memory use grows with the number of entries, not with file
/// sizes: file data is streamed through a fixed buffer.
pub fn write_image(tree: &Tree, out: &mut File, opts: &Options) -> Result<Report> {
    write_image_with_progress(tree, out, opts, &mut |_, _| {})
}

/// How many group descriptor blocks to reserve before anything else is placed, for the
/// most groups the image can need, and the last block the image may use.
fn reserve_descriptors(plan: &Plan<'_>, opts: &Options, max_ino: u32) -> Result<(u64, u64)> {
    match opts.size {
        ImageSize::Fit { free } => {
            let free_blocks = free.div_ceil(BLOCK_SIZE_U64);
            let upper = plan.pre_data_blocks() + plan.data_blocks_upper_bound();
            let mut gdt = 1;
            loop {
                let geometry = fit(1 + gdt + upper, max_ino, free_blocks)?;
                let needed = u64::from(geometry.groups).div_ceil(u64::from(DESCS_PER_BLOCK));
                if needed <= gdt {
                    return Ok((gdt, u64::MAX));
                }
                gdt = needed;
            }
        }
        ImageSize::Exact(bytes) => {
            let blocks = bytes / BLOCK_SIZE_U64;
            let groups = blocks.div_ceil(u64::from(BLOCKS_PER_GROUP));
            Ok((groups.div_ceil(u64::from(DESCS_PER_BLOCK)).max(1), blocks))
        }
    }
}

/// The image's geometry once everything up to `meta_start` is placed; with an exact size
/// that is too small, the error names the smallest size that fits.
fn final_geometry(
    opts: &Options,
    meta_start: u64,
    max_ino: u32,
    gdt_reserved: u64,
) -> Result<Geometry> {
    match opts.size {
        ImageSize::Fit { free } => fit(meta_start, max_ino, free.div_ceil(BLOCK_SIZE_U64)),
        ImageSize::Exact(bytes) => match exact(bytes / BLOCK_SIZE_U64, meta_start, max_ino) {
            Some(geometry) => Ok(geometry),
            None => {
                // The smallest fitting image, counting the descriptor blocks
                // it needs itself (more groups may need more of them).
                let content = meta_start - (1 + gdt_reserved);
                let mut gdt = gdt_reserved;
                let needed = loop {
                    let geometry = fit(1 + gdt + content, max_ino, 0)?;
                    let descs = u64::from(geometry.groups).div_ceil(u64::from(DESCS_PER_BLOCK));
                    if descs <= gdt {
                        break geometry.blocks_count * BLOCK_SIZE_U64;
                    }
                    gdt = descs;
                };
                Err(Error::TooSmall {
                    needed,
                    requested: bytes,
                })
            }
        },
    }
}

/// [`write_image`], calling `progress(bytes_done, bytes_total)` after each
/// regular file's data has been written (for a progress bar).
pub fn write_image_with_progress(
    tree: &Tree,
    out: &mut File,
    opts: &Options,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report> {
    let label = opts.label.as_bytes();
    if label.len() > 16 {
        return Err(Error::LabelTooLong {
            label: opts.label.clone(),
            len: label.len(),
        });
    }
    let mut plan = Plan::new(tree)?;
    let max_ino = plan.max_ino()?;
    let out: &File = out;
    truncate(out, 0)?;

    // Group descriptor blocks are reserved before anything else is placed,
    // for the most groups the image can need.
    let (gdt_reserved, limit) = reserve_descriptors(&plan, opts, max_ino)?;

    // Directories and long symlinks: their sizes are known now.
    let mut meta_out = BlockOut::new(out, limit);
    let data_start = plan.place_pre_data(1 + gdt_reserved, &mut meta_out)?;

    // File data, in inode order.
    let total_bytes = plan.content_bytes();
    let mut done_bytes = 0;
    let mut data_out = DataOut::new(out, data_start, limit);
    for slot in &mut plan.slots {
        if let Body::File { data, written, .. } = &mut slot.body {
            let w = data_out.write_file(data, &slot.path)?;
            done_bytes += w.size;
            *written = Some(w);
            progress(done_bytes, total_bytes);
        }
    }
    let data_end = data_out.finish()?;

    // Extent trees of fragmented files, then the group metadata.
    let meta_start = plan.place_file_trees(data_end, &mut meta_out)?;
    let geometry = final_geometry(opts, meta_start, max_ino, gdt_reserved)?;
    let gdt_used = u64::from(geometry.groups).div_ceil(u64::from(DESCS_PER_BLOCK));
    if gdt_used > gdt_reserved {
        return Err(Error::Internal {
            what: format!("{gdt_used} group descriptor blocks needed, {gdt_reserved} reserved"),
        });
    }

    // Reserved descriptor blocks the image turned out not to need stay free.
    let used_blocks = [(0, 1 + gdt_used), (1 + gdt_reserved, geometry.used_end())];
    let used_count = (1 + gdt_used) + (geometry.used_end() - (1 + gdt_reserved));
    let report = plan.report(opts, &geometry, max_ino, used_count)?;
    let descs = write_group_metadata(&plan, &geometry, max_ino, &used_blocks, opts, &mut meta_out)?;
    // The descriptor table, then the superblock last of all.
    for (i, chunk) in descs.chunks(BLOCK_SIZE).enumerate() {
        let block = 1 + u64::try_from(i).map_err(|_| too_large("the group descriptor table"))?;
        meta_out.put(block, chunk)?;
    }
    meta_out.flush()?;
    let superblock = Superblock {
        inodes_count: geometry.inodes_count()?,
        blocks_count: u32::try_from(geometry.blocks_count).map_err(|_| too_large("the image"))?,
        free_blocks_count: u32::try_from(report.free_blocks).map_err(|_| too_large("the image"))?,
        free_inodes_count: report.free_inodes,
        inodes_per_group: geometry.inodes_per_group,
        mtime: 0,
        wtime: opts.epoch,
        lastcheck: opts.epoch,
        mkfs_time: opts.epoch,
        feature_compat: compat::SPARSE_SUPER2,
        feature_incompat: incompat::FILETYPE | incompat::EXTENTS | incompat::FLEX_BG,
        feature_ro_compat: ro_compat::SPARSE_SUPER
            | ro_compat::LARGE_FILE
            | ro_compat::HUGE_FILE
            | ro_compat::DIR_NLINK
            | ro_compat::EXTRA_ISIZE
            | ro_compat::READONLY,
        uuid: report.uuid,
        volume_name: {
            let mut name = [0u8; 16];
            name[..label.len()].copy_from_slice(label);
            name
        },
        hash_seed: hash_seed(&report),
        log_groups_per_flex: LOG_GROUPS_PER_FLEX,
    };
    out.write_all_at(&superblock.encode(), SUPERBLOCK_OFFSET)
        .map_err(|source| Error::Write {
            offset: SUPERBLOCK_OFFSET,
            source,
        })?;
    truncate(out, report.image_size)?;
    Ok(report)
}

fn truncate(out: &File, len: u64) -> Result<()> {
    out.set_len(len).map_err(|source| Error::Write {
        offset: len,
        source,
    })
}

fn too_large(what: &str) -> Error {
    Error::TooLarge {
        what: what.to_string(),
    }
}

/// Where the per-group metadata goes and how many inodes each group has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    blocks_count: u64,
    groups: u32,
    inodes_per_group: u32,
    /// First block bitmap; then inode bitmaps; then inode tables.
    meta_start: u64,
}

impl Geometry {
    fn itable_blocks(&self) -> u64 {
        u64::from(self.inodes_per_group / INODES_PER_BLOCK)
    }

    fn used_end(&self) -> u64 {
        self.meta_start + u64::from(self.groups) * (2 + self.itable_blocks())
    }

    fn block_bitmap(&self, group: u32) -> u64 {
        self.meta_start + u64::from(group)
    }

    fn inode_bitmap(&self, group: u32) -> u64 {
        self.meta_start + u64::from(self.groups) + u64::from(group)
    }

    fn inode_table(&self, group: u32) -> u64 {
        self.meta_start + 2 * u64::from(self.groups) + u64::from(group) * self.itable_blocks()
    }

    fn inodes_count(&self) -> Result<u32> {
        self.groups
            .checked_mul(self.inodes_per_group)
            .ok_or_else(|| too_large("the inode count"))
    }
}

/// Inodes per group for `max_ino` inodes over `groups` groups: a multiple of
/// 16 (one inode-table block), at most 32768 (one bitmap block).
fn inodes_per_group(max_ino: u32, groups: u32) -> Option<u32> {
    let ipg = max_ino
        .div_ceil(groups)
        .checked_next_multiple_of(INODES_PER_BLOCK)?
        .max(INODES_PER_BLOCK);
    (ipg <= MAX_INODES_PER_GROUP).then_some(ipg)
}

/// The smallest geometry with group metadata from `meta_start` on and at
/// least `free_blocks` free blocks after it.
fn fit(meta_start: u64, max_ino: u32, free_blocks: u64) -> Result<Geometry> {
    let per_group = u64::from(BLOCKS_PER_GROUP);
    let mut groups = u64::from(max_ino.div_ceil(MAX_INODES_PER_GROUP)).max(1);
    loop {
        let groups32 = u32::try_from(groups).map_err(|_| too_large("the image"))?;
        let Some(ipg) = inodes_per_group(max_ino, groups32) else {
            groups += 1;
            continue;
        };
        let geometry = Geometry {
            blocks_count: 0,
            groups: groups32,
            inodes_per_group: ipg,
            meta_start,
        };
        // Every group must have at least one block: when the inodes call for
        // more groups than the blocks do, the last group gets one block.
        let blocks = geometry
            .used_end()
            .checked_add(free_blocks)
            .ok_or_else(|| too_large("the image"))?
            .max((groups - 1) * per_group + 1);
        if blocks > u64::from(u32::MAX) {
            return Err(too_large("the image"));
        }
        let needed_groups = blocks.div_ceil(per_group);
        if needed_groups <= groups {
            return Ok(Geometry {
                blocks_count: blocks,
                ..geometry
            });
        }
        groups = needed_groups;
    }
}

/// The geometry of an image of exactly `blocks` blocks, if the content fits.
fn exact(blocks: u64, meta_start: u64, max_ino: u32) -> Option<Geometry> {
    let groups = u32::try_from(blocks.div_ceil(u64::from(BLOCKS_PER_GROUP))).ok()?;
    if groups == 0 || blocks > u64::from(u32::MAX) {
        return None;
    }
    let geometry = Geometry {
        blocks_count: blocks,
        groups,
        inodes_per_group: inodes_per_group(max_ino, groups)?,
        meta_start,
    };
    (geometry.used_end() <= blocks).then_some(geometry)
}

/// An inode's contents, as planned.
enum Body<'t> {
    Dir {
        entries: Vec<DirEntry<'t>>,
        subdirs: u32,
        first_block: u64,
        blocks: u64,
        tree: ExtentPlacement,
    },
    File {
        data: &'t FileData,
        written: Option<Written>,
        tree: ExtentPlacement,
    },
    FastSymlink {
        target: &'t [u8],
    },
    SlowSymlink {
        target: &'t [u8],
        block: u64,
    },
}

/// An inode's extent tree: the root for `i_block` and how many blocks it
/// has below the inode.
struct ExtentPlacement {
    root: [u8; 60],
    blocks: u64,
}

impl Default for ExtentPlacement {
    fn default() -> ExtentPlacement {
        ExtentPlacement {
            root: [0; 60],
            blocks: 0,
        }
    }
}

/// One inode of the image.
struct Slot<'t> {
    meta: Meta,
    /// Directory entries naming it (hard links); for directories, 1.
    names: u32,
    body: Body<'t>,
    /// The first path naming it, for errors.
    path: PathBuf,
}

/// The inodes of the image and the names that lead to them.
struct Plan<'t> {
    /// Slot 0 is the root (inode 2), slot 1 `lost+found` (inode 11), slot
    /// `k >= 2` inode `k + 10`.
    slots: Vec<Slot<'t>>,
    /// Every name in the tree and the inode it leads to.
    names: Vec<(PathBuf, u32)>,
}

fn slot_of(ino: u32) -> Option<usize> {
    match ino {
        ROOT_INO => Some(0),
        LOST_AND_FOUND_INO => Some(1),
        _ if ino > FIRST_INO => usize::try_from(ino - 10).ok(),
        _ => None,
    }
}

fn ino_of(slot: usize) -> Result<u32> {
    match slot {
        0 => Ok(ROOT_INO),
        1 => Ok(LOST_AND_FOUND_INO),
        _ => u32::try_from(slot)
            .ok()
            .and_then(|s| s.checked_add(10))
            .ok_or_else(|| too_large("the number of entries")),
    }
}

fn empty_dir<'t>(meta: Meta, path: PathBuf) -> Slot<'t> {
    Slot {
        meta,
        names: 1,
        body: Body::Dir {
            entries: Vec::new(),
            subdirs: 0,
            first_block: 0,
            blocks: 0,
            tree: ExtentPlacement::default(),
        },
        path,
    }
}

/// The inode of `tree`'s node `child`, named `path`: the one it has (a hard link, one more
/// name of it), else a new one in `slots`.
fn inode_of<'t>(
    tree: &'t Tree,
    child: NodeId,
    path: &Path,
    slots: &mut Vec<Slot<'t>>,
    node_ino: &mut [u32],
) -> Result<u32> {
    let existing = node_ino[child];
    if existing != 0 {
        if let Some(slot) = slot_of(existing).and_then(|s| slots.get_mut(s)) {
            slot.names += 1;
            if slot.names > LINK_MAX {
                return Err(Error::TooManyLinks {
                    path: path.to_path_buf(),
                    links: usize::try_from(slot.names).unwrap_or(usize::MAX),
                });
            }
        }
        return Ok(existing);
    }
    let child_node = &tree.nodes[child];
    let new_ino = ino_of(slots.len())?;
    let body = match &child_node.kind {
        NodeKind::Dir(_) => empty_dir(child_node.meta, PathBuf::new()).body,
        NodeKind::File(data) => Body::File {
            data,
            written: None,
            tree: ExtentPlacement::default(),
        },
        NodeKind::Symlink(target) if target.len() <= FAST_SYMLINK_MAX => {
            Body::FastSymlink { target }
        }
        NodeKind::Symlink(target) => Body::SlowSymlink { target, block: 0 },
    };
    slots.push(Slot {
        meta: child_node.meta,
        names: 1,
        body,
        path: path.to_path_buf(),
    });
    node_ino[child] = new_ino;
    Ok(new_ino)
}

impl<'t> Plan<'t> {
    /// Numbers the inodes and collects every directory's entries.
    fn new(tree: &'t Tree) -> Result<Plan<'t>> {
        let mut slots = vec![
            empty_dir(tree.nodes[0].meta, PathBuf::from("/")),
            empty_dir(Meta::root(0o700), PathBuf::from("lost+found")),
        ];
        let mut names = Vec::new();
        let mut node_ino = vec![0u32; tree.nodes.len()];
        node_ino[0] = ROOT_INO;
        // Directories still to list: (node, inode, parent inode, path).
        let mut pending: Vec<(NodeId, u32, u32, PathBuf)> =
            vec![(0, ROOT_INO, ROOT_INO, PathBuf::new())];
        let lost_and_found = [
            DirEntry {
                name: b".",
                ino: LOST_AND_FOUND_INO,
                file_type: file_type::DIR,
            },
            DirEntry {
                name: b"..",
                ino: ROOT_INO,
                file_type: file_type::DIR,
            },
        ];
        if let Body::Dir { entries, .. } = &mut slots[1].body {
            entries.extend(lost_and_found);
        }

        while let Some((node, ino, parent, path)) = pending.pop() {
            let NodeKind::Dir(children) = &tree.nodes[node].kind else {
                continue;
            };
            let mut entries = Vec::with_capacity(children.len() + 3);
            entries.push(DirEntry {
                name: b".",
                ino,
                file_type: file_type::DIR,
            });
            entries.push(DirEntry {
                name: b"..",
                ino: parent,
                file_type: file_type::DIR,
            });
            let mut subdirs = 0u32;
            if ino == ROOT_INO {
                entries.push(DirEntry {
                    name: b"lost+found",
                    ino: LOST_AND_FOUND_INO,
                    file_type: file_type::DIR,
                });
                subdirs += 1;
            }
            let mut below = Vec::new();
            for (name, &child) in children {
                let child_path = path.join(OsStr::from_bytes(name));
                let child_node = &tree.nodes[child];
                let child_ino = inode_of(tree, child, &child_path, &mut slots, &mut node_ino)?;
                let kind = match child_node.kind {
                    NodeKind::Dir(_) => {
                        subdirs += 1;
                        below.push((child, child_ino, ino, child_path.clone()));
                        file_type::DIR
                    }
                    NodeKind::File(_) => file_type::REG,
                    NodeKind::Symlink(_) => file_type::SYMLINK,
                };
                entries.push(DirEntry {
                    name,
                    ino: child_ino,
                    file_type: kind,
                });
                names.push((child_path, child_ino));
            }
            if let Some(Body::Dir {
                entries: slot_entries,
                subdirs: slot_subdirs,
                ..
            }) = slot_of(ino)
                .and_then(|s| slots.get_mut(s))
                .map(|s| &mut s.body)
            {
                *slot_entries = entries;
                *slot_subdirs = subdirs;
            }
            // Reversed, so that the first subdirectory is listed next.
            pending.extend(below.into_iter().rev());
        }
        Ok(Plan { slots, names })
    }

    /// The highest inode number in use (at least `lost+found`'s).
    fn max_ino(&self) -> Result<u32> {
        ino_of(self.slots.len() - 1).map(|ino| ino.max(LOST_AND_FOUND_INO))
    }

    /// Sum of regular file sizes, each inode once.
    fn content_bytes(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| match &slot.body {
                Body::File { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    }

    /// Blocks that directories and long symlinks take, extent trees included.
    fn pre_data_blocks(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| match &slot.body {
                Body::Dir { entries, .. } => {
                    let blocks = dirent::block_count(entries.iter().map(|e| e.name.len()));
                    blocks + extent::tree_blocks(extent::extents_for_run(blocks))
                }
                Body::SlowSymlink { .. } => 1,
                _ => 0,
            })
            .sum()
    }

    /// At least as many blocks as file data and extent trees will take.
    fn data_blocks_upper_bound(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| match &slot.body {
                Body::File { data, .. } => {
                    let blocks = match data {
                        FileData::Sparse { segments, .. } => segments
                            .iter()
                            .map(|(offset, bytes)| {
                                let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                                let first = offset / BLOCK_SIZE_U64;
                                let end = (offset + len).div_ceil(BLOCK_SIZE_U64);
                                end - first
                            })
                            .sum(),
                        _ => data.len().div_ceil(BLOCK_SIZE_U64),
                    };
                    // At worst every block is an extent of its own.
                    blocks + extent::tree_blocks(blocks)
                }
                _ => 0,
            })
            .sum()
    }

    /// Places and writes directory blocks and long symlink targets from
    /// `first` on; returns the first block after them.
    fn place_pre_data(&mut self, first: u64, meta_out: &mut BlockOut<'_>) -> Result<u64> {
        let mut next = first;
        for slot in &mut self.slots {
            match &mut slot.body {
                Body::Dir {
                    entries,
                    first_block,
                    blocks,
                    tree,
                    ..
                } => {
                    *first_block = next;
                    *blocks = dirent::block_count(entries.iter().map(|e| e.name.len()));
                    let mut at = next;
                    dirent::pack(entries, |block| {
                        meta_out.put(at, block)?;
                        at += 1;
                        Ok::<(), Error>(())
                    })?;
                    next += *blocks;
                    let mut extents = Vec::new();
                    push_blocks(&mut extents, 0, *first_block, *blocks, &slot.path)?;
                    *tree = place_tree(&extents, &mut next, meta_out, &slot.path)?;
                }
                Body::SlowSymlink { target, block } => {
                    *block = next;
                    meta_out.put(next, target)?;
                    next += 1;
                }
                _ => {}
            }
        }
        Ok(next)
    }

    /// Places and writes the extent trees of files that need blocks for
    /// them, from `first` on; returns the first block after them.
    fn place_file_trees(&mut self, first: u64, meta_out: &mut BlockOut<'_>) -> Result<u64> {
        let mut next = first;
        for slot in &mut self.slots {
            if let Body::File {
                written: Some(written),
                tree,
                ..
            } = &mut slot.body
            {
                *tree = place_tree(&written.extents, &mut next, meta_out, &slot.path)?;
            }
        }
        Ok(next)
    }

    /// The inode `ino` as it goes on disk; `None` for unused inodes.
    fn inode(&self, ino: u32, epoch: u32) -> Result<Option<Inode>> {
        let Some(slot) = slot_of(ino).and_then(|s| self.slots.get(s)) else {
            return Ok(None);
        };
        let mut inode = Inode {
            time: Timestamp::from_epoch(epoch),
            uid: slot.meta.uid,
            gid: slot.meta.gid,
            ..Inode::default()
        };
        let (kind, blocks) = match &slot.body {
            Body::Dir {
                subdirs,
                blocks,
                tree,
                ..
            } => {
                // With dir_nlink, a directory with too many subdirectories
                // for the 16-bit count has a count of 1 (fs/ext4/namei.c,
                // `ext4_inc_count`).
                inode.links_count = u16::try_from(2 + subdirs)
                    .ok()
                    .filter(|&n| u32::from(n) < LINK_MAX)
                    .unwrap_or(1);
                inode.size = blocks * BLOCK_SIZE_U64;
                inode.flags = EXTENTS_FL;
                inode.block = tree.root;
                (S_IFDIR, blocks + tree.blocks)
            }
            Body::File { written, tree, .. } => {
                let written = written.as_ref().ok_or_else(|| Error::Internal {
                    what: format!("{} was not written", slot.path.display()),
                })?;
                inode.links_count = links(slot)?;
                inode.size = written.size;
                inode.flags = EXTENTS_FL;
                inode.block = tree.root;
                (S_IFREG, written.blocks + tree.blocks)
            }
            Body::FastSymlink { target } => {
                inode.links_count = links(slot)?;
                inode.size = u64::try_from(target.len()).map_err(|_| too_large("a symlink"))?;
                inode.block[..target.len()].copy_from_slice(target);
                (S_IFLNK, 0)
            }
            Body::SlowSymlink { target, block } => {
                inode.links_count = links(slot)?;
                inode.size = u64::try_from(target.len()).map_err(|_| too_large("a symlink"))?;
                let mut extents = Vec::new();
                push_blocks(&mut extents, 0, *block, 1, &slot.path)?;
                let tree = extent::build(&extents, 0).map_err(|_| too_large("a symlink"))?;
                inode.flags = EXTENTS_FL;
                inode.block = tree.root;
                (S_IFLNK, 1)
            }
        };
        inode.mode = kind | slot.meta.mode;
        // i_blocks counts 512-byte sectors: 8 per 4 KiB block, 48 bits with
        // huge_file (without the HUGE_FILE inode flag).
        let sectors = blocks.checked_mul(8).ok_or_else(|| too_large("a file"))?;
        let (lo, hi) = format::split_u64(sectors);
        inode.blocks_lo = lo;
        inode.blocks_hi = u16::try_from(hi).map_err(|_| too_large("a file"))?;
        Ok(Some(inode))
    }

    /// The report, UUID included.
    fn report(
        &self,
        opts: &Options,
        geometry: &Geometry,
        max_ino: u32,
        used_blocks: u64,
    ) -> Result<Report> {
        let mut files = Vec::with_capacity(self.names.len());
        for (path, ino) in &self.names {
            let Some(slot) = slot_of(*ino).and_then(|s| self.slots.get(s)) else {
                continue;
            };
            let (kind, size, blocks, sha256, target) = match &slot.body {
                Body::Dir { blocks, tree, .. } => (
                    FileKind::Dir,
                    blocks * BLOCK_SIZE_U64,
                    blocks + tree.blocks,
                    None,
                    None,
                ),
                Body::File { written, tree, .. } => {
                    let written = written.as_ref().ok_or_else(|| Error::Internal {
                        what: format!("{} was not written", path.display()),
                    })?;
                    (
                        FileKind::File,
                        written.size,
                        written.blocks + tree.blocks,
                        Some(written.sha256),
                        None,
                    )
                }
                Body::FastSymlink { target } | Body::SlowSymlink { target, .. } => (
                    FileKind::Symlink,
                    u64::try_from(target.len()).unwrap_or(u64::MAX),
                    u64::from(matches!(slot.body, Body::SlowSymlink { .. })),
                    None,
                    Some(PathBuf::from(OsStr::from_bytes(target))),
                ),
            };
            let links = match &slot.body {
                Body::Dir { subdirs, .. } => 2 + subdirs,
                _ => slot.names,
            };
            files.push(FileReport {
                path: path.clone(),
                kind,
                mode: slot.meta.mode,
                uid: slot.meta.uid,
                gid: slot.meta.gid,
                size,
                inode: *ino,
                links,
                blocks,
                sha256,
                target,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));

        let inodes_count = geometry.inodes_count()?;
        let image_size = match opts.size {
            ImageSize::Exact(bytes) => bytes,
            ImageSize::Fit { .. } => geometry.blocks_count * BLOCK_SIZE_U64,
        };
        let mut report = Report {
            files,
            image_size,
            block_size: 4096,
            blocks_count: geometry.blocks_count,
            free_blocks: geometry.blocks_count - used_blocks,
            inodes_count,
            free_inodes: inodes_count - max_ino,
            content_bytes: self.content_bytes(),
            uuid: [0; 16],
        };
        report.uuid = uuid(&report, opts);
        Ok(report)
    }
}

fn links(slot: &Slot<'_>) -> Result<u16> {
    u16::try_from(slot.names).map_err(|_| Error::TooManyLinks {
        path: slot.path.clone(),
        links: usize::try_from(slot.names).unwrap_or(usize::MAX),
    })
}

/// Appends a contiguous run of `len` blocks at `physical` for logical block
/// `logical` on.
fn push_blocks(
    extents: &mut Vec<format::Extent>,
    logical: u32,
    physical: u64,
    len: u64,
    path: &Path,
) -> Result<()> {
    let too_large = || Error::TooLarge {
        what: path.display().to_string(),
    };
    let physical = u32::try_from(physical).map_err(|_| too_large())?;
    let len = u32::try_from(len).map_err(|_| too_large())?;
    if physical.checked_add(len).is_none() {
        return Err(too_large());
    }
    extent::push_run(extents, logical, physical, len);
    Ok(())
}

/// Builds an extent tree with its blocks from `*next` on, writes them, and
/// advances `*next`.
fn place_tree(
    extents: &[format::Extent],
    next: &mut u64,
    meta_out: &mut BlockOut<'_>,
    path: &Path,
) -> Result<ExtentPlacement> {
    let first = u32::try_from(*next).map_err(|_| too_large("the image"))?;
    let ExtentTree { root, blocks } =
        extent::build(extents, first).map_err(|_| Error::TooLarge {
            what: format!("the extent tree of {}", path.display()),
        })?;
    for block in &blocks {
        meta_out.put(*next, &block[..])?;
        *next += 1;
    }
    Ok(ExtentPlacement {
        root,
        blocks: u64::try_from(blocks.len()).map_err(|_| too_large("an extent tree"))?,
    })
}

/// Writes bitmaps and inode tables; returns the group descriptor table.
fn write_group_metadata(
    plan: &Plan<'_>,
    geometry: &Geometry,
    max_ino: u32,
    used_blocks: &[(u64, u64)],
    opts: &Options,
    meta_out: &mut BlockOut<'_>,
) -> Result<Vec<u8>> {
    let ipg = u64::from(geometry.inodes_per_group);
    let used_inodes = [(1, u64::from(max_ino) + 1)];
    let mut used_dirs = vec![0u16; usize::try_from(geometry.groups).unwrap_or(0)];
    for (slot, body) in plan.slots.iter().enumerate().map(|(i, s)| (i, &s.body)) {
        if let Body::Dir { .. } = body {
            let ino = ino_of(slot)?;
            let group = usize::try_from((ino - 1) / geometry.inodes_per_group)
                .map_err(|_| too_large("the inode count"))?;
            used_dirs[group] = used_dirs[group].saturating_add(1);
        }
    }

    let mut descs =
        Vec::with_capacity(usize::try_from(geometry.groups).unwrap_or(0) * GROUP_DESC_SIZE);
    for group in 0..geometry.groups {
        let first_block = u64::from(group) * u64::from(BLOCKS_PER_GROUP);
        let len = (geometry.blocks_count - first_block).min(BITS_PER_BLOCK);
        let (block_bitmap, used) = bitmap::group_bitmap(used_blocks, first_block, len);
        meta_out.put(geometry.block_bitmap(group), &block_bitmap[..])?;
        let first_ino = u64::from(group) * ipg + 1;
        let (inode_bitmap, used_in) = bitmap::group_bitmap(&used_inodes, first_ino, ipg);
        meta_out.put(geometry.inode_bitmap(group), &inode_bitmap[..])?;
        let desc = GroupDesc {
            block_bitmap: u32::try_from(geometry.block_bitmap(group))
                .map_err(|_| too_large("the image"))?,
            inode_bitmap: u32::try_from(geometry.inode_bitmap(group))
                .map_err(|_| too_large("the image"))?,
            inode_table: u32::try_from(geometry.inode_table(group))
                .map_err(|_| too_large("the image"))?,
            // Both fit: a group has at most 32768 blocks and inodes.
            free_blocks_count: u16::try_from(len - used).unwrap_or(u16::MAX),
            free_inodes_count: u16::try_from(ipg - used_in).unwrap_or(u16::MAX),
            used_dirs_count: used_dirs[usize::try_from(group).unwrap_or(0)],
        };
        descs.extend_from_slice(&desc.encode());
    }

    // Inode tables: only blocks holding used inodes are written; the rest of
    // the image is already zero.
    let per_block = u64::from(INODES_PER_BLOCK);
    'groups: for group in 0..geometry.groups {
        for b in 0..geometry.itable_blocks() {
            let first = u64::from(group) * ipg + b * per_block + 1;
            if first > u64::from(max_ino) {
                break 'groups;
            }
            let mut block = [0u8; BLOCK_SIZE];
            for i in 0..INODES_PER_BLOCK {
                let ino = u32::try_from(first + u64::from(i))
                    .map_err(|_| too_large("the inode count"))?;
                if let Some(inode) = plan.inode(ino, opts.epoch)? {
                    let at = usize::try_from(i).unwrap_or(0) * INODE_SIZE;
                    block[at..at + INODE_SIZE].copy_from_slice(&inode.encode());
                }
            }
            meta_out.put(geometry.inode_table(group) + b, &block)?;
        }
    }
    Ok(descs)
}

/// The UUID: a sha256 over everything the image says about its content,
/// shaped as an RFC 9562 version 8 (custom) UUID.
fn uuid(report: &Report, opts: &Options) -> [u8; 16] {
    let digest = content_digest(report, opts, b"uuid");
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0F) | 0x80;
    uuid[8] = (uuid[8] & 0x3F) | 0x80;
    uuid
}

/// The directory hash seed, derived like the UUID (only used if someone
/// adds `dir_index` later; e2fsck and the kernel want it non-zero then).
fn hash_seed(report: &Report) -> [u8; 16] {
    let digest = Sha256::digest([&report.uuid[..], b"hash seed"].concat());
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&digest[..16]);
    seed
}

fn content_digest(report: &Report, opts: &Options, purpose: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(bytes);
    };
    field(b"crashcart ext4 v1");
    field(purpose);
    field(&opts.epoch.to_le_bytes());
    field(opts.label.as_bytes());
    field(&report.blocks_count.to_le_bytes());
    field(&report.inodes_count.to_le_bytes());
    for f in &report.files {
        field(f.path.as_os_str().as_bytes());
        field(&[match f.kind {
            FileKind::Dir => 1,
            FileKind::File => 2,
            FileKind::Symlink => 3,
        }]);
        field(&f.mode.to_le_bytes());
        field(&f.uid.to_le_bytes());
        field(&f.gid.to_le_bytes());
        field(&f.size.to_le_bytes());
        field(&f.inode.to_le_bytes());
        field(f.sha256.as_ref().map_or(&[][..], |s| &s[..]));
        field(
            f.target
                .as_ref()
                .map_or(&[][..], |t| t.as_os_str().as_bytes()),
        );
    }
    h.finalize().into()
}
