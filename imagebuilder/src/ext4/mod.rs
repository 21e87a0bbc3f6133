#![doc = include_str!("README.md")]
#![forbid(unsafe_code)]

mod bitmap;
mod data;
mod dirent;
mod error;
mod extent;
pub mod format;
mod tree;
mod writer;

pub use error::{Error, Result};
pub use tree::{EntryKind, FileData, Meta, SYMLINK_MAX, Tree, TreeEntry};
pub use writer::{
    DEFAULT_FREE, FileKind, FileReport, ImageSize, Options, Report, write_image,
    write_image_with_progress,
};
