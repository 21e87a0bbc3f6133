//! End-to-end tests of cartbuild's ext4 writer.
//!
//! Every tree in the table is written into an image that is then checked
//! three ways:
//!
//! 1. `e2fsck -fn` must exit 0 and print nothing beyond its pass headers and
//!    summary;
//! 2. the kernel must mount it read-only through a loop device, and every
//!    file's bytes, mode, owner, times, link target, link count and hard-link
//!    inode identity must match the tree (root needed);
//! 3. `ext4-view` must read the same tree back without root.
//!
//! The writer's report is checked against the tree as well. Then there are
//! the reproducibility tests (two on-disk trees that differ in mtimes,
//! creation order, modes under different umasks and owners give the same
//! image), size tests (`Exact` and `Fit`), the refusals of `Tree::from_dir`,
//! and a property test over random trees (e2fsck + ext4-view only).
//!
//! A missing prerequisite (not root, no e2fsck, no losetup/mount) fails the
//! test that needs it, saying what is missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use cartbuild::ext4::{
    Error, FileData, FileKind, ImageSize, Meta, Options, Report, Tree, write_image,
};
use common::{LoopMount, require_root, run_tool};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const EPOCH: u32 = 1_700_000_000;
const BLOCK: usize = 4096;

// ---------------------------------------------------------------------------
// e2fsck

/// `e2fsck -fn` must pass and say nothing but its pass headers and summary.
fn e2fsck_clean(image: &Path) {
    let out = run_tool("e2fsck", &[OsStr::new("-fn"), image.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "e2fsck -fn {} exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        image.display(),
        out.status.code()
    );
    assert!(out.status.success(), "{context}");
    let lines: Vec<&str> = stdout.lines().collect();
    let passes = [
        "Pass 1: Checking inodes, blocks, and sizes",
        "Pass 2: Checking directory structure",
        "Pass 3: Checking directory connectivity",
        "Pass 4: Checking reference counts",
        "Pass 5: Checking group summary information",
    ];
    assert_eq!(lines.len(), passes.len() + 1, "{context}");
    assert_eq!(lines[..passes.len()], passes, "{context}");
    let summary = lines[passes.len()];
    assert!(
        summary.contains(" files (") && summary.ends_with(" blocks"),
        "{context}"
    );
    for line in stderr.lines() {
        assert!(line.starts_with("e2fsck "), "{context}");
    }
}

// ---------------------------------------------------------------------------
// Content helpers

/// splitmix64: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

/// Length, sha256 and number of non-zero 4 KiB blocks of a stream.
fn digest(mut r: impl Read) -> io::Result<(u64, [u8; 32], u64)> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut blocks, mut h) = (0u64, 0u64, Sha256::new());
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        h.update(&buf[..filled]);
        len += u64::try_from(filled).unwrap();
        blocks += buf[..filled]
            .chunks(BLOCK)
            .filter(|b| b.iter().any(|&x| x != 0))
            .count() as u64;
        if filled < buf.len() {
            return Ok((len, h.finalize().into(), blocks));
        }
    }
}

// ---------------------------------------------------------------------------
// Expected trees

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File {
        len: u64,
        sha256: [u8; 32],
        /// Non-zero 4 KiB blocks: what the image must allocate.
        data_blocks: u64,
    },
    Symlink(Vec<u8>),
}

impl Kind {
    /// A file of the length, sha256 and non-zero blocks [`digest`] gives.
    fn file((len, sha256, data_blocks): (u64, [u8; 32], u64)) -> Kind {
        Kind::File {
            len,
            sha256,
            data_blocks,
        }
    }
}

#[derive(Clone, Debug)]
struct Expected {
    kind: Kind,
    meta: Meta,
    /// Paths with the same group are hard links to one inode.
    group: usize,
}

/// A tree to write, and what must come back out of the image.
struct Case {
    tree: Tree,
    expected: BTreeMap<Vec<u8>, Expected>,
    next_group: usize,
    opts: Options,
    tmp: TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            tree: Tree::new(),
            expected: BTreeMap::new(),
            next_group: 0,
            opts: Options {
                epoch: EPOCH,
                size: ImageSize::Fit { free: 0 },
                label: "crashcart-test".to_string(),
            },
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn expect(&mut self, path: &str, kind: Kind, meta: Meta) {
        let group = self.next_group;
        self.next_group += 1;
        let previous = self.expected.insert(
            path.trim_start_matches('/').as_bytes().to_vec(),
            Expected { kind, meta, group },
        );
        assert!(previous.is_none(), "{path} twice in the case");
    }

    fn dir(&mut self, path: &str, mode: u16) {
        self.dir_meta(path, Meta::root(mode));
    }

    fn dir_meta(&mut self, path: &str, meta: Meta) {
        self.tree.add_dir(path, meta).unwrap();
        self.expect(path, Kind::Dir, meta);
    }

    fn file(&mut self, path: &str, meta: Meta, bytes: Vec<u8>) {
        let kind = Kind::file(digest(&bytes[..]).unwrap());
        self.tree
            .add_file(path, meta, FileData::Bytes(bytes))
            .unwrap();
        self.expect(path, kind, meta);
    }

