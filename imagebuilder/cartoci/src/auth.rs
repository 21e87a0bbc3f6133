//! Registry authentication: the challenge a registry answers 401 with, the credentials to
//! answer it, and the bearer token flow.
//!
//! The flow (distribution spec, "token authentication"): a request without credentials
//! gets `401` with `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`; the client
//! gets a token from `realm?service=…&scope=…` (with HTTP Basic credentials when it has
//! some, anonymously otherwise) and repeats the request with `Authorization: Bearer …`. A
//! `Basic realm="…"` challenge is answered with the credentials themselves. Nothing is sent
//! before a registry asks, and credentials never go over plain HTTP to a host other than a
//! plain-HTTP registry itself.
//!
//! Credentials come from, in order: `CRASHCART_REGISTRY_USERNAME` and
//! `CRASHCART_REGISTRY_PASSWORD`; then the `auths` of Docker's `config.json`
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: what `docker login` writes)
//! for the registry's `HOST[:PORT]`, either `auth` (base64 of `user:password`) or
//! `username` and `password`. Credential helpers (`credsStore`, `credHelpers`) and
//! identity tokens are not run or used: the error for a registry that refuses says to set
//! the two variables instead.

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// Environment variable: the user name for the registry.
pub const ENV_USERNAME: &str = "CRASHCART_REGISTRY_USERNAME";
/// Environment variable: the password or token for the registry.
pub const ENV_PASSWORD: &str = "CRASHCART_REGISTRY_PASSWORD";

/// Why credentials or a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Only one of the two variables is set.
    #[error("{set} is set but {unset} is not: set both, or neither")]
    HalfSet {
        /// The one set.
        set: &'static str,
        /// The one missing.
        unset: &'static str,
    },
    /// Docker's config file exists but cannot be read or parsed.
    #[error("cannot read registry credentials from {path}: {reason}")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The token endpoint's answer has no token.
    #[error("the registry's token service {realm} answered without a token: {reason}")]
    Token {
        /// The realm URL.
        realm: String,
        /// What was wrong.
        reason: String,
    },
}

/// A user name and password (or access token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The credentials for `authority` (`HOST[:PORT]`), from the environment or Docker's
/// config file, if any.
pub fn credentials(authority: &str) -> Result<Option<Credentials>, AuthError> {
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var(ENV_USERNAME), var(ENV_PASSWORD)) {
        (Some(username), Some(password)) => {
            return Ok(Some(Credentials { username, password }));
        }
        (Some(_), None) => {
            return Err(AuthError::HalfSet {
                set: ENV_USERNAME,
                unset: ENV_PASSWORD,
            });
        }
        (None, Some(_)) => {
            return Err(AuthError::HalfSet {
                set: ENV_PASSWORD,
                unset: ENV_USERNAME,
            });
        }
        (None, None) => {}
    }
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => from_docker_config(&text, &path, authority),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuthError::DockerConfig {
            path,
            reason: e.to_string(),
        }),
    }
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// The credentials for `authority` in the text of a Docker `config.json` (read from
/// `path`, named in errors). Keys may be written as `HOST[:PORT]` or as a URL
/// (`https://HOST[:PORT]/v1/`); hosts compare without regard to case.
pub fn from_docker_config(
    text: &str,
    path: &Path,
    authority: &str,
) -> Result<Option<Credentials>, AuthError> {
    let bad = |reason: String| AuthError::DockerConfig {
        path: path.to_path_buf(),
        reason,
    };
    let config: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let Some(entry) = auths
        .iter()
        .find(|(key, _)| normalise_key(key).eq_ignore_ascii_case(authority))
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    let field = |name| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if let Some(auth) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("`auth` of {authority} is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("`auth` of {authority} is not UTF-8")))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("`auth` of {authority} is not user:password")))?;
        return Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (field("username"), field("password")) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })),
        _ => Ok(None),
    }
}

/// `https://host:5000/v1/` → `host:5000`.
fn normalise_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`: send the credentials.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`: get a token from the realm.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// `service`, passed on to it.
        service: Option<String>,
        /// `scope`, passed on to it.
        scope: Option<String>,
    },
}

/// The challenges of a `WWW-Authenticate` header that crashcart can answer (RFC 7235:
/// `scheme param=value, param="quoted", …`, several challenges separated by commas),
/// Bearer first. Unknown schemes and malformed parts are skipped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    for (scheme, params) in split_challenges(header) {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            if let Some(realm) = get("realm") {
                out.push(Challenge::Bearer {
                    realm,
                    service: get("service"),
                    scope: get("scope"),
                });
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            out.push(Challenge::Basic);
        }
    }
    out.sort_by_key(|c| matches!(c, Challenge::Basic));
    out
}

type Params = Vec<(String, String)>;

