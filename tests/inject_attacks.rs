//! The attack suite of issue 9 ("a hostile container gains nothing"): one hostile container
//! per attack class, each built from a static C fixture of `tests/fixtures/attacks/`, against
//! real containers under real Docker and containerd. Each test asserts that no code of the
//! container ever runs with the session's power, that no mount of the container changed
//! (its `/proc/PID/mountinfo` before and after, compared line for line), and that every case
//! either works safely or refuses with one line and exit status 125. Every problem a test
//! finds is reported at its end, all of them, so that one run shows each part of an attack
//! that still works.
//!
//! Needs root, Docker, containerd's `ctr`, musl-gcc (or gcc), busybox-static and bash-static;
//! the test of the debug tools needs the net image (`CRASHCART_NET_IMAGE`, else built once).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crashcart_tests::attacks::{
    Caps, MountSnapshot, Problems, attack_container, check_no_control_bytes, children, cmdline,
    debug_profile_problems, is_one_line_refusal, names, session, shown, stderr_lines,
    wait_for_file,
};
use crashcart_tests::runtimes::{CtrTask, hex_id};
use crashcart_tests::*;

const LONG: Duration = Duration::from_secs(60);

/// What the chroot fixture's fake tools print when they run.
const FAKE: &str = "FAKE-CRASHCART-TOOL";

/// Runs `cmd` to completion (stdin closed) and returns it with its output, for messages.
fn run(mut cmd: Command) -> (Command, Output) {
    let out = output(&mut cmd);
    (cmd, out)
}

// ---------------------------------------------------------------------------------------
// 1. A chrooted PID 1 with a fake /dev/crashcart in its root.
// ---------------------------------------------------------------------------------------

/// The chroot container: PID 1 chrooted into `/j`, which holds fake crashcart tools, and the
/// helper it forked first, which keeps the container's real root.
struct Chrooted {
    c: Container,
    helper: i32,
}

