//! Shared harness for the end-to-end tests: the binaries under test, fixture containers and
//! images built from the host's static binaries, a real pty, and the checks every test ends
//! with (no loop device left on its image, no `/dev/crashcart` left in its container).
//!
//! Everything a test creates is named after the test and this process (`cc-<test>-<pid>`)
//! and removed by a guard's `Drop`, also when the test fails. Nothing here asserts global
//! state: other tests and other people's tests run on the same machine at the same time.
//! A missing prerequisite (not root, no Docker, no mke2fs, no musl-gcc) is a failure that
//! says what is missing, never a silent skip.

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod arch;
pub mod attacks;
pub mod hardening;
pub mod runtimes;

// Shared with imagebuilder/tests (testkit): output, prerequisites, tools, digests.
pub use testkit::{
    repo_root, require_root, require_tool, run_tool, sha256_hex, sha256_of, stderr, stdout, tool,
};

/// A binary of the workspace, next to the test executable (`target/<profile>/NAME`).
/// `CRASHCART_TEST_CARTINJECT=PATH` names another `cartinject` for the tests to run
/// (`tests/run` runs the session tests again with the static one that `./build.sh` ships).
pub fn bin(name: &str) -> PathBuf {
    if name == "cartinject"
        && let Some(path) = std::env::var_os("CRASHCART_TEST_CARTINJECT")
    {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "CRASHCART_TEST_CARTINJECT={} is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A `cartinject` command with a clean environment for the variables it reads.
pub fn cartinject() -> Command {
    let mut cmd = Command::new(bin("cartinject"));
    // No image kept between sessions (injector/src/keep.rs): every test checks that its
    // session leaves no loop device behind; tests/inject_keep.rs tests the keeping.
    cmd.env("CARTINJECT_LINGER", "0")
        .env_remove("CARTINJECT_IMAGE")
        .env_remove("CARTINJECT_LEGACY_MOUNT")
        .env_remove("CARTINJECT_VERIFY_KEY")
        .env_remove("CARTINJECT_OCI_MAX_SIZE")
        .env_remove("DOCKER_HOST");
    cmd
}

/// `cartinject IMAGE TARGET [-- COMMAND...]`: a session in `target` with the tools of `image`
/// (a file, or an `oci://` reference) that runs `command`, or the image's shell when it is
/// empty.
pub fn inject(image: impl AsRef<Path>, target: &str, command: &[&str]) -> Command {
    let mut cmd = cartinject();
    cmd.arg(image.as_ref()).arg(target);
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    cmd
}

/// Runs a command to completion, stdin closed, and returns its output.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Starts `cmd` with its stdout piped (stdin and stderr as the caller set them) and reads
/// its first line: the running child, the rest of its stdout, and that line.
pub fn spawn_until_first_line(cmd: &mut Command) -> (Child, BufReader<ChildStdout>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read the first line");
    (child, out, line)
}

/// Asserts a zero exit and returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// A unique name for something a test creates.
pub fn unique(test: &str) -> String {
    format!("cc-{test}-{}", std::process::id())
}

pub(crate) fn hash_of(parts: &[&[u8]]) -> String {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// A directory for fixtures shared by all tests of this process, under the target directory
/// (`target/<profile>/cc-fixtures/<pid>`); directories of earlier runs whose process is gone
/// are removed first, so runs leave nothing to pile up.
pub(crate) fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let base = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable in target/<profile>/deps")
            .join("cc-fixtures");
        if let Ok(old) = std::fs::read_dir(&base) {
            for entry in old.flatten() {
                let alive = entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create the fixture directory");
        dir
    })
}

pub(crate) fn docker_ok() {
    require_tool("docker", "docker.io");
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "the Docker daemon is not running: start dockerd (tests/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Imports the directory `root` (a tarball of it) as image `tag` of `engine` (`docker` or
/// `podman`) with the command `cmd` and the label `cc.fixture=label`, unless an image `tag`
/// with that label is there already: importing again would leave the previous one behind as
/// a dangling image.
pub fn import_root(engine: &str, tag: &str, root: &Path, label: &str, cmd: &str) {
    import_root_as(engine, tag, root, label, cmd, None);
}

/// [`import_root`] with `--platform PLATFORM` (`linux/arm64`) when given.
pub fn import_root_as(
    engine: &str,
    tag: &str,
    root: &Path,
    label: &str,
    cmd: &str,
    platform: Option<&str>,
) {
    let have = Command::new(engine)
        .args([
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"cc.fixture\"}}",
            tag,
        ])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == label);
    if have {
        return;
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    // Podman prints its progress unless told not to; Docker's import has no such option.
    let quiet: &[&str] = if engine == "podman" { &["-q"] } else { &[] };
    let status = Command::new(engine)
        .arg("import")
        .args(quiet)
        .args(platform.map(|p| format!("--platform={p}")))
        .args([
            "-c",
            &format!("LABEL cc.fixture={label}"),
            "-c",
            cmd,
            "-",
            tag,
        ])
        .stdin(tar.stdout.take().expect("tar stdout"))
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {engine} import: {e}"));
    let tar_status = tar.wait().expect("wait for tar");
    assert!(tar_status.success(), "tar of {} failed", root.display());
    assert!(status.success(), "{engine} import {tag} failed");
}

/// Where the thin image's root is assembled (its only file: `httpd`).
pub fn thin_root() -> PathBuf {
    scratch().join("thin-root")
}

/// The "thin" image: its root holds only `/httpd`, a static HTTP server built from
/// `tests/fixtures/httpd.c` (no shell, no `/etc`). Built and imported once per test run.
pub fn thin_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        docker_ok();
        let source = repo_root().join("tests/fixtures/httpd.c");
        let text = std::fs::read(&source).expect("read httpd.c");
        let root = thin_root();
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::copy(static_binary("httpd"), root.join("httpd")).expect("copy httpd");
        let tag = "cc-inject-thin:test".to_string();
        import_root(
            "docker",
            &tag,
            &root,
            &hash_of(&[&text]),
            r#"CMD ["/httpd"]"#,
        );
        tag
    })
}

