//! The build cache shared through an OCI registry (`--cache-to`, `--cache-from`,
//! `--cache-trust`), against real registries on 127.0.0.1: the one `.ci/setup` starts on
//! 127.0.0.1:5000 (Debian's docker-registry), private instances for the tests that damage
//! what is stored, and relays that stall or die halfway.
//!
//! The recipe is small: a local file, a static executable fetched as a `file` package, and
//! a `build` package whose script installs a shell script from its source tarball.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cartoci::{Access, Client, Reference};
use common::*;
use testkit::registry::{PrivateRegistry, ci_registry, repository, tamper};

/// The recipe's sources, served on 127.0.0.1.
struct Sources {
    server: Server,
    recipe_text: String,
}

fn sources(tag: &str) -> Sources {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let prog_bytes = static_program(
        dir.path(),
        &format!("int main(void){{return {};}}\n", tag.len() % 7),
    );
    server.route("/prog", Route::Serve(prog_bytes.clone()));
    let greet = tarball(
        "greet-1",
        &[(
            "greet.sh",
            format!("#!/bin/sh\necho hello from {tag}\n").as_bytes(),
            0o644,
        )],
    );
    server.route("/greet.tar.gz", Route::Serve(greet.clone()));
    let recipe_text = format!(
        r#"[image]
name = "shared"
version = "1"
epoch = 1700000000

[[package]]
name = "motd"
version = "1"
kind = "local"
path = "files/etc"
install = "etc"

[[package]]
name = "prog"
version = "1"
kind = "file"
urls = ["{}"]
sha256 = "{}"
install = "bin/prog"

[[package]]
name = "greet"
version = "1"
urls = ["{}"]
sha256 = "{}"
install = ["bin/greet"]
script = """
install -D -m 0755 greet.sh "$OUT/bin/greet"
"""
"#,
        server.url("/prog"),
        sha256(&prog_bytes),
        server.url("/greet.tar.gz"),
        sha256(&greet),
    );
    Sources {
        server,
        recipe_text,
    }
}

/// A fresh environment holding the recipe.
fn env_with(src: &Sources) -> (Env, PathBuf) {
    let env = Env::new();
    env.write("files/etc/motd", "welcome\n");
    let recipe = env.write("shared.toml", &src.recipe_text);
    (env, recipe)
}

