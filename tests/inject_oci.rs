//! `cartinject oci://…`: images pushed by `cartbuild push` to a real registry on 127.0.0.1,
//! pulled by tag and by digest, verified, cached, and injected into real Docker containers.
//!
//! The main test uses the registry `.ci/setup` starts on 127.0.0.1:5000; the tampering test
//! starts a private `docker-registry` with its own storage. Requests are counted through a
//! recording relay on 127.0.0.1 in front of the registry. Every test has its own cache
//! (`CARTINJECT_CACHE`), containers and repository. Needs root, Docker, docker-registry,
//! busybox-static and util-linux (unshare, mount); tests/run provides them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crashcart_tests::*;
use testkit::registry::*;

/// A tiny image built by cartbuild, pushed to `registry` under `repo:tag`; returns the
/// printed `oci://…@sha256:…` and the directory holding the local image.
fn pushed(registry: &str, repo: &str, tag: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = tiny_image(&bin("cartbuild"), dir.path(), tag);
    let out = output(
        Command::new(bin("cartbuild"))
            .arg("push")
            .arg(&image)
            .arg(format!("oci://{registry}/{repo}:{tag}")),
    );
    assert!(
        out.status.success(),
        "cartbuild push failed: {}",
        stderr(&out)
    );
    (stdout(&out).trim().to_string(), dir)
}

/// `cartinject REFERENCE TARGET -- CMD…` with its own cache.
fn inject_with_cache(cache: &Path, reference: &str, target: &str, cmd: &[&str]) -> Command {
    inject_with_options(cache, &[], reference, target, cmd)
}

/// `cartinject OPTIONS… REFERENCE TARGET -- CMD…` with its own cache.
fn inject_with_options(
    cache: &Path,
    options: &[&str],
    reference: &str,
    target: &str,
    cmd: &[&str],
) -> Command {
    let mut c = cartinject();
    c.args(options).arg(reference).arg(target);
    if !cmd.is_empty() {
        c.arg("--").args(cmd);
    }
    c.env("CARTINJECT_CACHE", cache)
        .env_remove("CRASHCART_REGISTRY_USERNAME")
        .env_remove("CRASHCART_REGISTRY_PASSWORD")
        .env_remove("CARTINJECT_OCI_MAX_SIZE");
    c
}

/// What the tests run in the container: the server's command line, read by the image's
/// busybox, and a marker.
const RUN: [&str; 4] = [
    "busybox",
    "sh",
    "-c",
    "busybox cat /proc/1/cmdline; echo; echo from-the-registry",
];

/// [`RUN`] in `c` from the image at `reference`, with the cache `cache`, run to completion.
fn run_from(cache: &Path, reference: &str, c: &Container) -> Output {
    output(&mut inject_with_cache(cache, reference, &c.name, &RUN))
}

fn assert_ran(out: &Output) {
    let text = stdout(out);
    assert!(
        out.status.success(),
        "cartinject failed ({:?}): {}",
        out.status.code(),
        stderr(out)
    );
    assert!(
        text.contains("/httpd") && text.contains("from-the-registry"),
        "{text}"
    );
}

/// The image's directory in the cache.
fn cached(cache: &Path, digest_hex: &str) -> PathBuf {
    cache.join("oci/images/sha256").join(digest_hex)
}

/// Every file under `dir` (relative paths).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// Loop devices whose backing file lies under `dir`.
fn loop_devices_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file"))
            && backing.starts_with(&prefix)
        {
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                backing.trim()
            ));
        }
    }
    found
}