    /// A file streamed from disk (`source` is inside this case's tempdir).
    fn file_on_disk(&mut self, path: &str, meta: Meta, source: &Path) {
        let kind = Kind::file(digest(File::open(source).unwrap()).unwrap());
        self.tree
            .add_file(path, meta, FileData::from_path(source).unwrap())
            .unwrap();
        self.expect(path, kind, meta);
    }

    fn sparse(&mut self, path: &str, meta: Meta, len: u64, segments: Vec<(u64, Vec<u8>)>) {
        // The bytes the file reads as, streamed block by block.
        let mut h = Sha256::new();
        let mut blocks = BTreeSet::new();
        let mut at = 0u64;
        for (offset, bytes) in &segments {
            feed_zeros(&mut h, offset - at);
            h.update(bytes);
            for (i, b) in bytes.iter().enumerate() {
                if *b != 0 {
                    blocks.insert((offset + i as u64) / BLOCK as u64);
                }
            }
            at = offset + bytes.len() as u64;
        }
        feed_zeros(&mut h, len - at);
        self.tree.add_sparse(path, meta, len, segments).unwrap();
        self.expect(
            path,
            Kind::File {
                len,
                sha256: h.finalize().into(),
                data_blocks: blocks.len() as u64,
            },
            meta,
        );
    }

    fn symlink(&mut self, path: &str, target: &[u8]) {
        let meta = Meta::root(0o777);
        self.tree
            .add_symlink(path, OsStr::from_bytes(target), meta)
            .unwrap();
        self.expect(path, Kind::Symlink(target.to_vec()), meta);
    }

    fn hardlink(&mut self, path: &str, target: &str) {
        self.tree.add_hardlink(path, target).unwrap();
        let existing = self.expected[target.trim_start_matches('/').as_bytes()].clone();
        let previous = self
            .expected
            .insert(path.trim_start_matches('/').as_bytes().to_vec(), existing);
        assert!(previous.is_none());
    }

    /// Writes the image into this case's tempdir.
    fn write(&self) -> (PathBuf, Report) {
        let image = self.tmp.path().join("image.img");
        let mut out = File::create(&image).unwrap();
        let report = write_image(&self.tree, &mut out, &self.opts).expect("write_image");
        assert_eq!(out.metadata().unwrap().len(), report.image_size);
        (image, report)
    }
}

fn feed_zeros(h: &mut Sha256, mut len: u64) {
    let zeros = [0u8; 65536];
    while len > 0 {
        let n = len.min(zeros.len() as u64);
        h.update(&zeros[..n as usize]);
        len -= n;
    }
}

/// What an entry of an image looks like from outside.
#[derive(Debug)]
struct Observed {
    kind: Kind,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: i64,
    /// Only from a mount.
    ino: Option<u64>,
    nlink: Option<u64>,
    st_blocks: Option<u64>,
}

fn observe_mount(root: &Path) -> BTreeMap<Vec<u8>, Observed> {
    let mut seen = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let full = root.join(&rel);
            let md = fs::symlink_metadata(&full).unwrap();
            let kind = if md.is_dir() {
                pending.push(rel.clone());
                Kind::Dir
            } else if md.file_type().is_symlink() {
                Kind::Symlink(
                    fs::read_link(&full)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                Kind::file(digest(File::open(&full).unwrap()).unwrap())
            };
            seen.insert(
                rel.as_os_str().as_bytes().to_vec(),
                Observed {
                    kind,
                    mode: u16::try_from(md.mode() & 0o7777).unwrap(),
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: md.mtime(),
                    ino: Some(md.ino()),
                    nlink: Some(md.nlink()),
                    st_blocks: Some(md.blocks()),
                },
            );
            assert_eq!(md.atime(), md.mtime(), "atime of {}", rel.display());
            assert_eq!(md.ctime(), md.mtime(), "ctime of {}", rel.display());
        }
    }
    seen
}

