//! Helpers for cartbuild's integration tests: a real HTTP server on 127.0.0.1
//! that can misbehave on purpose, synthetic source tarballs, and a runner for the
//! real `cartbuild` binary with an isolated cache, config and output.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Shared with tests/harness (testkit): output, prerequisites, tools, digests. Each test
// crate that includes this module uses some of them (as with dead_code above).
pub use testkit::sha256_hex as sha256;
#[allow(unused_imports)]
pub use testkit::{repo_root, require_root, run_tool, stderr, stdout, tool};

/// Compiles the C `source` into a static executable with musl-gcc, in `dir`; returns its
/// bytes (for `kind = "file"` packages, which must be static).
pub fn static_program(dir: &Path, source: &str) -> Vec<u8> {
    let c = dir.join("prog.c");
    fs::write(&c, source).unwrap();
    let prog = dir.join("prog");
    let st = Command::new("musl-gcc")
        .args(["-static", "-o"])
        .arg(&prog)
        .arg(&c)
        .status()
        .expect("musl-gcc is missing: apt-get install musl-tools");
    assert!(st.success());
    fs::read(&prog).unwrap()
}

/// What the server does for one path.
#[derive(Debug, Clone)]
pub enum Route {
    /// 200 with this body.
    Serve(Vec<u8>),
    /// 404.
    NotFound,
    /// Closes the connection with a TCP reset without answering.
    Reset,
    /// Sends the headers and half the body, then says nothing for a long time.
    Stall(Vec<u8>),
    /// Announces the full length but sends only the first `n` bytes, then closes.
    Truncate(Vec<u8>, usize),
    /// 302 to another path on this server.
    Redirect(String),
}

#[derive(Default)]
struct State {
    routes: BTreeMap<String, Route>,
    hits: BTreeMap<String, usize>,
}

/// An HTTP/1.1 server on 127.0.0.1, one thread per connection.
pub struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    /// Starts the server on a free port.
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || handle(stream, st, port));
            }
        });
        Server { port, state }
    }

    /// Sets what `path` answers.
    pub fn route(&self, path: &str, route: Route) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), route);
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The base URL, for `--mirror NAME=URL`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_hits(&self) -> usize {
        self.state.lock().unwrap().hits.values().sum()
    }
}

fn handle(mut stream: TcpStream, state: Arc<Mutex<State>>, port: u16) {
    // Wait for the request to arrive, then decide without consuming it (a reset
    // must close with unread data, which makes the kernel send RST).
    let mut peek = [0u8; 1024];
    let Ok(n) = stream.peek(&mut peek) else {
        return;
    };
    let head = String::from_utf8_lossy(&peek[..n]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let route = {
        let mut st = state.lock().unwrap();
        *st.hits.entry(path.clone()).or_default() += 1;
        st.routes.get(&path).cloned()
    };
    if let Some(Route::Reset) = route {
        drop(stream);
        return;
    }
    // Consume the request head.
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let header = |status: &str, len: usize, extra: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n")
    };
    let _ = match route {
        None | Some(Route::NotFound) => stream.write_all(header("404 Not Found", 0, "").as_bytes()),
        Some(Route::Serve(body)) => stream
            .write_all(header("200 OK", body.len(), "").as_bytes())
            .and_then(|_| stream.write_all(&body)),
        Some(Route::Truncate(body, n)) => stream
            .write_all(header("200 OK", body.len(), "").as_bytes())
            .and_then(|_| stream.write_all(&body[..n])),
        Some(Route::Stall(body)) => {
            let r = stream
                .write_all(header("200 OK", body.len(), "").as_bytes())
                .and_then(|_| stream.write_all(&body[..body.len() / 2]))
                .and_then(|_| stream.flush());
            std::thread::sleep(Duration::from_secs(20));
            r
        }
        Some(Route::Redirect(to)) => stream.write_all(
            header(
                "302 Found",
                0,
                &format!("Location: http://127.0.0.1:{port}{to}\r\n"),
            )
            .as_bytes(),
        ),
        Some(Route::Reset) => Ok(()),
    };
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Drain what the client still sends so the close is clean.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.read(&mut [0u8; 64]);
}

