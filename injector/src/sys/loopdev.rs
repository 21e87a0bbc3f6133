//! Loop device ioctls (`loop(4)`, `<linux/loop.h>`).
//!
//! Written by hand rather than with the `loopdev-3` crate: that crate attaches with
//! `LOOP_SET_FD` followed by `LOOP_SET_STATUS64`, which is not atomic (a crash between the
//! two leaks a device without autoclear), has neither `LOOP_CONFIGURE` nor a status
//! read-back, and needs bindgen and libclang at build time. We need four ioctls.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::Errno;

/// `LO_FLAGS_READ_ONLY`: the device refuses writes.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`: the device detaches itself when its last user closes it.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
/// `BLKGETDISKSEQ`: `_IOR(0x12, 128, __u64)` (`include/uapi/linux/fs.h`, Linux 5.15).
// (`Ioctl` is `c_ulong` in glibc, `c_int` in musl: the number is the same 32 bits.)
const BLKGETDISKSEQ: libc::Ioctl = 0x8008_1280_u32 as libc::Ioctl;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

impl LoopInfo64 {
    fn zeroed() -> LoopInfo64 {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` (Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// What `LOOP_GET_STATUS64` says about an attached device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopStatus {
    /// `st_dev` of the backing file.
    pub backing_dev: u64,
    /// `st_ino` of the backing file.
    pub backing_inode: u64,
    /// Byte offset into the backing file.
    pub offset: u64,
    /// Size limit in bytes (0: to the end of the file).
    pub size_limit: u64,
    /// `LO_FLAGS_*`.
    pub flags: u32,
}

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the number of a free device (created if needed).
pub fn ctl_get_free(control: BorrowedFd<'_>) -> Result<u32, Errno> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
    if rc < 0 {
        return Err(Errno::last());
    }
    u32::try_from(rc).map_err(|_| Errno::EINVAL)
}

/// `LOOP_CONFIGURE`: binds `backing` to the device and sets its flags, offset and size limit
/// in one step, so no half-configured device can be left behind. `EBUSY` means another
/// program took the device first.
pub fn configure(
    device: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    flags: u32,
    offset: u64,
    size_limit: u64,
) -> Result<(), Errno> {
    let mut info = LoopInfo64::zeroed();
    info.lo_flags = flags;
    info.lo_offset = offset;
    info.lo_sizelimit = size_limit;
    let config = LoopConfig {
        fd: u32::try_from(backing.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: `config` is a properly laid out `struct loop_config` that outlives the call;
    // the kernel only reads it.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &raw const config) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `LOOP_GET_STATUS64`: what the device is bound to. `ENXIO` means it is not bound.
pub fn get_status(device: BorrowedFd<'_>) -> Result<LoopStatus, Errno> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: `info` is a writable `struct loop_info64` that outlives the call.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_GET_STATUS64, &raw mut info) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(LoopStatus {
        backing_dev: info.lo_device,
        backing_inode: info.lo_inode,
        offset: info.lo_offset,
        size_limit: info.lo_sizelimit,
        flags: info.lo_flags,
    })
}

/// `BLKGETDISKSEQ`: the device's disk sequence number, which the kernel raises every time a
/// loop device is bound to a file, and never gives twice while the system runs: the same
/// number means the same binding (`ENOTTY` before Linux 5.15).
pub fn disk_seq(device: BorrowedFd<'_>) -> Result<u64, Errno> {
    let mut seq: u64 = 0;
    // SAFETY: BLKGETDISKSEQ writes one `__u64` to the pointer, which is valid and outlives the
    // call.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), BLKGETDISKSEQ, &raw mut seq) };
    if rc < 0 { Err(Errno::last()) } else { Ok(seq) }
}