fn observe_ext4_view(image: &Path) -> BTreeMap<Vec<u8>, Observed> {
    let fs = ext4_view::Ext4::load_from_path(image).expect("ext4-view loads the image");
    let mut seen = BTreeMap::new();
    let mut pending: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = pending.pop() {
        let dir = [b"/".as_slice(), &rel].concat();
        for entry in fs.read_dir(dir.as_slice()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let rel = if rel.is_empty() {
                name
            } else {
                [rel.as_slice(), b"/", &name].concat()
            };
            let abs = [b"/".as_slice(), &rel].concat();
            let md = entry.metadata().unwrap();
            let kind = if md.is_dir() {
                pending.push(rel.clone());
                Kind::Dir
            } else if md.is_symlink() {
                Kind::Symlink(fs.read_link(abs.as_slice()).unwrap().as_ref().to_vec())
            } else if md.len() == 0 {
                // Saves a path lookup per empty file in big directories.
                Kind::file(digest(io::empty()).unwrap())
            } else {
                let file = fs.open(abs.as_slice()).unwrap();
                let read = digest(file).unwrap();
                assert_eq!(read.0, md.len());
                Kind::file(read)
            };
            seen.insert(
                rel,
                Observed {
                    kind,
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: md.modified().seconds(),
                    ino: None,
                    nlink: None,
                    st_blocks: None,
                },
            );
        }
    }
    seen
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Compares what an image shows with what the case put in.
fn compare(case: &Case, report: &Report, seen: &BTreeMap<Vec<u8>, Observed>, via: &str) {
    let epoch = i64::from(case.opts.epoch);
    let lost_and_found = seen.get(b"lost+found".as_slice()).expect("lost+found");
    assert_eq!(
        (lost_and_found.kind.clone(), lost_and_found.mode),
        (Kind::Dir, 0o700)
    );

    let expected_paths: BTreeSet<&Vec<u8>> = case.expected.keys().collect();
    let seen_paths: BTreeSet<&Vec<u8>> = seen
        .keys()
        .filter(|p| !p.starts_with(b"lost+found"))
        .collect();
    assert_eq!(seen_paths, expected_paths, "entries via {via}");

    let by_path: BTreeMap<Vec<u8>, _> = report
        .files
        .iter()
        .map(|f| (f.path.as_os_str().as_bytes().to_vec(), f))
        .collect();
    let mut names_per_group: BTreeMap<usize, u64> = BTreeMap::new();
    for e in case.expected.values() {
        *names_per_group.entry(e.group).or_default() += 1;
    }
    let mut ino_of_group: BTreeMap<usize, u64> = BTreeMap::new();
    let mut group_of_ino: BTreeMap<u64, usize> = BTreeMap::new();

    for (path, e) in &case.expected {
        let o = &seen[path];
        let p = show(path);
        assert_eq!(o.kind, e.kind, "content of {p} via {via}");
        assert_eq!(
            (o.mode, o.uid, o.gid),
            (e.meta.mode, e.meta.uid, e.meta.gid),
            "mode and owner of {p} via {via}"
        );
        assert_eq!(o.mtime, epoch, "mtime of {p} via {via}");

        let r = by_path
            .get(path)
            .unwrap_or_else(|| panic!("{p} not in the report"));
        assert_eq!(
            (r.mode, r.uid, r.gid),
            (e.meta.mode, e.meta.uid, e.meta.gid),
            "report on {p}"
        );
        match &e.kind {
            Kind::Dir => assert_eq!(r.kind, FileKind::Dir),
            Kind::File {
                len,
                sha256,
                data_blocks,
            } => {
                assert_eq!(r.kind, FileKind::File);
                assert_eq!((r.size, r.sha256), (*len, Some(*sha256)), "report on {p}");
                // Holes stay holes: only non-zero blocks, plus extent tree
                // blocks (at most one per 340 extents, plus index levels).
                assert!(
                    r.blocks >= *data_blocks && r.blocks <= data_blocks + data_blocks / 300 + 2,
                    "{p}: {} blocks for {data_blocks} data blocks",
                    r.blocks
                );
            }
            Kind::Symlink(target) => {
                assert_eq!(r.kind, FileKind::Symlink);
                assert_eq!(
                    r.target.as_ref().map(|t| t.as_os_str().as_bytes()),
                    Some(target.as_slice())
                );
                assert_eq!(r.blocks, u64::from(target.len() > 59), "{p}");
            }
        }

        if let (Some(ino), Some(nlink), Some(st_blocks)) = (o.ino, o.nlink, o.st_blocks) {
            assert_eq!(u64::from(r.inode), ino, "inode of {p}");
            assert_eq!(st_blocks, r.blocks * 8, "st_blocks of {p}");
            let expected_links = match e.kind {
                Kind::Dir => {
                    let prefix = [path.as_slice(), b"/"].concat();
                    let subdirs = case
                        .expected
                        .iter()
                        .filter(|(q, x)| {
                            x.kind == Kind::Dir
                                && q.starts_with(&prefix)
                                && !q[prefix.len()..].contains(&b'/')
                        })
                        .count() as u64;
                    2 + subdirs
                }
                _ => names_per_group[&e.group],
            };
            assert_eq!(nlink, expected_links, "link count of {p}");
            assert_eq!(u64::from(r.links), expected_links, "report links of {p}");
            // Hard links share an inode; nothing else does.
            assert_eq!(*ino_of_group.entry(e.group).or_insert(ino), ino, "{p}");
            assert_eq!(*group_of_ino.entry(ino).or_insert(e.group), e.group, "{p}");
        }
    }
    assert_eq!(report.files.len(), case.expected.len(), "report entries");
}

/// Writes the case and checks the image all three ways.
fn check(case: Case) -> Report {
    let (image, report) = case.write();
    e2fsck_clean(&image);
    let fs = ext4_view::Ext4::load_from_path(&image).unwrap();
    assert_eq!(fs.label().to_str(), Ok(case.opts.label.as_str()));
    assert_eq!(fs.uuid().as_bytes(), &report.uuid);
    compare(&case, &report, &observe_ext4_view(&image), "ext4-view");
    let mount = LoopMount::new(&image, 0, None);
    compare(&case, &report, &observe_mount(mount.path()), "a loop mount");
    let root = fs::metadata(mount.path()).unwrap();
    assert_eq!(
        (root.mode() & 0o7777, root.uid(), root.gid()),
        (0o755, 0, 0)
    );
    mount.finish();
    report
}

// ---------------------------------------------------------------------------
// The table

fn files() -> Case {
    let mut c = Case::new();
    let meta = Meta::root(0o644);
    let mut rng = Rng(1);
    c.file("empty", meta, vec![]);
    c.file("one-byte", meta, vec![0x42]);
    c.file("one-block", meta, rng.bytes(BLOCK));
    c.file("one-block-plus-one", meta, rng.bytes(BLOCK + 1));
    c.file("zero-byte", meta, vec![0]);
    c.file("three-blocks", Meta::root(0o755), rng.bytes(3 * BLOCK - 7));
    let mut with_zero_block = rng.bytes(3 * BLOCK);
    with_zero_block[BLOCK..2 * BLOCK].fill(0);
    c.file("zero-block-in-the-middle", meta, with_zero_block);
    c.file("all-zeros", meta, vec![0; 5 * BLOCK]);
    c
}

fn big_file() -> Case {
    let mut c = Case::new();
    // 200 MB of pseudo-random bytes, generated on disk, never held in memory.
    let source = c.tmp.path().join("big");
    let mut out = io::BufWriter::new(File::create(&source).unwrap());
    let mut rng = Rng(200);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..200 {
        rng.fill(&mut buf);
        out.write_all(&buf).unwrap();
    }
    out.write_all(b"tail").unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    c.file_on_disk("big", Meta::root(0o644), &source);
    c
}

fn sparse_files() -> Case {
    let mut c = Case::new();
    // On disk: a 64 MiB file with holes, data at a few offsets.
    let source = c.tmp.path().join("sparse");
    let mut f = File::create(&source).unwrap();
    f.set_len(64 << 20).unwrap();
    for offset in [0u64, 5 * BLOCK as u64 + 100, 40 << 20, (64 << 20) - 10] {
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(b"0123456789").unwrap();
    }
    drop(f);
    c.file_on_disk("on-disk-sparse", Meta::root(0o644), &source);

    let meta = Meta::root(0o600);
    // Only a hole.
    c.sparse("hole-only", meta, 32 << 20, vec![]);
    // 5 extents: an index block below the inode (depth 1).
    let five = (0..5u64)
        .map(|i| (i * 2 * BLOCK as u64, vec![1u8; 10]))
        .collect();
    c.sparse("five-extents", meta, 10 * BLOCK as u64, five);
    // 1500 one-block islands: more than 4 × 340 extents (depth 2).
    let mut rng = Rng(3);
    let islands = (0..1500u64)
        .map(|i| (i * 3 * BLOCK as u64, rng.bytes(BLOCK)))
        .collect();
    c.sparse("1500-extents", meta, 4500 * BLOCK as u64, islands);
    // Data at the very end of a 32 MiB file.
    c.sparse("tail-only", meta, 32 << 20, vec![((32 << 20) - 1, vec![7])]);
    c
}

fn directories() -> Case {
    let mut c = Case::new();
    c.dir("empty-dir", 0o755);
    c.dir("five-thousand", 0o755);
    let meta = Meta::root(0o644);
    for i in 0..5000 {
        c.file(&format!("five-thousand/entry-{i:05}"), meta, vec![]);
    }
    c.dir("long-names", 0o755);
    for ch in ['a', 'b', 'é'] {
        let name: String = std::iter::repeat_n(ch, 255 / ch.len_utf8()).collect();
        let name = if name.len() < 255 {
            format!("{name}x")
        } else {
            name
        };
        assert_eq!(name.len(), 255);
        c.file(
            &format!("long-names/{name}"),
            meta,
            name.as_bytes().to_vec(),
        );
    }
    let long_dir = "d".repeat(255);
    c.dir(&format!("long-names/{long_dir}"), 0o755);
    let mut path = String::from("nest");
    c.dir(&path, 0o755);
    for level in 1..40 {
        path.push_str(&format!("/level{level:02}"));
        c.dir(&path, 0o755);
    }
    c.file(
        &format!("{path}/bottom"),
        meta,
        b"40 levels down\n".to_vec(),
    );
    c
}

fn symlinks() -> Case {
    let mut c = Case::new();
    c.file("target", Meta::root(0o644), b"pointed at\n".to_vec());
    c.symlink("relative", b"target");
    c.symlink("absolute", b"/dev/crashcart/bin/busybox");
    c.symlink("dangling", b"does/not/exist");
    let inline: Vec<u8> = std::iter::repeat_n(b'a', 59).collect();
    c.symlink("len59", &inline);
    let in_block: Vec<u8> = std::iter::repeat_n(b'b', 60).collect();
    c.symlink("len60", &in_block);
    let long: Vec<u8> = (0..4000)
        .map(|i| if i % 10 == 9 { b'/' } else { b'c' })
        .collect();
    c.symlink("len4000", &long);
    // ext4-view refuses targets with a component over 255 bytes (the
    // kernel does not), so the longest target has slashes too.
    let longest: Vec<u8> = (0..4095)
        .map(|i| if i % 100 == 99 { b'/' } else { b'd' })
        .collect();
    c.symlink("len4095", &longest);
    c
}

fn hard_links() -> Case {
    let mut c = Case::new();
    c.dir("a", 0o755);
    c.dir("b", 0o755);
    c.file("a/file", Meta::root(0o755), b"shared bytes\n".to_vec());
    c.hardlink("b/file-again", "a/file");
    c.hardlink("third", "a/file");
    c.file("a/other", Meta::root(0o644), b"shared bytes\n".to_vec());
    c.symlink("a/link", b"file");
    c.hardlink("b/link-again", "a/link");
    let mut rng = Rng(9);
    c.file("a/big", Meta::root(0o644), rng.bytes(300 * BLOCK));
    c.hardlink("a/big2", "a/big");
    c
}

fn modes() -> Case {
    let mut c = Case::new();
    c.tree.set_meta("/", Meta::root(0o755)).unwrap();
    c.file("m0000", Meta::root(0o000), b"x".to_vec());
    c.file("m0600", Meta::root(0o600), b"x".to_vec());
    c.file("m0711", Meta::root(0o711), b"x".to_vec());
    c.file("m4755-setuid", Meta::root(0o4755), b"x".to_vec());
    c.file("m2755-setgid", Meta::root(0o2755), b"x".to_vec());
    c.dir("m1777-sticky", 0o1777);
    c.dir("m0700", 0o700);
    c.dir_meta("owned", Meta::new(0o750, 1000, 1000));
    c.file("owned/user", Meta::new(0o640, 1000, 100), b"x".to_vec());
    // Owners above 65535 use the high halves of the inode's uid/gid fields.
    c.file(
        "owned/wide",
        Meta::new(0o644, 100_000, 70_000),
        b"x".to_vec(),
    );
    c.symlink("owned/link", b"user");
    c
}

/// More inodes than one group's bitmap can hold: the image gets more
/// groups than its blocks need. (Spread over directories: ext4-view looks
/// every symlink up by path, which is quadratic in one huge directory.)
fn many_inodes() -> Case {
    let mut c = Case::new();
    for d in 0..100 {
        c.dir(&format!("d{d}"), 0o755);
        for i in 0..330 {
            c.symlink(&format!("d{d}/{i}"), b"x");
        }
    }
    c
}

macro_rules! table {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(super::$name());
            }
        )*
    };
}