fn port_of(authority: &str) -> u16 {
    authority
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

#[test]
fn push_then_pull_by_tag_and_by_digest_into_a_container() {
    let registry = ci_registry();
    let repo = repository("inject-oci");
    let (pinned, _local) = pushed(registry, &repo, "1.0.0");
    let hex = digest_hex(&pinned);
    let c = thin_container("oci-pull");
    let cache = tempfile::tempdir().expect("cache dir");

    // By tag, straight from the .ci registry: pulled, verified, cached, injected.
    let out = run_from(cache.path(), &format!("oci://{registry}/{repo}:1.0.0"), &c);
    assert_ran(&out);
    assert!(
        stderr(&out).contains("pulled") && stderr(&out).contains(&hex),
        "{}",
        stderr(&out)
    );
    let dir = cached(cache.path(), &hex);
    let image = dir.join("tiny-1.0.0.img");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the image's directory in the cache")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "tiny-1.0.0.img",
            "tiny-1.0.0.img.manifest.json",
            "tiny-1.0.0.img.sha256",
            "tiny-1.0.0.img.spdx.json"
        ]
    );
    assert_eq!(
        std::fs::read(&image).expect("cached image"),
        std::fs::read(_local.path().join("out/tiny-1.0.0.img")).expect("local image"),
    );
    assert!(
        cache.path().join("oci/blobs/sha256").join(&hex).is_file(),
        "the manifest is cached by its digest"
    );
    assert_no_loop_device(&image);
    c.assert_clean();

    // Through a recording relay in front of the same registry from here on.
    let relay = Recorder::start(port_of(registry));
    let via = relay.authority();

    // By digest, cached: not one request.
    let out = run_from(
        cache.path(),
        &format!("oci://{via}/{repo}@sha256:{hex}"),
        &c,
    );
    assert_ran(&out);
    assert_eq!(
        relay.take(),
        Vec::<String>::new(),
        "a cached digest made requests"
    );
    assert!(!stderr(&out).contains("pulled"), "{}", stderr(&out));

    // By tag, cached: the tag is asked for again (one HEAD), nothing else.
    let out = run_from(cache.path(), &format!("oci://{via}/{repo}:1.0.0"), &c);
    assert_ran(&out);
    assert_eq!(relay.take(), [format!("HEAD /v2/{repo}/manifests/1.0.0")]);

    // -m and -u with a reference: docker exec then finds the image's tools.
    let out = output(
        inject_with_cache(
            cache.path(),
            &format!("oci://{via}/{repo}@sha256:{hex}"),
            &c.name,
            &[],
        )
        .arg("-m"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = c.exec(&["/dev/crashcart/bin/busybox", "cat", "/proc/1/cmdline"]);
    assert!(text.contains("/httpd"), "{text}");
    ok(cartinject().arg("-u").arg(&c.name));
    c.assert_clean();
    assert_no_loop_device(&image);
    assert_eq!(relay.take(), Vec::<String>::new());

    // By digest into an empty cache: the manifest by its digest and each blob, no tag.
    let fresh = tempfile::tempdir().expect("cache dir");
    let out = run_from(
        fresh.path(),
        &format!("oci://{via}/{repo}@sha256:{hex}"),
        &c,
    );
    assert_ran(&out);
    let requests = relay.take();
    assert_eq!(
        requests[0],
        format!("GET /v2/{repo}/manifests/sha256:{hex}"),
        "{requests:?}"
    );
    assert_eq!(requests.len(), 5, "the manifest and 4 blobs: {requests:?}");
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.starts_with(&format!("GET /v2/{repo}/blobs/sha256:"))),
        "{requests:?}"
    );
    assert!(cached(fresh.path(), &hex).join("tiny-1.0.0.img").is_file());
    assert_no_loop_device(&cached(fresh.path(), &hex).join("tiny-1.0.0.img"));
    c.assert_clean();
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_is_cached_or_attached() {
    let registry = PrivateRegistry::start();
    let repo = repository("inject-tamper");
    let (pinned, local) = pushed(&registry.authority(), &repo, "1.0.0");
    // The registry stores a blob under the hex sha256 of its content.
    let image_hex = sha256_of(&local.path().join("out/tiny-1.0.0.img"));
    tamper(&registry.blob_data(&image_hex));
    let c = thin_container("oci-tamper");
    let cache = tempfile::tempdir().expect("cache dir");

    for reference in [
        pinned.clone(),
        format!("oci://{}/{repo}:1.0.0", registry.authority()),
    ] {
        let out = run_from(cache.path(), &reference, &c);
        assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(
            err.contains("tiny-1.0.0.img")
                && err.contains("does not match its digest")
                && err.contains(&image_hex),
            "{err}"
        );
        assert!(stdout(&out).is_empty(), "the command ran: {}", stdout(&out));
        // Nothing cached: no image directory, no blob, no staging left; nothing attached.
        let left: Vec<String> = files_under(&cache.path().join("oci")).into_iter().collect();
        assert_eq!(left, Vec::<String>::new(), "left in the cache: {left:?}");
        assert_eq!(loop_devices_under(cache.path()), Vec::<String>::new());
        c.assert_clean();
    }
}

