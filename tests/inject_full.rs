//! End-to-end tests of the full image (`recipes/full.toml`, issue 13): every tool of the
//! toolbox runs inside a container that has nothing but its server (the thin image: `/httpd`,
//! no shell, no `/etc`, no `/tmp`), doing the work people use it for, and the full-screen
//! programs run through a real pty (start, read the screen, quit). A last test checks that
//! every executable in the image is a static ELF file.
//!
//! The image is `$CRASHCART_FULL_IMAGE` (`tests/run` builds it first, with a cache), else
//! built once by the harness ([`full_image`]). Needs root, Docker, python3 (the DNS fixture)
//! and what `cartbuild recipes/full.toml` needs.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crashcart_tests::*;

const LONG: Duration = Duration::from_secs(60);

/// The server's reply body (tests/fixtures/httpd.c).
const HELLO: &str = "hello from thin";

/// Runs `script` with the image's bash in a session in `c`, and returns its output (stdout
/// and stderr); the script must exit 0.
fn session(img: &TestImage, c: &Container, script: &str) -> String {
    let out = output(&mut inject(img, &c.name, &["bash", "-c", script]));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "{script}\nexited {:?}:\n{text}",
        out.status
    );
    text
}

#[test]
fn procps_tools_see_the_containers_processes() {
    let c = thin_container("full-procps");
    let img = TestImage::copy_of(full_image());
    let text = session(
        &img,
        &c,
        "ps aux; echo ==pgrep; pgrep -l httpd; echo ==free; free -m; echo ==vmstat; vmstat 1 2; \
         echo ==pmap; pmap 1; echo ==version; ps --version",
    );
    let ps = text.split("==pgrep").next().unwrap_or_default();
    assert!(
        ps.lines()
            .any(|l| l.contains("/httpd") && l.split_whitespace().nth(1) == Some("1")),
        "ps aux does not list the server as PID 1:\n{text}"
    );
    assert!(ps.contains("USER") && ps.contains("%CPU"), "{text}");
    assert!(text.contains("1 httpd"), "pgrep -l httpd:\n{text}");
    assert!(text.contains("Mem:"), "free:\n{text}");
    assert!(
        text.contains("procs") && text.contains("swpd"),
        "vmstat:\n{text}"
    );
    assert!(text.contains("1:   /httpd"), "pmap 1:\n{text}");
    assert!(text.contains("procps-ng"), "ps is not procps-ng's:\n{text}");
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn gdb_attaches_to_the_server_and_prints_a_backtrace() {
    let c = thin_container("full-gdb");
    let img = TestImage::copy_of(full_image());
    // Without -nx: the image's system gdbinit (etc/gdb/gdbinit) is part of what is tested.
    let text = session(&img, &c, "gdb --version; gdb -p 1 -batch -ex bt 2>&1");
    assert!(text.contains("GNU gdb"), "{text}");
    // -batch attaches quietly (no "Attaching to process"); the detach is reported.
    assert!(text.contains("[Inferior 1 (process 1) detached]"), "{text}");
    // gdb read the server's own file (the session cannot enter its mount namespace: the
    // gdbinit's sysroot is the session's /) and its charset works (real iconv).
    assert!(!text.contains("warning:"), "gdb warned:\n{text}");
    // The server waits in accept(2); its symbols name the frame.
    assert!(
        text.lines()
            .any(|l| l.starts_with('#') && l.contains(" in accept ")),
        "no backtrace through accept:\n{text}"
    );
    // Detached: the server still answers.
    assert!(http_get(c.pid).contains(HELLO));
    img.assert_no_loop_device();
    c.assert_clean();
}

/// Sends `keys` on the pty and reads until `needle`; fails naming `what` if it never shows.
fn expect_screen(pty: &mut Pty, keys: &[u8], needle: &str, what: &str) -> String {
    pty.master.write_all(keys).expect("type");
    let screen = pty.read_until(needle, LONG);
    assert!(
        screen.contains(needle),
        "{what}: no {needle:?} on the screen:\n{screen:?}"
    );
    screen
}

#[test]
fn full_screen_programs_run_in_the_sessions_pty() {
    let c = thin_container("full-pty");
    let img = TestImage::copy_of(full_image());
    let mut pty = Pty::open(30, 100);
    let mut cmd = inject(&img, &c.name, &[]);
    cmd.env("TERM", "xterm-256color");
    let mut child = pty.spawn(&mut cmd);
    pty.read_until(" / # ", LONG);

    // Each program draws its screen from the image's terminfo, then quits back to the shell.
    expect_screen(
        &mut pty,
        b"echo T=$TERM I=$TERMINFO; echo ready-$((40+2))\r",
        "ready-42",
        "shell",
    );
    let screen = expect_screen(&mut pty, b"htop\r", "Quit", "htop");
    assert!(
        screen.contains("httpd"),
        "htop does not show the server:\n{screen:?}"
    );
    expect_screen(&mut pty, b"q", " / # ", "htop quits");

    expect_screen(&mut pty, b"vim\r", "IMproved", "vim");
    expect_screen(&mut pty, b":q\r", " / # ", "vim quits");

    // top draws its summary before the process list: read until the server shows.
    let screen = expect_screen(&mut pty, b"top\r", "httpd", "top shows the server");
    assert!(
        screen.contains("load average"),
        "top drew no summary:\n{screen:?}"
    );
    expect_screen(&mut pty, b"q", " / # ", "top quits");

    expect_screen(
        &mut pty,
        b"watch -n 1 echo hello-$((6*7))\r",
        "hello-42",
        "watch",
    );
    expect_screen(&mut pty, b"\x03", " / # ", "watch quits on Ctrl-C");

    expect_screen(
        &mut pty,
        b"echo after-$((6*7))\r",
        "after-42",
        "shell after",
    );
    pty.master.write_all(b"exit\r").expect("type");
    let status = wait_with_timeout(&mut child, LONG);
    assert!(status.success(), "{status:?}");
    img.assert_no_loop_device();
    c.assert_clean();
}

/// A tiny DNS server for the test (python3): answers every A query with 192.0.2.7 on
/// 127.0.0.1:53 of `pid`'s network namespace; killed when dropped.
struct DnsFixture(std::process::Child);

const DNS_SERVER: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    question = q[12:i + 5]
    head = q[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 7])
    s.sendto(head + question + answer, peer)
