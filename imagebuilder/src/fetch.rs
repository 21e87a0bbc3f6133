//! Fetching sources into the content-addressed cache, verified while streaming.
//!
//! For each URL of a source, in order: up to `1 + retries` attempts with
//! exponential backoff for transient failures (timeouts, resets, truncated bodies,
//! HTTP 5xx/408/429); permanent ones (HTTP 4xx, an unknown host, a hash mismatch)
//! move straight to the next URL. The body streams into a temporary file under the
//! cache's `tmp/` while its sha256 is computed; only a file whose hash matches the
//! pin is renamed into `sources/sha256/<hex>`, so nothing unverified is ever cached
//! and nothing cached is fetched again. `http`, `https` (rustls) and `file` URLs are
//! supported; `mirror://` was resolved by the plan.
//!
//! A cached source is hashed again each time it is used: the cache is a
//! directory anything running as the builder could write to (a build script
//! once planted its own tarball under another recipe's sha256), and hashing a
//! tarball costs little next to building it. One that does not match is
//! removed with a warning and fetched again (with `--offline`, refused). The
//! builder checks it once more while unpacking it ([`crate::unpack`]) and a
//! `kind = "file"` download after copying it ([`verify_copy`]).

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::plan::Source;
use crate::progress::Reporter;

/// Why a source could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// `--offline` and the source is not cached.
    #[error(
        "package {package}: source {sha256} is not in the cache {cache} and --offline was given; run once without --offline"
    )]
    Offline {
        /// The package.
        package: String,
        /// The pinned hash.
        sha256: String,
        /// The cache directory.
        cache: PathBuf,
    },
    /// Every URL failed; each is named with its reason.
    #[error("package {package}: no URL gave the pinned file: {}", failures.iter().map(|(u, r)| format!("{u} ({r})")).collect::<Vec<_>>().join("; "))]
    AllFailed {
        /// The package.
        package: String,
        /// Each URL with why it failed.
        failures: Vec<(String, String)>,
    },
    /// A cached source no longer matches its sha256 and cannot be fetched again.
    #[error(
        "package {package}: {path} is not the pinned file (sha256 {actual}, pinned {expected}){}",
        if *offline { "; the cached copy was removed: run once without --offline to fetch it again" } else { "; it changed after it was verified: build again" }
    )]
    Changed {
        /// The package.
        package: String,
        /// The file.
        path: PathBuf,
        /// The pinned sha256.
        expected: String,
        /// What the file hashes to.
        actual: String,
        /// Whether `--offline` kept it from being fetched again.
        offline: bool,
    },
    /// The cache could not be written.
    #[error("package {package}: cannot write to the cache at {path}: {source}")]
    Cache {
        /// The package.
        package: String,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// How patient the fetcher is.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed between two reads (and for the response headers).
    pub read_timeout: Duration,
    /// Further attempts per URL after a transient failure.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_delay: Duration,
    /// Use only the cache.
    pub offline: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            retries: 2,
            retry_delay: Duration::from_millis(500),
            offline: false,
        }
    }
}

/// Fetches sources into a [`Cache`].
pub struct Fetcher {
    client: reqwest::blocking::Client,
    cache: Cache,
    opts: Options,
    reporter: Reporter,
}

/// One failed attempt.
struct Failure {
    reason: String,
    transient: bool,
}

impl Failure {
    fn permanent(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            transient: false,
        }
    }
    fn transient(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            transient: true,
        }
    }
}

