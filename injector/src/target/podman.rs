//! Podman containers by name, full ID or unique ID prefix.
//!
//! Podman has no daemon unless `podman system service` runs. When it does, its API socket
//! (`$CONTAINER_HOST=unix://PATH`, else `/run/podman/podman.sock`) answers the Docker Engine
//! API, and is asked just like Docker's. Otherwise the answer comes from Podman's state on
//! disk (see [`super::storage`]): the containers in the containers/storage store that CRI-O
//! did not make, their names, and the PID conmon wrote into `RUNROOT/…/ID/userdata/pidfile`,
//! believed only while that process is the one the file was written for ([`super::state`]).
//! Podman's own database (`libpod/bolt_state.db`) is not read: it is a BoltDB file that
//! would need a parser of its own, and the files above say all that is needed.

use std::path::{Path, PathBuf};

use super::docker::{self, Docker};
use super::state::{self, Stale};
use super::storage::{Storage, StoredContainer};
use super::{Candidate, Lookup, ResolveError, Resolver, Target, lookup_in};

/// Podman's default API socket for root (`podman-system-service(1)`).
pub const SOCKET: &str = "/run/podman/podman.sock";

/// Podman, through its API socket when it listens, else its state files.
pub struct Podman {
    api: Docker,
    socket: PathBuf,
    storage: Storage,
    proc_root: PathBuf,
}

impl Podman {
    /// Podman with this API socket, store and procfs.
    pub fn new(
        socket: impl Into<PathBuf>,
        storage: Storage,
        proc_root: impl Into<PathBuf>,
    ) -> Podman {
        let socket = socket.into();
        Podman {
            api: Docker::at("podman", socket.clone()),
            socket,
            storage,
            proc_root: proc_root.into(),
        }
    }

    /// The host's Podman: `$CONTAINER_HOST` or [`SOCKET`], the store of
    /// `/etc/containers/storage.conf`, `/proc`.
    pub fn from_host() -> Podman {
        let socket = docker::socket_from_env("CONTAINER_HOST", SOCKET);
        Podman::new(socket, Storage::from_host(), "/proc")
    }

    /// Podman's containers in the store (not CRI-O's).
    fn stored(&self) -> Vec<StoredContainer> {
        self.storage
            .containers()
            .into_iter()
            .filter(|c| !c.is_crio())
            .collect()
    }

    /// Looks `query` up in the state files.
    fn lookup_state(&self, query: &str) -> Result<Lookup, ResolveError> {
        let all = self.stored();
        let candidate = |c: &StoredContainer| Candidate {
            name: c.names.first().cloned(),
            id: c.id.clone(),
            runtime: "podman",
            detail: None,
        };
        lookup_in(&all, query, candidate, |chosen| {
            let name = chosen.names.first().cloned();
            let pid = live_pid(&self.proc_root, &chosen.run_dir).map_err(|_| {
                ResolveError::NotRunning {
                    name: name.clone().unwrap_or_else(|| chosen.id.clone()),
                    runtime: "podman",
                }
            })?;
            Ok(Target {
                pid,
                runtime: "podman",
                id: Some(chosen.id.clone()),
                name,
            })
        })
    }
}

/// The running process conmon recorded in a container's run directory.
fn live_pid(proc_root: &Path, run_dir: &Path) -> Result<i32, Stale> {
    state::live_pid(proc_root, &run_dir.join("pidfile"))
}

