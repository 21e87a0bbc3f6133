//! cartinject's `/proc/PID/stat` and `/proc/PID/environ` parsers (injector/src/procfs.rs,
//! included as is: cartinject has no library yet), and the working-directory helpers that
//! take the links' targets.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../injector/src/procfs.rs"]
mod procfs;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(stat) = procfs::Stat::parse(text)
    {
        let _ = stat.is_kernel_thread();
    }
    let _ = procfs::parse_environ(data);
    // A process's cwd and root, as its links read (the kernel's " (deleted)" included).
    let (cwd, root) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"/"[..]),
    };
    let cwd = Path::new(OsStr::from_bytes(cwd));
    let root = Path::new(OsStr::from_bytes(root));
    let _ = procfs::inside_root(&procfs::usable_dir(cwd), &procfs::usable_dir(root));
});