/// A gzipped tarball with `files` (path, contents, mode) under one top directory.
pub fn tarball(top: &str, files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, format!("{top}/{path}"), *data)
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A source tarball of a C program printing `message`.
pub fn hello_source(message: &str) -> Vec<u8> {
    let c = format!("#include <stdio.h>\nint main(void) {{ puts(\"{message}\"); return 0; }}\n");
    tarball("hello-1.0", &[("hello.c", c.as_bytes(), 0o644)])
}

/// A server with the hello source (printing `message`) at `/hello.tar.gz`;
/// returns it with the source's bytes and their sha256.
pub fn hello_server(message: &str) -> (Server, Vec<u8>, String) {
    let s = Server::start();
    let src = hello_source(message);
    let sha = sha256(&src);
    s.route("/hello.tar.gz", Route::Serve(src.clone()));
    (s, src, sha)
}

/// An isolated cartbuild environment: its own cache, config dir and output.
pub struct Env {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// The packages whose scripts ran, in order, over every [`Env::run`] (build
    /// scripts run sandboxed and cannot count themselves in a file of the test).
    built: Mutex<Vec<String>>,
}

impl Env {
    /// A fresh environment.
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cartbuild-test-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("config")).unwrap();
        Env {
            dir,
            built: Mutex::default(),
        }
    }

    /// The cache directory.
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Where the image is written.
    pub fn image(&self) -> PathBuf {
        self.dir.path().join("out/test.img")
    }

    /// A file of the test's own (no build script can write outside its sandbox).
    pub fn counter(&self) -> PathBuf {
        self.dir.path().join("builds.count")
    }

    /// How many build scripts ran in [`Env::run`]s.
    pub fn builds(&self) -> usize {
        self.built().len()
    }

    /// The packages whose scripts ran in [`Env::run`]s, in order (cartbuild's
    /// `[NAME] build` lines).
    pub fn built(&self) -> Vec<String> {
        self.built.lock().unwrap().clone()
    }

    /// Writes `text` as `name` in the environment and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    /// `cartbuild RECIPE` with the test's cache, output, config and fast
    /// network timeouts; nothing of the caller's cartbuild settings leaks in.
    pub fn command(&self, recipe: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cartbuild"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CARTBUILD_") || k == "SOURCE_DATE_EPOCH" {
                c.env_remove(k);
            }
        }
        c.env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .arg(recipe)
            .arg("--cache")
            .arg(self.cache())
            .arg("-o")
            .arg(self.image())
            .args(["--connect-timeout", "2", "--read-timeout", "0.5"])
            .args(["--retries", "1", "--retry-delay", "0.05"]);
        c
    }

    /// Runs `cartbuild RECIPE ARGS...`.
    pub fn run(&self, recipe: &Path, args: &[&str]) -> Output {
        let o = self
            .command(recipe)
            .args(args)
            .output()
            .expect("run cartbuild");
        let mut built = self.built.lock().unwrap();
        for line in String::from_utf8_lossy(&o.stderr).lines() {
            if let Some(name) = line
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix("] build"))
            {
                built.push(name.to_string());
            }
        }
        o
    }
}

/// A recipe with one `build` package `hello` fetched from `urls`.
pub fn hello_recipe(_env: &Env, urls: &[String], sha: &str) -> String {
    one_package_recipe(
        "hello",
        urls,
        sha,
        None,
        "mkdir -p \"$OUT/bin\"\n$CC $CFLAGS $LDFLAGS -o \"$OUT/bin/hello\" hello.c",
    )
}

/// A recipe (image `test`) with one `build` package `name` fetched from `urls`, built by
/// `script`, installing `install` (a TOML array) when given.
pub fn one_package_recipe(
    name: &str,
    urls: &[String],
    sha: &str,
    install: Option<&str>,
    script: &str,
) -> String {
    let install = install.map_or(String::new(), |i| format!("install = {i}\n"));
    format!(
        r#"[image]
name = "test"
version = "1.0"
epoch = 1700000000

[[package]]
name = "{name}"
version = "1.0"
license = "MIT"
urls = {urls:?}
sha256 = "{sha}"
{install}script = """
{script}
"""
"#
    )
}

