//! cartbuild end to end on small synthetic packages: real HTTP on 127.0.0.1, real
//! musl builds of a hello.c, real images. Needs musl-tools and e2fsprogs (both in
//! `.ci/packages`); a missing one makes the tests fail, not skip.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn run_hello(env: &Env, image: &Path) -> String {
    let bin = env.dir.path().join("hello.out");
    let _ = fs::remove_file(&bin);
    image_file(image, "/bin/hello", &bin);
    let info = cartbuild::elf::inspect(&bin)
        .unwrap()
        .expect("hello is ELF");
    assert!(
        info.is_static(),
        "hello in the image is not static: {info:?}"
    );
    let out = Command::new(&bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn build_succeeds_then_hits_every_cache() {
    let env = Env::new();
    let (server, _, sha) = hello_server("hello from crashcart");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
    );

    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        env.image().display().to_string()
    );
    assert_eq!(server.total_hits(), 1);
    assert_eq!(env.builds(), 1);
    assert_fsck_clean(&env.image());
    assert_eq!(run_hello(&env, &env.image()), "hello from crashcart");
    let image_sha = sha256(&fs::read(env.image()).unwrap());
    let sidecar = fs::read_to_string(env.dir.path().join("out/test.img.sha256")).unwrap();
    assert_eq!(sidecar, format!("{image_sha}  test.img\n"));
    assert_eq!(cached_sources(&env), std::slice::from_ref(&sha));
    assert_cache_verified(&env);

    // Second build: no request, no build, the same image.
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("[hello] cached"), "{}", stderr(&o));
    assert_eq!(server.total_hits(), 1, "the second build made a request");
    assert_eq!(env.builds(), 1, "the second build rebuilt");
    assert_eq!(sha256(&fs::read(env.image()).unwrap()), image_sha);

    // Sources cached but build cache gone: --offline rebuilds without a request.
    fs::remove_dir_all(env.cache().join("builds")).unwrap();
    let o = env.run(&recipe, &["--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.total_hits(), 1);
    assert_eq!(env.builds(), 2);
    assert_eq!(
        sha256(&fs::read(env.image()).unwrap()),
        image_sha,
        "rebuild is not reproducible"
    );
}

#[test]
fn two_cold_builds_in_different_caches_give_the_same_image() {
    let (server, _, sha) = hello_server("same bytes");
    let a = Env::new();
    let b = Env::new();
    // The same recipe bytes (its hash is in the manifest): both count builds
    // in a's counter file.
    let text = hello_recipe(&a, &[server.url("/hello.tar.gz")], &sha);
    for env in [&a, &b] {
        // A second apart, so a clock leaking into the image would show.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let recipe = env.write("r.toml", &text);
        let o = env.run(&recipe, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        sha256(&fs::read(a.image()).unwrap()),
        sha256(&fs::read(b.image()).unwrap())
    );
    // And so are the files beside it.
    for suffix in [".sha256", ".manifest.json", ".spdx.json"] {
        let name = format!("out/test.img{suffix}");
        assert_eq!(
            fs::read(a.dir.path().join(&name)).unwrap(),
            fs::read(b.dir.path().join(&name)).unwrap(),
            "{name} differs between the two builds"
        );
    }
}

#[test]
fn leftovers_of_an_interrupted_run_are_removed() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
    );
    // What a killed build and a cut download leave behind.
    fs::create_dir_all(env.cache().join("tmp/work-0123456789ab/src")).unwrap();
    fs::write(env.cache().join("tmp/.tmpAbCdEf"), b"half a download").unwrap();
    // And a toolchain directory or zig seed half made (its temporary sibling).
    let half = env.cache().join("toolchain/.toolchain-AbCdEf/cache/h");
    fs::create_dir_all(&half).unwrap();
    fs::write(half.join("manifest"), b"half a seed").unwrap();
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_cache_verified(&env);
    let left: Vec<_> = fs::read_dir(env.cache().join("toolchain"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.is_empty() && left.iter().all(|n| !n.starts_with('.')),
        "toolchain/ after the run: {left:?}"
    );
}

#[test]
fn falls_back_after_404() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    server.route("/missing.tar.gz", Route::NotFound);
    let urls = [server.url("/missing.tar.gz"), server.url("/hello.tar.gz")];
    let recipe = env.write("r.toml", &hello_recipe(&env, &urls, &sha));
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A 404 is permanent: no retry.
    assert_eq!(server.hits("/missing.tar.gz"), 1);
    assert_eq!(server.hits("/hello.tar.gz"), 1);
    assert!(stderr(&o).contains("HTTP 404 Not Found"), "{}", stderr(&o));
}

