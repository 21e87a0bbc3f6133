//! Verify once, stay verified (issue 10): an image hashed (and its signature checked) in one
//! session is not hashed again in the next while it provably has not changed, and a record
//! never vouches for bytes that were not hashed. Real containers, real loop devices.
//!
//! Which path a session took is read from `-v`: "hashed N bytes" when it read the image,
//! "verified earlier (record ...)" when a record in /run/cartinject/verified spared it.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crashcart_tests::*;

/// `cartinject -v [ARGS] IMAGE TARGET -- true`.
fn run_true(img: &Path, c: &Container, args: &[&str]) -> Output {
    output(
        cartinject()
            .arg("-v")
            .args(args)
            .arg(img)
            .arg(&c.name)
            .args(["--", "true"]),
    )
}

/// Asserts a session that ran and left nothing behind; returns its stderr.
fn ran(out: &Output, img: &Path, c: &Container) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_no_loop_device(img);
    c.assert_clean();
    err
}

/// Asserts that the session hashed the image (and, with `recorded`, wrote a record).
fn assert_hashed(err: &str, recorded: bool) {
    assert!(err.contains("hashed "), "expected a hash: {err}");
    assert!(!err.contains("verified earlier"), "{err}");
    if recorded {
        assert!(
            err.contains("recorded in /run/cartinject/verified/"),
            "{err}"
        );
    }
}

/// Asserts that the session took the image's digest from a record, without reading it.
fn assert_from_record(err: &str) {
    assert!(
        err.contains("verified earlier, record /run/cartinject/verified/"),
        "{err}"
    );
    assert!(
        !err.contains("hashed "),
        "the image was hashed again: {err}"
    );
}

/// Asserts a refusal: exit 125, one line naming `needle`, nothing attached or mounted.
fn assert_refused(out: &Output, needle: &str, img: &Path, c: &Container) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert_no_loop_device(img);
    c.assert_clean();
}

/// Waits until the kernel's coarse clock has moved past the last change of every file just
/// written (a few ms): only then may a session record what it hashed (see `verify::record`).
fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}

