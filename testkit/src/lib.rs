//! What the end-to-end tests of `tests/` (cartinject, through `tests/harness`) and of
//! `imagebuilder/tests/` (cartbuild, through `imagebuilder/tests/common`) share, once:
//! reading a finished process's output, the prerequisites a test states (root, a tool),
//! system tools found in the sbin directories too, sha256 digests, and [`registry`], the
//! real OCI registries on 127.0.0.1.
//!
//! A missing prerequisite fails the test saying what to install; nothing here skips.

pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails the test unless it runs as root (loop devices, mounts and namespaces need it).
pub fn require_root() {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    assert_eq!(
        uid, 0,
        "this test needs root (loop devices, mounts, namespaces): run it with sudo or through tests/run"
    );
}

/// Fails the test unless `tool` is on PATH, saying which Debian package has it.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is missing: install the Debian package {package} (tests/run does)"
    );
}

/// The path of a system tool, looking in the sbin directories too (a PATH without them
/// must not hide losetup or e2fsck).
pub fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a system tool; a missing one fails the test saying what to install.
pub fn run_tool(name: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(tool(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}): install it (see .ci/packages)"))
}

/// The sha256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sha256 of the file at `path`, in hex (what `sha256sum` prints).
pub fn sha256_of(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    std::io::copy(&mut file, &mut hasher)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_bytes_and_files_agree() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"abc").unwrap();
        assert_eq!(sha256_of(f.path()), abc);
    }

    #[test]
    fn tools_are_found_in_sbin_too() {
        assert!(tool("sh").is_absolute());
        assert!(repo_root().join("Cargo.toml").is_file());
    }
}
