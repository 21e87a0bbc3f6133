//! Hardening of `cartinject` against a hostile container ("no way back into the host"),
//! against real containers under a real Docker daemon. Needs root, Docker, mke2fs, musl-gcc
//! (or gcc), busybox-static and util-linux's `setpriv` and `nsenter`; `tests/run` installs
//! and starts them.
//!
//! The central test runs `tests/fixtures/hostile.c` as PID 1 of a container: it loops over
//! every process that appears in its PID namespace and tries to reach the host through it
//! (`/proc/P/exe`, `/proc/P/fd/*` by open, readlink and `pidfd_getfd`, `cwd`, `root`,
//! `PTRACE_ATTACH`, `PTRACE_SEIZE`) while cartinject injects sessions, `--match-container`
//! sessions, a pty session and `-m`/`-u` into it; the [`Judge`] then decides from the host's
//! side whether anything it reached lies outside the container. It runs once in a default
//! container and once in one with `--cap-add SYS_PTRACE`, with `CC_HOSTILE_SESSIONS`
//! sessions each (30 here; `tests/bench/inject_hardening.sh` runs 200).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crashcart_tests::hardening::{
    Figures, HostileContainer, Judge, Verdict, count, hardening_image,
};
use crashcart_tests::*;

const LONG: Duration = Duration::from_secs(60);

/// The device number of the terminal whose master is `master` (`TIOCGPTN`: UNIX98 pty
/// slaves are majors 136-143, minor = N % 256, `devices.txt`).
fn pty_rdev(master: &File) -> (u32, u32) {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into `n`, valid for the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    assert_eq!(rc, 0, "TIOCGPTN: {}", std::io::Error::last_os_error());
    (136 + n / 256, n % 256)
}

/// Bytes waiting in the input queue of the terminal whose master is `master`.
fn pending_input(master: &File) -> i32 {
    let (major, minor) = pty_rdev(master);
    let n = (major - 136) * 256 + minor;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/dev/pts/{n}"))
        .expect("open the caller's terminal");
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD (TIOCINQ) writes one int into `queued`, valid for the call.
    let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::FIONREAD, &mut queued) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    queued
}

/// `cartinject --match-container IMAGE TARGET -- COMMAND...`, run to completion.
fn match_container(img: &TestImage, target: &str, command: &[&str]) -> Output {
    output(
        cartinject()
            .arg("--match-container")
            .arg(&img.path)
            .arg(target)
            .arg("--")
            .args(command),
    )
}

/// Injects into the hostile container `h` over and over (sessions with host files as stdin
/// and stdout, sessions with pipes, `--match-container` sessions, `-m`/`-u`, one session on
/// a pty), then judges what the hostile program reached.
fn attack(label: &str, h: &HostileContainer, img: &TestImage) -> Figures {
    let c = &h.container;
    let sessions = count("CC_HOSTILE_SESSIONS", 30);
    let scratch = img.sibling("host-files");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let host_input = scratch.join("input.txt");
    std::fs::write(&host_input, "a file of the host\n").expect("write");
    for i in 0..sessions {
        match i % 3 {
            // Files of the host as stdin and stdout.
            0 => {
                let out = scratch.join(format!("out-{i}.txt"));
                let status = inject(img, &c.name, &["sh", "-c", "cat; sleep 0.05"])
                    .stdin(File::open(&host_input).expect("open"))
                    .stdout(File::create(&out).expect("create"))
                    .stderr(Stdio::null())
                    .status()
                    .expect("run cartinject");
                assert!(status.success(), "session {i}: {status:?}");
                assert_eq!(
                    std::fs::read_to_string(&out).expect("read"),
                    "a file of the host\n"
                );
            }
            1 => {
                let out = output(&mut inject(img, &c.name, &["sleep", "0.05"]));
                assert!(out.status.success(), "session {i}: {}", stderr(&out));
            }
            _ => {
                let out = match_container(img, &c.name, &["sleep", "0.05"]);
                assert!(out.status.success(), "session {i}: {}", stderr(&out));
            }
        }
        if i % 5 == 0 {
            ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
            ok(cartinject().arg("-u").arg(&c.name));
        }
    }
    // One session on a terminal: the command holds the session's pty.
    let mut pty = Pty::open(24, 80);
    let mut cmd = inject(img, &c.name, &["sh", "-c", "sleep 0.3; echo pty-done"]);
    let mut child = pty.spawn(&mut cmd);
    let text = pty.read_until("pty-done", LONG);
    assert!(wait_with_timeout(&mut child, LONG).success(), "{text}");

    // The judge reads the container's mounts and files: before the container ends.
    let judge = Judge::new(c, &bin("cartinject"), Some(pty_rdev(&pty.master)));
    let log = h.stop();
    let figures = Figures::of(&log, &judge);
    println!("{}", figures.line(label));
    img.assert_no_loop_device();
    c.assert_clean();
    figures
}