fn sidecar(img: &Path, suffix: &str) -> PathBuf {
    let mut s = img.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Flips one byte near the end of the file in place (free space of the filesystem: it still
/// mounts), and sets its mtime back to what it was: same inode, same size, same mtime.
fn change_in_place_keeping_mtime(img: &Path) {
    let before = std::fs::metadata(img).expect("stat");
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .open(img)
        .expect("open rw");
    let at = before.len() - 100;
    let mut byte = [0u8; 1];
    file.read_at(&mut byte, at).expect("read");
    byte[0] ^= 0x5a;
    file.write_at(&byte, at).expect("write");
    file.set_modified(before.modified().expect("mtime"))
        .expect("utimensat");
    drop(file);
    let after = std::fs::metadata(img).expect("stat");
    assert_eq!(
        (after.ino(), after.len(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.len(),
            before.mtime(),
            before.mtime_nsec()
        ),
        "the change must keep inode, size and mtime"
    );
    assert_ne!(
        (after.ctime(), after.ctime_nsec()),
        (before.ctime(), before.ctime_nsec())
    );
}

/// Records in /run/cartinject/verified for the inode `ino` of device `dev`, on any mount.
/// Records in /run/cartinject/verified for the inode `ino` of device `dev`, on any mount:
/// name and content.
fn records_for(dev: u64, ino: u64) -> Vec<(String, String)> {
    let suffix = format!("-{dev}-{ino}");
    let mut found: Vec<(String, String)> = std::fs::read_dir("/run/cartinject/verified")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(&suffix))
                .map(|n| {
                    let bytes = std::fs::read(Path::new("/run/cartinject/verified").join(&n))
                        .unwrap_or_default();
                    (n, String::from_utf8_lossy(&bytes).into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn a_second_session_does_not_hash_the_image_again() {
    require_tool("minisign", "minisign");
    let img = TestImage::fixture();
    let c = thin_container("once-again");
    settle();
    let size = std::fs::metadata(&img.path).expect("stat").len();

    let err = ran(&run_true(&img.path, &c, &[]), &img.path, &c);
    assert_hashed(&err, true);
    assert!(err.contains(&format!("hashed {size} bytes")), "{err}");
    let err = ran(&run_true(&img.path, &c, &[]), &img.path, &c);
    assert_from_record(&err);
    // -m too: the same check.
    let out = output(cartinject().arg("-v").arg("-m").arg(&img.path).arg(&c.name));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_from_record(&stderr(&out));
    ok(cartinject().arg("-u").arg(&c.name));
    c.assert_clean();
    img.assert_no_loop_device();

    // With --verify-key: the record holds no signature yet, so the first keyed session hashes
    // (sha256 and BLAKE2b) and records the signature; the next one does not.
    let keys = tempfile::tempdir().expect("tempdir");
    let (public, secret) = cartbuild_keys(keys.path(), "release");
    let (other_public, _) = cartbuild_keys(keys.path(), "other");
    ok(Command::new(bin("cartbuild"))
        .arg("sign")
        .arg(&img.path)
        .arg("--key")
        .arg(&secret));
    let key = ["--verify-key", public.to_str().expect("utf-8")];
    let err = ran(&run_true(&img.path, &c, &key), &img.path, &c);
    assert_hashed(&err, true);
    assert!(err.contains("verifies with"), "{err}");
    let err = ran(&run_true(&img.path, &c, &key), &img.path, &c);
    assert_from_record(&err);
    assert!(err.contains("verifies with"), "{err}");
    // The base64 of the same key is the same key.
    let text = std::fs::read_to_string(&public).expect("read key");
    let base64 = text.lines().nth(1).expect("key line").to_string();
    let err = ran(
        &run_true(&img.path, &c, &["--verify-key", &base64]),
        &img.path,
        &c,
    );
    assert_from_record(&err);

    // Another key is not the one the record names: checked, and refused.
    let out = run_true(
        &img.path,
        &c,
        &["--verify-key", other_public.to_str().expect("utf-8")],
    );
    assert_refused(&out, "made with another key", &img.path, &c);
    // A signature file that changed (here only its untrusted comment): checked again.
    let sig = sidecar(&img.path, ".minisig");
    let text = std::fs::read_to_string(&sig).expect("read sig");
    let (first, rest) = text.split_once('\n').expect("lines");
    assert!(first.starts_with("untrusted comment:"), "{first}");
    std::fs::write(&sig, format!("untrusted comment: edited\n{rest}")).expect("write");
    let err = ran(&run_true(&img.path, &c, &key), &img.path, &c);
    assert_hashed(&err, true);
    assert!(
        err.contains("does not vouch for what is asked now"),
        "{err}"
    );
    // A .sha256 that names another digest is read every time: refused, record or not.
    std::fs::write(
        sidecar(&img.path, ".sha256"),
        format!("{}  crashcart.img\n", "ab".repeat(32)),
    )
    .expect("write");
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "does not match", &img.path, &c);
}

/// A verified image changed in place, with its size kept and its mtime set back, is hashed
/// again and refused: its ctime moved on, and nothing sets a ctime back.
#[test]
fn an_image_changed_in_place_with_its_mtime_set_back_is_hashed_again_and_refused() {
    let img = TestImage::fixture();
    let c = thin_container("once-ctime");
    settle();
    assert_hashed(&ran(&run_true(&img.path, &c, &[]), &img.path, &c), true);
    assert_from_record(&ran(&run_true(&img.path, &c, &[]), &img.path, &c));

    change_in_place_keeping_mtime(&img.path);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "does not match", &img.path, &c);
    assert!(stderr(&out).contains(".sha256"), "{}", stderr(&out));
    // And again: a refused image is never recorded.
    settle();
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "does not match", &img.path, &c);
}

/// An image that someone but root can write is refused before any record is looked at, none
/// is written for it, and once it is root's again (which changes its ctime) it is hashed: what
/// its owner wrote meanwhile, even with the mtime set back, is found.
#[test]
fn an_image_a_user_can_write_is_never_trusted_from_a_record() {
    let img = TestImage::fixture();
    let c = thin_container("once-user");
    settle();
    let meta = std::fs::metadata(&img.path).expect("stat");
    let (dev, ino) = (meta.dev(), meta.ino());

    // Owned by uid 1000 from the start: refused, and no record is made (one may be there from
    // an earlier file with this inode number, for another ctime: it is left as it was).
    std::os::unix::fs::chown(&img.path, Some(1000), Some(1000)).expect("chown");
    settle();
    let earlier = records_for(dev, ino);
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "can be changed by uid 1000", &img.path, &c);
    assert_eq!(records_for(dev, ino), earlier);

    // Root's: verified and recorded.
    std::os::unix::fs::chown(&img.path, Some(0), Some(0)).expect("chown");
    settle();
    assert_hashed(&ran(&run_true(&img.path, &c, &[]), &img.path, &c), true);
    assert_ne!(records_for(dev, ino), earlier);
    assert_from_record(&ran(&run_true(&img.path, &c, &[]), &img.path, &c));

    // Given to uid 1000, who changes a byte and sets the mtime back, as that user.
    std::os::unix::fs::chown(&img.path, Some(1000), Some(1000)).expect("chown");
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "can be changed by uid 1000", &img.path, &c);
    let path = img.path.to_str().expect("utf-8");
    let dir = img.path.parent().expect("dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let before = std::fs::metadata(&img.path).expect("stat");
    ok(Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "--"])
        .args(["sh", "-c"])
        .arg(format!(
            "printf 'Z' | dd of='{path}' bs=1 seek=$(( $(stat -c %s '{path}') - 100 )) conv=notrunc status=none && touch -m -d @{}.{:09} '{path}'",
            before.mtime(),
            before.mtime_nsec()
        )));
    let after = std::fs::metadata(&img.path).expect("stat");
    assert_eq!(
        (after.len(), after.mtime(), after.mtime_nsec()),
        (before.len(), before.mtime(), before.mtime_nsec())
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    // Root takes it back (as the refusal says to): hashed again, refused.
    std::os::unix::fs::chown(&img.path, Some(0), Some(0)).expect("chown");
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "does not match", &img.path, &c);
}