impl Chrooted {
    fn start(test: &str) -> Chrooted {
        let c = attack_container(test, "chroot", &["--pid1"], &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let helper = loop {
            if let Some(&h) = children(c.pid).first() {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "the chroot fixture forked no helper"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        wait_for_file(
            std::path::Path::new(&format!("/proc/{helper}/root/j/ready")),
            "the chroot fixture",
        );
        // The attack is in place: PID 1's root is /j, where the fakes are.
        let root = std::fs::read_link(format!("/proc/{}/root", c.pid)).expect("root link");
        assert_eq!(root.to_string_lossy(), "/j", "PID 1 did not chroot");
        assert!(
            std::path::Path::new(&format!("/proc/{helper}/root/j/dev/crashcart/bin/bash"))
                .is_file(),
            "the fake bash is missing"
        );
        Chrooted { c, helper }
    }

    /// Every line a fake tool or a planted rc file wrote, wherever its root was when it ran:
    /// the container's real `/pwned`, `/j/pwned` (`/pwned` seen from the chroot), and
    /// `/j/j/pwned` (`/j/pwned` seen from the chroot). Removes them, so that the next call
    /// shows only what ran since.
    fn take_pwned(&self) -> Vec<String> {
        ["pwned", "j/pwned", "j/j/pwned"]
            .iter()
            .flat_map(|f| {
                let path = format!("/proc/{}/root/{f}", self.helper);
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let _ = std::fs::remove_file(&path);
                text.lines()
                    .map(|l| format!("/{f}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Judges one outcome of a session into the chroot container: it refused in one line, or it
/// worked and `worked` (the command's stdout) holds; never a fake tool's output.
fn judge_chroot_session(
    problems: &mut Problems,
    cmd: &Command,
    out: &Output,
    worked: impl FnOnce(&str) -> bool,
) {
    let all = format!("{}{}", stdout(out), stderr(out));
    if all.contains(FAKE) {
        problems.push(format!(
            "a fake tool of the container ran in the session: {}",
            shown(cmd, out)
        ));
        return;
    }
    if is_one_line_refusal(out) {
        return;
    }
    problems.check(out.status.success() && worked(&stdout(out)), || {
        format!(
            "neither a working session nor a one-line refusal: {}",
            shown(cmd, out)
        )
    });
}

#[test]
fn a_chrooted_pid_1_never_gets_its_fake_tools_run() {
    let ch = Chrooted::start("attack-chroot");
    let c = &ch.c;
    let img = TestImage::fixture();
    let mounts = MountSnapshot::take(ch.helper);
    let pid1_mounts = MountSnapshot::take(c.pid);
    let mut problems = Problems::new();
    for legacy in [false, true] {
        let flags: &[&str] = if legacy { &["--legacy-mount"] } else { &[] };
        let mode = if legacy { " (--legacy-mount)" } else { "" };

        let (cmd, out) = run(session(&img, &c.name, flags, &["true"]));
        judge_chroot_session(&mut problems, &cmd, &out, |_| true);

        let (cmd, out) = run(session(&img, &c.name, flags, &["sh", "-c", "echo ok"]));
        judge_chroot_session(&mut problems, &cmd, &out, |text| text == "ok\n");

        // The image's own tools, not the fakes (which are only a few names, and print FAKE).
        let (cmd, out) = run(session(
            &img,
            &c.name,
            flags,
            &["/dev/crashcart/bin/busybox", "ls", "/dev/crashcart/bin"],
        ));
        judge_chroot_session(&mut problems, &cmd, &out, |text| {
            let tools: Vec<&str> = text.lines().collect();
            ["bash", "busybox", "mkdir", "sleep", "wget"]
                .iter()
                .all(|t| tools.contains(t))
        });

        // The image's shell on a terminal, left with `exit`.
        let mut pty = Pty::open(24, 80);
        let mut cmd = session(&img, &c.name, flags, &[]);
        cmd.env("TERM", "dumb");
        let mut child = pty.spawn(&mut cmd);
        let mut text = pty.read_until("# ", Duration::from_secs(20));
        let _ = pty.master.write_all(b"exit\r");
        let status = wait_with_timeout(&mut child, LONG);
        text.push_str(&pty.read_until("\u{0}never", Duration::from_millis(300)));
        problems.check(!text.contains(FAKE), || {
            format!("the pty session{mode} ran a fake tool of the container: {text:?}")
        });
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let refused =
            status.code() == Some(125) && lines.len() == 1 && lines[0].starts_with("cartinject: ");
        problems.check(
            refused || (status.success() && text.contains("crashcart")),
            || {
                format!(
                    "the pty session{mode} neither showed the image's prompt and ended with \
                     `exit` nor refused in one line: {status:?} {text:?}"
                )
            },
        );

        let pwned = ch.take_pwned();
        problems.check(pwned.is_empty(), || {
            format!(
                "code of the container ran in sessions{mode} (a fake tool or rc file planted in \
                 the chroot's /dev/crashcart): {pwned:#?}"
            )
        });
        mounts.check_unchanged(&mut problems, &format!("the sessions{mode}"));
        pid1_mounts.check_unchanged(&mut problems, &format!("the sessions{mode} (PID 1's view)"));
    }
    img.assert_no_loop_device();
    let left = crashcart_mounts(ch.helper);
    problems.check(left.is_empty(), || format!("mounts left behind: {left:?}"));
    problems.check(
        !std::path::Path::new(&format!("/proc/{}/root/dev/crashcart", ch.helper)).exists(),
        || "a /dev/crashcart was left in the container's real root".to_string(),
    );
    problems.finish("chrooted PID 1 with a fake /j/dev/crashcart");
}

// ---------------------------------------------------------------------------------------
// 2. The profiles' capability sets, read inside sessions.
// ---------------------------------------------------------------------------------------

/// The capability sets of `cat /proc/self/status` run in a session with `flags`.
fn caps_in_session(
    img: &TestImage,
    target: &str,
    flags: &[&str],
) -> (Command, Output, Option<Caps>) {
    let (cmd, out) = run(session(img, target, flags, &["cat", "/proc/self/status"]));
    let caps = out
        .status
        .success()
        .then(|| Caps::parse(&stdout(&out)))
        .flatten();
    (cmd, out, caps)
}

fn check_profiles(problems: &mut Problems, label: &str, c: &Container, img: &TestImage) {
    let target = Caps::of_pid(c.pid);
    let operator = Caps::of_pid(i32::try_from(std::process::id()).expect("pid"));
    let mounts = MountSnapshot::take(c.pid);

    // debug, by name and as the default.
    for flags in [&[][..], &["--profile", "debug"][..]] {
        let (cmd, out, caps) = caps_in_session(img, &c.name, flags);
        let line = cmdline(&cmd);
        let Some(caps) = caps else {
            problems.push(format!("{label}: no session: {}", shown(&cmd, &out)));
            continue;
        };
        for p in debug_profile_problems(&caps) {
            problems.push(format!("{label}: `{line}`: {p} ({caps})"));
        }
        check_no_control_bytes(problems, &format!("{label}: `{line}`"), &out.stderr);
    }

    // match, by name and by its old flag: exactly the target's sets.
    for flags in [&["--profile", "match"][..], &["--match-container"][..]] {
        let (cmd, out, caps) = caps_in_session(img, &c.name, flags);
        let line = cmdline(&cmd);
        match caps {
            Some(caps) => problems.check(caps == target, || {
                format!(
                    "{label}: `{line}`: the session's sets are not the target's:\n  session {caps}\n  \
                     target  {target}\n  extra: {}, missing: {}",
                    names(caps.any() & !target.any()),
                    names(target.any() & !caps.any())
                )
            }),
            None => problems.push(format!("{label}: no session: {}", shown(&cmd, &out))),
        }
    }

    // sysadmin: everything the operator has, and one line saying so.
    let (cmd, out, caps) = caps_in_session(img, &c.name, &["--profile", "sysadmin"]);
    let line = cmdline(&cmd);
    match caps {
        Some(caps) => {
            let full = operator.bnd;
            problems.check(
                caps.bnd == full && caps.prm == full && caps.eff == full,
                || {
                    format!(
                        "{label}: `{line}`: not the full set {full:016x}: {caps} (missing {})",
                        names(full & !caps.eff)
                    )
                },
            );
            let lines = stderr_lines(&out);
            problems.check(
                lines.len() == 1 && lines[0].to_lowercase().contains("warning"),
                || format!("{label}: `{line}`: not one warning line: {lines:?}"),
            );
        }
        None => problems.push(format!("{label}: no session: {}", shown(&cmd, &out))),
    }
    mounts.check_unchanged(problems, &format!("the {label} sessions"));
}

#[test]
fn each_profile_has_exactly_its_capabilities() {
    require_root();
    let img = TestImage::fixture();
    let mut problems = Problems::new();
    let fat = Container::start("attack-profile-fat", fat_image());
    check_profiles(&mut problems, "default Docker container", &fat, &img);
    let thin = thin_container("attack-profile-thin");
    check_profiles(&mut problems, "thin container", &thin, &img);
    img.assert_no_loop_device();
    fat.assert_clean();
    thin.assert_clean();
    problems.finish("capability profiles");
}

/// `tcpdump -i lo -c 1` in a session with `flags` captures the SYN of a request to the thin
/// server; returns a problem, if any.
fn tcpdump_captures(img: &TestImage, c: &Container, flags: &[&str]) -> Option<String> {
    let cmd = session(img, &c.name, flags, &TCPDUMP_ONE_SYN);
    let line = cmdline(&cmd);
    match tcpdump_one_request(cmd, c.pid, LONG) {
        Err(e) => Some(format!("`{line}`: {e}")),
        Ok(Capture {
            status,
            text,
            reply,
        }) => (!(status.success()
            && text.contains("127.0.0.1.80: Flags [S]")
            && reply.contains("hello")))
        .then(|| format!("`{line}`: tcpdump did not capture the request: {status:?} {text:?}")),
    }
}

#[test]
fn the_debug_profile_still_runs_the_debuggers() {
    let c = thin_container("attack-debug-tools");
    let img = TestImage::copy_of(net_image());
    let mounts = MountSnapshot::take(c.pid);
    let mut problems = Problems::new();
    for flags in [&[][..], &["--profile", "debug"][..]] {
        let (cmd, out) = run(session(&img, &c.name, flags, &["cat", "/proc/self/status"]));
        let line = cmdline(&cmd);
        match Caps::parse(&stdout(&out)) {
            Some(caps) => {
                for p in debug_profile_problems(&caps) {
                    problems.push(format!("`{line}`: {p} ({caps})"));
                }
            }
            None => problems.push(format!("no session: {}", shown(&cmd, &out))),
        }

        let (cmd, out) = run(session(&img, &c.name, flags, &["strace", "-f", "true"]));
        problems.check(
            out.status.success() && stderr(&out).contains("execve("),
            || format!("strace -f true does not work: {}", shown(&cmd, &out)),
        );

        // A ptrace attach to the workload.
        let (cmd, out) = run(session(
            &img,
            &c.name,
            flags,
            &[
                "sh",
                "-c",
                "strace -p 1 -e trace=accept,accept4 & s=$!; sleep 1; kill -INT $s; wait $s",
            ],
        ));
        problems.check(stderr(&out).contains("Process 1 attached"), || {
            format!("strace -p 1 cannot attach: {}", shown(&cmd, &out))
        });

        let (cmd, out) = run(session(&img, &c.name, flags, &["lsof", "-p", "1"]));
        problems.check(
            out.status.success() && stdout(&out).contains("httpd"),
            || format!("lsof -p 1 does not work: {}", shown(&cmd, &out)),
        );

        if let Some(p) = tcpdump_captures(&img, &c, flags) {
            problems.push(p);
        }
    }
    mounts.check_unchanged(&mut problems, "the debug sessions");
    img.assert_no_loop_device();
    c.assert_clean();
    problems.finish("debuggers under the debug profile");
}

// ---------------------------------------------------------------------------------------
// 3. A container with CAP_SYS_PTRACE whose PID 1 seizes every new process.
// ---------------------------------------------------------------------------------------

/// One line of the seizer's log: what a process of the container held when it was seen.
#[derive(Debug)]
struct Seen {
    seized: bool,
    line: String,
    caps: Caps,
}

fn parse_seizer_log(text: &str) -> Vec<Seen> {
    text.lines()
        .filter(|l| l.starts_with("SEEN ") || l.starts_with("SEIZE "))
        .filter_map(|l| {
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
            };
            Some(Seen {
                seized: l.starts_with("SEIZE "),
                line: l.to_string(),
                caps: Caps {
                    inh: field("inh=")?,
                    prm: field("prm=")?,
                    eff: field("eff=")?,
                    bnd: field("bnd=")?,
                    amb: field("amb=")?,
                },
            })
        })
        .collect()
}

/// Whether stderr says the session got the `match` power because of the target's ptrace:
/// one line that names ptrace and the match profile or power (not merely a suggestion of
/// `--match-container`, nor the note that there is no LSM profile to match).
fn says_match_power(out: &Output) -> bool {
    stderr_lines(out).iter().any(|l| {
        let l = l.to_lowercase();
        l.contains("ptrace")
            && l.contains("match")
            && (l.contains("profile") || l.contains("power"))
    })
}

#[test]
fn a_ptrace_container_never_sees_more_power_than_its_own() {
    let c = attack_container(
        "attack-seizer",
        "seizer",
        &["/seize.log"],
        &["--cap-add", "SYS_PTRACE"],
    );
    let log = std::path::PathBuf::from(format!("/proc/{}/root/seize.log", c.pid));
    let first = wait_for_file(&log, "the seizer");
    assert!(first.starts_with("READY"), "{first}");
    let own = Caps::of_pid(c.pid);
    assert!(
        own.eff & crashcart_tests::attacks::bit(19) != 0,
        "the container has no CAP_SYS_PTRACE: {own}"
    );
    let img = TestImage::fixture();
    let mounts = MountSnapshot::take(c.pid);
    let mut problems = Problems::new();
    let sessions = hardening::count("CC_ATTACK_SESSIONS", 50);
    let mut said_match = 0;
    for i in 0..sessions {
        let command: &[&str] = if i % 2 == 0 {
            &["true"]
        } else {
            &["sh", "-c", "true"]
        };
        let (cmd, out) = run(session(&img, &c.name, &[], command));
        problems.check(out.status.success(), || {
            format!("session {i} failed: {}", shown(&cmd, &out))
        });
        if says_match_power(&out) {
            said_match += 1;
        } else if said_match == i {
            problems.push(format!(
                "session {i} did not say it used the match power: {:?}",
                stderr(&out)
            ));
        }
    }
    problems.check(said_match == sessions, || {
        format!("{said_match} of {sessions} sessions said they used the match power")
    });
    // Let the seizer finish its pass over the last session's processes.
    std::thread::sleep(Duration::from_millis(500));
    let records = parse_seizer_log(&std::fs::read_to_string(&log).expect("read the log"));
    let mut escalated: Vec<String> = records
        .iter()
        .filter_map(|r| {
            let extra = (r.caps.eff & !own.eff)
                | (r.caps.prm & !own.prm)
                | (r.caps.bnd & !own.bnd)
                | ((r.caps.inh | r.caps.amb) & !own.bnd);
            (extra != 0).then(|| format!("{} -- beyond PID 1's: {}", r.line, names(extra)))
        })
        .collect();
    // Seized processes first, and among them cartinject's own before their exec.
    escalated.sort_by_key(|l| {
        (
            !l.starts_with("SEIZE"),
            !l.contains("exe=/memfd:cartinject"),
        )
    });
    problems.check(escalated.is_empty(), || {
        format!(
            "{} process(es) of the container's PID namespace held more than its PID 1 ({own}), \
             {} of them seized by it, {} of those cartinject's own before its exec:\n    {}",
            escalated.len(),
            escalated.iter().filter(|l| l.starts_with("SEIZE")).count(),
            escalated
                .iter()
                .filter(|l| l.starts_with("SEIZE") && l.contains("exe=/memfd:cartinject"))
                .count(),
            escalated
                .iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        )
    });
    let seized = records.iter().filter(|r| r.seized).count();
    println!(
        "seizer: {} distinct records, {seized} while seized, {} beyond PID 1's power",
        records.len(),
        escalated.len()
    );
    problems.check(seized > 0, || {
        "the seizer seized nothing: the test proves nothing".to_string()
    });

    // More power against it only with the explicit flag, and then with a warning.
    for profile in ["debug", "sysadmin"] {
        let (cmd, out) = run(session(&img, &c.name, &["--profile", profile], &["true"]));
        problems.check(is_one_line_refusal(&out), || {
            format!(
                "--profile {profile} without --allow-ptrace-escalation is not refused in one \
                 line: {}",
                shown(&cmd, &out)
            )
        });
    }
    let (cmd, out) = run(session(
        &img,
        &c.name,
        &["--profile", "debug", "--allow-ptrace-escalation"],
        &["true"],
    ));
    problems.check(
        out.status.success()
            && stderr_lines(&out).iter().any(|l| {
                let l = l.to_lowercase();
                l.contains("warning") && l.contains("ptrace")
            }),
        || {
            format!(
                "--allow-ptrace-escalation did not go on with a warning naming the risk: {}",
                shown(&cmd, &out)
            )
        },
    );
    mounts.check_unchanged(&mut problems, "the sessions");
    img.assert_no_loop_device();
    c.assert_clean();
    problems.finish("a CAP_SYS_PTRACE container whose PID 1 seizes every process");
}

// ---------------------------------------------------------------------------------------
// 4. --match-container / --profile match fails closed.
// ---------------------------------------------------------------------------------------

#[test]
fn matching_fails_closed_when_the_filter_cannot_be_read() {
    let c = attack_container("attack-failclosed", "tracer", &[], &[]);
    let traced = wait_for_file(
        std::path::Path::new(&format!("/proc/{}/root/traced", c.pid)),
        "the tracer",
    );
    assert!(
        traced.starts_with("SEIZED"),
        "the helper could not seize PID 1: {traced}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    assert_ne!(field("TracerPid:"), "0", "PID 1 is not traced: {status}");
    assert_eq!(
        field("Seccomp:"),
        "2",
        "PID 1 has no seccomp filter: {status}"
    );

    let img = TestImage::fixture();
    // The negative control: where the filter can be copied, it blocks `unshare -U -r`, so a
    // success below means the session ran without it.
    let control = Container::start("attack-failclosed-control", fat_image());
    let (cmd, out) = run(session(
        &img,
        &control.name,
        &["--match-container"],
        &["unshare", "-U", "-r", "true"],
    ));
    assert_eq!(
        out.status.code(),
        Some(1),
        "Docker's filter, copied, does not block unshare -U -r: {}",
        shown(&cmd, &out)
    );
    drop(control);
    let mounts = MountSnapshot::take(c.pid);
    let mut problems = Problems::new();
    for flags in [&["--match-container"][..], &["--profile", "match"][..]] {
        let (cmd, out) = run(session(
            &img,
            &c.name,
            flags,
            &["unshare", "-U", "-r", "true"],
        ));
        problems.check(!out.status.success(), || {
            format!(
                "unshare -U -r worked: the session ran without the target's seccomp filter: {}",
                shown(&cmd, &out)
            )
        });
        problems.check(is_one_line_refusal(&out), || {
            format!(
                "a filter that cannot be copied does not stop the session in one line: {}",
                shown(&cmd, &out)
            )
        });
    }
    for flags in [
        &["--match-container", "--allow-unmatched"][..],
        &["--profile", "match", "--allow-unmatched"][..],
    ] {
        let (cmd, out) = run(session(&img, &c.name, flags, &["true"]));
        problems.check(
            out.status.success()
                && stderr_lines(&out)
                    .iter()
                    .any(|l| l.to_lowercase().contains("seccomp")),
            || {
                format!(
                    "--allow-unmatched did not go on with a warning naming the seccomp filter it \
                     could not copy: {}",
                    shown(&cmd, &out)
                )
            },
        );
    }
    mounts.check_unchanged(&mut problems, "the sessions");
    img.assert_no_loop_device();
    c.assert_clean();
    problems.finish("matching a target whose filter cannot be read");
}

/// A container that keeps CAP_SYS_PTRACE only in a nested PID namespace (its PID 1 dropped
/// it): the nested init can still reach a session's process through the container's `/proc`,
/// so the session gets the match power, as against any container that can ptrace it.
#[test]
fn a_ptracer_in_a_nested_pid_namespace_is_seen() {
    let c = attack_container(
        "attack-nested",
        "nested",
        &[],
        &["--cap-add", "SYS_PTRACE", "--cap-add", "SYS_ADMIN"],
    );
    let ready = wait_for_file(
        std::path::Path::new(&format!("/proc/{}/root/ready", c.pid)),
        "the nested namespace",
    );
    assert!(
        ready.starts_with("NESTED"),
        "no nested PID namespace: {ready}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).expect("status");
    let bounding = Caps::parse(&status).expect("Cap* lines").bnd;
    assert_eq!(
        bounding & (1 << 19),
        0,
        "PID 1 still holds CAP_SYS_PTRACE: {status}"
    );
    let img = TestImage::fixture();
    let mounts = MountSnapshot::take(c.pid);
    let (cmd, out) = run(session(
        &img,
        &c.name,
        &[],
        &["grep", "CapEff", "/proc/self/status"],
    ));
    assert!(out.status.success(), "{}", shown(&cmd, &out));
    assert!(
        stderr(&out).contains("CAP_SYS_PTRACE") && stderr(&out).contains("--profile match"),
        "a ptracer in a nested PID namespace went unseen: {}",
        shown(&cmd, &out)
    );
    let eff = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("mask"))
        .expect("CapEff");
    assert_eq!(
        eff & !bounding,
        0,
        "the session holds more than the container's PID 1: {}",
        shown(&cmd, &out)
    );
    let mut problems = Problems::new();
    mounts.check_unchanged(&mut problems, "the session");
    problems.finish("a ptracer in a nested PID namespace");
    img.assert_no_loop_device();
    c.assert_clean();
}

/// A container whose only ptracer (the init of a nested PID namespace, as in the test
/// above) moved itself out of the container's cgroups, into the root cgroup of every
/// hierarchy (a container with CAP_SYS_ADMIN in the host's cgroup namespace can mount them):
/// listing the container's cgroups would miss it, listing its PID namespace does not.
#[test]
fn a_ptracer_that_left_the_containers_cgroups_is_seen() {
    let c = attack_container(
        "attack-escaper",
        "escaper",
        &[],
        &["--cap-add", "SYS_PTRACE", "--cap-add", "SYS_ADMIN"],
    );
    let ready = wait_for_file(
        std::path::Path::new(&format!("/proc/{}/root/ready", c.pid)),
        "the escaped namespace",
    );
    assert!(ready.starts_with("ESCAPED"), "no escape: {ready}");
    let cgroups = |pid: i32| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .expect("cgroup")
            .lines()
            .map(str::to_string)
            .collect()
    };
    let escaped = children(c.pid);
    assert_eq!(escaped.len(), 1, "not one nested init: {escaped:?}");
    let outside = cgroups(escaped[0]);
    assert!(
        outside.iter().all(|line| !line.contains(&c.id)),
        "the nested init is still in the container's cgroups: {outside:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).expect("status");
    let bounding = Caps::parse(&status).expect("Cap* lines").bnd;
    assert_eq!(
        bounding & (1 << 19),
        0,
        "PID 1 still holds CAP_SYS_PTRACE: {status}"
    );
    session_sees_a_ptracer(
        &c,
        "a ptracer outside the container's cgroups",
        "a ptracer that left the container's cgroups",
    );
}

/// A container whose PID 1 dropped CAP_SYS_PTRACE in its main thread only, while a second
/// thread keeps it: capabilities belong to each thread, and that thread can seize a
/// session's process as well as any, so every thread is looked at, not `/proc/PID/status`.
#[test]
fn a_ptracer_thread_behind_a_main_thread_without_it_is_seen() {
    let c = attack_container(
        "attack-threaded",
        "threaded",
        &[],
        &["--cap-add", "SYS_PTRACE"],
    );
    let ready = wait_for_file(
        std::path::Path::new(&format!("/proc/{}/root/ready", c.pid)),
        "the threads",
    );
    assert!(ready.starts_with("THREADED"), "no drop: {ready}");
    let caps = |path: String| -> Caps {
        Caps::parse(&std::fs::read_to_string(&path).expect("status")).expect("Cap* lines")
    };
    assert_eq!(
        caps(format!("/proc/{}/status", c.pid)).bnd & (1 << 19),
        0,
        "the main thread still holds CAP_SYS_PTRACE"
    );
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", c.pid))
        .expect("task")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        threads
            .iter()
            .any(|t| caps(format!("/proc/{}/task/{t}/status", c.pid)).eff & (1 << 19) != 0),
        "no thread kept CAP_SYS_PTRACE: {threads:?}"
    );
    session_sees_a_ptracer(&c, "a thread holding CAP_SYS_PTRACE", "a ptracer thread");
}

/// Runs a session in `c`, whose only ptracer is `hidden`, and checks that it was seen (the
/// session names CAP_SYS_PTRACE and takes `--profile match`), that the container's mounts
/// are unchanged, and that nothing is left; `what` names the case in the failure.
fn session_sees_a_ptracer(c: &Container, hidden: &str, what: &str) {
    let img = TestImage::fixture();
    let mounts = MountSnapshot::take(c.pid);
    let (cmd, out) = run(session(&img, &c.name, &[], &["true"]));
    assert!(out.status.success(), "{}", shown(&cmd, &out));
    let mut problems = Problems::new();
    if !(stderr(&out).contains("CAP_SYS_PTRACE") && stderr(&out).contains("--profile match")) {
        problems.push(format!("{hidden} went unseen: {}", shown(&cmd, &out)));
    }
    mounts.check_unchanged(&mut problems, "the session");
    problems.finish(what);
    img.assert_no_loop_device();
    c.assert_clean();
}

/// A target that cannot stop to have its filter read (frozen by `docker pause`): `match`
/// refuses within a bounded time instead of waiting for it forever.
#[test]
fn matching_a_frozen_target_refuses_instead_of_hanging() {
    let c = Container::start("attack-frozen", fat_image());
    let img = TestImage::fixture();
    let paused = Command::new("docker")
        .args(["pause", &c.name])
        .status()
        .expect("docker pause");
    assert!(paused.success(), "docker pause {} failed", c.name);
    let started = Instant::now();
    let (cmd, out) = run(session(&img, &c.name, &["--profile", "match"], &["true"]));
    let took = started.elapsed();
    let _ = Command::new("docker").args(["unpause", &c.name]).status();
    assert!(
        took < Duration::from_secs(60),
        "--profile match waited {took:?} on a frozen target"
    );
    assert!(
        is_one_line_refusal(&out) && stderr(&out).contains("seccomp"),
        "a frozen target's filter that cannot be read does not refuse in one line: {}",
        shown(&cmd, &out)
    );
    img.assert_no_loop_device();
    c.assert_clean();
}

// ---------------------------------------------------------------------------------------
// 5. Escape sequences in what the container names.
// ---------------------------------------------------------------------------------------

/// Sets the window title and clears the screen, on most terminals.
const ESCAPES: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J";

/// Runs `cmd`, and records a problem for each raw control byte in its stdout or stderr.
fn check_output(problems: &mut Problems, what: &str, cmd: Command) -> Output {
    let (cmd, out) = run(cmd);
    let line = cmdline(&cmd);
    check_no_control_bytes(
        problems,
        &format!("{what} (`{line}`) on stdout"),
        &out.stdout,
    );
    check_no_control_bytes(
        problems,
        &format!("{what} (`{line}`) on stderr"),
        &out.stderr,
    );
    out
}

#[test]
fn a_path_entry_with_escapes_is_printed_escaped() {
    require_root();
    let (x, y) = (format!("/x{ESCAPES}"), format!("/y{ESCAPES}"));
    let c = Container::start_with(
        &unique("attack-esc-path"),
        thin_image(),
        &["-e", &format!("PATH=/bin:{x}:{y}")],
    );
    c.wait_listening(80);
    // In those PATH entries: a command that is not executable (EACCES) and one that is
    // not a program (ENOEXEC), so that cartinject names the path it could not run.
    let root = format!("/proc/{}/root", c.pid);
    for (dir, name, mode) in [
        (&x, "cc-attack-noexec", 0o644),
        (&y, "cc-attack-garbage", 0o755),
    ] {
        std::fs::create_dir_all(format!("{root}{dir}")).expect("mkdir in the container");
        let file = format!("{root}{dir}/{name}");
        std::fs::write(&file, b"\x01\x02 not a program\n").expect("write in the container");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let img = TestImage::fixture();
    let mounts = MountSnapshot::take(c.pid);
    let mut problems = Problems::new();
    // The session's PATH keeps only plain directory names: entries holding escapes are
    // left out, so the commands in them are not found by name (127); named by their
    // absolute path they are found, cannot run (126), and the message names the path.
    let noexec = format!("{x}/cc-attack-noexec");
    let garbage = format!("{y}/cc-attack-garbage");
    for (command, code) in [
        ("nosuchcmd", 127),
        ("cc-attack-noexec", 127),
        ("cc-attack-garbage", 127),
        (noexec.as_str(), 126),
        (garbage.as_str(), 126),
    ] {
        for flags in [&[][..], &["--match-container"][..], &["-v"][..]] {
            let out = check_output(
                &mut problems,
                "a command that cannot run",
                session(&img, &c.name, flags, &[command]),
            );
            problems.check(out.status.code() == Some(code), || {
                format!(
                    "`{command}` exits {:?}, not {code}: {:?}",
                    out.status.code(),
                    stderr(&out)
                )
            });
        }
    }
    mounts.check_unchanged(&mut problems, "the sessions");
    img.assert_no_loop_device();
    c.assert_clean();
    problems.finish("escape sequences in the target's PATH");
}

#[test]
fn a_kubernetes_name_with_escapes_is_printed_escaped() {
    require_root();
    let name = format!("cc-esc-{}{ESCAPES}", std::process::id());
    let pod = format!("pod{ESCAPES}");
    let task = CtrTask::start(
        "k8s.io",
        &hex_id("attack-esc"),
        &[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.container-name", &name),
            ("io.kubernetes.cri.sandbox-name", &pod),
        ],
    );
    let target = format!("containerd:k8s.io/{}", task.id);
    let img = TestImage::fixture();
    let mounts = MountSnapshot::take(task.pid);
    let mut problems = Problems::new();

    // The name did reach cartinject: the session's target is named by it (raw or escaped).
    let out = output(&mut session(
        &img,
        &target,
        &[],
        &["sh", "-c", "echo \"$CRASHCART_TARGET\""],
    ));
    assert!(
        stdout(&out).contains(&format!("cc-esc-{}", std::process::id()))
            && stdout(&out).contains("pwned"),
        "the annotation did not name the target (the test proves nothing): {:?}",
        stdout(&out)
    );

    check_output(
        &mut problems,
        "a session with -v",
        session(&img, &target, &["-v"], &["true"]),
    );
    check_output(
        &mut problems,
        "a command not found",
        session(&img, &target, &[], &["nosuchcmd"]),
    );
    check_output(&mut problems, "-m", {
        let mut cmd = cartinject();
        cmd.arg("-m").arg(&img.path).arg(&target);
        cmd
    });
    for json in [false, true] {
        let mut cmd = cartinject();
        cmd.arg("--list");
        if json {
            cmd.arg("--json");
        }
        let out = check_output(&mut problems, "--list", cmd);
        problems.check(out.status.success(), || {
            format!("--list failed: {:?}", stderr(&out))
        });
    }
    check_output(&mut problems, "-m a second time", {
        let mut cmd = cartinject();
        cmd.arg("-m").arg(&img.path).arg(&target);
        cmd
    });
    for what in ["-u", "-u with nothing mounted"] {
        check_output(&mut problems, what, {
            let mut cmd = cartinject();
            cmd.arg("-u").arg(&target);
            cmd
        });
    }
    // An unknown name lists every candidate, this one among them.
    check_output(
        &mut problems,
        "an unknown target",
        session(&img, "containerd:k8s.io/cc-no-such-task", &[], &["true"]),
    );
    check_output(
        &mut problems,
        "an unknown target",
        session(&img, "cc-no-such-task-anywhere", &[], &["true"]),
    );
    // The prompt: the name is in it, never raw.
    let mut pty = Pty::open(24, 80);
    let mut cmd = session(&img, &target, &[], &[]);
    cmd.env("TERM", "dumb");
    let mut child = pty.spawn(&mut cmd);
    let mut text = pty.read_until("# ", Duration::from_secs(20));
    let _ = pty.master.write_all(b"exit\r");
    let _ = wait_with_timeout(&mut child, LONG);
    text.push_str(&pty.read_until("\u{0}never", Duration::from_millis(300)));
    problems.check(!text.contains("\u{1b}]0;pwned"), || {
        format!("the session's terminal got the container's name raw: {text:?}")
    });

    mounts.check_unchanged(&mut problems, "the sessions, -m and -u");
    img.assert_no_loop_device();
    task.assert_clean();
    problems.finish("escape sequences in a Kubernetes container name");
}

#[test]
fn dev_entries_with_escapes_are_printed_escaped() {
    require_root();
    let c = Container::start("attack-esc-dev", fat_image());
    let count = hardening::count("CC_ATTACK_DEV_ENTRIES", 5000);
    for i in 0..count {
        std::fs::write(format!("/proc/{}/root/dev/{ESCAPES}{i}", c.pid), b"")
            .expect("create a /dev entry in the container");
    }
    let img = TestImage::fixture();
    let mounts = MountSnapshot::take(c.pid);
    let mut problems = Problems::new();
    for verbose in [false, true] {
        let flags: &[&str] = if verbose { &["-v"] } else { &[] };
        let out = check_output(
            &mut problems,
            "a session",
            session(&img, &c.name, flags, &["sh", "-c", "ls /dev | wc -l"]),
        );
        // No count or size of entries in the container may stop a session (issue 9,
        // point 6).
        problems.check(out.status.success(), || {
            format!("{count} entries in /dev stop a session: {:?}", stderr(&out))
        });
    }
    let out = check_output(&mut problems, "-m", {
        let mut cmd = cartinject();
        cmd.arg("-m").arg(&img.path).arg(&c.name);
        cmd
    });
    problems.check(out.status.success(), || {
        format!("{count} entries in /dev stop -m: {:?}", stderr(&out))
    });
    check_output(&mut problems, "-u", {
        let mut cmd = cartinject();
        cmd.arg("-v").arg("-u").arg(&c.name);
        cmd
    });
    mounts.check_unchanged(&mut problems, "a session, -m and -u");
    img.assert_no_loop_device();
    c.assert_clean();
    problems.finish(&format!("{count} /dev entries with escape sequences"));
}