#[test]
fn hostile_processes_never_reach_the_host() {
    require_root();
    let img = TestImage::copy_of(hardening_image());
    for (label, args) in [
        ("default container", &[][..]),
        (
            "container with CAP_SYS_PTRACE",
            &["--cap-add", "SYS_PTRACE"][..],
        ),
    ] {
        let test = if args.is_empty() {
            "hostile"
        } else {
            "hostile-ptrace"
        };
        let h = HostileContainer::start(test, args);
        let figures = attack(label, &h, &img);
        assert!(
            figures.bad.is_empty(),
            "{label}: the hostile program reached the host: {:#?}",
            figures.bad
        );
        // The program did look at our processes: the debug commands of --match-container
        // sessions have the container's own power, and in the CAP_SYS_PTRACE container
        // every process is open to it.
        assert!(
            figures.successes.get("exe").copied().unwrap_or(0) > 0,
            "{label}: the hostile program never reached a session's process: {}",
            figures.line(label)
        );
        if args.is_empty() {
            // Without CAP_SYS_PTRACE nothing of a cartinject process is reachable: it is
            // non-dumpable, and has more capabilities than the container, until its exec.
            assert_eq!(
                figures.on_cartinject,
                0,
                "{}: {:#?}",
                figures.line(label),
                figures.cartinject_lines
            );
        }
    }
}

#[test]
fn the_judge_flags_a_process_that_holds_the_host() {
    // The negative control: a process in the container's PID namespace with the host's
    // root, working directory, binary and an fd of the cartinject binary, dumpable and
    // without capabilities, so that even the default container reaches it. The judge
    // must call that an escape, or the test above proves nothing.
    require_root();
    require_tool("setpriv", "util-linux");
    let h = HostileContainer::start("hostile-control", &[]);
    let c = &h.container;
    let binary = bin("cartinject");
    let mut leaky = Command::new("nsenter")
        .args(["-t", &c.pid.to_string(), "-p", "--"])
        .args([
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--",
            "sleep",
            "1.5",
        ])
        .stdin(File::open(&binary).expect("open cartinject"))
        .spawn()
        .expect("run nsenter");
    assert!(wait_with_timeout(&mut leaky, LONG).success());
    let judge = Judge::new(c, &binary, None);
    let log = h.stop();
    let figures = Figures::of(&log, &judge);
    println!("{}", figures.line("negative control"));
    let reasons: Vec<String> = figures
        .bad
        .iter()
        .filter_map(|(v, _)| match v {
            Verdict::Escape(why) => Some(why.clone()),
            _ => None,
        })
        .collect();
    for needle in [
        "the host's cartinject binary",
        "a directory outside the container's root",
        "outside its tree",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "the judge missed {needle:?}: {reasons:#?}\n{}",
            figures.line("negative control")
        );
    }
}

/// Lines `N -> TARGET` of an `ls -l /proc/self/fd` listing.
fn fd_links(listing: &str) -> Vec<(u32, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let (left, target) = l.split_once(" -> ")?;
            let fd = left.split_whitespace().last()?.parse().ok()?;
            Some((fd, target.trim().to_string()))
        })
        .collect()
}

