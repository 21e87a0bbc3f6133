//! CRI-O containers by Kubernetes name, full ID or unique ID prefix, from CRI-O's state files.
//!
//! CRI-O keeps its containers in the same containers/storage store as Podman (see
//! [`super::storage`]); its own are the ones whose `config.json` carries the CRI name
//! annotation `io.kubernetes.cri-o.Name` (`k8s_CONTAINER_POD_NAMESPACE_UID_ATTEMPT`). For each
//! (CRI-O's `internal/oci/container.go` and `runtime_oci.go`):
//!
//! - `GRAPHROOT/…/ID/userdata/state.json`: the runtime state (`status`, `pid`), which CRI-O
//!   updates when the container stops;
//! - `RUNROOT/…/ID/userdata/pidfile`: the PID conmon wrote (`-p BUNDLE/pidfile`);
//! - `config.json` annotations: `io.kubernetes.container.name` and `io.kubernetes.pod.name`
//!   (also inside the JSON of `io.kubernetes.cri-o.Labels`), `io.kubernetes.cri-o.Name`, and
//!   `io.kubernetes.cri-o.ContainerType` (`sandbox` for a pod's infra container).
//!
//! A container is found by its CRI name, by `POD/CONTAINER`, by its container name alone
//! (ambiguous when several pods have one of that name: the candidates say which pod), or by
//! ID. Infra (pause) containers answer to their ID only. CRI-O's gRPC API is not used.
//! `cri:ID` forces this resolver.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::state::{self, Stale};
use super::storage::{CRIO_NAME, Storage, StoredContainer};
use super::{Candidate, Lookup, Named, ResolveError, Resolver, Target, lookup_in};

const CONTAINER_NAME: &str = "io.kubernetes.container.name";
const POD_NAME: &str = "io.kubernetes.pod.name";
const LABELS: &str = "io.kubernetes.cri-o.Labels";
const CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";

/// CRI-O, from its state files.
pub struct Crio {
    storage: Storage,
    proc_root: PathBuf,
}

/// A CRI-O container and the names it answers to.
struct Entry {
    stored: StoredContainer,
    container: Option<String>,
    pod: Option<String>,
    names: Vec<String>,
}

#[derive(Deserialize)]
struct StateJson {
    #[serde(default)]
    status: String,
    #[serde(default)]
    pid: i32,
}

impl Named for Entry {
    fn id(&self) -> &str {
        &self.stored.id
    }

    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }
}

impl Entry {
    fn new(stored: StoredContainer) -> Entry {
        let labels: BTreeMap<String, String> = stored
            .annotations
            .get(LABELS)
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        let get = |key: &str| {
            stored
                .annotations
                .get(key)
                .or_else(|| labels.get(key))
                .cloned()
        };
        let sandbox = stored.annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox");
        let (container, pod) = (get(CONTAINER_NAME), get(POD_NAME));
        let mut names = Vec::new();
        if !sandbox {
            names.extend(stored.annotations.get(CRIO_NAME).cloned());
            if let (Some(c), Some(p)) = (&container, &pod) {
                names.push(format!("{p}/{c}"));
            }
            names.extend(container.clone());
        }
        Entry {
            stored,
            container,
            pod,
            names,
        }
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            name: self
                .container
                .clone()
                .or_else(|| self.stored.annotations.get(CRIO_NAME).cloned()),
            id: self.stored.id.clone(),
            runtime: "cri-o",
            detail: self.pod.as_ref().map(|p| format!("pod {p}")),
        }
    }

    /// The container's running process: the PID file, unless `state.json` says it stopped.
    fn live_pid(&self, proc_root: &std::path::Path) -> Result<i32, Stale> {
        let state_file = self.stored.graph_dir.join("state.json");
        let saved = state::read_with_mtime(&state_file)
            .ok()
            .and_then(|(text, at)| Some((serde_json::from_str::<StateJson>(&text).ok()?, at)));
        if let Some((saved, _)) = &saved
            && saved.status == "stopped"
        {
            return Err(Stale::Exited(saved.pid));
        }
        match state::live_pid(proc_root, &self.stored.run_dir.join("pidfile")) {
            Err(Stale::NoFile) => match saved {
                Some((saved, at)) if saved.pid > 0 => state::check_pid(proc_root, saved.pid, at),
                _ => Err(Stale::NoFile),
            },
            other => other,
        }
    }
}

impl Crio {
    /// CRI-O with this store and procfs.
    pub fn new(storage: Storage, proc_root: impl Into<PathBuf>) -> Crio {
        Crio {
            storage,
            proc_root: proc_root.into(),
        }
    }

    /// The host's CRI-O: the store of `/etc/containers/storage.conf`, `/proc`.
    pub fn from_host() -> Crio {
        Crio::new(Storage::from_host(), "/proc")
    }
}

