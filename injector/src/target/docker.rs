//! Docker containers by name, full ID or unique ID prefix, through the Engine API on its Unix
//! socket (`GET /containers/json?all=1`, then `GET /containers/ID/json` for `.State.Pid`).
//! Podman's API service (`podman system service`) speaks the same API, so [`Docker::at`]
//! serves it too, under Podman's name.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::http::{self, HttpError};
use super::{Candidate, Lookup, Named, ResolveError, Resolver, Target, lookup_in};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The Docker Engine API at a socket.
pub struct Docker {
    runtime: &'static str,
    socket: PathBuf,
}

#[derive(Deserialize)]
struct Summary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
}

/// A container as the list names it: `(name, full ID)`.
pub struct Listed {
    /// Its name, without Docker's leading `/`.
    pub name: Option<String>,
    /// Its full ID.
    pub id: String,
}

impl Named for Listed {
    fn id(&self) -> &str {
        &self.id
    }

    fn names(&self) -> Vec<&str> {
        self.name.as_deref().into_iter().collect()
    }
}

#[derive(Deserialize)]
struct Inspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "State")]
    state: State,
}

#[derive(Deserialize)]
struct State {
    #[serde(rename = "Running", default)]
    running: bool,
    #[serde(rename = "Pid", default)]
    pid: i32,
}

/// The API socket an environment variable names as `unix://PATH` (`DOCKER_HOST`,
/// Podman's `CONTAINER_HOST`), else `default`.
pub fn socket_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var(var)
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Docker's API socket: `DOCKER_HOST=unix://PATH`, else `/var/run/docker.sock`.
pub fn socket() -> PathBuf {
    socket_from_env("DOCKER_HOST", "/var/run/docker.sock")
}

impl Docker {
    /// The socket named by `DOCKER_HOST=unix://PATH`, else `/var/run/docker.sock`.
    pub fn from_env() -> Docker {
        Docker::at("docker", socket())
    }

    /// The Engine API of `runtime` at `socket`.
    pub fn at(runtime: &'static str, socket: impl Into<PathBuf>) -> Docker {
        Docker {
            runtime,
            socket: socket.into(),
        }
    }

    fn get(&self, path: &str) -> Result<http::Response, ResolveError> {
        http::get(&self.socket, path, TIMEOUT).map_err(|e| match e {
            HttpError::Connect { .. } => ResolveError::Unavailable {
                runtime: self.runtime,
                detail: e.to_string(),
            },
            other => ResolveError::Api {
                runtime: self.runtime,
                detail: other.to_string(),
            },
        })
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, ResolveError> {
        let response = self.get(path)?;
        if response.status != 200 {
            return Err(ResolveError::Api {
                runtime: self.runtime,
                detail: format!(
                    "GET {path}: HTTP {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body).trim()
                ),
            });
        }
        serde_json::from_slice(&response.body).map_err(|e| ResolveError::Api {
            runtime: self.runtime,
            detail: format!("GET {path}: {e}"),
        })
    }

    /// Every container Docker knows (running or not).
    pub fn containers(&self) -> Result<Vec<Listed>, ResolveError> {
        let all: Vec<Summary> = self.json("/containers/json?all=1")?;
        Ok(all
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string());
                Listed { name, id: c.id }
            })
            .collect())
    }
}

impl Resolver for Docker {
    fn runtime(&self) -> &'static str {
        self.runtime
    }

    fn lookup(&self, query: &str) -> Result<Lookup, ResolveError> {
        let all = self.containers()?;
        let candidate = |c: &Listed| Candidate {
            name: c.name.clone(),
            id: c.id.clone(),
            runtime: self.runtime,
            detail: None,
        };
        // Docker's own order: an exact name or full ID wins over an ID prefix.
        lookup_in(&all, query, candidate, |chosen| {
            let inspect: Inspect = self.json(&format!("/containers/{}/json", chosen.id))?;
            let name = inspect.name.trim_start_matches('/').to_string();
            if !inspect.state.running || inspect.state.pid <= 0 {
                return Err(ResolveError::NotRunning {
                    name,
                    runtime: self.runtime,
                });
            }
            Ok(Target {
                pid: inspect.state.pid,
                runtime: self.runtime,
                id: Some(inspect.id),
                name: Some(name),
            })
        })
    }
}
