//! `cartbuild release`: two builds from clean caches, refusal of what differs, the release
//! directory and its index, signing; and `cartbuild keygen`/`sign`/`inspect --verify-key`
//! against Debian's `minisign` in both directions.
//!
//! The recipes are tiny (a hello.c built with musl-gcc, sources from `file://`), so two clean
//! builds take about a second. Needs musl-tools and minisign (`.ci/packages`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{hello_source, sha256};

/// A scratch directory with a source tarball, recipes, a cache and a release directory.
struct Rel {
    dir: tempfile::TempDir,
}

impl Rel {
    fn new() -> Rel {
        let dir = tempfile::Builder::new()
            .prefix("cartbuild-release-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("config")).unwrap();
        Rel { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn out(&self) -> PathBuf {
        self.path("release")
    }

    /// Writes a hello recipe `name` `version` printing `message`; `extra` is appended to its
    /// build script.
    fn recipe(&self, name: &str, version: &str, message: &str, extra: &str) -> PathBuf {
        let tarball = hello_source(message);
        let src = self.path(&format!("src-{}.tar.gz", &sha256(&tarball)[..12]));
        fs::write(&src, &tarball).unwrap();
        let text = format!(
            r#"[image]
name = "{name}"
version = "{version}"
epoch = 1700000000

[[package]]
name = "hello"
version = "1.0"
license = "MIT"
urls = ["file://{src}"]
sha256 = "{sha}"
script = """
mkdir -p "$OUT/bin"
$CC $CFLAGS $LDFLAGS -o "$OUT/bin/hello" hello.c
{extra}
"""
"#,
            src = src.display(),
            sha = sha256(&tarball),
        );
        let path = self.path(&format!("{name}.toml"));
        fs::write(&path, text).unwrap();
        path
    }

    fn cartbuild(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cartbuild"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CARTBUILD_") || k == "SOURCE_DATE_EPOCH" {
                c.env_remove(k);
            }
        }
        c.env("XDG_CONFIG_HOME", self.path("config"))
            .current_dir(self.dir.path());
        c
    }

    /// `cartbuild release RECIPES... --cache C --out release ARGS...`.
    fn release(&self, recipes: &[&Path], args: &[&str]) -> Output {
        self.cartbuild()
            .arg("release")
            .args(recipes)
            .arg("--cache")
            .arg(self.path("cache"))
            .arg("--out")
            .arg(self.out())
            .args(args)
            .output()
            .unwrap()
    }

    /// Every file of the release directory with its bytes.
    fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let Ok(rd) = fs::read_dir(self.out()) else {
            return BTreeMap::new();
        };
        rd.map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
    }

    fn index(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.out().join("index.json")).unwrap()).unwrap()
    }

    /// Nothing of a release is left behind: no work directory beside the release
    /// directory, no clean cache in the cache's tmp/.
    fn assert_no_leftovers(&self) {
        let beside: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".cartbuild-release"))
            .collect();
        assert!(beside.is_empty(), "left beside the release: {beside:?}");
        if let Ok(rd) = fs::read_dir(self.path("cache/tmp")) {
            let left: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
            assert!(left.is_empty(), "left in the cache's tmp/: {left:?}");
        }
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A clean failure: non-zero exit, the last stderr line is the one error line and holds every
/// needle.
fn failed(o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "succeeded:\n{err}");
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("cartbuild: error: "), "{err}");
    assert_eq!(
        err.matches("cartbuild: error:").count(),
        1,
        "more than one error line:\n{err}"
    );
    for n in needles {
        assert!(last.contains(n), "`{n}` not in: {last}");
    }
    last
}

fn minisign(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("minisign")
        .args(args)
        .output()
        .expect("minisign is missing: apt-get install minisign (.ci/packages)")
}

