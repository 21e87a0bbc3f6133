//! A container that plants things where cartinject works: `/dev/crashcart` as a symlink (to
//! `/proc/sys`, to `/`, to `../etc`, to `shm`) or as a mount of its own, and thousands of
//! entries in `/dev` whose names hold terminal escape sequences. Against real Docker
//! containers whose PID 1 (`tests/fixtures/planter.c`, bind-mounted into the thin image)
//! plants them from inside. Needs root, Docker, mke2fs and musl-gcc (or gcc).
//!
//! For every planted `/dev/crashcart`, a session, `-m` and `-u` run, with the new mount API
//! and with `--legacy-mount`; each must work without using what was planted, or refuse in
//! one line (exit 125). After each, the container's mount table is what it was, its
//! `/proc/sys` is still read-only (opening `kernel.core_pattern` for writing fails; nothing
//! is ever written), no output holds a control byte, and no loop device is left on the image.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crashcart_tests::runtimes::{Mount, mount_table};
use crashcart_tests::*;

/// The thin image running `planter ARGS...` as PID 1, once it has planted what it plants.
fn planted(test: &str, docker_args: &[&str], planter_args: &[&str]) -> Container {
    require_root();
    let planter = static_binary("planter");
    let volume = format!("{}:/planter:ro", planter.display());
    let mut args = vec!["-v", &volume, "--entrypoint", "/planter"];
    args.extend_from_slice(docker_args);
    let c = Container::start_with_command(&unique(test), thin_image(), &args, planter_args);
    let ready = format!("/proc/{}/root/planted", c.pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(&ready).exists() {
        assert!(
            Instant::now() < deadline,
            "{}: the planter did not finish",
            c.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c
}

/// What opening `/proc/sys/kernel/core_pattern` for writing says inside the container
/// (`open=OK` or `open=EROFS`); nothing is written.
fn core_pattern_open(c: &Container) -> String {
    c.exec(&["/planter", "writable", "/proc/sys/kernel/core_pattern"])
        .trim()
        .to_string()
}

/// Asserts that neither stdout nor stderr holds a byte below 0x20 other than a newline.
fn assert_no_controls(out: &Output, what: &str) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !bytes.iter().any(|&b| b < 0x20 && b != b'\n'),
            "{what}: a control byte on {stream}: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Asserts a refusal: exit 125, one line on stderr that names `/dev/crashcart`, no control
/// bytes.
fn assert_refused(out: &Output, what: &str) {
    assert_no_controls(out, what);
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(125),
        "{what}: not refused\nstdout: {}\nstderr: {err}",
        stdout(out)
    );
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.contains("/dev/crashcart"), "{what}: {err}");
}

/// The container's mount table, with the read-only `/proc/sys` it must keep asserted.
fn table(c: &Container) -> BTreeMap<u32, Mount> {
    let t = mount_table(c.pid);
    let sys = t
        .values()
        .rfind(|m| m.point == "/proc/sys")
        .unwrap_or_else(|| panic!("{}: no /proc/sys mount: {t:?}", c.name));
    assert!(
        sys.read_only(),
        "{}: /proc/sys is writable: {sys:?}",
        c.name
    );
    t
}

/// Asserts that nothing changed in the container: the same mount table as `before`, a
/// read-only `/proc/sys`, and no loop device on the image.
fn assert_unchanged(c: &Container, img: &TestImage, before: &BTreeMap<u32, Mount>, what: &str) {
    assert_eq!(&table(c), before, "{what}: the container's mounts changed");
    assert_eq!(
        core_pattern_open(c),
        "open=EROFS",
        "{what}: the container can write kernel.core_pattern"
    );
    img.assert_no_loop_device();
}

fn legacy_flag(legacy: bool) -> &'static [&'static str] {
    if legacy { &["--legacy-mount"] } else { &[] }
}

/// A session, `-m` and `-u` against `c`, whose `/dev/crashcart` is something the container
/// planted (`check` says whether it is still there as it was), on both mount paths.
fn attack(c: &Container, check: &dyn Fn()) {
    let img = TestImage::fixture();
    let before = table(c);
    assert_eq!(core_pattern_open(c), "open=EROFS");
    for legacy in [false, true] {
        let mode = if legacy { "legacy" } else { "mount API" };

        // A session does not use the container's /dev/crashcart: it works, and has its own.
        let what = format!("session ({mode})");
        let out = output(
            cartinject()
                .args(legacy_flag(legacy))
                .arg(&img.path)
                .arg(&c.name)
                .args(["--", "sh", "-c", "ls /dev/crashcart/bin/busybox"]),
        );
        assert_no_controls(&out, &what);
        assert!(
            out.status.success() && stdout(&out).contains("/dev/crashcart/bin/busybox"),
            "{what}: {out:?}"
        );
        assert_unchanged(c, &img, &before, &what);
        check();

        // -m refuses to use it.
        let what = format!("-m ({mode})");
        let out = output(
            cartinject()
                .arg("-m")
                .args(legacy_flag(legacy))
                .arg(&img.path)
                .arg(&c.name),
        );
        assert_refused(&out, &what);
        assert_unchanged(c, &img, &before, &what);
        check();

        // -u finds nothing of cartinject's there, says so, and touches nothing.
        let what = format!("-u ({mode})");
        let out = output(
            cartinject()
                .arg("-u")
                .args(legacy_flag(legacy))
                .arg(&c.name),
        );
        assert_refused(&out, &what);
        assert_unchanged(c, &img, &before, &what);
        check();
    }
}

