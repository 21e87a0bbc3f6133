//! cartbuild: recipes to images.
//!
//! One straight pipeline, one module per arrow:
//!
//! ```text
//! recipe ──▶ plan ──▶ fetch ──▶ unpack/build ──▶ stage ──▶ image ──▶ describe
//! ```
//!
//! - [`recipe`]: the TOML as written, includes merged;
//! - [`plan`]: validated, `mirror://` resolved ([`mirror`]), dependency order,
//!   build keys;
//! - [`fetch`]: verified downloads into the content-addressed [`cache`];
//! - [`unpack`]: tarballs, refusing anything that escapes;
//! - [`toolchain`] and [`build`]: static musl builds, cached by key, with
//!   [`elf`] checking that every binary is static;
//! - [`stage`]: the tree for the mount point `/dev/crashcart`;
//! - [`image`]: the [`image::ImageWriter`] seam (mke2fs today, [`ext4`] next);
//! - [`describe`]: the checksum (and later manifest and SBOM) beside the image.
//!
//! [`progress`] reports every long step. Each module has one error enum naming
//! the file, URL or package that failed.

pub mod build;
pub mod cache;
pub mod describe;
pub mod elf;
pub mod ext4;
pub mod fetch;
pub mod image;
pub mod mirror;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod stage;
pub mod toolchain;
pub mod unpack;
