//! The static `cartinject` that `./build.sh` ships (made by `.ci/build-static-cartinject`,
//! which `tests/run` runs first): one file that needs no loader and no library, so it can be
//! copied to another Linux host and run there. Checked three ways: its ELF headers name no
//! interpreter and no library (cartbuild's own check for the binaries it puts in images);
//! it runs inside a container whose root holds nothing but it and a static HTTP server (no
//! libc, no loader, no `/etc`: what "another host" can lack); and a copy of it, alone in a
//! fresh directory, runs a whole session into a container and leaves nothing behind.

use std::path::PathBuf;
use std::process::Command;

use crashcart_tests::*;

/// The static `cartinject`: `$CRASHCART_STATIC_CARTINJECT` (which `tests/run` sets to what
/// `.ci/build-static-cartinject` printed), else `target/<arch>-unknown-linux-musl/release/`,
/// else the static glibc build under `target/<arch>-unknown-linux-gnu/release/`.
fn static_cartinject() -> PathBuf {
    if let Some(path) = std::env::var_os("CRASHCART_STATIC_CARTINJECT") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test executable in target/<profile>/deps");
    let arch = std::env::consts::ARCH;
    let musl = target.join(format!("{arch}-unknown-linux-musl/release/cartinject"));
    let path = if musl.is_file() {
        musl
    } else {
        target.join(format!("{arch}-unknown-linux-gnu/release/cartinject"))
    };
    assert!(
        path.is_file(),
        "{} is missing: build it with .ci/build-static-cartinject (tests/run and ./build.sh do)",
        path.display()
    );
    path
}

#[test]
fn it_is_linked_against_musl() {
    let path = static_cartinject();
    let bytes = std::fs::read(&path).expect("read the static cartinject");
    // glibc's static start-up code carries these strings; musl's has neither.
    let glibc = [&b"GNU C Library"[..], b"GLIBC_TUNABLES"]
        .iter()
        .any(|needle| bytes.windows(needle.len()).any(|w| w == *needle));
    assert!(
        !glibc,
        "{} is the static glibc fallback: add Rust's musl target (.ci/setup packages does) and \
         run .ci/build-static-cartinject again",
        path.display()
    );
}

#[test]
fn its_elf_headers_name_no_loader_and_no_library() {
    let path = static_cartinject();
    let info = cartbuild::elf::inspect(&path)
        .expect("read the ELF headers")
        .expect("an ELF file");
    assert!(info.is_loadable(), "{}: {info:?}", path.display());
    assert_eq!(info.interpreter, None, "{} has a loader", path.display());
    assert_eq!(info.needed, 0, "{} needs libraries", path.display());
}

#[test]
fn it_runs_in_a_root_that_has_nothing_else() {
    require_root();
    let path = static_cartinject();
    let c = thin_container("static-elsewhere");
    // The container's root: /httpd, nothing else; the binary comes in read-only at /cartinject.
    let mount = format!("{}:/cartinject:ro", path.display());
    let run_inside = |args: &[&str]| {
        output(
            Command::new("docker")
                .args(["run", "--rm", "--network", "none", "-v", &mount])
                .args(["--entrypoint", "/cartinject", thin_image()])
                .args(args),
        )
    };
    let out = run_inside(&["--version"]);
    assert!(out.status.success(), "--version failed: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("cartinject "),
        "unexpected --version: {}",
        stdout(&out)
    );
    // Real work there: --list reads the container's own /proc and finds nothing mounted.
    let out = run_inside(&["--list", "--json"]);
    assert!(out.status.success(), "--list failed: {}", stderr(&out));
    let listed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--list --json prints JSON");
    assert_eq!(listed, serde_json::json!([]), "{}", stdout(&out));
    c.assert_clean();
}

#[test]
fn a_copy_alone_in_a_new_directory_runs_a_session() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("cartinject");
    std::fs::copy(static_cartinject(), &copy).expect("copy cartinject");
    let c = thin_container("static-copy");
    let img = TestImage::fixture();
    let out = output(
        Command::new(&copy)
            .env_clear()
            .current_dir(dir.path())
            .arg(&img.path)
            .arg(&c.name)
            .args(["--", "cat", "/proc/1/cmdline"]),
    );
    assert!(out.status.success(), "session failed: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "/httpd\0",
        "the session's cat read another PID 1"
    );
    img.assert_no_loop_device();
    c.assert_clean();
}
