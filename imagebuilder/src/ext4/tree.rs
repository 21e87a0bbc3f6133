//! The tree that goes into an image: directories, regular files, symlinks
//! and hard links, each with explicit owner, group and permission bits.
//!
//! A [`Tree`] is built either from a staged directory ([`Tree::from_dir`],
//! which normalises everything the build host could leak) or entry by entry
//! (the `add_*` methods, which keep whatever metadata they are given). File
//! data is not held: a [`FileData`] names where to stream it from when the
//! image is written.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::error::{Error, Result};
use super::format::NAME_MAX;

/// Longest symlink target: what fits in one block with its NUL (`PATH_MAX`
/// is 4096 including the NUL, so 4095 bytes).
pub const SYMLINK_MAX: usize = 4095;

/// Owner, group and permission bits of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky (at most `0o7777`).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Meta {
    /// `mode` owned by root:root.
    pub const fn root(mode: u16) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
        }
    }

    /// `mode` owned by `uid:gid`.
    pub const fn new(mode: u16, uid: u32, gid: u32) -> Meta {
        Meta { mode, uid, gid }
    }
}

/// Where a regular file's bytes come from when the image is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData {
    /// Bytes held in memory.
    Bytes(Vec<u8>),
    /// A file on disk, streamed when the image is written. `len` is the size
    /// it had when the tree was built; a different size then is an error.
    Path {
        /// The file to read.
        path: PathBuf,
        /// Its expected size in bytes.
        len: u64,
    },
    /// `len` bytes that are zero except for `segments` (offset, bytes),
    /// sorted and disjoint: a sparse file without a file on disk.
    Sparse {
        /// File size in bytes.
        len: u64,
        /// The non-zero parts.
        segments: Vec<(u64, Vec<u8>)>,
    },
}

impl FileData {
    /// A file on disk, with the size it has now.
    pub fn from_path(path: impl Into<PathBuf>) -> Result<FileData> {
        let path = path.into();
        let len = fs::metadata(&path)
            .map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?
            .len();
        Ok(FileData::Path { path, len })
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            FileData::Bytes(bytes) => u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            FileData::Path { len, .. } | FileData::Sparse { len, .. } => *len,
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FileData {
    /// A reader of the file's bytes (a staged file is opened; a sparse one
    /// yields its zeros without holding them), for hashing the content
    /// before or after the image is written.
    pub fn reader(&self) -> io::Result<Box<dyn io::Read + '_>> {
        Ok(match self {
            FileData::Bytes(bytes) => Box::new(bytes.as_slice()),
            FileData::Path { path, .. } => Box::new(fs::File::open(path)?),
            FileData::Sparse { len, segments } => Box::new(SparseReader {
                len: *len,
                position: 0,
                segments,
            }),
        })
    }
}

/// Reads a [`FileData::Sparse`]: zeros between the segments.
struct SparseReader<'a> {
    len: u64,
    position: u64,
    segments: &'a [(u64, Vec<u8>)],
}

impl io::Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.position);
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        // Segments are sorted and disjoint (checked when added): the first
        // one that ends after the position either covers it or lies ahead.
        let next = self
            .segments
            .iter()
            .find(|(offset, bytes)| offset.saturating_add(len_u64(bytes)) > self.position);
        let n = match next {
            Some((offset, bytes)) if *offset <= self.position => {
                let from = usize::try_from(self.position - offset).unwrap_or(usize::MAX);
                let n = want.min(bytes.len() - from);
                buf[..n].copy_from_slice(&bytes[from..from + n]);
                n
            }
            Some((offset, _)) => {
                let gap = usize::try_from(offset - self.position).unwrap_or(usize::MAX);
                let n = want.min(gap);
                buf[..n].fill(0);
                n
            }
            None => {
                buf[..want].fill(0);
                want
            }
        };
        self.position += len_u64(&buf[..n]);
        Ok(n)
    }
}

fn len_u64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// What an entry of a [`Tree`] is, as [`Tree::entries`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind<'a> {
    /// A directory.
    Dir,
    /// A regular file and where its bytes come from.
    File(&'a FileData),
    /// A symbolic link and its target.
    Symlink(&'a [u8]),
}

/// One name in a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry<'a> {
    /// Path relative to the image root (`bin/bash`).
    pub path: PathBuf,
    /// Owner, group and permission bits, as the image will have them.
    pub meta: Meta,
    /// Directory, file or symlink.
    pub kind: EntryKind<'a>,
}

