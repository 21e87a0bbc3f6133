//! Fixtures for the tests of other runtimes and other kinds of container: Podman containers,
//! containerd tasks started with `ctr`, images in other formats (erofs, squashfs, a GPT disk),
//! and snapshots of a container's mount table to compare.
//!
//! As in the rest of the harness, everything is named after the test and this process and
//! removed by a guard's `Drop`; a missing tool is a failure that names the package.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{fat_image, fixture_image, ok, output, require_tool, scratch, stderr, unique};

/// The busybox root every runtime's fixture image is made from (the Docker fat image's).
fn fat_root() -> PathBuf {
    fat_image();
    scratch().join("fat-root")
}

/// Fails unless Podman works.
pub fn require_podman() {
    require_tool("podman", "podman");
    let out =
        output(Command::new("podman").args(["info", "--format", "{{.Host.OCIRuntime.Name}}"]));
    assert!(
        out.status.success(),
        "podman does not work here: {}",
        stderr(&out)
    );
}

/// The fat image (busybox, `sleep` as its command) imported into Podman, unless an import
/// of the same Docker image (its ID as a label) is there already: importing again would leave
/// the previous one behind as a dangling image.
pub fn podman_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let tag = "localhost/cc-inject-fat:test";
        podman_import(
            tag,
            fat_image(),
            &fat_root(),
            r#"CMD ["/bin/sleep", "100000"]"#,
        );
        tag.to_string()
    })
}

/// Imports `root` into Podman as `tag` (with `cmd`), labelled with the ID of the Docker image
/// `docker_tag` made from the same root, unless that import is there already: importing again
/// would leave the previous one behind as a dangling image.
fn podman_import(tag: &str, docker_tag: &str, root: &Path, cmd: &str) {
    require_podman();
    let source = ok(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", docker_tag]))
        .trim()
        .to_string();
    crate::import_root("podman", tag, root, &source, cmd);
}

/// The thin image (nothing but a static HTTP server, `/httpd` its command) imported into
/// Podman, unless an import of the same Docker image is there already.
pub fn podman_thin_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let tag = "localhost/cc-inject-thin:test";
        podman_import(
            tag,
            crate::thin_image(),
            &crate::thin_root(),
            r#"CMD ["/httpd"]"#,
        );
        tag.to_string()
    })
}

/// Asserts that the container whose first process is `pid` is user-namespaced (its root is
/// an unprivileged uid of the host) and returns that uid.
pub fn assert_user_namespaced(pid: i32) -> u64 {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("uid_map");
    let host_uid: u64 = map
        .split_whitespace()
        .nth(1)
        .and_then(|u| u.parse().ok())
        .expect("a uid map");
    assert_ne!(host_uid, 0, "the container is not user-namespaced: {map}");
    host_uid
}

/// A running Podman container, removed (`podman rm -f`) on drop.
pub struct PodmanContainer {
    /// Its name.
    pub name: String,
    /// Its full ID.
    pub id: String,
    /// Its first process, in the host.
    pub pid: i32,
}

impl PodmanContainer {
    /// Starts the fat image as `cc-<test>-<pid>` with runc, `--network none` and the extra
    /// `args` (such as `--userns=auto`).
    pub fn start(test: &str, args: &[&str]) -> PodmanContainer {
        PodmanContainer::start_image(test, podman_image(), args)
    }

    /// Starts `image` as `cc-<test>-<pid>`, like [`PodmanContainer::start`].
    pub fn start_image(test: &str, image: &str, args: &[&str]) -> PodmanContainer {
        PodmanContainer::start_named(&unique(test), image, args)
    }

