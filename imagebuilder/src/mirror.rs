//! `mirror://NAME/PATH` URLs and where their base URLs come from.
//!
//! Recipes never name a mirror's host: they say `mirror://debian/pool/...` and the
//! base URL for `debian` is looked up at run time, first match wins:
//!
//! 1. `--mirror NAME=URL` on the command line;
//! 2. the environment variable `CARTBUILD_MIRROR_<NAME>` (upper case, `-` as `_`);
//! 3. the user's config file, `$XDG_CONFIG_HOME/cartbuild/config.toml` (or
//!    `~/.config/cartbuild/config.toml`), table `[mirrors]`, `NAME = "URL"`;
//! 4. for `debian` only: the host's own apt sources (`/etc/apt/sources.list` and
//!    `/etc/apt/sources.list.d/*.list` / `*.sources`, one-line and deb822 formats):
//!    the first URI of a Debian archive whose suite is not a security, updates or
//!    backports suite.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why mirror configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// `--mirror` was not `NAME=URL`.
    #[error("bad --mirror {0:?}: expected NAME=URL, e.g. --mirror debian=http://host/debian")]
    BadFlag(String),
    /// The config file exists but cannot be read or parsed.
    #[error("cannot read config file {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The user config file (`config.toml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[mirrors]`: NAME = base URL.
    #[serde(default)]
    pub mirrors: BTreeMap<String, String>,
    /// `[cache]`: the shared build cache (see `crate::remote`).
    #[serde(default)]
    pub cache: SharedCacheConfig,
}

/// `[cache]` of the config file: what `--cache-from`, `--cache-to`, `--cache-trust` and
/// `--sign-key` give when neither the flag nor the environment does.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedCacheConfig {
    /// `from = ["oci://HOST/REPO", …]`.
    #[serde(default)]
    pub from: Vec<String>,
    /// `to = "oci://HOST/REPO"`.
    pub to: Option<String>,
    /// `trust = ["KEY.pub" or base64, …]`.
    #[serde(default)]
    pub trust: Vec<String>,
    /// `sign_key = "PATH"`.
    pub sign_key: Option<PathBuf>,
}

/// Reads the config file at `path` (none: the defaults).
pub fn read_config(path: Option<&Path>) -> Result<Config, MirrorError> {
    match path {
        Some(path) if path.exists() => {
            let text = fs::read_to_string(path).map_err(|e| MirrorError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            toml::from_str::<Config>(&text).map_err(|e| MirrorError::Config {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })
        }
        _ => Ok(Config::default()),
    }
}

/// Where the base URL of a mirror was found (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--mirror`.
    Flag,
    /// `CARTBUILD_MIRROR_<NAME>`.
    Env,
    /// The config file.
    Config(PathBuf),
    /// The host's apt sources.
    Apt(PathBuf),
}

/// Resolves mirror names to base URLs.
#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    flags: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    config: BTreeMap<String, String>,
    config_path: Option<PathBuf>,
    apt_debian: Option<(String, PathBuf)>,
}