/// Asserts a clean failure: non-zero exit, exactly one `cartbuild: error:` line
/// (the last) that contains every needle; no image and no temporary image left;
/// nothing unverified in the cache.
pub fn assert_fails(env: &Env, o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success:\n{err}");
    let error_lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("cartbuild: error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "expected one error line:\n{err}");
    let last = err.lines().last().unwrap_or("");
    assert_eq!(
        last, error_lines[0],
        "the error is not the last line:\n{err}"
    );
    for n in needles {
        assert!(last.contains(n), "{n:?} not in the error line:\n{last}");
    }
    assert_no_image(env);
    assert_cache_verified(env);
    last.to_string()
}

/// No image, and no temporary file beside where it would be.
pub fn assert_no_image(env: &Env) {
    let img = env.image();
    assert!(!img.exists(), "{} was written", img.display());
    if let Ok(rd) = fs::read_dir(img.parent().unwrap()) {
        let left: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "left in the output directory: {left:?}");
    }
}

/// Every cached source is named by its content's sha256, and no temporary is
/// left in the cache.
pub fn assert_cache_verified(env: &Env) {
    let sources = env.cache().join("sources/sha256");
    if let Ok(rd) = fs::read_dir(&sources) {
        for e in rd {
            let e = e.unwrap();
            let bytes = fs::read(e.path()).unwrap();
            assert_eq!(
                e.file_name().to_string_lossy(),
                sha256(&bytes),
                "unverified file in the cache"
            );
        }
    }
    if let Ok(rd) = fs::read_dir(env.cache().join("tmp")) {
        let left: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "temporaries left in the cache: {left:?}");
    }
}