mod table {
    use super::check;

    table!(
        files,
        big_file,
        sparse_files,
        directories,
        symlinks,
        hard_links,
        modes,
        many_inodes,
    );
}

#[test]
fn more_than_65000_hard_links_is_an_error() {
    let mut tree = Tree::new();
    tree.add_file("f", Meta::root(0o644), FileData::Bytes(b"x".to_vec()))
        .unwrap();
    // f and 64999 more names: 65000.
    for i in 1..65_000 {
        tree.add_hardlink(format!("l{i}"), "f").unwrap();
    }
    write_image(
        &tree,
        &mut tempfile::tempfile().unwrap(),
        &Options::default(),
    )
    .expect("65000 links are allowed");
    tree.add_hardlink("one-more", "f").unwrap();
    let err = write_image(
        &tree,
        &mut tempfile::tempfile().unwrap(),
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::TooManyLinks { links: 65_001, .. }),
        "{err}"
    );
}

#[test]
fn a_directory_with_more_subdirectories_than_its_link_count_can_hold() {
    // With dir_nlink, such a directory has a link count of 1. Not through
    // ext4-view: it looks each subdirectory up by path, which is quadratic
    // in a directory this large.
    let mut case = Case::new();
    case.dir("wide", 0o755);
    for i in 0..65_000 {
        case.tree
            .add_dir(format!("wide/{i}"), Meta::root(0o755))
            .unwrap();
    }
    let (image, report) = case.write();
    e2fsck_clean(&image);
    let wide = report
        .files
        .iter()
        .find(|f| f.path == Path::new("wide"))
        .unwrap();
    assert_eq!(wide.links, 65_002);
    let mount = LoopMount::new(&image, 0, None);
    let md = fs::metadata(mount.path().join("wide")).unwrap();
    assert_eq!(md.nlink(), 1);
    assert_eq!(
        fs::read_dir(mount.path().join("wide")).unwrap().count(),
        65_000
    );
    assert!(
        fs::metadata(mount.path().join("wide/64999"))
            .unwrap()
            .is_dir()
    );
    mount.finish();
}