impl Mirrors {
    /// Builds the resolver from the command line, the process environment, the
    /// user's config file and the host's apt sources under `/etc/apt`.
    pub fn from_host(flags: &[String]) -> Result<Mirrors, MirrorError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter_map(|(k, v)| {
                k.strip_prefix("CARTBUILD_MIRROR_")
                    .map(|name| (name.to_string(), v))
            })
            .collect();
        Mirrors::new(flags, env, config_path(), Path::new("/etc/apt"))
    }

    /// Builds the resolver from explicit inputs (the testable core of
    /// [`Mirrors::from_host`]). `env` maps the part after `CARTBUILD_MIRROR_` to
    /// its value.
    pub fn new(
        flags: &[String],
        env: BTreeMap<String, String>,
        config_path: Option<PathBuf>,
        apt_dir: &Path,
    ) -> Result<Mirrors, MirrorError> {
        let mut parsed = BTreeMap::new();
        for flag in flags {
            let (name, url) = flag
                .split_once('=')
                .filter(|(n, u)| !n.is_empty() && !u.is_empty())
                .ok_or_else(|| MirrorError::BadFlag(flag.clone()))?;
            parsed.insert(name.to_string(), url.to_string());
        }
        let config = match &config_path {
            Some(path) if path.exists() => {
                let text = fs::read_to_string(path).map_err(|e| MirrorError::Config {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                toml::from_str::<Config>(&text)
                    .map_err(|e| MirrorError::Config {
                        path: path.clone(),
                        message: e.message().to_string(),
                    })?
                    .mirrors
            }
            _ => BTreeMap::new(),
        };
        Ok(Mirrors {
            flags: parsed,
            env,
            config,
            config_path,
            apt_debian: apt_debian_uri(apt_dir),
        })
    }

    /// The base URL for mirror `name`, and where it came from.
    pub fn base(&self, name: &str) -> Option<(String, Origin)> {
        if let Some(u) = self.flags.get(name) {
            return Some((u.clone(), Origin::Flag));
        }
        if let Some(u) = self.env.get(&env_suffix(name)) {
            return Some((u.clone(), Origin::Env));
        }
        if let Some(u) = self.config.get(name) {
            let path = self.config_path.clone().unwrap_or_default();
            return Some((u.clone(), Origin::Config(path)));
        }
        if name == "debian"
            && let Some((u, path)) = &self.apt_debian
        {
            return Some((u.clone(), Origin::Apt(path.clone())));
        }
        None
    }

    /// Resolves `url`: `mirror://NAME/PATH` becomes the mirror's base joined with
    /// PATH; any other URL is returned as is. The error says how to configure the
    /// mirror.
    pub fn resolve(&self, url: &str) -> Result<String, String> {
        let Some(rest) = url.strip_prefix("mirror://") else {
            return Ok(url.to_string());
        };
        let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
        match self.base(name) {
            Some((base, _)) => Ok(format!(
                "{}/{}",
                base.trim_end_matches('/'),
                path.trim_start_matches('/')
            )),
            None => Err(format!(
                "no mirror named {name:?} is configured: pass --mirror {name}=URL or set CARTBUILD_MIRROR_{}",
                env_suffix(name)
            )),
        }
    }
}

fn env_suffix(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// `$XDG_CONFIG_HOME/cartbuild/config.toml`, else `~/.config/cartbuild/config.toml`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("cartbuild").join("config.toml"))
}

/// One apt source entry: its URIs and suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    /// `deb` or `deb-src` (deb822 `Types` may hold both).
    pub types: Vec<String>,
    /// Archive base URIs.
    pub uris: Vec<String>,
    /// Suites (`bookworm`, `bookworm-updates`, ...).
    pub suites: Vec<String>,
}

/// Parses one-line `sources.list` text.
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((kind, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if kind != "deb" && kind != "deb-src" {
            continue;
        }
        let mut rest = rest.trim_start();
        // An option block: deb [arch=amd64 signed-by=...] URI suite components.
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = &rest[end + 1..],
                None => continue,
            }
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() >= 2 {
            out.push(AptSource {
                types: vec![kind.to_string()],
                uris: vec![words[0].to_string()],
                suites: vec![words[1].to_string()],
            });
        }
    }
    out
}

/// Parses deb822 `.sources` text (stanzas separated by blank lines).
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    let flush = |fields: &mut BTreeMap<String, String>, out: &mut Vec<AptSource>| {
        let get = |k: &str| -> Vec<String> {
            fields
                .get(k)
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default()
        };
        let enabled = fields
            .get("enabled")
            .is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        if enabled && !fields.is_empty() {
            out.push(AptSource {
                types: get("types"),
                uris: get("uris"),
                suites: get("suites"),
            });
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut fields, &mut out);
            last = None;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(k) = &last {
                let v = fields.entry(k.clone()).or_default();
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            fields.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
    }
    flush(&mut fields, &mut out);
    out
}

/// Whether `suite` is a Debian release suite (not security, updates, backports,
/// or another vendor's suite).
fn is_debian_release_suite(suite: &str) -> bool {
    const RELEASES: &[&str] = &[
        "stable",
        "testing",
        "unstable",
        "sid",
        "oldstable",
        "oldoldstable",
        "buster",
        "bullseye",
        "bookworm",
        "trixie",
        "forky",
        "duke",
    ];
    let suite = suite.trim_end_matches('/');
    RELEASES.contains(&suite)
}

