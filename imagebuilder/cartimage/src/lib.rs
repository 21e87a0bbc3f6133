//! The crashcart image as a thing on disk, shared by `cartbuild` and `cartinject`.
//!
//! - [`arch`]: the machines images are built for, by their kernel, ELF and OCI names.
//! - [`detect`]: which filesystem (or GPT disk) a file holds, read from its superblock.
//! - [`ext4`] and [`le`]: ext4's on-disk constants and the little-endian field readers,
//!   shared with cartbuild's ext4 writer.
//! - [`manifest`]: the manifest types written beside and inside every image.
//! - [`signature`]: verifying an image's minisign signature (`<image>.minisig`).
//! - [`sidecar`]: whether an image matches the `.sha256` and manifest beside it (or beside
//!   what a symlink to it resolves to).

// No production function over 100 lines (clippy.toml sets the threshold); unit tests
// are not held to it yet.
#![cfg_attr(not(test), deny(clippy::too_many_lines))]

pub mod arch;
pub mod detect;
pub mod ext4;
pub mod le;
pub mod manifest;
pub mod sidecar;
pub mod signature;
pub mod superblock;
