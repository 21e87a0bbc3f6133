//! Streaming regular files into data blocks.
//!
//! Every file is read once, through a fixed 256 KiB buffer, and hashed
//! (sha256) on the way; memory does not grow with file size. Data blocks are
//! handed out in order from one cursor, so the data of all files forms a
//! single dense run and is written in large sequential chunks.
//!
//! Holes in a source file are found with `SEEK_DATA`/`SEEK_HOLE` and never
//! read. Beyond that, a block that is all zeros is not allocated either: it
//! becomes a hole, exactly as a hole in the source would (e2fsprogs'
//! `mke2fs -d` does the same in `copy_file_chunk`, misc/create_inode.c).
//! This keeps holes as holes and makes the image depend only on the bytes of
//! a file, never on whether the staging filesystem happened to store its
//! zeros sparsely.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use sha2::{Digest, Sha256};

use super::error::{Error, Result};
use super::extent::push_run;
use super::format::{BLOCK_SIZE, BLOCK_SIZE_U64, Extent};
use super::tree::FileData;

/// Size of the read buffer and of the largest single write (of data or
/// metadata).
const CHUNK: usize = 256 << 10;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// What writing one file produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// Its extents, in logical order.
    pub extents: Vec<Extent>,
    /// sha256 of its bytes.
    pub sha256: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
    /// Data blocks allocated to it (holes excluded).
    pub blocks: u64,
}