/// Compiles `tests/fixtures/NAME.c` as a static binary (musl-gcc, else gcc), once per content.
pub fn static_binary(name: &str) -> PathBuf {
    compiled_fixture(name, "", || {
        let cc = ["musl-gcc", "gcc"]
            .into_iter()
            .find(|cc| {
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {cc}"))
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("no C compiler: install musl-tools (tests/run does)");
        Command::new(cc)
    })
}

/// Compiles `tests/fixtures/NAME.c` with the compiler command `compiler` gives, adding
/// `-static -O2 -o OUT SOURCE`, into `<scratch>/NAME[-VARIANT]-<hash of the source>` once per
/// content (a lock keeps the tests of one process from compiling at once).
pub fn compiled_fixture(name: &str, variant: &str, compiler: impl FnOnce() -> Command) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let source = repo_root().join(format!("tests/fixtures/{name}.c"));
    let text = std::fs::read(&source).unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
    let stem = if variant.is_empty() {
        name.to_string()
    } else {
        format!("{name}-{variant}")
    };
    let out = scratch().join(format!("{stem}-{}", hash_of(&[&text])));
    if out.is_file() {
        return out;
    }
    let tmp = out.with_extension("tmp");
    let mut cmd = compiler();
    let status = cmd
        .args(["-static", "-O2", "-o"])
        .arg(&tmp)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("run {cmd:?} (install it with .ci/setup packages): {e}"));
    assert!(status.success(), "compiling {} failed", source.display());
    std::fs::rename(&tmp, &out).expect("rename the compiled fixture");
    out
}