#[test]
fn sparse_file_keeps_its_holes_on_a_mount() {
    let case = sparse_files();
    let (image, _) = case.write();
    let mount = LoopMount::new(&image, 0, None);
    let md = fs::metadata(mount.path().join("on-disk-sparse")).unwrap();
    // Four 10-byte writes touch 4 blocks; all of 64 MiB would be 131072
    // sectors.
    assert_eq!(md.len(), 64 << 20);
    assert_eq!(md.blocks(), 4 * 8);
    let md = fs::metadata(mount.path().join("hole-only")).unwrap();
    assert_eq!((md.len(), md.blocks()), (32 << 20, 0));
    mount.finish();
}

#[test]
fn epochs_after_2038_survive() {
    // The kernel decodes the epoch bit. e2fsck would (rightly) call such a
    // time "in the future", and ext4-view 1.0 refuses seconds fields with
    // bit 31 set (`Timestamp::from_raw` converts them with
    // `i32::try_from`), so only the kernel reads this image.
    let mut case = Case::new();
    case.opts.epoch = 3_000_000_000;
    case.file("f", Meta::root(0o644), b"from the future".to_vec());
    let (image, report) = case.write();
    let mount = LoopMount::new(&image, 0, None);
    compare(&case, &report, &observe_mount(mount.path()), "a loop mount");
    mount.finish();
}

// ---------------------------------------------------------------------------
// Sizes

