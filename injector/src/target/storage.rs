//! containers/storage: the on-disk store that Podman, Buildah and CRI-O share.
//!
//! Layout (containers/storage `store.go`, `containers.go`; checked against Debian bookworm's
//! Podman 4.3):
//!
//! - `GRAPHROOT/DRIVER-containers/containers.json`: every container's `id` and `names`
//!   (`DRIVER` is the storage driver, `overlay` or `vfs`, so every `*-containers` directory is
//!   read);
//! - `GRAPHROOT/DRIVER-containers/ID/userdata/`: what outlives a reboot, including the OCI
//!   `config.json` (whose annotations say which tool made the container: Podman writes
//!   `io.container.manager=libpod`, CRI-O `io.kubernetes.cri-o.*` names) and CRI-O's
//!   `state.json`;
//! - `RUNROOT/DRIVER-containers/ID/userdata/`: what a reboot clears, including `pidfile`, the
//!   container's first process as conmon wrote it (`-p`/`--container-pidfile`).
//!
//! `GRAPHROOT` and `RUNROOT` come from `/etc/containers/storage.conf` (`[storage] graphroot`,
//! `runroot`; `$CONTAINERS_STORAGE_CONF` names another file), else the defaults
//! `/var/lib/containers/storage` and `/run/containers/storage`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::state;

/// The default graph root.
pub const GRAPH_ROOT: &str = "/var/lib/containers/storage";
/// The default run root.
pub const RUN_ROOT: &str = "/run/containers/storage";
/// The annotation Podman puts in every container's `config.json`.
const MANAGER: &str = "io.container.manager";
/// An annotation only CRI-O sets (the container's full CRI name).
pub const CRIO_NAME: &str = "io.kubernetes.cri-o.Name";

/// A containers/storage store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    graph_root: PathBuf,
    run_root: PathBuf,
}

/// One container in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredContainer {
    /// The full ID (64 hex digits).
    pub id: String,
    /// Its names (Podman: the container name; CRI-O: `k8s_...`).
    pub names: Vec<String>,
    /// `GRAPHROOT/DRIVER-containers/ID/userdata`.
    pub graph_dir: PathBuf,
    /// `RUNROOT/DRIVER-containers/ID/userdata`.
    pub run_dir: PathBuf,
    /// The annotations of its OCI `config.json` (graph, else run directory).
    pub annotations: BTreeMap<String, String>,
}

impl super::Named for StoredContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }
}

impl StoredContainer {
    /// Whether CRI-O made it (Podman also writes some `io.kubernetes.cri-o.*` annotations,
    /// but never the CRI name, and marks its own with `io.container.manager=libpod`).
    pub fn is_crio(&self) -> bool {
        self.annotations.get(MANAGER).map(String::as_str) != Some("libpod")
            && self.annotations.contains_key(CRIO_NAME)
    }
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    storage: ConfigStorage,
}

#[derive(Deserialize, Default)]
struct ConfigStorage {
    graphroot: Option<PathBuf>,
    runroot: Option<PathBuf>,
}

impl Storage {
    /// A store with these roots.
    pub fn new(graph_root: impl Into<PathBuf>, run_root: impl Into<PathBuf>) -> Storage {
        Storage {
            graph_root: graph_root.into(),
            run_root: run_root.into(),
        }
    }

    /// The roots `config` (a `storage.conf`) names; the defaults for what it does not, or
    /// when it is missing or unreadable.
    pub fn from_config(config: &Path) -> Storage {
        let parsed: ConfigFile = std::fs::read_to_string(config)
            .ok()
            .and_then(|text| toml::from_str(&text).ok())
            .unwrap_or_default();
        Storage::new(
            parsed
                .storage
                .graphroot
                .unwrap_or_else(|| PathBuf::from(GRAPH_ROOT)),
            parsed
                .storage
                .runroot
                .unwrap_or_else(|| PathBuf::from(RUN_ROOT)),
        )
    }

    /// The store the host's Podman and CRI-O use (`$CONTAINERS_STORAGE_CONF`, else
    /// `/etc/containers/storage.conf`).
    pub fn from_host() -> Storage {
        let config = std::env::var_os("CONTAINERS_STORAGE_CONF")
            .filter(|v| !v.is_empty())
            .map_or_else(
                || PathBuf::from("/etc/containers/storage.conf"),
                PathBuf::from,
            );
        Storage::from_config(&config)
    }

