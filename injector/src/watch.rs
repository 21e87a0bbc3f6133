//! Watching the target while a session runs: noticing that it exits, and finding out how.
//!
//! A pidfd becomes readable when its process exits (`pidfd_open(2)`), so the session's poll
//! loop watches one. When the target is the first process of its PID namespace (a
//! container's), the kernel kills everything else in that namespace with it, the session's
//! command included; otherwise cartinject ends the command itself, since the session
//! belongs to a target that is gone. Either way it says so, with the target's status: read
//! from `/proc/PID/stat` while the process is a zombie (field 52, `exit_code`, in
//! `wait(2)` form), which its parent may reap first; else asked of Docker, which records it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::join::Pin;
use crate::procfs;
use crate::sys::pidfd;
use crate::target::Target;
use crate::target::{docker, http};

/// How long to wait for Docker to record the exit status.
const DOCKER_WAIT: Duration = Duration::from_secs(3);

/// A watch on the target's life.
pub struct TargetWatch {
    pidfd: Option<OwnedFd>,
    pid: i32,
    start_time: u64,
    label: String,
    docker_id: Option<String>,
    /// `wait(2)` status read while it was a zombie.
    status: Option<i32>,
}

impl TargetWatch {
    /// Watches `target` (pinned by `pin`). Without pidfds (legacy mode, old kernels) there is
    /// no fd to poll and [`TargetWatch::exited`] is asked instead.
    pub fn new(target: &Target, pin: &Pin) -> TargetWatch {
        // A new pidfd names whatever has the PID now: it is the target's if the pin still
        // sees the target alive afterwards.
        let pidfd = pidfd::open(target.pid).ok().filter(|_| pin.is_alive());
        TargetWatch {
            pidfd,
            pid: target.pid,
            // The pin's, not a new read: the target may be gone already.
            start_time: pin.start_time(),
            label: target.to_string(),
            // Docker records the exit status of a container's first process only; it is
            // asked about any container ID (a target given by PID is often one of its
            // containers too) and answers 404 quickly for others.
            docker_id: target
                .id
                .clone()
                .filter(|_| first_of_its_pid_namespace(target.pid)),
            status: None,
        }
    }

    /// The fd that becomes readable when the target exits.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Without a pidfd: whether the target has exited (or its PID is someone else's now).
    pub fn gone(&self) -> bool {
        procfs::read_stat(self.pid).ok().map(|s| s.start_time) != Some(self.start_time)
    }

    /// Called when [`TargetWatch::fd`] is readable: remembers the exit status while the
    /// zombie is still there to read it from.
    pub fn noticed(&mut self) {
        self.status = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|text| exit_code_of_stat(&text));
    }

    /// The message for the user: the target exited, and how.
    pub fn message(&self) -> String {
        let how = self
            .status
            .or_else(|| self.docker_id.as_deref().and_then(docker_exit_code))
            .map_or_else(
                || "its exit status is known only to its parent".to_string(),
                describe_status,
            );
        format!(
            "the target {} exited during the session ({how}); the session ended with it",
            self.label
        )
    }
}

/// Whether `pid` is PID 1 of its own PID namespace (the last `NSpid` of its status).
fn first_of_its_pid_namespace(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("NSpid:"))?;
            line.split_whitespace().last().map(|last| last == "1")
        })
        .unwrap_or(false)
}

/// `exit_code` (field 52 of `/proc/PID/stat`, Linux 3.5) of a zombie, in `wait(2)` form.
/// Fields are counted after the command name, which may hold spaces and parentheses.
pub fn exit_code_of_stat(text: &str) -> Option<i32> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state); field 52 is fields[49].
    if fields.first() != Some(&"Z") {
        return None;
    }
    fields.get(49)?.parse().ok()
}

/// "exit status N" or "killed by signal N" for a `wait(2)` status.
pub fn describe_status(status: i32) -> String {
    let signal = status & 0x7f;
    if signal == 0 {
        format!("exit status {}", (status >> 8) & 0xff)
    } else {
        format!("killed by signal {signal}")
    }
}

/// The exit status Docker recorded for container `id`, in `wait(2)` form (Docker reports
/// 128+N for signal N, which is taken as an exit status), once it has noticed the exit.
fn docker_exit_code(id: &str) -> Option<i32> {
    let socket = docker::socket();
    let deadline = Instant::now() + DOCKER_WAIT;
    while Instant::now() < deadline {
        let response = http::get(
            &socket,
            &format!("/containers/{id}/json"),
            Duration::from_secs(1),
        )
        .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
        let state = json.get("State")?;
        if state.get("Running").and_then(serde_json::Value::as_bool) == Some(false) {
            let code = state.get("ExitCode").and_then(serde_json::Value::as_i64)?;
            return i32::try_from(code).ok().map(|c| (c & 0xff) << 8);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombie_exit_code() {
        // A zombie that exited with status 3 (wait status 0x300), comm with a space and ')'.
        let mut fields = vec!["Z"];
        fields.extend(std::iter::repeat_n("0", 48));
        fields.push("768");
        let text = format!("42 (a )b) {}\n", fields.join(" "));
        assert_eq!(exit_code_of_stat(&text), Some(768));
        let running = text.replace(") Z ", ") S ");
        assert_eq!(exit_code_of_stat(&running), None);
        assert_eq!(describe_status(768), "exit status 3");
        assert_eq!(describe_status(9), "killed by signal 9");
    }
}