const INSIDE_CHECK: &str = "ls -l /proc/$$/fd; echo cwd=$(readlink /proc/$$/cwd); \
    echo root=$(readlink /proc/$$/root); grep PPid /proc/$$/status; \
    for p in /proc/[0-9]*; do echo exe=$(readlink $p/exe); done";

fn assert_holds_nothing_of_the_host(text: &str, terminal: bool) {
    let links = fd_links(text);
    // ls's own directory fd (3, an unreadable link) aside, only 0, 1 and 2.
    let fds: Vec<u32> = links.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(fds, vec![0, 1, 2], "{text}");
    for (fd, target) in &links {
        if terminal {
            assert!(target.starts_with("/dev/pts/"), "fd {fd} -> {target}");
        } else {
            assert!(target.starts_with("pipe:["), "fd {fd} -> {target}: {text}");
        }
    }
    assert!(
        text.contains("cwd=/\n") || text.contains("cwd=/\r\n"),
        "{text}"
    );
    assert!(
        text.contains("root=/\n") || text.contains("root=/\r\n"),
        "{text}"
    );
    assert!(text.contains("PPid:\t0"), "the parent is visible: {text}");
    let binary = bin("cartinject").to_string_lossy().into_owned();
    for line in text.lines().filter(|l| l.starts_with("exe=")) {
        assert!(
            !line.contains(&binary) && !line.contains("cartinject"),
            "a process of the container runs cartinject: {line}"
        );
    }
}

