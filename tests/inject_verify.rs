//! cartinject checks every image before attaching it: against the `.sha256` or
//! `.manifest.json` beside it, and with `--verify-key` against its minisign signature. Real
//! containers, real loop devices: every refusal is one line, exit 125, and leaves no loop
//! device on the image and nothing in the container.
//!
//! Signatures come from `cartbuild keygen`/`cartbuild sign` and from Debian's `minisign`
//! (`.ci/packages`), so both directions of interoperability are exercised.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crashcart_tests::*;

/// `cartinject [ARGS] IMAGE TARGET -- true`.
fn run_true(img: &Path, c: &Container, args: &[&str]) -> Output {
    output(
        cartinject()
            .args(args)
            .arg(img)
            .arg(&c.name)
            .args(["--", "true"]),
    )
}

/// Asserts a refusal: exit 125, one line naming `needle`, nothing attached or mounted.
fn assert_refused(out: &Output, needle: &str, img: &Path, c: &Container) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(err.contains("nothing was attached"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert_no_loop_device(img);
    c.assert_clean();
}

/// Asserts a session that ran, with nothing left behind and nothing said on stderr but `also`.
fn assert_ran(out: &Output, img: &Path, c: &Container, also: Option<&str>) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    match also {
        Some(needle) => {
            assert!(err.contains(needle), "expected `{needle}` in: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        None => assert!(!err.contains("not verified"), "{err}"),
    }
    assert_no_loop_device(img);
    c.assert_clean();
}

fn sidecar(img: &Path, suffix: &str) -> PathBuf {
    let mut s = img.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A manifest beside the image, as cartbuild writes it, naming `sha256` and `size`.
fn write_manifest(img: &Path, sha256: &str, size: u64) {
    let doc = serde_json::json!({
        "schema": 1,
        "image": {"name": "fixture", "version": "1"},
        "mount_point": "/dev/crashcart",
        "recipe_sha256": "0".repeat(64),
        "epoch": 0,
        "image_sha256": sha256,
        "image_size": size,
        "packages": [],
        "files": [],
    });
    std::fs::write(sidecar(img, ".manifest.json"), doc.to_string()).expect("write manifest");
}

/// Flips one byte near the end of the image (free space: the filesystem still mounts).
fn tamper(img: &Path) {
    let mut bytes = std::fs::read(img).expect("read image");
    let at = bytes.len() - 100;
    bytes[at] ^= 0x5a;
    std::fs::write(img, bytes).expect("write image");
}

#[test]
fn checksums_and_manifests_beside_the_image_are_checked_before_attaching() {
    let c = thin_container("verify-sums");
    let img = TestImage::fixture();

    // The harness writes a .sha256 beside every copy: it matches, nothing is said.
    let out = run_true(&img.path, &c, &["-v"]);
    assert_ran(&out, &img.path, &c, None);
    assert!(stderr(&out).contains("matches"), "{}", stderr(&out));

    // A matching manifest too (with the .sha256, both are checked).
    let good = sha256_of(&img.path);
    let size = std::fs::metadata(&img.path).expect("stat").len();
    write_manifest(&img.path, &good, size);
    assert_ran(&run_true(&img.path, &c, &[]), &img.path, &c, None);

    // A manifest that names another image: refused, for sessions and for -m.
    write_manifest(&img.path, &"ab".repeat(32), size);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "does not match", &img.path, &c);
    assert!(stderr(&out).contains(".manifest.json"), "{}", stderr(&out));
    let out = output(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert_refused(&out, "does not match", &img.path, &c);
    // One that names another size is refused before anything is read.
    write_manifest(&img.path, &good, size + 4096);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "-byte image", &img.path, &c);
    // The manifest from inside an image (no image_sha256) cannot vouch for it.
    std::fs::write(
        sidecar(&img.path, ".manifest.json"),
        serde_json::json!({"schema": 1, "image": {"name": "f", "version": "1"},
            "mount_point": "/dev/crashcart", "recipe_sha256": "", "epoch": 0,
            "packages": [], "files": []})
        .to_string(),
    )
    .expect("write");
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "names no image_sha256", &img.path, &c);
    std::fs::remove_file(sidecar(&img.path, ".manifest.json")).expect("rm");

    // A tampered image no longer matches its .sha256: refused.
    tamper(&img.path);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "does not match", &img.path, &c);
    assert!(stderr(&out).contains(".sha256"), "{}", stderr(&out));

    // No sidecar at all: it is used, and one line says it was not verified.
    std::fs::remove_file(sidecar(&img.path, ".sha256")).expect("rm");
    let out = run_true(&img.path, &c, &[]);
    assert_ran(&out, &img.path, &c, Some("is not verified"));

    // Through a symlink (build.sh's crashcart.img): the sidecars beside its target count.
    let real = TestImage::fixture();
    let link = img.sibling("link.img");
    std::os::unix::fs::symlink(&real.path, &link).expect("symlink");
    assert_ran(&run_true(&link, &c, &[]), &real.path, &c, None);
    tamper(&real.path);
    let out = run_true(&link, &c, &[]);
    assert_refused(&out, "does not match", &real.path, &c);
}

