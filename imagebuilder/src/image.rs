//! Writing the staged tree into an image file.
//!
//! [`ImageWriter`] is the seam between the pipeline and the filesystem writer: it
//! takes the staged directory, the options (epoch, size, label) and an open file,
//! and fills the file. [`Mke2fs`] implements it with e2fsprogs' `mke2fs -d` until
//! the pure-Rust writer ([`crate::ext4`]) lands, made as deterministic as mke2fs
//! allows: our own `mke2fs.conf` (so the host's does not pick the features), a
//! UUID and directory hash seed derived from the tree's content, every time stamp
//! from `E2FSPROGS_FAKE_TIME`, root owned by 0:0, no journal, no reserved blocks.
//! [`write_atomically`] puts the result at its final path by rename, so a failed
//! build never leaves a half-written image.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Why the image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `mke2fs` or `debugfs` is missing.
    #[error("mke2fs or debugfs not found: install them with `apt-get install e2fsprogs`")]
    NoMke2fs,
    /// `mke2fs` failed.
    #[error("mke2fs failed: {0}")]
    Mke2fs(String),
    /// `--size` is too small for the content.
    #[error(
        "the content does not fit in {size} bytes (--size); it needs about {needed} bytes: raise --size or use --free"
    )]
    TooSmall {
        /// The requested size.
        size: u64,
        /// An estimate of what is needed.
        needed: u64,
    },
}

/// How big the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSize {
    /// Just big enough for the content plus `free` bytes.
    Fit {
        /// Free space to leave, in bytes.
        free: u64,
    },
    /// Exactly this many bytes.
    Exact(u64),
}

/// The default free space of a fitted image.
pub const DEFAULT_FREE: u64 = 1 << 20;

/// What the writer needs besides the tree.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Seconds since 1970 for every time stamp.
    pub epoch: u64,
    /// Size policy.
    pub size: ImageSize,
    /// Filesystem label (at most 16 bytes are kept).
    pub label: String,
}

/// Writes a staged directory into an image file.
pub trait ImageWriter {
    /// A short name for messages (`mke2fs`, `ext4`).
    fn name(&self) -> &'static str;
    /// Writes the tree at `staged` into `out` (an empty, writable file).
    fn write(&self, staged: &Path, opts: &ImageOptions, out: &mut File) -> Result<(), ImageError>;
}

/// `mke2fs -t ext4 -O ^has_journal -d`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mke2fs;

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;

