//! Unpacking a source tarball (plain, gzip, xz, bzip2 or zstd) into a scratch directory
//! (`cartbuild::unpack::unpack`), within small limits; the scratch directory is removed
//! after each input. Nothing may appear beside the destination.
#![no_main]

use std::fs;

use cartbuild::unpack::{self, Limits};
use libfuzzer_sys::fuzz_target;

/// Small enough that a bomb is refused quickly, large enough for a real tarball.
const LIMITS: Limits = Limits {
    max_bytes: 16 << 20,
    max_entries: 4096,
};

fuzz_target!(|data: &[u8]| {
    // tmpfs when there is one: the target writes and removes a tree per input.
    let base = tempfile::Builder::new()
        .prefix("crashcart-fuzz-unpack.")
        .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .expect("scratch directory");
    let archive = base.path().join("archive");
    let dest = base.path().join("dest");
    fs::write(&archive, data).expect("write the archive");
    fs::create_dir(&dest).expect("create the destination");
    let _ = unpack::unpack(&archive, &dest, &LIMITS);
    let mut beside: Vec<_> = fs::read_dir(base.path())
        .expect("read the scratch directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    beside.sort();
    assert_eq!(
        beside,
        ["archive", "dest"],
        "unpacking wrote beside its destination"
    );
    // Unpacked entries may lack owner write permission: make the tree removable.
    for entry in walkdir(&dest) {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&entry, fs::Permissions::from_mode(0o700));
    }
    base.close().expect("remove the scratch directory");
});

/// Every directory under `root`, `root` included (not following links).
fn walkdir(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    dirs
}
