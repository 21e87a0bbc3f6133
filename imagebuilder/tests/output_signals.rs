//! What cartbuild's SIGINT/SIGTERM handler relies on (`output::abandon_pending`): every
//! temporary output in flight is removed, and none appears while the handler holds the
//! registry. A test binary of its own: the registry is the whole process's.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use cartbuild::output::{Pending, abandon_pending};

/// The names in `dir`.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn abandoning_removes_every_temporary_and_blocks_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut image = Pending::create(&dir.path().join("a.img")).unwrap();
    image.file().write_all(b"half an image").unwrap();
    let _sidecar = Pending::with_bytes(&dir.path().join("a.img.sha256"), b"sum\n").unwrap();
    assert_eq!(names(dir.path()).len(), 2, "{:?}", names(dir.path()));

    let guard = abandon_pending();
    assert!(
        names(dir.path()).is_empty(),
        "left: {:?}",
        names(dir.path())
    );
    // While the handler holds the registry, no new temporary is made.
    let (tx, rx) = mpsc::channel();
    let at = dir.path().join("b.img");
    let maker = std::thread::spawn(move || {
        let p = Pending::create(&at).unwrap();
        tx.send(()).unwrap();
        drop(p);
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a temporary was created while the registry was held"
    );
    assert!(names(dir.path()).is_empty());
    drop(guard);
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    maker.join().unwrap();
    // The abandoned image cannot be put in place any more.
    assert!(image.persist().is_err());
    assert!(
        names(dir.path()).is_empty(),
        "left: {:?}",
        names(dir.path())
    );
}