impl Fetcher {
    /// A fetcher writing into `cache`.
    pub fn new(cache: Cache, opts: Options, reporter: Reporter) -> Result<Fetcher, FetchError> {
        // reqwest takes the process's default rustls provider; an Err means one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(opts.connect_timeout)
            // The blocking client applies this to the response headers and to each
            // read of the body: a read timeout, not a limit on the whole transfer.
            .timeout(opts.read_timeout)
            .user_agent(concat!("cartbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(FetchError::Client)?;
        Ok(Fetcher {
            client,
            cache,
            opts,
            reporter,
        })
    }

    /// Whether the source is already in the cache.
    pub fn cached(&self, source: &Source) -> Option<PathBuf> {
        let path = self.cache.source(&source.sha256);
        path.is_file().then_some(path)
    }

    /// Returns the cached, verified file for `source`, fetching it if needed. A
    /// cached file is hashed first: one that is not the pinned file is removed
    /// with a warning and fetched again.
    pub fn fetch(&self, package: &str, source: &Source) -> Result<PathBuf, FetchError> {
        if let Some(path) = self.cached(source) {
            let cache_err = |source| FetchError::Cache {
                package: package.to_string(),
                path: path.clone(),
                source,
            };
            let actual = sha256_file(&path).map_err(cache_err)?;
            if actual == source.sha256 {
                return Ok(path);
            }
            std::fs::remove_file(&path).map_err(cache_err)?;
            if self.opts.offline {
                return Err(FetchError::Changed {
                    package: package.to_string(),
                    path,
                    expected: source.sha256.clone(),
                    actual,
                    offline: true,
                });
            }
            self.reporter.line(&format!(
                "cartbuild: warning: package {package}: the cached source {} is not the pinned file (sha256 {actual}, pinned {}): removed it; fetching it again",
                path.display(),
                source.sha256
            ));
        }
        if self.opts.offline {
            return Err(FetchError::Offline {
                package: package.to_string(),
                sha256: source.sha256.clone(),
                cache: self.cache.root().to_path_buf(),
            });
        }
        let mut failures = Vec::new();
        for url in &source.urls {
            let resolved = match &url.resolved {
                Ok(u) => u,
                Err(reason) => {
                    failures.push((url.written.clone(), reason.clone()));
                    continue;
                }
            };
            let mut attempt = 0;
            loop {
                match self.attempt(package, resolved, &source.sha256) {
                    Ok(path) => return Ok(path),
                    Err(Err(e)) => return Err(e),
                    Err(Ok(f)) => {
                        if f.transient && attempt < self.opts.retries {
                            let delay = self.opts.retry_delay * 2u32.pow(attempt);
                            self.reporter.line(&format!(
                                "[{package}] {resolved}: {}; retrying in {:.1} s",
                                f.reason,
                                delay.as_secs_f64()
                            ));
                            std::thread::sleep(delay);
                            attempt += 1;
                            continue;
                        }
                        self.reporter
                            .line(&format!("[{package}] {resolved}: {}", f.reason));
                        failures.push((resolved.clone(), f.reason));
                        break;
                    }
                }
            }
        }
        Err(FetchError::AllFailed {
            package: package.to_string(),
            failures,
        })
    }

    /// One attempt at one URL. The outer error is a failure of this URL; the
    /// inner one a failure of the cache, which no other URL can fix.
    fn attempt(
        &self,
        package: &str,
        url: &str,
        sha256: &str,
    ) -> Result<PathBuf, Result<Failure, FetchError>> {
        let cache_err = |path: PathBuf| {
            let package = package.to_string();
            move |source| {
                Err(FetchError::Cache {
                    package,
                    path,
                    source,
                })
            }
        };
        let mut tmp = tempfile::NamedTempFile::new_in(self.cache.tmp())
            .map_err(cache_err(self.cache.tmp()))?;
        let (mut body, total): (Box<dyn Read>, Option<u64>) = if url.starts_with("file://") {
            let path = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| Ok(Failure::permanent("not a valid file:// URL")))?;
            let file = File::open(&path).map_err(|e| {
                Ok(Failure::permanent(format!(
                    "cannot open {}: {e}",
                    path.display()
                )))
            })?;
            let len = file.metadata().ok().map(|m| m.len());
            (Box::new(file), len)
        } else {
            let resp = self
                .client
                .get(url)
                .send()
                .map_err(|e| Ok(self.classify(&e)))?;
            let status = resp.status();
            if !status.is_success() {
                let code = status.as_u16();
                let reason = format!("HTTP {status}");
                return Err(Ok(
                    if status.is_server_error() || code == 408 || code == 429 {
                        Failure::transient(reason)
                    } else {
                        Failure::permanent(reason)
                    },
                ));
            }
            let len = resp.content_length();
            (Box::new(resp), len)
        };

        let mut progress = self.reporter.download(package, url, total);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got: u64 = 0;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Ok(Failure::transient(self.read_failure(&e, got, total))));
                }
            };
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(cache_err(tmp.path().to_path_buf()))?;
            got += n as u64;
            progress.inc(n as u64);
        }
        if let Some(total) = total
            && got != total
        {
            return Err(Ok(Failure::transient(format!(
                "truncated body: got {got} of {total} bytes"
            ))));
        }
        let actual = hex::encode(hasher.finalize());
        if actual != sha256 {
            // The temporary file is removed when `tmp` drops: nothing is kept.
            return Err(Ok(Failure::permanent(format!(
                "sha256 mismatch: expected {sha256}, got {actual}"
            ))));
        }
        tmp.as_file()
            .sync_all()
            .map_err(cache_err(tmp.path().to_path_buf()))?;
        let dest = self.cache.source(sha256);
        tmp.persist(&dest)
            .map_err(|e| cache_err(dest.clone())(e.error))?;
        progress.finish();
        Ok(dest)
    }

    fn classify(&self, e: &reqwest::Error) -> Failure {
        let root = root_cause(e);
        if e.is_timeout() {
            return Failure::transient(format!(
                "timed out (connect timeout {:.1} s, read timeout {:.1} s)",
                self.opts.connect_timeout.as_secs_f64(),
                self.opts.read_timeout.as_secs_f64()
            ));
        }
        if e.is_redirect() {
            return Failure::permanent(format!("bad redirect: {root}"));
        }
        if chain_mentions(e, "dns error") {
            return Failure::permanent(format!("cannot resolve the host: {root}"));
        }
        if e.is_connect() {
            return Failure::transient(format!("cannot connect: {root}"));
        }
        Failure::transient(format!("request failed: {root}"))
    }

    fn read_failure(&self, e: &std::io::Error, got: u64, total: Option<u64>) -> String {
        let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
        if e.kind() == std::io::ErrorKind::TimedOut || chain_mentions(e, "timed out") {
            format!(
                "read timed out after {:.1} s with {got}{of} bytes received",
                self.opts.read_timeout.as_secs_f64()
            )
        } else {
            format!("connection broke after {got}{of} bytes: {}", root_cause(e))
        }
    }
}