#[test]
fn missing_tags_repositories_and_registries_are_clear_errors() {
    let registry = ci_registry();
    let repo = repository("inject-missing");
    let _pushed = pushed(registry, &repo, "1.0.0");
    let c = thin_container("oci-missing");
    let cache = tempfile::tempdir().expect("cache dir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    for (reference, needles) in [
        (
            format!("oci://{registry}/{repo}:9.9.9"),
            vec!["tag 9.9.9 does not exist", "its tags: 1.0.0"],
        ),
        (
            format!("oci://{registry}/{repo}-nope:1.0.0"),
            vec!["repository", "does not exist"],
        ),
        (
            format!("oci://127.0.0.1:{closed}/{repo}:1.0.0"),
            vec!["cannot reach the registry", "refused"],
        ),
        (
            format!("oci://{registry}/{repo}"),
            vec!["name a tag", "latest"],
        ),
        (
            format!("oci://{registry}/{repo}@sha256:abc"),
            vec!["sha256:<64"],
        ),
    ] {
        let out = run_from(cache.path(), &reference, &c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{reference}: {err}");
        assert_eq!(err.lines().count(), 1, "{reference}: not one line: {err}");
        for n in needles {
            assert!(err.contains(n), "{reference}: {n:?} not in {err}");
        }
        assert!(
            files_under(&cache.path().join("oci")).is_empty(),
            "{reference}: something was cached"
        );
        c.assert_clean();
    }
}

#[test]
fn a_registry_host_name_from_etc_hosts() {
    require_tool("unshare", "util-linux");
    let registry = ci_registry();
    let repo = repository("inject-hosts");
    let (pinned, _local) = pushed(registry, &repo, "1.0.0");
    let c = thin_container("oci-hosts");
    let cache = tempfile::tempdir().expect("cache dir");
    // registry.example is known only to this /etc/hosts, bound over the host's in a mount
    // namespace of the command's own: cartinject resolves it without NSS.
    let hosts = cache.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 registry.example\n").expect("hosts");
    let reference = format!(
        "oci+http://registry.example:{}/{repo}:1.0.0",
        port_of(registry)
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(r#"mount --bind "$1" /etc/hosts; shift; exec "$@""#)
        .arg("sh")
        .arg(&hosts)
        .arg(bin("cartinject"))
        .arg(&reference)
        .arg(&c.name)
        .arg("--")
        .args(RUN)
        .env("CARTINJECT_CACHE", cache.path().join("cache"))
        .env("CARTINJECT_LINGER", "0")
        .env_remove("CARTINJECT_IMAGE")
        .stdin(Stdio::null());
    let out = output(&mut cmd);
    assert_ran(&out);
    let hex = digest_hex(&pinned);
    let image = cached(&cache.path().join("cache"), &hex).join("tiny-1.0.0.img");
    assert!(image.is_file(), "{}", stderr(&out));
    assert_no_loop_device(&image);
    c.assert_clean();
}

/// How often the tag-trust warning is in `text`.
fn trust_warnings(text: &str) -> usize {
    text.matches("is pulled by tag without --verify-key: trusting the registry for its content")
        .count()
}

#[test]
fn a_pull_by_tag_says_it_trusts_the_registry_unless_pinned_or_keyed() {
    let registry = ci_registry();
    let repo = repository("inject-oci-trust");
    // A signed image: built, signed with a fresh key, pushed with its .minisig.
    let dir = tempfile::tempdir().expect("temp dir");
    let (public, secret) = cartbuild_keys(dir.path(), "k");
    let image = tiny_image(&bin("cartbuild"), dir.path(), "1.0.0");
    ok(Command::new(bin("cartbuild"))
        .arg("sign")
        .arg(&image)
        .arg("--key")
        .arg(&secret));
    let pinned = ok(Command::new(bin("cartbuild"))
        .arg("push")
        .arg(&image)
        .arg(format!("oci://{registry}/{repo}:1.0.0")))
    .trim()
    .to_string();
    let hex = digest_hex(&pinned);
    let tagged = format!("oci://{registry}/{repo}:1.0.0");
    let c = thin_container("oci-trust");
    let cache = tempfile::tempdir().expect("cache dir");

    // By tag, no key: pulled and run, with one warning that names the digest to pin.
    let out = run_from(cache.path(), &tagged, &c);
    assert_ran(&out);
    let err = stderr(&out);
    assert_eq!(trust_warnings(&err), 1, "{err}");
    assert!(
        err.contains(&format!(
            "cartinject: warning: {tagged} is pulled by tag without --verify-key"
        )) && err.contains(&format!(
            "pin oci://{registry}/{repo}@sha256:{hex} or pass --verify-key"
        )),
        "{err}"
    );
    // Cached now, the tag is still the registry's word: the warning again.
    let out = run_from(cache.path(), &tagged, &c);
    assert_ran(&out);
    assert_eq!(trust_warnings(&stderr(&out)), 1, "{}", stderr(&out));

    // By digest (cached, or into an empty cache): no warning.
    let out = run_from(cache.path(), &pinned, &c);
    assert_ran(&out);
    assert_eq!(trust_warnings(&stderr(&out)), 0, "{}", stderr(&out));
    let fresh = tempfile::tempdir().expect("cache dir");
    let out = run_from(fresh.path(), &pinned, &c);
    assert_ran(&out);
    assert_eq!(trust_warnings(&stderr(&out)), 0, "{}", stderr(&out));

    // By tag with the key: the signature is checked, and no warning.
    let key = public.to_str().expect("utf-8");
    let out = output(&mut inject_with_options(
        cache.path(),
        &["--verify-key", key],
        &tagged,
        &c.name,
        &RUN,
    ));
    assert_ran(&out);
    assert_eq!(trust_warnings(&stderr(&out)), 0, "{}", stderr(&out));
    c.assert_clean();
    assert_no_loop_device(&cached(cache.path(), &hex).join("tiny-1.0.0.img"));
}

#[test]
fn oci_max_size_refuses_a_real_image_before_downloading_it_and_raises() {
    let registry = ci_registry();
    let repo = repository("inject-oci-max");
    let (pinned, local) = pushed(registry, &repo, "1.0.0");
    let size = std::fs::metadata(local.path().join("out/tiny-1.0.0.img"))
        .expect("stat the image")
        .len();
    let relay = Recorder::start(port_of(registry));
    let via = relay.authority();
    let reference = format!("oci://{via}/{repo}@sha256:{}", digest_hex(&pinned));
    let c = thin_container("oci-max");
    let cache = tempfile::tempdir().expect("cache dir");

    // Below the image's size, by flag and by environment: refused after the manifest, with
    // no blob requested; nothing cached.
    let limit = size / 2;
    for by_env in [false, true] {
        let limit_arg = limit.to_string();
        let options: &[&str] = if by_env {
            &[]
        } else {
            &["--oci-max-size", &limit_arg]
        };
        let mut cmd = inject_with_options(cache.path(), options, &reference, &c.name, &RUN);
        if by_env {
            cmd.env("CARTINJECT_OCI_MAX_SIZE", &limit_arg);
        }
        let out = output(&mut cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(
            err.contains(&format!("tiny-1.0.0.img of {reference} is {size} bytes"))
                && err.contains(&format!(
                    "as its descriptor declares, over the limit of {limit} bytes"
                ))
                && err.contains("nothing was downloaded")
                && err.contains("--oci-max-size")
                && err.contains("CARTINJECT_OCI_MAX_SIZE"),
            "{err}"
        );
        assert_eq!(
            relay.take(),
            [format!(
                "GET /v2/{repo}/manifests/sha256:{}",
                digest_hex(&pinned)
            )]
        );
        assert_eq!(files_under(&cache.path().join("oci")), Vec::<String>::new());
        assert_eq!(loop_devices_under(cache.path()), Vec::<String>::new());
        c.assert_clean();
    }
    // A K suffix that covers it: pulled and run.
    let enough = format!("{}K", size / 1024 + 1);
    let out = output(&mut inject_with_options(
        cache.path(),
        &["--oci-max-size", &enough],
        &reference,
        &c.name,
        &RUN,
    ));
    assert_ran(&out);
    // A bad size: a usage error.
    let out = output(&mut inject_with_options(
        cache.path(),
        &["--oci-max-size", "lots"],
        &reference,
        &c.name,
        &RUN,
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a size"), "{}", stderr(&out));
    c.assert_clean();
}

/// A hostile registry: a few lines of std::net on 127.0.0.1 (an ephemeral port) that
/// answers each `METHOD PATH` as it was told, records every request and counts the body
/// bytes it sent. Anything it was not told is a 404 with a distribution-spec error body.
mod fake {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Never more than this from one answer, nor for longer than [`SEND_FOR`]: a client
    /// that does not stop reading fails its test rather than hanging it.
    pub const SEND_CAP: u64 = 1 << 30;
    const SEND_FOR: Duration = Duration::from_secs(120);

    /// One answer.
    #[derive(Clone)]
    pub enum Answer {
        /// A status, headers, and a body with its true Content-Length (none for HEAD).
        Full {
            status: u16,
            headers: Vec<(String, String)>,
            body: Vec<u8>,
        },
        /// 200 and `body` without a Content-Length (the body ends when the connection
        /// does), followed by `b'x'` bytes forever when `endless`.
        Stream { body: Vec<u8>, endless: bool },
        /// A status and `head`, then `b'x'` bytes forever, with no Content-Length.
        EndlessError { status: u16, head: Vec<u8> },
    }

    impl Answer {
        pub fn ok(body: &[u8]) -> Answer {
            Answer::Full {
                status: 200,
                headers: Vec::new(),
                body: body.to_vec(),
            }
        }

        pub fn with_header(mut self, name: &str, value: &str) -> Answer {
            if let Answer::Full { headers, .. } = &mut self {
                headers.push((name.to_string(), value.to_string()));
            }
            self
        }
    }

    pub struct Registry {
        pub port: u16,
        requests: Arc<Mutex<Vec<String>>>,
        sent: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    }

    impl Registry {
        /// Serves `answers` (`"GET /v2/…"` → answer).
        pub fn start(answers: HashMap<String, Answer>) -> Registry {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            let port = listener.local_addr().expect("addr").port();
            listener.set_nonblocking(true).expect("nonblocking");
            let requests = Arc::new(Mutex::new(Vec::new()));
            let sent = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let answers = Arc::new(answers);
            let (r, s, st) = (requests.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (r, s, a) = (r.clone(), s.clone(), answers.clone());
                            std::thread::spawn(move || serve(conn, &a, &r, &s));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            Registry {
                port,
                requests,
                sent,
                stop,
            }
        }

        pub fn authority(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// The requests so far (`METHOD PATH`).
        pub fn requests(&self) -> Vec<String> {
            self.requests.lock().expect("lock").clone()
        }

        /// Body bytes sent so far.
        pub fn sent(&self) -> u64 {
            self.sent.load(Ordering::Relaxed)
        }
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn serve(
        mut conn: TcpStream,
        answers: &HashMap<String, Answer>,
        requests: &Mutex<Vec<String>>,
        sent: &AtomicU64,
    ) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
        // One request per connection (`Connection: close`); its head only (pulls send no
        // bodies).
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let line = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let mut words = line.split(' ');
        let (method, path) = (
            words.next().unwrap_or_default().to_string(),
            words.next().unwrap_or_default().to_string(),
        );
        let key = format!("{method} {path}");
        requests.lock().expect("lock").push(key.clone());
        let answer = answers.get(&key).cloned().unwrap_or_else(|| Answer::Full {
            status: 404,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}"#.to_vec(),
        });
        let head_only = method == "HEAD";
        let count = |n: usize| {
            sent.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        };
        match answer {
            Answer::Full {
                status,
                headers,
                body,
            } => {
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = conn.write_all(out.as_bytes());
                if !head_only && conn.write_all(&body).is_ok() {
                    count(body.len());
                }
            }
            Answer::Stream { body, endless } => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                if head_only {
                    return;
                }
                if conn.write_all(&body).is_err() {
                    return;
                }
                count(body.len());
                if endless {
                    forever(&mut conn, count);
                }
            }
            Answer::EndlessError { status, head } => {
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status} X\r\nConnection: close\r\n\r\n").as_bytes(),
                );
                if head_only || conn.write_all(&head).is_err() {
                    return;
                }
                forever(&mut conn, count);
            }
        }
    }

    /// `x` bytes until the client goes away (or [`SEND_CAP`] / [`SEND_FOR`]).
    fn forever(conn: &mut TcpStream, count: impl Fn(usize)) {
        let chunk = vec![b'x'; 64 << 10];
        let started = Instant::now();
        let mut total = 0u64;
        while total < SEND_CAP && started.elapsed() < SEND_FOR {
            if conn.write_all(&chunk).is_err() {
                return;
            }
            count(chunk.len());
            total += chunk.len() as u64;
        }
    }
}

use fake::Answer;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `bytes` written to a file in `dir` and hashed with sha256sum: the hex digest.
fn sha256_hex(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("blob");
    std::fs::write(&path, bytes).expect("write blob");
    let hex = sha256_of(&path);
    std::fs::remove_file(&path).expect("rm blob");
    hex
}

/// A crashcart manifest naming one image layer `evil.img` of `size` bytes with digest
/// `hex` (and a config it never needs): its bytes and its hex digest.
fn manifest_for(dir: &Path, hex: &str, size: u64) -> (Vec<u8>, String) {
    let config_hex = sha256_hex(dir, b"{}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.crashcart.image.v1","config":{{"mediaType":"application/vnd.crashcart.image.config.v1+json","digest":"sha256:{config_hex}","size":2}},"layers":[{{"mediaType":"application/vnd.crashcart.image.layer.v1.ext4","digest":"sha256:{hex}","size":{size},"annotations":{{"org.opencontainers.image.title":"evil.img"}}}}]}}"#
    )
    .into_bytes();
    let manifest_hex = sha256_hex(dir, &manifest);
    (manifest, manifest_hex)
}

/// What a refused pull must look like: exit 125, one line holding every needle, no raw
/// control byte, nothing in the cache (no file: no blob, no staging, no image), no loop
/// device on it, nothing mounted in the container, and done in well under the client's
/// time limits (`took`): bounded by bytes.
fn assert_refused(out: &Output, took: Duration, cache: &Path, c: &Container, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert!(
        !err.trim_end().bytes().any(|b| b < 0x20 || b == 0x7f),
        "a raw control byte reached the terminal: {err:?}"
    );
    assert!(stdout(out).is_empty(), "the command ran: {}", stdout(out));
    assert_eq!(files_under(&cache.join("oci")), Vec::<String>::new());
    assert_eq!(loop_devices_under(cache), Vec::<String>::new());
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}: not bounded by bytes"
    );
    c.assert_clean();
}

