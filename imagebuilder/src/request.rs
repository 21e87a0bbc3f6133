//! What a build is asked to do: the command line, the environment (`CARTBUILD_*`,
//! `SOURCE_DATE_EPOCH`) and the config file, resolved and validated once into a [`Request`].
//!
//! ripgrep's "low args → high args": [`Settings`] is what the user typed, every field
//! optional and unchecked; [`Request::new`] takes it with an [`Env`] and gives the values the
//! pipeline ([`crate::pipeline`]) runs with, each from the first of: the flag, the
//! environment variable, the default ([`fetch::Options::default`], [`image::DEFAULT_FREE`],
//! the number of CPUs, the cache directory of [`Cache::default_dir`]). A value that does
//! not parse is a [`RequestError`] naming the variable or flag and the fix, never silently
//! replaced by the default. Mirrors come from `--mirror`, `CARTBUILD_MIRROR_<NAME>` and the
//! config file ([`Mirrors`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::cache::{Cache, CacheError};
use crate::fetch;
use crate::image::{self, ImageSize};
use crate::mirror::{self, MirrorError, Mirrors};
use crate::remote::{self, CACHE_FROM_ENV, CACHE_TO_ENV, CACHE_TRUST_ENV, SIGN_KEY_ENV};
use crate::sign::{Password, SigningKey};
use crate::toolchain::Flavor;
use cartimage::arch::Arch;

/// The environment variable of the cache directory (`--cache`).
pub const CACHE_ENV: &str = "CARTBUILD_CACHE";
/// The environment variable of `--arch`.
pub const ARCH_ENV: &str = "CARTBUILD_ARCH";
/// The environment variable of `--connect-timeout`.
pub const CONNECT_TIMEOUT_ENV: &str = "CARTBUILD_CONNECT_TIMEOUT";
/// The environment variable of `--read-timeout`.
pub const READ_TIMEOUT_ENV: &str = "CARTBUILD_READ_TIMEOUT";
/// The environment variable of `--retries`.
pub const RETRIES_ENV: &str = "CARTBUILD_RETRIES";
/// The environment variable of `--retry-delay`.
pub const RETRY_DELAY_ENV: &str = "CARTBUILD_RETRY_DELAY";
/// Reproducible builds' time stamp (<https://reproducible-builds.org/specs/source-date-epoch/>).
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";
/// The prefix of a mirror's environment variable: `CARTBUILD_MIRROR_<NAME>`.
pub const MIRROR_ENV_PREFIX: &str = "CARTBUILD_MIRROR_";

/// Why a request cannot be made: one line naming the variable or flag and the fix.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// An environment variable holds a value that does not parse.
    #[error("{name}={value:?} is not {what}: unset it or set it to {example}")]
    BadEnv {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What it should be.
        what: &'static str,
        /// A good value, e.g. `CARTBUILD_RETRIES=2`.
        example: String,
    },
    /// A flag holds a value out of range.
    #[error("{flag} {value}: not {what}; give e.g. {flag} {example}")]
    BadFlag {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        what: &'static str,
        /// A good value.
        example: &'static str,
    },
    /// The mirrors cannot be set up (a bad `--mirror`, an unreadable config file).
    #[error("failed to set up mirrors")]
    Mirrors(#[source] MirrorError),
    /// The shared build cache settings cannot be used: why, and the fix.
    #[error("{0}")]
    SharedCache(String),
    /// No cache directory can be chosen.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The environment a request is read from (the process's, or one given by a test).
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// The user's config file (`[mirrors]`), when one is read.
    config: Option<PathBuf>,
}

impl Env {
    /// The process's environment (variables whose name or value is not UTF-8 are left out:
    /// none of those cartbuild reads can be).
    pub fn from_process() -> Env {
        Env {
            config: mirror::config_path(),
            ..Env::from_pairs(
                std::env::vars_os()
                    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
            )
        }
    }

    /// An environment of these variables, and no config file.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Env {
        Env {
            vars: pairs.into_iter().collect(),
            config: None,
        }
    }

    /// The variable's value, unless it is unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `CARTBUILD_MIRROR_<NAME>` variables, by `NAME`.
    pub fn mirrors(&self) -> BTreeMap<String, String> {
        self.vars
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(MIRROR_ENV_PREFIX)
                    .map(|name| (name.to_string(), v.clone()))
            })
            .collect()
    }

    /// The variable parsed as `T`, or `None` when unset; a value that does not parse (or
    /// that `valid` refuses) is an error.
    fn parse<T: FromStr + Copy>(
        &self,
        name: &str,
        what: &'static str,
        example: &str,
        valid: impl Fn(T) -> bool,
    ) -> Result<Option<T>, RequestError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        match value.trim().parse::<T>() {
            Ok(v) if valid(v) => Ok(Some(v)),
            _ => Err(RequestError::BadEnv {
                name: name.to_string(),
                value: value.to_string(),
                what,
                example: format!("{name}={example}"),
            }),
        }
    }
}

