//! Finding the process to inject into from what the user typed.
//!
//! A TARGET is a PID, `pid:N`, `KIND:NAME` (`docker:`, `podman:`, `containerd:[NS/]ID`,
//! `cri:`) or a bare name or ID that every [`Resolver`] is asked about: Docker's API, Podman
//! (its API socket, else its state files), containerd's and CRI-O's state files, and a scan
//! of `/proc/*/cgroup` for a container ID (which finds containers of any runtime). An exact
//! name or full ID wins over an ID prefix; one container found by several resolvers (a Docker
//! container is also a containerd task in the `moby` namespace) counts once; two different
//! containers are ambiguous, and the error lists each with its runtime. Another runtime is
//! one more file here implementing [`Resolver`] and one more entry in [`resolvers`].

pub mod cgroup;
pub mod containerd;
pub mod crio;
pub mod docker;
pub mod http;
pub mod pid;
pub mod podman;
pub mod state;
pub mod storage;

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

/// Names and IDs come from runtimes' answers and state files, which the container's owner
/// chose: shown escaped.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::display::escape;
        match (&self.name, &self.id) {
            (Some(name), _) => write!(f, "{} (pid {})", escape(name), self.pid),
            (None, Some(id)) => write!(
                f,
                "container {} (pid {})",
                escape(id.chars().take(12).collect::<String>()),
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
    /// Where in that runtime, when it has several places (containerd's namespace, a
    /// Kubernetes pod).
    pub detail: Option<String>,
}

impl Candidate {
    /// The candidate a found target stands for.
    pub fn of(target: &Target) -> Candidate {
        Candidate {
            name: target.name.clone(),
            id: target.id.clone().unwrap_or_else(|| target.pid.to_string()),
            runtime: target.runtime,
            detail: None,
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short: String = self.id.chars().take(12).collect();
        let place = match &self.detail {
            Some(detail) => format!("{} {detail}", self.runtime),
            None => self.runtime.to_string(),
        };
        match &self.name {
            Some(name) => write!(f, "{name} ({place} {short})"),
            None => write!(f, "{short} ({place})"),
        }
    }
}

fn down(unavailable: &[String]) -> String {
    if unavailable.is_empty() {
        String::new()
    } else {
        format!(" ({})", unavailable.join("; "))
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
    #[error(
        "unknown target kind `{0}:`: use `pid:N`, `docker:NAME`, `podman:NAME`, `containerd:[NS/]ID`, `cri:ID`, `cgroup:ID`, or a bare PID, name or ID"
    )]
    UnknownKind(String),
    /// `pid:` without a number.
    #[error("`{0}` is not a PID: use `pid:N` with a number")]
    BadPid(String),
    /// Nothing matched.
    #[error("no container matches `{query}`{}: {}", down(.unavailable), list(.candidates))]
    NotFound {
        /// What the user typed.
        query: String,
        /// What exists.
        candidates: Vec<Candidate>,
        /// Runtimes that could not be asked (`docker is not running (...)`).
        unavailable: Vec<String>,
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
    /// Exactly one container, by its name or full ID.
    Found(Target),
    /// Exactly one container, by a unique prefix of its ID (an exact match elsewhere wins).
    Prefix(Target),
    /// None; here is what this resolver knows of, for the error message.
    NotFound(Vec<Candidate>),
}

/// One way of finding containers (one runtime, or the cgroup scan).
pub trait Resolver {
    /// Its name, as shown in messages and used in `NAME:` prefixes.
    fn runtime(&self) -> &'static str;
    /// Whether `KIND:` forces this resolver (by default: `KIND` is [`Resolver::runtime`]).
    fn accepts(&self, kind: &str) -> bool {
        kind == self.runtime()
    }
    /// Looks `query` up: a name, full ID or unique ID prefix.
    fn lookup(&self, query: &str) -> Result<Lookup, ResolveError>;
    /// Every container this resolver knows (running or not). An empty query matches no
    /// container, so the lookup's list of candidates is that.
    fn known(&self) -> Vec<Candidate> {
        match self.lookup("") {
            Ok(Lookup::NotFound(all)) => all,
            _ => Vec::new(),
        }
    }
}

/// Container ID → name, from every runtime that names its containers (for `--list`).
pub fn names(resolvers: &[Box<dyn Resolver>]) -> std::collections::BTreeMap<String, String> {
    let mut names = std::collections::BTreeMap::new();
    for resolver in resolvers {
        for c in resolver.known() {
            if let Some(name) = c.name {
                names.entry(c.id).or_insert(name);
            }
        }
    }
    names
}

/// Every resolver, in the order their answers are preferred when they name the same
/// container (Docker's API knows names the containerd `moby` task does not).
pub fn resolvers() -> Vec<Box<dyn Resolver>> {
    vec![
        Box::new(docker::Docker::from_env()),
        Box::new(podman::Podman::from_host()),
        Box::new(containerd::Containerd::from_host()),
        Box::new(crio::Crio::from_host()),
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
        let Some(resolver) = resolvers.iter().find(|r| r.accepts(kind)) else {
            return Err(ResolveError::UnknownKind(kind.to_string()));
        };
        return match resolver.lookup(rest)? {
            Lookup::Found(target) | Lookup::Prefix(target) => Ok(target),
            Lookup::NotFound(candidates) => Err(ResolveError::NotFound {
                query: rest.to_string(),
                candidates,
                unavailable: Vec::new(),
            }),
        };
    }
    if let Ok(pid) = arg.parse::<i32>()
        && pid > 0
    {
        return pid::resolve(pid);
    }
    let mut exact: Vec<Target> = Vec::new();
    let mut prefix: Vec<Target> = Vec::new();
    let mut candidates = Vec::new();
    let mut unavailable = None;
    let mut stopped = None;
    let mut failed = None;
    for resolver in resolvers {
        match resolver.lookup(arg) {
            Ok(Lookup::Found(target)) => add_once(&mut exact, target),
            Ok(Lookup::Prefix(target)) => add_once(&mut prefix, target),
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
            Err(e @ ResolveError::NotRunning { .. }) => {
                stopped.get_or_insert(e);
            }
            Err(e @ ResolveError::Ambiguous { .. }) => return Err(e),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    let hits = if exact.is_empty() { prefix } else { exact };
    match hits.len() {
        1 => return Ok(hits.into_iter().next().expect("one hit")),
        0 => {}
        _ => {
            return Err(ResolveError::Ambiguous {
                query: arg.to_string(),
                candidates: hits.iter().map(Candidate::of).collect(),
            });
        }
    }
    // Nothing running matched: say why as precisely as we can. A name needs a runtime to
    // resolve it, so a runtime that is down beats "unknown" when no other runtime has any
    // container; when others do, they are listed and the one that is down is named.
    if let Some(e) = stopped.or(failed) {
        return Err(e);
    }
    match unavailable {
        Some(e) if candidates.is_empty() => Err(e),
        down => Err(ResolveError::NotFound {
            query: arg.to_string(),
            candidates,
            unavailable: down.map(|e| e.to_string()).into_iter().collect(),
        }),
    }
}

/// Adds `target` unless the same container (same ID, or same process) is there already.
fn add_once(found: &mut Vec<Target>, target: Target) {
    let same = |t: &Target| t.pid == target.pid || (t.id.is_some() && t.id == target.id);
    if !found.iter().any(same) {
        found.push(target);
    }
}

/// How a query matched a list of containers.
enum Pick<'a, T> {
    /// One, by name or full ID.
    Exact(&'a T),
    /// One, by a unique ID prefix.
    Prefix(&'a T),
    /// Several.
    Many(Vec<&'a T>),
    /// None.
    None,
}

/// A container as a resolver lists it: an ID and the names it answers to.
pub trait Named {
    /// Its full ID.
    fn id(&self) -> &str;
    /// The names it answers to.
    fn names(&self) -> Vec<&str>;
}

/// Matches `query` against `items` the way Docker does: an exact name or full ID first, else
/// a unique prefix of an ID (only for queries that look like one).
fn pick<'a, T: Named>(items: &'a [T], query: &str) -> Pick<'a, T> {
    let exact: Vec<&T> = items
        .iter()
        .filter(|t| t.id() == query || t.names().contains(&query))
        .collect();
    let (hits, by_prefix) = if exact.is_empty() && looks_like_id(query) {
        let prefixed = items.iter().filter(|t| t.id().starts_with(query)).collect();
        (prefixed, true)
    } else {
        (exact, false)
    };
    match hits.as_slice() {
        [] => Pick::None,
        [one] if by_prefix => Pick::Prefix(one),
        [one] => Pick::Exact(one),
        _ => Pick::Many(hits),
    }
}

/// Looks `query` up among `items` (see [`pick`]), for a resolver that lists its containers:
/// the one that matches becomes a [`Lookup::Found`] (by name or full ID) or
/// [`Lookup::Prefix`] through `target` (which finds its process, or says it is not running);
/// none gives every item as a `candidate`, several are [`ResolveError::Ambiguous`].
pub fn lookup_in<T: Named>(
    items: &[T],
    query: &str,
    candidate: impl Fn(&T) -> Candidate,
    target: impl FnOnce(&T) -> Result<Target, ResolveError>,
) -> Result<Lookup, ResolveError> {
    match pick(items, query) {
        Pick::Exact(item) => Ok(Lookup::Found(target(item)?)),
        Pick::Prefix(item) => Ok(Lookup::Prefix(target(item)?)),
        Pick::None => Ok(Lookup::NotFound(items.iter().map(candidate).collect())),
        Pick::Many(many) => Err(ResolveError::Ambiguous {
            query: query.to_string(),
            candidates: many.into_iter().map(candidate).collect(),
        }),
    }
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
        pid: i32,
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
                .filter(|c| {
                    !query.is_empty()
                        && (c.name.as_deref() == Some(query) || c.id.starts_with(query))
                })
                .collect();
            match hits.as_slice() {
                [one] => Ok(Lookup::Found(Target {
                    pid: self.pid,
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

    fn c(runtime: &'static str, name: &str, id: &str) -> Candidate {
        Candidate {
            name: Some(name.into()),
            id: id.into(),
            runtime,
            detail: None,
        }
    }

    fn fake(down: bool) -> Vec<Box<dyn Resolver>> {
        vec![Box::new(Fake {
            name: "docker",
            known: vec![c("docker", "web", "abc123"), c("docker", "db", "abd456")],
            down,
            pid: 42,
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
    fn across_runtimes_one_container_once_two_are_ambiguous() {
        let r: Vec<Box<dyn Resolver>> = vec![
            Box::new(Fake {
                name: "docker",
                known: vec![c("docker", "web", "abc123")],
                down: false,
                pid: 42,
            }),
            // The same container seen by containerd (moby namespace): same ID.
            Box::new(Fake {
                name: "containerd",
                known: vec![c("containerd", "abc123", "abc123")],
                down: false,
                pid: 42,
            }),
            Box::new(Fake {
                name: "podman",
                known: vec![c("podman", "web", "fed999"), c("podman", "api", "abc777")],
                down: false,
                pid: 77,
            }),
        ];
        assert_eq!(resolve("abc123", &r).expect("one").runtime, "docker");
        let err = resolve("web", &r).expect_err("two webs").to_string();
        assert!(
            err.contains("web (docker abc123)") && err.contains("web (podman fed999)"),
            "{err}"
        );
        assert_eq!(
            resolve("podman:web", &r).expect("forced").id.as_deref(),
            Some("fed999")
        );
        // A stopped container elsewhere does not hide a running one; down runtimes are named
        // only when nothing matched.
        let err = resolve("nothing", &r).expect_err("none").to_string();
        assert!(
            err.contains("no container matches") && err.contains("(podman fed999)"),
            "{err}"
        );
    }

    #[test]
    fn a_runtime_that_is_down_is_named_beside_the_others_candidates() {
        let mut r = fake(true);
        r.push(Box::new(Fake {
            name: "podman",
            known: vec![c("podman", "web", "fed999")],
            down: false,
            pid: 77,
        }));
        let err = resolve("nope", &r).expect_err("none").to_string();
        assert!(
            err.contains("no container matches `nope` (docker is not running (down)")
                && err.contains("web (podman fed999)"),
            "{err}"
        );
        // The running runtime still answers.
        assert_eq!(resolve("web", &r).expect("podman's").pid, 77);
    }

    #[test]
    fn names_of_every_runtime() {
        let r = fake(false);
        let names = names(&r);
        assert_eq!(names.get("abc123").map(String::as_str), Some("web"));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn ids_look_like_hex() {
        assert!(looks_like_id("3f2a"));
        assert!(!looks_like_id("web"));
        assert!(!looks_like_id(""));
    }

    fn target(name: Option<&str>, id: Option<&str>) -> Target {
        Target {
            pid: 7,
            runtime: "docker",
            id: id.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn labels_prefer_the_name_then_a_short_id_then_the_pid() {
        let id = "21bc7fa514958aaf1f7c57fdd0b34253eb0075eef878b247f7523f47f4da7db8";
        assert_eq!(target(Some("web"), Some(id)).label(), "web");
        assert_eq!(target(None, Some(id)).label(), "21bc7fa51495");
        assert_eq!(target(None, None).label(), "pid 7");
    }

    #[test]
    fn a_target_is_shown_escaped() {
        assert_eq!(target(Some("web"), None).to_string(), "web (pid 7)");
        assert_eq!(
            target(None, Some("0123456789abcdef")).to_string(),
            "container 0123456789ab (pid 7)"
        );
        assert_eq!(target(None, None).to_string(), "pid 7");
        let hostile = target(Some("x\x1b]0;pwned\x07"), None).to_string();
        assert!(!hostile.bytes().any(|b| b < 0x20), "{hostile:?}");
    }

    #[test]
    fn candidates_show_name_place_and_short_id() {
        let mut cand = c("containerd", "web", "0123456789abcdef");
        assert_eq!(cand.to_string(), "web (containerd 0123456789ab)");
        cand.detail = Some("k8s.io".into());
        assert_eq!(cand.to_string(), "web (containerd k8s.io 0123456789ab)");
        cand.name = None;
        assert_eq!(cand.to_string(), "0123456789ab (containerd k8s.io)");
        let of = Candidate::of(&target(None, None));
        assert_eq!((of.id.as_str(), of.runtime), ("7", "docker"));
    }

    #[test]
    fn long_candidate_lists_are_cut_at_twenty() {
        let many: Vec<Candidate> = (0..25)
            .map(|i| c("docker", &format!("n{i}"), &format!("{i:x}")))
            .collect();
        let text = list(&many);
        assert!(text.ends_with(" and 5 more"), "{text}");
        assert!(text.contains("n19 ") && !text.contains("n20 "), "{text}");
        assert_eq!(list(&[]), "no running containers were found");
    }

    struct Item(&'static str, &'static [&'static str]);

    impl Named for Item {
        fn id(&self) -> &str {
            self.0
        }
        fn names(&self) -> Vec<&str> {
            self.1.to_vec()
        }
    }

    const ITEMS: [Item; 3] = [
        Item("abc123", &["web"]),
        Item("abd456", &["db", "abc"]),
        Item("fff000", &[]),
    ];

    #[test]
    fn an_exact_name_beats_an_id_prefix() {
        // "abc" is db's name and a prefix of web's ID: the name wins.
        assert!(matches!(
            pick(&ITEMS, "abc"),
            Pick::Exact(Item("abd456", _))
        ));
        assert!(matches!(
            pick(&ITEMS, "abc123"),
            Pick::Exact(Item("abc123", _))
        ));
        assert!(matches!(
            pick(&ITEMS, "ff"),
            Pick::Prefix(Item("fff000", _))
        ));
        assert!(matches!(pick(&ITEMS, "ab"), Pick::Many(m) if m.len() == 2));
        // Only hex queries are prefixes: "we" is no prefix of anything.
        assert!(matches!(pick(&ITEMS, "we"), Pick::None));
        assert!(matches!(pick(&ITEMS, ""), Pick::None));
    }

    #[test]
    fn lookups_become_found_prefix_candidates_or_ambiguity() {
        let cand = |i: &Item| c("docker", i.1.first().copied().unwrap_or("-"), i.0);
        let found = |i: &Item| Ok(target(i.1.first().copied(), Some(i.0)));
        assert!(matches!(
            lookup_in(&ITEMS, "web", cand, found),
            Ok(Lookup::Found(t)) if t.id.as_deref() == Some("abc123")
        ));
        assert!(matches!(
            lookup_in(&ITEMS, "fff", cand, found),
            Ok(Lookup::Prefix(_))
        ));
        assert!(matches!(
            lookup_in(&ITEMS, "nope", cand, found),
            Ok(Lookup::NotFound(all)) if all.len() == 3
        ));
        assert!(matches!(
            lookup_in(&ITEMS, "ab", cand, found),
            Err(ResolveError::Ambiguous { candidates, .. }) if candidates.len() == 2
        ));
        // A container found but not running is the target function's answer.
        let stopped = |_: &Item| {
            Err(ResolveError::NotRunning {
                name: "web".into(),
                runtime: "docker",
            })
        };
        let Err(err) = lookup_in(&ITEMS, "web", cand, stopped) else {
            panic!("a stopped container was found");
        };
        assert_eq!(
            err.to_string(),
            "container web is not running: start it first (`docker start web`)"
        );
    }

    #[test]
    fn one_container_seen_twice_is_added_once() {
        let mut found = vec![target(Some("web"), Some("abc"))];
        add_once(
            &mut found,
            Target {
                runtime: "containerd",
                ..target(None, Some("abc"))
            },
        );
        add_once(
            &mut found,
            Target {
                pid: 8,
                ..target(None, Some("abc"))
            },
        );
        add_once(
            &mut found,
            Target {
                pid: 7,
                ..target(None, Some("zzz"))
            },
        );
        assert_eq!(found.len(), 1);
        add_once(
            &mut found,
            Target {
                pid: 9,
                ..target(None, Some("def"))
            },
        );
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn ids_are_at_most_64_hex_digits() {
        assert!(looks_like_id(&"a".repeat(64)));
        assert!(!looks_like_id(&"a".repeat(65)));
        assert!(looks_like_id("ABCDEF0123"));
        assert!(!looks_like_id("abc-123"));
    }
}
