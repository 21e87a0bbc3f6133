//! Scale and crashes: many sessions at once from one image, `kill -9` of cartinject at
//! random moments, and a target that exits in the middle of a session. Against real
//! containers under a real Docker daemon, with real loop devices; needs root, Docker,
//! mke2fs and busybox-static (`tests/run` installs and starts them).
//!
//! The counts are the issue's: 20 containers at once (`CC_CONTAINERS`) and 100 `kill -9`
//! trials (`CC_KILL_TRIALS`); `tests/bench/inject_hardening.sh` runs the same tests and
//! prints their `FIGURE` lines. `CC_SEED` replays the random moments of a failed run (each
//! run prints its seed).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crashcart_tests::hardening::count;
use crashcart_tests::*;

const LONG: Duration = Duration::from_secs(60);

/// Processes whose command line names `image` (cartinject and the children it forked).
fn processes_of(image: &Path) -> Vec<i32> {
    let needle = image.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Processes in the PID namespace of `container`'s first process, other than it, that have
/// not ended.
///
/// A zombie is not counted: it runs nothing and holds nothing (no mount, no fd, no loop
/// device). When cartinject is killed, its namespace child dies with it and the command
/// with that; both are orphans of a process in the host's PID namespace, so the kernel hands
/// them to the host's init (the reaper of the dying parent's namespace, not of the
/// container's), and they stay visible in the container's namespace as zombies until that
/// init reaps them, at its own pace (over a second on a loaded CI machine).
fn others_in_container(container: &Container) -> Vec<i32> {
    let ns = |pid: i32| {
        std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .ok()
            .map(|l| l.to_string_lossy().into_owned())
    };
    let Some(theirs) = ns(container.pid) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| pid != container.pid && ns(pid).as_deref() == Some(theirs.as_str()))
                .filter(|&pid| {
                    !matches!(status_field(pid, "State:").chars().next(), Some('Z' | 'X'))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A field of `/proc/PID/status` ("State:" gives "S (sleeping)"), empty if it cannot be read.
fn status_field(pid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// `pids` as "PID name (state)", for a failure message.
fn describe(pids: &[i32]) -> Vec<String> {
    pids.iter()
        .map(|&pid| {
            format!(
                "{pid} {} ({})",
                status_field(pid, "Name:"),
                status_field(pid, "State:")
            )
        })
        .collect()
}

/// Waits (up to `timeout`) until `check` holds; returns whether it did.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A small xorshift generator: the moments need to be random, not cryptographic.
struct Moments(u64);

impl Moments {
    fn new() -> Moments {
        let seed = std::env::var("CC_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos());
                u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(1) | 1
            });
        println!("moments seed: CC_SEED={seed}");
        Moments(seed)
    }

    /// A duration in `[0, limit)`.
    fn below(&mut self, limit: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let micros = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX).max(1);
        Duration::from_micros(self.0 % micros)
    }
}

fn kill9(child: &mut Child) -> bool {
    // SAFETY: kill with the PID of our own child and a valid signal number.
    let rc = unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGKILL) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let status = child.wait().expect("wait");
    std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL)
}

/// Waits for `session` and returns its status and all it wrote to stderr.
fn wait_with_stderr(session: &mut Child) -> (ExitStatus, String) {
    let status = wait_with_timeout(session, LONG);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut session.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    (status, err)
}

