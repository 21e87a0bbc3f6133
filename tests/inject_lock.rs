//! Issue 9, point 7: no hang, ever. A container can hold a lock on the image (through a
//! read-only bind mount, an `flock` needs no write access): cartinject waits a bounded time
//! (`CARTINJECT_LOCK_TIMEOUT`), then says who holds it in one line, exit 125; and a stop
//! signal during the wait ends it at once with 128+N. Sessions and -m, real containers,
//! real loop devices; nothing is left behind either way.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crashcart_tests::*;

/// A container (the thin image, for its root) whose PID 1 is `tests/fixtures/holdlock.c`
/// holding `flock(LOCK_EX)` on `img`, bind-mounted read-only at `/img`; returned once the
/// lock is held (`/proc/locks` names PID 1's host PID).
fn lock_holder(test: &str, img: &Path) -> Container {
    require_root();
    let holdlock = static_binary("holdlock");
    let c = Container::start_with_command(
        &unique(test),
        thin_image(),
        &[
            "-v",
            &format!("{}:/holdlock:ro", holdlock.display()),
            "-v",
            &format!("{}:/img:ro", img.display()),
            "--entrypoint",
            "/holdlock",
        ],
        &["/img"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let locks = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
        let held = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"FLOCK") && f.get(4) == Some(&c.pid.to_string().as_str())
        });
        if held {
            return c;
        }
        assert!(Instant::now() < deadline, "holdlock never took its lock");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the bounded wait's refusal: exit 125, one line naming the image, the holder's
/// PID and name, and the variable; nothing attached, nothing in the container.
fn assert_timed_out(out: &Output, img: &Path, c: &Container, took: Duration) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for needle in [
        &*img.to_string_lossy(),
        &format!("is still locked by PID {} (holdlock)", c.pid),
        "CARTINJECT_LOCK_TIMEOUT=SECONDS",
        "nothing was attached",
    ] {
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
    // The limit is 2 s; generous room for a loaded machine, far from forever.
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_no_loop_device(img);
    c.assert_clean();
}

#[test]
fn a_lock_held_by_a_container_gives_a_bounded_wait_and_a_clear_error() {
    let img = TestImage::fixture();
    let c = lock_holder("lock-held", &img.path);

    let started = Instant::now();
    let out = output(
        cartinject()
            .env("CARTINJECT_LOCK_TIMEOUT", "2")
            .arg(&img.path)
            .arg(&c.name)
            .args(["--", "true"]),
    );
    assert_timed_out(&out, &img.path, &c, started.elapsed());

    let started = Instant::now();
    let out = output(
        cartinject()
            .env("CARTINJECT_LOCK_TIMEOUT", "2")
            .arg("-m")
            .arg(&img.path)
            .arg(&c.name),
    );
    assert_timed_out(&out, &img.path, &c, started.elapsed());

    // A limit that is no number of seconds: one line, before anything.
    let out = output(
        cartinject()
            .env("CARTINJECT_LOCK_TIMEOUT", "soon")
            .arg(&img.path)
            .arg(&c.name)
            .args(["--", "true"]),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("is not a number of seconds"), "{err}");
    assert_no_loop_device(&img.path);
}

/// Whether process `pid` blocks signal `sig` (its `SigBlk` in `/proc/PID/status`): how the
/// test knows cartinject reached the lock (it blocks the stop signals just before).
fn blocks(pid: u32, sig: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// Starts `cmd`, waits until it blocks `sig` and has waited a moment for the lock, sends
/// `sig`, and returns its exit status, its stderr and how long it took to end.
fn stop_while_waiting(cmd: &mut Command, sig: i32) -> (Option<i32>, String, Duration) {
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cartinject");
    let deadline = Instant::now() + Duration::from_secs(30);
    let sig_u32 = u32::try_from(sig).expect("signal number");
    while !blocks(child.id(), sig_u32) {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "cartinject ended before it waited for the lock"
        );
        assert!(
            Instant::now() < deadline,
            "cartinject never reached the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Into the wait itself (the first try is at once, the next after 20 ms).
    std::thread::sleep(Duration::from_millis(300));
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill");
    let sent = Instant::now();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    let took = sent.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    (status.code(), err, took)
}

#[test]
fn a_stop_signal_ends_the_wait_for_a_lock_at_once_leaving_nothing() {
    let img = TestImage::fixture();
    let c = lock_holder("lock-signal", &img.path);

    // A session: SIGTERM ends it with 143 (signals are blocked into a signalfd there).
    let (code, err, took) = stop_while_waiting(
        cartinject()
            .env("CARTINJECT_LOCK_TIMEOUT", "120")
            .arg(&img.path)
            .arg(&c.name)
            .args(["--", "true"]),
        libc::SIGTERM,
    );
    assert_eq!(code, Some(128 + libc::SIGTERM), "{err}");
    assert!(
        err.contains("stopped by SIGTERM while waiting for the lock"),
        "{err}"
    );
    assert!(err.contains("nothing was attached"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        took < Duration::from_secs(5),
        "ended {took:?} after SIGTERM"
    );
    assert_no_loop_device(&img.path);
    c.assert_clean();

    // -m: Ctrl-C (SIGINT) ends it with 130, nothing attached, nothing mounted.
    let (code, err, took) = stop_while_waiting(
        cartinject()
            .env("CARTINJECT_LOCK_TIMEOUT", "120")
            .arg("-m")
            .arg(&img.path)
            .arg(&c.name),
        libc::SIGINT,
    );
    assert_eq!(code, Some(128 + libc::SIGINT), "{err}");
    assert!(err.contains("stopped by SIGINT"), "{err}");
    assert!(took < Duration::from_secs(5), "ended {took:?} after SIGINT");
    assert_no_loop_device(&img.path);
    c.assert_clean();

    // Once the holder lets go, the same image works.
    drop(c);
    let free = thin_container("lock-free");
    let out = output(
        cartinject()
            .arg(&img.path)
            .arg(&free.name)
            .args(["--", "true"]),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_no_loop_device(&img.path);
    free.assert_clean();
}
