//! The registry HTTP API (OCI distribution spec 1.1) for one repository: blobs and
//! manifests, pushed and pulled, every byte checked against its digest.
//!
//! | step | request | success |
//! |---|---|---|
//! | does a blob exist | `HEAD /v2/<name>/blobs/<digest>` | 200 (404: no) |
//! | push a blob | `POST /v2/<name>/blobs/uploads/`, then `PUT <Location>&digest=<digest>` with the bytes (a monolithic upload) | 202, then 201 |
//! | push a manifest | `PUT /v2/<name>/manifests/<tag>` (`Content-Type: application/vnd.oci.image.manifest.v1+json`) | 201 |
//! | resolve a tag | `HEAD /v2/<name>/manifests/<tag>` → `Docker-Content-Digest` | 200 |
//! | pull a manifest | `GET /v2/<name>/manifests/<tag or digest>` | 200 |
//! | pull a blob | `GET /v2/<name>/blobs/<digest>` (redirects followed) | 200 |
//!
//! Every request is made again once after a `401`, with the credentials or token the
//! challenge asks for (see [`crate::auth`]). Error bodies (`{"errors":[{"code":…}]}`) become
//! one clear error: `NAME_UNKNOWN` a repository that does not exist, `MANIFEST_UNKNOWN` a
//! tag that does not, `DENIED`/`UNAUTHORIZED` a refusal.
//!
//! Everything a registry answers is bounded, in bytes and in time, before it is believed:
//!
//! | answer | bound |
//! |---|---|
//! | a manifest or index | the client's manifest [`Limit`] ([`MAX_MANIFEST`], 4 MiB, unless lowered), checked against `Content-Length` and again while the body streams |
//! | a blob | the size its descriptor declares, which must be within the blob [`Limit`] before any request is made; a `Content-Length` other than that size, or a body that goes past it, stops the download |
//! | error bodies, token answers, tag lists | [`MAX_ERROR_BODY`], [`MAX_SMALL_BODY`] |
//! | any body | [`READ_TIMEOUT`] between two reads, and a deadline for the whole body ([`READ_TIMEOUT`], plus a second for each [`MIN_RATE`] bytes of a blob) |
//! | redirects | [`MAX_REDIRECTS`] hops, never from HTTPS down to plain HTTP |
//! | headers (`WWW-Authenticate`, `Location`, …) | hyper's own limits: at most 100 headers in a buffer of about 400 KiB |
//!
//! Registry text that reaches a message (error bodies, realms, tags, media types, URLs)
//! goes through [`crate::display::untrusted`]: escaped and cut short.
//!
//! The HTTP client is reqwest's blocking client: it runs a Tokio runtime on a thread of its
//! own, which [`Client`]'s drop joins (reqwest's `InnerClientHandle::drop`), so once a
//! `Client` is gone the process has no thread of it left, which `cartinject` relies on before
//! it forks. Host names are resolved by [`crate::dns`].

use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::blocking::{Body, RequestBuilder, Response};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};

use crate::artifact::OCI_MANIFEST;
use crate::auth::{self, AuthError, Challenge, Credentials};
use crate::digest::{Digest, Hasher};
use crate::display::untrusted;
use crate::dns::HostsAndDns;
use crate::reference::{Reference, Registry, Transport};

/// The largest manifest or index accepted (the distribution spec's suggested limit for
/// registries; a crashcart image's manifest is under 4 KiB).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The largest blob a [`Client`] fetches unless told otherwise ([`Client::set_limits`]).
pub const DEFAULT_MAX_BLOB: u64 = 4 << 30;
/// The most bytes of an error body read (only its first error is shown).
pub const MAX_ERROR_BODY: u64 = 64 << 10;
/// The most bytes of a token service's answer or a tag list read.
pub const MAX_SMALL_BODY: u64 = 1 << 20;
/// The most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// What a manifest request accepts: OCI manifests, and the other kinds only so that a
/// reference to a container image is named as such.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json;q=0.5, application/vnd.docker.distribution.manifest.v2+json;q=0.5, application/vnd.docker.distribution.manifest.list.v2+json;q=0.5";

/// Seconds allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Seconds allowed for an answer, between two reads of a body, and for a whole small body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A blob's transfer (either way) may take READ_TIMEOUT plus a second for each 64 KiB.
pub const MIN_RATE: u64 = 64 << 10;

/// The most bytes accepted of one kind of answer, and what the user can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Bytes.
    pub bytes: u64,
    /// How to raise it, or why it cannot be raised; ends the error message.
    pub fix: String,
}

