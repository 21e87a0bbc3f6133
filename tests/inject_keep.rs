//! The image kept between sessions (issue 10, see injector/src/keep.rs): after a session the
//! image's loop device stays attached for `$CARTINJECT_LINGER` seconds, held by a
//! `cartinject-keep` process, so that the next session reuses it; then it goes, leaving
//! nothing. A kept device serves only the very state of the file it was bound for, and only
//! when cartinject's own note names it. Real containers, real loop devices.
//!
//! The harness runs cartinject with `CARTINJECT_LINGER=0` (every other test checks that a
//! session leaves no device); these tests set it themselves.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crashcart_tests::*;

/// `cartinject -v IMAGE TARGET -- COMMAND` with `CARTINJECT_LINGER=linger`.
fn session(img: &Path, c: &Container, linger: &str, command: &[&str]) -> Output {
    output(
        cartinject()
            .env("CARTINJECT_LINGER", linger)
            .arg("-v")
            .arg(img)
            .arg(&c.name)
            .arg("--")
            .args(command),
    )
}

/// Asserts that the session ran; returns its stderr.
fn ran(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    err
}

/// The PIDs of the processes named `cartinject-keep` that hold a note of `img` as it is now.
fn keepers_of(img: &Path) -> Vec<i32> {
    let infix = state_of(img);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() != "cartinject-keep" {
            continue;
        }
        let holds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| {
                        let l = l.to_string_lossy();
                        l.starts_with("/run/cartinject/keep/") && l.contains(&infix)
                    })
                })
            })
            .unwrap_or(false);
        if holds {
            found.push(pid);
        }
    }
    found
}

/// The device a `-v` session says it attached or reused (`/dev/loopN`), and whether reused.
fn device_of(err: &str) -> (String, bool) {
    for line in err.lines() {
        for (word, reused) in [("attached /dev/loop", false), ("reusing /dev/loop", true)] {
            if let Some(at) = line.find(word) {
                let rest = &line[at + word.len() - "/dev/loop".len()..];
                let dev = rest.split_whitespace().next().expect("a device");
                return (dev.to_string(), reused);
            }
        }
    }
    panic!("no device named in: {err}");
}

