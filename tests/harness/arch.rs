//! aarch64 fixtures for the tests of issue 14, run on this x86_64 machine through Debian's
//! qemu-user-static: the aarch64 net image (`cartbuild --arch aarch64`), a static aarch64
//! build of the thin image's server (`zig cc -target aarch64-linux-musl`), and that image
//! imported into Docker as `linux/arm64`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{
    bin, compiled_fixture, docker_ok, hash_of, import_root_as, output, repo_root, scratch, stderr,
};

/// The binfmt_misc entry `.ci/setup` registers for aarch64 (qemu-user-static, F flag).
pub const BINFMT_ENTRY: &str = "/proc/sys/fs/binfmt_misc/qemu-aarch64";

/// Debian's qemu-user-static for aarch64, to run an aarch64 program explicitly.
pub const QEMU: &str = "/usr/bin/qemu-aarch64-static";

/// Fails unless aarch64 programs run here through binfmt_misc with the F flag (the aarch64
/// container needs it), naming the fix.
pub fn require_binfmt() {
    let entry = std::fs::read_to_string(BINFMT_ENTRY).unwrap_or_default();
    assert!(
        entry.lines().next() == Some("enabled")
            && entry
                .lines()
                .any(|l| l.starts_with("flags:") && l.contains('F')),
        "{BINFMT_ENTRY} is missing, disabled or lacks the F flag: run .ci/setup services \
         (it mounts binfmt_misc and registers qemu-user-static's qemu-aarch64)"
    );
}

/// The image built by `cartbuild recipes/net.toml --arch aarch64`:
/// `$CRASHCART_NET_IMAGE_AARCH64` when set (`tests/run` builds it first), else built once
/// per test run.
pub fn net_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        if let Some(path) = std::env::var_os("CRASHCART_NET_IMAGE_AARCH64") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "CRASHCART_NET_IMAGE_AARCH64={} does not exist",
                path.display()
            );
            return path;
        }
        let img = scratch().join("net-aarch64.img");
        let out = output(
            Command::new(bin("cartbuild"))
                .arg(repo_root().join("recipes/net.toml"))
                .args(["--arch", "aarch64", "-o"])
                .arg(&img),
        );
        assert!(
            out.status.success(),
            "`cartbuild recipes/net.toml --arch aarch64` failed (set CRASHCART_NET_IMAGE_AARCH64 to use a built image):\n{}",
            stderr(&out)
        );
        img
    })
}

/// Compiles `tests/fixtures/NAME.c` as a static aarch64 executable with zig (musl), once per
/// content.
pub fn static_binary(name: &str) -> PathBuf {
    compiled_fixture(name, "aarch64", || {
        let mut zig = Command::new("zig");
        zig.args(["cc", "-target", "aarch64-linux-musl"])
            .env("ZIG_GLOBAL_CACHE_DIR", scratch().join("zig-cache"));
        zig
    })
}

/// The thin image for aarch64: its root holds only `/httpd`, built for aarch64, imported as
/// `linux/arm64`. Its containers run through qemu-user-static (binfmt_misc).
pub fn thin_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        docker_ok();
        require_binfmt();
        let text = std::fs::read(repo_root().join("tests/fixtures/httpd.c")).expect("read httpd.c");
        let root = scratch().join("thin-root-aarch64");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::copy(static_binary("httpd"), root.join("httpd")).expect("copy httpd");
        let tag = "cc-inject-thin-arm64:test".to_string();
        import_root_as(
            "docker",
            &tag,
            &root,
            &hash_of(&[b"arm64", &text]),
            r#"CMD ["/httpd"]"#,
            Some("linux/arm64"),
        );
        tag
    })
}