/// `cartbuild keygen -W` into a temporary directory: (dir, public, secret).
fn keygen() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let (public, secret) = (d.path().join("k.pub"), d.path().join("k.key"));
    let o = Command::new(env!("CARGO_BIN_EXE_cartbuild"))
        .args(["keygen", "--no-password", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (d, public, secret)
}

fn ok(o: &Output) -> String {
    let err = stderr(o);
    assert!(o.status.success(), "cartbuild failed:\n{err}");
    err
}

fn push_args(repo: &str, secret: &Path) -> Vec<String> {
    vec![
        "--cache-to".into(),
        repo.into(),
        "--sign-key".into(),
        secret.display().to_string(),
    ]
}

fn pull_args(repo: &str, public: &Path) -> Vec<String> {
    vec![
        "--cache-from".into(),
        repo.into(),
        "--cache-trust".into(),
        public.display().to_string(),
    ]
}

fn run(env: &Env, recipe: &Path, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.run(recipe, &args)
}

fn sidecar_manifest(env: &Env) -> serde_json::Value {
    let p = cartimage::manifest::sidecar(&env.image(), cartimage::manifest::MANIFEST_SUFFIX);
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn origin(m: &serde_json::Value, package: &str) -> serde_json::Value {
    m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("no package {package} in {m}"))["origin"]
        .clone()
}

/// Builds into a fresh cache, pushing to `repo`; returns the image's sha256.
fn push_build(src: &Sources, repo: &str, secret: &Path) -> String {
    let (env, recipe) = env_with(src);
    let err = ok(&run(&env, &recipe, &push_args(repo, secret)));
    assert_eq!(env.built(), ["greet"], "{err}");
    assert!(err.contains("cache: pushed 3 outputs to"), "{err}");
    let m = sidecar_manifest(&env);
    assert_eq!(origin(&m, "greet")["from"], "built", "{m}");
    sha256(&fs::read(env.image()).unwrap())
}

#[test]
fn a_second_empty_cache_pulls_everything_and_makes_the_same_image() {
    let registry = ci_registry();
    let repo = format!("oci://{registry}/{}", repository("shared-cache-pull"));
    let src = sources("pull");
    let (_k, public, secret) = keygen();
    let first = push_build(&src, &repo, &secret);

    // No sources reachable now: everything must come from the shared cache.
    src.server.route("/prog", Route::NotFound);
    src.server.route("/greet.tar.gz", Route::NotFound);
    let hits = src.server.total_hits();
    let (env, recipe) = env_with(&src);
    let err = ok(&run(&env, &recipe, &pull_args(&repo, &public)));
    assert_eq!(env.builds(), 0, "nothing compiled: {err}");
    assert_eq!(src.server.total_hits(), hits, "no source fetched: {err}");
    for p in ["motd", "prog", "greet"] {
        assert!(
            err.contains(&format!("[{p}] taken from the shared cache {repo}")),
            "{err}"
        );
    }
    assert_eq!(sha256(&fs::read(env.image()).unwrap()), first, "{err}");

    // The manifest beside the image and the SBOM say where each output came from.
    let m = sidecar_manifest(&env);
    let o = origin(&m, "greet");
    assert_eq!(o["from"], "cache", "{m}");
    assert_eq!(o["cache"], repo.as_str(), "{m}");
    assert!(o["entry"].as_str().unwrap().starts_with("sha256:"), "{m}");
    let key_text = fs::read_to_string(&public).unwrap();
    let id = o["signed_by"].as_str().unwrap();
    assert_eq!(id.len(), 16, "{m}");
    assert!(
        key_text.contains(id),
        "{id} is not the trusted key's ID: {key_text}"
    );
    let sbom = fs::read_to_string(cartimage::manifest::sidecar(
        &env.image(),
        cartimage::manifest::SBOM_SUFFIX,
    ))
    .unwrap();
    assert!(
        sbom.contains("output taken from the shared build cache"),
        "{sbom}"
    );

    // A third build in the same cache uses it as it is, and still says where it came from.
    let err = ok(&run(&env, &recipe, &pull_args(&repo, &public)));
    assert_eq!(env.builds(), 0, "{err}");
    assert_eq!(origin(&sidecar_manifest(&env), "greet")["from"], "cache");
}

#[test]
fn sources_come_from_the_shared_cache_like_from_a_mirror() {
    let registry = ci_registry();
    let repo = format!("oci://{registry}/{}", repository("shared-cache-sources"));
    let src = sources("sources");
    let (_k, public, secret) = keygen();
    push_build(&src, &repo, &secret);
    src.server.route("/prog", Route::NotFound);
    src.server.route("/greet.tar.gz", Route::NotFound);
    // Without the sandbox every build key differs, so no output matches: the packages are
    // built here, from sources found in the shared cache by their sha256.
    let (env, recipe) = env_with(&src);
    let mut args = pull_args(&repo, &public);
    args.push("--no-sandbox".into());
    let err = ok(&run(&env, &recipe, &args));
    assert_eq!(env.built(), ["greet"], "{err}");
    assert!(
        err.contains("[greet] source taken from the shared cache"),
        "{err}"
    );
    assert!(err.contains("no entry for build key"), "{err}");
}

#[test]
fn without_a_trusted_key_cache_from_is_refused() {
    let src = sources("refuse");
    let (env, recipe) = env_with(&src);
    let o = run(
        &env,
        &recipe,
        &["--cache-from".into(), "oci://127.0.0.1:5000/x/y".into()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--cache-from needs a key to trust"), "{err}");
    assert!(!env.image().exists());
    // The same from the environment.
    let o = env
        .command(&recipe)
        .env("CARTBUILD_CACHE_FROM", "oci://127.0.0.1:5000/x/y")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // And from the config file, with `--cache-to` lacking a key to sign with.
    env.write(
        "config/cartbuild/config.toml",
        "[cache]\nto = \"oci://127.0.0.1:5000/x/y\"\n",
    );
    let o = env.command(&recipe).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--cache-to needs a key to sign"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn untrusted_keys_missing_entries_tampered_layers_and_bad_signatures_fall_back() {
    let private = PrivateRegistry::start();
    let repo_path = repository("shared-cache-trust");
    let repo = format!("oci://{}/{repo_path}", private.authority());
    let src = sources("trust");
    let (_k, public, secret) = keygen();
    let (_o, other_public, _other_secret) = keygen();
    let first = push_build(&src, &repo, &secret);

    let fallback = |args: Vec<String>, needle: &str| {
        let (env, recipe) = env_with(&src);
        let err = ok(&run(&env, &recipe, &args));
        assert_eq!(env.built(), ["greet"], "built here: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(err.contains("building it here"), "{err}");
        assert_eq!(sha256(&fs::read(env.image()).unwrap()), first, "{err}");
        let m = sidecar_manifest(&env);
        assert_eq!(origin(&m, "greet")["from"], "built", "{m}");
        err
    };

    // An untrusted key.
    fallback(
        pull_args(&repo, &other_public),
        "its signature does not verify with any --cache-trust key",
    );
    // A repository without the entries.
    let empty = format!("oci://{}/{}-empty", private.authority(), repo_path);
    fallback(pull_args(&empty, &public), "no entry for build key");

    // Find greet's entry.
    let (env, recipe) = env_with(&src);
    ok(&run(&env, &recipe, &[]));
    let m = sidecar_manifest(&env);
    let key = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "greet")
        .unwrap()["build_key"]
        .as_str()
        .unwrap()
        .to_string();
    let reference = Reference::parse(&repo).unwrap();
    let mut client = Client::new(&reference, Access::Push).unwrap();
    let tag = format!("key-{key}");
    let (bytes, _) = client.manifest_by_tag(&tag).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();

    // A wrong signature: one byte of the signature line changed.
    let mut wrong = manifest.clone();
    let sig = wrong["annotations"]["dev.crashcart.cache.signature"]
        .as_str()
        .unwrap()
        .to_string();
    let lines: Vec<&str> = sig.lines().collect();
    let mut line = lines[1].as_bytes().to_vec();
    line[20] = if line[20] == b'A' { b'B' } else { b'A' };
    let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    changed[1] = String::from_utf8(line).unwrap();
    wrong["annotations"]["dev.crashcart.cache.signature"] =
        serde_json::Value::String(changed.join("\n") + "\n");
    client
        .put_manifest(&tag, &serde_json::to_vec(&wrong).unwrap())
        .unwrap();
    fallback(
        pull_args(&repo, &public),
        "its signature does not verify with any --cache-trust key",
    );

    // A tampered layer (the signed manifest put back).
    client.put_manifest(&tag, &bytes).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    tamper(&private.blob_data(layer.strip_prefix("sha256:").unwrap()));
    let err = fallback(
        pull_args(&repo, &public),
        "[greet] not taken from the shared cache",
    );
    assert!(err.contains("layer"), "{err}");
    assert!(err.contains("[prog] taken from the shared cache"), "{err}");
}

/// A relay to `upstream` that, after `allowed` requests, stops: closes every connection
/// and the listener (the registry went away halfway through).
struct DyingRelay {
    port: u16,
    seen: Arc<AtomicUsize>,
}

impl DyingRelay {
    fn start(upstream: String, allowed: usize) -> DyingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let dead = Arc::new(AtomicBool::new(false));
        let (seen2, dead2) = (seen.clone(), dead.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if dead2.load(Ordering::SeqCst) {
                    break; // the listener closes: connections are refused
                }
                let Ok(client) = client else { continue };
                let (seen, dead, upstream) = (seen2.clone(), dead2.clone(), upstream.clone());
                std::thread::spawn(move || relay(client, &upstream, &seen, &dead, allowed));
            }
        });
        DyingRelay { port, seen }
    }
}