/// What `cartbuild` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// A bare ext4 filesystem image (`images/<name>-<version>.img`).
    #[default]
    Ext4,
    /// A GPT disk image (`images/<name>-<version>.gpt.img`).
    Gpt,
}

/// The settings as given on a command line: nothing checked, `None` where not given.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The recipe.
    pub recipe: PathBuf,
    /// `--output`.
    pub output: Option<PathBuf>,
    /// `--format`.
    pub format: Format,
    /// `--mirror NAME=URL`, each.
    pub mirrors: Vec<String>,
    /// `--offline`.
    pub offline: bool,
    /// `--verbose`.
    pub verbose: bool,
    /// `--cache`.
    pub cache: Option<PathBuf>,
    /// `--jobs`.
    pub jobs: Option<usize>,
    /// `--free`.
    pub free: Option<u64>,
    /// `--size`.
    pub size: Option<u64>,
    /// `--staged`.
    pub staged: Option<PathBuf>,
    /// `--toolchain`.
    pub toolchain: Flavor,
    /// `--arch`, as given.
    pub arch: Option<String>,
    /// `--no-sandbox`.
    pub no_sandbox: bool,
    /// `--connect-timeout`, seconds.
    pub connect_timeout: Option<f64>,
    /// `--read-timeout`, seconds.
    pub read_timeout: Option<f64>,
    /// `--retries`.
    pub retries: Option<u32>,
    /// `--retry-delay`, seconds.
    pub retry_delay: Option<f64>,
    /// `--cache-from oci://HOST/REPO`, each.
    pub cache_from: Vec<String>,
    /// `--cache-to oci://HOST/REPO`.
    pub cache_to: Option<String>,
    /// `--cache-trust PUBKEY`, each.
    pub cache_trust: Vec<String>,
    /// `--sign-key SECRET`.
    pub sign_key: Option<PathBuf>,
}

/// A validated build request: what [`crate::pipeline::build`] runs.
#[derive(Debug, Clone)]
pub struct Request {
    /// The recipe.
    pub recipe: PathBuf,
    /// Where the image goes; `None`: `images/<name>-<version>[.gpt].img`.
    pub output: Option<PathBuf>,
    /// What to write.
    pub format: Format,
    /// Where `mirror://` names point.
    pub mirrors: Mirrors,
    /// The cache directory.
    pub cache: PathBuf,
    /// Packages built at once, and `$JOBS` of each build (at least 1).
    pub jobs: usize,
    /// The image's size.
    pub size: ImageSize,
    /// Keep the staged tree here (a directory that must not exist yet).
    pub staged: Option<PathBuf>,
    /// Which C toolchain.
    pub toolchain: Flavor,
    /// The machine the image is built for.
    pub arch: Arch,
    /// Build scripts run in the sandbox (else with the builder's rights).
    pub sandbox: bool,
    /// Timeouts, retries, offline.
    pub fetch: fetch::Options,
    /// `SOURCE_DATE_EPOCH`, when set.
    pub source_date_epoch: Option<u64>,
    /// Stream build logs.
    pub verbose: bool,
    /// The shared build cache (`--cache-from`, `--cache-to`).
    pub remote: remote::Settings,
}

