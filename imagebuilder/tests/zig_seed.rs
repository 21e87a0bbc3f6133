//! zig's compiled runtime (`imagebuilder/src/seed.rs`): made once per cache, laid under
//! each sandboxed build's zig cache, and unchanged by what a build script does to it. A
//! package built with `--toolchain zig` links without compiling musl (the seed's `libc.a`
//! is what it finds); a hostile script then overwrites, deletes and adds files in its zig
//! cache; the seed on the host is byte for byte what it was, and the next build sees it
//! whole. A build over the seed and one where it cannot be laid give the same image, and
//! a cartbuild killed while zig makes the seed takes zig with it. Needs root (as CI runs
//! it), zig (`pip install ziglang`) and e2fsprogs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};

/// A recipe with one package built by `script` from the hello tarball, installing
/// `bin/hello` and `share/report`.
fn recipe(urls: &[String], sha: &str, script: &str) -> String {
    one_package_recipe(
        "probe",
        urls,
        sha,
        Some(r#"["bin/hello", "share/report"]"#),
        &format!(
            r#"zc="${{CC%/bin/cc}}/zig-cache"
mkdir -p "$OUT/bin" "$OUT/share"
touch "$HOME/start"
$CC $CFLAGS $LDFLAGS -o "$OUT/bin/hello" hello.c
{script}"#
        ),
    )
}

/// The seed's zig cache in `cache`: the one directory under `toolchain/` holding a
/// `cache/h` (zig's manifests).
fn seed_dir(cache: &Path) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(cache.join("toolchain"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("cache"))
        .filter(|p| p.join("h").is_dir())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one zig seed in {}: {found:?}",
        cache.display()
    );
    found.into_iter().next().unwrap()
}

/// Every file of `dir`: its sha256 (or link target), mode and owner, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let what = if m.is_file() {
            hex::encode(Sha256::digest(fs::read(e.path()).unwrap()))
        } else if m.file_type().is_symlink() {
            fs::read_link(e.path()).unwrap().display().to_string()
        } else {
            "dir".into()
        };
        let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
        all.insert(
            rel,
            format!("{what} {:o} {}:{}", m.mode(), m.uid(), m.gid()),
        );
    }
    all
}

/// Fails naming the first files that differ (the seed has thousands).
fn assert_unchanged(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) {
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|p| before.get(*p) != after.get(*p))
        .take(10)
        .map(|p| format!("{}: {:?} -> {:?}", p.display(), before.get(p), after.get(p)))
        .collect();
    assert!(
        changed.is_empty(),
        "a build changed the seed:\n{}",
        changed.join("\n")
    );
}

fn report(env: &Env) -> String {
    String::from_utf8(read_from_image(&env.image(), "/share/report")).unwrap()
}