fn small_case() -> Case {
    let mut c = Case::new();
    c.file("f", Meta::root(0o644), Rng(4).bytes(50 * BLOCK));
    c.dir("d", 0o755);
    c.symlink("d/l", &[b'l'; 100]);
    c
}

#[test]
fn exact_size_too_small_says_what_is_needed() {
    let mut case = small_case();
    case.opts.size = ImageSize::Exact(20 * BLOCK as u64);
    let image = case.tmp.path().join("small.img");
    let err = write_image(&case.tree, &mut File::create(&image).unwrap(), &case.opts)
        .expect_err("50 blocks of data do not fit in 20");
    let Error::TooSmall { needed, requested } = err else {
        panic!("expected TooSmall, got {err}");
    };
    assert_eq!(requested, 20 * BLOCK as u64);
    assert!(
        needed > 50 * BLOCK as u64 && needed % BLOCK as u64 == 0,
        "{needed}"
    );
    let message = Error::TooSmall { needed, requested }.to_string();
    assert!(message.contains(&needed.to_string()), "{message}");

    for tiny in [0, 100, BLOCK as u64] {
        case.opts.size = ImageSize::Exact(tiny);
        let err = write_image(&case.tree, &mut File::create(&image).unwrap(), &case.opts);
        assert!(matches!(err, Err(Error::TooSmall { needed: n, .. }) if n == needed));
    }

    // One block less than needed still fails; exactly what was needed works.
    case.opts.size = ImageSize::Exact(needed - BLOCK as u64);
    let err = write_image(&case.tree, &mut File::create(&image).unwrap(), &case.opts);
    assert!(matches!(err, Err(Error::TooSmall { needed: n, .. }) if n == needed));
    case.opts.size = ImageSize::Exact(needed);
    let report = check(case);
    assert_eq!((report.image_size, report.free_blocks), (needed, 0));
}

#[test]
fn exact_size_is_exact_even_between_blocks() {
    let mut case = small_case();
    let size = (64 << 20) + 1000;
    case.opts.size = ImageSize::Exact(size);
    let report = check(case);
    assert_eq!(report.image_size, size);
    assert_eq!(report.blocks_count, (64 << 20) / BLOCK as u64);

    // A last group of a single block.
    let mut case = small_case();
    let size = (32_768 + 1) * BLOCK as u64 + 17;
    case.opts.size = ImageSize::Exact(size);
    let report = check(case);
    assert_eq!((report.image_size, report.blocks_count), (size, 32_769));
}

#[test]
fn fit_leaves_the_free_space_asked_for() {
    let mut case = small_case();
    case.opts.size = ImageSize::Fit { free: 0 };
    let (_, tight) = case.write();
    assert_eq!(tight.free_blocks, 0);
    case.opts.size = ImageSize::Fit { free: 1 << 20 };
    let report = check(case);
    assert_eq!(report.free_blocks, 256);
    assert_eq!(report.blocks_count, tight.blocks_count + 256);
}

#[test]
fn images_with_many_groups() {
    // 17 GiB: 136 groups, so the descriptor table takes two blocks. The
    // image file is sparse, so this costs little disk.
    let mut case = small_case();
    case.opts.size = ImageSize::Exact(17 << 30);
    let report = check(case);
    assert_eq!(report.blocks_count, (17 << 30) / BLOCK as u64);
    let mut case = small_case();
    case.opts.size = ImageSize::Fit { free: 5 << 30 };
    check(case);
}

#[test]
fn bad_labels_are_refused() {
    let mut case = small_case();
    case.opts.label = "x".repeat(17);
    let err = write_image(&case.tree, &mut tempfile::tempfile().unwrap(), &case.opts);
    assert!(matches!(err, Err(Error::LabelTooLong { len: 17, .. })));
}

// ---------------------------------------------------------------------------
// Staged trees and reproducibility