#[test]
fn falls_back_after_reset_with_retries() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    server.route("/reset.tar.gz", Route::Reset);
    let urls = [server.url("/reset.tar.gz"), server.url("/hello.tar.gz")];
    let recipe = env.write("r.toml", &hello_recipe(&env, &urls, &sha));
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Transient: one attempt and one retry (--retries 1), then the next URL.
    assert_eq!(server.hits("/reset.tar.gz"), 2, "{}", stderr(&o));
    assert_eq!(server.hits("/hello.tar.gz"), 1);
    assert!(stderr(&o).contains("retrying"), "{}", stderr(&o));
}

#[test]
fn falls_back_after_read_timeout() {
    let env = Env::new();
    let (server, src, sha) = hello_server("x");
    server.route("/stall.tar.gz", Route::Stall(src));
    let urls = [server.url("/stall.tar.gz"), server.url("/hello.tar.gz")];
    let recipe = env.write("r.toml", &hello_recipe(&env, &urls, &sha));
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.hits("/stall.tar.gz"), 2);
    assert_eq!(server.hits("/hello.tar.gz"), 1);
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    assert_cache_verified(&env);
}

#[test]
fn truncated_body_is_retried_then_falls_back() {
    let env = Env::new();
    let (server, src, sha) = hello_server("x");
    let n = src.len() / 2;
    server.route("/short.tar.gz", Route::Truncate(src, n));
    let urls = [server.url("/short.tar.gz"), server.url("/hello.tar.gz")];
    let recipe = env.write("r.toml", &hello_recipe(&env, &urls, &sha));
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.hits("/short.tar.gz"), 2);
    assert_eq!(server.hits("/hello.tar.gz"), 1);
    assert_eq!(cached_sources(&env), [sha]);
}

#[test]
fn truncated_body_alone_fails_and_caches_nothing() {
    let env = Env::new();
    let (server, src, sha) = hello_server("x");
    let n = src.len() / 2;
    server.route("/short.tar.gz", Route::Truncate(src, n));
    let url = server.url("/short.tar.gz");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, std::slice::from_ref(&url), &sha),
    );
    let o = env.run(&recipe, &[]);
    assert_fails(
        &env,
        &o,
        &["package hello: no URL gave the pinned file", &url],
    );
    assert!(cached_sources(&env).is_empty());
    assert_eq!(env.builds(), 0);
}

#[test]
fn follows_redirects() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    server.route("/moved.tar.gz", Route::Redirect("/hello.tar.gz".into()));
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/moved.tar.gz")], &sha),
    );
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.hits("/moved.tar.gz"), 1);
    assert_eq!(server.hits("/hello.tar.gz"), 1);
}

#[test]
fn hash_mismatch_names_url_and_both_hashes_and_keeps_nothing() {
    let env = Env::new();
    let (server, src, _) = hello_server("x");
    let wrong = "0".repeat(64);
    let url = server.url("/hello.tar.gz");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, std::slice::from_ref(&url), &wrong),
    );
    let o = env.run(&recipe, &[]);
    let actual = sha256(&src);
    let line = assert_fails(
        &env,
        &o,
        &[
            &url,
            "sha256 mismatch",
            &format!("expected {wrong}"),
            &format!("got {actual}"),
        ],
    );
    assert!(line.contains("package hello"), "{line}");
    assert!(cached_sources(&env).is_empty());
    // Permanent: not retried.
    assert_eq!(server.hits("/hello.tar.gz"), 1);
}

