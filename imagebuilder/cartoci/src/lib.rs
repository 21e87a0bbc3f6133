//! crashcart images through an OCI registry, shared by `cartbuild push` and `cartinject`.
//!
//! - [`reference`]: `oci://HOST[:PORT]/REPO[:TAG][@sha256:…]`, and which of HTTPS or plain
//!   HTTP it means;
//! - [`digest`]: sha256 digests, computed while bytes stream;
//! - [`artifact`]: how an image and its sidecars are laid out as one OCI artifact, and how
//!   a pulled manifest is checked;
//! - [`index`]: one tag for several arches, an OCI image index of artifact manifests, and
//!   [`platform`]: the arches, in the kernel's, OCI's and ELF's words;
//! - [`client`]: the distribution API for one repository (blobs, manifests, tags), with
//!   [`auth`] (bearer tokens, basic credentials) and [`dns`] (host names without NSS);
//! - [`display`]: what a registry sent, escaped and cut short before it is printed.
//!
//! Nothing here knows about filesystems, loop devices or recipes: the caller hands in
//! digests and readers, and gets bytes that matched their digests.

// No production function over 100 lines (clippy.toml sets the threshold); unit tests
// are not held to it yet.
#![cfg_attr(not(test), deny(clippy::too_many_lines))]

pub mod artifact;
pub mod auth;
pub mod client;
pub mod digest;
pub mod display;
pub mod dns;
pub mod index;
pub mod platform;
pub mod reference;

pub use client::{Access, Client, ClientError, Limit};
pub use digest::Digest;
pub use platform::Arch;
pub use reference::{Reference, Target};
