//! Fixtures and checks for the attack suite (`tests/inject_attacks.rs`): containers whose
//! PID 1 is a hostile C program from `tests/fixtures/attacks/`, capability sets as
//! `/proc/PID/status` shows them, snapshots of a container's mount table, and the checks
//! every attack ends with (a refusal is one line and exit 125; nothing the container chose
//! reaches the operator's terminal raw).
//!
//! As in the rest of the harness, everything is named after the test and this process and
//! removed by a guard's `Drop`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{
    Container, cartinject, docker_ok, hash_of, import_root, scratch, static_binary, stderr, stdout,
    unique,
};

/// Compiles `tests/fixtures/attacks/NAME.c` as a static binary (see [`static_binary`]).
pub fn attack_binary(name: &str) -> PathBuf {
    std::fs::create_dir_all(scratch().join("attacks")).expect("mkdir");
    static_binary(&format!("attacks/{name}"))
}

/// A Docker image whose root holds only `/attack`, the static build of
/// `tests/fixtures/attacks/NAME.c`, run as `/attack ARGS...`; imported once per content.
pub fn attack_image(name: &str, args: &[&str]) -> String {
    static DONE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let done = DONE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut done = done
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = format!("{name} {}", args.join(" "));
    if let Some(tag) = done.get(&key) {
        return tag.clone();
    }
    docker_ok();
    let binary = attack_binary(name);
    let root = scratch().join(format!("attack-root-{name}"));
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::copy(&binary, root.join("attack")).expect("copy the fixture");
    let text = std::fs::read(&binary).expect("read the fixture");
    let tag = format!("cc-attack-{name}:test");
    let cmd = serde_json::to_string(
        &std::iter::once("/attack")
            .chain(args.iter().copied())
            .collect::<Vec<_>>(),
    )
    .expect("JSON");
    import_root(
        "docker",
        &tag,
        &root,
        &hash_of(&[b"attack-v1", &text, key.as_bytes()]),
        &format!("CMD {cmd}"),
    );
    done.insert(key, tag.clone());
    tag
}

/// Starts the attack image of `name` (see [`attack_image`]) as `cc-<test>-<pid>` with the
/// extra `docker run` options `run_args`.
pub fn attack_container(test: &str, name: &str, args: &[&str], run_args: &[&str]) -> Container {
    super::require_root();
    Container::start_with(&unique(test), &attack_image(name, args), run_args)
}

/// Waits (up to 10 s) until `path` exists; fails naming `what`.
pub fn wait_for_file(path: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The PIDs (in the host) of the children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A capability's bit.
pub const fn bit(cap: u32) -> u64 {
    1 << cap
}

/// Capability numbers (`<linux/capability.h>`) with their names.
pub const CAPS: [(&str, u32); 41] = [
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_LINUX_IMMUTABLE", 9),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_BROADCAST", 11),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_IPC_OWNER", 15),
    ("CAP_SYS_MODULE", 16),
    ("CAP_SYS_RAWIO", 17),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_PACCT", 20),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_BOOT", 22),
    ("CAP_SYS_NICE", 23),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_SYS_TIME", 25),
    ("CAP_SYS_TTY_CONFIG", 26),
    ("CAP_MKNOD", 27),
    ("CAP_LEASE", 28),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_AUDIT_CONTROL", 30),
    ("CAP_SETFCAP", 31),
    ("CAP_MAC_OVERRIDE", 32),
    ("CAP_MAC_ADMIN", 33),
    ("CAP_SYSLOG", 34),
    ("CAP_WAKE_ALARM", 35),
    ("CAP_BLOCK_SUSPEND", 36),
    ("CAP_AUDIT_READ", 37),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
    ("CAP_CHECKPOINT_RESTORE", 40),
];

/// The mask of the named capabilities.
pub fn mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| {
            let (_, b) = CAPS
                .iter()
                .find(|(name, _)| name == n)
                .unwrap_or_else(|| panic!("unknown capability {n}"));
            bit(*b)
        })
        .fold(0, |a, b| a | b)
}

