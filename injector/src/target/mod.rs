//! Finding the process to inject into from what the user typed.
//!
//! A TARGET is a PID, `pid:N`, `docker:NAME`, or a bare name or ID that each [`Resolver`] is
//! asked about in turn: the Docker API first, then a scan of `/proc/*/cgroup` for a
//! container ID (which finds containers of any runtime). Another runtime is one more file
//! here implementing [`Resolver`] and one more entry in [`resolvers`].

pub mod cgroup;
pub mod docker;
pub mod http;
pub mod pid;

use std::fmt;

/// A process to inject into, and how to name it to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its PID in our (the host's) PID namespace.
    pub pid: i32,
    /// Which resolver found it (`pid`, `docker`, `cgroup`).
    pub runtime: &'static str,
    /// The container's full ID, when known.
    pub id: Option<String>,
    /// The container's name, when known.
    pub name: Option<String>,
}

impl Target {
    /// A short label for prompts and messages: the name, else a 12-character ID, else the PID.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            name.clone()
        } else if let Some(id) = &self.id {
            id.chars().take(12).collect()
        } else {
            format!("pid {}", self.pid)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.id) {
            (Some(name), _) => write!(f, "{name} (pid {})", self.pid),
            (None, Some(id)) => write!(
                f,
                "container {} (pid {})",
                &id[..id.len().min(12)],
                self.pid
            ),
            (None, None) => write!(f, "pid {}", self.pid),
        }
    }
}

/// A container a lookup considered, for "unknown" and "ambiguous" messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Its full ID.
    pub id: String,
    /// Which runtime knows it.
    pub runtime: &'static str,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short: String = self.id.chars().take(12).collect();
        match &self.name {
            Some(name) => write!(f, "{name} ({} {short})", self.runtime),
            None => write!(f, "{short} ({})", self.runtime),
        }
    }
}

fn list(candidates: &[Candidate]) -> String {
    if candidates.is_empty() {
        return "no running containers were found".into();
    }
    let shown: Vec<String> = candidates
        .iter()
        .take(20)
        .map(ToString::to_string)
        .collect();
    let more = candidates.len().saturating_sub(20);
    if more > 0 {
        format!("candidates: {} and {more} more", shown.join(", "))
    } else {
        format!("candidates: {}", shown.join(", "))
    }
}

