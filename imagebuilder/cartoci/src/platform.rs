//! The machines crashcart images are built for, in every vocabulary that names them: the
//! kernel's (`uname -m`, what cartbuild's manifests say), OCI's (an index's
//! `platform.architecture`, Go's `GOARCH`) and ELF's (`e_machine`). This is the one table
//! of them (`cartimage::arch`, shared with cartbuild's builds); `cartbuild push` and
//! `cartinject` both read it.

pub use cartimage::arch::Arch;

/// The only `platform.os` crashcart images have.
pub const OS: &str = "linux";