impl Resolver for Crio {
    fn runtime(&self) -> &'static str {
        "cri-o"
    }

    fn accepts(&self, kind: &str) -> bool {
        kind == "cri" || kind == "cri-o" || kind == "crio"
    }

    fn lookup(&self, query: &str) -> Result<Lookup, ResolveError> {
        let all: Vec<Entry> = self
            .storage
            .containers()
            .into_iter()
            .filter(StoredContainer::is_crio)
            .map(Entry::new)
            .collect();
        lookup_in(&all, query, Entry::candidate, |chosen| {
            let label = chosen
                .container
                .clone()
                .unwrap_or_else(|| chosen.stored.id.chars().take(12).collect());
            let pid = chosen
                .live_pid(&self.proc_root)
                .map_err(|_| ResolveError::NotRunning {
                    name: label.clone(),
                    runtime: "cri-o",
                })?;
            Ok(Target {
                pid,
                runtime: "cri-o",
                id: Some(chosen.stored.id.clone()),
                name: chosen.container.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use super::super::state::fixture::{boot, file_at, process};
    use super::super::storage::fixture::container;
    use super::*;

    const APP1: &str = "9a1c0d6e4f0b4e4f9c1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a6978877665544332";
    const APP2: &str = "9b2c0d6e4f0b4e4f9c1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a6978877665544332";
    const INFRA: &str = "1f0e0d6e4f0b4e4f9c1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a6978877665544332";
    const GONE: &str = "7d2c0d6e4f0b4e4f9c1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a6978877665544332";

    fn annotations(kind: &str, name: &str, container: &str, pod: &str) -> String {
        let labels = serde_json::json!({
            "io.kubernetes.container.name": container,
            "io.kubernetes.pod.name": pod,
            "io.kubernetes.pod.namespace": "default",
        })
        .to_string();
        serde_json::json!({
            "io.kubernetes.cri-o.ContainerType": kind,
            "io.kubernetes.cri-o.Name": name,
            "io.kubernetes.cri-o.Labels": labels,
            "io.kubernetes.pod.name": pod,
            "io.kubernetes.cri-o.Created": "2026-11-28T17:00:00Z",
        })
        .to_string()
    }

    /// Two pods `web-1` and `web-2` with an `app` container each (APP1 runs as PID 200, APP2
    /// as 201), web-1's infra container, and a container CRI-O marked stopped.
    fn fixture(root: &Path) -> Crio {
        let (graph, run, proc) = (root.join("graph"), root.join("run"), root.join("proc"));
        for (id, kind, pod, container_name) in [
            (APP1, "container", "web-1", "app"),
            (APP2, "container", "web-2", "app"),
            (INFRA, "sandbox", "web-1", "POD"),
            (GONE, "container", "batch", "job"),
        ] {
            let name = format!("k8s_{container_name}_{pod}_default_uid_0");
            container(
                &graph,
                &run,
                id,
                &[&name],
                &annotations(kind, &name, container_name, pod),
            );
        }
        boot(&proc, Duration::from_secs(1000));
        let before = SystemTime::now() - Duration::from_secs(400);
        for (pid, id) in [(200, APP1), (201, APP2), (202, INFRA), (203, GONE)] {
            process(
                &proc,
                pid,
                'S',
                Duration::from_secs(550),
                "0::/kubepods/crio-x.scope\n",
            );
            file_at(
                &run.join(format!("overlay-containers/{id}/userdata/pidfile")),
                &pid.to_string(),
                before,
            );
        }
        // APP2 has no pidfile left, only its state.json (the other way to find it).
        std::fs::remove_file(run.join(format!("overlay-containers/{APP2}/userdata/pidfile")))
            .expect("rm");
        file_at(
            &graph.join(format!("overlay-containers/{APP2}/userdata/state.json")),
            r#"{"ociVersion":"1.0.2","id":"x","status":"running","pid":201,"bundle":"/run/x"}"#,
            before,
        );
        file_at(
            &graph.join(format!("overlay-containers/{GONE}/userdata/state.json")),
            r#"{"ociVersion":"1.0.2","id":"x","status":"stopped","pid":0}"#,
            before,
        );
        Crio::new(Storage::new(graph, run), proc)
    }

    fn found(crio: &Crio, query: &str) -> Target {
        match crio.lookup(query) {
            Ok(Lookup::Found(t) | Lookup::Prefix(t)) => t,
            Ok(Lookup::NotFound(_)) => panic!("{query}: not found"),
            Err(e) => panic!("{query}: {e}"),
        }
    }

    #[test]
    fn by_pod_and_container_name_cri_name_and_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let crio = fixture(dir.path());
        assert_eq!(found(&crio, "web-1/app").pid, 200);
        assert_eq!(found(&crio, "k8s_app_web-2_default_uid_0").pid, 201);
        assert_eq!(found(&crio, "9b2c").pid, 201);
        assert_eq!(found(&crio, INFRA).pid, 202);
        let t = found(&crio, APP1);
        assert_eq!((t.runtime, t.name.as_deref()), ("cri-o", Some("app")));

        // `app` alone is in two pods: the candidates name them.
        let err = crio.lookup("app").err().expect("ambiguous").to_string();
        assert!(
            err.contains("app (cri-o pod web-1 9a1c0d6e4f0b)")
                && err.contains("app (cri-o pod web-2 9b2c0d6e4f0b)"),
            "{err}"
        );
        // The infra container does not answer to a name.
        assert!(matches!(crio.lookup("POD"), Ok(Lookup::NotFound(c)) if c.len() == 4));
        assert!(matches!(
            crio.lookup("job"),
            Err(ResolveError::NotRunning {
                runtime: "cri-o",
                ..
            })
        ));
        assert!(crio.accepts("cri") && !crio.accepts("podman"));
    }
}