/// A mounted filesystem, unmounted (and its loop device detached) on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(fs: &Path, at: &Path) -> Mounted {
        std::fs::create_dir_all(at).expect("mkdir");
        ok(Command::new("mount").arg("-o").arg("loop").arg(fs).arg(at));
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A record for one file never vouches for another: a file renamed onto the image's path,
/// a copy, a hard link's own sidecar, and a file with the same inode number, size, mtime and
/// ctime on another filesystem (a byte-for-byte copy of the first one's disk, with one byte of
/// the image changed underneath).
#[test]
fn a_record_for_one_file_never_vouches_for_another() {
    let img = TestImage::fixture();
    let c = thin_container("once-other");
    settle();
    assert_hashed(&ran(&run_true(&img.path, &c, &[]), &img.path, &c), true);
    assert_from_record(&ran(&run_true(&img.path, &c, &[]), &img.path, &c));

    // A hard link is the same inode, the same bytes. Making it changes the inode's ctime
    // (its link count): hashed once more, then the record holds for both names. Each name's
    // own sidecar still counts, and is read every time.
    let hard = img.sibling("hard.img");
    std::fs::hard_link(&img.path, &hard).expect("link");
    std::fs::copy(sidecar(&img.path, ".sha256"), sidecar(&hard, ".sha256")).expect("copy");
    settle();
    assert_hashed(&ran(&run_true(&hard, &c, &[]), &hard, &c), true);
    assert_from_record(&ran(&run_true(&hard, &c, &[]), &hard, &c));
    assert_from_record(&ran(&run_true(&img.path, &c, &[]), &img.path, &c));
    std::fs::write(
        sidecar(&hard, ".sha256"),
        format!("{}  hard.img\n", "cd".repeat(32)),
    )
    .expect("write");
    assert_refused(&run_true(&hard, &c, &[]), "does not match", &hard, &c);
    std::fs::remove_file(&hard).expect("rm");

    // A changed copy (same size, mtime set back) renamed onto the image's path: another
    // inode, hashed, refused.
    let copy = img.sibling("copy.img");
    std::fs::copy(&img.path, &copy).expect("copy");
    change_in_place_keeping_mtime(&copy);
    let mtime = std::fs::metadata(&img.path)
        .expect("stat")
        .modified()
        .expect("mtime");
    std::fs::File::open(&copy)
        .expect("open")
        .set_modified(mtime)
        .expect("utimensat");
    std::fs::rename(&copy, &img.path).expect("rename");
    let out = run_true(&img.path, &c, &[]);
    assert_refused(&out, "does not match", &img.path, &c);

    // The same inode number, size, mtime and ctime on another device and mount.
    let good = TestImage::fixture();
    let dir = good.sibling("fs");
    std::fs::create_dir(&dir).expect("mkdir");
    let fs_a = dir.join("a.ext4");
    let size = std::fs::metadata(&good.path).expect("stat").len();
    let file = std::fs::File::create(&fs_a).expect("create");
    file.set_len(size + (16 << 20)).expect("truncate");
    drop(file);
    ok(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-I", "256"])
        .arg(&fs_a));
    let a = Mounted::new(&fs_a, &dir.join("a"));
    let img_a = a.0.join("crashcart.img");
    std::fs::copy(&good.path, &img_a).expect("copy");
    write_checksum(&img_a);
    settle();
    assert_hashed(&ran(&run_true(&img_a, &c, &[]), &img_a, &c), true);
    assert_from_record(&ran(&run_true(&img_a, &c, &[]), &img_a, &c));
    // A byte-for-byte copy of A's disk, taken frozen: the same inodes, stamped the same.
    ok(Command::new("fsfreeze").arg("-f").arg(&a.0));
    let copied = std::fs::copy(&fs_a, dir.join("b.ext4"));
    ok(Command::new("fsfreeze").arg("-u").arg(&a.0));
    copied.expect("copy the filesystem");
    let fs_b = dir.join("b.ext4");
    // One byte of the image changed on B's disk, where its block lies.
    let at = size - 100;
    let bmap = ok(Command::new("debugfs")
        .arg("-R")
        .arg(format!("bmap /crashcart.img {}", at / 4096))
        .arg(&fs_b));
    let block: u64 = bmap
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bmap: {bmap}"));
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fs_b)
        .expect("open");
    let mut byte = [0u8; 1];
    disk.read_at(&mut byte, block * 4096 + at % 4096)
        .expect("read");
    byte[0] ^= 0x5a;
    disk.write_at(&byte, block * 4096 + at % 4096)
        .expect("write");
    drop(disk);
    let b = Mounted::new(&fs_b, &dir.join("b"));
    let img_b = b.0.join("crashcart.img");
    let (ma, mb) = (
        std::fs::metadata(&img_a).expect("stat"),
        std::fs::metadata(&img_b).expect("stat"),
    );
    assert_ne!(ma.dev(), mb.dev());
    assert_eq!(
        (
            ma.ino(),
            ma.len(),
            ma.mtime(),
            ma.mtime_nsec(),
            ma.ctime(),
            ma.ctime_nsec()
        ),
        (
            mb.ino(),
            mb.len(),
            mb.mtime(),
            mb.mtime_nsec(),
            mb.ctime(),
            mb.ctime_nsec()
        ),
        "B's image must look like A's but for the device"
    );
    assert_ne!(sha256_of(&img_a), sha256_of(&img_b));
    let out = run_true(&img_b, &c, &[]);
    assert_refused(&out, "does not match", &img_b, &c);
    // A's record still stands for A.
    assert_from_record(&ran(&run_true(&img_a, &c, &[]), &img_a, &c));
    drop(b);
    drop(a);
}