#[test]
fn every_unreachable_url_is_named_with_its_reason() {
    let env = Env::new();
    let (server, src, sha) = hello_server("x");
    server.route("/gone", Route::NotFound);
    server.route("/reset", Route::Reset);
    server.route("/stall", Route::Stall(src));
    // Port 1 on 127.0.0.1: nothing listens, the connection is refused.
    let urls = [
        server.url("/gone"),
        server.url("/reset"),
        server.url("/stall"),
        "http://127.0.0.1:1/refused.tar.gz".to_string(),
        "mirror://nowhere/pool/x.tar.gz".to_string(),
        "file:///nonexistent/cartbuild-test.tar.gz".to_string(),
    ];
    let recipe = env.write("r.toml", &hello_recipe(&env, &urls, &sha));
    let o = env.run(&recipe, &[]);
    let line = assert_fails(&env, &o, &["package hello: no URL gave the pinned file"]);
    for (url, reason) in [
        (&urls[0], "HTTP 404"),
        (&urls[1], "reset"),
        (&urls[2], "timed out"),
        (&urls[3], "cannot connect"),
        (&urls[4], "--mirror nowhere=URL"),
        (&urls[5], "cannot open"),
    ] {
        let at = line
            .find(url.as_str())
            .unwrap_or_else(|| panic!("{url} not named: {line}"));
        let rest = &line[at..];
        let this = rest.split("; ").next().unwrap();
        assert!(this.contains(reason), "{url}: {reason:?} not in {this:?}");
    }
}

#[test]
fn mirror_from_flag_and_environment() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    server.route(
        "/pool/h/hello.tar.gz",
        Route::Redirect("/hello.tar.gz".into()),
    );
    let recipe = env.write(
        "r.toml",
        &hello_recipe(
            &env,
            &["mirror://testmirror/pool/h/hello.tar.gz".into()],
            &sha,
        ),
    );
    let o = env.run(
        &recipe,
        &["--mirror", &format!("testmirror={}", server.base())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.hits("/pool/h/hello.tar.gz"), 1);

    let env2 = Env::new();
    let recipe = env2.write(
        "r.toml",
        &hello_recipe(
            &env2,
            &["mirror://testmirror/pool/h/hello.tar.gz".into()],
            &sha,
        ),
    );
    let o = env2
        .command(&recipe)
        .env("CARTBUILD_MIRROR_TESTMIRROR", server.base())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.hits("/pool/h/hello.tar.gz"), 2);

    // The user config file.
    let env3 = Env::new();
    env3.write(
        "config/cartbuild/config.toml",
        &format!("[mirrors]\ntestmirror = \"{}/\"\n", server.base()),
    );
    let recipe = env3.write(
        "r.toml",
        &hello_recipe(
            &env3,
            &["mirror://testmirror/pool/h/hello.tar.gz".into()],
            &sha,
        ),
    );
    let o = env3.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(server.hits("/pool/h/hello.tar.gz"), 3);
}

#[test]
fn verbose_streams_the_build_log() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let text = hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha)
        .replace("mkdir -p", "echo VERBOSE-MARKER\nmkdir -p");
    let recipe = env.write("r.toml", &text);
    let o = env.run(&recipe, &["-v"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("[hello] | VERBOSE-MARKER"),
        "{}",
        stderr(&o)
    );
    let quiet = Env::new();
    let recipe = quiet.write("r.toml", &text);
    let o = quiet.run(&recipe, &[]);
    assert!(!stderr(&o).contains("VERBOSE-MARKER"), "{}", stderr(&o));
}

