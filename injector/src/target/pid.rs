//! A target given as a PID: check the process, and name its container when its cgroup
//! path carries a container ID.

use super::{ResolveError, Target, cgroup};
use crate::procfs;

/// Checks that `pid` is a live user-space process and describes it.
pub fn resolve(pid: i32) -> Result<Target, ResolveError> {
    procfs::read_stat(pid)?;
    let id = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| cgroup::container_id(&text));
    Ok(Target {
        pid,
        runtime: "pid",
        id,
        name: None,
    })
}