/// Stages the same content in `root` two different ways: `variant` picks
/// creation order, mtimes, permission bits (as different umasks leave them),
/// owners, and whether zeros are stored as a hole.
fn stage(root: &Path, variant: u32) {
    let names = ["bin", "etc", "lib", "share"];
    let order: Vec<&str> = if variant == 0 {
        names.to_vec()
    } else {
        names.iter().rev().copied().collect()
    };
    let (dir_mode, file_mode, exec_mode) = if variant == 0 {
        (0o755, 0o644, 0o755)
    } else {
        (0o775, 0o664, 0o700)
    };
    for dir in &order {
        fs::create_dir(root.join(dir)).unwrap();
    }
    let files: Vec<(&str, Vec<u8>, bool)> = vec![
        ("bin/tool", Rng(5).bytes(3 * BLOCK + 5), true),
        ("etc/config", b"key = value\n".to_vec(), false),
        ("lib/empty", Vec::new(), false),
        ("share/doc", Rng(6).bytes(10_000), false),
    ];
    let files: Vec<_> = if variant == 0 {
        files
    } else {
        files.into_iter().rev().collect()
    };
    for (path, bytes, exec) in &files {
        let full = root.join(path);
        fs::write(&full, bytes).unwrap();
        let mode = if *exec { exec_mode } else { file_mode };
        fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
    }
    // 1 MiB of zeros then a byte: a hole in one variant, written zeros in
    // the other.
    let zeros = root.join("share/zeros");
    if variant == 0 {
        let mut f = File::create(&zeros).unwrap();
        f.set_len(1 << 20).unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"!").unwrap();
    } else {
        let mut bytes = vec![0u8; (1 << 20) + 1];
        bytes[1 << 20] = b'!';
        fs::write(&zeros, bytes).unwrap();
    }
    fs::set_permissions(&zeros, fs::Permissions::from_mode(file_mode)).unwrap();
    symlink("../bin/tool", root.join("share/tool-link")).unwrap();
    if variant == 0 {
        fs::hard_link(root.join("bin/tool"), root.join("lib/tool-again")).unwrap();
    } else {
        // The other name first: which one was "the original" must not matter.
        fs::rename(root.join("bin/tool"), root.join("lib/tool-again")).unwrap();
        fs::hard_link(root.join("lib/tool-again"), root.join("bin/tool")).unwrap();
    }
    for dir in &order {
        fs::set_permissions(root.join(dir), fs::Permissions::from_mode(dir_mode)).unwrap();
    }
    // Owners and times that must not leak.
    let (uid, gid, mtime) = if variant == 0 {
        (0, 0, "2001-01-01 00:00")
    } else {
        (1000, 1000, "2024-06-01 12:34")
    };
    let out = Command::new("chown")
        .args(["-R", "-h", &format!("{uid}:{gid}")])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("find")
        .arg(root)
        .args(["-exec", "touch", "-h", "-d", mtime, "{}", "+"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "touch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image_sha256(tree: &Tree, opts: &Options, dir: &Path, name: &str) -> ([u8; 32], Report) {
    let path = dir.join(name);
    let report = write_image(tree, &mut File::create(&path).unwrap(), opts).unwrap();
    let (_, sha, _) = digest(File::open(&path).unwrap()).unwrap();
    e2fsck_clean(&path);
    (sha, report)
}

#[test]
fn staged_trees_that_differ_only_in_build_host_details_give_the_same_image() {
    require_root(); // chown to another user
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    fs::set_permissions(&b, fs::Permissions::from_mode(0o700)).unwrap();
    stage(&a, 0);
    stage(&b, 1);
    let opts = Options {
        epoch: EPOCH,
        ..Options::default()
    };
    let (sha_a, report_a) = image_sha256(&Tree::from_dir(&a).unwrap(), &opts, tmp.path(), "a.img");
    let (sha_b, report_b) = image_sha256(&Tree::from_dir(&b).unwrap(), &opts, tmp.path(), "b.img");
    assert_eq!(report_a, report_b);
    assert_eq!(
        hex(&sha_a),
        hex(&sha_b),
        "the two staged trees give different images"
    );
    // And again from the same tree: nothing depends on the run.
    let (sha_again, _) = image_sha256(&Tree::from_dir(&b).unwrap(), &opts, tmp.path(), "c.img");
    assert_eq!(sha_a, sha_again);

    // What from_dir normalised, as the report tells it.
    let modes: BTreeMap<String, (u16, u32, u32)> = report_a
        .files
        .iter()
        .map(|f| (f.path.display().to_string(), (f.mode, f.uid, f.gid)))
        .collect();
    assert_eq!(modes["bin"], (0o755, 0, 0));
    assert_eq!(modes["bin/tool"], (0o755, 0, 0));
    assert_eq!(modes["etc/config"], (0o644, 0, 0));
    assert_eq!(modes["share/tool-link"], (0o777, 0, 0));
    let tool = report_a
        .files
        .iter()
        .find(|f| f.path == Path::new("bin/tool"))
        .unwrap();
    let again = report_a
        .files
        .iter()
        .find(|f| f.path == Path::new("lib/tool-again"))
        .unwrap();
    assert_eq!((tool.inode, tool.links), (again.inode, 2));
    let zeros = report_a
        .files
        .iter()
        .find(|f| f.path == Path::new("share/zeros"))
        .unwrap();
    assert_eq!(zeros.blocks, 1, "the zeros are a hole in both variants");

    // The epoch does reach the image.
    let later = Options {
        epoch: EPOCH + 1,
        ..opts
    };
    let (sha_later, _) = image_sha256(&Tree::from_dir(&a).unwrap(), &later, tmp.path(), "d.img");
    assert_ne!(sha_a, sha_later);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn from_dir_refuses_what_cannot_or_must_not_go_into_an_image() {
    require_root(); // mknod
    let tmp = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let dir = tmp.path().join(name);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("ok"), b"ok").unwrap();
        dir
    };

    let dir = fresh("setuid");
    fs::write(dir.join("su"), b"x").unwrap();
    fs::set_permissions(dir.join("su"), fs::Permissions::from_mode(0o4755)).unwrap();
    let err = Tree::from_dir(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::SpecialModeBits { path, mode: 0o4755 } if path.ends_with("su")),
        "{err}"
    );
    assert!(err.to_string().contains("su"), "{err}");

    let dir = fresh("sticky");
    fs::create_dir(dir.join("tmp")).unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(matches!(
        Tree::from_dir(&dir),
        Err(Error::SpecialModeBits { mode: 0o1777, .. })
    ));

    let dir = fresh("fifo");
    let out = Command::new("mkfifo")
        .arg(dir.join("pipe"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = Tree::from_dir(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFileType { path, kind: "a FIFO" } if path.ends_with("pipe")),
        "{err}"
    );

    let dir = fresh("socket");
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
    assert!(matches!(
        Tree::from_dir(&dir),
        Err(Error::UnsupportedFileType {
            kind: "a socket",
            ..
        })
    ));

    let dir = fresh("device");
    let out = Command::new("mknod")
        .arg(dir.join("null"))
        .args(["c", "1", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mknod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(
        Tree::from_dir(&dir),
        Err(Error::UnsupportedFileType {
            kind: "a character device",
            ..
        })
    ));

    let dir = fresh("lost-and-found");
    fs::create_dir(dir.join("lost+found")).unwrap();
    let tree = Tree::from_dir(&dir).expect("an empty lost+found is skipped");
    let report = write_image(
        &tree,
        &mut tempfile::tempfile().unwrap(),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(report.files.len(), 1);
    fs::write(dir.join("lost+found/x"), b"x").unwrap();
    assert!(matches!(
        Tree::from_dir(&dir),
        Err(Error::ReservedName { .. })
    ));

    let err = Tree::from_dir(&tmp.path().join("missing")).unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err}");
    let err = Tree::from_dir(&tmp.path().join("setuid/ok")).unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err}");
}

