//! The README's walkthrough, end to end, with the real default image that
//! `cartbuild recipes/net.toml` builds (static bash, busybox, lsof, tcpdump, strace): a container
//! whose root holds nothing but a static HTTP server; `cartinject` gives it an interactive bash;
//! `lsof -p 1` shows the server; `tcpdump -i lo` captures a request to it; `strace -p 1`
//! attaches to it; `-m` then `docker exec`/`podman exec` and `nsenter -a`; `-u`; nothing leaked.
//! The same in a user-namespaced Podman container and in a read-only Docker container.
//!
//! Needs root, Docker, Podman, curl and what `cartbuild recipes/net.toml` needs (musl-tools,
//! the Debian mirror from this host's apt sources); `tests/run` provides them. The image is
//! built once per run (`$CRASHCART_NET_IMAGE` uses one already built).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crashcart_tests::runtimes::*;
use crashcart_tests::*;

const LONG: Duration = Duration::from_secs(60);

/// A container under test, whichever runtime runs it.
struct Target {
    /// What cartinject is given as TARGET.
    arg: String,
    /// The name the prompt shows.
    name: String,
    /// Its first process, in the host.
    pid: i32,
    /// `docker` or `podman`: the runtime's own `exec`.
    runtime: &'static str,
}

impl Target {
    /// A Docker container, by its name.
    fn docker(c: &Container) -> Target {
        Target {
            arg: c.name.clone(),
            name: c.name.clone(),
            pid: c.pid,
            runtime: "docker",
        }
    }
}

