//! End-to-end tests of `cartinject` against real containers under a real Docker daemon,
//! with real loop devices and mounts. Needs root, Docker, mke2fs, musl-gcc (or gcc),
//! busybox-static and bash-static; `tests/run` installs and starts them.
//!
//! Every test uses its own copy of the fixture image and its own containers, and ends by
//! checking that no loop device is backed by its image and its containers have no
//! `/dev/crashcart` left.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crashcart_tests::*;

const LONG: Duration = Duration::from_secs(30);

fn fat(test: &str) -> Container {
    require_root();
    Container::start(test, fat_image())
}

/// Exit code of an output, as a number (signals are a failure of the test).
fn code(out: &std::process::Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}", out.status))
}

#[test]
fn exercise_thin_container_shell_mount_and_unmount() {
    let c = thin_container("exercise");
    let img = TestImage::fixture();

    // The container has no shell of its own.
    let out = output(Command::new("docker").args(["exec", &c.name, "bash", "-c", "true"]));
    assert_ne!(
        code(&out),
        0,
        "docker exec bash worked in the thin container"
    );

    // A command from the image, inside the container: its root, its processes, its network.
    let text = ok(&mut inject(
        &img,
        &c.name,
        &[
            "bash",
            "-c",
            "echo shell=$BASH_VERSION; ls /; cat /proc/1/cmdline; echo; echo PATH=$PATH; pwd; hostname; busybox wget -qO- http://127.0.0.1/",
        ],
    ));
    assert!(text.contains("shell=5"), "{text}");
    assert!(
        text.contains("httpd"),
        "the container's root is not / : {text}"
    );
    assert!(text.contains("/httpd"), "PID 1 is not the server: {text}");
    assert!(
        text.contains("PATH=/dev/crashcart/bin:/dev/crashcart/sbin:"),
        "{text}"
    );
    assert!(
        text.contains("hello from thin"),
        "no HTTP from the container's loopback: {text}"
    );
    assert!(
        text.contains(&c.id[..12]),
        "not the container's hostname: {text}"
    );
    img.assert_no_loop_device();
    c.assert_clean();

    // -m: docker exec and nsenter then find the tools at /dev/crashcart.
    let out = ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert!(
        out.contains("mounted") && out.contains("/dev/crashcart"),
        "{out}"
    );
    assert_eq!(c.crashcart_mounts().len(), 1, "{:?}", c.crashcart_mounts());
    assert_eq!(img.loop_devices().len(), 1);
    let text = c.exec(&["/dev/crashcart/bin/busybox", "cat", "/proc/1/cmdline"]);
    assert!(text.contains("/httpd"), "{text}");
    let text = nsenter_all(
        c.pid,
        &[
            "/dev/crashcart/bin/bash",
            "-c",
            "echo nsenter:$(/dev/crashcart/bin/ls /dev/crashcart/etc)",
        ],
    );
    assert!(text.contains("nsenter:bashrc"), "{text}");

    // A second -m is a no-op that says so.
    let out = ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    assert!(
        out.contains("already mounted") && out.contains("nothing to do"),
        "{out}"
    );
    assert_eq!(c.crashcart_mounts().len(), 1);

    // A session uses the mounted image, shares its loop device and leaves the mount.
    let text = ok(&mut inject(
        &img,
        &c.name,
        &["sh", "-c", "ls /dev/crashcart/bin/bash"],
    ));
    assert!(text.contains("/dev/crashcart/bin/bash"), "{text}");
    assert_eq!(img.loop_devices().len(), 1);
    assert_eq!(
        c.crashcart_mounts().len(),
        1,
        "the session took the -m mount away"
    );

    // -u removes it all; a second -u says there is nothing.
    let out = ok(cartinject().arg("-u").arg(&img.path).arg(&c.name));
    assert!(out.contains("unmounted"), "{out}");
    c.assert_clean();
    img.assert_no_loop_device();
    let out = ok(cartinject().arg("-u").arg(&c.name));
    assert!(out.contains("nothing is mounted"), "{out}");
}

