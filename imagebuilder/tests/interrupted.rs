//! cartbuild killed while a package builds: nothing of the build survives it. The
//! recipe's script starts two `sleep`s whose argument (`1000.<digits>`) is unique to
//! the test, waits until they run, kills the real cartbuild, and looks for them in
//! /proc. Needs musl-tools (the toolchain) and user namespaces (the sandbox).

mod common;

use std::fs;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A `sleep` argument no other process has: `1000.<pid><nanoseconds>`.
fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("1000.{}{nanos:09}", std::process::id())
}

/// The processes whose command line contains `marker`.
fn with_marker(marker: &str) -> Vec<i32> {
    processes(|proc| {
        fs::read(proc.join("cmdline"))
            .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == marker.as_bytes()))
    })
}

/// Polls `cond` every 50 ms for up to `limit`; whether it became true.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A recipe whose one package's script runs two `sleep MARKER` (one in the
/// background, as make runs its jobs) and waits for them.
fn sleeping_recipe(env: &Env, server: &Server, marker: &str) -> std::path::PathBuf {
    let src = tarball("sleeper-1", &[("README", b"sleeps\n", 0o644)]);
    let sha = sha256(&src);
    server.route("/sleeper.tar.gz", Route::Serve(src));
    env.write(
        "r.toml",
        &format!(
            r#"[image]
name = "test"
version = "1.0"
epoch = 1700000000

[[package]]
name = "sleeper"
version = "1"
license = "MIT"
urls = ["{}"]
sha256 = "{sha}"
script = """
sleep {marker} &
sleep {marker}
wait
"""
"#,
            server.url("/sleeper.tar.gz")
        ),
    )
}

/// Starts cartbuild on the sleeping recipe and waits until both sleeps run.
fn start_sleeping_build(env: &Env, marker: &str, args: &[&str]) -> Child {
    let server = Server::start();
    let recipe = sleeping_recipe(env, &server, marker);
    let mut child = env
        .command(&recipe)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cartbuild");
    let started = wait_for(Duration::from_secs(120), || with_marker(marker).len() == 2);
    if !started {
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        panic!(
            "the build script's sleeps never showed in /proc:\n{}",
            stderr(&o)
        );
    }
    // The server's thread must outlive the fetch, which is over once the script runs.
    drop(server);
    child
}

/// Asserts that no process with `marker` is left within 5 s; kills any that are
/// (so that a failing test leaves nothing running either).
fn assert_nothing_survives(marker: &str, what: &str) {
    let gone = wait_for(Duration::from_secs(5), || with_marker(marker).is_empty());
    let left = with_marker(marker);
    for pid in &left {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(
        gone,
        "{what}: the build's processes {left:?} (sleep {marker}) survived cartbuild"
    );
}

#[test]
fn sigkill_leaves_no_build_process_behind() {
    let env = Env::new();
    let marker = marker();
    let mut child = start_sleeping_build(&env, &marker, &[]);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_nothing_survives(&marker, "after SIGKILL");
}

/// SIGTERM: the sleeps are gone, cartbuild says why in one line and exits with
/// 128 + 15, and nothing is written beside the image.
fn sigterm_stops_the_build(args: &[&str]) {
    let env = Env::new();
    let marker = marker();
    let child = start_sleeping_build(&env, &marker, args);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_nothing_survives(&marker, "after SIGTERM");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(
        err.trim_end()
            .ends_with("cartbuild: error: interrupted by SIGTERM: builds stopped, nothing written"),
        "{err}"
    );
    assert_no_image(&env);
}

#[test]
fn sigterm_stops_a_sandboxed_build() {
    sigterm_stops_the_build(&[]);
}

#[test]
fn sigterm_stops_a_build_without_sandbox() {
    sigterm_stops_the_build(&["--no-sandbox"]);
}