#[test]
fn script_environment_is_documented_and_nothing_else() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    // Into $OUT: the script cannot write outside its sandbox.
    let text = hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha)
        .replace("mkdir -p", "env > \"$OUT/env.txt\"\nmkdir -p");
    let recipe = env.write("r.toml", &text);
    let o = env
        .command(&recipe)
        .env("LEAKY_VARIABLE", "1")
        .env("CFLAGS", "-leaked")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let builds = fs::read_dir(env.cache().join("builds")).unwrap();
    let dump = builds.map(|e| e.unwrap().path().join("out/env.txt")).next();
    let vars = fs::read_to_string(dump.unwrap()).unwrap();
    let names: std::collections::BTreeSet<&str> = vars
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let documented = [
        "AR",
        "ARCH",
        "BUILD",
        "CC",
        "CFLAGS",
        "CONFIG_SHELL",
        "CPPFLAGS",
        "DEPS",
        "HOME",
        "HOST",
        "HOST_FLAGS",
        "JOBS",
        "KERNEL_HEADERS",
        "LC_ALL",
        "LDFLAGS",
        "LOGNAME",
        "NAME",
        "OUT",
        "PATH",
        "PKG_CONFIG_LIBDIR",
        "PKG_CONFIG_PATH",
        "PREFIX",
        "RANLIB",
        "SHELL",
        "SOURCE_DATE_EPOCH",
        "SYSINCLUDE",
        "TARGET",
        "TMPDIR",
        "TZ",
        "USER",
        "VERSION",
    ];
    // The shell adds PWD, SHLVL and `_` itself.
    for n in &names {
        assert!(
            documented.contains(n) || ["PWD", "SHLVL", "_", "OLDPWD"].contains(n),
            "undocumented variable {n} in the build environment"
        );
    }
    for (k, v) in [
        ("SOURCE_DATE_EPOCH", "1700000000"),
        ("LC_ALL", "C"),
        ("TZ", "UTC"),
        ("CONFIG_SHELL", "/bin/sh"),
        ("PREFIX", "/dev/crashcart"),
        // A native build: configure takes the target for the build machine too.
        ("ARCH", std::env::consts::ARCH),
        ("HOST_FLAGS", ""),
    ] {
        assert!(
            vars.lines().any(|l| l == format!("{k}={v}")),
            "{k}={v} missing:\n{vars}"
        );
    }
    let deps = vars.lines().find_map(|l| l.strip_prefix("DEPS=")).unwrap();
    let ldflags = format!("LDFLAGS=-static -L{deps}/lib");
    assert!(
        vars.lines().any(|l| l == ldflags),
        "{ldflags} missing:\n{vars}"
    );
    let target = vars
        .lines()
        .find_map(|l| l.strip_prefix("TARGET="))
        .unwrap();
    for k in ["HOST", "BUILD"] {
        assert!(
            vars.lines().any(|l| l == format!("{k}={target}")),
            "{k}={target} missing:\n{vars}"
        );
    }
    assert!(!vars.contains("LEAKY_VARIABLE") && !vars.contains("-leaked"));
}

#[test]
fn changing_one_package_rebuilds_it_and_its_dependents_only() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let make = |lib_flag: &str, tool_flag: &str| {
        format!(
            r#"[image]
name = "test"
version = "1.0"

[[package]]
name = "lib"
version = "1"
urls = ["{url}"]
sha256 = "{sha}"
install = []
script = """
mkdir -p "$OUT/include" && echo '#define FLAG "{lib_flag}"' > "$OUT/include/flag.h"
"""

[[package]]
name = "tool"
version = "1"
urls = ["{url}"]
sha256 = "{sha}"
depends = ["lib"]
script = """
mkdir -p "$OUT/bin" && printf '#include <flag.h>\n/* {tool_flag} */ int main(void){{return 0;}}\n' > t.c
$CC $CFLAGS $CPPFLAGS $LDFLAGS -o "$OUT/bin/tool" t.c
"""

[[package]]
name = "other"
version = "1"
urls = ["{url}"]
sha256 = "{sha}"
script = """
mkdir -p "$OUT/bin" && $CC $CFLAGS $LDFLAGS -o "$OUT/bin/other" hello.c
"""
"#,
            url = server.url("/hello.tar.gz"),
        )
    };
    let recipe = env.write("r.toml", &make("a", "a"));
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(env.builds(), 3);

    // Change the dependent only: only it builds.
    env.write("r.toml", &make("a", "b"));
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(env.built()[3..], ["tool"]);

    // Change the dependency: it and its dependent build, `other` does not.
    env.write("r.toml", &make("b", "b"));
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(env.built()[4..], ["lib", "tool"]);
}