/// Runs [`RUN`] from `reference` into `c` with a fresh cache and `args`: the output, how
/// long it took, and the cache (to look into).
fn pull_from_fake(
    reference: &str,
    c: &Container,
    args: &[&str],
) -> (Output, Duration, tempfile::TempDir) {
    let cache = tempfile::tempdir().expect("cache dir");
    let started = Instant::now();
    let out = output(&mut inject_with_options(
        cache.path(),
        args,
        reference,
        &c.name,
        &RUN,
    ));
    (out, started.elapsed(), cache)
}

#[test]
fn manifests_over_the_limit_are_refused_while_they_stream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let c = thin_container("oci-big-manifest");
    // A 5 MiB "manifest": valid JSON, padded.
    let mut big = br#"{"schemaVersion":2,"pad":""#.to_vec();
    big.resize((5 << 20) - 2, b'a');
    big.extend_from_slice(br#""}"#);
    let big_hex = sha256_hex(dir.path(), &big);
    let endless_hex = "e".repeat(64);
    let tag_hex = "f".repeat(64);
    let m = |hex: &str| format!("GET /v2/evil/manifests/sha256:{hex}");
    let answers = HashMap::from([
        // With its true Content-Length: refused from the header.
        (m(&big_hex), Answer::ok(&big)),
        // Without one: refused as it streams, at 4 MiB.
        (
            format!("GET /v2/evil2/manifests/sha256:{big_hex}"),
            Answer::Stream {
                body: big.clone(),
                endless: false,
            },
        ),
        // Endless.
        (
            m(&endless_hex),
            Answer::Stream {
                body: b"{".to_vec(),
                endless: true,
            },
        ),
        // A tag that the registry resolves to an endless manifest.
        (
            "HEAD /v2/evil/manifests/1.0.0".into(),
            Answer::ok(b"").with_header("Docker-Content-Digest", &format!("sha256:{tag_hex}")),
        ),
        (
            m(&tag_hex),
            Answer::Stream {
                body: Vec::new(),
                endless: true,
            },
        ),
    ]);
    let registry = fake::Registry::start(answers);
    let at = registry.authority();

    for (reference, needles) in [
        (
            format!("oci://{at}/evil@sha256:{big_hex}"),
            vec![
                "is 5242880 bytes (5 MiB) by the registry's Content-Length",
                "nothing was downloaded",
            ],
        ),
        (
            format!("oci://{at}/evil2@sha256:{big_hex}"),
            vec!["went on past 4194304 bytes", "the download was stopped"],
        ),
        (
            format!("oci://{at}/evil@sha256:{endless_hex}"),
            vec!["went on past 4194304 bytes", "the download was stopped"],
        ),
        (
            format!("oci://{at}/evil:1.0.0"),
            vec!["went on past 4194304 bytes"],
        ),
    ] {
        let before = registry.sent();
        let (out, took, cache) = pull_from_fake(&reference, &c, &[]);
        let mut all = needles.clone();
        all.extend([
            "the manifest",
            "over the limit of 4194304 bytes (4 MiB)",
            "no crashcart image",
        ]);
        assert_refused(&out, took, cache.path(), &c, &all);
        // Bounded in bytes: the limit, and what the sockets buffered, not gigabytes.
        let sent = registry.sent() - before;
        assert!(
            sent < 64 << 20,
            "{reference}: the registry got to send {sent} bytes"
        );
    }
    // Lowered by the flag: a 5 MiB manifest is over 1 MiB.
    let (out, took, cache) = pull_from_fake(
        &format!("oci://{at}/evil2@sha256:{big_hex}"),
        &c,
        &["--oci-max-size", "1M"],
    );
    assert_refused(
        &out,
        took,
        cache.path(),
        &c,
        &[
            "went on past 1048576 bytes",
            "over the limit of 1048576 bytes (1 MiB)",
            "--oci-max-size",
        ],
    );
}