#[test]
fn a_file_that_changes_while_writing_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), b"before").unwrap();
    let tree = Tree::from_dir(tmp.path()).unwrap();
    fs::write(tmp.path().join("f"), b"after, and longer").unwrap();
    let err = write_image(
        &tree,
        &mut tempfile::tempfile().unwrap(),
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::FileChanged { expected: 6, .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Random trees

#[derive(Clone, Debug)]
enum Gen {
    Dir(u16),
    File(u16, Vec<u8>),
    Symlink(Vec<u8>),
    /// A hard link to the n-th file created so far (modulo their number).
    HardLink(usize),
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but '/' and NUL, 1..=255 long; mostly short.
    let byte = prop_oneof![
        8 => prop::sample::select(b"abcdefghijklmnopqrstuvwxyz0123456789._-".to_vec()),
        1 => (1u8..=255).prop_filter("no slash", |b| *b != b'/'),
    ];
    prop_oneof![
        10 => prop::collection::vec(byte.clone(), 1..12),
        1 => prop::collection::vec(byte, 200..=255),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn content_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        4 => prop::collection::vec(any::<u8>(), 1..200),
        2 => (1usize..4 * BLOCK + 10, any::<u64>()).prop_map(|(len, seed)| {
            let mut v = Rng(seed).bytes(len);
            // Sometimes a zero block, to make a hole.
            if len > 2 * BLOCK && seed % 2 == 0 {
                v[BLOCK..2 * BLOCK].fill(0);
            }
            v
        }),
    ]
}

fn gen_strategy() -> impl Strategy<Value = Vec<(usize, Vec<u8>, Gen)>> {
    let mode = prop::sample::select(vec![0o755u16, 0o644, 0o700, 0o000, 0o4711, 0o1777, 0o640]);
    let entry = prop_oneof![
        3 => mode.clone().prop_map(Gen::Dir),
        5 => (mode, content_strategy()).prop_map(|(m, c)| Gen::File(m, c)),
        // Components of at most 255 bytes: ext4-view refuses longer ones.
        2 => prop::collection::vec(1u8..=255, 1..300).prop_map(|mut target| {
            for (i, b) in target.iter_mut().enumerate() {
                if i % 200 == 199 {
                    *b = b'/';
                }
            }
            Gen::Symlink(target)
        }),
        1 => any::<usize>().prop_map(Gen::HardLink),
    ];
    // (parent choice, name, what)
    prop::collection::vec((any::<usize>(), name_strategy(), entry), 0..40)
}

fn random_case(entries: Vec<(usize, Vec<u8>, Gen)>) -> Case {
    let mut case = Case::new();
    let mut dirs: Vec<String> = vec![String::new()];
    let mut files: Vec<String> = Vec::new();
    for (parent, name, what) in entries {
        // Names are bytes; paths in Case are strings, so keep them valid by
        // mapping non-UTF-8 names through a lossless hex escape.
        let name = match String::from_utf8(name.clone()) {
            Ok(s) => s,
            Err(_) => hex(&name).chars().take(255).collect(),
        };
        let parent = &dirs[parent % dirs.len()];
        let path = if parent.is_empty() {
            name
        } else {
            format!("{parent}/{name}")
        };
        if path == "lost+found"
            || case.expected.contains_key(path.as_bytes())
            || path.split('/').any(|c| c.is_empty())
        {
            continue;
        }
        match what {
            Gen::Dir(mode) => {
                case.dir(&path, mode);
                dirs.push(path);
            }
            Gen::File(mode, bytes) => {
                case.file(&path, Meta::new(mode, 1000, 1000), bytes);
                files.push(path);
            }
            Gen::Symlink(target) => case.symlink(&path, &target),
            Gen::HardLink(n) if !files.is_empty() => {
                let target = files[n % files.len()].clone();
                case.hardlink(&path, &target);
            }
            Gen::HardLink(_) => {}
        }
    }
    case
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        // Failures are printed with their input; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_trees_pass_e2fsck_and_read_back(entries in gen_strategy()) {
        let case = random_case(entries);
        let (image, report) = case.write();
        e2fsck_clean(&image);
        compare(&case, &report, &observe_ext4_view(&image), "ext4-view");
    }
}
