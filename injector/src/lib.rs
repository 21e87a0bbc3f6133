//! `cartinject`: sideload a debug image into a running container and get a shell there.
//!
//! See `injector/README.md` for usage. The modules, in the order a session uses them:
//! [`image`] (which file, is it usable), [`target`] (which process), [`join`] (pin it, join
//! its namespaces), [`loopdev`] and [`mount`] (the image on a loop device, mounted detached),
//! [`child`] (the forked namespace child), [`place`] (the image at `/dev/crashcart`), [`exec`]
//! (the user's command), [`session`] (the parent: pty, signals, exit status). [`sys`] is the
//! only place that talks to the kernel directly; [`kernel`] is the narrow view of `/proc`
//! that the decisions of [`plan`] and [`join`] read through, so tests can fake it.
//!
//! This is the library; `main.rs` is only the command line.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::too_many_lines)]

pub mod arch;
pub mod cgroups;
pub mod child;
pub mod command;
pub mod confine;
pub mod display;
pub mod environ;
pub mod exec;
pub mod exeseal;
pub mod features;
pub mod image;
pub mod join;
pub mod keep;
pub mod kernel;
pub mod list;
pub mod loopdev;
pub mod mount;
pub mod mountinfo;
pub mod oci;
pub mod place;
pub mod plan;
pub mod procfs;
pub mod profile;
pub mod session;
pub mod stdio;
#[allow(unsafe_code)]
// The one thin layer over the kernel: every `unsafe` has a `// SAFETY:` reason.
pub mod sys;
pub mod target;
pub mod userns;
pub mod verify;
pub mod watch;
