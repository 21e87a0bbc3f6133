//! `cartinject oci://…`: images pushed by `cartbuild push` to a real registry on 127.0.0.1,
//! pulled by tag and by digest, verified, cached, and injected into real Docker containers.
//!
//! The main test uses the registry `.ci/setup` starts on 127.0.0.1:5000; the tampering test
//! starts a private `docker-registry` with its own storage. Requests are counted through a
//! recording relay on 127.0.0.1 in front of the registry. Every test has its own cache
//! (`CARTINJECT_CACHE`), containers and repository. Needs root, Docker, docker-registry,
//! busybox-static and util-linux (unshare, mount); tests/run provides them.

#[path = "../imagebuilder/tests/push/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crashcart_tests::*;
use registry::*;

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
    let mut c = inject(reference, target, cmd);
    c.env("CARTINJECT_CACHE", cache)
        .env_remove("CRASHCART_REGISTRY_USERNAME")
        .env_remove("CRASHCART_REGISTRY_PASSWORD");
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
