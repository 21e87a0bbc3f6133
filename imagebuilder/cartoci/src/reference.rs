//! `oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]`: where an image lives in a registry.
//!
//! The rules, all of them explicit (nothing is guessed, nothing falls back):
//!
//! - **Scheme and transport.** `oci://` speaks HTTPS, except to a loopback host
//!   (`localhost`, `127.0.0.0/8`, `[::1]`), which it speaks plain HTTP to, as Docker does for
//!   registries on the same machine. `oci+http://` forces plain HTTP to any host (a registry
//!   on a trusted network without TLS); `oci+https://` forces HTTPS, also to a loopback host.
//!   A failed HTTPS connection never retries over HTTP.
//! - **Tag or digest.** A reference names a tag (`:1.0.0`), a digest (`@sha256:…`), or both
//!   (`:1.0.0@sha256:…`, where the digest decides and the tag is only a label). There is no
//!   implicit `latest`: a tag that moves is a choice the user writes down, and a reference
//!   with neither is refused with the fix in the message ([`Reference::target`]).
//! - **Names** follow the distribution spec's grammar: the repository is lower-case path
//!   components (`crashcart/net`), `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`; a tag
//!   is `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`; the digest is `sha256:` and 64 lower-case hex
//!   digits. The host is a DNS name, an IPv4 address or a bracketed IPv6 address, with an
//!   optional port.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::digest::{Digest, DigestError};

/// Why a string is not a reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Not `oci://`, `oci+http://` or `oci+https://`.
    #[error(
        "{0:?} is not an OCI reference: write oci://HOST[:PORT]/REPO:TAG or oci://HOST[:PORT]/REPO@sha256:DIGEST"
    )]
    Scheme(String),
    /// Something after the scheme is wrong.
    #[error("OCI reference {reference:?}: {reason}")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// The digest is malformed.
    #[error("OCI reference {reference:?}: {source}")]
    Digest {
        /// The reference as given.
        reference: String,
        /// What is wrong with the digest.
        source: DigestError,
    },
}

/// How a registry is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS, certificates checked against the system's roots.
    Https,
    /// Plain HTTP.
    Http,
}

/// The scheme as written, kept so that references print back as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `oci://`: HTTPS, plain HTTP to a loopback host.
    Oci,
    /// `oci+http://`.
    OciHttp,
    /// `oci+https://`.
    OciHttps,
}

impl Scheme {
    /// `oci://`, `oci+http://` or `oci+https://`.
    pub fn prefix(self) -> &'static str {
        match self {
            Scheme::Oci => "oci://",
            Scheme::OciHttp => "oci+http://",
            Scheme::OciHttps => "oci+https://",
        }
    }
}

/// A registry: host, port and how to speak to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// The host as written: a DNS name, an IPv4 address or `[IPv6]`.
    pub host: String,
    /// The port, when one is written (else 443 or 80 by the transport).
    pub port: Option<u16>,
    /// The scheme as written.
    pub scheme: Scheme,
}

impl Registry {
    /// HTTPS or plain HTTP, by the rules in the module documentation.
    pub fn transport(&self) -> Transport {
        match self.scheme {
            Scheme::OciHttp => Transport::Http,
            Scheme::OciHttps => Transport::Https,
            Scheme::Oci if is_loopback(&self.host) => Transport::Http,
            Scheme::Oci => Transport::Https,
        }
    }

    /// `HOST[:PORT]`, as Docker's `config.json` and token scopes name a registry.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// `http[s]://HOST[:PORT]`, the base of every API URL.
    pub fn base_url(&self) -> String {
        let scheme = match self.transport() {
            Transport::Https => "https",
            Transport::Http => "http",
        };
        format!("{scheme}://{}", self.authority())
    }
}