/// Buffered writes of whole blocks, merged while they are contiguous, in
/// writes of up to [`CHUNK`] bytes: the writer's metadata blocks, and the
/// data blocks [`DataOut`] hands out. Blocks at or past `limit` are dropped
/// (the image is too small and the caller is about to say so, with how much
/// it would have needed).
pub struct BlockOut<'f> {
    out: &'f File,
    limit: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'f> BlockOut<'f> {
    /// Writes into `out`, only blocks below `limit`.
    pub fn new(out: &'f File, limit: u64) -> BlockOut<'f> {
        BlockOut {
            out,
            limit,
            start: 0,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    /// Queues `bytes` (at most a block; zero-padded) for block `block`.
    pub fn put(&mut self, block: u64, bytes: &[u8]) -> Result<()> {
        if block >= self.limit {
            return Ok(());
        }
        let queued = u64::try_from(self.buf.len()).unwrap_or(u64::MAX) / BLOCK_SIZE_U64;
        if !self.buf.is_empty() && block != self.start + queued {
            self.flush()?;
        }
        if self.buf.is_empty() {
            self.start = block;
        }
        self.buf.extend_from_slice(bytes);
        self.buf.resize(
            self.buf.len() + (BLOCK_SIZE - bytes.len() % BLOCK_SIZE) % BLOCK_SIZE,
            0,
        );
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out whatever is queued.
    pub fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let offset = self.start * BLOCK_SIZE_U64;
        self.out
            .write_all_at(&self.buf, offset)
            .map_err(|source| Error::Write { offset, source })?;
        self.buf.clear();
        Ok(())
    }
}

/// The data-block cursor and its write buffer.
pub struct DataOut<'f> {
    /// Next block to hand out. Blocks from the buffer's limit on are counted
    /// but not written.
    next: u64,
    blocks: BlockOut<'f>,
    read_buf: Vec<u8>,
}

impl<'f> DataOut<'f> {
    /// A cursor that hands out blocks from `first_block` on, writing only
    /// those below `limit`.
    pub fn new(out: &'f File, first_block: u64, limit: u64) -> DataOut<'f> {
        DataOut {
            next: first_block,
            blocks: BlockOut::new(out, limit),
            read_buf: vec![0; CHUNK],
        }
    }

    /// Writes out whatever is buffered; returns the first block not handed out.
    pub fn finish(mut self) -> Result<u64> {
        self.blocks.flush()?;
        Ok(self.next)
    }

    /// Streams one file; `image_path` names it in errors about the image.
    pub fn write_file(&mut self, data: &FileData, image_path: &Path) -> Result<Written> {
        let mut sink = FileSink {
            hasher: Sha256::new(),
            pos: 0,
            partial: Box::new([0; BLOCK_SIZE]),
            partial_len: 0,
            extents: Vec::new(),
            blocks: 0,
            image_path,
        };
        match data {
            FileData::Bytes(bytes) => sink.feed(self, bytes)?,
            FileData::Sparse { len, segments } => {
                let mut at = 0;
                for (offset, bytes) in segments {
                    sink.feed_zeros(self, offset - at)?;
                    sink.feed(self, bytes)?;
                    at = sink.pos_bytes();
                }
                sink.feed_zeros(self, len - at)?;
            }
            FileData::Path { path, len } => {
                let mut buf = std::mem::take(&mut self.read_buf);
                let result = self.stream_path(&mut sink, path, *len, &mut buf);
                self.read_buf = buf;
                result?;
            }
        }
        sink.finish(self)
    }

    /// Streams a file on disk: only its data regions are read (found with
    /// `SEEK_DATA`/`SEEK_HOLE`, lseek(2)); its holes are fed as zeros, which
    /// the sink turns back into holes.
    fn stream_path(
        &mut self,
        sink: &mut FileSink<'_>,
        path: &Path,
        len: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let read_error = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let changed = || Error::FileChanged {
            path: path.to_path_buf(),
            expected: len,
        };
        let file = File::open(path).map_err(read_error)?;
        let size_now = || file.metadata().map(|m| m.len()).map_err(read_error);
        if size_now()? != len {
            return Err(changed());
        }
        let mut at = 0;
        while at < len {
            let (data, hole) = next_data(&file, at, len).map_err(read_error)?;
            sink.feed_zeros(self, data - at)?;
            let mut pos = data;
            while pos < hole {
                let want = usize::try_from(hole - pos)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let n = read_full_at(&file, &mut buf[..want], pos).map_err(read_error)?;
                if n == 0 {
                    return Err(changed());
                }
                sink.feed(self, &buf[..n])?;
                pos += u64::try_from(n).unwrap_or(u64::MAX);
            }
            at = hole;
        }
        if size_now()? != len {
            return Err(changed());
        }
        Ok(())
    }

    /// Hands out the next block for `block`'s bytes (never empty: a short
    /// last block of a file is padded with zeros).
    fn allocate(&mut self, block: &[u8]) -> Result<u64> {
        let at = self.next;
        self.blocks.put(at, block)?;
        self.next += 1;
        Ok(at)
    }
}

/// Fills `buf` from `file` at `offset` unless the file ends first; returns
/// the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let at = offset + u64::try_from(filled).unwrap_or(u64::MAX);
        match file.read_at(&mut buf[filled..], at) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The next data region at or after `at`, as `(start, end)`, both at most
/// `len`. With no data left, `(len, len)`. Filesystems without hole
/// tracking report the whole file as data (the kernel's generic lseek).
fn next_data(file: &File, at: u64, len: u64) -> io::Result<(u64, u64)> {
    let seek = |offset: u64, whence: Whence| -> io::Result<Option<u64>> {
        let offset = i64::try_from(offset).map_err(io::Error::other)?;
        match lseek(file, offset, whence) {
            Ok(found) => Ok(Some(u64::try_from(found).map_err(io::Error::other)?)),
            // No data (or no hole) past `offset`.
            Err(Errno::ENXIO) => Ok(None),
            Err(errno) => Err(io::Error::from(errno)),
        }
    };
    let Some(data) = seek(at, Whence::SeekData)? else {
        return Ok((len, len));
    };
    let data = data.min(len);
    let hole = seek(data, Whence::SeekHole)?
        .unwrap_or(len)
        .clamp(data, len);
    Ok((data, hole))
}

fn is_zero(block: &[u8]) -> bool {
    // Data blocks seldom start with 16 zero bytes, so most of them are
    // decided here; the fold over the rest vectorises.
    let (head, rest) = block.split_at(block.len().min(16));
    head.iter().all(|&b| b == 0) && rest.iter().fold(0, |acc, &b| acc | b) == 0
}

/// One file being streamed: its hash, extents and a partial last block.
struct FileSink<'p> {
    hasher: Sha256,
    /// Bytes of the file before `partial`.
    pos: u64,
    partial: Box<[u8; BLOCK_SIZE]>,
    partial_len: usize,
    extents: Vec<Extent>,
    blocks: u64,
    image_path: &'p Path,
}

impl FileSink<'_> {
    /// Bytes of the file seen so far.
    fn pos_bytes(&self) -> u64 {
        // OK to expect: partial_len < 4096.
        self.pos + u64::try_from(self.partial_len).expect("partial block length")
    }

    fn too_large(&self) -> Error {
        Error::TooLarge {
            what: format!("file {}", self.image_path.display()),
        }
    }

    /// Places one full or final block found at byte `self.pos`.
    fn block(&mut self, out: &mut DataOut<'_>, block: &[u8]) -> Result<()> {
        if !is_zero(block) {
            let logical = u32::try_from(self.pos / BLOCK_SIZE_U64).map_err(|_| self.too_large())?;
            let physical = out.allocate(block)?;
            let physical = u32::try_from(physical).map_err(|_| Error::TooLarge {
                what: "the content".to_string(),
            })?;
            push_run(&mut self.extents, logical, physical, 1);
            self.blocks += 1;
        }
        // OK to expect: a block is at most 4096 bytes.
        self.pos += u64::try_from(block.len()).expect("block length");
        Ok(())
    }

    fn feed(&mut self, out: &mut DataOut<'_>, mut bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        if self.partial_len > 0 {
            let take = (BLOCK_SIZE - self.partial_len).min(bytes.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&bytes[..take]);
            self.partial_len += take;
            bytes = &bytes[take..];
            if self.partial_len < BLOCK_SIZE {
                return Ok(());
            }
            let full = std::mem::replace(&mut self.partial, Box::new([0; BLOCK_SIZE]));
            self.partial_len = 0;
            self.block(out, &full[..])?;
        }
        let mut blocks = bytes.chunks_exact(BLOCK_SIZE);
        for block in &mut blocks {
            self.block(out, block)?;
        }
        let rest = blocks.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
        Ok(())
    }

    fn feed_zeros(&mut self, out: &mut DataOut<'_>, mut len: u64) -> Result<()> {
        // Hash the zeros; only the block they start in can hold data.
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(ZEROS.len());
            self.hasher.update(&ZEROS[..n]);
            left -= u64::try_from(n).unwrap_or(left);
        }
        if self.partial_len > 0 {
            let room = u64::try_from(BLOCK_SIZE - self.partial_len).unwrap_or(0);
            let take = room.min(len);
            // `partial` past partial_len is already zero.
            self.partial_len += usize::try_from(take).unwrap_or(0);
            len -= take;
            if self.partial_len < BLOCK_SIZE {
                return Ok(());
            }
            let full = std::mem::replace(&mut self.partial, Box::new([0; BLOCK_SIZE]));
            self.partial_len = 0;
            self.block(out, &full[..])?;
        }
        // Whole blocks of zeros are holes; a partial one starts the next block.
        self.pos += len - len % BLOCK_SIZE_U64;
        self.partial_len = usize::try_from(len % BLOCK_SIZE_U64).unwrap_or(0);
        self.partial.fill(0);
        Ok(())
    }

    fn finish(mut self, out: &mut DataOut<'_>) -> Result<Written> {
        if self.partial_len > 0 {
            let partial = std::mem::replace(&mut self.partial, Box::new([0; BLOCK_SIZE]));
            let len = self.partial_len;
            self.partial_len = 0;
            self.block(out, &partial[..len])?;
        }
        Ok(Written {
            extents: self.extents,
            sha256: self.hasher.finalize().into(),
            size: self.pos,
            blocks: self.blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    use super::*;

    fn run(data: &FileData) -> (Written, Vec<u8>) {
        let tmp = tempfile::tempfile().unwrap();
        let mut out = DataOut::new(&tmp, 10, u64::MAX);
        let written = out.write_file(data, Path::new("f")).unwrap();
        out.finish().unwrap();
        let mut image = Vec::new();
        (&tmp).read_to_end(&mut image).unwrap();
        (written, image)
    }

    /// Reads a file back from its extents.
    fn read_back(w: &Written, image: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; usize::try_from(w.size).unwrap()];
        for e in &w.extents {
            for i in 0..u32::from(e.len) {
                let logical = usize::try_from(e.block + i).unwrap() * BLOCK_SIZE;
                let physical = usize::try_from(e.start + i).unwrap() * BLOCK_SIZE;
                let n = BLOCK_SIZE.min(bytes.len() - logical);
                bytes[logical..logical + n].copy_from_slice(&image[physical..physical + n]);
            }
        }
        bytes
    }

    #[test]
    fn zero_blocks_become_holes_and_the_hash_covers_them() {
        let mut content = vec![0u8; 5 * BLOCK_SIZE + 100];
        content[10] = 1; // block 0
        content[3 * BLOCK_SIZE + 7] = 2; // block 3
        content[5 * BLOCK_SIZE + 99] = 3; // the short last block
        let (w, image) = run(&FileData::Bytes(content.clone()));
        assert_eq!(w.blocks, 3);
        assert_eq!(w.size, u64::try_from(content.len()).unwrap());
        assert_eq!(w.sha256, <[u8; 32]>::from(Sha256::digest(&content)));
        let logical: Vec<(u32, u16)> = w.extents.iter().map(|e| (e.block, e.len)).collect();
        assert_eq!(logical, [(0, 1), (3, 1), (5, 1)]);
        // Physical blocks are dense from the first block handed out.
        assert_eq!(w.extents[0].start, 10);
        assert_eq!(w.extents[2].start, 12);
        assert_eq!(read_back(&w, &image), content);
    }

    #[test]
    fn sparse_segments_match_the_same_bytes_given_densely() {
        let len = 40 * BLOCK_SIZE + 5;
        let segments = vec![
            (100u64, vec![7u8; 50]),
            (150, vec![8u8; BLOCK_SIZE]),
            (20 * BLOCK_SIZE_U64 - 1, vec![9u8; 2]),
            (40 * BLOCK_SIZE_U64, vec![1u8; 5]),
        ];
        let mut dense = vec![0u8; len];
        for (offset, bytes) in &segments {
            let offset = usize::try_from(*offset).unwrap();
            dense[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        let sparse = FileData::Sparse {
            len: u64::try_from(len).unwrap(),
            segments,
        };
        let (ws, image_s) = run(&sparse);
        let (wd, image_d) = run(&FileData::Bytes(dense.clone()));
        assert_eq!(ws.sha256, wd.sha256);
        assert_eq!(ws.extents, wd.extents);
        assert_eq!(image_s, image_d);
        assert_eq!(read_back(&ws, &image_s), dense);
        assert_eq!(ws.blocks, 2 + 2 + 1);
    }

    #[test]
    fn a_file_that_changed_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let tmp = tempfile::tempfile().unwrap();
        let mut out = DataOut::new(&tmp, 0, u64::MAX);
        for len in [4, 6] {
            let data = FileData::Path {
                path: path.clone(),
                len,
            };
            let err = out.write_file(&data, Path::new("f")).unwrap_err();
            assert!(matches!(err, Error::FileChanged { expected, .. } if expected == len));
        }
        let data = FileData::Path { path, len: 5 };
        assert_eq!(out.write_file(&data, Path::new("f")).unwrap().size, 5);
    }

    #[test]
    fn holes_in_a_file_on_disk_are_skipped_and_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        // Logical blocks 0 and 1 (partly), then written zeros: the rest of
        // block 1, all of block 2 (a hole in the image), part of block 3,
        // where "end" lands.
        f.write_all(&[5; 5000]).unwrap();
        f.write_all(&[0; 2 * BLOCK_SIZE]).unwrap();
        f.write_all(b"end").unwrap();
        drop(f);
        let (w, image) = run(&FileData::from_path(&path).unwrap());
        assert_eq!(w.size, 64 << 20);
        let at = (32 << 20) / 4096;
        let got: Vec<(u32, u16, u32)> = w
            .extents
            .iter()
            .map(|e| (e.block, e.len, e.start))
            .collect();
        assert_eq!(got, [(at, 2, 10), (at + 3, 1, 12)]);
        assert_eq!(w.blocks, 3);
        let mut expected = vec![0u8; 3 * BLOCK_SIZE];
        expected[..5000].fill(5);
        let end = 2 * BLOCK_SIZE + 5000 + 2 * BLOCK_SIZE - 3 * BLOCK_SIZE;
        expected[end..end + 3].copy_from_slice(b"end");
        assert_eq!(image[10 * BLOCK_SIZE..13 * BLOCK_SIZE], expected[..]);
    }

    #[test]
    fn blocks_past_the_limit_are_counted_not_written() {
        let tmp = tempfile::tempfile().unwrap();
        let mut out = DataOut::new(&tmp, 0, 2);
        let w = out
            .write_file(&FileData::Bytes(vec![1; 4 * BLOCK_SIZE]), Path::new("f"))
            .unwrap();
        assert_eq!(w.blocks, 4);
        assert_eq!(out.finish().unwrap(), 4);
        assert_eq!(tmp.metadata().unwrap().len(), 2 * BLOCK_SIZE_U64);
    }
}