#[test]
fn blobs_are_cut_off_at_their_declared_size_and_refused_over_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let c = thin_container("oci-big-blob");
    let blob = vec![b'b'; 100 << 10];
    let blob_hex = sha256_hex(dir.path(), &blob);
    let mut longer = blob.clone();
    longer.extend(vec![b'x'; 1 << 20]);
    let (manifest, manifest_hex) = manifest_for(dir.path(), &blob_hex, 100 << 10);
    // Declared over the default limit (4 GiB) and over a lowered one.
    let (huge, huge_hex) = manifest_for(dir.path(), &blob_hex, 5 << 30);
    let b = |repo: &str| format!("GET /v2/{repo}/blobs/sha256:{blob_hex}");
    let man = |repo: &str, hex: &str| format!("GET /v2/{repo}/manifests/sha256:{hex}");
    let mut answers = HashMap::new();
    for (repo, blob_answer) in [
        // Longer than declared, no Content-Length: cut off as it streams.
        (
            "longer",
            Answer::Stream {
                body: longer.clone(),
                endless: false,
            },
        ),
        // Endless.
        (
            "endless",
            Answer::Stream {
                body: Vec::new(),
                endless: true,
            },
        ),
        // Longer, and honest about it in Content-Length: refused from the header.
        ("honest", Answer::ok(&longer)),
        // A 500 whose error body never ends.
        (
            "broken",
            Answer::EndlessError {
                status: 500,
                head: b"\x1b]0;pwned\x07\x1b[2J oops ".to_vec(),
            },
        ),
    ] {
        answers.insert(man(repo, &manifest_hex), Answer::ok(&manifest));
        answers.insert(b(repo), blob_answer);
    }
    answers.insert(man("huge", &huge_hex), Answer::ok(&huge));
    answers.insert(b("huge"), Answer::ok(&blob));
    answers.insert(man("small", &manifest_hex), Answer::ok(&manifest));
    answers.insert(b("small"), Answer::ok(&blob));
    let registry = fake::Registry::start(answers);
    let at = registry.authority();

    let cases: [(&str, &str, &[&str], &[&str]); 6] = [
        (
            "longer",
            &manifest_hex,
            &[],
            &[
                "evil.img of",
                "went on past the 102400 bytes its descriptor declares",
                "the download was stopped",
            ],
        ),
        (
            "endless",
            &manifest_hex,
            &[],
            &[
                "evil.img of",
                "went on past the 102400 bytes its descriptor declares",
            ],
        ),
        (
            "honest",
            &manifest_hex,
            &[],
            &[
                "evil.img of",
                "is 1150976 bytes where its descriptor says 102400",
            ],
        ),
        (
            "broken",
            &manifest_hex,
            &[],
            // Escaped (by cartoci, and again by cartinject's last line of defence, which
            // doubles the backslash): no raw byte, as assert_refused checks.
            &["HTTP 500", "x1b]0;pwned", "x07", "x1b[2J oops"],
        ),
        (
            "huge",
            &huge_hex,
            &[],
            &[
                "evil.img of",
                "is 5368709120 bytes (5 GiB) as its descriptor declares, over the limit of 4294967296 bytes (4 GiB); nothing was downloaded",
                "--oci-max-size",
            ],
        ),
        (
            "small",
            &manifest_hex,
            &["--oci-max-size", "64K"],
            &[
                "evil.img of",
                "is 102400 bytes (100 KiB) as its descriptor declares, over the limit of 65536 bytes (64 KiB)",
            ],
        ),
    ];
    for (repo, hex, args, needles) in cases {
        let reference = format!("oci://{at}/{repo}@sha256:{hex}");
        let before = registry.sent();
        let (out, took, cache) = pull_from_fake(&reference, &c, args);
        assert_refused(&out, took, cache.path(), &c, needles);
        let sent = registry.sent() - before;
        assert!(
            sent < 64 << 20,
            "{repo}: the registry got to send {sent} bytes"
        );
        let asked: Vec<String> = registry
            .requests()
            .into_iter()
            .filter(|r| r.contains(&format!("/v2/{repo}/")))
            .collect();
        // Declared over the limit: the manifest only, the blob never asked for.
        let expected = if ["huge", "small"].contains(&repo) {
            vec![man(repo, hex)]
        } else {
            vec![man(repo, hex), b(repo)]
        };
        assert_eq!(asked, expected, "{repo}");
    }
}