/// The "fat" image: Debian's static busybox as `/bin/sh` and its applets, but no lsof or
/// tcpdump.
pub fn fat_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        docker_ok();
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "/bin/busybox is missing: install busybox-static (tests/run does)"
        );
        let root = scratch().join("fat-root");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "ls", "cat", "sleep", "ps", "echo", "grep"] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        let len = std::fs::metadata(busybox)
            .expect("stat")
            .len()
            .to_le_bytes();
        let tag = "cc-inject-fat:test".to_string();
        import_root(
            "docker",
            &tag,
            &root,
            &hash_of(&[b"fat-v1", &len]),
            r#"CMD ["/bin/sleep", "100000"]"#,
        );
        tag
    })
}

/// The thin image running as `cc-<test>-<pid>`, once its server listens on port 80. Fails
/// unless the test runs as root.
pub fn thin_container(test: &str) -> Container {
    require_root();
    let c = Container::start(test, thin_image());
    c.wait_listening(80);
    c
}

/// `RUNTIME exec NAME COMMAND...` (`docker` or `podman`): asserts a zero exit and returns
/// stdout.
pub fn exec_in(runtime: &str, name: &str, command: &[&str]) -> String {
    ok(Command::new(runtime).arg("exec").arg(name).args(command))
}

/// `nsenter -a -t PID COMMAND...`: `command` in every namespace of `pid`, as the runtime's
/// exec would run it; asserts a zero exit and returns stdout.
pub fn nsenter_all(pid: i32, command: &[&str]) -> String {
    ok(Command::new("nsenter")
        .args(["-a", "-t", &pid.to_string()])
        .args(command))
}

/// A request to the thin image's server (port 80) over the loopback of `pid`'s network
/// namespace, from the host's `curl` run in that namespace: asserts a zero exit and returns
/// the body.
pub fn http_get(pid: i32) -> String {
    require_tool("curl", "curl");
    ok(Command::new("nsenter").args([
        "-t",
        &pid.to_string(),
        "-n",
        "curl",
        "-s",
        "--max-time",
        "10",
        "http://127.0.0.1:80/",
    ]))
}

/// Reads `child`'s stderr until it holds `needle`; returns what was read, and leaves the rest
/// of stderr to the caller.
pub fn stderr_until(child: &mut Child, needle: &str) -> String {
    try_stderr_until(child, needle).unwrap_or_else(|e| panic!("{e}"))
}

/// [`stderr_until`], with an error (what was read) when stderr ends before `needle`.
pub fn try_stderr_until(child: &mut Child, needle: &str) -> Result<String, String> {
    let mut err = child.stderr.take().expect("stderr piped");
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = err.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return Err(format!(
                "ended before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            ));
        }
        seen.extend_from_slice(&buf[..n]);
    }
    child.stderr = Some(err);
    Ok(String::from_utf8_lossy(&seen).into_owned())
}

/// The command that captures one SYN to the thin image's server: `tcpdump -i lo`.
pub const TCPDUMP_ONE_SYN: [&str; 8] = [
    "tcpdump",
    "-i",
    "lo",
    "-n",
    "-l",
    "-c",
    "1",
    "tcp dst port 80 and tcp[tcpflags] & tcp-syn != 0",
];

/// What [`tcpdump_one_request`] saw: tcpdump's exit, what it printed, the server's reply.
pub struct Capture {
    /// How tcpdump ended.
    pub status: std::process::ExitStatus,
    /// Its stdout.
    pub text: String,
    /// The server's answer to the request.
    pub reply: String,
}

/// Runs `cmd` (a session that runs [`TCPDUMP_ONE_SYN`]), sends one request to the thin
/// server of the container whose first process in the host is `pid` once tcpdump listens,
/// and waits (up to `timeout`) for tcpdump. An error when tcpdump ended before listening.
pub fn tcpdump_one_request(
    mut cmd: Command,
    pid: i32,
    timeout: Duration,
) -> Result<Capture, String> {
    let mut dump = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    if let Err(e) = try_stderr_until(&mut dump, "listening on lo") {
        let _ = dump.wait();
        return Err(format!("tcpdump {e}"));
    }
    let reply = http_get(pid);
    let status = wait_with_timeout(&mut dump, timeout);
    let mut text = String::new();
    dump.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read");
    Ok(Capture {
        status,
        text,
        reply,
    })
}