"#;

impl DnsFixture {
    fn start(pid: i32) -> DnsFixture {
        require_tool("python3", "python3");
        let mut child = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "python3", "-c", DNS_SERVER])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the DNS fixture");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the DNS fixture");
        assert_eq!(line.trim(), "ready", "the DNS fixture did not start");
        DnsFixture(child)
    }
}

impl Drop for DnsFixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn network_tools_talk_to_the_server() {
    let c = thin_container("full-net");
    let img = TestImage::copy_of(full_image());
    let _dns = DnsFixture::start(c.pid);
    let text = session(
        &img,
        &c,
        r#"set -e
echo ==curl; curl -sS http://127.0.0.1/
echo ==socat; printf 'GET / HTTP/1.0\r\n\r\n' | socat -t 5 - TCP:127.0.0.1:80
echo ==nc; printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 127.0.0.1 80
echo ==ss; ss -ltnp
echo ==ip; ip addr
echo ==drill; drill @127.0.0.1 crashcart.test A
echo ==jq; echo '{"a":[1,{"b":"x-42"}]}' | jq -r '.a[1].b'
echo ==ethtool; ethtool lo
echo ==mtr; mtr --report -n -c 1 127.0.0.1
echo ==iperf3; iperf3 -s -1 -p 5201 >/dev/null 2>&1 & sleep 1; iperf3 -c 127.0.0.1 -p 5201 -t 1 -J; wait
echo ==end"#,
    );
    let part = |name: &str| -> String {
        let start = format!("=={name}\n");
        let from = text
            .find(&start)
            .unwrap_or_else(|| panic!("no {name}:\n{text}"));
        let rest = &text[from + start.len()..];
        rest[..rest.find("\n==").unwrap_or(rest.len())].to_string()
    };
    assert!(part("curl").contains(HELLO), "curl:\n{text}");
    assert!(part("socat").contains(HELLO), "socat:\n{text}");
    assert!(part("nc").contains(HELLO), "nc:\n{text}");
    let ss = part("ss");
    assert!(
        ss.lines()
            .any(|l| l.contains(":80 ") && l.contains("httpd")),
        "ss -ltnp does not show the server's socket:\n{ss}"
    );
    let ip = part("ip");
    assert!(
        ip.contains("lo:") && ip.contains("inet 127.0.0.1/8"),
        "ip addr:\n{ip}"
    );
    assert!(part("drill").contains("192.0.2.7"), "drill:\n{text}");
    assert_eq!(part("jq").trim(), "x-42", "jq:\n{text}");
    assert!(
        part("ethtool").contains("Link detected"),
        "ethtool:\n{text}"
    );
    assert!(part("mtr").contains("127.0.0.1"), "mtr --report:\n{text}");
    // iperf3's client against its server, both in the session, over the container's
    // loopback: the JSON report names the server and counts the bytes received. (The
    // container has no /tmp: the image's iperf3 keeps its buffers in a memfd.)
    let iperf = part("iperf3");
    let report: serde_json::Value = serde_json::from_str(iperf.trim())
        .unwrap_or_else(|e| panic!("iperf3 -J is not JSON ({e}):\n{text}"));
    assert_eq!(
        report["start"]["connected"][0]["remote_port"], 5201,
        "iperf3:\n{iperf}"
    );
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(received > 0, "iperf3 moved no bytes:\n{iperf}");
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn openssl_and_curl_verify_certificates() {
    let c = thin_container("full-tls");
    let img = TestImage::copy_of(full_image());
    // The container has no /tmp: the test's files live in its /dev/shm, removed at the end.
    let text = session(
        &img,
        &c,
        r#"set -e
d=/dev/shm/cc-tls; mkdir -p $d; cd $d
echo ==version; openssl version
echo ==dgst; printf abc | openssl dgst -sha256
openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 1 \
    -subj /CN=crashcart-test -addext subjectAltName=IP:127.0.0.1 2>/dev/null
openssl s_server -accept 4433 -cert cert.pem -key key.pem -www -quiet >/dev/null 2>&1 &
server=$!
sleep 1
echo ==s_client; echo | openssl s_client -connect 127.0.0.1:4433 -CAfile cert.pem 2>&1
echo ==default; curl -sS -v https://127.0.0.1:4433/ 2>&1 && echo CURL-ACCEPTED || echo "curl exit $?"
echo ==cacert; curl -sS --cacert cert.pem https://127.0.0.1:4433/ | grep -m1 -o 'Ciphers supported'
kill $server; cd /; rm -rf $d
echo ==end"#,
    );
    let part = |name: &str| -> String {
        let start = format!("=={name}\n");
        let from = text
            .find(&start)
            .unwrap_or_else(|| panic!("no {name}:\n{text}"));
        let rest = &text[from + start.len()..];
        rest[..rest.find("\n==").unwrap_or(rest.len())].to_string()
    };
    assert!(part("version").starts_with("OpenSSL 3"), "{text}");
    assert!(
        part("dgst").contains("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        "{text}"
    );
    assert!(
        part("s_client").contains("Verify return code: 0 (ok)"),
        "{text}"
    );
    // A certificate the image's bundle does not vouch for is refused by default, and the
    // bundle curl used is the image's.
    let default = part("default");
    assert!(
        default.contains("curl exit 60") && !default.contains("CURL-ACCEPTED"),
        "curl accepted a self-signed certificate:\n{default}"
    );
    assert!(
        default.contains("/dev/crashcart/etc/ssl/"),
        "curl did not use the image's CA bundle:\n{default}"
    );
    // s_server -www's page, fetched over a connection curl verified with --cacert.
    assert_eq!(part("cacert").trim(), "Ciphers supported", "{text}");
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn crashcart_info_lists_every_tool_with_its_version() {
    let c = thin_container("full-info");
    let img = TestImage::copy_of(full_image());
    let text = session(&img, &c, "crashcart-info");
    assert!(text.contains("crashcart image full"), "{text}");
    for (tool, package) in [
        ("gdb", "gdb"),
        ("htop", "htop"),
        ("vim", "vim"),
        ("ps", "procps-ng"),
        ("top", "procps-ng"),
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("ss", "iproute2"),
        ("jq", "jq"),
        ("iperf3", "iperf3"),
    ] {
        assert!(
            text.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 3 && w[0] == tool && w[1] == package
            }),
            "crashcart-info does not list {tool} of {package}:\n{text}"
        );
    }
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn every_executable_in_the_image_is_a_static_elf() {
    require_root();
    let img = TestImage::copy_of(full_image());
    let mounted = Mounted::new(&img.path);
    let root = mounted.path();
    let mut checked = 0;
    let mut scripts = Vec::new();
    for dir in ["bin", "sbin"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("read_dir");
            let meta = std::fs::symlink_metadata(entry.path()).expect("lstat");
            if !meta.is_file() {
                continue;
            }
            use std::os::unix::fs::PermissionsExt;
            assert!(
                meta.permissions().mode() & 0o111 != 0,
                "{} is not executable",
                entry.path().display()
            );
            match cartbuild::elf::inspect(&entry.path()).expect("read the ELF headers") {
                Some(info) => {
                    assert!(info.is_loadable(), "{}: {info:?}", entry.path().display());
                    assert_eq!(
                        info.interpreter,
                        None,
                        "{} has a loader",
                        entry.path().display()
                    );
                    assert_eq!(info.needed, 0, "{} needs libraries", entry.path().display());
                    checked += 1;
                }
                // Shell scripts of the image (crashcart-info), run by the image's shell.
                None => {
                    let text = std::fs::read(entry.path()).expect("read");
                    assert!(
                        text.starts_with(b"#!/dev/crashcart/bin/"),
                        "{} is neither ELF nor a script of the image",
                        entry.path().display()
                    );
                    scripts.push(entry.file_name());
                }
            }
        }
    }
    for tool in [
        "gdb", "htop", "vim", "ps", "top", "curl", "openssl", "ip", "jq",
    ] {
        assert!(root.join("bin").join(tool).is_file(), "no bin/{tool}");
    }
    assert!(checked >= 20, "only {checked} ELF files checked");
    assert_eq!(scripts, ["crashcart-info"], "unexpected scripts");
    drop(mounted);
    img.assert_no_loop_device();
}