#[test]
fn a_cache_others_could_change_is_refused_before_any_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let c = thin_container("oci-cache-parent");
    let registry = fake::Registry::start(HashMap::new());
    let reference = format!(
        "oci://{}/any@sha256:{}",
        registry.authority(),
        "a".repeat(64)
    );
    let run = |cache: &Path| output(&mut inject_with_cache(cache, &reference, &c.name, &RUN));
    let chmod = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };

    // A parent others can write (not sticky), a group-writable grandparent, a parent
    // owned by nobody, and a symlink to a writable directory.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    chmod(&open, 0o777);
    let grand = dir.path().join("grand");
    std::fs::create_dir_all(grand.join("mid")).expect("mkdir");
    chmod(&grand, 0o775);
    let nobodys = dir.path().join("nobodys");
    std::fs::create_dir(&nobodys).expect("mkdir");
    std::os::unix::fs::chown(&nobodys, Some(65534), Some(65534)).expect("chown");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&open, &link).expect("symlink");
    for (cache, culprit, why) in [
        (
            open.join("cache"),
            &open,
            "is writable by group or others (mode 777)",
        ),
        (
            grand.join("mid/cache"),
            &grand,
            "is writable by group or others (mode 775)",
        ),
        (nobodys.join("cache"), &nobodys, "is owned by uid 65534"),
        (
            link.join("cache"),
            &open,
            "is writable by group or others (mode 777)",
        ),
    ] {
        let out = run(&cache);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(
            err.contains(&format!(
                "cannot use the image cache {}",
                cache.join("oci").display()
            )) && err.contains(&format!("{} {why}", culprit.display()))
                && err.contains(&format!("chmod go-w {}", culprit.display()))
                && err.contains("CARTINJECT_CACHE"),
            "{err}"
        );
        assert!(!cache.exists(), "{} was made", cache.display());
        assert_eq!(registry.requests(), Vec::<String>::new());
        c.assert_clean();
    }
    // The same directory made sticky (as /tmp) is fine above the cache: the pull goes on
    // (and fails at the registry, which has nothing).
    chmod(&open, 0o1777);
    let out = run(&open.join("cache"));
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert_eq!(registry.requests().len(), 1);
    c.assert_clean();
}