/// `tcpdump -i lo` from `image`, in a session in `target` (whose first process in the host is
/// `pid`), captures the SYN of a request to the thin image's server: asserts the server's
/// reply, tcpdump's exit (within `timeout`) and the packet it printed.
pub fn assert_tcpdump_captures_a_request(
    image: impl AsRef<Path>,
    target: &str,
    pid: i32,
    timeout: Duration,
) {
    let capture = tcpdump_one_request(inject(image, target, &TCPDUMP_ONE_SYN), pid, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(capture.reply, "hello from thin\n");
    assert!(capture.status.success(), "tcpdump: {:?}", capture.status);
    assert!(
        capture.text.contains("127.0.0.1.80: Flags [S]"),
        "{}",
        capture.text
    );
}

/// A `/dev` for a container, read-only: a host directory with the usual device nodes (`null`,
/// `zero`, `urandom`), `pts`, `shm`, `mqueue` and the `fd` link, and whatever a test adds,
/// bound read-only over `/dev` with [`ReadOnlyDev::mount_arg`] (runc then makes no device
/// nodes of its own). Removed on drop.
pub struct ReadOnlyDev {
    dir: tempfile::TempDir,
}

impl ReadOnlyDev {
    /// The standard entries.
    pub fn new() -> ReadOnlyDev {
        let dir = tempfile::Builder::new()
            .prefix("cc-rodev-")
            .tempdir()
            .expect("temp dir");
        for (name, minor) in [("null", "3"), ("zero", "5"), ("urandom", "9")] {
            ok(Command::new("mknod")
                .args(["-m", "666"])
                .arg(dir.path().join(name))
                .args(["c", "1", minor]));
        }
        for sub in ["pts", "shm", "mqueue"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        std::os::unix::fs::symlink("/proc/self/fd", dir.path().join("fd")).expect("symlink");
        ReadOnlyDev { dir }
    }

    /// Adds an empty file `name`.
    pub fn add_file(&self, name: &std::ffi::OsStr) {
        std::fs::write(self.dir.path().join(name), b"").expect("create an entry");
    }

    /// `docker run --mount` option binding it read-only at `/dev`.
    pub fn mount_arg(&self) -> String {
        format!(
            "type=bind,src={},dst=/dev,readonly",
            self.dir.path().display()
        )
    }

    /// Its entries' names, sorted.
    pub fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Default for ReadOnlyDev {
    fn default() -> ReadOnlyDev {
        ReadOnlyDev::new()
    }
}

/// A key pair from `cartbuild keygen --no-password` in `dir`, as `NAME.pub` and `NAME.key`:
/// (public, secret).
pub fn cartbuild_keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    ok(Command::new(bin("cartbuild"))
        .args(["keygen", "--no-password", "--public"])
        .arg(&public)
        .arg("--secret")
        .arg(&secret));
    (public, secret)
}

/// The PID in the host of the first process of the container `id` of `engine` (`docker` or
/// `podman`); fails unless it has one (`name` in the message).
fn first_pid(engine: &str, id: &str, name: &str) -> i32 {
    let pid: i32 = ok(Command::new(engine).args(["inspect", "-f", "{{.State.Pid}}", id]))
        .trim()
        .parse()
        .expect("a PID");
    assert!(pid > 0, "{engine} container {name} has no PID");
    pid
}

/// A running container, removed (`docker rm -f`) on drop.
pub struct Container {
    /// Its name.
    pub name: String,
    /// Its full ID.
    pub id: String,
    /// The PID of its first process in the host.
    pub pid: i32,
}

impl Container {
    /// Starts `image` as `cc-<test>-<pid>` with `--network none`.
    pub fn start(test: &str, image: &str) -> Container {
        let name = unique(test);
        Container::start_named(&name, image)
    }

    /// Starts `image` under `name`.
    pub fn start_named(name: &str, image: &str) -> Container {
        Container::start_with(name, image, &[])
    }

    /// Starts `image` under `name` with extra `docker run` arguments (such as `--read-only`).
    pub fn start_with(name: &str, image: &str, args: &[&str]) -> Container {
        Container::start_with_command(name, image, args, &[])
    }

    /// Starts `image` under `name` with `--network none`, the extra `docker run` options
    /// `args` (before the image name) and `command` after it (none: the image's own).
    pub fn start_with_command(
        name: &str,
        image: &str,
        args: &[&str],
        command: &[&str],
    ) -> Container {
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
        let id = ok(Command::new("docker")
            .args(["run", "-d", "--network", "none", "--name", name])
            .args(args)
            .arg(image)
            .args(command))
        .trim()
        .to_string();
        let pid = first_pid("docker", &id, name);
        Container {
            name: name.to_string(),
            id,
            pid,
        }
    }

    /// `docker exec NAME COMMAND...`: asserts a zero exit and returns stdout.
    pub fn exec(&self, command: &[&str]) -> String {
        exec_in("docker", &self.name, command)
    }

    /// Waits (up to 10 s) until the container listens on TCP port `port`.
    pub fn wait_listening(&self, port: u16) {
        wait_listening(self.pid, &self.name, port, Duration::from_secs(10));
    }

    /// Lines of the container's mountinfo that mention `/dev/crashcart`.
    pub fn crashcart_mounts(&self) -> Vec<String> {
        crashcart_mounts(self.pid)
    }

    /// Asserts that nothing of cartinject is left in the container: no mount, no directory.
    pub fn assert_clean(&self) {
        assert_clean(self.pid, &self.name);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// Asserts that nothing of cartinject is left where the process `pid` (`name` in messages)
/// looks: no mount at `/dev/crashcart` in its mount namespace, no `/dev/crashcart` in its root.
pub fn assert_clean(pid: i32, name: &str) {
    let mounts = crashcart_mounts(pid);
    assert!(mounts.is_empty(), "{name} still has {mounts:?}");
    assert!(
        !Path::new(&format!("/proc/{pid}/root/dev/crashcart")).exists(),
        "{name} still has /dev/crashcart"
    );
}

/// Waits (up to `timeout`) until something listens on TCP port `port` in the network
/// namespace of `pid` (its `/proc/PID/net/tcp`); fails naming `name` if nothing does.
pub fn wait_listening(pid: i32, name: &str, port: u16, timeout: Duration) {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        if tcp.contains(&needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("container {name} does not listen on port {port}");
}

/// Lines of `/proc/PID/mountinfo` that mention `/dev/crashcart`.
pub fn crashcart_mounts(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/dev/crashcart"))
        .map(str::to_string)
        .collect()
}

/// The fixture image every test copies: busybox (with applet symlinks), bash and an rc file,
/// written by the project's own `cartbuild` (its ext4 writer) from a recipe with one `local`
/// package, so the tests exercise the images users get.
fn fixture_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        for (path, package) in [
            ("/bin/busybox", "busybox-static"),
            ("/bin/bash-static", "bash-static"),
        ] {
            assert!(
                Path::new(path).is_file(),
                "{path} is missing: install {package} (tests/run does)"
            );
        }
        let dir = scratch().join("fixture");
        let root = dir.join("image-root");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy");
        std::fs::copy("/bin/bash-static", root.join("bin/bash")).expect("copy");
        let applets = ok(Command::new("/bin/busybox").arg("--list"));
        for applet in applets
            .lines()
            .filter(|a| !a.is_empty() && *a != "busybox" && *a != "bash")
        {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        std::fs::write(
            root.join("etc/bashrc"),
            "alias ll='ls -l'\nCRASHCART_RC=read\n",
        )
        .expect("rc");
        std::fs::write(
            dir.join("fixture.toml"),
            "[image]\nname = \"fixture\"\nversion = \"1\"\n\n\
             [[package]]\nname = \"fixture\"\nversion = \"1\"\nkind = \"local\"\n\
             path = \"image-root\"\ninstall = \".\"\n",
        )
        .expect("recipe");
        let img = dir.join("fixture.img");
        ok(Command::new(bin("cartbuild"))
            .arg(dir.join("fixture.toml"))
            .arg("-o")
            .arg(&img)
            .arg("--cache")
            .arg(dir.join("cache")));
        img
    })
}

/// A test's own copy of an image (so its loop device can be told apart from every other
/// test's), in a temporary directory removed on drop.
pub struct TestImage {
    dir: tempfile::TempDir,
    /// The image file.
    pub path: PathBuf,
}

impl TestImage {
    /// A copy of the fixture image (busybox, bash, an rc file).
    pub fn fixture() -> TestImage {
        TestImage::copy_of(fixture_image())
    }

    /// A copy of `source`.
    pub fn copy_of(source: &Path) -> TestImage {
        let dir = tempfile::Builder::new()
            .prefix("cc-img-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("crashcart.img");
        std::fs::copy(source, &path).expect("copy image");
        // cartinject checks every image against the checksum beside it, as cartbuild writes
        // one (and warns when there is none): each copy gets its own.
        write_checksum(&path);
        TestImage { dir, path }
    }

    /// A copy of `source` with the manifest (which names the image's digest and arch) and the
    /// SBOM beside it, as cartbuild wrote them.
    pub fn copy_with_sidecars(source: &Path) -> TestImage {
        let img = TestImage::copy_of(source);
        for suffix in [".manifest.json", ".spdx.json"] {
            let from = PathBuf::from(format!("{}{suffix}", source.display()));
            std::fs::copy(&from, img.sibling(&format!("crashcart.img{suffix}")))
                .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
        img
    }

    /// A file in the image's directory (for bad images beside it).
    pub fn sibling(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Loop devices whose backing file is this image (sysfs).
    pub fn loop_devices(&self) -> Vec<String> {
        loop_devices_for(&self.path)
    }

    /// What `cartinject --list --json` says: all of it (for messages), and its entries for
    /// this image.
    pub fn listed(&self) -> (serde_json::Value, Vec<serde_json::Value>) {
        let json: serde_json::Value =
            serde_json::from_str(&ok(cartinject().args(["--list", "--json"]))).expect("JSON");
        let ours = json
            .as_array()
            .expect("array")
            .iter()
            .filter(|p| p["image"].as_str() == self.path.to_str())
            .cloned()
            .collect();
        (json, ours)
    }

    /// Waits (up to 10 s: autoclear runs when the last user is gone, which the kernel may
    /// finish a moment after cartinject exits) until no loop device is backed by this image,
    /// and fails the test if one stays.
    pub fn assert_no_loop_device(&self) {
        assert_no_loop_device(&self.path);
    }
}

impl AsRef<Path> for TestImage {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Writes `<image>.sha256` beside `image`, in `sha256sum`'s format (as cartbuild does).
pub fn write_checksum(image: &Path) {
    let digest = sha256_of(image);
    let name = image.file_name().expect("a file name").to_string_lossy();
    let mut sum = image.as_os_str().to_owned();
    sum.push(".sha256");
    std::fs::write(sum, format!("{digest}  {name}\n")).expect("write the checksum");
}

/// Loop devices whose backing file is `image`.
pub fn loop_devices_for(image: &Path) -> Vec<String> {
    let wanted = image.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end();
        if backing == wanted || backing.strip_suffix(" (deleted)") == Some(wanted.as_str()) {
            found.push(format!("/dev/{name}"));
        }
    }
    found
}

/// See [`TestImage::assert_no_loop_device`].
pub fn assert_no_loop_device(image: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = loop_devices_for(image);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "loop devices still attached to {}: {left:?}",
            image.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The image built by `cartbuild recipes/net.toml` (tcpdump, lsof, strace, bash, busybox):
/// `$CRASHCART_NET_IMAGE` when set, else built once per test run with the workspace's
/// `cartbuild` into a temporary directory.
pub fn net_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        if let Some(path) = std::env::var_os("CRASHCART_NET_IMAGE") {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "CRASHCART_NET_IMAGE={} does not exist", path.display());
            return path;
        }
        let img = scratch().join("net.img");
        let out = output(
            Command::new(bin("cartbuild"))
                .arg(repo_root().join("recipes/net.toml"))
                .arg("-o")
                .arg(&img),
        );
        assert!(
            out.status.success(),
            "`cartbuild recipes/net.toml` failed (set CRASHCART_NET_IMAGE to use a built image):\n{}",
            stderr(&out)
        );
        img
    })
}

/// The image built by `cartbuild recipes/full.toml` (the net image plus the toolbox of
/// issue 13): `$CRASHCART_FULL_IMAGE` when set (`tests/run` builds it before the tests),
/// else built once per test run with the workspace's `cartbuild`, into the cache
/// `$CRASHCART_FULL_CACHE` when set (else cartbuild's default cache).
pub fn full_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        if let Some(path) = std::env::var_os("CRASHCART_FULL_IMAGE") {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "CRASHCART_FULL_IMAGE={} does not exist", path.display());
            return path;
        }
        let img = scratch().join("full.img");
        let mut cmd = Command::new(bin("cartbuild"));
        cmd.arg(repo_root().join("recipes/full.toml")).arg("-o").arg(&img);
        if let Some(cache) = std::env::var_os("CRASHCART_FULL_CACHE") {
            cmd.arg("--cache").arg(cache);
        }
        let out = output(&mut cmd);
        assert!(
            out.status.success(),
            "`cartbuild recipes/full.toml` failed (set CRASHCART_FULL_IMAGE to use a built image):\n{}",
            stderr(&out)
        );
        img
    })
}