/// The first base URI of a Debian archive found in `apt_dir`'s sources, with
/// the file it came from.
pub fn apt_debian_uri(apt_dir: &Path) -> Option<(String, PathBuf)> {
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(rd) = fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let sources = if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&text)
        } else {
            parse_one_line(&text)
        };
        for s in sources {
            let deb = s.types.iter().any(|t| t == "deb" || t == "deb-src");
            if deb
                && s.suites.iter().any(|s| is_debian_release_suite(s))
                && let Some(uri) = s
                    .uris
                    .iter()
                    .find(|u| u.starts_with("http://") || u.starts_with("https://"))
            {
                return Some((uri.trim_end_matches('/').to_string(), file));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn deb822_first_debian_uri() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        fs::write(dir.path().join("sources.list.d/debian.sources"), DEB822).unwrap();
        fs::write(
            dir.path().join("sources.list.d/other.sources.disabled"),
            "Types: deb\nURIs: http://elsewhere.invalid/x\nSuites: bookworm\n",
        )
        .unwrap();
        let (uri, file) = apt_debian_uri(dir.path()).unwrap();
        assert_eq!(uri, "http://mirror.invalid/debian");
        assert!(file.ends_with("debian.sources"));
    }

    #[test]
    fn one_line_skips_security_and_vendor_suites() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("sources.list"),
            "# comment\ndeb [signed-by=/k.gpg] http://sec.invalid/debian-security bookworm-security main\n\
             deb https://vendor.invalid/apt cloud-sdk main\n\
             deb [arch=amd64] http://mirror.invalid/debian/ bookworm main contrib\n",
        )
        .unwrap();
        let (uri, _) = apt_debian_uri(dir.path()).unwrap();
        assert_eq!(uri, "http://mirror.invalid/debian");
    }

    #[test]
    fn disabled_deb822_stanza_is_ignored() {
        let parsed = parse_deb822(
            "Types: deb\nURIs: http://a.invalid/debian\nSuites: bookworm\nEnabled: no\n",
        );
        assert!(parsed.is_empty());
    }

    #[test]
    fn precedence_flag_env_config_apt() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("sources.list"),
            "deb http://apt.invalid/debian bookworm main\n",
        )
        .unwrap();
        let cfg = dir.path().join("config.toml");
        fs::write(&cfg, "[mirrors]\ndebian = \"http://cfg.invalid/debian\"\nother = \"http://cfg.invalid/other/\"\n").unwrap();
        let env: BTreeMap<_, _> = [(
            "DEBIAN".to_string(),
            "http://env.invalid/debian".to_string(),
        )]
        .into();

        let m = Mirrors::new(&[], BTreeMap::new(), None, dir.path()).unwrap();
        assert_eq!(
            m.resolve("mirror://debian/pool/x").unwrap(),
            "http://apt.invalid/debian/pool/x"
        );
        let m = Mirrors::new(&[], BTreeMap::new(), Some(cfg.clone()), dir.path()).unwrap();
        assert_eq!(
            m.resolve("mirror://debian/pool/x").unwrap(),
            "http://cfg.invalid/debian/pool/x"
        );
        assert_eq!(
            m.resolve("mirror://other/y").unwrap(),
            "http://cfg.invalid/other/y"
        );
        let m = Mirrors::new(&[], env.clone(), Some(cfg.clone()), dir.path()).unwrap();
        assert_eq!(
            m.resolve("mirror://debian/pool/x").unwrap(),
            "http://env.invalid/debian/pool/x"
        );
        let m = Mirrors::new(
            &["debian=http://flag.invalid/d".into()],
            env,
            Some(cfg),
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            m.resolve("mirror://debian/pool/x").unwrap(),
            "http://flag.invalid/d/pool/x"
        );
        assert_eq!(
            m.resolve("https://up.invalid/a").unwrap(),
            "https://up.invalid/a"
        );
    }

    #[test]
    fn unknown_mirror_says_how_to_configure() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirrors::new(&[], BTreeMap::new(), None, dir.path()).unwrap();
        let e = m.resolve("mirror://my-mirror/a").unwrap_err();
        assert!(
            e.contains("--mirror my-mirror=URL") && e.contains("CARTBUILD_MIRROR_MY_MIRROR"),
            "{e}"
        );
        assert!(Mirrors::new(&["nourl".into()], BTreeMap::new(), None, dir.path()).is_err());
    }
}