#[test]
fn file_archive_and_local_kinds_are_staged() {
    let env = Env::new();
    let server = Server::start();
    // A static executable for kind = "file", built here with musl-gcc.
    let prog_bytes = static_program(env.dir.path(), "int main(void){return 0;}\n");
    server.route("/prog", Route::Serve(prog_bytes.clone()));
    let archive = tarball(
        "tools-1",
        &[
            ("bin/script.sh", b"#!/bin/sh\necho hi\n", 0o700),
            ("share/doc/README", b"doc", 0o600),
        ],
    );
    server.route("/tools.tar.gz", Route::Serve(archive.clone()));
    env.write("files/etc/motd", "welcome\n");
    env.write("files/rc", "alias x=y\n");
    let text = format!(
        r#"[image]
name = "kinds"
version = "1"

[[package]]
name = "prog"
version = "1"
kind = "file"
urls = ["{prog_url}"]
sha256 = "{prog_sha}"
install = "sbin/prog"

[[package]]
name = "prog-unstripped"
version = "1"
kind = "file"
urls = ["{prog_url}"]
sha256 = "{prog_sha}"
strip = false

[[package]]
name = "tools"
version = "1"
kind = "archive"
urls = ["{tools_url}"]
sha256 = "{tools_sha}"
install = ["bin/*", "share"]

[[package]]
name = "tree"
version = "1"
kind = "local"
path = "files/etc"
install = "etc"

[[package]]
name = "rc"
version = "1"
kind = "local"
path = "files/rc"
install = "."
"#,
        prog_url = server.url("/prog"),
        prog_sha = sha256(&prog_bytes),
        tools_url = server.url("/tools.tar.gz"),
        tools_sha = sha256(&archive),
    );
    let recipe = env.write("r.toml", &text);
    let staged = env.dir.path().join("staged");
    let o = env.run(&recipe, &["--staged", staged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = |p: &str| {
        fs::symlink_metadata(staged.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("sbin/prog"), 0o755);
    assert_eq!(mode("bin/script.sh"), 0o755);
    assert_eq!(mode("share/doc/README"), 0o644);
    assert_eq!(
        fs::read_to_string(staged.join("etc/motd")).unwrap(),
        "welcome\n"
    );
    assert_eq!(
        fs::read_to_string(staged.join("rc")).unwrap(),
        "alias x=y\n"
    );
    // Stripped by default: smaller than what was downloaded; kept as is with
    // strip = false (and installed at bin/<name> by default).
    assert!(fs::metadata(staged.join("sbin/prog")).unwrap().len() < prog_bytes.len() as u64);
    assert_eq!(
        fs::read(staged.join("bin/prog-unstripped")).unwrap(),
        prog_bytes
    );
    assert_fsck_clean(&env.image());
}

// ---- bad input: one line, non-zero exit, no image, nothing unverified cached ----

fn bad_recipe(text: &str, needles: &[&str]) {
    let env = Env::new();
    let recipe = env.write("r.toml", text);
    let o = env.run(&recipe, &[]);
    assert_fails(&env, &o, needles);
}

const SHA: &str = "2a8885c403516cf7b0933ed4b14d6caa30e02052489ebd414dc75ac52e7559e6";

fn pkg(name: &str, extra: &str) -> String {
    format!(
        "[[package]]\nname = \"{name}\"\nversion = \"1\"\nurls = [\"http://127.0.0.1:1/{name}.tar.gz\"]\nsha256 = \"{SHA}\"\nscript = \"true\"\n{extra}"
    )
}

const HEAD: &str = "[image]\nname = \"t\"\nversion = \"1\"\n";

#[test]
fn malformed_toml_gives_line_and_column() {
    bad_recipe(
        "[image]\nname = \"t\"\nversion = \"1\"\n\n[[package]\nname = \"x\"\n",
        &["r.toml:5:"],
    );
    bad_recipe("[image]\nname = \"t\nversion = \"1\"\n", &["r.toml:2:"]);
}

#[test]
fn unknown_key_is_named_with_position() {
    bad_recipe(
        &format!("{HEAD}{}", pkg("a", "sha512 = \"x\"\n")),
        &["r.toml:10:1", "unknown field `sha512`"],
    );
    bad_recipe(
        "[image]\nname = \"t\"\nversion = \"1\"\ncolour = \"red\"\n",
        &["r.toml:4:1", "unknown field `colour`"],
    );
}

#[test]
fn missing_or_malformed_sha256() {
    let missing = pkg("a", "").replace(&format!("sha256 = \"{SHA}\"\n"), "");
    bad_recipe(
        &format!("{HEAD}{missing}"),
        &["package a", "sha256 is missing"],
    );
    let bad = pkg("a", "").replace(SHA, "xyz");
    bad_recipe(
        &format!("{HEAD}{bad}"),
        &["package a", "sha256 \"xyz\" is malformed"],
    );
}

#[test]
fn include_cycle_is_named() {
    let env = Env::new();
    env.write(
        "a.toml",
        "[image]\nname = \"a\"\nversion = \"1\"\ninclude = [\"b.toml\"]\n",
    );
    env.write("b.toml", "[image]\ninclude = [\"c.toml\"]\n");
    env.write("c.toml", "[image]\ninclude = [\"a.toml\"]\n");
    let o = env.run(&env.dir.path().join("a.toml"), &[]);
    let line = assert_fails(&env, &o, &["include cycle"]);
    assert!(
        line.contains("a.toml -> ") && line.contains("b.toml -> ") && line.contains("c.toml -> "),
        "{line}"
    );
}

#[test]
fn unknown_and_cyclic_dependencies() {
    bad_recipe(
        &format!("{HEAD}{}", pkg("a", "depends = [\"ghost\"]\n")),
        &["package a depends on unknown package ghost"],
    );
    bad_recipe(
        &format!(
            "{HEAD}{}{}{}",
            pkg("a", "depends = [\"b\"]\n"),
            pkg("b", "depends = [\"c\"]\n"),
            pkg("c", "depends = [\"a\"]\n")
        ),
        &["dependency cycle: a -> b -> c -> a"],
    );
}

#[test]
fn duplicate_package_names() {
    let env = Env::new();
    env.write(
        "base.toml",
        &format!(
            "[image]\nname = \"b\"\nversion = \"1\"\n{}",
            pkg("bash", "")
        ),
    );
    let recipe = env.write(
        "r.toml",
        &format!(
            "[image]\nname = \"t\"\nversion = \"1\"\ninclude = [\"base.toml\"]\n{}",
            pkg("bash", "")
        ),
    );
    let o = env.run(&recipe, &[]);
    assert_fails(
        &env,
        &o,
        &["package bash is defined twice", "base.toml", "r.toml"],
    );
}

#[test]
fn tarball_entry_escaping_is_refused() {
    let env = Env::new();
    let server = Server::start();
    // tar::Builder refuses "..", so write the header's name bytes directly.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_old();
    let name = b"hello-1.0/../../escaped";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    server.route("/evil.tar", Route::Serve(bytes.clone()));
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/evil.tar")], &sha256(&bytes)),
    );
    let o = env.run(&recipe, &[]);
    assert_fails(
        &env,
        &o,
        &[
            "package hello: step unpack failed",
            "refusing to unpack",
            "hello-1.0/../../escaped",
            "leaves the destination",
        ],
    );
    assert!(!env.cache().join("escaped").exists() && !env.cache().join("tmp/escaped").exists());
    assert_eq!(env.builds(), 0);
}

#[test]
fn failing_script_names_package_step_log_and_shows_its_tail() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let text = hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha).replace(
        "mkdir -p",
        "for i in $(seq 1 60); do echo log-line-$i; done\nfalse\nmkdir -p",
    );
    let recipe = env.write("r.toml", &text);
    let o = env.run(&recipe, &[]);
    let line = assert_fails(
        &env,
        &o,
        &[
            "package hello: step script failed",
            "exited with status 1",
            "; log: ",
        ],
    );
    let log = line.rsplit("; log: ").next().unwrap();
    let log_text = fs::read_to_string(log).expect("the log is kept");
    assert!(log_text.contains("log-line-1\n") && log_text.contains("log-line-60\n"));
    let err = stderr(&o);
    // The last 40 lines of the log (`set -x` doubles each echo): lines 41 to
    // 60 and the failing command, not the start.
    assert!(err.contains("last 40 lines of"), "{err}");
    assert!(
        err.contains("[hello] | log-line-60\n") && err.contains("[hello] | log-line-42\n"),
        "{err}"
    );
    assert!(!err.contains("[hello] | log-line-10\n"), "{err}");
    assert!(err.contains("[hello] | + false\n"), "{err}");
    // Nothing of the failed build is cached.
    let builds: Vec<_> = fs::read_dir(env.cache().join("builds")).unwrap().collect();
    assert!(builds.is_empty());
}