/// An ext4 image mounted read-only (a loop device) on a new temporary directory for the life
/// of the value.
pub struct Mounted(tempfile::TempDir);

impl Mounted {
    /// Mounts `image`.
    pub fn new(image: &Path) -> Mounted {
        let dir = tempfile::Builder::new()
            .prefix("cc-mounted-")
            .tempdir()
            .expect("temp dir");
        ok(Command::new("mount")
            .args(["-o", "ro,loop", "-t", "ext4"])
            .arg(image)
            .arg(dir.path()));
        Mounted(dir)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A new pseudo-terminal for driving an interactive program like a user would.
pub struct Pty {
    /// The master side: what the "user" reads and writes.
    pub master: File,
    slave: OwnedFd,
}

impl Pty {
    /// Opens a pty pair with the given window size.
    pub fn open(rows: u16, cols: u16) -> Pty {
        let mut master = -1;
        let mut slave = -1;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds into the given ints; name and termios may be NULL;
        // the winsize pointer is valid for the call.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just returned by openpty and are owned by nobody else.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        Pty { master, slave }
    }

    /// Starts `cmd` with the slave as its stdin, stdout, stderr and controlling terminal.
    pub fn spawn(&self, cmd: &mut Command) -> std::process::Child {
        let fd = || File::from(self.slave.try_clone().expect("dup slave"));
        cmd.stdin(fd()).stdout(fd()).stderr(fd());
        // SAFETY: the closure only makes async-signal-safe calls (setsid, ioctl) between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("spawn on the pty")
    }

    /// The terminal settings of the slave side (what cartinject must restore).
    pub fn termios(&self) -> libc::termios {
        // SAFETY: an all-zero termios is a valid value to be overwritten by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open for the life of self; `t` is writable.
        let rc = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        t
    }

    /// Reads from the master until `needle` appears or `timeout` passes; returns all read.
    pub fn read_until(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let fd = self.master.as_raw_fd();
        while Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if n <= 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match self.master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&seen).contains(needle) {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }
}

/// Waits for `child` (up to `timeout`), killing it if it does not end.
pub fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not end within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