#[test]
fn a_session_holds_no_fd_cwd_or_root_of_the_host() {
    let c = thin_container("nohostfd");
    let img = TestImage::fixture();
    let dir = img.sibling("files");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let input = dir.join("in.txt");
    std::fs::write(&input, "x\n").expect("write");
    for legacy in [false, true] {
        // stdin and stdout files of the host, stderr /dev/null: all replaced by pipes.
        let out = dir.join("out.txt");
        // The flag goes before `--`: after it, it would be an argument of the command.
        let mut cmd = cartinject();
        if legacy {
            cmd.arg("--legacy-mount");
        }
        cmd.arg(&img.path)
            .arg(&c.name)
            .args(["--", "sh", "-c", INSIDE_CHECK]);
        let status = cmd
            .stdin(File::open(&input).expect("open"))
            .stdout(File::create(&out).expect("create"))
            .stderr(Stdio::null())
            .status()
            .expect("run cartinject");
        assert!(status.success());
        assert_holds_nothing_of_the_host(&std::fs::read_to_string(&out).expect("read"), false);
    }
    // On a terminal: the session's own new pty, and nothing else.
    let mut pty = Pty::open(24, 80);
    let mut cmd = inject(
        &img,
        &c.name,
        &["sh", "-c", &format!("{INSIDE_CHECK}; echo END")],
    );
    let mut child = pty.spawn(&mut cmd);
    let text = pty.read_until("END", LONG).replace('\r', "");
    assert!(wait_with_timeout(&mut child, LONG).success(), "{text}");
    assert_holds_nothing_of_the_host(&text, true);
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn the_image_is_read_only_nosuid_and_nodev() {
    require_root();
    let c = Container::start("rosuid", fat_image());
    let img = TestImage::copy_of(hardening_image());
    let text = ok(&mut inject(
        &img,
        &c.name,
        &[
            "sh",
            "-c",
            "ls -l /dev/crashcart/bin/suid-hostile /dev/crashcart/dev/null; \
             hostile as 1000 /dev/crashcart/bin/suid-hostile ids; \
             hostile open /dev/crashcart/dev/null; hostile open /dev/crashcart/dev/mem; \
             hostile write /dev/crashcart/new-file; grep ' /dev/crashcart ' /proc/self/mountinfo",
        ],
    ));
    // The image really holds a setuid-root binary and a device node...
    assert!(text.contains("-rwsr-xr-x"), "{text}");
    assert!(
        text.contains("crw-r--r--") || text.contains("crw-"),
        "{text}"
    );
    // ...which give nothing: the set-user-ID bit is ignored, the node cannot be opened, and
    // nothing can be written.
    assert!(text.contains("uid=1000 euid=1000"), "setuid worked: {text}");
    assert_eq!(text.matches("open=Permission denied").count(), 2, "{text}");
    assert!(text.contains("write=Read-only file system"), "{text}");
    let mountinfo = text.lines().last().unwrap_or_default();
    for option in ["ro", "nosuid", "nodev"] {
        assert!(
            mountinfo.split([' ', ',']).any(|o| o == option),
            "{option} missing: {mountinfo}"
        );
    }
    // The same through -m and docker exec.
    ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    let text = c.exec(&[
        "/dev/crashcart/bin/hostile",
        "write",
        "/dev/crashcart/new-file",
    ]);
    assert!(text.contains("write=Read-only file system"), "{text}");
    let text = ok(Command::new("docker").args([
        "exec",
        "--user",
        "1000",
        &c.name,
        "/dev/crashcart/bin/suid-hostile",
        "ids",
    ]));
    assert!(text.contains("uid=1000 euid=1000"), "{text}");
    ok(cartinject().arg("-u").arg(&c.name));
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn tiocsti_lands_in_the_sessions_own_pty() {
    require_root();
    let c = Container::start("tiocsti", fat_image());
    let img = TestImage::copy_of(hardening_image());
    let mut pty = Pty::open(24, 80);
    let caller = pty_rdev(&pty.master);
    let mut cmd = inject(&img, &c.name, &[]);
    cmd.env("TERM", "dumb");
    let mut child = pty.spawn(&mut cmd);
    let prompt = pty.read_until("# ", LONG);
    assert!(prompt.contains("crashcart"), "{prompt:?}");

    // Pushed into the terminal of the session, the line runs in the session's shell.
    pty.master
        .write_all(b"hostile tiocsti 'echo INJ-$((6*7))'\r")
        .expect("type");
    let text = pty.read_until("INJ-42\r\n", LONG);
    assert!(text.contains("tiocsti=OK"), "{text:?}");
    assert!(text.contains("INJ-42\r\n"), "{text:?}");
    let tty = text
        .split("tty=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    assert!(!tty.is_empty(), "{text:?}");
    assert_ne!(
        tty,
        format!("{}:{}", caller.0, caller.1),
        "the session's terminal is the caller's"
    );

    // Pushed just before the session ends, the line dies with the session's pty: nothing
    // reaches the caller's terminal.
    pty.master
        .write_all(b"hostile tiocsti 'echo ESCAPED'; exit 0\r")
        .expect("type");
    let status = wait_with_timeout(&mut child, LONG);
    assert!(status.success(), "{status:?}");
    let after = pty.read_until("never printed", Duration::from_millis(500));
    // The pushed line is echoed by the session's terminal; it must never run.
    assert!(!after.split("\r\n").any(|l| l == "ESCAPED"), "{after:?}");
    assert_eq!(
        pending_input(&pty.master),
        0,
        "input waits in the caller's terminal"
    );
    img.assert_no_loop_device();
    c.assert_clean();
}

/// `KEY=value` lines of a probe's output.
fn probe_result<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {text}"))
}

fn status_mask(text: &str, key: &str) -> u64 {
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:\t")))
        .unwrap_or_else(|| panic!("no {key} in {text}"));
    u64::from_str_radix(value.trim(), 16).expect("a capability mask")
}

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const PROBE: &str = "cat /proc/self/status; hostile probe";

#[test]
fn match_container_gives_the_session_the_workloads_power_only() {
    require_root();
    let help = ok(cartinject().arg("--help"));
    assert!(
        help.contains("--match-container") && help.contains("ptrace, raw sockets"),
        "{help}"
    );
    let img = TestImage::copy_of(hardening_image());
    let c = Container::start("match", fat_image());
    let theirs = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).expect("status");

    // Default (the debug profile): the power a debugger needs, none of Docker's seccomp
    // profile, and no CAP_SYS_ADMIN, so unshare(CLONE_NEWUTS) is refused.
    let out = output(&mut inject(&img, &c.name, &["sh", "-c", PROBE]));
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    let eff = status_mask(&text, "CapEff");
    assert!(
        eff & CAP_SYS_ADMIN == 0 && eff & CAP_NET_ADMIN != 0,
        "{text}"
    );
    assert!(text.contains("Seccomp:\t0"), "{text}");
    for key in ["rawsocket", "ptrace", "keyctl"] {
        assert_eq!(probe_result(&text, key), "OK", "{key}: {text}");
    }
    assert_eq!(
        probe_result(&text, "unshare"),
        "Operation not permitted",
        "{text}"
    );

    // --profile sysadmin: everything, with a warning.
    let mut sysadmin = cartinject();
    sysadmin
        .args(["--profile", "sysadmin"])
        .arg(&img.path)
        .arg(&c.name)
        .args(["--", "sh", "-c", PROBE]);
    let out = output(&mut sysadmin);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: --profile sysadmin"),
        "{}",
        stderr(&out)
    );
    assert_ne!(status_mask(&text, "CapEff") & CAP_SYS_ADMIN, 0, "{text}");
    for key in ["rawsocket", "ptrace", "keyctl", "unshare"] {
        assert_eq!(probe_result(&text, key), "OK", "{key}: {text}");
    }

    // --match-container: the container's capabilities and Docker's default profile.
    let out = match_container(&img, &c.name, &["sh", "-c", PROBE]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{err}");
    for key in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(
            status_mask(&text, key),
            status_mask(&theirs, key),
            "{key}: {text}"
        );
    }
    let eff = status_mask(&text, "CapEff");
    assert!(
        eff & CAP_SYS_ADMIN == 0 && eff & CAP_NET_ADMIN == 0,
        "{text}"
    );
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert_eq!(
        probe_result(&text, "keyctl"),
        "Operation not permitted",
        "{text}"
    );
    assert_eq!(
        probe_result(&text, "unshare"),
        "Operation not permitted",
        "{text}"
    );
    assert_eq!(
        probe_result(&text, "rawsocket"),
        "OK",
        "Docker keeps NET_RAW: {text}"
    );
    // What gives no more than the workload (no LSM here) is said only with -v.
    assert!(!err.contains("no LSM"), "{err}");

    // A workload with its own user, no_new_privs and fewer capabilities.
    let r = Container::start_with(
        &unique("match-user"),
        fat_image(),
        &[
            "--user",
            "1000:1000",
            "--security-opt",
            "no-new-privileges",
            "--cap-drop",
            "NET_RAW",
        ],
    );
    let out = match_container(&img, &r.name, &["sh", "-c", PROBE]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("Uid:\t1000\t1000\t1000\t1000"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert_eq!(status_mask(&text, "CapEff"), 0, "{text}");
    assert_eq!(
        probe_result(&text, "rawsocket"),
        "Operation not permitted",
        "{text}"
    );
    assert_eq!(
        probe_result(&text, "keyctl"),
        "Operation not permitted",
        "{text}"
    );

    // A container with CAP_SYS_PTRACE: the session gets the workload's power, and says so.
    let p = Container::start_with(
        &unique("match-ptrace"),
        fat_image(),
        &["--cap-add", "SYS_PTRACE"],
    );
    let out = output(&mut inject(&img, &p.name, &["true"]));
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("hold CAP_SYS_PTRACE") && stderr(&out).contains("--profile match"),
        "{}",
        stderr(&out)
    );
    img.assert_no_loop_device();
    for container in [&c, &r, &p] {
        container.assert_clean();
    }
}
