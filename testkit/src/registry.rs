//! Real registries on 127.0.0.1 for the OCI tests, shared by `imagebuilder/tests/push.rs` and
//! `tests/inject_oci.rs`: the one `.ci/setup` starts on
//! 127.0.0.1:5000, private `docker-registry` instances with their own storage (for tests that
//! damage what is stored), a tiny crashcart image built by `cartbuild`, and a recording relay
//! that counts the requests a client makes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where `.ci/setup` runs the shared registry.
pub const CI_REGISTRY: &str = "127.0.0.1:5000";

/// `GET path` on 127.0.0.1:port: the status code, or `None` when nothing answers.
pub fn http_status(authority: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(authority).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").ok()?;
    let mut head = String::new();
    s.read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The registry `.ci/setup` starts; fails the test when it does not answer.
pub fn ci_registry() -> &'static str {
    let status = http_status(CI_REGISTRY, "/v2/");
    assert_eq!(
        status,
        Some(200),
        "no open registry answers on {CI_REGISTRY}: start it with `.ci/setup services` (tests/run does; it needs the Debian package docker-registry)"
    );
    CI_REGISTRY
}

/// A repository name of this test and process (`crashcart-tests/<test>-<pid>`).
pub fn repository(test: &str) -> String {
    format!("crashcart-tests/{test}-{}", std::process::id())
}

/// A `docker-registry` of our own on a free port of 127.0.0.1, with its storage in a
/// temporary directory; killed and removed on drop.
pub struct PrivateRegistry {
    /// Its port.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PrivateRegistry {
    /// Starts one and waits until `/v2/` answers.
    pub fn start() -> PrivateRegistry {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("docker-registry is missing: install the Debian package docker-registry (tests/run does)");
        let dir = tempfile::Builder::new()
            .prefix("cc-registry-")
            .tempdir()
            .expect("temp dir");
        for _attempt in 0..5 {
            // A free port: bound and released just before the registry binds it.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("storage").display()
                ),
            )
            .expect("write config");
            let log = std::fs::File::create(dir.path().join("log")).expect("log");
            let mut child = Command::new(binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if http_status(&format!("127.0.0.1:{port}"), "/v2/") == Some(200) {
                    return PrivateRegistry { port, child, dir };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        panic!("docker-registry did not come up on 127.0.0.1; its log:\n{log}");
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file holding blob `hex` in the registry's storage.
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Flips one byte in the middle of `path` (same size, different content).
pub fn tamper(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The sha256 hex in `oci://…@sha256:<hex>`.
pub fn digest_hex(reference: &str) -> String {
    let hex = reference
        .trim()
        .rsplit_once("@sha256:")
        .unwrap_or_else(|| panic!("{reference:?} names no digest"))
        .1;
    assert_eq!(hex.len(), 64, "{reference:?}");
    hex.to_string()
}

/// A tiny crashcart image built by `cartbuild` (the binary at `cartbuild`) from a recipe that
/// holds the host's static busybox as `bin/busybox` with `bin/sh` beside it, written with its
/// sidecars into `dir` as `tiny-<version>.img`. Needs busybox-static.
pub fn tiny_image(cartbuild: &Path, dir: &Path, version: &str) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: install busybox-static (tests/run does)"
    );
    let files = dir.join("files/bin");
    std::fs::create_dir_all(&files).expect("mkdir");
    std::fs::copy(busybox, files.join("busybox")).expect("copy busybox");
    let _ = std::os::unix::fs::symlink("busybox", files.join("sh"));
    let recipe = dir.join("tiny.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"tiny\"\nversion = \"{version}\"\nepoch = 1767225600\n\n[[package]]\nname = \"busybox\"\nversion = \"host\"\nkind = \"local\"\npath = \"files/bin\"\ninstall = \"bin\"\n"
        ),
    )
    .expect("write recipe");
    let image = dir.join("out").join(format!("tiny-{version}.img"));
    let out = Command::new(cartbuild)
        .arg(&recipe)
        .arg("-o")
        .arg(&image)
        .arg("--cache")
        .arg(dir.join("cache"))
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .output()
        .expect("run cartbuild");
    assert!(
        out.status.success(),
        "cartbuild {} failed: {}",
        recipe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// A relay on 127.0.0.1 to another port that records the request line of every HTTP
/// request sent through it (`GET /v2/…`), so a test can count what a client asked.
pub struct Recorder {
    /// The port to send requests to.
    pub port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    /// Relays to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let seen = seen2.clone();
                        std::thread::spawn(move || relay(client, upstream, seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Recorder { port, seen, stop }
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The request lines seen so far (`METHOD PATH`), and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, upstream: u16, seen: Arc<Mutex<Vec<String>>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (mut c_read, mut s_write) = (
        client.try_clone().expect("dup"),
        server.try_clone().expect("dup"),
    );
    let (mut s_read, mut c_write) = (server, client);
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Write);
    });
    // Client to server: scan for request lines. Pull requests carry no body, so every line
    // that looks like one is one (uploads' bodies could fake one; these tests pull through
    // the relay).
    let mut pending = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = match c_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 2);
            let mut words = line.split(' ');
            if let (Some(method), Some(path), Some(version)) =
                (words.next(), words.next(), words.next())
                && version.starts_with("HTTP/1")
                && ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].contains(&method)
            {
                seen.lock().expect("lock").push(format!("{method} {path}"));
            }
        }
        if s_write.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = s_write.shutdown(Shutdown::Write);
    let _ = back.join();
}
