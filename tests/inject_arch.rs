//! End-to-end tests of aarch64 images (issue 14) on this x86_64 machine: the aarch64 net
//! image (`cartbuild recipes/net.toml --arch aarch64`) holds static aarch64 executables that
//! run under Debian's qemu-user-static, and an aarch64 container (the thin server built for
//! aarch64, imported as `linux/arm64`, run through binfmt_misc) gets a session from it through
//! the x86_64 cartinject. ptrace does not work across qemu-user, so strace is checked by
//! version only, and qemu-user lacks the packet socket options libpcap captures with, so the
//! aarch64 tcpdump lists interfaces there and the capture is made by the x86_64 image, which
//! the host runs natively in the same emulated container.
//!
//! Needs root, Docker, zig and qemu-user-static registered with binfmt_misc with the F flag
//! (`.ci/setup` does all of it). The aarch64 image is `$CRASHCART_NET_IMAGE_AARCH64`
//! (`tests/run` builds it first), else built once by the harness.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use crashcart_tests::arch::{self, BINFMT_ENTRY, QEMU};
use crashcart_tests::*;
use testkit::registry::{ci_registry, repository};

/// Tests that need qemu-aarch64's binfmt_misc entry enabled hold this for reading; the one
/// that disables it for a moment holds it for writing. (Test binaries run one at a time, so
/// only this file's tests can see the entry change.)
static BINFMT: RwLock<()> = RwLock::new(());

fn binfmt_enabled() -> RwLockReadGuard<'static, ()> {
    let guard = BINFMT
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    arch::require_binfmt();
    guard
}

/// qemu-aarch64's binfmt_misc entry disabled until dropped.
struct BinfmtDisabled;

impl BinfmtDisabled {
    fn new() -> BinfmtDisabled {
        std::fs::write(BINFMT_ENTRY, "0").expect("disable qemu-aarch64 in binfmt_misc");
        BinfmtDisabled
    }
}

impl Drop for BinfmtDisabled {
    fn drop(&mut self) {
        std::fs::write(BINFMT_ENTRY, "1").expect("enable qemu-aarch64 in binfmt_misc again");
    }
}

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
    let img = TestImage::copy_with_sidecars(arch::net_image());
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(img.sibling("crashcart.img.manifest.json")).expect("read the manifest"),
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
        assert!(
            checked.iter().any(|c| c == tool),
            "no bin/{tool}: {checked:?}"
        );
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
    let _binfmt = binfmt_enabled();
    let c = Container::start("arch-session", arch::thin_image());
    c.wait_listening(80);
    let img = TestImage::copy_with_sidecars(arch::net_image());
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
    // lsof -p 1 sees the server: its executable (mapped by qemu-aarch64, the process's
    // `txt` here) and its listening socket.
    assert!(
        text.lines()
            .any(|l| l.starts_with("httpd") && l.contains(" mem ") && l.ends_with(" /httpd")),
        "lsof -p 1 does not show the server's executable:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("TCP") && l.contains("(LISTEN)")),
        "lsof -p 1 does not show the listening socket:\n{text}"
    );
    // The server is an aarch64 program (it runs through qemu-aarch64 here).
    assert_eq!(
        std::fs::read(format!("/proc/{}/root/httpd", c.pid)).expect("read /httpd")[18],
        183
    );
    // qemu-user implements none of the packet socket's ring options (PACKET_HDRLEN,
    // PACKET_RX_RING) that libpcap 1.10 captures with, so the aarch64 tcpdump cannot capture
    // in an emulated container (it can on an arm64 host): it is checked by what it can do
    // there, listing the container's interfaces. The x86_64 image serves the same emulated
    // container natively, capture included (below).
    let out = output(&mut inject(&img, &c.name, &["tcpdump", "-D"]));
    assert!(out.status.success(), "tcpdump -D: {}", stderr(&out));
    assert!(
        stdout(&out).contains("lo [Up, Running, Loopback]"),
        "{}",
        stdout(&out)
    );
    c.assert_clean();
    img.assert_no_loop_device();

    let native = TestImage::copy_with_sidecars(net_image());
    assert_tcpdump_captures_a_request(&native, &c.name, c.pid, Duration::from_secs(60));
    c.assert_clean();
    native.assert_no_loop_device();
}