impl Resolver for Podman {
    fn runtime(&self) -> &'static str {
        "podman"
    }

    fn lookup(&self, query: &str) -> Result<Lookup, ResolveError> {
        if self.socket.exists() {
            match self.api.lookup(query) {
                // The service is not running (a stale socket file): the files still tell.
                Err(ResolveError::Unavailable { .. }) => {}
                answer => return answer,
            }
        }
        self.lookup_state(query)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::state::fixture::{boot, file_at, process};
    use super::super::storage::fixture::container;
    use super::*;

    const WEB: &str = "454a2debcc104156f37ad9836fb2e87f5a072b5533a593cc2f6ce020c1eb7077";
    const OLD: &str = "458fd3b3c0c3b96e0cad2a2bd41c90e3e1e90a7d1d4fc7ec8e5e4c4c0b1f2a33";
    const POD: &str = "03c2d78618a7eba9698fe7d010ba23a0648cb4a29280ec8b34a6127aea1e5bf5";

    /// A store like Debian's Podman 4.3 writes: `web` running as PID 100, `old` stopped with
    /// its PID reused since, and a CRI-O container that must not show up.
    fn fixture(root: &Path) -> Podman {
        let (graph, run, proc) = (root.join("graph"), root.join("run"), root.join("proc"));
        let libpod = r#"{"io.container.manager":"libpod","io.kubernetes.cri-o.Created":"2026-11-28T17:42:28Z","io.kubernetes.cri-o.TTY":"false"}"#;
        container(&graph, &run, WEB, &["web"], libpod);
        container(&graph, &run, OLD, &["old"], libpod);
        container(
            &graph,
            &run,
            POD,
            &["k8s_app_pod_default_1_0"],
            r#"{"io.kubernetes.cri-o.Name":"k8s_app_pod_default_1_0"}"#,
        );
        boot(&proc, Duration::from_secs(1000));
        let ago = |s| SystemTime::now() - Duration::from_secs(s);
        process(
            &proc,
            100,
            'S',
            Duration::from_secs(500),
            "0::/libpod_parent/libpod-x\n",
        );
        process(
            &proc,
            101,
            'S',
            Duration::from_secs(900),
            "0::/user.slice\n",
        );
        file_at(
            &run.join(format!("overlay-containers/{WEB}/userdata/pidfile")),
            "100",
            ago(499),
        );
        file_at(
            &run.join(format!("overlay-containers/{OLD}/userdata/pidfile")),
            "101",
            ago(300),
        );
        Podman::new(root.join("no.sock"), Storage::new(graph, run), proc)
    }

    #[test]
    fn state_files_by_name_id_and_prefix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let podman = fixture(dir.path());
        for (query, exact) in [("web", true), (WEB, true), ("454a", false)] {
            let (target, was_exact) = match podman.lookup(query).expect("lookup") {
                Lookup::Found(t) => (t, true),
                Lookup::Prefix(t) => (t, false),
                Lookup::NotFound(_) => panic!("{query} not found"),
            };
            assert_eq!(was_exact, exact, "{query}");
            assert_eq!(
                (target.pid, target.runtime, target.name.as_deref()),
                (100, "podman", Some("web"))
            );
        }
        // A stopped container whose PID now belongs to a host process.
        assert!(matches!(
            podman.lookup("old"),
            Err(ResolveError::NotRunning {
                runtime: "podman",
                ..
            })
        ));
        // Both Podman IDs start with 45.
        let err = podman.lookup("45").err().expect("ambiguous").to_string();
        assert!(
            err.contains("web (podman 454a2debcc10)") && err.contains("old (podman"),
            "{err}"
        );
        // CRI-O's container is not Podman's.
        match podman.lookup("03c2").expect("lookup") {
            Lookup::NotFound(candidates) => {
                assert_eq!(candidates.len(), 2);
                assert!(candidates.iter().all(|c| c.runtime == "podman"));
            }
            _ => panic!("CRI-O's container found through Podman"),
        }
    }

    #[test]
    fn a_stale_socket_falls_back_to_the_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut podman = fixture(dir.path());
        let socket = dir.path().join("podman.sock");
        // A socket file nobody listens on (the service exited).
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
        podman.api = Docker::at("podman", &socket);
        podman.socket = socket;
        assert!(matches!(podman.lookup("web"), Ok(Lookup::Found(t)) if t.pid == 100));
    }
}