/// The hex sha256 of a file's bytes.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    Ok(cartimage::manifest::sha256_reader(File::open(path)?)?.0)
}

/// Checks that `copy`, a package's downloaded file copied out of the cache, is
/// the pinned file (the copy is what goes on; the cache entry may change after).
pub fn verify_copy(pkg: &crate::plan::Package, copy: &std::path::Path) -> Result<(), FetchError> {
    let Some(source) = &pkg.source else {
        return Ok(());
    };
    let actual = sha256_file(copy).map_err(|source| FetchError::Cache {
        package: pkg.name.clone(),
        path: copy.to_path_buf(),
        source,
    })?;
    if actual != source.sha256 {
        return Err(FetchError::Changed {
            package: pkg.name.clone(),
            path: copy.to_path_buf(),
            expected: source.sha256.clone(),
            actual,
            offline: false,
        });
    }
    Ok(())
}

/// The innermost error's message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Whether any error in the chain says `needle`.
fn chain_mentions(e: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        if c.to_string().contains(needle) {
            return true;
        }
        cur = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_copy_of_a_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let sha = hex::encode(Sha256::digest(b"pinned"));
        let recipe = d.path().join("r.toml");
        std::fs::write(
            &recipe,
            format!(
                "[image]\nname = \"t\"\nversion = \"1\"\n[[package]]\nname = \"f\"\nversion = \"1\"\nkind = \"file\"\nurls = [\"http://127.0.0.1:1/f\"]\nsha256 = \"{sha}\"\n"
            ),
        )
        .unwrap();
        let r = crate::recipe::Recipe::load(&recipe).unwrap();
        let plan = crate::plan::Plan::resolve(&r, &crate::plan::Context::default()).unwrap();
        let pkg = &plan.packages[0];
        let copy = d.path().join("copy");
        std::fs::write(&copy, b"pinned").unwrap();
        verify_copy(pkg, &copy).unwrap();
        std::fs::write(&copy, b"planted").unwrap();
        let e = verify_copy(pkg, &copy).unwrap_err().to_string();
        assert!(e.contains("is not the pinned file"), "{e}");
        assert!(e.contains(&format!("pinned {sha}")), "{e}");
    }
}
