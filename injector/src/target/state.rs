//! What runtimes leave on disk about a running container: a PID file, and the question whether
//! the PID in it is still that container's process.
//!
//! A runtime writes the PID file once its container's first process exists (runc's
//! `--pid-file`, conmon's `--container-pidfile`, containerd's `init.pid`) and often leaves it
//! behind when the container stops: Podman keeps `userdata/pidfile`, containerd keeps
//! `init.pid` until the task is deleted. The PID may by then belong to another process, even
//! one on the host. So a PID is only believed when that process started before the file was
//! last written: its start time (`/proc/PID/stat` field 22, clock ticks after boot, in
//! `CLOCK_BOOTTIME`) plus the boot time (now minus `/proc/uptime`, which counts the same
//! clock) is at or before the file's mtime. A process that reused the PID can only have
//! started after the container's process ended, which is after the file was written. This is
//! the check CRI-O makes with its `initStartTime`, made here without the runtime's help.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::procfs::Stat;

/// How much earlier than the PID file a process may seem to start and still count (the
/// clocks compared have 10 ms steps: `USER_HZ` ticks and `/proc/uptime`'s two decimals).
const SLACK: Duration = Duration::from_millis(100);
/// `USER_HZ`: the unit of `/proc/PID/stat` times on every Linux architecture (`proc(5)`).
const TICKS_PER_SECOND: u64 = 100;

/// Why a PID file does not name a running container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The file is missing (the container never started, or it was cleaned up).
    NoFile,
    /// The file does not hold a positive number.
    Garbage(String),
    /// No such process, or it has exited (a zombie).
    Exited(i32),
    /// The process started after the file was written: the PID was reused.
    Reused(i32),
}

/// Reads `pid_file` and returns its PID if that process is alive and is the one the file was
/// written for. `proc_root` is normally `/proc`.
pub fn live_pid(proc_root: &Path, pid_file: &Path) -> Result<i32, Stale> {
    let (text, written) = match read_with_mtime(pid_file) {
        Ok(found) => found,
        Err(_) => return Err(Stale::NoFile),
    };
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| Stale::Garbage(text.trim().chars().take(40).collect()))?;
    check_pid(proc_root, pid, written)
}

/// Whether `pid` is alive and started no later than `written` (see the module doc).
pub fn check_pid(proc_root: &Path, pid: i32, written: SystemTime) -> Result<i32, Stale> {
    let stat = std::fs::read_to_string(proc_root.join(format!("{pid}/stat")))
        .ok()
        .and_then(|t| Stat::parse(&t))
        .ok_or(Stale::Exited(pid))?;
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(Stale::Exited(pid));
    }
    // Without a readable uptime there is nothing to compare: believe the file.
    let Some(booted) = boot_time(proc_root) else {
        return Ok(pid);
    };
    let started =
        booted + Duration::from_millis(stat.start_time.saturating_mul(1000) / TICKS_PER_SECOND);
    if started > written + SLACK {
        return Err(Stale::Reused(pid));
    }
    Ok(pid)
}

/// The wall-clock time of boot: now minus `/proc/uptime`'s first field.
fn boot_time(proc_root: &Path) -> Option<SystemTime> {
    let text = std::fs::read_to_string(proc_root.join("uptime")).ok()?;
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    let uptime = Duration::try_from_secs_f64(seconds).ok()?;
    SystemTime::now().checked_sub(uptime)
}

/// A file's contents and its mtime.
pub fn read_with_mtime(path: &Path) -> io::Result<(String, SystemTime)> {
    let file = std::fs::File::open(path)?;
    let written = file.metadata()?.modified()?;
    let text = io::read_to_string(file)?;
    Ok((text, written))
}

/// The OCI runtime spec's annotations in a bundle's `config.json` (empty when it cannot be
/// read: annotations only add names).
pub fn annotations(config_json: &Path) -> std::collections::BTreeMap<String, String> {
    #[derive(serde::Deserialize, Default)]
    struct Spec {
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    std::fs::read(config_json)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Spec>(&bytes).ok())
        .unwrap_or_default()
        .annotations
}

/// The subdirectories of `dir`, by name (empty when `dir` cannot be read).
pub fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    found.sort();
    found
}

/// Test fixtures: a fake `/proc` with processes of chosen start times.
#[cfg(test)]
pub mod fixture {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    /// Writes `proc_root/uptime` saying the machine booted `booted_ago` ago.
    pub fn boot(proc_root: &Path, booted_ago: Duration) {
        std::fs::create_dir_all(proc_root).expect("mkdir");
        std::fs::write(
            proc_root.join("uptime"),
            format!("{:.2} 0.00\n", booted_ago.as_secs_f64()),
        )
        .expect("write uptime");
    }

    /// Writes `proc_root/PID/stat` for a process in `state` that started `after_boot`
    /// after boot, and `cgroup` as its `/proc/PID/cgroup`.
    pub fn process(proc_root: &Path, pid: i32, state: char, after_boot: Duration, cgroup: &str) {
        let dir = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ticks = after_boot.as_millis() / 10;
        std::fs::write(
            dir.join("stat"),
            format!(
                "{pid} (sleep) {state} 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0 0\n"
            ),
        )
        .expect("write stat");
        std::fs::write(dir.join("cgroup"), cgroup).expect("write cgroup");
    }

    /// Writes `path` (creating its directory) with `text` and sets its mtime to `at`.
    pub fn file_at(path: &Path, text: &str, at: SystemTime) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(at)
            .expect("set mtime");
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn a_pid_file_is_believed_only_for_the_process_it_was_written_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let proc = dir.path().join("proc");
        let now = SystemTime::now();
        boot(&proc, Duration::from_secs(1000));
        // Started 500 s after boot (500 s ago); the file was written a second later.
        process(&proc, 40, 'S', Duration::from_secs(500), "0::/\n");
        // Started 900 s after boot (100 s ago): after the file.
        process(&proc, 41, 'S', Duration::from_secs(900), "0::/\n");
        process(&proc, 42, 'Z', Duration::from_secs(400), "0::/\n");
        let written = now - Duration::from_secs(499);
        let file = dir.path().join("pidfile");
        for (text, expected) in [
            ("40\n", Ok(40)),
            ("41", Err(Stale::Reused(41))),
            ("42", Err(Stale::Exited(42))),
            ("43", Err(Stale::Exited(43))),
            ("x", Err(Stale::Garbage("x".into()))),
            ("-1", Err(Stale::Garbage("-1".into()))),
        ] {
            file_at(&file, text, written);
            assert_eq!(live_pid(&proc, &file), expected, "{text}");
        }
        assert_eq!(
            live_pid(&proc, &dir.path().join("none")),
            Err(Stale::NoFile)
        );
    }

    #[test]
    fn annotations_and_subdirs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-name":"app"}}"#,
        )
        .expect("write");
        assert_eq!(
            annotations(&config)
                .get("io.kubernetes.cri.container-name")
                .map(String::as_str),
            Some("app")
        );
        assert!(annotations(&dir.path().join("missing.json")).is_empty());
        std::fs::create_dir(dir.path().join("b")).expect("mkdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        let names: Vec<String> = subdirs(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