/// Splits a header into (scheme, params) pairs.
fn split_challenges(header: &str) -> Vec<(String, Params)> {
    let mut cursor = Cursor {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<(String, Params)> = Vec::new();
    loop {
        cursor.skip(|b| b == b' ' || b == b'\t' || b == b',');
        let Some(token) = cursor.token() else {
            break;
        };
        let save = cursor.i;
        cursor.skip(|b| b == b' ' || b == b'\t');
        if cursor.peek() == Some(b'=') && !out.is_empty() {
            // `name=value` of the current challenge.
            cursor.i += 1;
            cursor.skip(|b| b == b' ' || b == b'\t');
            let value = if cursor.peek() == Some(b'"') {
                cursor.quoted()
            } else {
                cursor.token()
            };
            let Some(value) = value else { break };
            if let Some(last) = out.last_mut() {
                last.1.push((token, value));
            }
        } else {
            // A new scheme. (A token68 after it, as in `Basic dXNl`, is skipped as a
            // parameterless token on the next turn.)
            cursor.i = save;
            out.push((token, Vec::new()));
        }
    }
    out
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }

    /// An RFC 7230 token (and, leniently, token68's `/`, `+`, `=` tail is not needed here).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b));
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// A quoted string with `\` escapes; `None` if unterminated.
    fn quoted(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        None
    }
}

/// The token in a token endpoint's JSON answer (`token`, or OAuth2's `access_token`).
pub fn token_from_response(body: &[u8], realm: &str) -> Result<String, AuthError> {
    let bad = |reason: String| AuthError::Token {
        realm: realm.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    ["token", "access_token"]
        .iter()
        .find_map(|k| {
            value
                .get(k)
                .and_then(|v| v.as_str())
                .filter(|t| !t.is_empty())
        })
        .map(str::to_string)
        .ok_or_else(|| bad("neither `token` nor `access_token` in it".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let h = r#"Bearer realm="https://auth.registry.example/token",service="registry.example",scope="repository:crashcart/net:pull""#;
        assert_eq!(
            parse_challenges(h),
            [Challenge::Bearer {
                realm: "https://auth.registry.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:crashcart/net:pull".into()),
            }]
        );
        // Spaces, case, unquoted values, escapes, scopes with commas inside quotes.
        let h = r#"bearer  realm = "https://a.example/t" , scope="repository:a/b:pull,push", service=reg.example , error="insufficient_scope", x="q\"uote""#;
        assert_eq!(
            parse_challenges(h),
            [Challenge::Bearer {
                realm: "https://a.example/t".into(),
                service: Some("reg.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }]
        );
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry""#),
            [Challenge::Basic]
        );
        // Two challenges in one header: Bearer is preferred.
        let two =
            parse_challenges(r#"Basic realm="r", Bearer realm="https://t.example/",service="s""#);
        assert_eq!(two.len(), 2);
        assert!(
            matches!(&two[0], Challenge::Bearer { realm, service: Some(s), scope: None } if realm == "https://t.example/" && s == "s")
        );
        assert_eq!(two[1], Challenge::Basic);
        // Unknown schemes, a Bearer without realm, garbage: nothing usable.
        assert!(parse_challenges(r#"Negotiate abc, Bearer service="x""#).is_empty());
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges(r#"Bearer realm="unterminated"#).is_empty());
        assert!(parse_challenges("=,=").is_empty());
    }

    #[test]
    fn reads_docker_config_auths() {
        let path = Path::new("/root/.docker/config.json");
        let cfg = r#"{
            "auths": {
                "registry.example:5000": {"auth": "dXNlcjpwYTpzcw=="},
                "https://Other.Example/v1/": {"username": "u2", "password": "p2"},
                "helper.example": {}
            },
            "credsStore": "desktop"
        }"#;
        let c = from_docker_config(cfg, path, "registry.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        let c = from_docker_config(cfg, path, "other.example")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u2", "p2"));
        assert!(
            from_docker_config(cfg, path, "registry.example")
                .unwrap()
                .is_none()
        );
        assert!(
            from_docker_config(cfg, path, "helper.example")
                .unwrap()
                .is_none()
        );
        assert!(from_docker_config("{}", path, "x").unwrap().is_none());
        let e = from_docker_config("{", path, "x").unwrap_err().to_string();
        assert!(
            e.contains("/root/.docker/config.json") && e.contains("not JSON"),
            "{e}"
        );
        let e = from_docker_config(r#"{"auths":{"x":{"auth":"%%%"}}}"#, path, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("base64"), "{e}");
        // The password never shows in debug output.
        assert!(!format!("{c:?}").contains("p2"));
    }

    #[test]
    fn reads_tokens() {
        assert_eq!(
            token_from_response(br#"{"token":"abc","expires_in":60}"#, "r").unwrap(),
            "abc"
        );
        assert_eq!(
            token_from_response(br#"{"access_token":"xyz"}"#, "r").unwrap(),
            "xyz"
        );
        let e = token_from_response(br#"{"token":""}"#, "https://t.example").unwrap_err();
        assert!(e.to_string().contains("https://t.example"), "{e}");
        assert!(token_from_response(b"<html>", "r").is_err());
    }
}