/// The cached source files.
pub fn cached_sources(env: &Env) -> Vec<String> {
    fs::read_dir(env.cache().join("sources/sha256"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a file out of an ext4 image with debugfs (no root, no mount).
pub fn image_file(image: &Path, path: &str, to: &Path) {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump -p {path} {}", to.display()))
        .arg(image)
        .output()
        .expect("debugfs is missing: apt-get install e2fsprogs");
    assert!(
        to.exists(),
        "{path} not in the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `e2fsck -fn` passes on the image.
pub fn assert_fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("e2fsck is missing: apt-get install e2fsprogs");
    assert!(
        out.status.success(),
        "e2fsck -fn failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A read-only loop mount of the filesystem at `offset` (of `size` bytes, or
/// to the end) of an image file. `Drop` unmounts and detaches even when the
/// test fails; `finish` does it checking every step.
pub struct LoopMount {
    image: PathBuf,
    device: String,
    dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopMount {
    /// Attaches and mounts.
    pub fn new(image: &Path, offset: u64, size: Option<u64>) -> LoopMount {
        require_root();
        let offset = offset.to_string();
        let mut args: Vec<std::ffi::OsString> = vec![
            "--find".into(),
            "--show".into(),
            "--read-only".into(),
            "--offset".into(),
            offset.into(),
        ];
        if let Some(size) = size {
            args.push("--sizelimit".into());
            args.push(size.to_string().into());
        }
        args.push(image.as_os_str().to_owned());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = run_tool("losetup", &refs);
        assert!(
            out.status.success(),
            "losetup {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut guard = LoopMount {
            image: image.to_path_buf(),
            device: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir: tempfile::tempdir().expect("mount point"),
            mounted: false,
        };
        let out = run_tool(
            "mount",
            &[
                "-t".as_ref(),
                "ext4".as_ref(),
                "-o".as_ref(),
                "ro".as_ref(),
                guard.device.as_ref(),
                guard.dir.path().as_os_str(),
            ],
        );
        assert!(
            out.status.success(),
            "mount {} ({}): {}",
            guard.device,
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        guard.mounted = true;
        guard
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Unmounts and detaches, then checks that no loop device is left on the
    /// image.
    pub fn finish(mut self) {
        // Whatever else runs on the machine may hold the fresh mount for a
        // moment (a scan of /tmp, a process whose cwd passes through it):
        // "target is busy" is retried for a few seconds, not a failure.
        let mut out = run_tool("umount", &[self.dir.path().as_os_str()]);
        for _ in 0..50 {
            if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            out = run_tool("umount", &[self.dir.path().as_os_str()]);
        }
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = false;
        let out = run_tool("losetup", &["-d".as_ref(), self.device.as_ref()]);
        assert!(
            out.status.success(),
            "losetup -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run_tool("losetup", &["-j".as_ref(), self.image.as_os_str()]);
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "a loop device is still attached to {}",
            self.image.display()
        );
        self.device.clear();
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            // A process of another test passing through the fresh mount can
            // make it busy for a moment: retry, then detach it lazily.
            let umount = || {
                Command::new(tool("umount"))
                    .arg(self.dir.path())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let mut done = umount();
            for _ in 0..30 {
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                done = umount();
            }
            if !done {
                let _ = Command::new(tool("umount"))
                    .arg("-l")
                    .arg(self.dir.path())
                    .status();
            }
        }
        if !self.device.is_empty() {
            let _ = Command::new(tool("losetup"))
                .args(["-d", &self.device])
                .status();
        }
    }
}

/// Reads a file out of an ext4 image with ext4-view (no root, no mount, no
/// e2fsprogs).
pub fn read_from_image(image: &Path, path: &str) -> Vec<u8> {
    let fs = ext4_view::Ext4::load_from_path(image).expect("ext4-view loads the image");
    fs.read(path)
        .unwrap_or_else(|e| panic!("{path} in {}: {e}", image.display()))
}

/// The structural rules of SPDX 2.3 JSON that a consumer relies on.
pub fn check_spdx(doc: &serde_json::Value) {
    let s = |v: &serde_json::Value, what: &str| -> String {
        v.as_str()
            .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
            .to_string()
    };
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["dataLicense"], "CC0-1.0");
    assert_eq!(doc["SPDXID"], "SPDXRef-DOCUMENT");
    assert!(!s(&doc["name"], "name").is_empty());
    let ns = s(&doc["documentNamespace"], "documentNamespace");
    assert!(ns.starts_with("https://") && !ns.contains('#'), "{ns}");
    let created = s(&doc["creationInfo"]["created"], "created");
    assert!(
        created.len() == 20
            && created.ends_with('Z')
            && created.as_bytes()[10] == b'T'
            && created.chars().filter(char::is_ascii_digit).count() == 14,
        "{created}"
    );
    let creators = doc["creationInfo"]["creators"].as_array().unwrap();
    assert!(!creators.is_empty());
    for c in creators {
        let c = s(c, "creator");
        assert!(
            c.starts_with("Tool: ") || c.starts_with("Organization: ") || c.starts_with("Person: "),
            "{c}"
        );
    }
    let id_ok = |id: &str| {
        id.strip_prefix("SPDXRef-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        })
    };
    let hex = |v: &str, n: usize| v.len() == n && v.chars().all(|c| c.is_ascii_hexdigit());
    let check_sums = |sums: &serde_json::Value, what: &str| {
        for c in sums.as_array().unwrap_or(&vec![]) {
            let alg = s(&c["algorithm"], "algorithm");
            let value = s(&c["checksumValue"], "checksumValue");
            let len = match alg.as_str() {
                "SHA1" => 40,
                "SHA256" => 64,
                other => panic!("{what}: unexpected algorithm {other}"),
            };
            assert!(hex(&value, len), "{what}: bad {alg} {value}");
        }
    };
    let mut ids = BTreeSet::from(["SPDXRef-DOCUMENT".to_string()]);
    let mut not_analyzed = BTreeSet::new();
    for p in doc["packages"].as_array().expect("packages") {
        let id = s(&p["SPDXID"], "package SPDXID");
        assert!(id_ok(&id), "{id}");
        assert!(ids.insert(id.clone()), "duplicate {id}");
        assert!(!s(&p["name"], "package name").is_empty());
        s(&p["downloadLocation"], "downloadLocation");
        s(&p["licenseConcluded"], "licenseConcluded");
        s(&p["licenseDeclared"], "licenseDeclared");
        let analyzed = p["filesAnalyzed"].as_bool().expect("filesAnalyzed");
        if analyzed {
            let code = s(
                &p["packageVerificationCode"]["packageVerificationCodeValue"],
                "verification code",
            );
            assert!(hex(&code, 40), "{code}");
        } else {
            not_analyzed.insert(id.clone());
        }
        check_sums(&p["checksums"], &id);
    }
    let mut files = BTreeSet::new();
    for f in doc["files"].as_array().expect("files") {
        let id = s(&f["SPDXID"], "file SPDXID");
        assert!(id_ok(&id), "{id}");
        assert!(ids.insert(id.clone()), "duplicate {id}");
        assert!(s(&f["fileName"], "fileName").starts_with("./"));
        let algs: Vec<&str> = f["checksums"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["algorithm"].as_str().unwrap())
            .collect();
        assert!(algs.contains(&"SHA1"), "{id}: SPDX 2.3 requires SHA1");
        check_sums(&f["checksums"], &id);
        files.insert(id);
    }
    let allowed = [
        "DESCRIBES",
        "CONTAINS",
        "DEPENDS_ON",
        "GENERATED_FROM",
        "STATIC_LINK",
    ];
    let mut describes = false;
    let mut contained = BTreeSet::new();
    for r in doc["relationships"].as_array().expect("relationships") {
        let from = s(&r["spdxElementId"], "spdxElementId");
        let to = s(&r["relatedSpdxElement"], "relatedSpdxElement");
        let kind = s(&r["relationshipType"], "relationshipType");
        assert!(allowed.contains(&kind.as_str()), "{kind}");
        assert!(ids.contains(&from), "relationship from unknown {from}");
        assert!(ids.contains(&to), "relationship to unknown {to}");
        if kind == "DESCRIBES" && from == "SPDXRef-DOCUMENT" {
            describes = true;
        }
        if kind == "CONTAINS" {
            assert!(
                !not_analyzed.contains(&from),
                "{from} has filesAnalyzed false but CONTAINS {to}"
            );
            contained.insert(to);
        }
    }
    assert!(describes, "nothing is DESCRIBED by the document");
    assert_eq!(contained, files, "every file is CONTAINed by the image");
}

/// `pyspdxtools` from `spdx-tools` (the SPDX project's own validator): on
/// PATH, or installed once into a virtualenv in the target directory.
pub fn spdx_validator() -> PathBuf {
    if let Ok(paths) = std::env::var("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("pyspdxtools");
            if p.is_file() {
                return p;
            }
        }
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spdx-tools-venv");
    let bin = venv.join("bin/pyspdxtools");
    if bin.is_file() {
        return bin;
    }
    let lock = venv.with_extension("lock");
    let _ = fs::create_dir_all(lock.parent().unwrap());
    // One installer at a time (tests run in parallel).
    let lock_file = fs::File::create(&lock).unwrap();
    let st = Command::new("flock")
        .arg(lock.as_os_str())
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "[ -x {bin} ] || {{ python3 -m venv {venv} && {venv}/bin/pip install --quiet spdx-tools==0.8.5; }}",
            bin = bin.display(),
            venv = venv.display()
        ))
        .status()
        .expect("cannot run flock/python3: apt-get install util-linux python3-venv");
    drop(lock_file);
    assert!(
        st.success() && bin.is_file(),
        "cannot install the SPDX validator: `python3 -m venv` and `pip install spdx-tools` \
         must work (apt-get install python3-venv; PyPI must be reachable)"
    );
    bin
}

/// The processes whose `/proc/PID` directory `pick` accepts (a process may go between
/// the listing and what `pick` reads of it: `pick` then says no).
pub fn processes(pick: impl Fn(&Path) -> bool) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
            && pick(&e.path())
        {
            pids.push(pid);
        }
    }
    pids
}