impl Limit {
    /// The manifest limit of a client nobody configured.
    pub fn default_manifest() -> Limit {
        Limit {
            bytes: MAX_MANIFEST,
            fix: "4 MiB is the distribution spec's limit for manifests; a crashcart image's is under 4 KiB, so this is no crashcart image".into(),
        }
    }

    /// The blob limit of a client nobody configured.
    pub fn default_blob() -> Limit {
        Limit {
            bytes: DEFAULT_MAX_BLOB,
            fix: "this is the default limit of crashcart's registry client".into(),
        }
    }
}

/// How large something too large is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// As its descriptor (a manifest) declares: nothing was downloaded.
    Declared(u64),
    /// As the registry's `Content-Length` says: nothing was read.
    ContentLength(u64),
    /// Its body went past the limit and was cut off after this many bytes.
    Streamed(u64),
}

impl fmt::Display for Oversize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Oversize::Declared(n) => write!(f, "is {} as its descriptor declares", bytes(*n)),
            Oversize::ContentLength(n) => {
                write!(f, "is {} by the registry's Content-Length", bytes(*n))
            }
            Oversize::Streamed(n) => write!(f, "went on past {n} bytes"),
        }
    }
}

/// `N bytes`, with the nearest binary unit when it is one (`4294967296 bytes (4 GiB)`).
pub fn bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{n} bytes ({} {unit})", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// Failures talking to a registry. Each message names the registry or the reference and
/// says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// No connection, or it broke.
    #[error("cannot reach the registry {registry}: {reason}{hint}")]
    Unreachable {
        /// `HOST[:PORT]`.
        registry: String,
        /// What the network said.
        reason: String,
        /// What to try.
        hint: &'static str,
    },
    /// The repository, tag, manifest or blob does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The registry refused access.
    #[error(
        "the registry {registry} refused {access} access to {repository} ({detail}): run `docker login {registry}` or set {user} and {password}",
        user = auth::ENV_USERNAME,
        password = auth::ENV_PASSWORD
    )]
    Denied {
        /// `HOST[:PORT]`.
        registry: String,
        /// The repository.
        repository: String,
        /// `pull` or `pull,push`.
        access: &'static str,
        /// What it said.
        detail: String,
    },
    /// Credentials could not be read or a token not had.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Any other unexpected answer.
    #[error("{what}: the registry answered HTTP {status}{detail}")]
    Status {
        /// The step.
        what: String,
        /// The HTTP status.
        status: u16,
        /// What it said, `: …` or empty.
        detail: String,
    },
    /// Bytes that do not hash to their digest.
    #[error(
        "{what} does not match its digest: expected {expected}, got {actual}: the registry's copy is corrupt or was tampered with; nothing of it was kept"
    )]
    DigestMismatch {
        /// What was fetched.
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// More or fewer bytes than the descriptor says.
    #[error(
        "{what} is {actual} bytes where its descriptor says {expected}: the registry's copy is corrupt or was tampered with; nothing of it was kept"
    )]
    SizeMismatch {
        /// What was fetched.
        what: String,
        /// The size it should have.
        expected: u64,
        /// The size it had (`Content-Length`, or what arrived).
        actual: u64,
    },
    /// A body that went on past the size its descriptor declares: cut off there.
    #[error(
        "{what} went on past the {expected} bytes its descriptor declares; the download was stopped and nothing of it kept: the registry's copy is corrupt or was tampered with"
    )]
    Overlong {
        /// What was fetched.
        what: String,
        /// The size it should have.
        expected: u64,
    },
    /// A body that did not arrive in the time allowed.
    #[error(
        "{what} did not arrive within {secs} s (the registry sends too slowly or never stops); nothing of it was kept"
    )]
    TooSlow {
        /// What was fetched.
        what: String,
        /// The time allowed.
        secs: u64,
    },
    /// A manifest or blob over its [`Limit`]. Nothing of it was kept.
    #[error(
        "{what} {size}, over the limit of {limit}; {kept}: {fix}",
        limit = bytes(*limit),
        kept = match size {
            Oversize::Streamed(_) => "the download was stopped and nothing of it kept",
            _ => "nothing was downloaded",
        }
    )]
    TooLarge {
        /// What was (to be) fetched.
        what: String,
        /// How large it is, and who says so.
        size: Oversize,
        /// The limit in bytes.
        limit: u64,
        /// What to do ([`Limit::fix`]).
        fix: String,
    },
    /// The registry answered in a way the protocol does not allow.
    #[error("{what}: {reason}")]
    Protocol {
        /// The step.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A local file being uploaded, or the file a download is written to, failed.
    #[error("{what}: {source}")]
    Local {
        /// The step and the file.
        what: String,
        /// Why.
        source: io::Error,
    },
}

