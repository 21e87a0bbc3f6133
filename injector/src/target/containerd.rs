//! containerd tasks by ID, unique ID prefix, `NAMESPACE/ID`, or Kubernetes container name,
//! from containerd's state files.
//!
//! containerd's API is gRPC; its runtime v2 state directory says all cartinject needs, without
//! a gRPC stack in a small static binary. Each running task has a bundle directory
//! `STATE/io.containerd.runtime.v2.task/NAMESPACE/ID/` holding `init.pid` (the task's first
//! process, written by the shim) and the OCI `config.json`. Two state directories are read:
//! a standalone containerd's (`/run/containerd`) and the one Docker starts for itself
//! (`/var/run/docker/containerd/daemon`, namespace `moby`). Namespaces are `default` for
//! `ctr`, `k8s.io` for Kubernetes (the CRI plugin), `moby` for Docker, or any other.
//!
//! Outside Kubernetes a task's ID is its only name. In `k8s.io`, the CRI plugin's annotations
//! in `config.json` name it: `io.kubernetes.cri.container-name`,
//! `io.kubernetes.cri.sandbox-name` (the pod) and `io.kubernetes.cri.container-type`
//! (`sandbox` for the pod's pause container, which answers to its ID only). A task is found by
//! its ID, a unique prefix of it, its container name, or `POD/CONTAINER`; `NS/QUERY` restricts
//! the search to one namespace, and `containerd:` forces this resolver. The PID in `init.pid`
//! is believed only while that process is the one the file was written for ([`super::state`]):
//! an exited task keeps its file until it is deleted.

use std::path::{Path, PathBuf};

use super::state::{self, Stale};
use super::{Candidate, Lookup, Named, ResolveError, Resolver, Target, looks_like_id, lookup_in};

/// The runtime v2 state directories of a standalone containerd and of Docker's own.
pub const TASK_DIRS: [&str; 2] = [
    "/run/containerd/io.containerd.runtime.v2.task",
    "/var/run/docker/containerd/daemon/io.containerd.runtime.v2.task",
];

const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// containerd, from its runtime v2 state directories.
pub struct Containerd {
    task_dirs: Vec<PathBuf>,
    proc_root: PathBuf,
}

/// One task's bundle.
struct Task {
    namespace: String,
    id: String,
    bundle: PathBuf,
    container: Option<String>,
    pod: Option<String>,
    names: Vec<String>,
}

impl Named for Task {
    fn id(&self) -> &str {
        &self.id
    }

    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }
}

impl Task {
    fn candidate(&self) -> Candidate {
        let detail = match &self.pod {
            Some(pod) => format!("{} pod {pod}", self.namespace),
            None => self.namespace.clone(),
        };
        Candidate {
            name: self.container.clone(),
            id: self.id.clone(),
            runtime: "containerd",
            detail: Some(detail),
        }
    }
}

impl Containerd {
    /// containerd with these `io.containerd.runtime.v2.task` directories and procfs.
    pub fn new(task_dirs: Vec<PathBuf>, proc_root: impl Into<PathBuf>) -> Containerd {
        Containerd {
            task_dirs,
            proc_root: proc_root.into(),
        }
    }

    /// The host's containerds: [`TASK_DIRS`], `/proc`.
    pub fn from_host() -> Containerd {
        Containerd::new(TASK_DIRS.iter().map(PathBuf::from).collect(), "/proc")
    }

    /// Every task bundle (running or not) in every namespace.
    fn tasks(&self) -> Vec<Task> {
        let mut found = Vec::new();
        for dir in &self.task_dirs {
            for (namespace, ns_dir) in state::subdirs(dir) {
                for (id, bundle) in state::subdirs(&ns_dir) {
                    let annotations = state::annotations(&bundle.join("config.json"));
                    let sandbox =
                        annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox");
                    let container = annotations.get(CONTAINER_NAME).cloned();
                    let pod = annotations.get(SANDBOX_NAME).cloned();
                    let mut names = Vec::new();
                    if !sandbox {
                        if let (Some(c), Some(p)) = (&container, &pod) {
                            names.push(format!("{p}/{c}"));
                        }
                        names.extend(container.clone());
                    }
                    found.push(Task {
                        namespace: namespace.clone(),
                        id,
                        bundle,
                        container,
                        pod,
                        names,
                    });
                }
            }
        }
        found
    }
}

fn live_pid(proc_root: &Path, bundle: &Path) -> Result<i32, Stale> {
    state::live_pid(proc_root, &bundle.join("init.pid"))
}