#[test]
fn redirects_and_challenges_are_bounded() {
    let c = thin_container("oci-redirects");
    let hex = "c".repeat(64);
    let loop_path = format!("/v2/loop/manifests/sha256:{hex}");
    let realm = format!("not a url {}", "r".repeat(20 << 10));
    let answers = HashMap::from([
        // A redirect to itself, forever.
        (
            format!("GET {loop_path}"),
            Answer::Full {
                status: 307,
                headers: Vec::new(),
                body: Vec::new(),
            }
            .with_header("Location", &loop_path),
        ),
        // A challenge whose realm is 20 KiB of junk.
        (
            format!("GET /v2/auth/manifests/sha256:{hex}"),
            Answer::Full {
                status: 401,
                headers: Vec::new(),
                body: Vec::new(),
            }
            .with_header("WWW-Authenticate", &format!("Bearer realm=\"{realm}\"")),
        ),
    ]);
    let registry = fake::Registry::start(answers);
    let at = registry.authority();

    let (out, took, cache) = pull_from_fake(&format!("oci://{at}/loop@sha256:{hex}"), &c, &[]);
    assert_refused(&out, took, cache.path(), &c, &["more than 5 redirects"]);
    let asked = registry.requests();
    assert_eq!(asked.len(), 6, "{asked:?}");

    let (out, took, cache) = pull_from_fake(&format!("oci://{at}/auth@sha256:{hex}"), &c, &[]);
    assert_refused(
        &out,
        took,
        cache.path(),
        &c,
        &["is not a URL", "not a url rrr"],
    );
    assert!(
        stderr(&out).len() < 1024,
        "the realm was not cut short: {} bytes",
        stderr(&out).len()
    );
}

