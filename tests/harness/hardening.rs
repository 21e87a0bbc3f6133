//! Fixtures for the hardening and crash tests (`tests/inject_hostile.rs`,
//! `tests/inject_scale.rs`, and `tests/bench/inject_hardening.sh`, which runs them with the
//! issue's full counts): a container whose PID 1 is the hostile program
//! (`tests/fixtures/hostile.c`, compiled by [`static_binary`]), an image with a setuid binary
//! and device nodes, and the [`Judge`] that decides whether what the hostile program reached
//! lies outside its container.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{
    Container, docker_ok, hash_of, import_root, ok, require_tool, scratch, static_binary, unique,
};

/// A count from the environment (for the benchmark script's full runs), else `default`.
pub fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The Docker image whose PID 1 is `hostile watch /hostile.log`.
pub fn hostile_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        docker_ok();
        let binary = static_binary("hostile");
        let root = scratch().join("hostile-root");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::copy(&binary, root.join("hostile")).expect("copy hostile");
        let text = std::fs::read(&binary).expect("read hostile");
        let tag = "cc-inject-hostile:test".to_string();
        import_root(
            "docker",
            &tag,
            &root,
            &hash_of(&[b"hostile-v1", &text]),
            r#"CMD ["/hostile", "watch", "/hostile.log"]"#,
        );
        tag
    })
}

/// An image for the hardening tests: busybox and its applets, `bin/hostile`, a setuid-root
/// copy of it (`bin/suid-hostile`, mode 4755) and two device nodes (`dev/null`, `c 1 3`,
/// and `dev/mem`, `c 1 1`), made with `mke2fs -d`.
pub fn hardening_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        require_tool("mke2fs", "e2fsprogs");
        assert!(
            Path::new("/bin/busybox").is_file(),
            "/bin/busybox is missing: install busybox-static (tests/run does)"
        );
        let root = scratch().join("hardening-root");
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["bin", "dev"] {
            std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        let applets = ok(Command::new("/bin/busybox").arg("--list"));
        for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        let hostile = static_binary("hostile");
        std::fs::copy(&hostile, root.join("bin/hostile")).expect("copy hostile");
        let suid = root.join("bin/suid-hostile");
        std::fs::copy(&hostile, &suid).expect("copy hostile");
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
        for (name, minor) in [("null", "3"), ("mem", "1")] {
            ok(Command::new("mknod")
                .arg(root.join("dev").join(name))
                .args(["c", "1", minor]));
        }
        let img = scratch().join("hardening.img");
        ok(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d"])
            .arg(&root)
            .arg(&img)
            .arg("16M"));
        img
    })
}

/// What the hostile program reached once (one `OK` line of its log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `exe`, `exelink`, `fd`, `fdlink`, `getfd`, `cwd`, `root`, `attach`, `seize`.
    pub kind: String,
    /// The PID in the container.
    pub pid: i32,
    /// Its `comm`.
    pub comm: String,
    /// The link target (for `attach`/`seize`: the process's exe).
    pub link: String,
    /// Device of what was opened, `(major, minor)`.
    pub dev: Option<(u32, u32)>,
    /// Inode of what was opened.
    pub ino: Option<u64>,
    /// Mode of what was opened.
    pub mode: Option<u32>,
    /// Device number it stands for (character and block devices).
    pub rdev: Option<(u32, u32)>,
    /// For directories: `inside` or `outside` (where ".." leads).
    pub walk: String,
    /// For `attach`/`seize`: the process's effective capabilities.
    pub capeff: Option<u64>,
    /// The whole line.
    pub line: String,
}