fn relay(client: TcpStream, upstream: &str, seen: &AtomicUsize, dead: &AtomicBool, allowed: usize) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut s_read, mut c_write) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Both);
    });
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = match c_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let requests = buf[..n]
            .windows(8)
            .filter(|w| w.starts_with(b"GET /v2/") || w.starts_with(b"HEAD /v2"))
            .count();
        if seen.fetch_add(requests, Ordering::SeqCst) + requests > allowed {
            dead.store(true, Ordering::SeqCst);
            // Wake the accept loop so that it closes the listener.
            break;
        }
        if s_write.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = back.join();
}

#[test]
fn a_registry_that_dies_halfway_or_stalls_still_gives_a_correct_image() {
    let registry = ci_registry();
    let repo_path = repository("shared-cache-dies");
    let src = sources("dies");
    let (_k, public, secret) = keygen();
    let first = push_build(&src, &format!("oci://{registry}/{repo_path}"), &secret);

    // Dies after a few requests: some outputs may come through, the rest are built here.
    let relay = DyingRelay::start(registry.to_string(), 4);
    let repo = format!("oci://127.0.0.1:{}/{repo_path}", relay.port);
    let (env, recipe) = env_with(&src);
    let err = ok(&run(&env, &recipe, &pull_args(&repo, &public)));
    assert!(
        relay.seen.load(Ordering::SeqCst) > 4,
        "the relay died: {err}"
    );
    assert_eq!(sha256(&fs::read(env.image()).unwrap()), first, "{err}");
    assert!(err.contains("building it here"), "{err}");
    assert!(err.contains(&format!("giving up on {repo}")), "{err}");

    // Accepts connections and never answers: bounded by --read-timeout (0.5 s here).
    let stall = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stall.local_addr().unwrap().port();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let held2 = held.clone();
    std::thread::spawn(move || {
        for c in stall.incoming().flatten() {
            held2.lock().unwrap().push(c);
        }
    });
    let repo = format!("oci://127.0.0.1:{port}/{repo_path}");
    let (env, recipe) = env_with(&src);
    let started = Instant::now();
    let err = ok(&run(&env, &recipe, &pull_args(&repo, &public)));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}: {err}",
        started.elapsed()
    );
    assert_eq!(sha256(&fs::read(env.image()).unwrap()), first, "{err}");
    assert_eq!(env.built(), ["greet"], "{err}");
    assert!(err.contains(&format!("giving up on {repo}")), "{err}");

    // Nothing listens at all.
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = gone.local_addr().unwrap().port();
    drop(gone);
    let repo = format!("oci://127.0.0.1:{port}/{repo_path}");
    let (env, recipe) = env_with(&src);
    let err = ok(&run(&env, &recipe, &pull_args(&repo, &public)));
    assert_eq!(sha256(&fs::read(env.image()).unwrap()), first, "{err}");
    // A push to it is a warning, not a failure.
    let (env, recipe) = env_with(&src);
    let err = ok(&run(&env, &recipe, &push_args(&repo, &secret)));
    assert!(err.contains("cannot push to the shared cache"), "{err}");
}

