//! cartbuild: recipes to images.
//!
//! [`request`] turns the command line, the environment and the config file into a validated
//! build request, and [`pipeline::build`] runs it. One straight pipeline, one module per
//! arrow:
//!
//! ```text
//! recipe ──▶ plan ──▶ fetch ──▶ unpack/build ──▶ stage ──▶ image ──▶ describe
//! ```
//!
//! - [`recipe`]: the TOML as written, includes merged;
//! - [`plan`]: validated, `mirror://` resolved ([`mirror`]), dependency order,
//!   build keys;
//! - [`fetch`]: verified downloads into the content-addressed [`cache`];
//! - [`unpack`]: tarballs, refusing anything that escapes, bounded in size;
//! - [`beneath`]: writing under a directory without following a link in it;
//! - [`toolchain`] and [`build`]: static musl builds, cached by key, each
//!   script in a [`sandbox`] of fresh namespaces, with [`elf`] checking that
//!   every binary is static;
//! - [`stage`]: the tree for the mount point `/dev/crashcart`;
//! - [`image`]: the [`image::ImageWriter`] seam and its implementation with
//!   cartbuild's own [`ext4`] writer;
//! - [`describe`]: the manifest inside the image, and the checksum, manifest
//!   and [`spdx`] SBOM beside it, all renamed into place together ([`output`]);
//! - [`disk`]: `--format gpt`, a GPT disk holding the filesystem and a FAT
//!   partition that describes it;
//! - [`uptodate`]: a rebuild with nothing changed checks the image and its
//!   sidecars against what the cache recorded, and writes nothing;
//! - [`inspect`] and [`diff`]: reading images back (with `ext4-view`, no root,
//!   no mount) to verify them and compare two of them.
//!
//! [`reproduce`] builds recipes twice and [`release`] publishes reproducible images with an index, and [`sign`] makes
//! minisign-compatible keys and image signatures (verified by
//! `cartimage::signature`).
//!
//! [`push`] uploads an image with its sidecars to an OCI registry. [`progress`] reports
//! every long step. Each module has one error enum naming
//! the file, URL or package that failed.

// No production function over 100 lines (clippy.toml sets the threshold); unit tests
// are not held to it yet.
#![cfg_attr(not(test), deny(clippy::too_many_lines))]

pub mod beneath;
pub mod build;
pub mod cache;
pub mod describe;
pub mod diff;
pub mod disk;
pub mod elf;
pub mod ext4;
pub mod fetch;
pub mod image;
pub mod inspect;
pub mod mirror;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod push;
pub mod recipe;
pub mod release;
pub mod remote;
pub mod reproduce;
pub mod request;
pub mod sandbox;
pub mod seed;
pub mod sign;
pub mod spdx;
pub mod stage;
pub mod toolchain;
pub mod unpack;
pub mod uptodate;