/// Our mke2fs.conf: features fixed here, not by the host's `/etc/mke2fs.conf`.
const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
[fs_types]
\text4 = {
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tfloppy = {
\t}
\tsmall = {
\t}
\tdefault = {
\t}
\tbig = {
\t}
\thuge = {
\t}
";

/// Counts what a tree needs: (data blocks, inodes).
fn measure(root: &Path) -> std::io::Result<(u64, u64)> {
    let mut blocks = 0u64;
    let mut inodes = 0u64;
    for e in walkdir::WalkDir::new(root) {
        let e = e.map_err(std::io::Error::other)?;
        let m = e.path().symlink_metadata()?;
        inodes += 1;
        blocks += if m.is_dir() {
            // Directory blocks: roughly 24 entries of 40 bytes per 1 KiB.
            1 + fs::read_dir(e.path())?.count() as u64 * 40 / BLOCK
        } else if m.file_type().is_symlink() {
            u64::from(m.len() > 59)
        } else {
            // Data plus extent tree slack for large files.
            m.len().div_ceil(BLOCK) + m.len() / (128 << 20)
        };
    }
    Ok((blocks, inodes))
}

/// A UUID-shaped string from 16 bytes of `seed`.
fn uuid(seed: &[u8]) -> String {
    let h = hex::encode(&seed[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// sha256 of a staged tree's content (for the UUID).
fn tree_digest(root: &Path) -> Result<[u8; 32], ImageError> {
    crate::plan::hash_tree(root)
        .map_err(|source| ImageError::Io {
            path: root.to_path_buf(),
            source,
        })
        .map(|hexed| Sha256::digest(hexed.as_bytes()).into())
}

impl ImageWriter for Mke2fs {
    fn name(&self) -> &'static str {
        "mke2fs"
    }

    fn write(&self, staged: &Path, opts: &ImageOptions, out: &mut File) -> Result<(), ImageError> {
        let mke2fs = crate::toolchain::which("mke2fs")
            .or_else(|| Some(PathBuf::from("/sbin/mke2fs")).filter(|p| p.exists()))
            .ok_or(ImageError::NoMke2fs)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { path, source }
        };
        let (blocks, inodes) = measure(staged).map_err(io(staged))?;
        let inodes = inodes + 16;
        // Inode tables, bitmaps, group descriptors and superblock backups, plus
        // the root and lost+found.
        let overhead = (inodes * INODE_SIZE).div_ceil(BLOCK) + 64 + blocks / 32;
        let needed = (blocks + overhead) * BLOCK;
        let digest = tree_digest(staged)?;
        let seed2: [u8; 32] = Sha256::digest(digest).into();
        let conf = tempfile::NamedTempFile::new().map_err(io(Path::new("mke2fs.conf")))?;
        fs::write(conf.path(), MKE2FS_CONF).map_err(io(conf.path()))?;
        // mke2fs opens a path; give it this open file through /proc, so the seam
        // stays "write into this File".
        let target = format!("/proc/{}/fd/{}", std::process::id(), out.as_raw_fd());
        let label: String = opts.label.chars().take(16).collect();

        let mut size = match opts.size {
            ImageSize::Exact(n) => n,
            ImageSize::Fit { free } => needed + free,
        };
        loop {
            size = size.div_ceil(BLOCK) * BLOCK;
            out.set_len(0).map_err(io(Path::new(&target)))?;
            out.set_len(size).map_err(io(Path::new(&target)))?;
            let output = Command::new(&mke2fs)
                .args([
                    "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
                ])
                .args(["-O", "^has_journal,^resize_inode"])
                .arg("-N")
                .arg(inodes.to_string())
                .arg("-U")
                .arg(uuid(&digest))
                .arg("-E")
                .arg(format!(
                    "hash_seed={},root_owner=0:0,lazy_itable_init=0,nodiscard",
                    uuid(&seed2)
                ))
                .arg("-L")
                .arg(&label)
                .arg("-d")
                .arg(staged)
                .arg(&target)
                .arg(format!("{}k", size / 1024))
                .env_clear()
                .env("PATH", crate::build::SCRIPT_PATH)
                .env("MKE2FS_CONFIG", conf.path())
                // e2fsprogs reads a fake time of 0 as "unset" and uses the clock.
                .env("E2FSPROGS_FAKE_TIME", opts.epoch.max(1).to_string())
                .env("MKE2FS_DEVICE_SECTSIZE", "512")
                .env("LC_ALL", "C")
                .output()
                .map_err(|_| ImageError::NoMke2fs)?;
            if output.status.success() {
                return pin_times(staged, &target, opts.epoch);
            }
            let msg = String::from_utf8_lossy(&output.stderr);
            let no_space = msg.contains("Could not allocate")
                || msg.contains("Not enough space")
                || msg.contains("No space left")
                || msg.contains("inode table")
                || msg.contains("too small");
            match opts.size {
                ImageSize::Fit { .. } if no_space && size < needed.saturating_mul(16) => {
                    // Our estimate was short: grow by a quarter, deterministically.
                    size += size / 4;
                }
                ImageSize::Exact(n) if no_space => {
                    return Err(ImageError::TooSmall { size: n, needed });
                }
                _ => {
                    let line = msg.split_whitespace().collect::<Vec<_>>().join(" ");
                    return Err(ImageError::Mke2fs(line));
                }
            }
        }
    }
}

/// Sets every inode's access, change and creation times to `epoch`.
///
/// `mke2fs -d` copies each source file's atime and ctime (which no one can set
/// on the staged files: reading them moves atime, and ctime is the kernel's), so
/// without this two builds of the same tree differ in those fields.
fn pin_times(staged: &Path, image: &str, epoch: u64) -> Result<(), ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    let debugfs = crate::toolchain::which("debugfs")
        .or_else(|| Some(PathBuf::from("/sbin/debugfs")).filter(|p| p.exists()))
        .ok_or(ImageError::NoMke2fs)?;
    let mut cmds = String::new();
    let mut paths = vec!["/".to_string(), "/lost+found".to_string()];
    for e in walkdir::WalkDir::new(staged)
        .min_depth(1)
        .sort_by_file_name()
    {
        let e = e.map_err(|e| ImageError::Io {
            path: staged.to_path_buf(),
            source: e.into(),
        })?;
        let rel = e.path().strip_prefix(staged).unwrap_or(e.path());
        paths.push(format!("/{}", rel.display()));
    }
    for p in &paths {
        for field in ["atime", "ctime", "mtime", "crtime"] {
            cmds.push_str(&format!(
                "sif \"{p}\" {field} {epoch}\nsif \"{p}\" {field}_extra 0\n"
            ));
        }
    }
    let file = tempfile::NamedTempFile::new().map_err(io(Path::new("debugfs commands")))?;
    fs::write(file.path(), cmds).map_err(io(file.path()))?;
    let output = Command::new(&debugfs)
        .arg("-w")
        .arg("-f")
        .arg(file.path())
        .arg(image)
        .env_clear()
        .env("LC_ALL", "C")
        // debugfs stamps the superblock's last write time on close.
        .env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string())
        .output()
        .map_err(|_| ImageError::NoMke2fs)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !output.status.success() || !problems.is_empty() {
        return Err(ImageError::Mke2fs(format!(
            "debugfs could not set time stamps: {}",
            problems.join("; ")
        )));
    }
    Ok(())
}

/// Writes an image with `writer` to `dest` through a temporary file in the same
/// directory, renamed into place only when complete. Returns the image's sha256.
pub fn write_atomically(
    writer: &dyn ImageWriter,
    staged: &Path,
    opts: &ImageOptions,
    dest: &Path,
) -> Result<String, ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".cartbuild-")
        .suffix(".img.tmp")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    writer.write(staged, opts, tmp.as_file_mut())?;
    let file = tmp.as_file_mut();
    file.sync_all().map_err(io(dest))?;
    file.seek(SeekFrom::Start(0)).map_err(io(dest))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(dest))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).map_err(io(dest))?;
    }
    tmp.persist(dest).map_err(|e| ImageError::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(hex::encode(h.finalize()))
}

/// Parses a size: bytes, or with a suffix K, M, G (powers of 1024; `KiB`, `MB`
/// and lower case accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use e.g. 4096, 512K, 64M or 1G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}: use K, M or G")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn uuid_shape() {
        let u = uuid(&[0xab; 32]);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[8..9], "-");
    }
}
