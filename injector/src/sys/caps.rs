//! Capabilities, as the 64-bit masks `/proc/PID/status` shows them (`capabilities(7)`):
//! `capset(2)` of the effective, permitted and inheritable sets in one call, the bounding
//! set (`PR_CAPBSET_DROP`), the ambient set (`PR_CAP_AMBIENT`), keep-caps and securebits.
//!
//! By hand rather than through the `caps` crate: that crate sets one set per `capset` call
//! and only the capabilities it has names for, while `--match-container` carries a
//! target's masks over bit for bit, including bits a newer kernel knows and the crate does
//! not.

use super::Errno;

/// `_LINUX_CAPABILITY_VERSION_3` (`include/uapi/linux/capability.h`): two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;
/// `SECBIT_NOROOT` (`include/uapi/linux/securebits.h`): root gets no capabilities at exec.
pub const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
/// `PR_SET_SECUREBITS`, `PR_GET_SECUREBITS` (`include/uapi/linux/prctl.h`).
const PR_SET_SECUREBITS: libc::c_int = 28;
const PR_GET_SECUREBITS: libc::c_int = 27;

/// The names of capabilities 0..=40, for messages (`include/uapi/linux/capability.h`).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `CAP_SYS_PTRACE`.
pub const SYS_PTRACE: u32 = 19;
/// `CAP_SYS_ADMIN`.
pub const SYS_ADMIN: u32 = 21;

/// The bit of capability `cap`.
pub fn bit(cap: u32) -> u64 {
    1u64.checked_shl(cap).unwrap_or(0)
}

/// The names of the capabilities in `mask`, as `CAP_X,CAP_Y` (numbers for unnamed ones).
pub fn names(mask: u64) -> String {
    let list: Vec<String> = (0..64u32)
        .filter(|&c| mask & bit(c) != 0)
        .map(|c| {
            usize::try_from(c)
                .ok()
                .and_then(|i| NAMES.get(i))
                .map_or_else(|| format!("cap{c}"), |n| (*n).to_string())
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(",")
    }
}

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn split(mask: u64) -> (u32, u32) {
    let low = u32::try_from(mask & 0xffff_ffff).unwrap_or(0);
    let high = u32::try_from(mask >> 32).unwrap_or(0);
    (low, high)
}

/// `capset(2)` of the calling thread's effective, permitted and inheritable sets at once.
pub fn set(effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let (e0, e1) = split(effective);
    let (p0, p1) = split(permitted);
    let (i0, i1) = split(inheritable);
    let data = [
        Data {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        Data {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: capset reads one header and two data structs (version 3), all valid for the
    // call; the layouts are those of <linux/capability.h>.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `capget(2)` of the calling thread: (effective, permitted, inheritable).
pub fn get() -> Result<(u64, u64, u64), Errno> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two data structs (version 3) into `data`, which has room for
    // them; the header is valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc < 0 {
        return Err(Errno::last());
    }
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> Result<i32, Errno> {
    // SAFETY: the prctl options used here take integers only and touch no memory.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 { Err(Errno::last()) } else { Ok(rc) }
}

/// Whether capability `cap` exists on this kernel (`PR_CAPBSET_READ` gives EINVAL past the
/// last one).
pub fn exists(cap: u32) -> bool {
    prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0).is_ok()
}

/// Drops every capability not in `keep` from the bounding set (needs `CAP_SETPCAP`).
pub fn limit_bounding(keep: u64) -> Result<(), Errno> {
    for cap in (0..64u32).take_while(|&c| exists(c)) {
        if keep & bit(cap) == 0 {
            prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0)?;
        }
    }
    Ok(())
}

/// Raises each capability of `mask` in the ambient set (each must be permitted and
/// inheritable already).
pub fn raise_ambient(mask: u64) -> Result<(), Errno> {
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_CLEAR_ALL).unwrap_or(4),
        0,
    )?;
    for cap in (0..64u32).filter(|&c| mask & bit(c) != 0) {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_RAISE).unwrap_or(2),
            libc::c_ulong::from(cap),
        )?;
    }
    Ok(())
}

/// `PR_SET_KEEPCAPS`: keep the permitted set across a change from uid 0 to another uid.
pub fn keep_across_setuid(keep: bool) -> Result<(), Errno> {
    prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep), 0).map(|_| ())
}

/// Adds `bits` to the securebits (`PR_SET_SECUREBITS`, needs `CAP_SETPCAP`).
pub fn add_securebits(bits: libc::c_ulong) -> Result<(), Errno> {
    let now = prctl(PR_GET_SECUREBITS, 0, 0)?;
    let now = libc::c_ulong::try_from(now).unwrap_or(0);
    prctl(PR_SET_SECUREBITS, now | bits, 0).map(|_| ())
}

/// `PR_SET_NO_NEW_PRIVS`.
pub fn set_no_new_privs() -> Result<(), Errno> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_docker_default_set() {
        // Docker's default capability set, as its containers' CapEff shows it.
        let mask = 0x0000_0000_a804_25fb;
        let text = names(mask);
        assert!(
            text.contains("CAP_NET_RAW") && text.contains("CAP_SETPCAP"),
            "{text}"
        );
        assert!(!text.contains("CAP_SYS_ADMIN") && !text.contains("CAP_NET_ADMIN"));
        assert_eq!(names(0), "none");
        assert_eq!(names(bit(21) | bit(50)), "CAP_SYS_ADMIN,cap50");
    }
}