#[test]
fn dynamic_binary_in_output_is_named() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    // The host's gcc links against glibc dynamically.
    let text = hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha)
        .replace("$CC $CFLAGS $LDFLAGS -o", "gcc -o");
    let recipe = env.write("r.toml", &text);
    let o = env.run(&recipe, &[]);
    assert_fails(
        &env,
        &o,
        &[
            "package hello: bin/hello is dynamically linked",
            "interpreter /lib64/ld-linux-x86-64.so.2",
            "LDFLAGS=-static",
        ],
    );
    assert!(
        fs::read_dir(env.cache().join("builds"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn dynamic_prebuilt_file_is_refused() {
    let env = Env::new();
    let server = Server::start();
    let bytes = fs::read("/bin/true").unwrap();
    server.route("/true", Route::Serve(bytes.clone()));
    let text = format!(
        "{HEAD}[[package]]\nname = \"true\"\nversion = \"1\"\nkind = \"file\"\nurls = [\"{}\"]\nsha256 = \"{}\"\n",
        server.url("/true"),
        sha256(&bytes)
    );
    let recipe = env.write("r.toml", &text);
    let o = env.run(&recipe, &[]);
    assert_fails(&env, &o, &["package true: bin/true is dynamically linked"]);
}

#[test]
fn missing_toolchain_says_how_to_install_one() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
    );
    let empty = env.dir.path().join("empty-path");
    fs::create_dir(&empty).unwrap();
    let o = env.command(&recipe).env("PATH", &empty).output().unwrap();
    assert_fails(
        &env,
        &o,
        &["no musl C toolchain found", "apt-get install musl-tools"],
    );
    assert_eq!(server.total_hits(), 0);
}

#[test]
fn image_size_too_small_is_an_error_and_leaves_nothing() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
    );
    let o = env.run(&recipe, &["--size", "16K"]);
    let line = assert_fails(
        &env,
        &o,
        &["does not fit in 16384 bytes", "it needs at least"],
    );
    // The smallest size that works, as the error says, does work.
    let needed: u64 = line
        .split("it needs at least ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {line}"));
    let o = env.run(&recipe, &["--size", &needed.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::metadata(env.image()).unwrap().len(), needed);
    let o = env.run(&recipe, &["--size", "8M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::metadata(env.image()).unwrap().len(), 8 << 20);
}

#[test]
fn offline_without_cache_fails_clearly() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
    );
    let o = env.run(&recipe, &["--offline"]);
    assert_fails(&env, &o, &["is not in the cache", "--offline"]);
    assert_eq!(server.total_hits(), 0);
}