    /// Every container of every driver, in ID order (empty when there is no store).
    pub fn containers(&self) -> Vec<StoredContainer> {
        let mut found = Vec::new();
        for (dir_name, dir) in state::subdirs(&self.graph_root) {
            if !dir_name.ends_with("-containers") {
                continue;
            }
            let Ok(bytes) = std::fs::read(dir.join("containers.json")) else {
                continue;
            };
            let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(&bytes) else {
                continue;
            };
            for entry in entries {
                let graph_dir = dir.join(&entry.id).join("userdata");
                let run_dir = self
                    .run_root
                    .join(&dir_name)
                    .join(&entry.id)
                    .join("userdata");
                let mut annotations = state::annotations(&graph_dir.join("config.json"));
                if annotations.is_empty() {
                    annotations = state::annotations(&run_dir.join("config.json"));
                }
                found.push(StoredContainer {
                    id: entry.id,
                    names: entry.names,
                    graph_dir,
                    run_dir,
                    annotations,
                });
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }
}

/// Test fixtures: a store on disk.
#[cfg(test)]
pub mod fixture {
    use std::path::Path;

    /// Adds a container to the store under `graph`/`run` with the overlay driver: its
    /// `containers.json` entry, and its `config.json` with `annotations` (JSON object text).
    pub fn container(graph: &Path, run: &Path, id: &str, names: &[&str], annotations: &str) {
        let dir = graph.join("overlay-containers");
        std::fs::create_dir_all(dir.join(id).join("userdata")).expect("mkdir");
        std::fs::create_dir_all(run.join("overlay-containers").join(id).join("userdata"))
            .expect("mkdir");
        let list = dir.join("containers.json");
        let mut all: Vec<serde_json::Value> = std::fs::read(&list)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        all.push(serde_json::json!({
            "id": id,
            "names": names,
            "image": "4028819108c8751efa8fc0fc318896b485edcca85ef2e5387f37a21dd3ede956",
            "layer": "d2a2e6dc08566619b1f9ae4edf04a62f46ada8a7b8a1a7bb780d335439024c36",
            "metadata": "{\"name\":\"x\"}",
            "created": "2026-11-28T17:42:28.082151891Z",
        }));
        std::fs::write(&list, serde_json::to_vec(&all).expect("json")).expect("write");
        std::fs::write(
            dir.join(id).join("userdata/config.json"),
            format!(r#"{{"ociVersion":"1.0.2-dev","annotations":{annotations}}}"#),
        )
        .expect("write config");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_driver_and_tells_podman_from_crio() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (graph, run) = (dir.path().join("graph"), dir.path().join("run"));
        fixture::container(
            &graph,
            &run,
            "bbbb",
            &["web"],
            r#"{"io.container.manager":"libpod","io.kubernetes.cri-o.Created":"x"}"#,
        );
        fixture::container(
            &graph,
            &run,
            "aaaa",
            &["k8s_app_pod_default_uid_0"],
            r#"{"io.kubernetes.cri-o.Name":"k8s_app_pod_default_uid_0"}"#,
        );
        // A vfs store beside the overlay one, and junk that is not a store.
        std::fs::create_dir_all(graph.join("vfs-containers")).expect("mkdir");
        std::fs::write(
            graph.join("vfs-containers/containers.json"),
            r#"[{"id":"cccc","names":["old"]}]"#,
        )
        .expect("write");
        std::fs::create_dir_all(graph.join("overlay-images")).expect("mkdir");
        let store = Storage::new(&graph, &run);
        let all = store.containers();
        let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["aaaa", "bbbb", "cccc"]);
        assert!(all[0].is_crio());
        assert!(!all[1].is_crio());
        assert!(!all[2].is_crio());
        assert_eq!(all[1].run_dir, run.join("overlay-containers/bbbb/userdata"));
        assert!(
            Storage::new(dir.path().join("none"), &run)
                .containers()
                .is_empty()
        );
    }

    #[test]
    fn roots_come_from_storage_conf() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("storage.conf");
        std::fs::write(
            &conf,
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"/srv/graph\"\n# runroot unset\n",
        )
        .expect("write");
        assert_eq!(
            Storage::from_config(&conf),
            Storage::new("/srv/graph", RUN_ROOT)
        );
        assert_eq!(
            Storage::from_config(&dir.path().join("missing.conf")),
            Storage::new(GRAPH_ROOT, RUN_ROOT)
        );
    }
}