    /// Starts `image` under `name` (removing any container of that name first), like
    /// [`PodmanContainer::start`].
    pub fn start_named(name: &str, image: &str, args: &[&str]) -> PodmanContainer {
        let _ = output(Command::new("podman").args(["rm", "-f", "-t", "0", name]));
        let id = ok(Command::new("podman")
            .args(["--runtime", "runc", "run", "-d"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["--network", "none", "--name", name])
            .args(args)
            .arg(image))
        .trim()
        .to_string();
        let pid = crate::first_pid("podman", &id, name);
        PodmanContainer {
            name: name.to_string(),
            id,
            pid,
        }
    }

    /// Asserts that nothing of cartinject is left in the container: no mount, no directory.
    pub fn assert_clean(&self) {
        crate::assert_clean(self.pid, &self.name);
    }

    /// `podman exec NAME COMMAND...`: asserts a zero exit and returns stdout.
    pub fn exec(&self, command: &[&str]) -> String {
        crate::exec_in("podman", &self.name, command)
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = output(Command::new("podman").args(["rm", "-f", "-t", "0", &self.name]));
    }
}

/// Fails unless `ctr` reaches a running standalone containerd.
pub fn require_containerd() {
    require_tool("ctr", "containerd");
    let out = output(Command::new("ctr").arg("version"));
    assert!(
        out.status.success(),
        "containerd is not running on /run/containerd/containerd.sock: start it (.ci/setup services does): {}",
        stderr(&out)
    );
}

/// The fat image imported into containerd namespace `ns` (from `docker save`).
pub fn ctr_image(ns: &str) -> &'static str {
    const TAG: &str = "docker.io/library/cc-inject-fat:test";
    static DONE: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().expect("lock");
    if !done.iter().any(|n| n == ns) {
        require_containerd();
        let docker_tag = fat_image();
        let tar = scratch().join(format!("fat-{ns}.tar"));
        ok(Command::new("docker")
            .args(["save", "-o"])
            .arg(&tar)
            .arg(docker_tag));
        ok(Command::new("ctr")
            .args(["-n", ns, "images", "import"])
            .arg(&tar));
        let _ = std::fs::remove_file(&tar);
        done.push(ns.to_string());
    }
    TAG
}

/// A running containerd task started with `ctr run` (a fresh network namespace with only
/// loopback, as `ctr` gives by default), killed and deleted on drop.
pub struct CtrTask {
    /// Its containerd namespace.
    pub ns: String,
    /// Its ID.
    pub id: String,
    /// Its first process, in the host.
    pub pid: i32,
}