#[test]
fn exercise_lsof_and_tcpdump_from_the_net_image() {
    let c = thin_container("nettools");
    let img = TestImage::copy_of(net_image());

    // lsof lists the server's executable and its listening socket.
    let text = ok(&mut inject(&img, &c.name, &["lsof", "-n", "-P", "-p", "1"]));
    assert!(text.contains("/httpd"), "{text}");
    assert!(text.contains("*:80 (LISTEN)"), "{text}");

    // tcpdump on the container's loopback sees a request made in its network namespace.
    assert_tcpdump_captures_a_request(&img, &c.name, c.pid, LONG);

    // -m with the net image, then docker exec of its tcpdump.
    ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    let text = c.exec(&["/dev/crashcart/bin/tcpdump", "--version"]);
    assert!(text.contains("tcpdump version"), "{text}");
    ok(cartinject().arg("-u").arg(&img.path).arg(&c.name));
    c.assert_clean();
    img.assert_no_loop_device();
}

#[test]
fn targets_by_pid_name_id_prefix_and_forced_kind() {
    let c = fat("targets");
    let img = TestImage::fixture();
    let pid = c.pid.to_string();
    for target in [
        pid.clone(),
        format!("pid:{pid}"),
        c.name.clone(),
        format!("docker:{}", c.name),
        c.id.clone(),
        c.id[..12].to_string(),
    ] {
        let text = ok(&mut inject(
            &img,
            &target,
            &[
                "sh",
                "-c",
                "echo target=$CRASHCART_TARGET; cat /proc/1/cmdline",
            ],
        ));
        assert!(text.contains("sleep"), "{target}: {text}");
    }
    let text = ok(&mut inject(
        &img,
        &c.name,
        &["sh", "-c", "echo $CRASHCART_TARGET"],
    ));
    assert_eq!(text.trim(), c.name);

    // Without Docker's API, an ID prefix is still found through /proc/*/cgroup.
    let text = ok(inject(
        &img,
        &c.id[..16],
        &["sh", "-c", "echo $CRASHCART_TARGET; cat /proc/1/cmdline"],
    )
    .env("DOCKER_HOST", "unix:///nonexistent/docker.sock"));
    assert!(
        text.starts_with(&c.id[..12]) && text.contains("sleep"),
        "{text}"
    );
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn ambiguous_and_unknown_names_list_the_candidates() {
    require_root();
    let img = TestImage::fixture();
    // Create containers until two share a first hex digit of their IDs.
    let mut made: Vec<(String, String)> = Vec::new();
    let base = unique("ambig");
    let (a, b) = loop {
        assert!(
            made.len() < 40,
            "no two of 40 container IDs share a first digit"
        );
        let name = format!("{base}-{}", made.len());
        let id = ok(Command::new("docker").args([
            "create",
            "--network",
            "none",
            "--name",
            &name,
            fat_image(),
        ]))
        .trim()
        .to_string();
        made.push((name, id));
        let last = made.last().expect("one").clone();
        if let Some(other) = made[..made.len() - 1]
            .iter()
            .find(|(_, id)| id[..1] == last.1[..1])
        {
            break (other.clone(), last);
        }
    };
    // A bare all-digit TARGET is a PID: force the kind then.
    let prefix = if a.1[..1].bytes().all(|b| b.is_ascii_digit()) {
        format!("docker:{}", &a.1[..1])
    } else {
        a.1[..1].to_string()
    };
    let out = output(&mut inject(&img, &prefix, &["true"]));
    let err = stderr(&out);
    for (name, _) in &made {
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
    }
    assert_eq!(code(&out), 125, "{err}");
    assert!(err.contains("matches more than one container"), "{err}");
    assert!(err.contains(&a.0) && err.contains(&b.0), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = output(&mut inject(
        &img,
        "cc-no-such-container-anywhere",
        &["true"],
    ));
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "{err}");
    assert!(
        err.contains("no container matches `cc-no-such-container-anywhere`"),
        "{err}"
    );
    img.assert_no_loop_device();
}

#[test]
fn docker_not_running_when_a_name_is_given() {
    require_root();
    let img = TestImage::fixture();
    let out = output(
        inject(&img, "somename", &["true"]).env("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
    );
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "{err}");
    assert!(
        err.contains("docker is not running") && err.contains("give the container's PID"),
        "{err}"
    );
    img.assert_no_loop_device();
}

#[test]
fn legacy_mount_path_for_sessions_and_mount_unmount() {
    let c = thin_container("legacy");
    let img = TestImage::fixture();
    let out = output(
        cartinject()
            .arg("-v")
            .arg(&img.path)
            .arg(&c.name)
            .args([
                "--",
                "sh",
                "-c",
                "grep crashcart /proc/self/mountinfo; cat /proc/1/cmdline",
            ])
            .env("CARTINJECT_LEGACY_MOUNT", "1"),
    );
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{err}");
    assert!(err.contains("legacy mode: mount(2)"), "{err}");
    assert!(err.contains("/proc/PID/ns files one by one"), "{err}");
    assert!(err.contains("pinned by PID and start time"), "{err}");
    assert!(
        text.contains("/dev/crashcart ro,nosuid,nodev") && text.contains("/httpd"),
        "{text}"
    );
    img.assert_no_loop_device();
    c.assert_clean();

    ok(cartinject()
        .args(["-m", "--legacy-mount"])
        .arg(&img.path)
        .arg(&c.name));
    assert_eq!(c.crashcart_mounts().len(), 1);
    let text = c.exec(&["/dev/crashcart/bin/busybox", "echo", "legacy-ok"]);
    assert_eq!(text.trim(), "legacy-ok");
    ok(cartinject().args(["-u", "--legacy-mount"]).arg(&c.name));
    c.assert_clean();
    img.assert_no_loop_device();
}

#[test]
fn concurrent_sessions_do_not_disturb_each_other_or_the_container() {
    let c = fat("concurrent");
    let img = TestImage::fixture();
    // Session A waits on its stdin while B comes and goes.
    let (mut a, mut a_out, line) = spawn_until_first_line(
        inject(
            &img,
            &c.name,
            &[
                "sh",
                "-c",
                "echo A-ready; read line; ls /dev/crashcart/bin/bash && echo A-ok-$line",
            ],
        )
        .stdin(Stdio::piped()),
    );
    assert_eq!(line.trim(), "A-ready");

    // While A runs: the container itself sees nothing, not even the directory.
    c.assert_clean();
    let text = c.exec(&["ls", "/dev"]);
    assert!(!text.contains("crashcart"), "{text}");

    let text = ok(&mut inject(&img, &c.name, &["sh", "-c", "echo B-ok"]));
    assert_eq!(text.trim(), "B-ok");
    assert_eq!(
        img.loop_devices().len(),
        1,
        "A's loop device went away with B"
    );

    writeln!(a.stdin.take().expect("stdin"), "after-B").expect("write A");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut a_out, &mut rest).expect("read A");
    let status = wait_with_timeout(&mut a, LONG);
    assert!(status.success(), "A: {status:?} {rest}");
    assert!(rest.contains("A-ok-after-B"), "{rest}");
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn signals_reach_the_command_and_set_the_status() {
    let c = fat("signals");
    let img = TestImage::fixture();
    for (sig, script, expected) in [
        (
            libc::SIGTERM,
            "trap 'echo got-TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
            3,
        ),
        (
            libc::SIGINT,
            "echo ready; exec sleep 1000",
            128 + libc::SIGINT,
        ),
        (
            libc::SIGUSR1,
            "echo ready; exec sleep 1000",
            128 + libc::SIGUSR1,
        ),
        (
            libc::SIGHUP,
            "trap 'echo got-HUP; exit 4' HUP; echo ready; while :; do sleep 0.05; done",
            4,
        ),
    ] {
        let (mut child, mut out, line) =
            spawn_until_first_line(&mut inject(&img, &c.name, &["sh", "-c", script]));
        assert_eq!(line.trim(), "ready");
        // SAFETY: kill with a PID of our own child and a valid signal number.
        let rc = unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), sig) };
        assert_eq!(rc, 0);
        let status = wait_with_timeout(&mut child, LONG);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("read");
        assert_eq!(status.code(), Some(expected), "signal {sig}: {rest}");
        if expected < 128 {
            assert!(rest.contains("got-"), "{rest}");
        }
    }
    // A command killed by a signal of its own: 128+N too.
    let out = output(&mut inject(&img, &c.name, &["sh", "-c", "kill -KILL $$"]));
    assert_eq!(code(&out), 128 + libc::SIGKILL);
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn stdin_and_stdout_are_plain_pipes() {
    let c = thin_container("pipes");
    let img = TestImage::fixture();
    // cat < file: binary data through unchanged.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = img.sibling("input.bin");
    std::fs::write(&file, &data).expect("write");
    let out = inject(&img, &c.name, &["cat"])
        .stdin(File::open(&file).expect("open"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout == data,
        "cat changed the data ({} bytes back)",
        out.stdout.len()
    );

    // ... | grep, with the command's stdout a pipe.
    let mut session = inject(
        &img,
        &c.name,
        &["sh", "-c", "printf 'alpha\\nbeta\\ngamma\\n'"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("session");
    let grep = Command::new("grep")
        .arg("beta")
        .stdin(session.stdout.take().expect("stdout"))
        .output()
        .expect("grep");
    assert_eq!(stdout(&grep), "beta\n");
    assert!(wait_with_timeout(&mut session, LONG).success());

    // Exit status of a failing pipeline member comes back.
    let out = output(&mut inject(&img, &c.name, &["sh", "-c", "exit 42"]));
    assert_eq!(code(&out), 42);
    img.assert_no_loop_device();
    c.assert_clean();
}

use std::fs::File;

#[test]
fn interactive_shell_through_a_real_pty() {
    let c = thin_container("pty");
    let img = TestImage::fixture();
    let mut pty = Pty::open(33, 101);
    let before = pty.termios();
    let mut cmd = inject(&img, &c.name, &[]);
    cmd.env("TERM", "xterm");
    let mut child = pty.spawn(&mut cmd);

    let prompt = pty.read_until("] / # ", LONG);
    assert!(
        prompt.contains(&format!("[crashcart {}]", c.name)),
        "{prompt:?}"
    );
    pty.master
        .write_all(
            b"stty size; echo rc=$CRASHCART_RC; cat /proc/1/cmdline; echo; echo END-$((40+2))\r",
        )
        .expect("type");
    let text = pty.read_until("END-42", LONG);
    assert!(text.contains("33 101"), "{text:?}");
    assert!(
        text.contains("rc=read"),
        "the image's rc file was not read: {text:?}"
    );
    assert!(text.contains("/httpd"), "{text:?}");

    // Ctrl-C reaches the program in the session, not cartinject.
    pty.master.write_all(b"sleep 1000\r").expect("type");
    std::thread::sleep(Duration::from_millis(300));
    pty.master.write_all(b"\x03").expect("ctrl-c");
    pty.master
        .write_all(b"echo after-$((6*7))\r")
        .expect("type");
    let text = pty.read_until("after-42", LONG);
    assert!(text.contains("after-42"), "{text:?}");

    pty.master.write_all(b"exit 7\r").expect("type");
    let status = wait_with_timeout(&mut child, LONG);
    assert_eq!(status.code(), Some(7));
    let after = pty.termios();
    assert_eq!(
        (before.c_lflag, before.c_iflag, before.c_oflag),
        (after.c_lflag, after.c_iflag, after.c_oflag),
        "the terminal was not restored"
    );
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn list_shows_mounts_and_sessions() {
    let c = thin_container("list");
    let img = TestImage::fixture();
    ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    let text = ok(cartinject().arg("--list"));
    let line = text
        .lines()
        .find(|l| l.contains(&img.path.to_string_lossy().into_owned()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("mount") && line.contains(&c.name) && line.contains(&c.pid.to_string()),
        "{line}"
    );

    let (json, ours) = img.listed();
    assert_eq!(ours.len(), 1, "{json}");
    assert_eq!(ours[0]["kind"], "mount");
    assert_eq!(ours[0]["target_pid"], c.pid);
    assert_eq!(ours[0]["container_name"], c.name.as_str());
    assert_eq!(ours[0]["container_id"], c.id.as_str());
    assert!(
        ours[0]["device"]
            .as_str()
            .is_some_and(|d| d.starts_with("/dev/loop"))
    );
    ok(cartinject().arg("-u").arg(&c.name));

    // A running session is listed too, as a session of this container.
    let (mut s, _out, _) = spawn_until_first_line(
        inject(&img, &c.name, &["sh", "-c", "echo ready; read x"]).stdin(Stdio::piped()),
    );
    let (json, ours) = img.listed();
    drop(s.stdin.take());
    wait_with_timeout(&mut s, LONG);
    assert_eq!(ours.len(), 1, "{json}");
    assert_eq!(ours[0]["kind"], "session");
    assert_eq!(ours[0]["target_pid"], c.pid);
    assert_eq!(ours[0]["container_name"], c.name.as_str());
    img.assert_no_loop_device();
    c.assert_clean();
}

/// Asserts one clear line on stderr containing `needle`, exit 125, nothing left behind.
fn assert_refused(out: &std::process::Output, needle: &str, img: &std::path::Path, c: &Container) {
    let err = stderr(out);
    assert_eq!(code(out), 125, "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("cartinject: "), "{err}");
    assert_no_loop_device(img);
    c.assert_clean();
}

#[test]
fn bad_images_are_refused_with_nothing_left() {
    let c = thin_container("badimg");
    let img = TestImage::fixture();
    let bytes = std::fs::read(&img.path).expect("read image");
    type Make<'a> = Box<dyn Fn(&std::path::Path) + 'a>;
    let cases: Vec<(&str, Make<'_>, &str)> = vec![
        ("missing.img", Box::new(|_| {}), "does not exist"),
        (
            "empty.img",
            Box::new(|p| std::fs::write(p, b"").expect("write")),
            "is empty",
        ),
        (
            "dir.img",
            Box::new(|p| std::fs::create_dir(p).expect("mkdir")),
            "is a directory",
        ),
        (
            "truncated.img",
            Box::new(|p| std::fs::write(p, &bytes[..bytes.len() / 2]).expect("write")),
            "is truncated",
        ),
        (
            "junk.img",
            Box::new(|p| std::fs::write(p, vec![0x42u8; 1 << 20]).expect("write")),
            "not a filesystem image",
        ),
        (
            "badsuper.img",
            Box::new(|p| {
                let mut b = bytes.clone();
                b[1024 + 0x20] ^= 0x5a; // blocks per group; the superblock checksum now fails
                std::fs::write(p, b).expect("write");
            }),
            "is corrupt",
        ),
        (
            "badgdt.img",
            Box::new(|p| {
                let mut b = bytes.clone();
                // The group descriptors start in the block after the superblock's:
                // block 1 with 4 KiB blocks (cartbuild's writer), block 2 with 1 KiB.
                let log = u32::from_le_bytes(b[1024 + 24..1024 + 28].try_into().unwrap());
                let first = u32::from_le_bytes(b[1024 + 20..1024 + 24].try_into().unwrap());
                let gdt = (1024usize << log) * (first as usize + 1);
                for x in &mut b[gdt..gdt + 64] {
                    *x ^= 0xff;
                }
                std::fs::write(p, b).expect("write");
            }),
            "the kernel cannot mount image",
        ),
    ];
    for (name, make, needle) in &cases {
        let path = img.sibling(name);
        make(&path);
        for legacy in [false, true] {
            let mut cmd = cartinject();
            cmd.arg(&path).arg(&c.name).args(["--", "true"]);
            if legacy {
                cmd.arg("--legacy-mount");
            }
            let out = output(&mut cmd);
            if legacy && *name == "badgdt.img" {
                // mount(2) says less than fsopen's log, but still names the image and the fix.
                assert_refused(&out, "the kernel cannot mount", &path, &c);
            } else {
                assert_refused(&out, needle, &path, &c);
            }
        }
        let out = output(cartinject().arg("-m").arg(&path).arg(&c.name));
        assert_refused(
            &out,
            if *name == "badgdt.img" {
                "the kernel cannot mount"
            } else {
                needle
            },
            &path,
            &c,
        );
    }
}

#[test]
fn bad_targets_and_commands_are_refused_with_nothing_left() {
    let c = thin_container("badtarget");
    let img = TestImage::fixture();

    // A PID that does not exist.
    let mut gone = Command::new("true").spawn().expect("true");
    let gone_pid = gone.id();
    gone.wait().expect("wait");
    let out = output(&mut inject(&img, &gone_pid.to_string(), &["true"]));
    assert_refused(
        &out,
        &format!("no process with PID {gone_pid}"),
        &img.path,
        &c,
    );

    // A kernel thread.
    let out = output(&mut inject(&img, "2", &["true"]));
    assert_refused(&out, "is a kernel thread", &img.path, &c);

    // A process that has exited but was not reaped.
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 0 & exec sleep 1000"])
        .spawn()
        .expect("zombie maker");
    let zombie = loop {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", parent.id()))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains(") Z ") {
                break pid.to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = output(&mut inject(&img, &zombie, &["true"]));
    let _ = parent.kill();
    let _ = parent.wait();
    assert_refused(&out, "has exited", &img.path, &c);

    // A bad kind and a bad PID syntax.
    let out = output(&mut inject(&img, "podmn:x", &["true"]));
    assert_refused(&out, "unknown target kind", &img.path, &c);

    // A command that the image does not have: 127, one line.
    let out = output(&mut inject(&img, &c.name, &["no-such-tool", "-x"]));
    let err = stderr(&out);
    assert_eq!(code(&out), 127, "{err}");
    assert!(
        err.contains("command not found") && err.contains("no-such-tool"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    img.assert_no_loop_device();
    c.assert_clean();

    // Not root: refused before anything happens.
    let out = output(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin("cartinject"))
            .arg(&img.path)
            .arg(&c.name),
    );
    assert_refused(&out, "must run as root", &img.path, &c);

    // -u and -m take no command.
    let out = output(
        cartinject()
            .arg("-m")
            .arg(&img.path)
            .arg(&c.name)
            .args(["--", "true"]),
    );
    // Bad usage: exit 2, as --help says, one line, nothing attached.
    let err = stderr(&out);
    assert_eq!(code(&out), 2, "{err}");
    assert!(err.contains("take no command"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn image_from_the_environment_and_the_default_path() {
    let c = fat("imgenv");
    let img = TestImage::fixture();
    let text = ok(cartinject()
        .arg(&c.name)
        .args(["--", "echo", "from-env"])
        .env("CARTINJECT_IMAGE", &img.path));
    assert_eq!(text.trim(), "from-env");
    let dir = img.sibling("");
    let text = ok(cartinject()
        .current_dir(&dir)
        .arg(&c.name)
        .args(["--", "echo", "from-default"]));
    assert_eq!(text.trim(), "from-default");
    img.assert_no_loop_device();
    c.assert_clean();
}