/// `/dev/crashcart` is a symlink to `target`, planted by the container's PID 1.
fn attack_symlink(test: &str, target: &str) {
    let c = planted(test, &[], &["symlink", target]);
    let link = format!("/proc/{}/root/dev/crashcart", c.pid);
    let check = || {
        let now = std::fs::read_link(&link).expect("the planted symlink");
        assert_eq!(now, Path::new(target), "the planted symlink changed");
    };
    check();
    attack(&c, &check);
}

#[test]
fn planted_symlink_to_proc_sys() {
    attack_symlink("plant-procsys", "/proc/sys");
}

#[test]
fn planted_symlink_to_root() {
    attack_symlink("plant-root", "/");
}

#[test]
fn planted_symlink_up_and_over() {
    attack_symlink("plant-etc", "../etc");
}

#[test]
fn planted_symlink_to_a_mount_beside_it() {
    attack_symlink("plant-shm", "shm");
}

#[test]
fn foreign_mount_at_dev_crashcart() {
    let c = planted(
        "plant-mount",
        &["--mount", "type=tmpfs,dst=/dev/crashcart"],
        &["idle"],
    );
    let check = || {
        let mounts = c.crashcart_mounts();
        assert!(
            mounts.len() == 1 && mounts[0].contains(" tmpfs "),
            "the container's own mount at /dev/crashcart changed: {mounts:?}"
        );
    };
    check();
    attack(&c, &check);
}

/// A small ext4 filesystem loop-mounted in the host (`mount -o loop`, so its loop device
/// clears itself), with a directory `sub` to bind into a container: a mount that looks like
/// cartinject's by its device (`/dev/loopN`) but is not. Unmounted on drop.
struct LoopFs {
    dir: tempfile::TempDir,
}

impl LoopFs {
    fn new() -> LoopFs {
        require_tool("mke2fs", "e2fsprogs");
        let dir = tempfile::Builder::new()
            .prefix("cc-plantfs-")
            .tempdir()
            .expect("temp dir");
        let file = dir.path().join("fs.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(8 << 20))
            .expect("create the filesystem file");
        ok(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4"])
            .arg(&file));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(&mnt));
        std::fs::create_dir(mnt.join("sub")).expect("mkdir sub");
        LoopFs { dir }
    }

    fn mount_arg(&self) -> String {
        format!(
            "type=bind,src={},dst=/dev/crashcart",
            self.dir.path().join("mnt/sub").display()
        )
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(self.dir.path().join("mnt"))
            .output();
    }
}

#[test]
fn foreign_loop_bind_mount_at_dev_crashcart() {
    let fs = LoopFs::new();
    let c = planted("plant-loopbind", &["--mount", &fs.mount_arg()], &["idle"]);
    let check = || {
        let mounts = c.crashcart_mounts();
        assert!(
            mounts.len() == 1 && mounts[0].contains(" /sub /dev/crashcart "),
            "the container's own mount at /dev/crashcart changed: {mounts:?}"
        );
    };
    check();
    attack(&c, &check);
}

/// A name for entry `i` of a hostile `/dev`: an OSC window title, a clear screen, a C1 CSI
/// (UTF-8 and raw), as the planter makes them.
fn escape_name(i: usize) -> Vec<u8> {
    let mut name = b"\x1b]0;pwned\x07\x1b[2J\xc2\x9b31m\x9b-".to_vec();
    name.extend_from_slice(format!("{i:05}").as_bytes());
    name
}