impl CtrTask {
    /// Runs the fat image as task `id` in namespace `ns` with OCI `annotations`.
    pub fn start(ns: &str, id: &str, annotations: &[(&str, &str)]) -> CtrTask {
        let image = ctr_image(ns);
        let mut cmd = Command::new("ctr");
        cmd.args(["-n", ns, "run", "-d"]);
        for (k, v) in annotations {
            cmd.arg("--annotation").arg(format!("{k}={v}"));
        }
        ok(cmd.arg(image).arg(id));
        // Removed again on drop from here on, even if it never starts.
        let mut task = CtrTask {
            ns: ns.to_string(),
            id: id.to_string(),
            pid: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            let list = ok(Command::new("ctr").args(["-n", ns, "task", "ls"]));
            let pid = list
                .lines()
                .find(|l| l.split_whitespace().next() == Some(id))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
                .filter(|&p| p > 0);
            if let Some(pid) = pid {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "task {ns}/{id} did not start: {list}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        task.pid = pid;
        task
    }

    /// Asserts that nothing of cartinject is left in the task: no mount, no directory.
    pub fn assert_clean(&self) {
        crate::assert_clean(self.pid, &format!("task {}/{}", self.ns, self.id));
    }
}

impl Drop for CtrTask {
    fn drop(&mut self) {
        let ns = self.ns.as_str();
        let _ =
            output(Command::new("ctr").args(["-n", ns, "task", "kill", "-s", "KILL", &self.id]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = output(Command::new("ctr").args(["-n", ns, "task", "delete", &self.id]));
            if out.status.success() || stderr(&out).contains("not found") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = output(Command::new("ctr").args(["-n", ns, "container", "delete", &self.id]));
    }
}

/// A 64-hex-digit ID unique to this process and `salt` (for tasks the cgroup scan must find).
pub fn hex_id(salt: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut out = String::new();
    for round in 0u8..4 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, std::process::id(), round).hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// The root of the fixture image (busybox, bash, an rc file), for images of other formats.
pub fn image_root() -> PathBuf {
    fixture_image();
    scratch().join("fixture/image-root")
}

/// An erofs image of the fixture root (`mkfs.erofs`), at `path`.
pub fn make_erofs(path: &Path) {
    require_tool("mkfs.erofs", "erofs-utils");
    let out = output(Command::new("mkfs.erofs").arg(path).arg(image_root()));
    assert!(out.status.success(), "mkfs.erofs failed: {}", stderr(&out));
}

/// A squashfs image of the fixture root (`mksquashfs`), at `path`.
pub fn make_squashfs(path: &Path) {
    require_tool("mksquashfs", "squashfs-tools");
    ok(Command::new("mksquashfs")
        .arg(image_root())
        .arg(path)
        .args(["-noappend", "-quiet", "-all-root"]));
}

/// A GPT disk at `path`: a 1 MiB partition `other` first, then (when `name` is `Some`) a
/// 20 MiB partition so named holding an ext4 of the fixture root (`mke2fs -d`). Returns the
/// byte offset and size of that partition.
pub fn make_gpt(path: &Path, name: Option<&str>) -> (u64, u64) {
    require_tool("sfdisk", "fdisk");
    require_tool("mke2fs", "e2fsprogs");
    let file = std::fs::File::create(path).expect("create disk");
    file.set_len(32 << 20).expect("size disk");
    drop(file);
    let mut script = String::from("label: gpt\nsize=1MiB, name=other\n");
    if let Some(name) = name {
        script.push_str(&format!("size=20MiB, name={name}\n"));
    }
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run sfdisk");
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the partition script");
    assert!(sfdisk.wait().expect("wait").success(), "sfdisk failed");
    if name.is_none() {
        return (0, 0);
    }
    let dump = ok(Command::new("sfdisk").arg("-d").arg(path));
    let line = dump
        .lines()
        .find(|l| l.contains("name=") && !l.contains("\"other\""))
        .unwrap_or_else(|| panic!("no second partition in {dump}"));
    let field = |key: &str| -> u64 {
        line.split_once(" : ")
            .map_or(line, |(_, rest)| rest)
            .split(',')
            .find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    let (start, sectors) = (field("start") * 512, field("size") * 512);
    let fs = path.with_extension("ext4");
    ok(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d"])
        .arg(image_root())
        .arg(&fs)
        .arg("16M"));
    let bytes = std::fs::read(&fs).expect("read ext4");
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open disk");
    std::os::unix::fs::FileExt::write_all_at(&disk, &bytes, start).expect("write ext4");
    let _ = std::fs::remove_file(&fs);
    (start, sectors)
}

/// One mount of a mount table: where, how (`ro`/`rw` and the rest of its options), what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point.
    pub point: String,
    /// Per-mount options (`ro,nosuid,...`).
    pub options: String,
    /// Filesystem type.
    pub fstype: String,
    /// Source.
    pub source: String,
}

impl Mount {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.split(',').next() == Some("ro")
    }
}

/// `/proc/PID/mountinfo` as mount ID → mount.
pub fn mount_table(pid: i32) -> BTreeMap<u32, Mount> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let dash = f.iter().position(|&x| x == "-")?;
            Some((
                f.first()?.parse().ok()?,
                Mount {
                    point: (*f.get(4)?).to_string(),
                    options: (*f.get(5)?).to_string(),
                    fstype: (*f.get(dash + 1)?).to_string(),
                    source: (*f.get(dash + 2)?).to_string(),
                },
            ))
        })
        .collect()
}

/// The mount table of `pid` (see [`mount_table`]), once asserted that its root is mounted
/// read-only.
pub fn assert_read_only_root(pid: i32) -> BTreeMap<u32, Mount> {
    let table = mount_table(pid);
    let root = table
        .values()
        .find(|m| m.point == "/")
        .expect("a root mount");
    assert!(root.read_only(), "the root is not read-only: {root:?}");
    table
}

/// The loop device(s) backed by `image`, with their `offset` and `sizelimit` (sysfs).
pub fn loop_geometry(image: &Path) -> Vec<(String, u64, u64)> {
    crate::loop_devices_for(image)
        .into_iter()
        .map(|dev| {
            let name = dev.trim_start_matches("/dev/");
            let read = |f: &str| -> u64 {
                std::fs::read_to_string(format!("/sys/block/{name}/loop/{f}"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0)
            };
            (dev.clone(), read("offset"), read("sizelimit"))
        })
        .collect()
}