/// A copy of the tiny image at `image` (with its sidecars) named `name`, whose manifest
/// says it is built for `arch` (the bytes stay x86_64's, and match the manifest's digest).
fn claiming_arch(image: &Path, name: &str, arch: &str) -> PathBuf {
    let copy = image.with_file_name(name);
    std::fs::copy(image, &copy).expect("copy the image");
    for suffix in [".sha256", ".spdx.json", ".manifest.json"] {
        let from = PathBuf::from(format!("{}{suffix}", image.display()));
        let to = PathBuf::from(format!("{}{suffix}", copy.display()));
        std::fs::copy(&from, &to).expect("copy a sidecar");
    }
    let manifest = PathBuf::from(format!("{}.manifest.json", copy.display()));
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("read the manifest"))
            .expect("a manifest");
    value["arch"] = arch.into();
    std::fs::write(&manifest, serde_json::to_vec(&value).expect("json")).expect("write");
    copy
}

#[test]
fn a_tag_of_several_arches_gives_the_target_s_image() {
    let registry = ci_registry();
    let repo = repository("inject-oci-index");
    let dir = tempfile::tempdir().expect("temp dir");
    let x86 = tiny_image(&bin("cartbuild"), dir.path(), "1.0.0");
    let arm = claiming_arch(&x86, "tiny-1.0.0-aarch64.img", "aarch64");
    // The aarch64 one first: the index does not depend on the order.
    let out = output(
        Command::new(bin("cartbuild"))
            .arg("push")
            .arg(&arm)
            .arg(&x86)
            .arg(format!("oci://{registry}/{repo}:multi")),
    );
    assert!(
        out.status.success(),
        "cartbuild push failed: {}",
        stderr(&out)
    );
    let index = stdout(&out).trim().to_string();
    assert!(
        stderr(&out).contains("pushed an index of 2 images (x86_64, aarch64)"),
        "{}",
        stderr(&out)
    );
    let c = thin_container("oci-index");
    let cache = tempfile::tempdir().expect("cache dir");

    // By tag: the x86_64 image (this host's, and the container's).
    let out = run_from(cache.path(), &format!("oci://{registry}/{repo}:multi"), &c);
    assert_ran(&out);
    let images: Vec<String> = files_under(&cache.path().join("oci/images/sha256"));
    assert!(
        images.iter().any(|f| f.ends_with("/tiny-1.0.0.img"))
            && !images.iter().any(|f| f.contains("aarch64")),
        "{images:?}"
    );
    // By the index's digest: from the cache, no request.
    let out = output(&mut inject_with_options(
        cache.path(),
        &["-v"],
        &index,
        &c.name,
        &RUN,
    ));
    assert_ran(&out);
    assert!(
        stderr(&out).contains("is an image index; the target runs x86_64")
            && stderr(&out).contains("in the cache, no request made"),
        "{}",
        stderr(&out)
    );
}