/// Index of a node in [`Tree::nodes`]; the root is 0.
pub(crate) type NodeId = usize;

/// What a node is.
#[derive(Clone, Debug)]
pub(crate) enum NodeKind {
    /// A directory: its entries, ordered by name bytes.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file.
    File(FileData),
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
}

/// One inode-to-be. Several directory entries may name the same non-directory
/// node: those are hard links.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) meta: Meta,
    pub(crate) kind: NodeKind,
}

/// A directory tree with explicit metadata, ready to be written by
/// [`super::write_image`].
///
/// Directory entries are kept ordered by their name bytes, so the order in
/// which entries were added never shows in the image.
#[derive(Clone, Debug)]
pub struct Tree {
    pub(crate) nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Tree {
        Tree::new()
    }
}

/// The name the writer gives its own directory at the root.
const LOST_AND_FOUND: &[u8] = b"lost+found";

impl Tree {
    /// An empty tree: a root directory with mode 0755 owned by root:root.
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node {
                meta: Meta::root(0o755),
                kind: NodeKind::Dir(BTreeMap::new()),
            }],
        }
    }

    /// Reads a staged directory into a tree, normalising what must not leak
    /// from the build host into the image:
    ///
    /// - owner and group are always root:root (0:0), whoever staged the files;
    /// - modes do not depend on the umask: directories 0755, regular files
    ///   0755 when any execute bit is set and 0644 otherwise, symlinks 0777;
    /// - times are not read at all (the writer stamps every inode with the
    ///   build epoch);
    /// - entries are ordered by name bytes, whatever order the directory
    ///   lists them in;
    /// - files that share an inode (same device and inode number) become hard
    ///   links to one inode.
    ///
    /// Refused, with the path: setuid, setgid and sticky bits (they would be
    /// lost or grant privileges nobody asked for), device nodes, FIFOs and
    /// sockets, and a `lost+found` at the root unless it is an empty
    /// directory (which is skipped: the writer makes its own).
    ///
    /// File contents are not read here; [`super::write_image`] streams them.
    pub fn from_dir(staged: &Path) -> Result<Tree> {
        let read_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Read { path, source }
        };
        let root_meta = fs::symlink_metadata(staged).map_err(read_error(staged))?;
        if !root_meta.is_dir() {
            return Err(Error::Read {
                path: staged.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }

        let mut tree = Tree::new();
        // (st_dev, st_ino) of every multiply-linked non-directory seen so far.
        let mut seen: HashMap<(u64, u64), NodeId> = HashMap::new();
        let mut pending: Vec<(NodeId, PathBuf)> = vec![(0, staged.to_path_buf())];

        while let Some((dir, dir_path)) = pending.pop() {
            let mut names = Vec::new();
            for entry in fs::read_dir(&dir_path).map_err(read_error(&dir_path))? {
                names.push(entry.map_err(read_error(&dir_path))?.file_name());
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

            for name in names {
                let path = dir_path.join(&name);
                let name = name.as_bytes();
                if name.len() > NAME_MAX {
                    return Err(Error::NameTooLong {
                        len: name.len(),
                        path,
                    });
                }
                let md = fs::symlink_metadata(&path).map_err(read_error(&path))?;
                let file_type = md.file_type();

                if dir == 0 && name == LOST_AND_FOUND {
                    let empty = file_type.is_dir()
                        && fs::read_dir(&path)
                            .map_err(read_error(&path))?
                            .next()
                            .is_none();
                    if empty {
                        continue;
                    }
                    return Err(Error::ReservedName { path });
                }

                let perm = md.permissions().mode() & 0o7777;
                if perm & 0o7000 != 0 && !file_type.is_symlink() {
                    return Err(Error::SpecialModeBits { path, mode: perm });
                }

                let node = if file_type.is_dir() {
                    let id = tree.push(Meta::root(0o755), NodeKind::Dir(BTreeMap::new()));
                    pending.push((id, path.clone()));
                    id
                } else if file_type.is_file() || file_type.is_symlink() {
                    let key = (md.dev(), md.ino());
                    match seen.get(&key) {
                        Some(&id) if md.nlink() > 1 => id,
                        _ => {
                            let (meta, kind) = if file_type.is_file() {
                                let mode = if perm & 0o111 != 0 { 0o755 } else { 0o644 };
                                let data = FileData::Path {
                                    path: path.clone(),
                                    len: md.len(),
                                };
                                (Meta::root(mode), NodeKind::File(data))
                            } else {
                                let target = fs::read_link(&path).map_err(read_error(&path))?;
                                let target = target.into_os_string().into_vec();
                                check_symlink(&path, &target)?;
                                (Meta::root(0o777), NodeKind::Symlink(target))
                            };
                            let id = tree.push(meta, kind);
                            if md.nlink() > 1 {
                                seen.insert(key, id);
                            }
                            id
                        }
                    }
                } else {
                    let kind = if file_type.is_char_device() {
                        "a character device"
                    } else if file_type.is_block_device() {
                        "a block device"
                    } else if file_type.is_fifo() {
                        "a FIFO"
                    } else if file_type.is_socket() {
                        "a socket"
                    } else {
                        "a file of unknown type"
                    };
                    return Err(Error::UnsupportedFileType { path, kind });
                };
                tree.dir_entries(dir).insert(name.to_vec(), node);
            }
        }
        Ok(tree)
    }

    /// Every entry but the root, directory by directory (depth first), each
    /// directory's entries in name-byte order; a hard-linked file appears under each of its names.
    /// The metadata is what the image will hold (after [`Tree::from_dir`]'s
    /// normalisation), so a manifest made from this list describes the image.
    pub fn entries(&self) -> Vec<TreeEntry<'_>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut pending: Vec<(NodeId, PathBuf)> = vec![(0, PathBuf::new())];
        while let Some((dir, dir_path)) = pending.pop() {
            let NodeKind::Dir(entries) = &self.nodes[dir].kind else {
                continue;
            };
            let mut subdirs = Vec::new();
            for (name, &id) in entries {
                let path = dir_path.join(OsStr::from_bytes(name));
                let node = &self.nodes[id];
                let kind = match &node.kind {
                    NodeKind::Dir(_) => {
                        subdirs.push((id, path.clone()));
                        EntryKind::Dir
                    }
                    NodeKind::File(data) => EntryKind::File(data),
                    NodeKind::Symlink(target) => EntryKind::Symlink(target),
                };
                out.push(TreeEntry {
                    path,
                    meta: node.meta,
                    kind,
                });
            }
            // Depth first, in name order: the stack pops the first name last.
            pending.extend(subdirs.into_iter().rev());
        }
        out
    }

    /// Adds an empty directory. Its parent must exist.
    pub fn add_dir(&mut self, path: impl AsRef<Path>, meta: Meta) -> Result<()> {
        self.add(path.as_ref(), meta, NodeKind::Dir(BTreeMap::new()))
    }

    /// Adds a regular file. Its parent must exist.
    pub fn add_file(&mut self, path: impl AsRef<Path>, meta: Meta, data: FileData) -> Result<()> {
        let path = path.as_ref();
        if let FileData::Sparse { len, segments } = &data {
            check_segments(path, *len, segments)?;
        }
        self.add(path, meta, NodeKind::File(data))
    }

    /// Adds a sparse file of `len` bytes, zero except for `segments`
    /// (offset, bytes), which must be sorted, disjoint and inside the file.
    /// The zero parts become holes in the image.
    pub fn add_sparse(
        &mut self,
        path: impl AsRef<Path>,
        meta: Meta,
        len: u64,
        segments: Vec<(u64, Vec<u8>)>,
    ) -> Result<()> {
        self.add_file(path, meta, FileData::Sparse { len, segments })
    }

    /// Adds a symbolic link to `target` (1 to 4095 bytes, no NUL).
    pub fn add_symlink(
        &mut self,
        path: impl AsRef<Path>,
        target: impl AsRef<OsStr>,
        meta: Meta,
    ) -> Result<()> {
        let path = path.as_ref();
        let target = target.as_ref().as_bytes().to_vec();
        check_symlink(path, &target)?;
        self.add(path, meta, NodeKind::Symlink(target))
    }

    /// Adds `path` as another name for the existing regular file or symlink
    /// at `target`.
    pub fn add_hardlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> Result<()> {
        let (path, target) = (path.as_ref(), target.as_ref());
        let bad = || Error::BadHardLink {
            path: path.to_path_buf(),
            target: target.to_path_buf(),
        };
        let target_node = self
            .lookup(&components(target)?)
            .filter(|&id| !matches!(self.nodes[id].kind, NodeKind::Dir(_)))
            .ok_or_else(bad)?;
        let (parent, name) = self.parent_and_name(path)?;
        match self.dir_entries(parent).entry(name) {
            Entry::Occupied(_) => Err(Error::AlreadyExists {
                path: path.to_path_buf(),
            }),
            Entry::Vacant(slot) => {
                slot.insert(target_node);
                Ok(())
            }
        }
    }

    /// Sets owner, group and permission bits of an existing entry (`/` or
    /// the empty path is the root directory). For hard links this changes
    /// every name of the inode.
    pub fn set_meta(&mut self, path: impl AsRef<Path>, meta: Meta) -> Result<()> {
        let path = path.as_ref();
        check_mode(path, meta)?;
        let id = self
            .lookup(&components(path)?)
            .ok_or_else(|| Error::InvalidPath {
                path: path.to_path_buf(),
                reason: "no such entry",
            })?;
        self.nodes[id].meta = meta;
        Ok(())
    }

    fn push(&mut self, meta: Meta, kind: NodeKind) -> NodeId {
        self.nodes.push(Node { meta, kind });
        self.nodes.len() - 1
    }

    fn dir_entries(&mut self, dir: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[dir].kind {
            NodeKind::Dir(entries) => entries,
            // OK to panic: callers only pass ids they found to be directories.
            _ => unreachable!("node {dir} is not a directory"),
        }
    }

    fn lookup(&self, components: &[&[u8]]) -> Option<NodeId> {
        let mut id = 0;
        for name in components {
            match &self.nodes[id].kind {
                NodeKind::Dir(entries) => id = *entries.get(*name)?,
                _ => return None,
            }
        }
        Some(id)
    }

    /// The directory node that will hold `path`, and the new entry's name.
    fn parent_and_name(&self, path: &Path) -> Result<(NodeId, Vec<u8>)> {
        let components = components(path)?;
        let Some((name, parent)) = components.split_last() else {
            return Err(Error::AlreadyExists {
                path: path.to_path_buf(),
            });
        };
        let parent = self
            .lookup(parent)
            .filter(|&id| matches!(self.nodes[id].kind, NodeKind::Dir(_)))
            .ok_or_else(|| Error::NoParent {
                path: path.to_path_buf(),
            })?;
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong {
                path: path.to_path_buf(),
                len: name.len(),
            });
        }
        if parent == 0 && *name == LOST_AND_FOUND {
            return Err(Error::ReservedName {
                path: path.to_path_buf(),
            });
        }
        Ok((parent, name.to_vec()))
    }

    fn add(&mut self, path: &Path, meta: Meta, kind: NodeKind) -> Result<()> {
        check_mode(path, meta)?;
        let (parent, name) = self.parent_and_name(path)?;
        if self.dir_entries(parent).contains_key(&name) {
            return Err(Error::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        let id = self.push(meta, kind);
        self.dir_entries(parent).insert(name, id);
        Ok(())
    }
}

/// The names along `path`, relative to the image root (a leading `/` is
/// allowed). `.`/`..` components and NUL bytes are refused.
fn components(path: &Path) -> Result<Vec<&[u8]>> {
    let invalid = |reason| Error::InvalidPath {
        path: path.to_path_buf(),
        reason,
    };
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => {
                if name.as_bytes().contains(&0) {
                    return Err(invalid("NUL byte in a name"));
                }
                names.push(name.as_bytes());
            }
            Component::CurDir | Component::ParentDir => {
                return Err(invalid("`.` and `..` are not allowed"));
            }
            Component::Prefix(_) => return Err(invalid("not a Unix path")),
        }
    }
    Ok(names)
}

