//! `cartbuild push` and the `cartoci` library against real registries on 127.0.0.1: the
//! one `.ci/setup` starts on 127.0.0.1:5000 (Debian's docker-registry), and private
//! instances with their own storage for the tests that damage what is stored.
//!
//! Images are tiny: the host's static busybox in a recipe built by the real `cartbuild`.
//! Needs docker-registry and busybox-static (tests/run installs them); a missing one fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cartoci::artifact::{self, ImageFormat, Part};
use cartoci::{Access, Client, ClientError, Digest, Reference};
use testkit::registry::*;

fn cartbuild() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cartbuild"))
}

fn push(image: &Path, reference: &str, verbose: bool) -> Output {
    let mut cmd = Command::new(cartbuild());
    cmd.arg("push")
        .arg(image)
        .arg(reference)
        .stdin(Stdio::null());
    if verbose {
        cmd.arg("-v");
    }
    cmd.env_remove("CRASHCART_REGISTRY_USERNAME")
        .env_remove("CRASHCART_REGISTRY_PASSWORD")
        .output()
        .expect("run cartbuild push")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Pushes and returns the printed `oci://…@sha256:…`.
fn push_ok(image: &Path, reference: &str) -> String {
    let out = push(image, reference, false);
    assert!(
        out.status.success(),
        "cartbuild push {} {reference} failed: {}",
        image.display(),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is one reference: {stdout:?}");
    lines[0].to_string()
}

/// A failed push: non-zero, one line on stderr containing every needle, nothing on stdout.
fn push_fails(image: &Path, reference: &str, needles: &[&str]) -> String {
    let out = push(image, reference, false);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "push to {reference} worked: {err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    // Progress lines may come first; the error is one line, the last.
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("cartbuild: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "not one error line: {err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {err}");
    }
    errors[0].to_string()
}

fn sidecar(image: &Path, suffix: &str) -> PathBuf {
    cartimage::manifest::sidecar(image, suffix)
}

#[test]
fn push_to_the_ci_registry_and_read_every_file_back() {
    let registry = ci_registry();
    let dir = tempfile::tempdir().unwrap();
    let image = tiny_image(cartbuild(), dir.path(), "1.0.0");
    // A signature beside the image goes along (its content is not checked by push).
    std::fs::write(
        sidecar(&image, ".minisig"),
        b"untrusted comment: test\nRWQ=\n",
    )
    .unwrap();
    let repo = repository("push");
    let tagged = format!("oci://{registry}/{repo}:1.0.0");
    let pinned = push_ok(&image, &tagged);
    assert!(
        pinned.starts_with(&format!("oci://{registry}/{repo}@sha256:")),
        "{pinned}"
    );

    // Read it back with the library: the tag resolves to the printed digest, the manifest
    // has the crashcart layout, and every blob is the local file byte for byte.
    let reference = Reference::parse(&tagged).unwrap();
    let mut client = Client::new(&reference, Access::Pull).unwrap();
    let digest = client.resolve_tag("1.0.0").unwrap();
    assert_eq!(digest.hex(), digest_hex(&pinned));
    let manifest = client.manifest_by_digest(&digest).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(value["artifactType"], artifact::ARTIFACT_TYPE);
    assert_eq!(value["config"]["mediaType"], artifact::CONFIG);
    assert_eq!(value["annotations"][artifact::VERSION], "1.0.0");
    assert_eq!(value["annotations"][artifact::TITLE], "tiny");
    assert_eq!(
        value["annotations"][artifact::CREATED],
        "2026-01-01T00:00:00Z"
    );
    let layout = artifact::parse(&manifest).unwrap();
    assert_eq!(layout.image.name, "tiny-1.0.0.img");
    assert_eq!(layout.image.part, Part::Image(ImageFormat::Ext4));
    let parts: Vec<Part> = layout.sidecars.iter().map(|l| l.part).collect();
    assert_eq!(parts, Part::SIDECARS, "every sidecar is in the artifact");
    for layer in layout.layers() {
        let local = image.with_file_name(&layer.name);
        let mut pulled = Vec::new();
        let mut last = 0;
        client
            .fetch_blob(
                &layer.digest,
                layer.size,
                &layer.name,
                &mut pulled,
                &mut |n| last = n,
            )
            .unwrap();
        assert_eq!(last, layer.size);
        assert_eq!(
            pulled,
            std::fs::read(&local).unwrap(),
            "{} differs",
            layer.name
        );
    }
    let config_digest = Digest::parse(value["config"]["digest"].as_str().unwrap()).unwrap();
    let mut config = Vec::new();
    client
        .fetch_blob(
            &config_digest,
            value["config"]["size"].as_u64().unwrap(),
            "config",
            &mut config,
            &mut |_| {},
        )
        .unwrap();
    let config: artifact::Config = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        (config.name.as_str(), config.image.as_str()),
        ("tiny", "tiny-1.0.0.img")
    );
}

#[test]
fn the_same_image_gives_the_same_digest_and_is_not_uploaded_twice() {
    let registry = ci_registry();
    let repo = repository("reproducible");
    // Two builds of the same recipe in two directories, at different times.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = tiny_image(cartbuild(), a.path(), "2.0.0");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = tiny_image(cartbuild(), b.path(), "2.0.0");
    let one = push_ok(&first, &format!("oci://{registry}/{repo}:2.0.0"));
    let two = push_ok(&second, &format!("oci://{registry}/{repo}:again"));
    assert_eq!(digest_hex(&one), digest_hex(&two), "{one} vs {two}");

    // A third push goes through a recording relay: the blobs are there, so it only asks
    // (HEAD) and puts the manifest; nothing is uploaded (no POST, no blob PUT).
    let relay = Recorder::start(registry.rsplit(':').next().unwrap().parse().unwrap());
    let out = push(
        &first,
        &format!("oci://{}/{repo}:2.0.0", relay.authority()),
        true,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(digest_hex(&text(&out.stdout)), digest_hex(&one));
    let err = text(&out.stderr);
    assert!(err.contains("already in the registry"), "{err}");
    let requests = relay.take();
    assert!(
        requests.iter().all(|r| r == "GET /v2/"
            || r.starts_with("HEAD ")
            || r.starts_with(&format!("PUT /v2/{repo}/manifests/"))),
        "{requests:?}"
    );
    assert_eq!(
        requests.iter().filter(|r| r.starts_with("HEAD ")).count(),
        5,
        "config, image, .sha256, .manifest.json and .spdx.json: {requests:?}"
    );
}

#[test]
fn push_refuses_bad_input_with_one_line() {
    let registry = ci_registry();
    let repo = repository("badpush");
    let dir = tempfile::tempdir().unwrap();
    let image = tiny_image(cartbuild(), dir.path(), "1.0.0");
    let good = format!("oci://{registry}/{repo}:1");

    push_fails(&image, &format!("oci://{registry}/{repo}"), &["name a tag"]);
    push_fails(
        &image,
        &format!("oci://{registry}/{repo}@sha256:{}", Digest::of(b"").hex()),
        &["push to a tag"],
    );
    push_fails(&image, "registry.example/net:1", &["not an OCI reference"]);
    push_fails(&image, &format!("oci://{registry}/Bad:1"), &["repository"]);
    push_fails(
        &dir.path().join("missing.img"),
        &good,
        &["no such image file"],
    );
    // Nothing listens on this port: unreachable, said once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    push_fails(
        &image,
        &format!("oci://127.0.0.1:{closed}/{repo}:1"),
        &["cannot reach the registry", "refused"],
    );

    // An image that does not match its checksum and manifest is not pushed.
    let copy = dir.path().join("copy/tiny-1.0.0.img");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    for suffix in ["", ".sha256", ".manifest.json", ".spdx.json"] {
        std::fs::copy(sidecar(&image, suffix), sidecar(&copy, suffix)).unwrap();
    }
    tamper(&copy);
    push_fails(&copy, &good, &["does not match", "manifest.json"]);
    // Without its manifest or SBOM beside it.
    std::fs::copy(&image, &copy).unwrap();
    std::fs::remove_file(sidecar(&copy, ".spdx.json")).unwrap();
    push_fails(&copy, &good, &["spdx.json", "beside it"]);
    // None of that reached the registry.
    let reference = Reference::parse(&good).unwrap();
    let mut client = Client::new(&reference, Access::Pull).unwrap();
    let e = client.resolve_tag("1").unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn missing_tags_repositories_and_registries_are_clear_errors() {
    let registry = ci_registry();
    let repo = repository("missing");
    let dir = tempfile::tempdir().unwrap();
    let image = tiny_image(cartbuild(), dir.path(), "1.0.0");
    push_ok(&image, &format!("oci://{registry}/{repo}:1.0.0"));

    let client = |s: &str| Client::new(&Reference::parse(s).unwrap(), Access::Pull).unwrap();
    let e = client(&format!("oci://{registry}/{repo}:9.9"))
        .resolve_tag("9.9")
        .unwrap_err();
    assert!(matches!(e, ClientError::NotFound(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("tag 9.9 does not exist") && e.contains("its tags: 1.0.0"),
        "{e}"
    );

    let e = client(&format!("oci://{registry}/{repo}-nope:1"))
        .resolve_tag("1")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("repository {repo}-nope does not exist")),
        "{e}"
    );
    let e = client(&format!(
        "oci://{registry}/{repo}@sha256:{}",
        Digest::of(b"x").hex()
    ))
    .manifest_by_digest(&Digest::of(b"x"))
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not exist"), "{e}");

    // HTTPS to a registry that speaks plain HTTP: no fallback, a hint instead.
    let e = client(&format!("oci+https://{registry}/{repo}:1.0.0"))
        .resolve_tag("1.0.0")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot reach") && e.contains("oci+http://"),
        "{e}"
    );
}

#[test]
fn tampered_blobs_and_manifests_are_refused() {
    let registry = PrivateRegistry::start();
    let repo = repository("tamper");
    let dir = tempfile::tempdir().unwrap();
    let image = tiny_image(cartbuild(), dir.path(), "1.0.0");
    let pinned = push_ok(
        &image,
        &format!("oci://{}/{repo}:1.0.0", registry.authority()),
    );
    let reference = Reference::parse(&pinned).unwrap();
    let mut client = Client::new(&reference, Access::Pull).unwrap();
    let digest = Digest::parse(&format!("sha256:{}", digest_hex(&pinned))).unwrap();
    let layout = artifact::parse(&client.manifest_by_digest(&digest).unwrap()).unwrap();

    // The image's bytes changed in the registry's storage: the download fails at the end,
    // naming the file and both digests.
    tamper(&registry.blob_data(&layout.image.digest.hex()));
    let mut sink = Vec::new();
    let e = client
        .fetch_blob(
            &layout.image.digest,
            layout.image.size,
            "tiny-1.0.0.img",
            &mut sink,
            &mut |_| {},
        )
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::DigestMismatch { expected, .. } if *expected == layout.image.digest),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("tiny-1.0.0.img does not match its digest"),
        "{e}"
    );
    // A descriptor that claims fewer bytes than the blob has: cut off, refused.
    let e = client
        .fetch_blob(
            &layout.sidecars[0].digest,
            layout.sidecars[0].size - 1,
            "x",
            &mut Vec::new(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(e, ClientError::SizeMismatch { .. }), "{e:?}");

    // The manifest itself changed: by digest and by tag, refused.
    tamper(&registry.blob_data(&digest.hex()));
    let e = client.manifest_by_digest(&digest).unwrap_err();
    assert!(matches!(e, ClientError::DigestMismatch { .. }), "{e:?}");
    let e = client.manifest_by_tag("1.0.0").unwrap_err();
    assert!(matches!(e, ClientError::DigestMismatch { .. }), "{e:?}");
}