/// Whether `host` is `localhost`, in `127.0.0.0/8`, or `[::1]`.
pub fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A tag, resolved by the registry (it may move).
    Tag(&'a str),
    /// A manifest by its digest (it never changes).
    Digest(&'a Digest),
}

/// A parsed `oci://…` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Where.
    pub registry: Registry,
    /// The repository, e.g. `crashcart/net`.
    pub repository: String,
    /// The tag, when one is written.
    pub tag: Option<String>,
    /// The digest, when one is written.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Whether `s` is meant as an OCI reference (starts with one of the schemes), so that
    /// callers can tell it from a file path before parsing.
    pub fn looks_like(s: &str) -> bool {
        [Scheme::Oci, Scheme::OciHttp, Scheme::OciHttps]
            .iter()
            .any(|scheme| s.starts_with(scheme.prefix()))
    }

    /// Parses `oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]` (or `oci+http://`,
    /// `oci+https://`).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let invalid = |reason: String| ReferenceError::Invalid {
            reference: s.to_string(),
            reason,
        };
        // Longest prefix first: `oci+http://` does not start with `oci://` anyway.
        let (scheme, rest) = [Scheme::OciHttps, Scheme::OciHttp, Scheme::Oci]
            .into_iter()
            .find_map(|scheme| s.strip_prefix(scheme.prefix()).map(|rest| (scheme, rest)))
            .ok_or_else(|| ReferenceError::Scheme(s.to_string()))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no repository after the host: write HOST/REPO:TAG".into()))?;
        let (host, port) = parse_authority(authority).map_err(invalid)?;

        let (name_tag, digest) = match path.split_once('@') {
            Some((name_tag, digest)) => (
                name_tag,
                Some(
                    Digest::parse(digest).map_err(|source| ReferenceError::Digest {
                        reference: s.to_string(),
                        source,
                    })?,
                ),
            ),
            None => (path, None),
        };
        // A repository has no `:`, so the tag is whatever follows the last one.
        let (repository, tag) = match name_tag.rsplit_once(':') {
            Some((repository, tag)) => (repository, Some(tag)),
            None => (name_tag, None),
        };
        check_repository(repository).map_err(invalid)?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(invalid)?;
        }
        let registry = Registry { host, port, scheme };
        if registry.authority().len() + 1 + repository.len() > 255 {
            return Err(invalid(
                "host and repository are longer than 255 characters".into(),
            ));
        }
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The digest if one is written, else the tag; neither is an error that says what to
    /// write (there is no implicit `latest`).
    pub fn target(&self) -> Result<Target<'_>, ReferenceError> {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Ok(Target::Digest(d)),
            (None, Some(t)) => Ok(Target::Tag(t)),
            (None, None) => Err(ReferenceError::Invalid {
                reference: self.to_string(),
                reason: "name a tag (REPO:1.0.0) or a digest (REPO@sha256:…); there is no implicit `latest`".into(),
            }),
        }
    }

    /// The same repository, pointing at `digest` alone (what `cartbuild push` prints).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}/{}",
            self.registry.scheme.prefix(),
            self.registry.authority(),
            self.repository
        )?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `HOST[:PORT]` or `[IPv6][:PORT]`.
