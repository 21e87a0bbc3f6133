//! Sealed in-memory files: `memfd_create(2)`, file seals (`fcntl(2)` `F_ADD_SEALS`,
//! `F_GET_SEALS`), copying a file into one (`sendfile(2)`) and executing one (`execveat(2)`
//! with `AT_EMPTY_PATH`, which is what glibc's `fexecve` does).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{FcntlArg, SealFlag};
use nix::sys::memfd::MFdFlags;
use nix::sys::stat::Mode;

use super::Errno;

/// `MFD_EXEC` (Linux 6.3, `include/uapi/linux/memfd.h`): ask for an executable memfd
/// explicitly, which a host with `vm.memfd_noexec=1` otherwise refuses to give. nix 0.30
/// does not name it.
const MFD_EXEC: libc::c_uint = 0x0010;
/// `F_SEAL_EXEC` (Linux 6.3): the mode's exec bits can no longer change.
const F_SEAL_EXEC: libc::c_int = 0x0020;

/// The seals a copy of an executable gets, and which [`seals`] must find on it: nothing can
/// write, grow or shrink it, and nobody can remove or add seals (`memfd_create(2)`, "File
/// sealing"). `F_SEAL_FUTURE_WRITE` is left out as runc does: `F_SEAL_WRITE` is stronger, and
/// the former was buggy before Linux 5.5 (kernel commit 05d351102dbe).
pub fn base_seals() -> libc::c_int {
    (SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE)
        .bits()
}

/// A close-on-exec, sealable, executable memfd named `name` (the name shows in
/// `/proc/PID/exe` as `/memfd:NAME (deleted)`).
pub fn create_executable(name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    match nix::sys::memfd::memfd_create(name, flags | MFdFlags::from_bits_retain(MFD_EXEC)) {
        // Kernels before 6.3 do not know MFD_EXEC; their memfds are executable anyway.
        Err(Errno::EINVAL) => nix::sys::memfd::memfd_create(name, flags),
        other => other,
    }
}

/// Copies `len` bytes of `from` (from its start) to the current offset of `to`.
pub fn copy(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: u64) -> Result<(), Errno> {
    let mut offset: libc::off_t = 0;
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).map_err(|_| Errno::EOVERFLOW)?;
        match nix::sys::sendfile::sendfile(to, from, Some(&mut offset), chunk) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => left -= u64::try_from(n).map_err(|_| Errno::EOVERFLOW)?,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes the memfd read-and-execute only (`0511`, as runc does) and seals it with
/// [`base_seals`], plus `F_SEAL_EXEC` where the kernel has it.
pub fn seal(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(0o511))?;
    // Best effort: kernels before 6.3 refuse the unknown seal with EINVAL.
    let _ = nix::fcntl::fcntl(
        fd,
        FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(F_SEAL_EXEC)),
    );
    nix::fcntl::fcntl(
        fd,
        FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(base_seals())),
    )
    .map(|_| ())
}

/// The seals on `fd`: EINVAL for a file that cannot be sealed (anything but a memfd or
/// another shmem file).
pub fn seals(fd: BorrowedFd<'_>) -> Result<libc::c_int, Errno> {
    nix::fcntl::fcntl(fd, FcntlArg::F_GET_SEALS)
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: runs the file `fd` refers to without a
/// path (no `/proc` needed). Returns only on failure.
pub fn exec(fd: impl AsFd, argv: &[CString], envp: &[CString]) -> Errno {
    match nix::unistd::fexecve(fd, argv, envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