#[test]
fn two_builders_pushing_the_same_keys_at_once_both_succeed() {
    let registry = ci_registry();
    let repo = format!("oci://{registry}/{}", repository("shared-cache-race"));
    let src = sources("race");
    let (_k, public, secret) = keygen();
    let (a, ra) = env_with(&src);
    let (b, rb) = env_with(&src);
    let args = push_args(&repo, &secret);
    let mut ca = a.command(&ra);
    ca.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut cb = b.command(&rb);
    cb.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (pa, pb) = (ca.spawn().unwrap(), cb.spawn().unwrap());
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    // Both succeed without a warning; which of them pushes which entry first is a race
    // (the other then finds the tag and pushes nothing for it).
    for err in [ok(&oa), ok(&ob)] {
        assert!(!err.contains("cannot push"), "{err}");
    }
    assert!(
        ok(&oa).contains("cache: pushed") || ok(&ob).contains("cache: pushed"),
        "{}\n{}",
        stderr(&oa),
        stderr(&ob)
    );
    assert_eq!(fs::read(a.image()).unwrap(), fs::read(b.image()).unwrap());
    // One entry per key, and it is good.
    let (env, recipe) = env_with(&src);
    let err = ok(&run(&env, &recipe, &pull_args(&repo, &public)));
    assert_eq!(env.builds(), 0, "{err}");
}

#[test]
fn release_builds_everything_even_with_a_warm_shared_cache_and_may_push() {
    let registry = ci_registry();
    let repo = format!("oci://{registry}/{}", repository("shared-cache-release"));
    let src = sources("release");
    let (_k, public, secret) = keygen();
    let first = push_build(&src, &repo, &secret);
    let (env, recipe) = env_with(&src);
    let out = env.dir.path().join("release");
    let pushed_to = format!("{repo}-from-release");
    let o = Command::new(env!("CARGO_BIN_EXE_cartbuild"))
        .env("XDG_CONFIG_HOME", env.dir.path().join("config"))
        .env("CARTBUILD_CACHE_FROM", &repo)
        .env("CARTBUILD_CACHE_TRUST", &public)
        .env_remove("SOURCE_DATE_EPOCH")
        .arg("release")
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(env.cache())
        .args(["--cache-to", &pushed_to, "--sign-key"])
        .arg(&secret)
        .output()
        .unwrap();
    let err = ok(&o);
    assert!(!err.contains("taken from the shared cache"), "{err}");
    let builds = err.lines().filter(|l| *l == "[greet] build").count();
    assert_eq!(builds, 2, "built twice: {err}");
    assert!(
        err.contains(&format!("cache: pushed 3 outputs to {pushed_to}")),
        "{err}"
    );
    assert_eq!(sha256(&fs::read(out.join("shared-1.img")).unwrap()), first);
    // What the release pushed serves a build.
    let (env, recipe) = env_with(&src);
    let err = ok(&run(&env, &recipe, &pull_args(&pushed_to, &public)));
    assert_eq!(env.builds(), 0, "{err}");
}

#[test]
fn a_registry_answering_garbage_is_built_around() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = c.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nDocker-Content-Digest: nonsense\r\n\r\n{garbage}",
                    );
                }
            });
        }
    });
    let src = sources("garbage");
    let (_k, public, _secret) = keygen();
    let (reference, reference_recipe) = env_with(&src);
    ok(&run(&reference, &reference_recipe, &[]));
    let repo = format!("oci://127.0.0.1:{port}/garbage");
    let (env, recipe) = env_with(&src);
    let err = ok(&run(&env, &recipe, &pull_args(&repo, &public)));
    assert_eq!(env.built(), ["greet"], "{err}");
    assert!(
        err.contains("[greet] not taken from the shared cache"),
        "{err}"
    );
    assert_eq!(
        fs::read(env.image()).unwrap(),
        fs::read(reference.image()).unwrap()
    );
    assert!(
        !err.contains("[greet] source taken from the shared cache"),
        "{err}"
    );
}