fn dev_pair(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

impl Finding {
    /// Parses one `OK ...` line.
    pub fn parse(line: &str) -> Option<Finding> {
        let mut words = line.split(' ');
        if words.next() != Some("OK") {
            return None;
        }
        let kind = words.next()?.to_string();
        let fields: BTreeMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let get = |k: &str| fields.get(k).copied().unwrap_or("");
        Some(Finding {
            pid: get("pid").parse().ok()?,
            comm: get("comm").to_string(),
            link: if kind == "attach" || kind == "seize" {
                get("exe").to_string()
            } else {
                get("link").to_string()
            },
            dev: dev_pair(get("dev")),
            ino: get("ino").parse().ok(),
            mode: u32::from_str_radix(get("mode"), 8).ok(),
            rdev: dev_pair(get("rdev")),
            walk: get("walk").to_string(),
            capeff: u64::from_str_radix(get("capeff"), 16).ok(),
            kind,
            line: line.to_string(),
        })
    }

    /// Whether it shows a cartinject process before its `execve` (the sealed copy) as what
    /// the process runs: its `comm` was read before the attempt and may be stale, the
    /// executable's link is read with the success.
    pub fn on_cartinject(&self) -> bool {
        matches!(self.kind.as_str(), "exe" | "exelink" | "attach" | "seize")
            && self.link.starts_with("/memfd:cartinject")
    }
}

/// The hostile program's log: its findings and its summary counts.
#[derive(Debug, Default)]
pub struct HostileLog {
    /// Every distinct finding.
    pub findings: Vec<Finding>,
    /// `SUMMARY` counts: kind → (successes, attempts); also `passes` and `pids`.
    pub summary: BTreeMap<String, (u64, u64)>,
}

impl HostileLog {
    /// Parses the log text.
    pub fn parse(text: &str) -> HostileLog {
        let mut log = HostileLog::default();
        for line in text.lines() {
            if let Some(finding) = Finding::parse(line) {
                log.findings.push(finding);
            } else if let Some(rest) = line.strip_prefix("SUMMARY ") {
                for field in rest.split(' ') {
                    let Some((key, value)) = field.split_once('=') else {
                        continue;
                    };
                    let pair = match value.split_once('/') {
                        Some((s, a)) => (s.parse().unwrap_or(0), a.parse().unwrap_or(0)),
                        None => (value.parse().unwrap_or(0), 0),
                    };
                    log.summary.insert(key.to_string(), pair);
                }
            }
        }
        log
    }
}

/// A container whose PID 1 is the hostile program, removed on drop.
pub struct HostileContainer {
    /// The container.
    pub container: Container,
}

impl HostileContainer {
    /// Starts the hostile image with the extra `docker run` options `args`, and waits until
    /// the program runs.
    pub fn start(test: &str, args: &[&str]) -> HostileContainer {
        let container = Container::start_with(&unique(test), hostile_image(), args);
        let log = format!("/proc/{}/root/hostile.log", container.pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.starts_with("READY")) {
            assert!(
                Instant::now() < deadline,
                "the hostile program did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        HostileContainer { container }
    }

    /// Stops the program and returns its log.
    pub fn stop(&self) -> HostileLog {
        let root = format!("/proc/{}/root", self.container.pid);
        std::fs::write(format!("{root}/hostile.stop"), b"").expect("stop the hostile program");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(format!("{root}/hostile.log")).unwrap_or_default();
            if text.contains("SUMMARY ") {
                return HostileLog::parse(&text);
            }
            assert!(
                Instant::now() < deadline,
                "the hostile program did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a finding is, as far as the host is concerned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Something of the container, of the image, or of the session's own private mounts.
    Inside,
    /// An anonymous pipe or a socket: a data channel the session was given.
    Channel,
    /// The sealed in-memory copy of cartinject.
    SealedCopy,
    /// The pty cartinject made for the session.
    SessionPty,
    /// Something that should have been closed before the process became visible (a pidfd,
    /// a signalfd, an eventpoll of cartinject).
    Leak(String),
    /// The host: a file, a directory, a namespace, the terminal or the binary.
    Escape(String),
}

/// Decides where what the hostile program reached lies. Built from the host's view: the
/// host's mount table and namespaces, the container's mount table, namespaces and files,
/// the cartinject binary, and the caller's terminal.
pub struct Judge {
    host_devs: HashSet<(u32, u32)>,
    container_devs: HashSet<(u32, u32)>,
    container_files: HashSet<((u32, u32), u64)>,
    host_binary: ((u32, u32), u64),
    host_ns: HashSet<u64>,
    container_ns: HashSet<u64>,
    host_devpts: Option<(u32, u32)>,
    caller_tty: Option<(u32, u32)>,
}

fn mount_devs(mountinfo: &str) -> HashSet<(u32, u32)> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(2).and_then(dev_pair))
        .collect()
}

fn split_dev(dev: u64) -> (u32, u32) {
    // The kernel's new_encode_dev layout (glibc's major()/minor()).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

fn ns_inodes(dir: &Path) -> HashSet<u64> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default()
}

fn index_tree(dir: &Path, out: &mut HashSet<((u32, u32), u64)>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        out.insert((split_dev(meta.dev()), meta.ino()));
        let name = entry.file_name();
        let skip = depth == 0 && (name == "proc" || name == "sys");
        if meta.is_dir() && !skip && depth < 32 {
            index_tree(&entry.path(), out, depth + 1);
        }
    }
}

impl Judge {
    /// A judge for findings in `container`, with `cartinject` the binary under test and
    /// `caller_tty` the device number of the terminal cartinject was run from, if any.
    pub fn new(container: &Container, cartinject: &Path, caller_tty: Option<(u32, u32)>) -> Judge {
        let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let theirs = std::fs::read_to_string(format!("/proc/{}/mountinfo", container.pid))
            .expect("the container's mountinfo");
        let root = PathBuf::from(format!("/proc/{}/root", container.pid));
        let mut container_files = HashSet::new();
        if let Ok(meta) = root.metadata() {
            container_files.insert((split_dev(meta.dev()), meta.ino()));
        }
        index_tree(&root, &mut container_files, 0);
        let binary = std::fs::metadata(cartinject).expect("stat cartinject");
        let host_devpts = std::fs::metadata("/dev/pts/ptmx")
            .ok()
            .map(|m| split_dev(m.dev()));
        Judge {
            host_devs: mount_devs(&host_mounts),
            container_devs: mount_devs(&theirs),
            container_files,
            host_binary: (split_dev(binary.dev()), binary.ino()),
            host_ns: ns_inodes(Path::new("/proc/self/ns")),
            container_ns: ns_inodes(Path::new(&format!("/proc/{}/ns", container.pid))),
            host_devpts,
            caller_tty,
        }
    }

    /// The verdict on one finding.
    pub fn verdict(&self, f: &Finding) -> Verdict {
        if f.kind == "attach" || f.kind == "seize" {
            // Attaching shows a process; what it holds is judged by the other findings.
            return Verdict::Inside;
        }
        let link = f.link.as_str();
        if let Some((name, rest)) = link.split_once(":[") {
            let ino = rest.trim_end_matches(']').parse::<u64>().ok();
            return match (name, ino) {
                ("pipe" | "socket", _) => Verdict::Channel,
                (_, Some(ino))
                    if self.host_ns.contains(&ino) && !self.container_ns.contains(&ino) =>
                {
                    Verdict::Escape(format!("a namespace of the host ({link})"))
                }
                ("anon_inode", _) => Verdict::Leak(link.to_string()),
                (_, Some(_)) => Verdict::Inside,
                _ => Verdict::Leak(link.to_string()),
            };
        }
        if link.starts_with("anon_inode:") {
            return Verdict::Leak(link.to_string());
        }
        let (Some(dev), Some(ino)) = (f.dev, f.ino) else {
            // Only a link was read (exelink, fdlink): its text is all there is.
            return if link.starts_with("/memfd:cartinject") {
                Verdict::SealedCopy
            } else {
                Verdict::Inside
            };
        };
        if (dev, ino) == self.host_binary {
            return Verdict::Escape(format!("the host's cartinject binary ({link})"));
        }
        if link.starts_with("/memfd:cartinject") {
            return if f.mode.is_some_and(|m| m & 0o7777 == 0o511) {
                Verdict::SealedCopy
            } else {
                Verdict::Escape(format!("an unsealed copy of cartinject ({link})"))
            };
        }
        if f.walk == "outside" {
            return Verdict::Escape(format!("a directory outside the container's root ({link})"));
        }
        if f.walk == "inside" {
            return Verdict::Inside;
        }
        let is_char = f.mode.is_some_and(|m| m & 0o170_000 == 0o020_000);
        if is_char && f.rdev.is_some() && f.rdev == self.caller_tty {
            return Verdict::Escape(format!("the caller's terminal ({link})"));
        }
        if is_char
            && Some(dev) == self.host_devpts
            && f.rdev
                .is_some_and(|(major, _)| (136..=143).contains(&major))
        {
            return Verdict::SessionPty;
        }
        if !self.host_devs.contains(&dev) {
            // A filesystem the host has not mounted: the container's own (its /dev, its
            // devpts, its mqueue), the image, the session's private /dev, a pipe or a memfd.
            return Verdict::Inside;
        }
        if !self.container_devs.contains(&dev) {
            return Verdict::Escape(format!("a file of the host's {}:{} ({link})", dev.0, dev.1));
        }
        if self.container_files.contains(&(dev, ino)) {
            Verdict::Inside
        } else {
            Verdict::Escape(format!(
                "a file on a filesystem the container shares with the host, outside its tree ({link})"
            ))
        }
    }
}

/// The figures of one hostile run, printed and asserted on.
#[derive(Debug, Default)]
pub struct Figures {
    /// Attempts per kind.
    pub attempts: BTreeMap<String, u64>,
    /// Successes per kind (all of them, not only distinct ones).
    pub successes: BTreeMap<String, u64>,
    /// Distinct findings per verdict.
    pub verdicts: BTreeMap<String, usize>,
    /// Distinct findings on cartinject processes before their exec.
    pub on_cartinject: usize,
    /// Their log lines.
    pub cartinject_lines: Vec<String>,
    /// Escapes and leaks, with their lines.
    pub bad: Vec<(Verdict, String)>,
}

impl Figures {
    /// Judges a log.
    pub fn of(log: &HostileLog, judge: &Judge) -> Figures {
        let mut figures = Figures::default();
        for (kind, (succ, att)) in &log.summary {
            if *att > 0 {
                figures.attempts.insert(kind.clone(), *att);
                figures.successes.insert(kind.clone(), *succ);
            }
        }
        for finding in &log.findings {
            let verdict = judge.verdict(finding);
            let name = match &verdict {
                Verdict::Escape(_) => "escape",
                Verdict::Leak(_) => "leak",
                Verdict::Inside => "inside",
                Verdict::Channel => "pipe-or-socket",
                Verdict::SealedCopy => "sealed-copy",
                Verdict::SessionPty => "session-pty",
            };
            *figures.verdicts.entry(name.to_string()).or_default() += 1;
            if finding.on_cartinject() {
                figures.on_cartinject += 1;
                figures.cartinject_lines.push(finding.line.clone());
            }
            if matches!(verdict, Verdict::Escape(_) | Verdict::Leak(_)) {
                figures.bad.push((verdict, finding.line.clone()));
            }
        }
        figures
    }

    /// Escapes found.
    pub fn escapes(&self) -> usize {
        self.verdicts.get("escape").copied().unwrap_or(0)
    }

    /// Leaks found.
    pub fn leaks(&self) -> usize {
        self.verdicts.get("leak").copied().unwrap_or(0)
    }

    /// One line for the benchmark script (`FIGURE hostile ...`).
    pub fn line(&self, label: &str) -> String {
        let kinds = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let verdicts = self
            .verdicts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "FIGURE hostile {label}: attempts [{}] successes [{}] distinct findings [{verdicts}] on cartinject before exec {} escapes {} leaks {}",
            kinds(&self.attempts),
            kinds(&self.successes),
            self.on_cartinject,
            self.escapes(),
            self.leaks()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_parse() {
        let f = Finding::parse(
            "OK fd pid=7 comm=sleep link=/dev/null dev=0:6 ino=3 mode=20666 rdev=1:3 walk=n/a",
        )
        .expect("parse");
        assert_eq!(
            (f.kind.as_str(), f.pid, f.dev, f.ino),
            ("fd", 7, Some((0, 6)), Some(3))
        );
        assert_eq!(f.mode, Some(0o20666));
        let a = Finding::parse(
            "OK attach pid=9 comm=memfd:cartinjec exe=/memfd:cartinject_(deleted) capeff=000001fffeffffff",
        )
            .expect("parse");
        assert!(a.on_cartinject());
        assert_eq!(a.capeff, Some(0x1ff_feff_ffff));
        let log = HostileLog::parse("READY pid=1\nSUMMARY passes=3 pids=2 exe=1/4\n");
        assert_eq!(log.summary["exe"], (1, 4));
        assert_eq!(split_dev(0x0801), (8, 1));
    }
}