#[test]
fn signatures_are_verified_with_the_key_given() {
    require_tool("minisign", "minisign");
    let c = thin_container("verify-sig");
    let img = TestImage::fixture();
    let keys = tempfile::tempdir().expect("tempdir");
    let (public, secret) = cartbuild_keys(keys.path(), "release");
    let (other_public, _) = cartbuild_keys(keys.path(), "other");
    let public_arg = public.to_str().expect("utf-8");

    // With a key, an unsigned image is refused.
    let out = run_true(&img.path, &c, &["--verify-key", public_arg]);
    assert_refused(&out, "is not signed", &img.path, &c);

    // cartbuild sign (the image's name and version come from the manifest beside it), and
    // minisign agrees.
    let size = std::fs::metadata(&img.path).expect("stat").len();
    write_manifest(&img.path, &sha256_of(&img.path), size);
    let signed = ok(Command::new(bin("cartbuild"))
        .arg("sign")
        .arg(&img.path)
        .arg("--key")
        .arg(&secret));
    assert!(signed.contains("signed"), "{signed}");
    let sig = sidecar(&img.path, ".minisig");
    ok(Command::new("minisign")
        .arg("-Vq")
        .arg("-p")
        .arg(&public)
        .arg("-m")
        .arg(&img.path));

    // The right key passes: as a file, as the base64 string, and from the environment.
    let out = run_true(&img.path, &c, &["-v", "--verify-key", public_arg]);
    assert_ran(&out, &img.path, &c, None);
    assert!(stderr(&out).contains("verifies with"), "{}", stderr(&out));
    let base64 = std::fs::read_to_string(&public).expect("read key");
    let base64 = base64.lines().nth(1).expect("key line").to_string();
    assert_ran(
        &run_true(&img.path, &c, &["--verify-key", &base64]),
        &img.path,
        &c,
        None,
    );
    let out = output(
        cartinject()
            .env("CARTINJECT_VERIFY_KEY", &public)
            .arg(&img.path)
            .arg(&c.name)
            .args(["--", "true"]),
    );
    assert_ran(&out, &img.path, &c, None);

    // Another key: refused.
    let out = run_true(
        &img.path,
        &c,
        &["--verify-key", other_public.to_str().expect("utf-8")],
    );
    assert_refused(&out, "made with another key", &img.path, &c);

    // A signature whose trusted comment was edited: refused.
    let text = std::fs::read_to_string(&sig).expect("read sig");
    let edited: String = text
        .lines()
        .map(|l| {
            if l.starts_with("trusted comment:") {
                l.replace("version:1", "version:2")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(edited.trim(), text.trim(), "the comment names the version");
    std::fs::write(&sig, format!("{edited}\n")).expect("write sig");
    let out = run_true(&img.path, &c, &["--verify-key", public_arg]);
    assert_refused(&out, "does not verify", &img.path, &c);

    // A signature that is not one at all: refused.
    std::fs::write(&sig, "garbage\n").expect("write sig");
    let out = run_true(&img.path, &c, &["--verify-key", public_arg]);
    assert_refused(&out, "is not a minisign signature", &img.path, &c);

    // A good signature over an image changed since (its .sha256 removed, so only the
    // signature can tell): refused.
    ok(Command::new(bin("cartbuild"))
        .arg("sign")
        .arg(&img.path)
        .arg("--key")
        .arg(&secret));
    std::fs::remove_file(sidecar(&img.path, ".sha256")).expect("rm");
    std::fs::remove_file(sidecar(&img.path, ".manifest.json")).expect("rm");
    tamper(&img.path);
    let out = run_true(&img.path, &c, &["--verify-key", public_arg]);
    assert_refused(&out, "does not verify", &img.path, &c);

    // A key that is no key: one line, before anything.
    let out = run_true(&img.path, &c, &["--verify-key", "not-a-key"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("is not a minisign public key"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_no_loop_device(&img.path);

    // -u and --list need no image and no key.
    ok(cartinject()
        .env("CARTINJECT_VERIFY_KEY", "not-a-key")
        .arg("--list"));
    let out = output(
        cartinject()
            .env("CARTINJECT_VERIFY_KEY", "not-a-key")
            .arg("-u")
            .arg(&c.name),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn minisign_made_signatures_verify_in_cartinject() {
    require_tool("minisign", "minisign");
    let c = thin_container("verify-minisign");
    let img = TestImage::fixture();
    let keys = tempfile::tempdir().expect("tempdir");
    let (public, secret) = (keys.path().join("m.pub"), keys.path().join("m.key"));
    ok(Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret));
    ok(Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&secret)
        .arg("-m")
        .arg(&img.path));
    let public_arg = public.to_str().expect("utf-8");
    assert_ran(
        &run_true(&img.path, &c, &["--verify-key", public_arg]),
        &img.path,
        &c,
        None,
    );
    // A legacy (not prehashed) minisign signature is refused with the fix.
    ok(Command::new("minisign")
        .args(["-S", "-l", "-s"])
        .arg(&secret)
        .arg("-m")
        .arg(&img.path));
    let out = run_true(&img.path, &c, &["--verify-key", public_arg]);
    assert_refused(&out, "legacy minisign signature", &img.path, &c);
}

/// `chown UID:GID path` and `chmod MODE path`.
fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Gives `path` the access ACL `u::rw-,u:UID:rw-,g::r--,m::rw-,o::r--` (as `setfacl -m
/// u:UID:rw` does), written as the `system.posix_acl_access` attribute (`acl(5)`: a version
/// then tag, permissions, id per entry, little endian).
fn set_acl_user_write(path: &Path, uid: u32) {
    use std::os::unix::ffi::OsStrExt;
    let undefined = u32::MAX;
    let mut value = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, undefined),
        (0x02, 6, uid),
        (0x04, 4, undefined),
        (0x10, 6, undefined),
        (0x20, 4, undefined),
    ] {
        value.extend(tag.to_le_bytes());
        value.extend(perm.to_le_bytes());
        value.extend(id.to_le_bytes());
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: both strings are NUL-terminated and `value` is readable for its length.
    let rc = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// Point 5 of issue 9: the verified bytes are the mounted bytes. An image that anyone but
/// root could change after cartinject hashed it (its owner, group or others through the
/// file's mode, a POSIX ACL, or a directory above it that lets them replace it) is refused
/// before it is read, for sessions and for -m: one line naming who could change it and the
/// fix, exit 125, no loop device, nothing in the container. A root-owned image in a private
/// temporary directory, or in a sticky one, is used.
#[test]
fn an_image_anyone_but_root_could_change_is_refused_before_it_is_read() {
    use std::os::unix::fs::PermissionsExt;
    let c = thin_container("verify-trust");
    let mount_only = |img: &Path| output(cartinject().arg("-m").arg(img).arg(&c.name));

    // The baseline: a root-owned copy in a root-owned 0700 directory under sticky /tmp.
    let img = TestImage::fixture();
    let out = run_true(&img.path, &c, &["-v"]);
    assert_ran(&out, &img.path, &c, None);
    assert!(
        stderr(&out).contains("only root can change"),
        "{}",
        stderr(&out)
    );

    // The file owned by another uid (even read-only for it: its owner can chmod it back).
    set_owner_mode(&img.path, 1000, 0, 0o444);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(
        &out,
        "can be changed by uid 1000 (its owner)",
        &img.path,
        &c,
    );
    assert!(stderr(&out).contains("chown root"), "{}", stderr(&out));
    let out = mount_only(&img.path);
    assert_refused(
        &out,
        "can be changed by uid 1000 (its owner)",
        &img.path,
        &c,
    );

    // Writable by everyone.
    set_owner_mode(&img.path, 0, 0, 0o666);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "can be changed by any user", &img.path, &c);
    // Writable by a group other than root's.
    set_owner_mode(&img.path, 0, 100, 0o664);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "can be changed by group 100", &img.path, &c);
    // Group 0 may write it.
    set_owner_mode(&img.path, 0, 0, 0o664);
    assert_ran(&run_true(&img.path, &c, &[]), &img.path, &c, None);

    // A POSIX ACL that lets uid 1000 write (the mode's group bits are then the ACL's mask,
    // and the group is root's: the mode alone would pass).
    set_acl_user_write(&img.path, 1000);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "uid 1000 (a POSIX ACL lets it write)", &img.path, &c);
    set_owner_mode(&img.path, 0, 0, 0o644);
    assert_ran(&run_true(&img.path, &c, &[]), &img.path, &c, None);

    // Its directory owned by uid 1000: the owner could rename it away and put another there.
    let dir = img.path.parent().expect("dir").to_path_buf();
    set_owner_mode(&dir, 1000, 1000, 0o700);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(
        &out,
        "can be changed by uid 1000 (the owner of",
        &img.path,
        &c,
    );
    assert!(
        stderr(&out).contains(&*dir.to_string_lossy()),
        "{}",
        stderr(&out)
    );
    // A group-writable directory that is not sticky.
    set_owner_mode(&dir, 0, 100, 0o770);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "is group-writable and not sticky", &img.path, &c);
    let out = mount_only(&img.path);
    assert_refused(&out, "is group-writable and not sticky", &img.path, &c);

    // A symlink from a safe directory into that one: the real path is what counts.
    let safe = TestImage::fixture();
    let link = safe.sibling("link.img");
    std::os::unix::fs::symlink(&img.path, &link).expect("symlink");
    let out = run_true(&link, &c, &[]);
    assert_refused(&out, "is group-writable and not sticky", &img.path, &c);

    // A root-owned sticky directory (like /tmp itself) is fine: only a file's owner may
    // rename or remove it there.
    set_owner_mode(&dir, 0, 0, 0o1777);
    assert_ran(&run_true(&link, &c, &[]), &img.path, &c, None);
    set_owner_mode(&dir, 0, 0, 0o700);

    // A hard link elsewhere changes nothing: the inode's owner and mode are what is checked.
    let hard = safe.sibling("hard.img");
    std::fs::hard_link(&img.path, &hard).expect("hard link");
    std::fs::copy(sidecar(&img.path, ".sha256"), sidecar(&hard, ".sha256")).expect("copy");
    assert_ran(&run_true(&hard, &c, &[]), &hard, &c, None);

    // A process that opened it for writing before it became root's 0644 keeps its write
    // access: refused while such a descriptor is open.
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .expect("open for writing");
    let out = run_true(&img.path, &c, &[]);
    assert_refused(
        &out,
        "is open for writing by another process",
        &img.path,
        &c,
    );
    drop(writer);
    assert_ran(&run_true(&img.path, &c, &[]), &img.path, &c, None);
    assert_eq!(
        std::fs::metadata(&img.path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}

/// An image on a FUSE filesystem (here fuse-overlayfs, which reports its files as root's
/// 0644 in root's directories) is refused: the daemon answers every read, so the bytes the
/// loop device reads need not be those that were hashed.
#[test]
fn an_image_on_a_fuse_filesystem_is_refused() {
    require_tool("fuse-overlayfs", "fuse-overlayfs");
    let c = thin_container("verify-fuse");
    let img = TestImage::fixture();
    let dir = img.path.parent().expect("dir");
    for sub in ["upper", "work", "merged"] {
        std::fs::create_dir(dir.join(sub)).expect("mkdir");
    }
    let lower = dir.display();
    ok(Command::new("fuse-overlayfs")
        .arg("-o")
        .arg(format!(
            "lowerdir={lower},upperdir={lower}/upper,workdir={lower}/work"
        ))
        .arg(dir.join("merged")));
    let merged = dir.join("merged/crashcart.img");
    let out = run_true(&merged, &c, &[]);
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(dir.join("merged"))
        .status();
    assert_refused(&out, "is on a FUSE filesystem", &merged, &c);
    assert_no_loop_device(&img.path);
}

/// Nothing beside or in place of an image can make cartinject wait: a FIFO as the image or
/// as its `.sha256` (anyone may create names in a sticky /tmp) is refused at once.
#[test]
fn a_fifo_in_place_of_an_image_or_a_sidecar_does_not_hang() {
    let c = thin_container("verify-fifo");
    let img = TestImage::fixture();
    let fifo = img.sibling("fifo.img");
    ok(Command::new("mkfifo").arg(&fifo));
    let started = std::time::Instant::now();
    let out = run_true(&fifo, &c, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("is not a regular file"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let sum = sidecar(&img.path, ".sha256");
    std::fs::remove_file(&sum).expect("rm");
    ok(Command::new("mkfifo").arg(&sum));
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "it is not a regular file", &img.path, &c);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// A loop device already bound to the image's inode (here by -m) is reused, found by the
/// inode its status names (not by looking up the path sysfs prints): the bytes it serves are
/// those of the file that was just checked and hashed.
#[test]
fn a_device_already_serving_the_checked_inode_is_reused() {
    let c = thin_container("verify-reuse");
    let other = thin_container("verify-reuse2");
    let img = TestImage::fixture();
    let out = output(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let devices = img.loop_devices();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let out = run_true(&img.path, &other, &["-v"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("reusing {}", devices[0])),
        "expected the device of -m to be reused: {err}"
    );
    other.assert_clean();
    ok(cartinject().arg("-u").arg(&c.name));
    c.assert_clean();
    img.assert_no_loop_device();
}