#[test]
fn an_image_the_target_cannot_run_is_refused_and_binfmt_misc_is_said() {
    require_root();
    let c = thin_container("arch-refuse");
    let img = TestImage::copy_with_sidecars(arch::net_image());
    let run = ["uname", "-m"];
    {
        // With qemu-aarch64 registered (F flag), the x86_64 container runs the aarch64
        // image's programs through it, and cartinject says so.
        let _binfmt = binfmt_enabled();
        let out = output(&mut inject(&img, &c.name, &run));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "aarch64");
        assert!(
            stderr(&out).contains(
                "is aarch64 and the target runs x86_64: running it through binfmt_misc (qemu-aarch64)"
            ),
            "{}",
            stderr(&out)
        );
    }
    let _writer = BINFMT
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _disabled = BinfmtDisabled::new();
    for mount_only in [false, true] {
        let out = if mount_only {
            output(cartinject().arg("-m").arg(&img.path).arg(&c.name))
        } else {
            output(&mut inject(&img, &c.name, &run))
        };
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("is built for aarch64 but the target (PID")
                && err
                    .contains("runs x86_64, and this host has no binfmt_misc handler for aarch64")
                && err.contains("cartbuild RECIPE --arch x86_64"),
            "{err}"
        );
        assert_eq!(stdout(&out), "");
        c.assert_clean();
        img.assert_no_loop_device();
    }
}

/// `registry`'s answer to `GET /v2/<repo>/manifests/<reference>` asking for an index.
fn index_of(registry: &str, repo: &str, reference: &str) -> serde_json::Value {
    let out = ok(Command::new("curl").args([
        "-fsS",
        "-H",
        "Accept: application/vnd.oci.image.index.v1+json",
        &format!("http://{registry}/v2/{repo}/manifests/{reference}"),
    ]));
    serde_json::from_str(&out).expect("the index is JSON")
}

#[test]
fn one_tag_of_both_arches_gives_each_container_its_own() {
    require_root();
    let _binfmt = binfmt_enabled();
    let registry = ci_registry();
    let repo = repository("arch-index");
    let reference = format!("oci://{registry}/{repo}:1.0.0");
    let x86 = TestImage::copy_with_sidecars(net_image());
    let arm = TestImage::copy_with_sidecars(arch::net_image());
    let out = output(
        Command::new(bin("cartbuild"))
            .arg("push")
            .arg(&x86.path)
            .arg(&arm.path)
            .arg(&reference),
    );
    assert!(out.status.success(), "cartbuild push: {}", stderr(&out));
    let index = index_of(registry, &repo, "1.0.0");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<(String, String)> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["platform"]["os"].as_str().unwrap_or_default().to_string(),
                m["platform"]["architecture"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            ("linux".to_string(), "amd64".to_string()),
            ("linux".to_string(), "arm64".to_string())
        ]
    );

    let x86_container = thin_container("arch-index-x86");
    let arm_container = Container::start("arch-index-arm", arch::thin_image());
    arm_container.wait_listening(80);
    let cache = tempfile::tempdir().expect("cache dir");
    for (c, want) in [(&x86_container, "x86_64"), (&arm_container, "aarch64")] {
        let out = output(
            inject(&reference, &c.name, &["bash", "-c", "uname -m; grep -o '\"arch\": \"[a-z0-9_]*\"' /dev/crashcart/.crashcart/manifest.json"])
                .env("CARTINJECT_CACHE", cache.path()),
        );
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "{}: {text}", c.name);
        let mut lines = stdout(&out)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
            .into_iter();
        assert_eq!(lines.next().as_deref(), Some(want), "{}: {text}", c.name);
        assert_eq!(
            lines.next(),
            Some(format!("\"arch\": \"{want}\"")),
            "{}: the image's own manifest: {text}",
            c.name
        );
        // Neither needed binfmt_misc: each image is its target's own arch.
        assert!(!text.contains("binfmt_misc"), "{}: {text}", c.name);
        c.assert_clean();
    }
}