/// The walkthrough, in `t`, with `img`.
fn walkthrough(img: &TestImage, t: &Target) {
    // The container has no shell of its own.
    let out = output(Command::new(t.runtime).args(["exec", &t.name, "sh", "-c", "true"]));
    assert!(
        !out.status.success(),
        "{} exec sh worked in a container that has no shell",
        t.runtime
    );

    // An interactive bash from the image, through a real pty: the prompt names crashcart and
    // the container, lsof shows the server and its listening socket, exit returns the status.
    let mut pty = Pty::open(40, 120);
    let mut cmd = inject(img, &t.arg, &[]);
    cmd.env("TERM", "xterm-256color");
    let mut shell = pty.spawn(&mut cmd);
    let prompt = pty.read_until(" # ", LONG);
    assert!(
        prompt.contains(&format!("[crashcart {}]", t.name)),
        "{prompt:?}"
    );
    pty.master
        .write_all(b"echo bash=$BASH_VERSION; lsof -n -P -p 1; echo END-$((40+2))\r")
        .expect("type");
    let text = pty.read_until("END-42", LONG);
    assert!(text.contains("bash=5.2"), "{text:?}");
    assert!(
        text.contains("/httpd"),
        "lsof does not show the server: {text:?}"
    );
    assert!(
        text.contains("*:80 (LISTEN)"),
        "lsof does not show the listening socket: {text:?}"
    );
    pty.master
        .write_all(b"crashcart-info; echo END-$((40+3))\r")
        .expect("type");
    let text = pty.read_until("END-43", LONG);
    for tool in ["tcpdump", "lsof", "strace", "bash", "busybox"] {
        assert!(text.contains(tool), "crashcart-info lacks {tool}: {text:?}");
    }
    pty.master.write_all(b"exit 3\r").expect("type");
    assert_eq!(wait_with_timeout(&mut shell, LONG).code(), Some(3));

    // One command, not interactive: lsof behaves without an /etc/passwd in the container.
    let out = output(&mut inject(img, &t.arg, &["lsof", "-n", "-P", "-p", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("*:80 (LISTEN)"), "{}", stdout(&out));
    assert_eq!(stderr(&out), "", "lsof complained");

    // tcpdump on the container's loopback captures a request to the server.
    assert_tcpdump_captures_a_request(img, &t.arg, t.pid, LONG);

    // strace attaches to the server, sees it accept a connection, and detaches on Ctrl-C
    // (SIGINT to cartinject, forwarded to strace).
    let mut trace = inject(
        img,
        &t.arg,
        &["strace", "-p", "1", "-e", "trace=accept,accept4"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("strace");
    // strace says "attached" before its tracing takes hold, and a request accepted in between
    // is never reported: wait until it shows the server's next accept begun (unfinished until a
    // connection comes), so that the request is the one it traces.
    let shown = stderr_until(&mut trace, "accept");
    assert_eq!(http_get(t.pid), "hello from thin\n");
    let mut err = BufReader::new(trace.stderr.take().expect("stderr"));
    let mut seen = String::new();
    // Whole lines only, starting with the one strace had begun.
    let mut line = shown
        .rsplit_once('\n')
        .map_or(shown.as_str(), |(_, begun)| begun)
        .to_string();
    while !seen.contains("accept") {
        let n = err.read_line(&mut line).expect("read strace");
        assert!(n > 0, "strace ended without tracing accept: {seen}{line}");
        seen.push_str(&line);
        line.clear();
    }
    let pid = i32::try_from(trace.id()).expect("pid");
    // SAFETY: kill(2) with a PID of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = wait_with_timeout(&mut trace, LONG);
    assert!(
        status.code().is_some(),
        "cartinject died of a signal: {status:?}"
    );
    // The server goes on serving once strace has detached.
    assert_eq!(http_get(t.pid), "hello from thin\n");

    // -m: the tools stay for the runtime's exec and for nsenter, then -u takes them away.
    ok(cartinject().arg("-m").arg(&img.path).arg(&t.arg));
    let text = exec_in(
        t.runtime,
        &t.name,
        &["/dev/crashcart/bin/tcpdump", "--version"],
    );
    assert!(text.contains("tcpdump version 4.99.3"), "{text}");
    let text = nsenter_all(
        t.pid,
        &[
            "/dev/crashcart/bin/bash",
            "-c",
            "/dev/crashcart/bin/lsof -n -P -p 1",
        ],
    );
    assert!(text.contains("*:80 (LISTEN)"), "{text}");
    ok(cartinject().arg("-u").arg(&t.arg));

    // Nothing leaked: no mount or mount point in the container, no loop device on the image.
    assert_clean(t.pid, &t.name);
    img.assert_no_loop_device();
}

#[test]
fn walkthrough_in_a_thin_docker_container() {
    require_root();
    let img = TestImage::copy_of(net_image());
    let c = thin_container("walk");
    let t = Target::docker(&c);
    walkthrough(&img, &t);
    c.assert_clean();
}

#[test]
fn walkthrough_in_a_read_only_docker_container() {
    require_root();
    let img = TestImage::copy_of(net_image());
    let c = Container::start_with(&unique("walkro"), thin_image(), &["--read-only"]);
    c.wait_listening(80);
    let before = assert_read_only_root(c.pid);
    let t = Target::docker(&c);
    walkthrough(&img, &t);
    assert_eq!(mount_table(c.pid), before, "the container's mounts changed");
    c.assert_clean();
}

#[test]
fn walkthrough_in_a_user_namespaced_podman_container() {
    require_root();
    let img = TestImage::copy_of(net_image());
    let c = PodmanContainer::start_image("walkuserns", podman_thin_image(), &["--userns=auto"]);
    let t = Target {
        arg: format!("podman:{}", c.name),
        name: c.name.clone(),
        pid: c.pid,
        runtime: "podman",
    };
    // The container's root is an unprivileged host uid.
    assert_user_namespaced(c.pid);
    wait_listening(c.pid, &c.name, 80, LONG);

    // The shell runs as the container's root, and the image's files are that root's.
    let text = ok(&mut inject(
        &img,
        &t.arg,
        &["sh", "-c", "id -u; stat -c %u:%g /dev/crashcart/bin/bash"],
    ));
    assert_eq!(
        text, "0\n0:0\n",
        "not the container's root, or not idmapped"
    );
    walkthrough(&img, &t);
}