#[test]
fn reproducible_images_are_published_and_the_index_accumulates_versions() {
    let r = Rel::new();
    // A hard link, as busybox's applets are: one inode in the image, the manifest says so.
    let recipe = r.recipe("hello", "1.0", "hi", r#"ln "$OUT/bin/hello" "$OUT/bin/hi""#);
    let o = r.release(&[&recipe], &[]);
    let out = ok(&o);
    assert!(out.contains("published hello 1.0"), "{out}");
    // Both builds started from an empty build cache: hello was built twice.
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(log.matches("[hello] done").count(), 2, "{log}");
    let files = r.snapshot();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "hello-1.0.img",
            "hello-1.0.img.manifest.json",
            "hello-1.0.img.sha256",
            "hello-1.0.img.spdx.json",
            "index.json"
        ]
    );
    // The checksum file checks with sha256sum, and the index names every digest and size.
    let check = Command::new("sha256sum")
        .arg("-c")
        .arg("hello-1.0.img.sha256")
        .current_dir(r.out())
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let index = r.index();
    assert_eq!(index["schema"], 1);
    let e = &index["images"][0];
    assert_eq!(
        (e["name"].as_str(), e["version"].as_str()),
        (Some("hello"), Some("1.0"))
    );
    for (field, file) in [
        ("image", "hello-1.0.img"),
        ("manifest", "hello-1.0.img.manifest.json"),
        ("sbom", "hello-1.0.img.spdx.json"),
        ("checksum", "hello-1.0.img.sha256"),
    ] {
        assert_eq!(e[field]["file"], file);
        assert_eq!(
            e[field]["sha256"].as_str(),
            Some(sha256(&files[file]).as_str())
        );
        assert_eq!(e[field]["size"].as_u64(), Some(files[file].len() as u64));
    }
    assert_eq!(e["packages"]["hello"], "1.0");
    let manifest: serde_json::Value =
        serde_json::from_slice(&files["hello-1.0.img.manifest.json"]).unwrap();
    let entry = |p: &str| {
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == p)
            .unwrap()
            .clone()
    };
    let (hello, hi) = (entry("bin/hello"), entry("bin/hi"));
    assert_eq!(hello["sha256"], hi["sha256"]);
    assert_eq!(hi["link"], "bin/hello");
    assert!(hello.get("link").is_none(), "{hello}");
    assert!(
        e["toolchain"].as_str().is_some_and(|t| t.contains("musl")),
        "{e}"
    );
    assert!(e.get("signature").is_none());
    r.assert_no_leftovers();

    // The same version again: reproducible, already published, nothing changes.
    let before = r.snapshot();
    let out = ok(&r.release(&[&recipe], &[]));
    assert!(
        out.contains("already published") && out.contains("unchanged"),
        "{out}"
    );
    assert_eq!(r.snapshot(), before);

    // A new version is added; the old one stays as it was.
    let recipe = r.recipe("hello", "1.1", "hi again", "");
    ok(&r.release(&[&recipe], &[]));
    let index = r.index();
    let versions: Vec<&str> = index["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.0", "1.1"]);
    assert_eq!(index["images"][0], before_index(&before)["images"][0]);
    let after = r.snapshot();
    for (name, bytes) in &before {
        if name != "index.json" {
            assert_eq!(&after[name], bytes, "{name} changed");
        }
    }
    assert!(after.contains_key("hello-1.1.img"));
    r.assert_no_leftovers();
}

fn before_index(files: &BTreeMap<String, Vec<u8>>) -> serde_json::Value {
    serde_json::from_slice(&files["index.json"]).unwrap()
}

