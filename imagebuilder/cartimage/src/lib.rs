//! The crashcart image as a thing on disk, shared by `cartbuild` and `cartinject`.
//!
//! - [`detect`]: which filesystem (or GPT disk) a file holds, read from its superblock.
//! - [`manifest`]: the manifest types written beside and inside every image.
//! - [`signature`]: verifying an image's minisign signature (`<image>.minisig`).

pub mod detect;
pub mod manifest;
pub mod signature;
pub mod superblock;