/// `secs` as a duration, or why not.
fn duration(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

/// A number of seconds from `flag`, else from the variable `env_name`, else `default`.
fn seconds(
    flag: (&'static str, Option<f64>),
    env: &Env,
    env_name: &str,
    default: Duration,
) -> Result<Duration, RequestError> {
    const WHAT: &str = "a number of seconds (0 or more)";
    if let Some(v) = flag.1 {
        return duration(v).ok_or_else(|| RequestError::BadFlag {
            flag: flag.0,
            value: v.to_string(),
            what: WHAT,
            example: "15",
        });
    }
    let example = default.as_secs_f64().to_string();
    Ok(env
        .parse::<f64>(env_name, WHAT, &example, |v| duration(v).is_some())?
        .and_then(duration)
        .unwrap_or(default))
}

impl Request {
    /// Resolves `settings` with `env` into a request, checking every value once.
    pub fn new(settings: Settings, env: &Env) -> Result<Request, RequestError> {
        let defaults = fetch::Options::default();
        let fetch = fetch::Options {
            connect_timeout: seconds(
                ("--connect-timeout", settings.connect_timeout),
                env,
                CONNECT_TIMEOUT_ENV,
                defaults.connect_timeout,
            )?,
            read_timeout: seconds(
                ("--read-timeout", settings.read_timeout),
                env,
                READ_TIMEOUT_ENV,
                defaults.read_timeout,
            )?,
            retries: match settings.retries {
                Some(n) => n,
                None => env
                    .parse::<u32>(RETRIES_ENV, "a whole number of retries", "2", |_| true)?
                    .unwrap_or(defaults.retries),
            },
            retry_delay: seconds(
                ("--retry-delay", settings.retry_delay),
                env,
                RETRY_DELAY_ENV,
                defaults.retry_delay,
            )?,
            offline: settings.offline,
        };
        let remote = shared_cache(&settings, env, &fetch)?;
        let jobs = match settings.jobs {
            Some(0) => {
                return Err(RequestError::BadFlag {
                    flag: "--jobs",
                    value: "0".into(),
                    what: "a number of jobs (1 or more)",
                    example: "4",
                });
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let cache = match settings
            .cache
            .or_else(|| env.get(CACHE_ENV).map(PathBuf::from))
        {
            Some(dir) => dir,
            None => Cache::default_dir()?,
        };
        let source_date_epoch = env.parse::<u64>(
            SOURCE_DATE_EPOCH,
            "a number of seconds since 1970",
            "1700000000",
            |_| true,
        )?;
        let mirrors = Mirrors::new(
            &settings.mirrors,
            env.mirrors(),
            env.config.clone(),
            Path::new("/etc/apt"),
        )
        .map_err(RequestError::Mirrors)?;
        Ok(Request {
            recipe: settings.recipe,
            output: settings.output,
            format: settings.format,
            mirrors,
            cache,
            jobs,
            size: match (settings.size, settings.free) {
                (Some(n), _) => ImageSize::Exact(n),
                (None, free) => ImageSize::Fit {
                    free: free.unwrap_or(image::DEFAULT_FREE),
                },
            },
            staged: settings.staged,
            toolchain: settings.toolchain,
            arch: arch(settings.arch.as_deref(), env)?,
            sandbox: !settings.no_sandbox,
            fetch,
            source_date_epoch,
            verbose: settings.verbose,
            remote,
        })
    }
}

/// The arch from `--arch`, else `$CARTBUILD_ARCH`, else this machine's.
fn arch(flag: Option<&str>, env: &Env) -> Result<Arch, RequestError> {
    const WHAT: &str = "an arch (x86_64 or aarch64)";
    if let Some(v) = flag {
        return v.parse().map_err(|_| RequestError::BadFlag {
            flag: "--arch",
            value: v.to_string(),
            what: WHAT,
            example: "aarch64",
        });
    }
    let from_env = env.parse::<Arch>(ARCH_ENV, WHAT, "aarch64", |_| true)?;
    match from_env.or_else(Arch::host) {
        Some(arch) => Ok(arch),
        None => Err(RequestError::BadFlag {
            flag: "--arch",
            value: String::new(),
            what: "optional on this machine: its own arch is none cartbuild builds for, so name one",
            example: "x86_64",
        }),
    }
}

/// A list from a flag (repeatable), else the variable (words separated by spaces or
/// commas), else the config file.
fn list(flag: &[String], env: &Env, name: &str, config: &[String]) -> Vec<String> {
    if !flag.is_empty() {
        return flag.to_vec();
    }
    if let Some(v) = env.get(name) {
        return v
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
    }
    config.to_vec()
}

fn reference(given: &str, whence: &str) -> Result<cartoci::Reference, RequestError> {
    let r = cartoci::Reference::parse(given).map_err(|e| {
        RequestError::SharedCache(format!(
            "{whence} {given}: {e}; give e.g. {whence} oci://registry.example:5000/crashcart/cache"
        ))
    })?;
    if r.tag.is_some() || r.digest.is_some() {
        return Err(RequestError::SharedCache(format!(
            "{whence} {given}: a shared cache is a repository, without a tag or digest; give e.g. oci://{}/{}",
            r.registry.authority(),
            r.repository
        )));
    }
    Ok(r)
}

/// The shared build cache settings: flags, else `CARTBUILD_CACHE_*`, else `[cache]`.
fn shared_cache(
    settings: &Settings,
    env: &Env,
    fetch: &fetch::Options,
) -> Result<remote::Settings, RequestError> {
    let config = mirror::read_config(env.config.as_deref())
        .map_err(RequestError::Mirrors)?
        .cache;
    let from = list(&settings.cache_from, env, CACHE_FROM_ENV, &config.from)
        .iter()
        .map(|s| reference(s, "--cache-from"))
        .collect::<Result<Vec<_>, _>>()?;
    let to = settings
        .cache_to
        .clone()
        .or_else(|| env.get(CACHE_TO_ENV).map(str::to_string))
        .or(config.to)
        .map(|s| reference(&s, "--cache-to"))
        .transpose()?;
    let trust = list(&settings.cache_trust, env, CACHE_TRUST_ENV, &config.trust)
        .iter()
        .map(|k| {
            cartimage::signature::VerifyKey::parse(k).map_err(|e| {
                RequestError::SharedCache(format!(
                    "--cache-trust {k}: {e}; give the public key file `cartbuild keygen` wrote, or its base64"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !from.is_empty() && trust.is_empty() {
        return Err(RequestError::SharedCache(format!(
            "--cache-from needs a key to trust: entries are used only when signed by a --cache-trust PUBKEY (or {CACHE_TRUST_ENV}, or `trust` in [cache] of the config file)"
        )));
    }
    let sign_path = settings
        .sign_key
        .clone()
        .or_else(|| env.get(SIGN_KEY_ENV).map(PathBuf::from))
        .or(config.sign_key);
    let sign_key = match (&to, sign_path) {
        (Some(_), None) => {
            return Err(RequestError::SharedCache(format!(
                "--cache-to needs a key to sign entries with: give --sign-key SECRET (or {SIGN_KEY_ENV}, or `sign_key` in [cache] of the config file)"
            )));
        }
        (Some(_), Some(path)) => Some(std::sync::Arc::new(
            SigningKey::load(&path, Password::from_env()).map_err(|e| {
                RequestError::SharedCache(format!("--sign-key {}: {e}", path.display()))
            })?,
        )),
        (None, _) => None,
    };
    Ok(remote::Settings {
        from,
        to,
        trust,
        sign_key,
        connect_timeout: fetch.connect_timeout,
        read_timeout: fetch.read_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("CARTBUILD_CACHE".into(), "/nonexistent/cache".into())]),
        )
    }

    fn settings() -> Settings {
        Settings {
            recipe: "r.toml".into(),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_come_from_one_place() {
        let r = Request::new(settings(), &env(&[])).unwrap();
        let d = fetch::Options::default();
        assert_eq!(r.fetch.connect_timeout, d.connect_timeout);
        assert_eq!(r.fetch.read_timeout, d.read_timeout);
        assert_eq!(r.fetch.retries, d.retries);
        assert_eq!(r.fetch.retry_delay, d.retry_delay);
        assert_eq!(r.cache, PathBuf::from("/nonexistent/cache"));
        assert_eq!(
            r.size,
            ImageSize::Fit {
                free: image::DEFAULT_FREE
            }
        );
        assert!(r.sandbox && r.jobs >= 1 && r.source_date_epoch.is_none());
    }

    #[test]
    fn the_flag_wins_over_the_environment_which_wins_over_the_default() {
        let e = env(&[
            ("CARTBUILD_RETRIES", "5"),
            ("CARTBUILD_READ_TIMEOUT", "7.5"),
            ("SOURCE_DATE_EPOCH", "1700000000"),
        ]);
        let r = Request::new(settings(), &e).unwrap();
        assert_eq!(r.fetch.retries, 5);
        assert_eq!(r.fetch.read_timeout, Duration::from_millis(7500));
        assert_eq!(r.source_date_epoch, Some(1_700_000_000));
        let r = Request::new(
            Settings {
                retries: Some(1),
                cache: Some("/c".into()),
                ..settings()
            },
            &e,
        )
        .unwrap();
        assert_eq!(r.fetch.retries, 1);
        assert_eq!(r.cache, PathBuf::from("/c"));
    }

    #[test]
    fn the_arch_comes_from_the_flag_the_environment_or_this_machine() {
        let host = Arch::host().unwrap();
        assert_eq!(Request::new(settings(), &env(&[])).unwrap().arch, host);
        let e = env(&[(ARCH_ENV, "arm64")]);
        assert_eq!(Request::new(settings(), &e).unwrap().arch, Arch::Aarch64);
        let flag = |v: &str| Settings {
            arch: Some(v.into()),
            ..settings()
        };
        assert_eq!(Request::new(flag("x86_64"), &e).unwrap().arch, Arch::X86_64);
        assert_eq!(
            Request::new(flag("aarch64"), &env(&[])).unwrap().arch,
            Arch::Aarch64
        );
        let line = Request::new(flag("sparc"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            line,
            "--arch sparc: not an arch (x86_64 or aarch64); give e.g. --arch aarch64"
        );
        let line = Request::new(settings(), &env(&[(ARCH_ENV, "arm")]))
            .unwrap_err()
            .to_string();
        assert!(
            line.starts_with("CARTBUILD_ARCH=\"arm\" is not an arch"),
            "{line}"
        );
    }

    #[test]
    fn a_bad_variable_is_an_error_naming_it_and_the_fix() {
        for (name, value) in [
            ("CARTBUILD_RETRIES", "many"),
            ("CARTBUILD_CONNECT_TIMEOUT", "-1"),
            ("CARTBUILD_READ_TIMEOUT", "soon"),
            ("CARTBUILD_RETRY_DELAY", "inf"),
            ("SOURCE_DATE_EPOCH", "yesterday"),
        ] {
            let e = Request::new(settings(), &env(&[(name, value)])).unwrap_err();
            let line = e.to_string();
            assert!(
                line.starts_with(&format!("{name}={value:?} is not "))
                    && line.contains(&format!("unset it or set it to {name}=")),
                "{line}"
            );
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn bad_flags_are_errors() {
        let e = Request::new(
            Settings {
                retry_delay: Some(-0.5),
                ..settings()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--retry-delay -0.5: not a number of seconds"),
            "{e}"
        );
        let e = Request::new(
            Settings {
                jobs: Some(0),
                ..settings()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--jobs 0: not"), "{e}");
        let e = Request::new(
            Settings {
                mirrors: vec!["no-equals-sign".into()],
                ..settings()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(matches!(e, RequestError::Mirrors(_)), "{e:?}");
    }

    #[test]
    fn the_shared_cache_comes_from_flags_else_the_environment_else_the_config_file() {
        let d = tempfile::tempdir().unwrap();
        let public = d.path().join("k.pub");
        let secret = d.path().join("k.key");
        crate::sign::keygen(&public, &secret, Password::None, false).unwrap();
        let config = d.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[cache]\nfrom = [\"oci://127.0.0.1:5000/cfg\"]\ntrust = [{:?}]\nto = \"oci://127.0.0.1:5000/cfg-to\"\nsign_key = {:?}\n",
                public.display().to_string(),
                secret.display().to_string()
            ),
        )
        .unwrap();
        let mut e = env(&[]);
        e.config = Some(config);
        let r = Request::new(settings(), &e).unwrap();
        assert_eq!(r.remote.from.len(), 1);
        assert_eq!(r.remote.from[0].repository, "cfg");
        assert_eq!(r.remote.to.as_ref().unwrap().repository, "cfg-to");
        assert!(r.remote.sign_key.is_some() && r.remote.trust.len() == 1);
        e.vars.insert(
            CACHE_FROM_ENV.into(),
            "oci://127.0.0.1:5000/a, oci://127.0.0.1:5000/b".into(),
        );
        let r = Request::new(settings(), &e).unwrap();
        let repos: Vec<&str> = r
            .remote
            .from
            .iter()
            .map(|f| f.repository.as_str())
            .collect();
        assert_eq!(repos, ["a", "b"]);
        let r = Request::new(
            Settings {
                cache_from: vec!["oci://127.0.0.1:5000/flag".into()],
                ..settings()
            },
            &e,
        )
        .unwrap();
        assert_eq!(r.remote.from[0].repository, "flag");
        assert_eq!(r.remote.read_timeout, r.fetch.read_timeout);
    }

    #[test]
    fn a_shared_cache_without_keys_or_with_a_tag_is_refused() {
        let e = Request::new(
            Settings {
                cache_from: vec!["oci://127.0.0.1:5000/c".into()],
                ..settings()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--cache-from needs a key to trust"),
            "{e}"
        );
        let e = Request::new(
            settings(),
            &env(&[(CACHE_TO_ENV, "oci://127.0.0.1:5000/c")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("--cache-to needs a key to sign"),
            "{e}"
        );
        let e = Request::new(
            Settings {
                cache_to: Some("oci://127.0.0.1:5000/c:latest".into()),
                ..settings()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("without a tag or digest"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