fn check_mode(path: &Path, meta: Meta) -> Result<()> {
    if meta.mode > 0o7777 {
        return Err(Error::InvalidMode {
            path: path.to_path_buf(),
            mode: meta.mode,
        });
    }
    Ok(())
}

fn check_symlink(path: &Path, target: &[u8]) -> Result<()> {
    if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
        return Err(Error::InvalidSymlink {
            path: path.to_path_buf(),
            len: target.len(),
        });
    }
    Ok(())
}

fn check_segments(path: &Path, len: u64, segments: &[(u64, Vec<u8>)]) -> Result<()> {
    let mut end = 0u64;
    for (offset, bytes) in segments {
        let seg_len = u64::try_from(bytes.len()).ok();
        let seg_end = seg_len.and_then(|l| offset.checked_add(l));
        match seg_end {
            Some(seg_end) if *offset >= end && seg_end <= len => end = seg_end,
            _ => {
                return Err(Error::BadSegments {
                    path: path.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tree: &Tree, dir: NodeId) -> Vec<Vec<u8>> {
        match &tree.nodes[dir].kind {
            NodeKind::Dir(entries) => entries.keys().cloned().collect(),
            _ => panic!("not a directory"),
        }
    }

    #[test]
    fn entries_are_ordered_by_name_bytes_whatever_the_insertion_order() {
        let mut tree = Tree::new();
        for name in ["b", "a", "B", "é", "a0"] {
            tree.add_file(name, Meta::root(0o644), FileData::Bytes(vec![]))
                .unwrap();
        }
        let expected: Vec<Vec<u8>> = ["B", "a", "a0", "b", "é"]
            .iter()
            .map(|n| n.as_bytes().to_vec())
            .collect();
        assert_eq!(names(&tree, 0), expected);
    }

    #[test]
    fn builder_rejects_bad_paths_and_modes() {
        let mut tree = Tree::new();
        let meta = Meta::root(0o755);
        tree.add_dir("/d", meta).unwrap();
        assert!(matches!(
            tree.add_dir("d", meta),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            tree.add_dir("missing/x", meta),
            Err(Error::NoParent { .. })
        ));
        assert!(matches!(
            tree.add_dir("d/../x", meta),
            Err(Error::InvalidPath { .. })
        ));
        assert!(matches!(
            tree.add_dir("lost+found", meta),
            Err(Error::ReservedName { .. })
        ));
        tree.add_dir("d/lost+found", meta).unwrap();
        assert!(matches!(
            tree.add_dir("d/y", Meta::root(0o10_000)),
            Err(Error::InvalidMode { .. })
        ));
        let long = "n".repeat(256);
        assert!(matches!(
            tree.add_dir(format!("d/{long}"), meta),
            Err(Error::NameTooLong { len: 256, .. })
        ));
        tree.add_dir(format!("d/{}", "n".repeat(255)), meta)
            .unwrap();
    }

    #[test]
    fn symlink_targets_are_checked() {
        let mut tree = Tree::new();
        let meta = Meta::root(0o777);
        assert!(matches!(
            tree.add_symlink("l", "", meta),
            Err(Error::InvalidSymlink { len: 0, .. })
        ));
        assert!(tree.add_symlink("l", "x".repeat(4096), meta).is_err());
        tree.add_symlink("l", "x".repeat(4095), meta).unwrap();
    }

    #[test]
    fn hard_links_share_a_node_and_never_name_a_directory() {
        let mut tree = Tree::new();
        tree.add_dir("d", Meta::root(0o755)).unwrap();
        tree.add_file("f", Meta::root(0o644), FileData::Bytes(b"x".to_vec()))
            .unwrap();
        tree.add_hardlink("d/g", "/f").unwrap();
        assert_eq!(tree.lookup(&[b"f"]), tree.lookup(&[b"d", b"g"]));
        assert!(matches!(
            tree.add_hardlink("h", "d"),
            Err(Error::BadHardLink { .. })
        ));
        assert!(matches!(
            tree.add_hardlink("h", "nope"),
            Err(Error::BadHardLink { .. })
        ));
    }

    #[test]
    fn sparse_segments_must_be_sorted_disjoint_and_inside() {
        let mut tree = Tree::new();
        let meta = Meta::root(0o644);
        let ok = vec![(0, vec![1; 10]), (10, vec![2; 5]), (100, vec![3])];
        tree.add_sparse("a", meta, 101, ok).unwrap();
        for bad in [
            vec![(10, vec![1; 10]), (0, vec![1])],
            vec![(0, vec![1; 10]), (9, vec![1])],
            vec![(95, vec![1; 10])],
        ] {
            assert!(matches!(
                tree.add_sparse("b", meta, 100, bad),
                Err(Error::BadSegments { .. })
            ));
        }
    }
}