/// What a client may do, and so which token scope it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read.
    Pull,
    /// Read and write.
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// A reader of a file to upload; made again when a request must be repeated.
pub type Source = Box<dyn Read + Send>;

/// A client for one repository of one registry.
pub struct Client {
    http: reqwest::blocking::Client,
    registry: Registry,
    repository: String,
    access: Access,
    credentials: Option<Option<Credentials>>,
    authorization: Option<String>,
    requests: u64,
    manifest_limit: Limit,
    blob_limit: Limit,
}

impl Client {
    /// A client for `reference`'s repository.
    pub fn new(reference: &Reference, access: Access) -> Result<Client, ClientError> {
        Client::with_timeouts(reference, access, CONNECT_TIMEOUT, READ_TIMEOUT)
    }

    /// A client whose requests give up after `connect` to connect and `read` for an
    /// answer (instead of the defaults, 15 s and [`READ_TIMEOUT`]): for callers that would
    /// rather do without the registry than wait for a slow one (cartbuild's shared build
    /// cache).
    pub fn with_timeouts(
        reference: &Reference,
        access: Access,
        connect: Duration,
        read: Duration,
    ) -> Result<Client, ClientError> {
        // reqwest takes the process's default rustls provider; an Err means one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let https = reference.registry.transport() == Transport::Https;
        let http = reqwest::blocking::Client::builder()
            .user_agent(concat!("crashcart/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect)
            .timeout(read)
            // A peer that stops acknowledging what we send (an upload to a dead host).
            .tcp_user_timeout(read)
            .dns_resolver(std::sync::Arc::new(HostsAndDns::new()))
            // A registry may send blobs elsewhere (a CDN), but not in circles, and not from
            // HTTPS down to plain HTTP, where anyone on the path could change them.
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else if https && attempt.url().scheme() != "https" {
                    let to = untrusted(attempt.url().as_str());
                    attempt.error(format!("a redirect from HTTPS to {to} refused"))
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| ClientError::Setup(chain(&e)))?;
        Ok(Client {
            http,
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            access,
            credentials: None,
            authorization: None,
            requests: 0,
            manifest_limit: Limit::default_manifest(),
            blob_limit: Limit::default_blob(),
        })
    }

    /// Sets the most bytes a manifest (or index) and a blob may have; a manifest limit
    /// above [`MAX_MANIFEST`] is lowered to it.
    pub fn set_limits(&mut self, manifest: Limit, blob: Limit) {
        self.manifest_limit = if manifest.bytes > MAX_MANIFEST {
            Limit::default_manifest()
        } else {
            manifest
        };
        self.blob_limit = blob;
    }

    /// How many HTTP requests this client has made (token requests included).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.registry.base_url(), self.repository)
    }

    fn here(&self) -> String {
        format!(
            "{}{}/{}",
            self.registry.scheme.prefix(),
            self.registry.authority(),
            self.repository
        )
    }

    /// Sends the request `build` makes, and once more after answering a 401's challenge.
    fn send(
        &mut self,
        build: &mut dyn FnMut(&reqwest::blocking::Client) -> Result<RequestBuilder, ClientError>,
    ) -> Result<Response, ClientError> {
        let mut authenticated = false;
        loop {
            let mut request = build(&self.http)?;
            if let Some(a) = &self.authorization {
                request = request.header(AUTHORIZATION, a);
            }
            self.requests += 1;
            let response = request.send().map_err(|e| self.unreachable(&e))?;
            if response.status() != StatusCode::UNAUTHORIZED || authenticated {
                return Ok(response);
            }
            let challenges: Vec<Challenge> = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(auth::parse_challenges)
                .collect();
            self.authenticate(&challenges)?;
            authenticated = true;
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        let reason = chain(e);
        if reason.contains("dns error") {
            return ClientError::Unreachable {
                registry: self.registry.authority(),
                reason: format!(
                    "cannot resolve {} (it is neither in /etc/hosts nor known to the name servers of /etc/resolv.conf)",
                    self.registry.host
                ),
                hint: "",
            };
        }
        let refused = reason.contains("refused");
        let hint = if e.is_timeout() {
            ": it did not answer in time"
        } else if refused {
            ": is the registry running, and are the host and port right?"
        } else if self.registry.transport() == Transport::Https && e.is_connect() {
            ": if it speaks plain HTTP, write oci+http://…; if its certificate comes from a private CA, add the CA to the system's trust store"
        } else {
            ""
        };
        ClientError::Unreachable {
            registry: self.registry.authority(),
            reason,
            hint,
        }
    }

    fn denied(&self, detail: String) -> ClientError {
        ClientError::Denied {
            registry: self.registry.authority(),
            repository: self.repository.clone(),
            access: self.access.actions(),
            detail,
        }
    }

    fn credentials(&mut self) -> Result<Option<Credentials>, ClientError> {
        if self.credentials.is_none() {
            self.credentials = Some(auth::credentials(&self.registry.authority())?);
        }
        Ok(self.credentials.clone().flatten())
    }

    /// Answers a 401: a bearer token from the realm, or basic credentials.
    fn authenticate(&mut self, challenges: &[Challenge]) -> Result<(), ClientError> {
        let credentials = self.credentials()?;
        match challenges.first() {
            Some(Challenge::Bearer { realm, service, .. }) => {
                // The realm is the registry's text: only its excerpt reaches a message.
                let shown = untrusted(realm);
                let mut url = reqwest::Url::parse(realm).map_err(|e| ClientError::Protocol {
                    what: format!("the token service of {}", self.registry.authority()),
                    reason: format!("realm \"{shown}\" is not a URL: {e}"),
                })?;
                if url.scheme() != "https"
                    && !(url.scheme() == "http" && self.registry.transport() == Transport::Http)
                {
                    return Err(ClientError::Protocol {
                        what: format!("the token service of {}", self.registry.authority()),
                        reason: format!(
                            "realm {shown} is not HTTPS; credentials are not sent there"
                        ),
                    });
                }
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    query.append_pair(
                        "scope",
                        &format!("repository:{}:{}", self.repository, self.access.actions()),
                    );
                }
                let mut request = self.http.get(url);
                if let Some(c) = &credentials {
                    request = request.basic_auth(&c.username, Some(&c.password));
                }
                self.requests += 1;
                let response = request.send().map_err(|e| self.unreachable(&e))?;
                let status = response.status();
                let body = read_limited(response, MAX_SMALL_BODY).unwrap_or_default();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    return Err(self.denied(format!(
                        "its token service {shown} answered HTTP {}{}",
                        status.as_u16(),
                        if credentials.is_some() {
                            " to the credentials given"
                        } else {
                            " without credentials"
                        }
                    )));
                }
                if !status.is_success() {
                    return Err(ClientError::Status {
                        what: format!("getting a token from {shown}"),
                        status: status.as_u16(),
                        detail: detail_of(&body),
                    });
                }
                let token = auth::token_from_response(&body, &shown)?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
            Some(Challenge::Basic) => {
                let Some(c) = credentials else {
                    return Err(self.denied("it asks for a user name and password".into()));
                };
                let pair = format!("{}:{}", c.username, c.password);
                self.authorization = Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ));
                Ok(())
            }
            None => Err(self.denied(
                "HTTP 401 without a Bearer or Basic challenge crashcart can answer".into(),
            )),
        }
    }

    /// Turns an unsuccessful answer into an error; `missing` says what a 404 means.
    fn fail(&self, response: Response, what: &str, missing: &str) -> ClientError {
        let status = response.status();
        let body = read_limited(response, MAX_ERROR_BODY).unwrap_or_default();
        let codes = error_codes(&body);
        let has = |c: &str| codes.iter().any(|(code, _)| code == c);
        if status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || has("DENIED")
            || has("UNAUTHORIZED")
        {
            return self.denied(format!("HTTP {}{}", status.as_u16(), detail_of(&body)));
        }
        if has("NAME_UNKNOWN") {
            return ClientError::NotFound(format!(
                "repository {} does not exist on the registry {}: push it first (cartbuild push IMAGE {}:TAG)",
                self.repository,
                self.registry.authority(),
                self.here()
            ));
        }
        if status == StatusCode::NOT_FOUND {
            return ClientError::NotFound(missing.to_string());
        }
        ClientError::Status {
            what: what.to_string(),
            status: status.as_u16(),
            detail: detail_of(&body),
        }
    }

    /// Checks that the registry answers the API (`GET /v2/`, after authenticating if it
    /// asks), before any long step.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        let url = format!("{}/v2/", self.registry.base_url());
        let response = self.send(&mut |http| Ok(http.get(&url)))?;
        if response.status().is_success() {
            return Ok(());
        }
        let what = format!(
            "{} does not answer as a registry",
            self.registry.authority()
        );
        Err(self.fail(response, &what, &what))
    }

    /// The size of blob `digest` if the repository has it (`HEAD`).
    pub fn blob_size(&mut self, digest: &Digest) -> Result<Option<u64>, ClientError> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send(&mut |http| Ok(http.head(&url)))?;
        match response.status() {
            s if s.is_success() => Ok(Some(content_length(&response).unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.fail(
                response,
                &format!("checking for blob {digest} in {}", self.here()),
                "",
            )),
        }
    }

    /// Uploads blob `digest` of `size` bytes, read from what `open` returns (called again
    /// if the upload must be repeated after a 401). The registry checks the digest.
    pub fn push_blob(
        &mut self,
        digest: &Digest,
        size: u64,
        open: &mut dyn FnMut() -> io::Result<Source>,
    ) -> Result<(), ClientError> {
        let what = format!("uploading blob {digest} to {}", self.here());
        let start = self.url("blobs/uploads/");
        let response = self.send(&mut |http| Ok(http.post(&start).header(CONTENT_LENGTH, 0)))?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.fail(response, &what, &format!("{}: no such upload", self.here())));
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Protocol {
                what: what.clone(),
                reason: "the registry started an upload without a Location".into(),
            })?;
        // The Location may be relative and may carry a query of its own (a session state).
        let mut url = reqwest::Url::parse(&self.registry.base_url())
            .and_then(|base| base.join(location))
            .map_err(|e| ClientError::Protocol {
                what: what.clone(),
                reason: format!(
                    "upload Location \"{}\" is not a URL: {e}",
                    untrusted(location)
                ),
            })?;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let budget = transfer_budget(size);
        let response = self.send(&mut |http| {
            let source = open().map_err(|source| ClientError::Local {
                what: what.clone(),
                source,
            })?;
            Ok(http
                .put(url.clone())
                .timeout(budget)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(Body::sized(source, size)))
        })?;
        if response.status() != StatusCode::CREATED {
            return Err(self.fail(response, &what, &format!("{what}: the upload vanished")));
        }
        check_header_digest(&response, digest, &what)
    }

    /// Pushes a manifest under `tag`; returns its digest (checked against the one the
    /// registry reports).
    pub fn put_manifest(&mut self, tag: &str, manifest: &[u8]) -> Result<Digest, ClientError> {
        self.put_manifest_as(tag, manifest, OCI_MANIFEST)
    }

    /// Pushes a manifest (or index) of `media_type` under `reference`, a tag or the
    /// manifest's own digest (`sha256:…`, so that no tag names it); returns its digest
    /// (checked against the one the registry reports).
    pub fn put_manifest_as(
        &mut self,
        reference: &str,
        manifest: &[u8],
        media_type: &str,
    ) -> Result<Digest, ClientError> {
        let digest = Digest::of(manifest);
        let separator = if reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        let what = format!(
            "pushing the manifest to {}{separator}{reference}",
            self.here()
        );
        let url = self.url(&format!("manifests/{reference}"));
        let body = manifest.to_vec();
        let response = self.send(&mut |http| {
            Ok(http
                .put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(body.clone()))
        })?;
        if response.status() != StatusCode::CREATED {
            return Err(self.fail(response, &what, &what));
        }
        check_header_digest(&response, &digest, &what)?;
        Ok(digest)
    }

    fn missing_tag(&self, tag: &str) -> String {
        format!(
            "tag {tag} does not exist in {} on the registry {}: check the tag, or push it (cartbuild push IMAGE {}:{tag})",
            self.repository,
            self.registry.authority(),
            self.here()
        )
    }

    /// Why `tag` was not found: the repository does not exist, or these are its tags
    /// (`GET /v2/<name>/tags/list`; some registries answer a missing repository's manifest
    /// with `MANIFEST_UNKNOWN` as they do a missing tag's).
    fn explain_missing_tag(&mut self, tag: &str) -> ClientError {
        let url = self.url("tags/list?n=100");
        let response = match self.send(&mut |http| Ok(http.get(&url))) {
            Ok(r) => r,
            Err(_) => return ClientError::NotFound(self.missing_tag(tag)),
        };
        if !response.status().is_success() {
            return match self.fail(response, "listing tags", "") {
                e @ ClientError::NotFound(_) if !e.to_string().is_empty() => e,
                _ => ClientError::NotFound(self.missing_tag(tag)),
            };
        }
        let body = read_limited(response, MAX_SMALL_BODY).unwrap_or_default();
        let tags: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("tags").cloned())
            .and_then(|t| serde_json::from_value(t).ok())
            .unwrap_or_default();
        if tags.is_empty() {
            return ClientError::NotFound(self.missing_tag(tag));
        }
        let mut listed = tags
            .iter()
            .take(10)
            .map(|t| crate::display::excerpt(t, 64))
            .collect::<Vec<_>>()
            .join(", ");
        if tags.len() > 10 {
            listed.push_str(", …");
        }
        ClientError::NotFound(format!(
            "tag {tag} does not exist in {} on the registry {} (its tags: {listed})",
            self.repository,
            self.registry.authority(),
        ))
    }

    /// The digest `tag` points at now (`HEAD`; a `GET` when the registry does not say).
    pub fn resolve_tag(&mut self, tag: &str) -> Result<Digest, ClientError> {
        let url = self.url(&format!("manifests/{tag}"));
        let response =
            self.send(&mut |http| Ok(http.head(&url).header(ACCEPT, ACCEPT_MANIFESTS)))?;
        if response.status().is_success() {
            let header = response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Digest::parse(v).ok());
            if let Some(d) = header {
                return Ok(d);
            }
        } else if response.status() != StatusCode::NOT_FOUND {
            let what = format!("resolving {}:{tag}", self.here());
            return Err(self.fail(response, &what, &self.missing_tag(tag)));
        }
        // A HEAD has no body to tell a missing repository from a missing tag, and some
        // registries leave the digest out: ask with GET.
        Ok(self.manifest_by_tag(tag)?.1)
    }

    /// The manifest `tag` points at, and its digest (computed from the bytes; a registry
    /// that reports another one is refused).
    pub fn manifest_by_tag(&mut self, tag: &str) -> Result<(Vec<u8>, Digest), ClientError> {
        let what = format!("the manifest of {}:{tag}", self.here());
        let missing = self.missing_tag(tag);
        let (bytes, response_digest) = match self.get_manifest(tag, &what, &missing) {
            Err(ClientError::NotFound(_)) => return Err(self.explain_missing_tag(tag)),
            other => other?,
        };
        let digest = Digest::of(&bytes);
        if let Some(reported) = response_digest
            && reported != digest
        {
            return Err(ClientError::DigestMismatch {
                what,
                expected: reported,
                actual: digest,
            });
        }
        Ok((bytes, digest))
    }

    /// The manifest `digest`, verified.
    pub fn manifest_by_digest(&mut self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        let what = format!("the manifest {}@{digest}", self.here());
        let missing = format!(
            "manifest {digest} does not exist in {} on the registry {}",
            self.repository,
            self.registry.authority()
        );
        let (bytes, _) = self.get_manifest(&digest.to_string(), &what, &missing)?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(ClientError::DigestMismatch {
                what,
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    fn get_manifest(
        &mut self,
        reference: &str,
        what: &str,
        missing: &str,
    ) -> Result<(Vec<u8>, Option<Digest>), ClientError> {
        let url = self.url(&format!("manifests/{reference}"));
        let response =
            self.send(&mut |http| Ok(http.get(&url).header(ACCEPT, ACCEPT_MANIFESTS)))?;
        if !response.status().is_success() {
            return Err(self.fail(response, what, missing));
        }
        let reported = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let limit = self.manifest_limit.clone();
        let too_large = |size| ClientError::TooLarge {
            what: what.to_string(),
            size,
            limit: limit.bytes,
            fix: limit.fix.clone(),
        };
        if let Some(n) = content_length(&response)
            && n > limit.bytes
        {
            return Err(too_large(Oversize::ContentLength(n)));
        }
        // Content-Length is only what the registry says: the body is bounded as it streams.
        let bytes = match read_limited(response, limit.bytes.saturating_add(1)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(ClientError::TooSlow {
                    what: what.to_string(),
                    secs: READ_TIMEOUT.as_secs(),
                });
            }
            Err(e) => return Err(self.read_error(what, e)),
        };
        if len(&bytes) > limit.bytes {
            return Err(too_large(Oversize::Streamed(limit.bytes)));
        }
        Ok((bytes, reported))
    }

    fn read_error(&self, what: &str, e: io::Error) -> ClientError {
        ClientError::Unreachable {
            registry: self.registry.authority(),
            reason: format!("reading {what}: {e}"),
            hint: "",
        }
    }

    /// Streams blob `digest` of `size` bytes into `out`, hashing as it goes, and fails
    /// unless every byte matches: a `size` over the blob [`Limit`] is refused before any
    /// request, and more bytes than `size` stop the download at once, as does a body that
    /// takes longer than [`READ_TIMEOUT`] plus a second for each [`MIN_RATE`] bytes. `what`
    /// names the blob in messages; `progress` gets the bytes done so far. On failure, what
    /// was written to `out` must be thrown away by the caller.
    pub fn fetch_blob(
        &mut self,
        digest: &Digest,
        size: u64,
        what: &str,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), ClientError> {
        if size > self.blob_limit.bytes {
            return Err(ClientError::TooLarge {
                what: what.to_string(),
                size: Oversize::Declared(size),
                limit: self.blob_limit.bytes,
                fix: self.blob_limit.fix.clone(),
            });
        }
        let url = self.url(&format!("blobs/{digest}"));
        let mut response = self.send(&mut |http| Ok(http.get(&url)))?;
        if !response.status().is_success() {
            let missing = format!(
                "{what} (blob {digest}) is missing from {} on the registry {}",
                self.repository,
                self.registry.authority()
            );
            return Err(self.fail(response, &format!("fetching {what}"), &missing));
        }
        if let Some(n) = content_length(&response)
            && n != size
        {
            return Err(ClientError::SizeMismatch {
                what: what.to_string(),
                expected: size,
                actual: n,
            });
        }
        let budget = transfer_budget(size);
        let deadline = Instant::now() + budget;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            if Instant::now() > deadline {
                return Err(ClientError::TooSlow {
                    what: what.to_string(),
                    secs: budget.as_secs(),
                });
            }
            let n = response
                .read(&mut buf)
                .map_err(|e| self.read_error(what, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if hasher.len() > size {
                return Err(ClientError::Overlong {
                    what: what.to_string(),
                    expected: size,
                });
            }
            out.write_all(&buf[..n])
                .map_err(|source| ClientError::Local {
                    what: format!("writing {what}"),
                    source,
                })?;
            progress(hasher.len());
        }
        let (actual, len) = hasher.finish();
        if len != size {
            return Err(ClientError::SizeMismatch {
                what: what.to_string(),
                expected: size,
                actual: len,
            });
        }
        if actual != *digest {
            return Err(ClientError::DigestMismatch {
                what: what.to_string(),
                expected: *digest,
                actual,
            });
        }
        Ok(())
    }
}

fn content_length(response: &Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A registry that reports a digest other than the one of the bytes it was given is
/// refused (it stored something else).
fn check_header_digest(
    response: &Response,
    digest: &Digest,
    what: &str,
) -> Result<(), ClientError> {
    let Some(reported) = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    match Digest::parse(reported) {
        Ok(d) if d == *digest => Ok(()),
        _ => Err(ClientError::Protocol {
            what: what.to_string(),
            reason: format!(
                "the registry stored it as {}, not {digest}",
                untrusted(reported)
            ),
        }),
    }
}

/// The time allowed to move `size` bytes: [`READ_TIMEOUT`], and a second for each
/// [`MIN_RATE`] bytes.
fn transfer_budget(size: u64) -> Duration {
    READ_TIMEOUT + Duration::from_secs(size / MIN_RATE)
}

fn len(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// Up to `limit` bytes of a body, read within [`READ_TIMEOUT`] in all.
fn read_limited(response: Response, limit: u64) -> io::Result<Vec<u8>> {
    read_within(response, limit, Instant::now() + READ_TIMEOUT)
}

/// Up to `limit` bytes of `reader`; `TimedOut` once `deadline` has passed (checked
/// between reads, each of which the HTTP client bounds by [`READ_TIMEOUT`]).
fn read_within(mut reader: impl Read, limit: u64, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while len(&bytes) < limit {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the body did not end in time",
            ));
        }
        let left = usize::try_from(limit - len(&bytes)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    Ok(bytes)
}

/// `(code, message)` of each error in a distribution-spec error body.
fn error_codes(body: &[u8]) -> Vec<(String, String)> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    value
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    let s = |k| {
                        e.get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    (s("code"), s("message"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `: CODE: message` of an error body, or a short excerpt of a body that is not one.
fn detail_of(body: &[u8]) -> String {
    let codes = error_codes(body);
    if let Some((code, message)) = codes.first() {
        return format!(
            ": {}: {}",
            crate::display::excerpt(code, 64),
            untrusted(message)
        );
    }
    let head = &body[..body.len().min(4 * crate::display::EXCERPT)];
    let text = String::from_utf8_lossy(head);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", untrusted(text))
    }
}

/// An error and its sources on one line, each once, without reqwest's and hyper's
/// wrappers ("error sending request for url (…)", "client error (Connect)") that only
/// repeat what the message around it says.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        let noise =
            text.starts_with("error sending request for url") || text.starts_with("client error (");
        if !noise && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    // URLs (of redirects) and the peer's words can be in here.
    let line = if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    crate::display::excerpt(line, 4 * crate::display::EXCERPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_error_bodies() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(
            error_codes(body),
            [(
                "MANIFEST_UNKNOWN".to_string(),
                "manifest unknown".to_string()
            )]
        );
        assert_eq!(detail_of(body), ": MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(
            detail_of(b"<html>\n  bad   gateway</html>"),
            ": <html> bad gateway</html>"
        );
        assert_eq!(detail_of(b""), "");
        assert!(error_codes(b"{}").is_empty());
    }

    #[test]
    fn registry_text_in_errors_is_escaped_and_short() {
        let body = br#"{"errors":[{"code":"X[2J","message":"]0;pwned"}]}"#;
        let d = detail_of(body);
        assert!(!d.contains('\x1b') && !d.contains('\x07'), "{d:?}");
        assert!(d.contains("\\x1b]0;pwned\\x07"), "{d}");
        let long = format!(
            r#"{{"errors":[{{"code":"C","message":"{}"}}]}}"#,
            "m".repeat(1 << 20)
        );
        assert!(detail_of(long.as_bytes()).len() < 300);
        let html = vec![b'x'; 10 << 20];
        assert!(detail_of(&html).len() < 300);
    }

    #[test]
    fn bodies_are_bounded_in_bytes_and_time() {
        let later = Instant::now() + Duration::from_secs(60);
        // An endless body: exactly `limit` bytes are taken.
        assert_eq!(
            read_within(io::repeat(b'a'), 100_000, later).unwrap().len(),
            100_000
        );
        assert_eq!(read_within(&b"short"[..], 100, later).unwrap(), b"short");
        // Past the deadline: no more reading.
        let e = read_within(
            io::repeat(b'a'),
            10,
            Instant::now() - Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(transfer_budget(0), READ_TIMEOUT);
        assert_eq!(
            transfer_budget(4 << 30),
            READ_TIMEOUT + Duration::from_secs(65536)
        );
    }

    #[test]
    fn a_blob_over_the_limit_is_refused_before_any_request() {
        let digest = Digest::of(b"x");
        // Port 1 on loopback: nothing listens, and nothing must be asked.
        let reference = Reference::parse(&format!("oci://127.0.0.1:1/r@{digest}")).unwrap();
        let mut client = Client::new(&reference, Access::Pull).unwrap();
        client.set_limits(
            Limit {
                bytes: 10 << 20,
                fix: "ignored: above MAX_MANIFEST".into(),
            },
            Limit {
                bytes: 1024,
                fix: "raise it with --max".into(),
            },
        );
        assert_eq!(client.manifest_limit, Limit::default_manifest());
        let mut out = Vec::new();
        let e = client
            .fetch_blob(&digest, 1025, "the image x.img", &mut out, &mut |_| {})
            .unwrap_err();
        assert_eq!(client.requests(), 0);
        assert!(out.is_empty());
        assert_eq!(
            e.to_string(),
            "the image x.img is 1025 bytes as its descriptor declares, over the limit of 1024 bytes (1 KiB); nothing was downloaded: raise it with --max"
        );
    }

    #[test]
    fn sizes_read_as_bytes_and_units() {
        assert_eq!(bytes(4 << 30), "4294967296 bytes (4 GiB)");
        assert_eq!(bytes(4 << 20), "4194304 bytes (4 MiB)");
        assert_eq!(bytes(1536), "1536 bytes");
        assert_eq!(bytes(0), "0 bytes");
        let e = ClientError::TooLarge {
            what: "the manifest m".into(),
            size: Oversize::Streamed(MAX_MANIFEST),
            limit: MAX_MANIFEST,
            fix: "no".into(),
        };
        assert_eq!(
            e.to_string(),
            "the manifest m went on past 4194304 bytes, over the limit of 4194304 bytes (4 MiB); the download was stopped and nothing of it kept: no"
        );
    }
}