/// Waits up to 15 s until no device of `img`'s is attached and no keeper lives.
fn assert_released(img: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(loop_devices_for(img).is_empty() && keepers_of(img).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "still attached: {:?}",
            loop_devices_for(img)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The part of a note's name that tells the state of `img`: device, inode, size, mtime and
/// ctime (other tests' images, since removed, may have had the same inode number).
fn state_of(img: &Path) -> String {
    let m = std::fs::metadata(img).expect("stat");
    format!(
        "-{}-{}-{}-{}.{:09}-{}.{:09}-",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// The notes in /run/cartinject/keep for `img` as it is now.
fn notes_of(img: &Path) -> Vec<PathBuf> {
    let infix = state_of(img);
    std::fs::read_dir("/run/cartinject/keep")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(&infix))
                .collect()
        })
        .unwrap_or_default()
}

/// One session leaves the device to a keeper; the next reuses it and moves the deadline on;
/// then it goes by itself, with its note, leaving nothing.
#[test]
fn the_next_session_reuses_the_kept_device_and_it_goes_by_itself() {
    let c = thin_container("keep-reuse");
    let img = TestImage::fixture();
    let err = ran(&session(&img.path, &c, "3", &["true"]));
    let (first, reused) = device_of(&err);
    assert!(!reused, "{err}");
    assert!(err.contains("held by cartinject-keep (PID "), "{err}");
    c.assert_clean();
    assert_eq!(loop_devices_for(&img.path), vec![first.clone()]);
    let keepers = keepers_of(&img.path);
    assert_eq!(keepers.len(), 1, "{keepers:?}");
    assert_eq!(notes_of(&img.path).len(), 1);
    // The keeper holds nothing of the session's: no terminal, pipe or file of the caller.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", keepers[0]))
        .expect("fd dir")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    assert!(
        fds.iter()
            .all(|l| l == "/dev/null" || l == "/" || l.starts_with("/run/cartinject/keep")),
        "{fds:?}"
    );

    let err = ran(&session(&img.path, &c, "3", &["true"]));
    assert_eq!(device_of(&err), (first.clone(), true), "{err}");
    assert!(err.contains("stays attached 3s more"), "{err}");
    assert_eq!(
        keepers_of(&img.path),
        keepers,
        "a second keeper was started"
    );
    c.assert_clean();
    assert_released(&img.path);
    assert!(notes_of(&img.path).is_empty(), "{:?}", notes_of(&img.path));
}

/// A caller that reads the session's output to its end (`$(cartinject ...)`) gets it when the
/// command ends, not when the keeper does; killing the keeper leaks nothing.
#[test]
fn the_keeper_holds_no_output_of_the_caller_and_dies_cleanly() {
    let c = thin_container("keep-output");
    let img = TestImage::fixture();
    let started = Instant::now();
    let out = output(
        cartinject()
            .env("CARTINJECT_LINGER", "600")
            .arg(&img.path)
            .arg(&c.name)
            .args(["--", "echo", "kept"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    assert_eq!(stdout(&out).trim(), "kept", "{}", stderr(&out));
    let keepers = keepers_of(&img.path);
    assert_eq!(keepers.len(), 1, "no keeper: {}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "the output was held until the keeper ended"
    );
    ok(Command::new("kill")
        .arg("-KILL")
        .arg(keepers[0].to_string()));
    assert_no_loop_device(&img.path);
    c.assert_clean();
}

/// The image changed in place (a byte of a file in it, its .sha256 updated, the mtime set
/// back): the next session hashes it again and gets a device of its own that shows the new
/// bytes, never the kept device whose cache holds the old ones.
#[test]
fn a_kept_device_never_serves_a_changed_image() {
    let c = thin_container("keep-changed");
    let img = TestImage::fixture();
    let read_rc = ["cat", "/dev/crashcart/etc/bashrc"];
    let out = session(&img.path, &c, "600", &read_rc);
    let err = ran(&out);
    assert!(stdout(&out).contains("CRASHCART_RC=read"), "{err}");
    let (first, _) = device_of(&err);
    let mut keepers = keepers_of(&img.path);
    assert_eq!(keepers.len(), 1, "{err}");

    let bytes = std::fs::read(&img.path).expect("read");
    let needle = b"CRASHCART_RC=read";
    let at: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the rc text is not once in the image");
    let before = std::fs::metadata(&img.path).expect("stat");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .expect("open")
        .write_all_at(b"CRASHCART_RC=EDIT", at[0] as u64)
        .expect("write");
    ok(Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{}.{:09}", before.mtime(), before.mtime_nsec()))
        .arg(&img.path));
    write_checksum(&img.path);
    std::thread::sleep(Duration::from_millis(50));

    let out = session(&img.path, &c, "600", &read_rc);
    let err = ran(&out);
    assert!(err.contains("hashed "), "not hashed again: {err}");
    let (second, reused) = device_of(&err);
    assert!(!reused, "the kept device was reused: {err}");
    assert_ne!(second, first, "{err}");
    assert!(
        stdout(&out).contains("CRASHCART_RC=EDIT"),
        "the old bytes were served: {}",
        stdout(&out)
    );
    // The old state's keeper still holds the old device until its own deadline.
    keepers.extend(keepers_of(&img.path));
    assert_eq!(keepers.len(), 2, "{err}");
    for pid in keepers {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    assert_released(&img.path);
    c.assert_clean();
}

/// A note that names a device bound to another file, or the right device under another
/// disk sequence (detached and bound again), is not followed: the session binds its own.
#[test]
fn a_note_naming_another_binding_is_not_followed() {
    let c = thin_container("keep-forged");
    let img = TestImage::fixture();
    let err = ran(&session(&img.path, &c, "600", &["true"]));
    let (first, _) = device_of(&err);
    let notes = notes_of(&img.path);
    assert_eq!(notes.len(), 1, "{notes:?}");
    let note: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&notes[0]).expect("note")).expect("json");

    // Another file on another device, read-only with autoclear as cartinject binds.
    let other = img.sibling("other.img");
    std::fs::copy(&img.path, &other).expect("copy");
    let decoy = ok(Command::new("losetup")
        .args(["-r", "-f", "--show"])
        .arg(&other));
    let decoy = decoy.trim().to_string();
    let number: u64 = decoy
        .trim_start_matches("/dev/loop")
        .parse()
        .expect("number");
    let seq: u64 = std::fs::read_to_string(format!("/sys/block/loop{number}/diskseq"))
        .expect("diskseq")
        .trim()
        .parse()
        .expect("a number");
    let forged = serde_json::json!({
        "boot_id": note["boot_id"], "device": number, "diskseq": seq,
    });
    std::fs::write(&notes[0], forged.to_string()).expect("forge");
    let err = ran(&session(&img.path, &c, "0", &["true"]));
    assert!(
        err.contains(&format!("{decoy} serves something else")),
        "{err}"
    );
    let (used, reused) = device_of(&err);
    assert!(!reused && used != decoy, "{err}");
    ok(Command::new("losetup").arg("-d").arg(&decoy));

    // The kept device, but under a disk sequence it no longer has.
    let mut stale = note.clone();
    stale["diskseq"] = serde_json::json!(note["diskseq"].as_u64().expect("seq") + 1_000_000);
    std::fs::write(&notes_of(&img.path)[0], stale.to_string()).expect("forge");
    let err = ran(&session(&img.path, &c, "0", &["true"]));
    assert!(err.contains("was bound again since"), "{err}");
    assert!(!device_of(&err).1, "{err}");
    let _ = first;
    for pid in keepers_of(&img.path) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    assert_released(&img.path);
    c.assert_clean();
}

/// A bad CARTINJECT_LINGER is one line and exit 125, before anything is attached; -m starts
/// no keeper, so -u releases the device at once.
#[test]
fn a_bad_linger_is_refused_and_mount_only_keeps_nothing() {
    let c = thin_container("keep-bad");
    let img = TestImage::fixture();
    let out = session(&img.path, &c, "soon", &["true"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("CARTINJECT_LINGER=soon is not a number of seconds"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(loop_devices_for(&img.path).is_empty());
    c.assert_clean();

    ok(cartinject()
        .env_remove("CARTINJECT_LINGER")
        .arg("-m")
        .arg(&img.path)
        .arg(&c.name));
    assert!(keepers_of(&img.path).is_empty());
    ok(cartinject()
        .env_remove("CARTINJECT_LINGER")
        .arg("-u")
        .arg(&c.name));
    assert!(loop_devices_for(&img.path).is_empty(), "-u left a device");
    c.assert_clean();
}