/// The image's inode and modification time: a new file, or the same one untouched.
fn identity(path: &Path) -> (u64, std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.modified().unwrap())
}

#[test]
fn an_unchanged_image_is_not_written_again() {
    let env = Env::new();
    let (server, _, sha) = hello_server("written once");
    let text = hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha);
    let recipe = env.write("r.toml", &text);
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let image = env.image();
    let sidecar = env.dir.path().join("out/test.img.spdx.json");
    let first = (identity(&image), identity(&sidecar));
    let image_sha = sha256(&fs::read(&image).unwrap());

    // Nothing changed: said so, every output still checked, nothing written.
    let o = env.run(&recipe, &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("image unchanged: {}", image.display()))
            && err.contains("1 packages, 0 built, 1 cached"),
        "{err}"
    );
    assert!(err.contains("[hello] cached"), "{err}");
    assert!(!err.contains("staging"), "{err}");
    assert_eq!(stdout(&o).trim(), image.display().to_string());
    assert_eq!((identity(&image), identity(&sidecar)), first);
    assert_eq!(env.builds(), 1);

    // The same size, one byte flipped: written again, whole.
    let mut bytes = fs::read(&image).unwrap();
    bytes[2000] ^= 0xff;
    fs::write(&image, &bytes).unwrap();
    let o = env.run(&recipe, &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("image unchanged"), "{err}");
    assert_eq!(sha256(&fs::read(&image).unwrap()), image_sha);
    assert_ne!(
        identity(&image).0,
        first.0.0,
        "the image was not written anew"
    );

    // A sidecar changed: everything written again.
    fs::write(&sidecar, b"{}").unwrap();
    let o = env.run(&recipe, &[]);
    assert!(!stderr(&o).contains("image unchanged"), "{}", stderr(&o));
    assert_ne!(fs::read(&sidecar).unwrap(), b"{}");
    let o = env.run(&recipe, &[]);
    assert!(stderr(&o).contains("image unchanged"), "{}", stderr(&o));

    // Another size asked for: another image.
    let o = env.run(&recipe, &["--size", "8M"]);
    assert!(!stderr(&o).contains("image unchanged"), "{}", stderr(&o));
    assert_eq!(fs::metadata(&image).unwrap().len(), 8 << 20);

    // A changed recipe: built and written again.
    let (server2, _, sha2) = hello_server("written twice");
    env.write(
        "r.toml",
        &hello_recipe(&env, &[server2.url("/hello.tar.gz")], &sha2),
    );
    let o = env.run(&recipe, &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("image unchanged"), "{err}");
    assert_eq!(env.builds(), 2);
    assert_eq!(run_hello(&env, &image), "written twice");
}