/// The names of the capabilities in `mask` (`none` when empty).
pub fn names(mask: u64) -> String {
    let list: Vec<String> = (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            CAPS.iter()
                .find(|(_, n)| *n == b)
                .map_or_else(|| format!("cap{b}"), |(name, _)| (*name).to_string())
        })
        .collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

/// What the `debug` profile keeps (issue 9, point 3).
pub const DEBUG_KEPT: [&str; 15] = [
    "CAP_SYS_PTRACE",
    "CAP_NET_RAW",
    "CAP_NET_ADMIN",
    "CAP_DAC_OVERRIDE",
    "CAP_KILL",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_CHOWN",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_PERFMON",
];

/// What the `debug` profile never holds, in any set (issue 9, point 3).
pub const DEBUG_FORBIDDEN: [&str; 11] = [
    "CAP_SYS_MODULE",
    "CAP_DAC_READ_SEARCH",
    "CAP_SYS_RAWIO",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_TIME",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_SYSLOG",
    "CAP_BPF",
    "CAP_MKNOD",
];

/// A process's five capability sets, as `/proc/PID/status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// `CapInh`.
    pub inh: u64,
    /// `CapPrm`.
    pub prm: u64,
    /// `CapEff`.
    pub eff: u64,
    /// `CapBnd`.
    pub bnd: u64,
    /// `CapAmb`.
    pub amb: u64,
}

impl Caps {
    /// Parses the `Cap*` lines of a `/proc/PID/status` text (`\r\n` allowed); `None` unless
    /// all five are there.
    pub fn parse(status: &str) -> Option<Caps> {
        let field = |key: &str| -> Option<u64> {
            status.lines().find_map(|l| {
                let rest = l.trim_end_matches('\r').strip_prefix(key)?;
                u64::from_str_radix(rest.trim(), 16).ok()
            })
        };
        Some(Caps {
            inh: field("CapInh:")?,
            prm: field("CapPrm:")?,
            eff: field("CapEff:")?,
            bnd: field("CapBnd:")?,
            amb: field("CapAmb:")?,
        })
    }

    /// The sets of `pid`, read from the host.
    pub fn of_pid(pid: i32) -> Caps {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        Caps::parse(&text).unwrap_or_else(|| panic!("no capability sets in {text}"))
    }

    /// Every capability in any of the five sets.
    pub fn any(&self) -> u64 {
        self.inh | self.prm | self.eff | self.bnd | self.amb
    }

    /// The sets with their names, for loops over them.
    pub fn sets(&self) -> [(&'static str, u64); 5] {
        [
            ("CapBnd", self.bnd),
            ("CapPrm", self.prm),
            ("CapEff", self.eff),
            ("CapInh", self.inh),
            ("CapAmb", self.amb),
        ]
    }
}

impl std::fmt::Display for Caps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CapBnd {:016x} CapPrm {:016x} CapEff {:016x} CapInh {:016x} CapAmb {:016x}",
            self.bnd, self.prm, self.eff, self.inh, self.amb
        )
    }
}

/// What the `debug` profile's sets `caps` break: forbidden capabilities held in any set,
/// kept ones missing from the effective set. Empty when they are right.
pub fn debug_profile_problems(caps: &Caps) -> Vec<String> {
    let mut problems = Vec::new();
    let forbidden = mask(&DEBUG_FORBIDDEN);
    // Sets that hold the same forbidden capabilities are named together.
    let mut groups: Vec<(Vec<&str>, u64)> = Vec::new();
    for (set, value) in caps.sets() {
        let bad = value & forbidden;
        if bad == 0 {
            continue;
        }
        match groups.iter_mut().find(|(_, b)| *b == bad) {
            Some((sets, _)) => sets.push(set),
            None => groups.push((vec![set], bad)),
        }
    }
    for (sets, bad) in groups {
        problems.push(format!(
            "{} hold(s) {} (never in the debug profile)",
            sets.join(", "),
            names(bad)
        ));
    }
    let kept = mask(&DEBUG_KEPT);
    if caps.eff & kept != kept {
        problems.push(format!(
            "CapEff lacks {} (the debug profile keeps them)",
            names(kept & !caps.eff)
        ));
    }
    problems
}