/// Why a target could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// `kind:` prefix not known.
    #[error("unknown target kind `{0}:`: use `pid:N`, `docker:NAME`, or a bare PID, name or ID")]
    UnknownKind(String),
    /// `pid:` without a number.
    #[error("`{0}` is not a PID: use `pid:N` with a number")]
    BadPid(String),
    /// Nothing matched.
    #[error("no container matches `{query}`: {}", list(.candidates))]
    NotFound {
        /// What the user typed.
        query: String,
        /// What exists.
        candidates: Vec<Candidate>,
    },
    /// More than one matched.
    #[error("`{query}` matches more than one container: {}: give more of the ID, or the name", list(.candidates))]
    Ambiguous {
        /// What the user typed.
        query: String,
        /// What matched.
        candidates: Vec<Candidate>,
    },
    /// The runtime's API could not be reached.
    #[error("{runtime} is not running ({detail}): start it, or give the container's PID")]
    Unavailable {
        /// Which runtime.
        runtime: &'static str,
        /// Socket and error.
        detail: String,
    },
    /// The container exists but has no process.
    #[error("container {name} is not running: start it first (`{runtime} start {name}`)")]
    NotRunning {
        /// Its name.
        name: String,
        /// Which runtime.
        runtime: &'static str,
    },
    /// The runtime answered something unexpected.
    #[error("{runtime} API: {detail}")]
    Api {
        /// Which runtime.
        runtime: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The PID does not exist, is a kernel thread, or has exited.
    #[error(transparent)]
    Process(#[from] crate::procfs::ProcError),
}

/// The answer of one resolver.
pub enum Lookup {
    /// Exactly one container.
    Found(Target),
    /// None; here is what this resolver knows of, for the error message.
    NotFound(Vec<Candidate>),
}

/// One way of finding containers (one runtime, or the cgroup scan).
pub trait Resolver {
    /// Its name, as used in `NAME:` prefixes.
    fn runtime(&self) -> &'static str;
    /// Looks `query` up: a name, full ID or unique ID prefix.
    fn lookup(&self, query: &str) -> Result<Lookup, ResolveError>;
}

/// The resolvers tried for a bare name or ID, in order.
pub fn resolvers() -> Vec<Box<dyn Resolver>> {
    vec![
        Box::new(docker::Docker::from_env()),
        Box::new(cgroup::CgroupScan::new("/proc")),
    ]
}

/// Turns a TARGET argument into a process.
pub fn resolve(arg: &str, resolvers: &[Box<dyn Resolver>]) -> Result<Target, ResolveError> {
    if let Some((kind, rest)) = arg.split_once(':') {
        if kind == "pid" {
            let pid = rest
                .parse::<i32>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| ResolveError::BadPid(rest.to_string()))?;
            return pid::resolve(pid);
        }
        let Some(resolver) = resolvers.iter().find(|r| r.runtime() == kind) else {
            return Err(ResolveError::UnknownKind(kind.to_string()));
        };
        return match resolver.lookup(rest)? {
            Lookup::Found(target) => Ok(target),
            Lookup::NotFound(candidates) => Err(ResolveError::NotFound {
                query: rest.to_string(),
                candidates,
            }),
        };
    }
    if let Ok(pid) = arg.parse::<i32>()
        && pid > 0
    {
        return pid::resolve(pid);
    }
    let mut candidates = Vec::new();
    let mut unavailable = None;
    for resolver in resolvers {
        match resolver.lookup(arg) {
            Ok(Lookup::Found(target)) => return Ok(target),
            Ok(Lookup::NotFound(more)) => {
                for c in more {
                    if !candidates.iter().any(|k: &Candidate| k.id == c.id) {
                        candidates.push(c);
                    }
                }
            }
            Err(e @ ResolveError::Unavailable { .. }) => {
                unavailable.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    // A name needs a runtime to resolve it: say that the runtime is down rather than that
    // the name is unknown.
    if let Some(e) = unavailable {
        return Err(e);
    }
    Err(ResolveError::NotFound {
        query: arg.to_string(),
        candidates,
    })
}

/// Whether `s` could be (a prefix of) a hexadecimal container ID.
pub fn looks_like_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        name: &'static str,
        known: Vec<Candidate>,
        down: bool,
    }

    impl Resolver for Fake {
        fn runtime(&self) -> &'static str {
            self.name
        }
        fn lookup(&self, query: &str) -> Result<Lookup, ResolveError> {
            if self.down {
                return Err(ResolveError::Unavailable {
                    runtime: self.name,
                    detail: "down".into(),
                });
            }
            let hits: Vec<&Candidate> = self
                .known
                .iter()
                .filter(|c| c.name.as_deref() == Some(query) || c.id.starts_with(query))
                .collect();
            match hits.as_slice() {
                [one] => Ok(Lookup::Found(Target {
                    pid: 42,
                    runtime: self.name,
                    id: Some(one.id.clone()),
                    name: one.name.clone(),
                })),
                [] => Ok(Lookup::NotFound(self.known.clone())),
                many => Err(ResolveError::Ambiguous {
                    query: query.into(),
                    candidates: many.iter().map(|c| (*c).clone()).collect(),
                }),
            }
        }
    }

    fn fake(down: bool) -> Vec<Box<dyn Resolver>> {
        let c = |name: &str, id: &str| Candidate {
            name: Some(name.into()),
            id: id.into(),
            runtime: "docker",
        };
        vec![Box::new(Fake {
            name: "docker",
            known: vec![c("web", "abc123"), c("db", "abd456")],
            down,
        })]
    }

    #[test]
    fn names_prefixes_and_ambiguity() {
        let r = fake(false);
        assert_eq!(
            resolve("web", &r).expect("found").name.as_deref(),
            Some("web")
        );
        assert_eq!(
            resolve("abd", &r).expect("found").name.as_deref(),
            Some("db")
        );
        let err = resolve("ab", &r).expect_err("ambiguous").to_string();
        assert!(
            err.contains("more than one") && err.contains("web") && err.contains("db"),
            "{err}"
        );
        let err = resolve("nope", &r).expect_err("unknown").to_string();
        assert!(
            err.contains("no container matches `nope`") && err.contains("web"),
            "{err}"
        );
        let err = resolve("docker:nope", &r).expect_err("unknown").to_string();
        assert!(err.contains("`nope`"), "{err}");
    }

    #[test]
    fn kinds_and_down_runtimes() {
        let r = fake(true);
        let err = resolve("web", &r).expect_err("down").to_string();
        assert!(err.contains("docker is not running"), "{err}");
        assert!(matches!(
            resolve("podman:x", &r),
            Err(ResolveError::UnknownKind(_))
        ));
        assert!(matches!(resolve("pid:x", &r), Err(ResolveError::BadPid(_))));
        assert!(matches!(resolve("pid:0", &r), Err(ResolveError::BadPid(_))));
    }

    #[test]
    fn ids_look_like_hex() {
        assert!(looks_like_id("3f2a"));
        assert!(!looks_like_id("web"));
        assert!(!looks_like_id(""));
    }
}