/// A build whose script prints the sandbox's CPU line as its last words: the recipe.
const CLAIMING_CPU: &str = "mkdir -p \"$OUT/bin\"\n$CC $CFLAGS $LDFLAGS -o \"$OUT/bin/hello\" hello.c\n\
                            head -c 1000000000 /dev/zero | sha256sum >/dev/null\n\
                            echo 'cartbuild: sandbox: CPU time 99999.0 s'";

/// What `times/hello` in `env`'s cache holds.
fn recorded_seconds(env: &Env) -> f64 {
    fs::read_to_string(env.cache().join("times/hello"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A sandboxed build's done line gives the CPU time of everything that ran in its sandbox,
/// and the scheduler records that as the package's weight (`times/NAME`); a script that
/// prints the sandbox's line itself, as its last words, changes neither.
#[test]
fn a_builds_cpu_time_is_the_sandboxs_measure_not_the_scripts_claim() {
    let env = Env::new();
    let (server, _, sha) = hello_server("hello");
    let recipe = env.write(
        "r.toml",
        &one_package_recipe(
            "hello",
            &[server.url("/hello.tar.gz")],
            &sha,
            None,
            CLAIMING_CPU,
        ),
    );
    let o = env.run(&recipe, &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("[hello] done (key "))
        .unwrap_or_else(|| panic!("no done line:\n{err}"));
    let cpu: f64 = line
        .rsplit_once(", CPU ")
        .and_then(|(_, t)| t.strip_suffix(" s)"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no CPU time in {line:?}"));
    // Hashing a gigabyte takes a fraction of a second of CPU, nowhere near the claim.
    assert!((0.2..100.0).contains(&cpu), "{line}");
    let recorded = recorded_seconds(&env);
    assert!(
        (recorded - cpu).abs() < 0.11,
        "times/hello holds {recorded}, the build said {line:?}"
    );
}

/// Without the sandbox nothing measures the script's CPU time: its claim is not taken
/// either, and the weight recorded is the build's wall time.
#[test]
fn without_the_sandbox_a_scripts_cpu_claim_is_not_taken() {
    let env = Env::new();
    let (server, _, sha) = hello_server("hello");
    let recipe = env.write(
        "r.toml",
        &one_package_recipe(
            "hello",
            &[server.url("/hello.tar.gz")],
            &sha,
            None,
            CLAIMING_CPU,
        ),
    );
    let o = env.run(&recipe, &["--no-sandbox"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("[hello] done (key "))
        .unwrap_or_else(|| panic!("no done line:\n{err}"));
    assert!(!line.contains("CPU"), "{line}");
    let recorded = recorded_seconds(&env);
    assert!(
        (0.0..100.0).contains(&recorded),
        "times/hello holds {recorded}"
    );
}
