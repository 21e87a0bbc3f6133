//! cartbuild against inputs made to hurt it: archives whose links lead out of
//! the staging directory, decompression and entry-count bombs, a cache whose
//! sources and outputs were changed behind its back, outputs that would pile up
//! in it, and the hard links every kind of package must keep. Archives are made here and served over real HTTP
//! on 127.0.0.1; every run is the real binary. Needs e2fsprogs (debugfs).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

/// One entry of a test archive.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// A tar of `entries`, unchecked (tar::Builder would refuse some names).
fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        let (name, kind, mode, link, data): (&str, _, u32, Option<&str>, &[u8]) = match e {
            E::File(n, d) => (n, tar::EntryType::Regular, 0o644, None, d),
            E::Dir(n) => (n, tar::EntryType::Directory, 0o755, None, b""),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, 0o777, Some(t), b""),
            E::HardLink(n, t) => (n, tar::EntryType::Link, 0o755, Some(t), b""),
        };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        match link {
            // append_link writes GNU long-link records when needed.
            Some(t) => b.append_link(&mut h, name, t).unwrap(),
            None => b.append_data(&mut h, name, data).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A `kind = "archive"` package served by `server`.
fn archive_pkg(server: &Server, name: &str, bytes: Vec<u8>, extra: &str) -> String {
    let path = format!("/{name}.tar");
    let sha = sha256(&bytes);
    server.route(&path, Route::Serve(bytes));
    format!(
        "[[package]]\nname = \"{name}\"\nversion = \"1\"\nkind = \"archive\"\nurls = [\"{}\"]\nsha256 = \"{sha}\"\n{extra}\n",
        server.url(&path)
    )
}

const HEAD: &str = "[image]\nname = \"test\"\nversion = \"1.0\"\nepoch = 1700000000\n\n";

/// No build output in the cache (a failed run left nothing in builds/).
fn assert_no_builds(env: &Env) {
    let left: Vec<_> = fs::read_dir(env.cache().join("builds"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in builds/: {left:?}");
}

#[test]
fn two_packages_cannot_write_outside_the_staging_directory() {
    let env = Env::new();
    let server = Server::start();
    // Where the links would lead: `esc` resolves to `/` from the staging
    // directory (12 levels up is past the root from anywhere under /tmp).
    let outside = tempfile::tempdir().unwrap();
    let rel_outside = outside.path().strip_prefix("/").unwrap().to_str().unwrap();
    let deep = format!("{}{}", "a/".repeat(12), "../".repeat(12));
    let deep = deep.trim_end_matches('/');
    let links = tar(&[
        E::Dir("links-1/"),
        E::Symlink("links-1/a", "."),
        E::Symlink("links-1/esc", deep),
    ]);
    let pwned = format!("payload-1/esc/{rel_outside}/pwned");
    let payload = tar(&[E::File(&pwned, b"written outside")]);
    let text = format!(
        "{HEAD}{}{}",
        archive_pkg(&server, "links", gz(&links), "install = [\"a\", \"esc\"]"),
        archive_pkg(&server, "payload", gz(&payload), "install = [\"esc\"]"),
    );
    let recipe = env.write("r.toml", &text);
    let o = env.run(&recipe, &[]);
    assert_fails(
        &env,
        &o,
        &["package payload installs the directory esc over a symlink installed by package links"],
    );
    assert!(
        !outside.path().join("pwned").exists(),
        "a file was written outside"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

    // With --staged the same: the directory given is the root, nothing leaves it.
    let staged = env.dir.path().join("staged");
    let o = env.run(&recipe, &["--staged", staged.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_link_chain_leaving_the_root_is_refused() {
    let env = Env::new();
    let server = Server::start();
    // `x` counts as harmless by its text (two names down, two `..` up) but
    // resolves to the parent of the image root.
    let chain = tar(&[
        E::Dir("chain-1/"),
        E::Symlink("chain-1/up", "."),
        E::Symlink("chain-1/x", "up/up/../../etc"),
    ]);
    let text = format!(
        "{HEAD}{}",
        archive_pkg(&server, "chain", gz(&chain), "install = [\"up\", \"x\"]")
    );
    let o = env.run(&env.write("r.toml", &text), &[]);
    assert_fails(
        &env,
        &o,
        &[
            "package chain: symlink x -> up/up/../../etc leaves the image when resolved",
            "through up -> ., '..' climbs above the image root",
        ],
    );
}

#[test]
fn a_directory_over_another_packages_link_is_a_conflict() {
    let env = Env::new();
    let server = Server::start();
    let a = tar(&[
        E::File("a-1/bin/tool", b"#!/bin/sh\n"),
        E::Symlink("a-1/share", "bin"),
    ]);
    let b = tar(&[E::File("b-1/share/doc/README", b"doc")]);
    let text = format!(
        "{HEAD}{}{}",
        archive_pkg(&server, "a", gz(&a), "install = [\"bin\", \"share\"]"),
        archive_pkg(&server, "b", gz(&b), "install = [\"share\"]"),
    );
    let o = env.run(&env.write("r.toml", &text), &[]);
    assert_fails(
        &env,
        &o,
        &["package b installs the directory share over a symlink installed by package a"],
    );
}

/// `size` bytes of zeros in one file, as a tar streamed into `compress`.
fn bomb<W: Write>(compress: W, size: u64) -> W {
    let mut b = tar::Builder::new(compress);
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "bomb-1/zeros", std::io::repeat(0).take(size))
        .unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_zstd_bomb_is_refused_and_leaves_nothing() {
    let env = Env::new();
    let server = Server::start();
    let enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let bytes = bomb(enc, 64 << 20).finish().unwrap();
    assert!(bytes.len() < 64 << 10, "{} bytes", bytes.len());
    let text = format!(
        "{HEAD}{}",
        archive_pkg(
            &server,
            "bomb",
            bytes,
            "install = [\"zeros\"]\nmax_unpacked_size = \"16M\""
        )
    );
    let o = env.run(&env.write("r.toml", &text), &[]);
    assert_fails(
        &env,
        &o,
        &[
            "package bomb: step unpack failed",
            "it unpacks to more than 16.0 MiB (max_unpacked_size = \"16M\"",
            "raise max_unpacked_size in its [[package]] table, e.g. max_unpacked_size = \"32M\"",
        ],
    );
    assert_no_builds(&env);
}

#[test]
fn a_gzip_bomb_in_a_source_is_refused_before_its_script() {
    let env = Env::new();
    let server = Server::start();
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let bytes = bomb(enc, 64 << 20).finish().unwrap();
    server.route("/bomb.tar.gz", Route::Serve(bytes.clone()));
    let text = hello_recipe(&env, &[server.url("/bomb.tar.gz")], &sha256(&bytes))
        .replace("script = ", "max_unpacked_size = \"1M\"\nscript = ");
    let o = env.run(&env.write("r.toml", &text), &[]);
    assert_fails(
        &env,
        &o,
        &[
            "package hello: step unpack failed",
            "more than 1.0 MiB (max_unpacked_size = \"1M\"",
        ],
    );
    assert_eq!(env.builds(), 0, "the script ran");
    assert_no_builds(&env);
}

#[test]
fn an_entry_count_bomb_is_refused() {
    let env = Env::new();
    let server = Server::start();
    let names: Vec<String> = (0..300).map(|i| format!("many-1/f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| E::File(n, b"")).collect();
    let text = format!(
        "{HEAD}{}",
        archive_pkg(
            &server,
            "many",
            gz(&tar(&entries)),
            "install = [\"f1\"]\nmax_entries = 100"
        )
    );
    let o = env.run(&env.write("r.toml", &text), &[]);
    assert_fails(
        &env,
        &o,
        &[
            "package many: step unpack failed",
            "it holds more than 100 entries (max_entries = 100)",
            "raise max_entries in its [[package]] table, e.g. max_entries = 200",
        ],
    );
    assert_no_builds(&env);
}

#[test]
fn bad_limits_are_refused_with_the_fix() {
    for (extra, want) in [
        (
            "max_unpacked_size = \"lots\"",
            "max_unpacked_size \"lots\" is not a size",
        ),
        (
            "max_entries = 0",
            "max_entries = 0 would refuse every archive",
        ),
    ] {
        let env = Env::new();
        let server = Server::start();
        let text = format!(
            "{HEAD}{}",
            archive_pkg(&server, "p", gz(&tar(&[E::File("p/bin/x", b"x")])), extra)
        );
        let o = env.run(&env.write("r.toml", &text), &[]);
        assert_fails(&env, &o, &["package p", want]);
    }
    let env = Env::new();
    env.write("files/x", "x");
    let text = format!(
        "{HEAD}[[package]]\nname = \"l\"\nversion = \"1\"\nkind = \"local\"\npath = \"files\"\ninstall = \"etc\"\nmax_entries = 5\n"
    );
    let o = env.run(&env.write("r.toml", &text), &[]);
    assert_fails(&env, &o, &["kind = \"local\" is not unpacked"]);
}

/// A recipe with one archive package `tools` holding `bin/tool` = `content`.
fn tools(server: &Server, content: &[u8]) -> (String, Vec<u8>) {
    let bytes = gz(&tar(&[E::File("tools-1/bin/tool", content)]));
    let text = format!(
        "{HEAD}{}",
        archive_pkg(server, "tools", bytes.clone(), "install = [\"bin\"]")
    );
    (text, bytes)
}

fn manifest(env: &Env) -> serde_json::Value {
    serde_json::from_slice(&fs::read(env.dir.path().join("out/test.img.manifest.json")).unwrap())
        .unwrap()
}

#[test]
fn a_tampered_cached_source_is_fetched_again_never_used() {
    let env = Env::new();
    let server = Server::start();
    let (text, bytes) = tools(&server, b"the pinned tool\n");
    let sha = sha256(&bytes);
    let recipe = env.write("r.toml", &text);
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.total_hits(), 1);

    // A build script (or anyone) writes its own tarball under the pinned hash,
    // and the output is gone, so the next build needs the source.
    let cached = env.cache().join("sources/sha256").join(&sha);
    let evil = gz(&tar(&[E::File("tools-1/bin/tool", b"planted\n")]));
    fs::write(&cached, &evil).unwrap();
    fs::remove_dir_all(env.cache().join("builds")).unwrap();

    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "cartbuild: warning: package tools: the cached source {} is not the pinned file (sha256 {}, pinned {sha}): removed it; fetching it again",
            cached.display(),
            sha256(&evil)
        )),
        "{err}"
    );
    assert_eq!(server.total_hits(), 2, "not fetched again");
    assert_eq!(fs::read(&cached).unwrap(), bytes);
    let out = env.dir.path().join("tool.out");
    image_file(&env.image(), "/bin/tool", &out);
    assert_eq!(fs::read(&out).unwrap(), b"the pinned tool\n");
    let m = manifest(&env);
    assert_eq!(
        m["packages"][0]["sources"][0]["sha256"],
        sha.as_str(),
        "{m}"
    );
    let tool = sha256(b"the pinned tool\n");
    assert_eq!(m["files"][2]["sha256"], tool.as_str(), "{m}");
    assert_cache_verified(&env);

    // Offline, it cannot be fetched again: refused, not used.
    fs::write(&cached, &evil).unwrap();
    fs::remove_dir_all(env.cache().join("builds")).unwrap();
    fs::remove_dir_all(env.dir.path().join("out")).unwrap();
    let o = env.run(&recipe, &["--offline"]);
    assert_fails(
        &env,
        &o,
        &[
            &format!("package tools: {} is not the pinned file", cached.display()),
            "run once without --offline to fetch it again",
        ],
    );
    assert!(!cached.exists());
}

#[test]
fn a_tampered_cached_output_is_rebuilt() {
    let env = Env::new();
    let server = Server::start();
    let (text, _) = tools(&server, b"the pinned tool\n");
    let recipe = env.write("r.toml", &text);
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let builds: Vec<_> = fs::read_dir(env.cache().join("builds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(builds.len(), 1);
    let build = &builds[0];
    assert!(build.join("record.json").is_file());
    let image_sha = sha256(&fs::read(env.image()).unwrap());

    // Unchanged: used as is.
    let o = env.run(&recipe, &[]);
    assert!(stderr(&o).contains("[tools] cached"), "{}", stderr(&o));

    // Other bytes in the cached output: rebuilt with a warning.
    fs::write(build.join("out/bin/tool"), b"planted\n").unwrap();
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "cartbuild: warning: package tools: the cached output {} does not match its record",
            build.display()
        )) && err.contains("removed it; building it again"),
        "{err}"
    );
    assert!(!err.contains("[tools] cached"), "{err}");
    assert_eq!(
        fs::read(build.join("out/bin/tool")).unwrap(),
        b"the pinned tool\n"
    );
    assert_eq!(sha256(&fs::read(env.image()).unwrap()), image_sha);
    assert_cache_verified(&env);

    // An added file is a change too, and so is a missing record.
    fs::write(build.join("out/bin/extra"), b"x").unwrap();
    let o = env.run(&recipe, &[]);
    assert!(
        stderr(&o).contains("does not match its record"),
        "{}",
        stderr(&o)
    );
    assert!(!build.join("out/bin/extra").exists());
    fs::remove_file(build.join("record.json")).unwrap();
    let o = env.run(&recipe, &[]);
    assert!(stderr(&o).contains("has no record.json"), "{}", stderr(&o));
    assert_eq!(sha256(&fs::read(env.image()).unwrap()), image_sha);
}

/// `debugfs -R "stat PATH"` of the image: (inode, link count).
fn image_inode(image: &Path, path: &str) -> (u64, u64) {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .expect("debugfs is missing: apt-get install e2fsprogs");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        let at = text
            .find(name)
            .unwrap_or_else(|| panic!("no {name} for {path}: {text}"));
        text[at + name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("Inode:"), field("Links:"))
}

#[test]
fn hard_links_are_kept_for_local_and_archive_packages() {
    let env = Env::new();
    let server = Server::start();
    env.write("files/bin/box", "#!/bin/sh\necho box\n");
    fs::hard_link(
        env.dir.path().join("files/bin/box"),
        env.dir.path().join("files/bin/box-alias"),
    )
    .unwrap();
    let archive = tar(&[
        E::File("arc-1/bin/busy", b"#!/bin/sh\necho busy\n"),
        E::HardLink("arc-1/bin/busy-ls", "arc-1/bin/busy"),
    ]);
    let text = format!(
        "{HEAD}{}[[package]]\nname = \"loc\"\nversion = \"1\"\nkind = \"local\"\npath = \"files\"\ninstall = \".\"\n",
        archive_pkg(&server, "arc", gz(&archive), "install = [\"bin\"]"),
    );
    let staged = env.dir.path().join("staged");
    let o = env.run(
        &env.write("r.toml", &text),
        &["--staged", staged.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for (a, b) in [("bin/box", "bin/box-alias"), ("bin/busy", "bin/busy-ls")] {
        let ma = fs::metadata(staged.join(a)).unwrap();
        let mb = fs::metadata(staged.join(b)).unwrap();
        assert_eq!(
            ma.ino(),
            mb.ino(),
            "{a} and {b} are two files in the staged tree"
        );
        let (ia, la) = image_inode(&env.image(), &format!("/{a}"));
        let (ib, _) = image_inode(&env.image(), &format!("/{b}"));
        assert_eq!((ia, la), (ib, 2), "{a} and {b} in the image");
    }
    assert_fsck_clean(&env.image());
}

/// Names under `builds/` of the cache.
fn outputs(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(env.cache().join("builds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_archive_keeps_in_the_cache_only_what_it_installs() {
    let env = Env::new();
    let server = Server::start();
    let big = vec![0u8; 4 << 20];
    let archive = tar(&[
        E::File("arc-1/bin/tool", b"#!/bin/sh\necho tool\n"),
        E::File("arc-1/share/big", &big),
        E::Symlink("arc-1/bin/alias", "tool"),
    ]);
    let text = format!(
        "{HEAD}{}",
        archive_pkg(&server, "arc", gz(&archive), "install = [\"bin\"]")
    );
    let o = env.run(&env.write("r.toml", &text), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let [key] = &outputs(&env)[..] else {
        panic!("one output expected: {:?}", outputs(&env));
    };
    let out = env.cache().join("builds").join(key).join("out");
    assert!(out.join("bin/tool").is_file());
    assert!(out.join("bin/alias").is_symlink());
    assert!(
        !out.join("share").exists(),
        "the 4 MiB file nothing installs is in the cache"
    );
    assert!(read_from_image(&env.image(), "/bin/tool").starts_with(b"#!/bin/sh"));
}

/// A recipe with one local package whose file holds `content`.
fn local_recipe(env: &Env, name: &str, content: &str) -> std::path::PathBuf {
    env.write(&format!("{name}/files/etc/{name}"), content);
    env.write(
        &format!("{name}/r.toml"),
        &format!(
            "{HEAD}[[package]]\nname = \"{name}\"\nversion = \"1\"\nkind = \"local\"\npath = \"files\"\ninstall = \".\"\n"
        ),
    )
}

#[test]
fn superseded_outputs_leave_the_cache_when_it_is_not_in_use() {
    let env = Env::new();
    let build = |recipe: &Path| {
        let o = env.run(recipe, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let a = local_recipe(&env, "a", "1");
    build(&a);
    let first = outputs(&env);
    assert_eq!(first.len(), 1);

    // An edit keeps the previous generation: going back rebuilds nothing.
    local_recipe(&env, "a", "2");
    build(&a);
    let second = outputs(&env);
    assert_eq!(second.len(), 2, "{second:?}");
    // A third edit supersedes the first: it goes.
    local_recipe(&env, "a", "3");
    let err = build(&a);
    let third = outputs(&env);
    assert_eq!(third.len(), 2, "{third:?}");
    assert!(!third.contains(&first[0]), "{third:?}");
    assert!(err.contains("cache: removed 1 outputs"), "{err}");

    // While another cartbuild has the cache open (as every one does, shared), nothing is
    // removed: what it uses may not be recorded yet.
    let held = fs::File::open(env.cache().join("locks/cache.lock")).unwrap();
    held.lock_shared().unwrap();
    local_recipe(&env, "a", "4");
    build(&a);
    assert_eq!(
        outputs(&env).len(),
        3,
        "collected while the cache was in use"
    );
    drop(held);

    // A second recipe's outputs stay as long as its file exists, and go once it is gone.
    let before = outputs(&env);
    let b = local_recipe(&env, "b", "1");
    build(&b);
    // a's two latest and b's.
    assert_eq!(outputs(&env).len(), 3, "{:?}", outputs(&env));
    let b_out: Vec<String> = outputs(&env)
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect();
    fs::remove_dir_all(env.dir.path().join("b")).unwrap();
    local_recipe(&env, "a", "5");
    build(&a);
    let last = outputs(&env);
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(b_out.len(), 1);
    assert!(
        !last.contains(&b_out[0]),
        "b's output outlived its recipe: {last:?}"
    );
    let roots = fs::read_dir(env.cache().join("roots")).unwrap().count();
    assert_eq!(roots, 1, "the record of the deleted recipe is left");
}

#[test]
fn strip_runs_in_the_sandbox() {
    // binutils parses what a build script or a download made: an ELF crafted against it
    // must get no further than the script could. A strip that reports where it runs.
    let env = Env::new();
    let server = Server::start();
    let secret = env.write("secret", "key");
    let probe = env.write(
        "fake/strip",
        &format!(
            "#!/bin/sh\necho \"probe uid=$(id -u) secret=$(cat {} 2>/dev/null || echo unreadable)\" >&2\nexit 1\n",
            secret.display()
        ),
    );
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o755)).unwrap();
    let elf = fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let archive = tar(&[E::File("arc-1/bin/box", &elf)]);
    let recipe = env.write(
        "r.toml",
        &format!(
            "{HEAD}{}",
            archive_pkg(&server, "arc", gz(&archive), "install = [\"bin\"]")
        ),
    );
    let path = format!(
        "{}:{}",
        probe.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        let o = env
            .command(&recipe)
            .args(args)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(!o.status.success(), "the probe strip fails the build");
        stderr(&o)
    };
    let err = run(&[]);
    assert!(
        err.contains("probe uid=1000 secret=unreadable"),
        "strip did not run in the sandbox: {err}"
    );
    // The same probe outside the sandbox (what the test would see without it).
    let err = run(&["--no-sandbox"]);
    assert!(err.contains("secret=key"), "{err}");
    assert_no_builds(&env);
}

#[test]
fn a_package_replaces_another_packages_files_only_where_it_says_so() {
    // A busybox-like package (one file, hard-linked as its applets) and a procps-like one
    // installing one of those names: an error, unless the second replaces the first;
    // then its file is the one in the image, whichever comes first in the recipe, and the
    // other names stay hard links of the first package's file.
    let server = Server::start();
    let boxed = tar(&[
        E::File("box-1/bin/box", b"#!/bin/sh\necho box\n"),
        E::HardLink("box-1/bin/ps", "box-1/bin/box"),
        E::HardLink("box-1/bin/ls", "box-1/bin/box"),
    ]);
    let procps = tar(&[E::File("procps-1/bin/ps", b"#!/bin/sh\necho procps\n")]);
    let boxed = archive_pkg(&server, "box", gz(&boxed), "install = [\"bin\"]");
    for (extra, first_box) in [
        ("", true),
        ("replaces = [\"box\"]\n", true),
        ("replaces = [\"box\"]\n", false),
    ] {
        let env = Env::new();
        let procps = archive_pkg(
            &server,
            "procps",
            gz(&procps),
            &format!("install = [\"bin/ps\"]\n{extra}"),
        );
        let text = if first_box {
            format!("{HEAD}{boxed}{procps}")
        } else {
            format!("{HEAD}{procps}{boxed}")
        };
        let staged = env.dir.path().join("staged");
        let o = env.run(
            &env.write("r.toml", &text),
            &["--staged", staged.to_str().unwrap()],
        );
        if extra.is_empty() {
            assert_fails(&env, &o, &["bin/ps"]);
            continue;
        }
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            fs::read_to_string(staged.join("bin/ps")).unwrap(),
            "#!/bin/sh\necho procps\n"
        );
        let (b, l) = (
            fs::metadata(staged.join("bin/box")).unwrap(),
            fs::metadata(staged.join("bin/ls")).unwrap(),
        );
        assert_eq!((b.ino(), b.nlink()), (l.ino(), 2), "box's other names");
        let manifest: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(format!("{}.manifest.json", env.image().display())).unwrap(),
        )
        .unwrap();
        let ps: Vec<&serde_json::Value> = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["path"] == "bin/ps")
            .collect();
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert_eq!(ps[0]["package"], "procps");
        assert_fsck_clean(&env.image());
    }
}
