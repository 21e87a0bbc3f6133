//! The runtime-independent fallback: every runtime puts the container's ID (64 hex digits)
//! in the cgroup path of its processes (`/docker/<id>`, `docker-<id>.scope`,
//! `libpod-<id>.scope`, `cri-containerd-<id>.scope`, ...), so scanning `/proc/*/cgroup`
//! finds a container by full ID or unique prefix whichever runtime started it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Candidate, Lookup, ResolveError, Resolver, Target, looks_like_id};

/// The first 64-hex-digit run in a `/proc/PID/cgroup` text.
pub fn container_id(cgroup_text: &str) -> Option<String> {
    for line in cgroup_text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        let bytes = path.as_bytes();
        let mut run = 0;
        for (i, b) in bytes.iter().enumerate() {
            if b.is_ascii_hexdigit() && !b.is_ascii_uppercase() {
                run += 1;
                let next_is_hex = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit);
                if run == 64 && !next_is_hex {
                    return Some(path[i + 1 - 64..=i].to_string());
                }
            } else {
                run = 0;
            }
        }
    }
    None
}

/// Scans a procfs (normally `/proc`) for processes whose cgroup names a container ID.
pub struct CgroupScan {
    proc_root: PathBuf,
}

impl CgroupScan {
    /// A scan of the procfs at `proc_root`.
    pub fn new(proc_root: impl Into<PathBuf>) -> CgroupScan {
        CgroupScan {
            proc_root: proc_root.into(),
        }
    }

    /// Container ID → its first process: the one that is PID 1 of its own PID namespace
    /// (the last `NSpid` of `/proc/PID/status`), else the lowest PID in it. Not just the
    /// lowest: PIDs wrap, and a session's namespace child (in the host's PID namespace, but
    /// in the container's cgroup once it joined it) is no container process to join.
    pub fn containers(&self) -> BTreeMap<String, i32> {
        let mut found: BTreeMap<String, (bool, i32)> = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return BTreeMap::new();
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path().join("cgroup")) else {
                continue;
            };
            if let Some(id) = container_id(&text) {
                let status =
                    std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
                let is_init = status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|ids| ids.split_whitespace().last())
                    == Some("1");
                // Inits first, then the lowest PID: the smallest (not init, pid).
                let rank = (!is_init, pid);
                let best = found.entry(id).or_insert(rank);
                *best = (*best).min(rank);
            }
        }
        found.into_iter().map(|(id, (_, pid))| (id, pid)).collect()
    }
}

impl Resolver for CgroupScan {
    fn runtime(&self) -> &'static str {
        "cgroup"
    }

    fn lookup(&self, query: &str) -> Result<Lookup, ResolveError> {
        if !looks_like_id(query) {
            return Ok(Lookup::NotFound(Vec::new()));
        }
        let containers = self.containers();
        let hits: Vec<(&String, &i32)> = containers
            .iter()
            .filter(|(id, _)| id.starts_with(query))
            .collect();
        let candidate = |id: &String| Candidate {
            name: None,
            id: id.clone(),
            runtime: "cgroup",
            detail: None,
        };
        match hits.as_slice() {
            [(id, pid)] => {
                let target = Target {
                    pid: **pid,
                    runtime: "cgroup",
                    id: Some((*id).clone()),
                    name: None,
                };
                Ok(if id.as_str() == query {
                    Lookup::Found(target)
                } else {
                    Lookup::Prefix(target)
                })
            }
            [] => Ok(Lookup::NotFound(containers.keys().map(candidate).collect())),
            many => Err(ResolveError::Ambiguous {
                query: query.to_string(),
                candidates: many.iter().map(|(id, _)| candidate(id)).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0e1b7d4a5f8e6c2b1a0d9f8e7c6b5a4d3c2b1a0f9e8d7c6b5a4f3e2d1c";

    #[test]
    fn ids_in_every_runtime_layout() {
        for text in [
            format!("12:pids:/docker/{ID}\n0::/\n"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("1:name=systemd:/machine.slice/libpod-{ID}.scope/container\n"),
            format!("0::/kubepods/besteffort/pod1234/cri-containerd-{ID}.scope\n"),
        ] {
            assert_eq!(container_id(&text).as_deref(), Some(ID), "{text}");
        }
        assert_eq!(container_id("0::/user.slice/session-2.scope\n"), None);
        // 65 hex digits is not an ID.
        assert_eq!(container_id(&format!("0::/x/{ID}a\n")), None);
    }

    #[test]
    fn scan_of_a_fixture_proc() {
        let proc = tempfile::tempdir().expect("temp dir");
        // PID 5 is a session's namespace child in the container's cgroup; 10 is the
        // container's init; 7 another of its processes.
        for (pid, text, nspid) in [
            ("10", format!("0::/docker/{ID}\n"), "10\t1"),
            ("7", format!("0::/docker/{ID}\n"), "7\t12"),
            ("5", format!("0::/docker/{ID}\n"), "5"),
            ("12", "0::/\n".to_string(), "12"),
            ("self", "0::/\n".to_string(), "3"),
        ] {
            std::fs::create_dir_all(proc.path().join(pid)).expect("mkdir");
            std::fs::write(proc.path().join(pid).join("cgroup"), text).expect("write");
            std::fs::write(
                proc.path().join(pid).join("status"),
                format!("Name:\tx\nNSpid:\t{nspid}\n"),
            )
            .expect("write");
        }
        let scan = CgroupScan::new(proc.path());
        match scan.lookup("3f2a").expect("lookup") {
            Lookup::Prefix(t) => assert_eq!((t.pid, t.id.as_deref()), (10, Some(ID))),
            _ => panic!("not found by prefix"),
        }
        assert!(matches!(scan.lookup(ID), Ok(Lookup::Found(_))));
        assert!(matches!(scan.lookup("ffff"), Ok(Lookup::NotFound(c)) if c.len() == 1));
        assert!(matches!(scan.lookup("web"), Ok(Lookup::NotFound(c)) if c.is_empty()));
    }
}