fn parse_authority(authority: &str) -> Result<(String, Option<u16>), String> {
    if authority.is_empty() {
        return Err("no host: write oci://HOST[:PORT]/REPO:TAG".into());
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in host {authority:?}"))?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {p:?} after the IPv6 address"))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
            return Err(format!(
                "{host:?} is not a host name or address (letters, digits, `-` and `.`)"
            ));
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && !p.starts_with('+') => Some(n),
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The distribution spec's repository grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
fn check_repository(repository: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "repository {repository:?} is not lower-case letters and digits in path components joined by `.`, `_`, `__` or `-` (e.g. crashcart/net)"
        )
    };
    if repository.is_empty() {
        return Err("no repository: write HOST/REPO:TAG".into());
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(bad());
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            // A separator: `.`, `_`, `__` or a run of `-`, then an alphanumeric.
            let start = i;
            match bytes[i] {
                b'.' => i += 1,
                b'_' => {
                    i += 1;
                    if bytes.get(i) == Some(&b'_') {
                        i += 1;
                    }
                }
                b'-' => {
                    while bytes.get(i) == Some(&b'-') {
                        i += 1;
                    }
                }
                _ => return Err(bad()),
            }
            if i == start || !bytes.get(i).copied().is_some_and(alnum) {
                return Err(bad());
            }
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not letters, digits, `.`, `_` and `-` (at most 128, not starting with `.` or `-`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_tags_digests_ports_and_prints_back() {
        let r = Reference::parse("oci://registry.example:5000/crashcart/net:1.0.0").unwrap();
        assert_eq!(r.registry.host, "registry.example");
        assert_eq!(r.registry.port, Some(5000));
        assert_eq!(r.registry.transport(), Transport::Https);
        assert_eq!(r.registry.base_url(), "https://registry.example:5000");
        assert_eq!(r.repository, "crashcart/net");
        assert_eq!(r.tag.as_deref(), Some("1.0.0"));
        assert_eq!(r.target().unwrap(), Target::Tag("1.0.0"));
        assert_eq!(
            r.to_string(),
            "oci://registry.example:5000/crashcart/net:1.0.0"
        );

        let s = format!("oci://127.0.0.1:5000/net@{D}");
        let r = Reference::parse(&s).unwrap();
        assert_eq!(r.registry.transport(), Transport::Http);
        assert!(matches!(r.target().unwrap(), Target::Digest(d) if d.to_string() == D));
        assert_eq!(r.to_string(), s);

        // Tag and digest: the digest decides.
        let r = Reference::parse(&format!("oci://registry.example/a/b/c:v1@{D}")).unwrap();
        assert_eq!(r.registry.port, None);
        assert!(matches!(r.target().unwrap(), Target::Digest(_)));
        assert_eq!(r.tag.as_deref(), Some("v1"));

        let r = Reference::parse("oci://[::1]:5000/x:y").unwrap();
        assert_eq!(r.registry.host, "[::1]");
        assert_eq!(r.registry.transport(), Transport::Http);
        assert_eq!(r.registry.base_url(), "http://[::1]:5000");

        let pushed = r.with_digest(crate::Digest::of(b""));
        assert_eq!(pushed.to_string(), format!("oci://[::1]:5000/x@{D}"));
    }

    #[test]
    fn plain_http_only_to_loopback_or_when_asked() {
        let t = |s: &str| Reference::parse(s).unwrap().registry.transport();
        assert_eq!(t("oci://localhost:5000/a:b"), Transport::Http);
        assert_eq!(t("oci://LOCALHOST/a:b"), Transport::Http);
        assert_eq!(t("oci://127.0.0.1/a:b"), Transport::Http);
        assert_eq!(t("oci://127.1.2.3:80/a:b"), Transport::Http);
        assert_eq!(t("oci://registry.example/a:b"), Transport::Https);
        assert_eq!(t("oci://10.0.0.1:5000/a:b"), Transport::Https);
        assert_eq!(t("oci://localhost.example/a:b"), Transport::Https);
        assert_eq!(t("oci+http://registry.example:5000/a:b"), Transport::Http);
        assert_eq!(t("oci+https://127.0.0.1:5000/a:b"), Transport::Https);
        assert_eq!(
            Reference::parse("oci+http://registry.example:5000/a:b")
                .unwrap()
                .to_string(),
            "oci+http://registry.example:5000/a:b"
        );
    }

    #[test]
    fn no_implicit_latest() {
        let r = Reference::parse("oci://registry.example/crashcart/net").unwrap();
        let e = r.target().unwrap_err().to_string();
        assert!(e.contains("name a tag") && e.contains("latest"), "{e}");
    }

    #[test]
    fn refuses_bad_references_with_a_reason() {
        for (s, needle) in [
            ("registry.example/net:1", "not an OCI reference"),
            ("docker://registry.example/net:1", "not an OCI reference"),
            ("oci://registry.example", "no repository"),
            ("oci:///net:1", "no host"),
            ("oci://registry.example/", "no repository"),
            ("oci://registry.example:0/net:1", "port"),
            ("oci://registry.example:99999/net:1", "port"),
            ("oci://registry.example:x/net:1", "port"),
            ("oci://reg_istry/net:1", "not a host name"),
            ("oci://[::1/net:1", "unclosed"),
            ("oci://registry.example/Net:1", "repository"),
            ("oci://registry.example/net-/x:1", "repository"),
            ("oci://registry.example/a//b:1", "repository"),
            ("oci://registry.example/a..b:1", "repository"),
            ("oci://registry.example/a___b:1", "repository"),
            ("oci://registry.example/net:", "tag"),
            ("oci://registry.example/net:.x", "tag"),
            ("oci://registry.example/net:a/b", "tag"),
            ("oci://registry.example/net@sha256:abc", "sha256"),
            ("oci://registry.example/net@md5:abc", "only sha256"),
        ] {
            let e = Reference::parse(s)
                .map(|r| panic!("{s} parsed as {r:?}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{s}: {e}");
        }
        let long = format!("oci://registry.example/net:{}", "a".repeat(129));
        assert!(Reference::parse(&long).is_err());
        // Separators the grammar allows.
        for ok in ["a.b", "a_b", "a__b", "a---b", "a/b.c/d-e_f"] {
            Reference::parse(&format!("oci://registry.example/{ok}:t"))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert!(Reference::looks_like("oci+http://x/y:z"));
        assert!(!Reference::looks_like("./oci://x"));
    }
}