#[test]
fn a_build_that_differs_is_refused_naming_what_differs_and_nothing_is_published() {
    let r = Rel::new();
    let good = r.recipe("hello", "1.0", "hi", "");
    ok(&r.release(&[&good], &[]));
    let before = r.snapshot();

    // A script that writes the time into the image: the two builds differ.
    let bad = r.recipe("stamped", "1.0", "hi", r#"date +%N > "$OUT/bin/stamp""#);
    let next = r.recipe("hello", "1.1", "hi", "");
    let o = r.release(&[&next, &bad], &[]);
    let line = failed(
        &o,
        &[
            "stamped 1.0",
            "is not reproducible",
            "image",
            "manifest",
            "SBOM",
            "bin/stamp",
            "nothing was published",
        ],
    );
    assert!(!line.contains("hello"), "{line}");
    // hello 1.1 built fine, but a release is all or nothing.
    assert_eq!(r.snapshot(), before);
    r.assert_no_leftovers();

    // Into a directory that does not exist yet: it still does not.
    let o = r
        .cartbuild()
        .arg("release")
        .arg(&bad)
        .arg("--cache")
        .arg(r.path("cache"))
        .arg("--out")
        .arg(r.path("fresh"))
        .output()
        .unwrap();
    failed(&o, &["is not reproducible"]);
    assert!(!r.path("fresh").exists());
    r.assert_no_leftovers();
}

#[test]
fn a_published_version_keeps_its_digest_and_bad_input_is_refused() {
    let r = Rel::new();
    let recipe = r.recipe("hello", "1.0", "hi", "");
    ok(&r.release(&[&recipe], &[]));
    let before = r.snapshot();

    // Same name and version, other content: refused, and the directory is as it was.
    let changed = r.recipe("hello", "1.0", "changed", "");
    let o = r.release(&[&changed], &[]);
    failed(
        &o,
        &[
            "hello 1.0 is already published",
            "give the recipe a new version",
        ],
    );
    assert_eq!(r.snapshot(), before);

    // A file the index does not list is never overwritten.
    let next = r.recipe("hello", "1.2", "hi", "");
    fs::write(r.out().join("hello-1.2.img.spdx.json"), b"mine").unwrap();
    let o = r.release(&[&next], &[]);
    failed(&o, &["hello-1.2.img.spdx.json exists", "does not list it"]);
    assert_eq!(
        fs::read(r.out().join("hello-1.2.img.spdx.json")).unwrap(),
        b"mine"
    );
    assert!(!r.out().join("hello-1.2.img").exists());
    fs::remove_file(r.out().join("hello-1.2.img.spdx.json")).unwrap();

    // One version twice in one release, a missing signing key, a missing recipe, a broken
    // index: each refused before anything is built.
    let o = r.release(&[&next, &next], &[]);
    failed(&o, &["hello 1.2 is given twice"]);
    let o = r.release(&[&next], &["--sign-key", "/nonexistent/key"]);
    failed(&o, &["/nonexistent/key"]);
    let o = r.release(&[Path::new("nope.toml")], &[]);
    failed(&o, &["nope.toml"]);
    fs::write(r.out().join("index.json"), b"{ not json").unwrap();
    let o = r.release(&[&next], &[]);
    failed(&o, &["index.json is not a release index"]);
    fs::write(r.out().join("index.json"), &before["index.json"]).unwrap();
    assert_eq!(r.snapshot(), before);
    r.assert_no_leftovers();
}

/// `cartbuild keygen -W` in `dir`: (public, secret).
fn keygen(r: &Rel, name: &str) -> (PathBuf, PathBuf) {
    let (public, secret) = (
        r.path(&format!("{name}.pub")),
        r.path(&format!("{name}.key")),
    );
    ok(&r
        .cartbuild()
        .args(["keygen", "--no-password", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .unwrap());
    (public, secret)
}

#[test]
fn signed_releases_verify_with_minisign_and_inspect() {
    let r = Rel::new();
    let (public, secret) = keygen(&r, "release");
    let (other, _) = keygen(&r, "other");
    let a = r.recipe("hello", "1.0", "hi", "");
    let b = r.recipe("other", "2.0", "ho", "");
    let out = ok(&r.release(&[&a, &b], &["--sign-key", secret.to_str().unwrap()]));
    assert_eq!(out.matches(", signed").count(), 2, "{out}");
    let index = r.index();
    let key_id = fs::read_to_string(&public).unwrap();
    for (e, img) in index["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["hello-1.0.img", "other-2.0.img"])
    {
        assert_eq!(e["signature"]["file"], format!("{img}.minisig"));
        assert!(key_id.contains(e["signature"]["key_id"].as_str().unwrap()));
        let image = r.out().join(img);
        let v = minisign(&[
            "-V".as_ref(),
            "-p".as_ref(),
            public.as_os_str(),
            "-m".as_ref(),
            image.as_os_str(),
        ]);
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(
            v.status.success(),
            "minisign -V {img}: {text}{}",
            String::from_utf8_lossy(&v.stderr)
        );
        // The trusted comment names the image, its version and its sha256.
        let sha = sha256(&fs::read(&image).unwrap());
        assert!(text.contains(&format!("sha256:{sha}")), "{text}");
        assert!(text.contains(&format!("file:{img}")), "{text}");
        // inspect checks it with the key, and refuses it with another.
        let o = r
            .cartbuild()
            .arg("inspect")
            .arg(&image)
            .arg("--verify-key")
            .arg(&public)
            .output()
            .unwrap();
        assert!(ok(&o).contains("signature verifies with the key given"));
        let o = r
            .cartbuild()
            .arg("inspect")
            .arg(&image)
            .arg("--verify-key")
            .arg(&other)
            .output()
            .unwrap();
        failed(&o, &["does not match its manifest"]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("made with another key"));
    }
}

#[test]
fn sign_and_minisign_interoperate_and_changes_are_refused() {
    let r = Rel::new();
    let recipe = r.recipe("hello", "1.0", "hi", "");
    ok(&r.release(&[&recipe], &[]));
    let image = r.out().join("hello-1.0.img");
    let sig = r.out().join("hello-1.0.img.minisig");

    // An encrypted key: the password from the environment; none and no terminal is an error.
    let (public, secret) = (r.path("enc.pub"), r.path("enc.key"));
    let o = r
        .cartbuild()
        .args(["keygen", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .env("CARTBUILD_KEY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(ok(&o).contains("encrypted secret key"));
    let o = r
        .cartbuild()
        .arg("sign")
        .arg(&image)
        .arg("--key")
        .arg(&secret)
        .output()
        .unwrap();
    failed(&o, &["needs a password", "CARTBUILD_KEY_PASSWORD"]);
    assert!(!sig.exists());
    let o = r
        .cartbuild()
        .arg("sign")
        .arg(&image)
        .arg("--key")
        .arg(&secret)
        .env("CARTBUILD_KEY_PASSWORD", "wrong")
        .output()
        .unwrap();
    failed(&o, &["wrong password"]);
    assert!(!sig.exists());
    let o = r
        .cartbuild()
        .arg("sign")
        .arg(&image)
        .arg("--key")
        .arg(&secret)
        .env("CARTBUILD_KEY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    ok(&o);
    // cartbuild's signature verifies with minisign.
    let v = minisign(&[
        "-Vq".as_ref(),
        "-p".as_ref(),
        public.as_os_str(),
        "-m".as_ref(),
        image.as_os_str(),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // keygen refuses to overwrite keys.
    let o = r
        .cartbuild()
        .args(["keygen", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .unwrap();
    failed(&o, &["already exists"]);

    // minisign's signature (and key) verifies with cartbuild inspect.
    let (mpub, msec) = (r.path("m.pub"), r.path("m.key"));
    let g = minisign(&[
        "-G".as_ref(),
        "-W".as_ref(),
        "-p".as_ref(),
        mpub.as_os_str(),
        "-s".as_ref(),
        msec.as_os_str(),
    ]);
    assert!(g.status.success(), "{g:?}");
    let s = minisign(&[
        "-S".as_ref(),
        "-s".as_ref(),
        msec.as_os_str(),
        "-m".as_ref(),
        image.as_os_str(),
    ]);
    assert!(s.status.success(), "{s:?}");
    let inspect = |key: &Path| {
        r.cartbuild()
            .arg("inspect")
            .arg(&image)
            .arg("--verify-key")
            .arg(key)
            .output()
            .unwrap()
    };
    assert!(ok(&inspect(&mpub)).contains("signature verifies"));
    // cartbuild sign also takes minisign's secret key.
    fs::remove_file(&sig).unwrap();
    ok(&r
        .cartbuild()
        .arg("sign")
        .arg(&image)
        .arg("--key")
        .arg(&msec)
        .output()
        .unwrap());
    let v = minisign(&[
        "-Vq".as_ref(),
        "-p".as_ref(),
        mpub.as_os_str(),
        "-m".as_ref(),
        image.as_os_str(),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // A changed trusted comment, then a changed image: refused.
    let text = fs::read_to_string(&sig).unwrap();
    fs::write(&sig, text.replace("version:1.0", "version:9.9")).unwrap();
    failed(&inspect(&mpub), &["does not match its manifest"]);
    fs::write(&sig, &text).unwrap();
    assert!(ok(&inspect(&mpub)).contains("signature verifies"));
    let mut bytes = fs::read(&image).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    fs::write(&image, &bytes).unwrap();
    let o = inspect(&mpub);
    failed(&o, &["does not match its manifest"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not verify"));
    // An image that no longer matches its checksum is not signed.
    fs::remove_file(&sig).unwrap();
    let o = r
        .cartbuild()
        .arg("sign")
        .arg(&image)
        .arg("--key")
        .arg(&msec)
        .output()
        .unwrap();
    failed(
        &o,
        &["does not match", "hello-1.0.img.sha256", "build it again"],
    );
    assert!(!sig.exists());
}

#[test]
fn both_arches_are_released_each_built_twice_and_listed_in_the_index() {
    let r = Rel::new();
    let recipe = r.recipe("hello", "1.0", "hi", "");
    let o = r.release(&[&recipe], &["--arch", "x86_64,aarch64"]);
    let out = ok(&o);
    assert!(out.contains("published hello 1.0"), "{out}");
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        log.matches("[hello] done").count(),
        4,
        "two builds per arch:\n{log}"
    );
    assert!(
        log.contains("release hello 1.0 (aarch64): reproducible"),
        "{log}"
    );
    let files = r.snapshot();
    for name in [
        "hello-1.0.img",
        "hello-1.0-aarch64.img",
        "hello-1.0-aarch64.img.manifest.json",
        "hello-1.0-aarch64.img.sha256",
        "hello-1.0-aarch64.img.spdx.json",
    ] {
        assert!(
            files.contains_key(name),
            "{name} missing: {:?}",
            files.keys()
        );
    }
    let index = r.index();
    let entries = index["images"].as_array().unwrap();
    let arches: Vec<&str> = entries.iter().filter_map(|e| e["arch"].as_str()).collect();
    assert_eq!(arches, ["x86_64", "aarch64"], "{index}");
    let arm = &entries[1];
    assert_eq!(arm["image"]["file"], "hello-1.0-aarch64.img");
    assert!(
        arm["toolchain"]
            .as_str()
            .is_some_and(|t| t.contains("-target aarch64-linux-musl")),
        "{arm}"
    );
    assert_ne!(arm["image"]["sha256"], entries[0]["image"]["sha256"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&files["hello-1.0-aarch64.img.manifest.json"]).unwrap();
    assert_eq!(manifest["arch"], "aarch64");
    let sbom = String::from_utf8_lossy(&files["hello-1.0-aarch64.img.spdx.json"]).into_owned();
    assert!(sbom.contains("arch aarch64"), "the SBOM names the arch");
    r.assert_no_leftovers();

    // An arch that is none: one line, nothing published.
    let before = r.snapshot();
    let o = r.release(&[&recipe], &["--arch", "x86_64,sparc"]);
    failed(&o, &["--arch sparc", "unknown arch `sparc`"]);
    assert_eq!(r.snapshot(), before);
}