/// Problems found by a test, reported all at once at its end (so one run shows every part
/// of an attack that worked, not only the first).
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// An empty list.
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records `what` unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    /// Records `what`.
    pub fn push(&mut self, what: String) {
        self.0.push(what);
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fails the test with every problem recorded, under `title`.
    pub fn finish(self, title: &str) {
        assert!(
            self.0.is_empty(),
            "{title}: {} problem(s):\n- {}",
            self.0.len(),
            self.0.join("\n- ")
        );
    }
}

/// `cartinject FLAGS... IMAGE TARGET [-- COMMAND...]`.
pub fn session(image: impl AsRef<Path>, target: &str, flags: &[&str], command: &[&str]) -> Command {
    let mut cmd = cartinject();
    cmd.args(flags).arg(image.as_ref()).arg(target);
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    cmd
}

/// A command line as a user would type it (the program's file name, then the arguments;
/// an argument quoted only when it holds a space, a quote or a control character).
pub fn cmdline(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"')
            {
                format!("{a:?}")
            } else {
                a.into_owned()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command and its outcome, for messages.
pub fn shown(cmd: &Command, out: &Output) -> String {
    format!(
        "`{}` exited {:?}\n  stdout: {:?}\n  stderr: {:?}",
        cmdline(cmd),
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

/// The non-empty lines of stderr.
pub fn stderr_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `out` is a refusal as the issue asks: exit 125 and exactly one line on stderr,
/// `cartinject: ...`, nothing on stdout.
pub fn is_one_line_refusal(out: &Output) -> bool {
    let lines = stderr_lines(out);
    out.status.code() == Some(125)
        && lines.len() == 1
        && lines[0].starts_with("cartinject: ")
        && out.stdout.is_empty()
}

/// Bytes below 0x20 other than `\n`, and DEL, with their offsets.
pub fn control_bytes(bytes: &[u8]) -> Vec<(usize, u8)> {
    bytes
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, b)| (b < 0x20 && b != b'\n') || b == 0x7f)
        .collect()
}

/// Records a problem when `bytes` (what cartinject printed, `what`) hold a control byte.
pub fn check_no_control_bytes(problems: &mut Problems, what: &str, bytes: &[u8]) {
    let found = control_bytes(bytes);
    problems.check(found.is_empty(), || {
        format!(
            "{what} printed {} raw control byte(s) (first at {:?}): {:?}",
            found.len(),
            found.iter().take(4).collect::<Vec<_>>(),
            String::from_utf8_lossy(bytes)
        )
    });
}

/// A snapshot of `/proc/PID/mountinfo`, to prove that nothing of a container's mounts
/// changed.
#[derive(Debug, Clone)]
pub struct MountSnapshot {
    /// Whose mount table.
    pub pid: i32,
    /// The table's text.
    pub text: String,
}

impl MountSnapshot {
    /// The mount table of `pid` now.
    pub fn take(pid: i32) -> MountSnapshot {
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/mountinfo: {e}"));
        MountSnapshot { pid, text }
    }

    /// Records a problem unless the table of the same process is exactly as it was (`after`
    /// names what ran meanwhile).
    pub fn check_unchanged(&self, problems: &mut Problems, after: &str) {
        let now = MountSnapshot::take(self.pid);
        if now.text == self.text {
            return;
        }
        let before: Vec<&str> = self.text.lines().collect();
        let lines: Vec<&str> = now.text.lines().collect();
        let gone: Vec<&&str> = before.iter().filter(|l| !lines.contains(l)).collect();
        let new: Vec<&&str> = lines.iter().filter(|l| !before.contains(l)).collect();
        problems.push(format!(
            "the container's mounts changed after {after}: gone {gone:#?}, new {new:#?}"
        ));
    }
}