#[test]
fn many_containers_at_once_share_one_loop_device() {
    require_root();
    let n = count("CC_CONTAINERS", 20);
    let img = TestImage::fixture();
    let containers: Vec<Container> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| s.spawn(move || Container::start(&format!("scale{i}"), fat_image())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start a container"))
            .collect()
    });

    let started = Instant::now();
    let mut sessions: Vec<(Child, BufReader<std::process::ChildStdout>)> = containers
        .iter()
        .map(|c| {
            let mut child = inject(
                &img,
                &c.name,
                &[
                    "sh",
                    "-c",
                    "echo ready; read line; test -x /dev/crashcart/bin/busybox && echo ok-$line-$CRASHCART_TARGET",
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a session");
            let out = BufReader::new(child.stdout.take().expect("stdout"));
            (child, out)
        })
        .collect();
    for (i, (_, out)) in sessions.iter_mut().enumerate() {
        let mut line = String::new();
        out.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready", "session {i} did not start");
    }
    let all_ready = started.elapsed();

    // All of them running: one loop device for the one image, and no container sees a thing.
    let devices = img.loop_devices();
    assert_eq!(devices.len(), 1, "{devices:?}");
    for c in &containers {
        assert!(c.crashcart_mounts().is_empty(), "{}", c.name);
    }
    let (listed, ours) = img.listed();
    let ours = ours.iter().filter(|p| p["kind"] == "session").count();
    assert_eq!(ours, n, "{listed}");

    let mut succeeded = 0;
    for ((mut child, mut out), c) in sessions.into_iter().zip(&containers) {
        writeln!(child.stdin.as_ref().expect("stdin"), "go").expect("write");
        drop(child.stdin.take());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("read");
        let status = wait_with_timeout(&mut child, LONG);
        assert!(status.success(), "{}: {status:?} {rest}", c.name);
        assert_eq!(rest.trim(), format!("ok-go-{}", c.name));
        succeeded += 1;
    }
    img.assert_no_loop_device();
    for c in &containers {
        c.assert_clean();
    }
    println!(
        "FIGURE scale: {n} containers, {succeeded}/{n} sessions succeeded, all started in {} ms, {} loop device(s) while they ran, 0 left after",
        all_ready.as_millis(),
        devices.len()
    );
}

#[test]
fn kill_9_at_random_moments_leaves_nothing_behind() {
    require_root();
    let trials = count("CC_KILL_TRIALS", 100);
    let c = Container::start("kill9", fat_image());
    let img = TestImage::fixture();

    // How long each kind of injection takes when left alone.
    let timed = |cmd: &mut Command| {
        let t = Instant::now();
        ok(cmd);
        t.elapsed()
    };
    let setup = timed(&mut inject(&img, &c.name, &["true"]));
    let mount = timed(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    ok(cartinject().arg("-u").arg(&c.name));
    img.assert_no_loop_device();
    let mut moments = Moments::new();

    let (mut sessions, mut mounts, mut killed_running) = (0, 0, 0);
    let (mut mounted_before_kill, mut dirs_left) = (0, 0);
    for trial in 0..trials {
        let session = trial % 2 == 0;
        // A session runs `sleep 5`, so that a command that outlived cartinject would still
        // be there when it is looked for; it is killed during its setup or its first
        // moments. A -m is killed at any point of its run, or just after.
        let (mut cmd, limit) = if session {
            sessions += 1;
            (
                inject(&img, &c.name, &["sleep", "5"]),
                setup * 3 / 2 + Duration::from_millis(100),
            )
        } else {
            mounts += 1;
            let mut cmd = cartinject();
            cmd.arg("-m").arg(&img.path).arg(&c.name);
            (cmd, mount * 6 / 5)
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cartinject");
        std::thread::sleep(moments.below(limit));
        if kill9(&mut child) {
            killed_running += 1;
        }

        // Whatever cartinject forked dies with it: nothing of it is left, in the host or in
        // the container.
        assert!(
            eventually(Duration::from_secs(3), || processes_of(&img.path)
                .is_empty()),
            "trial {trial}: processes left: {:?}",
            processes_of(&img.path)
        );
        assert!(
            eventually(Duration::from_secs(3), || others_in_container(&c)
                .is_empty()),
            "trial {trial}: processes left in the container: {:?}",
            describe(&others_in_container(&c))
        );
        // The container has no mount it did not ask for: a session leaves none; a -m leaves
        // its own, if it got that far.
        let mounted = c.crashcart_mounts();
        if session {
            assert!(
                mounted.is_empty(),
                "trial {trial}: a killed session left a mount: {mounted:?}"
            );
        } else {
            assert!(mounted.len() <= 1, "trial {trial}: {mounted:?}");
        }
        // A loop device stays attached exactly while a mount uses it.
        if mounted.is_empty() {
            img.assert_no_loop_device();
        } else {
            mounted_before_kill += 1;
            assert_eq!(img.loop_devices().len(), 1, "trial {trial}");
        }
        // -u takes away whatever a -m left: its mount, or the directory it had made.
        let dir = Path::new(&format!("/proc/{}/root/dev/crashcart", c.pid)).exists();
        if !mounted.is_empty() || dir {
            if mounted.is_empty() {
                dirs_left += 1;
            }
            ok(cartinject().arg("-u").arg(&c.name));
            c.assert_clean();
            img.assert_no_loop_device();
        }
    }
    println!(
        "FIGURE kill9: {trials} trials ({sessions} sessions, {mounts} -m), {killed_running} killed while running; after each: 0 processes left, 0 mounts left by sessions, 0 loop devices without a mount; {mounted_before_kill} -m had mounted and {dirs_left} had left only /dev/crashcart, all taken away by -u"
    );
}

#[test]
fn the_target_exits_in_the_middle_of_a_session() {
    require_root();
    let img = TestImage::fixture();

    // The container's first process exits (status 3): the kernel ends the session with it.
    let c = Container::start_with_command(
        &unique("targetexit"),
        fat_image(),
        &[],
        &[
            "sh",
            "-c",
            "while [ ! -e /stop ]; do sleep 0.05; done; exit 3",
        ],
    );
    let (mut session, _out, line) = spawn_until_first_line(
        inject(&img, &c.name, &["sh", "-c", "echo ready; sleep 100"]).stderr(Stdio::piped()),
    );
    assert_eq!(line.trim(), "ready");
    std::fs::write(format!("/proc/{}/root/stop", c.pid), b"").expect("stop the target");
    let (status, err) = wait_with_stderr(&mut session);
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "{err}");
    assert!(
        err.contains(&format!("the target {} (pid {})", c.name, c.pid))
            && err.contains("exited during the session (exit status 3)"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    img.assert_no_loop_device();
    assert!(eventually(Duration::from_secs(3), || processes_of(
        &img.path
    )
    .is_empty()));

    // A target that is not its namespace's first process: the namespace lives on, and
    // cartinject ends the session.
    let c = Container::start_with_command(
        &unique("targetexit2"),
        fat_image(),
        &[],
        &["sh", "-c", "sleep 1000 & while :; do sleep 1; done"],
    );
    let mut child_pid = None;
    assert!(eventually(Duration::from_secs(10), || {
        child_pid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", c.pid))
            .ok()
            .and_then(|t| {
                t.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
            });
        child_pid.is_some()
    }));
    let target = child_pid.expect("the container's sleep");
    let (mut session, _out, line) = spawn_until_first_line(
        inject(
            &img,
            &target.to_string(),
            &["sh", "-c", "echo ready; exec sleep 101"],
        )
        .stderr(Stdio::piped()),
    );
    assert_eq!(line.trim(), "ready");
    // SAFETY: kill with a PID and a valid signal number.
    assert_eq!(unsafe { libc::kill(target, libc::SIGTERM) }, 0);
    let (status, err) = wait_with_stderr(&mut session);
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "{err}");
    assert!(
        err.contains(&format!("(pid {target}) exited during the session")),
        "{err}"
    );
    img.assert_no_loop_device();
    assert!(eventually(Duration::from_secs(3), || processes_of(
        &img.path
    )
    .is_empty()));
    let session_command = || {
        others_in_container(&c).into_iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x00101\x00")
        })
    };
    assert!(eventually(Duration::from_secs(3), || !session_command()));
    c.assert_clean();
    println!(
        "FIGURE target-exit: the session ended with the target, a one-line message with its status, nothing left"
    );
}