#[test]
fn five_thousand_escaped_entries_in_dev() {
    let c = planted("plant-many", &[], &["many", "5000"]);
    let img = TestImage::fixture();
    let before = table(&c);
    for legacy in [false, true] {
        let what = format!("session (legacy: {legacy})");
        let out = output(
            cartinject()
                .args(legacy_flag(legacy))
                .arg(&img.path)
                .arg(&c.name)
                .args([
                    "--",
                    "sh",
                    "-c",
                    "ls /dev | wc -l; ls /dev/crashcart/bin/busybox",
                ]),
        );
        assert_no_controls(&out, &what);
        assert!(out.status.success(), "{what}: {out:?}");
        let text = stdout(&out);
        let count: usize = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            count > 5000,
            "{what}: the session's /dev lacks entries: {text}"
        );
        assert!(
            text.contains("/dev/crashcart/bin/busybox"),
            "{what}: {text}"
        );
        assert_unchanged(&c, &img, &before, &what);
    }

    // -m on the writable /dev, then -u.
    let out = output(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert_no_controls(&out, "-m");
    assert!(out.status.success(), "-m: {out:?}");
    let text = c.exec(&["/dev/crashcart/bin/busybox", "echo", "mounted-ok"]);
    assert_eq!(text.trim(), "mounted-ok");
    let out = output(cartinject().arg("-u").arg(&c.name));
    assert_no_controls(&out, "-u");
    assert!(out.status.success(), "-u: {out:?}");
    assert_unchanged(&c, &img, &before, "-u");
    c.assert_clean();
}

/// A read-only `/dev` for a container (see [`ReadOnlyDev`]) with `count` more files whose
/// names hold escape sequences.
fn hostile_dev(count: usize) -> ReadOnlyDev {
    let dev = ReadOnlyDev::new();
    for i in 0..count {
        dev.add_file(std::ffi::OsStr::from_bytes(&escape_name(i)));
    }
    dev
}

/// `-m` on a read-only `/dev` covers it with a copy of itself: with 5,000 entries the cover
/// must hold them all.
#[test]
fn five_thousand_escaped_entries_in_a_read_only_dev() {
    let dev = hostile_dev(5000);
    let c = planted("plant-rodev", &["--mount", &dev.mount_arg()], &["idle"]);
    let img = TestImage::fixture();
    let before = table(&c);
    let out = output(&mut inject(
        &img,
        &c.name,
        &["sh", "-c", "ls /dev | wc -l; ls /dev/crashcart/bin/busybox"],
    ));
    assert_no_controls(&out, "session");
    assert!(out.status.success(), "session: {out:?}");
    assert!(stdout(&out).contains("/dev/crashcart/bin/busybox"));
    assert_unchanged(&c, &img, &before, "session");

    let out = output(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert_no_controls(&out, "-m");
    assert!(out.status.success(), "-m: {out:?}");
    assert!(stdout(&out).contains("read-only"), "{out:?}");
    let text = c.exec(&[
        "/dev/crashcart/bin/busybox",
        "sh",
        "-c",
        "ls /dev | wc -l; echo x > /dev/null && echo null-ok",
    ]);
    let count: usize = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(count > 5000 && text.contains("null-ok"), "{text}");
    let out = output(cartinject().arg("-u").arg(&c.name));
    assert_no_controls(&out, "-u");
    assert!(out.status.success(), "-u: {out:?}");
    assert_unchanged(&c, &img, &before, "-u");
}

/// More entries than a cover binds (10,000): the session and `-m` show the standard ones,
/// with one warning line saying so.
#[test]
fn too_many_dev_entries_leave_the_standard_ones() {
    let dev = hostile_dev(12_000);
    let c = planted("plant-huge", &["--mount", &dev.mount_arg()], &["idle"]);
    let img = TestImage::fixture();
    let before = table(&c);
    let out = output(&mut inject(
        &img,
        &c.name,
        &["sh", "-c", "ls /dev; echo x > /dev/null && echo null-ok"],
    ));
    assert_no_controls(&out, "session");
    assert!(out.status.success(), "session: {out:?}");
    let text = stdout(&out);
    for name in [
        "null",
        "zero",
        "urandom",
        "pts",
        "shm",
        "fd",
        "crashcart",
        "null-ok",
    ] {
        assert!(text.lines().any(|l| l == name), "no {name}: {text}");
    }
    assert!(text.lines().count() < 20, "{text}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("12007 entries") && err.contains("standard"),
        "{err}"
    );
    assert_unchanged(&c, &img, &before, "session");

    let out = output(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert_no_controls(&out, "-m");
    assert!(out.status.success(), "-m: {out:?}");
    assert!(stderr(&out).contains("standard"), "{out:?}");
    let text = c.exec(&["/dev/crashcart/bin/busybox", "ls", "/dev"]);
    assert!(text.lines().any(|l| l == "crashcart"), "{text}");
    let out = output(cartinject().arg("-u").arg(&c.name));
    assert!(out.status.success(), "-u: {out:?}");
    assert_unchanged(&c, &img, &before, "-u");
}