#[test]
fn builds_link_over_the_seed_and_cannot_change_it() {
    let env = Env::new();
    let (server, _, sha) = hello_server("seeded");
    let urls = [server.url("/hello.tar.gz")];

    // 1. A plain build: the seed is made first, and the build compiles no libc.a of its own.
    let plain = env.write(
        "plain.toml",
        &recipe(
            &urls,
            &sha,
            r#"{ echo "compiled: $(find "$zc" -name libc.a -newer "$HOME/start" | wc -l)"
  echo "seen: $(find "$zc" -name libc.a | wc -l)"; } >"$OUT/share/report""#,
        ),
    );
    let o = env.run(&plain, &["--toolchain", "zig"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("[zig] compiling zig's C runtime for"), "{err}");
    let r = report(&env);
    assert!(
        r.contains("compiled: 0\n"),
        "the build compiled musl itself:\n{r}"
    );
    assert!(
        !r.contains("seen: 0\n"),
        "no libc.a in the build's zig cache:\n{r}"
    );
    let seed = seed_dir(&env.cache());
    let before = snapshot(&seed);
    assert!(before.keys().any(|p| p.ends_with("libc.a")), "{before:?}");

    // 2. A hostile script: overwrites every archive and manifest it sees, deletes files
    // and plants one. It succeeds (in its own upper layer).
    let hostile = env.write(
        "hostile.toml",
        &recipe(
            &urls,
            &sha,
            r#"n=0
for f in $(find "$zc" -type f -name '*.a') $(find "$zc/h" -type f | head -50); do
    printf 'poisoned' >"$f" && n=$((n + 1))
done
find "$zc/o" -type f -name 'crt1.o' -delete
echo planted >"$zc/planted"
echo "poisoned: $n" >"$OUT/share/report""#,
        ),
    );
    let o = env.run(&hostile, &["--toolchain", "zig"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&env);
    assert!(
        !r.contains("poisoned: 0\n"),
        "the attack wrote nothing, so it proves nothing:\n{r}"
    );
    assert!(
        !stderr(&o).contains("[zig] compiling"),
        "the seed was made again:\n{}",
        stderr(&o)
    );
    assert_unchanged(&before, &snapshot(&seed));

    // 3. The next build sees the seed whole: the same libc.a, nothing planted.
    let check = env.write(
        "check.toml",
        &recipe(
            &urls,
            &sha,
            r#"{ find "$zc" -name libc.a -exec sha256sum {} + | cut -d' ' -f1 | sort
  test -e "$zc/planted" && echo planted; true; } >"$OUT/share/report""#,
        ),
    );
    let o = env.run(&check, &["--toolchain", "zig"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&env);
    assert!(!r.contains("planted"), "{r}");
    let mut seeded: Vec<String> = before
        .iter()
        .filter(|(p, _)| p.ends_with("libc.a"))
        .map(|(_, v)| v.split(' ').next().unwrap().to_string())
        .collect();
    seeded.sort();
    let seen: Vec<&str> = r.lines().collect();
    assert_eq!(
        seen, seeded,
        "the build saw other libc.a files than the seed's"
    );
    assert_eq!(env.built(), ["probe", "probe", "probe"]);
}

/// The processes whose working directory is under `dir`, and whose program is zig.
fn zigs_in(dir: &Path) -> Vec<i32> {
    processes(|proc| {
        let (Ok(cwd), Ok(exe)) = (
            fs::read_link(proc.join("cwd")),
            fs::read_link(proc.join("exe")),
        ) else {
            return false;
        };
        cwd.starts_with(dir) && exe.file_name().is_some_and(|n| n == "zig")
    })
}

/// A cartbuild killed (SIGKILL) while zig makes the seed leaves no zig behind: zig dies
/// with it rather than compiling the runtime for another minute.
#[test]
fn a_killed_cartbuild_leaves_no_zig_making_the_seed() {
    let env = Env::new();
    let (server, _, sha) = hello_server("hello");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
    );
    let cache = env.cache();
    let mut child = env
        .command(&recipe)
        .args(["--toolchain", "zig"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while zigs_in(&cache).is_empty() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if zigs_in(&cache).is_empty() {
        let _ = child.kill();
        panic!("zig never started making the seed in {}", cache.display());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // zig's own children (one per file it compiles) finish the file they have.
    let killed = std::time::Instant::now();
    while !zigs_in(&cache).is_empty() && killed.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let left = zigs_in(&cache);
    for pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(left.is_empty(), "zig {left:?} outlived cartbuild by 30 s");
}

/// The seed changes how long a build takes, not what it makes (which is why it is in no
/// build key): the same package built over the seed, and built where the seed cannot be
/// laid (the build's zig cache starts empty and zig compiles musl itself), gives the same
/// image byte for byte.
#[test]
fn a_build_over_the_seed_makes_what_one_without_it_makes() {
    let seeded = Env::new();
    let (server, _, sha) = hello_server("same either way");
    let text = hello_recipe(&seeded, &[server.url("/hello.tar.gz")], &sha);
    let o = seeded.run(&seeded.write("r.toml", &text), &["--toolchain", "zig"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seed = seed_dir(&seeded.cache());
    let name = seed.parent().unwrap().file_name().unwrap();

    // The seed's directory, empty: taken for made, but with no zig cache in it the
    // sandbox cannot lay it under the build's own, which then starts empty.
    let bare = Env::new();
    fs::create_dir_all(bare.cache().join("toolchain").join(name)).unwrap();
    let o = bare.run(&bare.write("r.toml", &text), &["--toolchain", "zig"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log: String = fs::read_dir(bare.cache().join("logs"))
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        log.contains("cartbuild: sandbox: cannot layer") && log.contains("it starts empty"),
        "the build without a seed still had one:\n{log}"
    );
    assert_eq!(
        sha256(&fs::read(bare.image()).unwrap()),
        sha256(&fs::read(seeded.image()).unwrap()),
        "built over the seed and without it, the images differ"
    );
}
