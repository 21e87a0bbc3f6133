//! End-to-end tests of aarch64 images (issue 14) on this x86_64 machine: the aarch64 net
//! image (`cartbuild recipes/net.toml --arch aarch64`) holds static aarch64 executables that
//! run under Debian's qemu-user-static, and an aarch64 container (the thin server built for
//! aarch64, imported as `linux/arm64`, run through binfmt_misc) gets a session from it through
//! the x86_64 cartinject. ptrace does not work across qemu-user, so strace is checked by
//! version only.
//!
//! Needs root, Docker, zig and qemu-user-static registered with binfmt_misc with the F flag
//! (`.ci/setup` does all of it). The aarch64 image is `$CRASHCART_NET_IMAGE_AARCH64`
//! (`tests/run` builds it first), else built once by the harness.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crashcart_tests::arch::{self, QEMU};
use crashcart_tests::*;

/// Runs `program args` from the mounted image under qemu-aarch64 explicitly (not through
/// binfmt_misc); returns stdout and stderr; the program must exit 0.
fn qemu(root: &std::path::Path, program: &str, args: &[&str]) -> String {
    let out = output(Command::new(QEMU).arg(root.join(program)).args(args));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "qemu-aarch64 {program} {args:?} exited {:?}:\n{text}",
        out.status
    );
    text
}

#[test]
fn every_executable_of_the_aarch64_image_is_static_aarch64_and_runs_under_qemu() {
    require_root();
    require_tool(QEMU, "qemu-user-static");
    let img = TestImage::copy_of(arch::net_image());
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(img.sibling("img.manifest.json")).expect("read the manifest"),
    )
    .expect("parse the manifest");
    assert_eq!(manifest["arch"], "aarch64", "the manifest's arch");
    assert!(
        manifest["toolchain"]
            .as_str()
            .is_some_and(|t| t.contains("aarch64-linux-musl")),
        "the manifest's toolchain: {}",
        manifest["toolchain"]
    );
    let mounted = Mounted::new(&img.path);
    let root = mounted.path();
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(root.join("bin")).expect("read bin") {
        let entry = entry.expect("read_dir");
        let meta = std::fs::symlink_metadata(entry.path()).expect("lstat");
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let Some(info) = cartbuild::elf::inspect(&entry.path()).expect("read the ELF headers")
        else {
            continue; // crashcart-info: a script of the image's shell
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(info.machine, 183, "{name} is not aarch64 (EM_AARCH64)");
        assert!(info.is_static(), "{name} is not static: {info:?}");
        checked.push(name);
    }
    for tool in ["bash", "busybox", "tcpdump", "lsof", "strace"] {
        assert!(checked.iter().any(|c| c == tool), "no bin/{tool}: {checked:?}");
    }
    assert_eq!(
        qemu(root, "bin/bash", &["-c", "echo $((6 * 7)) $BASH_VERSION"])
            .split_whitespace()
            .next(),
        Some("42")
    );
    assert!(qemu(root, "bin/busybox", &["uname", "-m"]).contains("aarch64"));
    assert!(qemu(root, "bin/busybox", &["echo", "from", "busybox"]).contains("from busybox"));
    assert!(qemu(root, "bin/tcpdump", &["--version"]).contains("tcpdump version 4.99.3"));
    assert!(qemu(root, "bin/lsof", &["-v"]).contains("revision: 4.95.0"));
    assert!(qemu(root, "bin/strace", &["-V"]).contains("strace -- version 6.1"));
}

#[test]
fn an_aarch64_container_gets_a_session_from_the_aarch64_image() {
    require_root();
    arch::require_binfmt();
    let c = Container::start(
        "arch-session",
        arch::thin_image(),
    );
    c.wait_listening(80);
    let img = TestImage::copy_of(arch::net_image());
    let out = output(&mut inject(
        &img,
        &c.name,
        &[
            "bash",
            "-c",
            "uname -m; echo bash=$BASH_VERSION; strace -V | head -n 1; lsof -p 1",
        ],
    ));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "exited {:?}:\n{text}", out.status);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("aarch64"), "{text}");
    assert!(text.contains("bash=5.2.15"), "{text}");
    assert!(text.contains("strace -- version 6.1"), "{text}");
    // lsof -p 1 sees the server: its executable and its listening socket.
    assert!(
        text.lines()
            .any(|l| l.starts_with("httpd") && l.contains("txt") && l.contains("/httpd")),
        "lsof -p 1 does not show the server's executable:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("TCP") && l.contains("(LISTEN)")),
        "lsof -p 1 does not show the listening socket:\n{text}"
    );
    // The server is an aarch64 program (it runs through qemu-aarch64 here).
    assert_eq!(
        std::fs::read(format!("/proc/{}/root/httpd", c.pid)).expect("read /httpd")[18],
        183
    );
    assert_tcpdump_captures_a_request(&img, &c.name, c.pid, Duration::from_secs(60));
    c.assert_clean();
    img.assert_no_loop_device();
}
