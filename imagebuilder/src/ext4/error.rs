//! The one error type of the ext4 writer.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building a [`super::Tree`] or writing
/// an image. Each variant names the path (inside the staged tree or the
/// image) or the image offset that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the staged tree failed.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file or directory that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Writing the image failed.
    #[error("failed to write the image at byte {offset}: {source}")]
    Write {
        /// Byte offset in the image of the failed write.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },

    /// A device node, FIFO or socket in the staged tree.
    #[error("{path}: {kind} cannot go into an image; remove it from the staged tree")]
    UnsupportedFileType {
        /// The offending entry.
        path: PathBuf,
        /// "a character device", "a FIFO", …
        kind: &'static str,
    },

    /// A setuid, setgid or sticky bit in the staged tree.
    #[error(
        "{path}: mode {mode:04o} has a setuid, setgid or sticky bit, which a staged tree may not \
         carry; clear it (chmod u-s,g-s,-t) or give the mode explicitly in an in-memory tree"
    )]
    SpecialModeBits {
        /// The offending entry.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A mode given to the in-memory tree has bits beyond the 12 permission bits.
    #[error("{path}: mode {mode:o} is not a permission mode (at most 07777)")]
    InvalidMode {
        /// The entry.
        path: PathBuf,
        /// The rejected mode.
        mode: u16,
    },

    /// A path given to the in-memory tree is empty, has `.`/`..` or NUL bytes.
    #[error("{path}: not a valid path inside the image ({reason})")]
    InvalidPath {
        /// The rejected path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A file name longer than ext4's 255 bytes.
    #[error("{path}: file name is {len} bytes long; ext4 allows at most 255")]
    NameTooLong {
        /// The entry.
        path: PathBuf,
        /// Length of its last component in bytes.
        len: usize,
    },

    /// Two entries with the same path.
    #[error("{path}: already in the tree")]
    AlreadyExists {
        /// The duplicate path.
        path: PathBuf,
    },

    /// The parent of a new entry is missing or not a directory.
    #[error("{path}: parent is missing or not a directory; add the directory first")]
    NoParent {
        /// The entry whose parent is missing.
        path: PathBuf,
    },

    /// A hard link to something that is missing or is a directory.
    #[error("{path}: cannot hard-link to {target}: it is missing or a directory")]
    BadHardLink {
        /// The new link.
        path: PathBuf,
        /// What it should point to.
        target: PathBuf,
    },

    /// `lost+found` at the root belongs to the writer.
    #[error(
        "{path}: `lost+found` at the root of the image is created by the writer; remove it from \
         the staged tree (an empty directory is ignored)"
    )]
    ReservedName {
        /// The staged `lost+found`.
        path: PathBuf,
    },

    /// A symlink target that is empty, too long or has a NUL byte.
    #[error("{path}: symlink target of {len} bytes is invalid (1 to 4095 bytes, no NUL)")]
    InvalidSymlink {
        /// The symlink.
        path: PathBuf,
        /// Length of its target.
        len: usize,
    },

    /// More hard links to one inode than ext4 allows.
    #[error("{path}: {links} hard links; ext4 allows at most 65000")]
    TooManyLinks {
        /// One of the links.
        path: PathBuf,
        /// How many there are.
        links: usize,
    },

    /// A staged file changed size while it was being written.
    #[error("{path}: changed while the image was written (expected {expected} bytes); retry")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// The size it had when the tree was read.
        expected: u64,
    },

    /// A sparse file whose segments overlap, are unsorted or end past its length.
    #[error("{path}: sparse segments must be sorted, disjoint and within the file's length")]
    BadSegments {
        /// The file.
        path: PathBuf,
    },

    /// The content does not fit in the requested exact size.
    #[error(
        "the content needs an image of at least {needed} bytes but the requested size is \
         {requested} bytes; raise --size or drop --size to fit the image to its content"
    )]
    TooSmall {
        /// Smallest image size that holds the content (a multiple of 4096).
        needed: u64,
        /// The size that was asked for.
        requested: u64,
    },

    /// The image would exceed what ext4 without `64bit` can address.
    #[error("{what} is too large for an ext4 image without the 64bit feature (16 TiB at most)")]
    TooLarge {
        /// What overflowed.
        what: String,
    },

    /// A bug in the writer: an invariant did not hold.
    #[error("internal error in the ext4 writer: {what}; please report it")]
    Internal {
        /// What went wrong.
        what: String,
    },

    /// A volume label longer than 16 bytes.
    #[error("volume label {label:?} is {len} bytes long; ext4 allows at most 16")]
    LabelTooLong {
        /// The label.
        label: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// Result with the writer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