impl Resolver for Containerd {
    fn runtime(&self) -> &'static str {
        "containerd"
    }

    fn lookup(&self, query: &str) -> Result<Lookup, ResolveError> {
        let mut all = self.tasks();
        // `NS/QUERY` when NS is a namespace that exists (a pod name may hold no `/` but a
        // `POD/CONTAINER` query does: it is tried as such when no namespace matches).
        let mut query = query;
        if let Some((ns, rest)) = query.split_once('/')
            && all.iter().any(|t| t.namespace == ns)
        {
            all.retain(|t| t.namespace == ns);
            query = rest;
        }
        lookup_in(&all, query, Task::candidate, |chosen| {
            let pid = live_pid(&self.proc_root, &chosen.bundle).map_err(|_| {
                ResolveError::NotRunning {
                    name: format!("{}/{}", chosen.namespace, chosen.id),
                    runtime: "containerd",
                }
            })?;
            // Outside Kubernetes, an ID that is not a generated 64-hex one is the task's name.
            let generated = chosen.id.len() == 64 && looks_like_id(&chosen.id);
            Ok(Target {
                pid,
                runtime: "containerd",
                id: Some(chosen.id.clone()),
                name: chosen
                    .container
                    .clone()
                    .or_else(|| (!generated).then(|| chosen.id.clone())),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::state::fixture::{boot, file_at, process};
    use super::*;

    const CRI_APP: &str = "5e1d7c9a0b2f4e6d8c1a3b5d7f9e0c2a4b6d8f0e1c3a5b7d9f2e4c6a8b0d1f3e";
    const CRI_PAUSE: &str = "5e2a7c9a0b2f4e6d8c1a3b5d7f9e0c2a4b6d8f0e1c3a5b7d9f2e4c6a8b0d1f3e";
    const MOBY: &str = "48fda0ab59ba2eb89ece80195e3e6b5995aa1ed22ba8cf5d4019fbf53277aab6";

    fn task(dir: &Path, ns: &str, id: &str, pid: i32, annotations: &str, written: SystemTime) {
        let bundle = dir.join(ns).join(id);
        file_at(&bundle.join("init.pid"), &pid.to_string(), written);
        std::fs::write(
            bundle.join("config.json"),
            format!(r#"{{"ociVersion":"1.0.2-dev","annotations":{annotations}}}"#),
        )
        .expect("write config");
    }

    /// A standalone containerd with `ctr` tasks in `default` (`web`, running as 300; `dead`,
    /// exited with its PID reused) and a Kubernetes pod in `k8s.io`; Docker's containerd with
    /// one `moby` task.
    fn fixture(root: &Path) -> Containerd {
        let (own, docker, proc) = (root.join("own"), root.join("docker"), root.join("proc"));
        boot(&proc, Duration::from_secs(1000));
        let at = SystemTime::now() - Duration::from_secs(400);
        for pid in [300, 302, 303, 304] {
            process(&proc, pid, 'S', Duration::from_secs(550), "0::/k8s.io/x\n");
        }
        process(
            &proc,
            301,
            'S',
            Duration::from_secs(990),
            "0::/user.slice\n",
        );
        task(&own, "default", "web", 300, "{}", at);
        task(&own, "default", "dead", 301, "{}", at);
        task(
            &own,
            "k8s.io",
            CRI_APP,
            302,
            r#"{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"app","io.kubernetes.cri.sandbox-name":"web-7d9f"}"#,
            at,
        );
        task(
            &own,
            "k8s.io",
            CRI_PAUSE,
            303,
            r#"{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-name":"web-7d9f"}"#,
            at,
        );
        task(&docker, "moby", MOBY, 304, "{}", at);
        Containerd::new(vec![own, docker], proc)
    }

    fn pid_of(c: &Containerd, query: &str) -> i32 {
        match c.lookup(query) {
            Ok(Lookup::Found(t) | Lookup::Prefix(t)) => t.pid,
            Ok(Lookup::NotFound(_)) => panic!("{query}: not found"),
            Err(e) => panic!("{query}: {e}"),
        }
    }

    #[test]
    fn tasks_by_id_namespace_and_kubernetes_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = fixture(dir.path());
        assert_eq!(pid_of(&c, "web"), 300);
        assert_eq!(pid_of(&c, "default/web"), 300);
        assert_eq!(pid_of(&c, "app"), 302);
        assert_eq!(pid_of(&c, "web-7d9f/app"), 302);
        assert_eq!(pid_of(&c, "k8s.io/app"), 302);
        assert_eq!(pid_of(&c, "k8s.io/5e2a"), 303);
        assert_eq!(pid_of(&c, "48fd"), 304);
        assert!(matches!(c.lookup(MOBY), Ok(Lookup::Found(t)) if t.name.is_none()));
        assert!(
            matches!(c.lookup("web"), Ok(Lookup::Found(t)) if t.name.as_deref() == Some("web"))
        );
        assert!(
            matches!(c.lookup("5e1d"), Ok(Lookup::Prefix(t)) if t.name.as_deref() == Some("app"))
        );

        let err = c.lookup("5e").err().expect("ambiguous").to_string();
        assert!(
            err.contains("app (containerd k8s.io pod web-7d9f 5e1d7c9a0b2f)")
                && err.contains("5e2a7c9a0b2f (containerd k8s.io pod web-7d9f)"),
            "{err}"
        );
        assert!(matches!(
            c.lookup("dead"),
            Err(ResolveError::NotRunning { runtime: "containerd", ref name }) if name == "default/dead"
        ));
        // Restricted to a namespace, the others' tasks are neither found nor candidates.
        match c.lookup("moby/web").expect("lookup") {
            Lookup::NotFound(candidates) => {
                assert_eq!(candidates.len(), 1);
                assert_eq!(candidates[0].detail.as_deref(), Some("moby"));
            }
            _ => panic!("found web in moby"),
        }
    }
}
