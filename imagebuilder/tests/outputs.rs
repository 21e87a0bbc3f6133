//! What `cartbuild` writes besides the image, and reading images back: the
//! manifest inside and beside the image, the SPDX SBOM, `--format gpt`,
//! `cartbuild inspect` (including corrupt and truncated images), `cartbuild
//! diff`, a build by an unprivileged user, and the time stamps a mount shows.
//!
//! Real builds of a small static C program over HTTP on 127.0.0.1 (see
//! `common`). Needs musl-tools and e2fsprogs; the GPT test needs util-linux
//! (sfdisk, losetup), mtools and dosfstools; the mount tests need root; the
//! SBOM validator test installs `spdx-tools` from PyPI into a virtualenv in
//! the target directory (python3-venv). A missing one fails the test.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cartimage::manifest::{FileKind, Manifest, PATH_IN_IMAGE};
use common::*;
use serde_json::Value;

const EPOCH: u64 = 1_700_000_000;
/// What `ls --time-style=full-iso` shows for EPOCH in UTC.
const EPOCH_ISO: &str = "2023-11-14 22:13:20.000000000 +0000";
const MESSAGE: &str = "MARKER-hello-from-crashcart-7f3a9c";

/// Builds the hello recipe `text` in `env` with extra arguments; asserts success.
fn build(env: &Env, text: &str, args: &[&str]) -> PathBuf {
    let recipe = env.write("r.toml", text);
    let o = env.run(&recipe, args);
    assert!(
        o.status.success(),
        "cartbuild failed:\n{}\nrecipe:\n{}",
        stderr(&o),
        text
    );
    env.image()
}

fn sidecar(image: &Path, suffix: &str) -> PathBuf {
    cartimage::manifest::sidecar(image, suffix)
}

fn cartbuild(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cartbuild"))
        .args(args)
        .output()
        .expect("run cartbuild")
}

// ---------------------------------------------------------------------------
// The manifest and the SBOM

#[test]
fn manifest_inside_and_beside_the_image_and_an_sbom() {
    let env = Env::new();
    let (server, _, src_sha) = hello_server(MESSAGE);
    let url = server.url("/hello.tar.gz");
    let image = build(
        &env,
        &hello_recipe(&env, std::slice::from_ref(&url), &src_sha),
        &[],
    );
    let image_bytes = fs::read(&image).unwrap();
    let image_sha = sha256(&image_bytes);

    // <image>.sha256 in sha256sum format.
    assert_eq!(
        fs::read_to_string(sidecar(&image, ".sha256")).unwrap(),
        format!("{image_sha}  test.img\n")
    );

    // The manifest beside the image: everything the issue lists.
    let beside = Manifest::read(&sidecar(&image, ".manifest.json")).unwrap();
    assert_eq!(
        (beside.image.name.as_str(), beside.image.version.as_str()),
        ("test", "1.0")
    );
    assert_eq!(beside.epoch, EPOCH);
    assert_eq!(beside.recipe_sha256.len(), 64);
    assert_eq!(beside.image_sha256.as_deref(), Some(image_sha.as_str()));
    assert_eq!(beside.image_size, Some(image_bytes.len() as u64));
    assert!(beside.toolchain.as_deref().unwrap().contains("musl"));
    let [pkg] = beside.packages.as_slice() else {
        panic!("one package expected: {:?}", beside.packages)
    };
    assert_eq!(
        (pkg.name.as_str(), pkg.version.as_str(), pkg.kind.as_str()),
        ("hello", "1.0", "build")
    );
    assert_eq!(pkg.license.as_deref(), Some("MIT"));
    assert_eq!(pkg.sources[0].urls, [url]);
    assert_eq!(pkg.sources[0].sha256, src_sha);
    assert_eq!(pkg.build_key.as_deref().map(str::len), Some(64));
    let hello_bin = read_from_image(&image, "/bin/hello");
    let entry = beside.file("bin/hello").expect("bin/hello in the manifest");
    assert_eq!(entry.kind, FileKind::File);
    assert_eq!(entry.mode, 0o755);
    assert_eq!(entry.size, hello_bin.len() as u64);
    assert_eq!(entry.sha256.as_deref(), Some(sha256(&hello_bin).as_str()));
    assert_eq!(entry.package.as_deref(), Some("hello"));
    assert_eq!(beside.file("bin").unwrap().kind, FileKind::Dir);
    assert_eq!(beside.file(".crashcart").unwrap().kind, FileKind::Dir);
    let paths: Vec<&str> = beside.files.iter().map(|f| f.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted, "files are sorted by path");
    assert!(beside.file(PATH_IN_IMAGE).is_none());

    // Inside the image: the same manifest without the image's own digest, nor where each
    // output came from (said only beside it: the image is the same either way).
    let inside_bytes = read_from_image(&image, &format!("/{PATH_IN_IMAGE}"));
    let inside = Manifest::from_slice(&inside_bytes, Path::new("inside")).unwrap();
    assert_eq!(inside.image_sha256, None);
    assert_eq!(inside.image_size, None);
    assert!(inside.packages.iter().all(|p| p.origin.is_none()));
    assert!(
        beside
            .packages
            .iter()
            .all(|p| p.origin.as_ref().is_some_and(|o| o.from == "built")),
        "{:?}",
        beside.packages
    );
    let mut without_origins = beside.clone();
    for p in &mut without_origins.packages {
        p.origin = None;
    }
    assert_eq!(
        Manifest {
            image_sha256: None,
            image_size: None,
            ..without_origins
        },
        inside
    );

    // The SBOM.
    let spdx_path = sidecar(&image, ".spdx.json");
    let spdx: Value = serde_json::from_slice(&fs::read(&spdx_path).unwrap()).unwrap();
    check_spdx(&spdx);
    assert_eq!(spdx["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        spdx["documentNamespace"],
        format!("https://crashcart.invalid/spdx/test-1.0-{image_sha}")
    );
    let hello_pkg = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hello")
        .expect("the hello package in the SBOM");
    assert_eq!(hello_pkg["versionInfo"], "1.0");
    assert_eq!(hello_pkg["licenseDeclared"], "MIT");
    // 127.0.0.1 is no place to download from for anyone else.
    assert_eq!(hello_pkg["downloadLocation"], "NOASSERTION");
    assert!(
        hello_pkg["sourceInfo"]
            .as_str()
            .unwrap()
            .contains(&server.url("/hello.tar.gz"))
    );
    assert_eq!(hello_pkg["checksums"][0]["checksumValue"], src_sha);
    let hello_file = spdx["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fileName"] == "./bin/hello")
        .expect("bin/hello in the SBOM");
    let sums: BTreeMap<&str, &str> = hello_file["checksums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["algorithm"].as_str().unwrap(),
                c["checksumValue"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(sums["SHA256"], sha256(&hello_bin));
    assert_eq!(sums["SHA1"].len(), 40);

    // cartbuild inspect agrees, and says so in JSON too.
    let o = cartbuild(&["inspect".as_ref(), image.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("hello  1.0"), "{text}");
    assert!(
        text.contains("test.img.sha256: the image's sha256 matches"),
        "{text}"
    );
    assert!(text.contains("every one matches the manifest"), "{text}");
    let o = cartbuild(&["inspect".as_ref(), "--json".as_ref(), image.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"]["image"]["name"], "test");
    assert_eq!(v["verified"]["problems"], Value::Array(vec![]));
    assert_eq!(v["verified"]["entries"], beside.files.len() + 1);
}

#[test]
fn the_spdx_project_validator_accepts_the_sbom() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let image = build(
        &env,
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
        &[],
    );
    let o = Command::new(spdx_validator())
        .arg("-i")
        .arg(sidecar(&image, ".spdx.json"))
        .output()
        .expect("run pyspdxtools");
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success(), "pyspdxtools rejected the SBOM:\n{text}");
    assert!(
        !text.contains("ValidationMessage") && !text.to_lowercase().contains("invalid"),
        "{text}"
    );
}

#[test]
fn the_epoch_comes_from_source_date_epoch_else_the_recipe_else_zero() {
    let (server, _, sha) = hello_server("x");
    let epoch_of = |text: &str, sde: Option<&str>| {
        let env = Env::new();
        let recipe = env.write("r.toml", text);
        let mut c = env.command(&recipe);
        if let Some(v) = sde {
            c.env("SOURCE_DATE_EPOCH", v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let m = Manifest::read(&sidecar(&env.image(), ".manifest.json")).unwrap();
        let fs = ext4_view::Ext4::load_from_path(env.image()).unwrap();
        let mtime = fs.metadata("/bin/hello").unwrap().modified().seconds();
        assert_eq!(u64::try_from(mtime).unwrap(), m.epoch);
        m.epoch
    };
    let env = Env::new();
    let text = hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha);
    assert_eq!(epoch_of(&text, None), EPOCH);
    assert_eq!(epoch_of(&text, Some("1600000000")), 1_600_000_000);
    let no_epoch = text.replace(&format!("epoch = {EPOCH}\n"), "");
    assert_eq!(epoch_of(&no_epoch, None), 0);

    // Past 2106: refused before anything is built, nothing written.
    let env = Env::new();
    let recipe = env.write("r.toml", &text);
    let o = env
        .command(&recipe)
        .env("SOURCE_DATE_EPOCH", "4294967296")
        .output()
        .unwrap();
    assert_fails(
        &env,
        &o,
        &["epoch 4294967296 is after 2106-02-07T06:28:15Z"],
    );
    assert_eq!(env.builds(), 0);
}

#[test]
fn a_package_may_not_install_the_manifest_directory() {
    let env = Env::new();
    env.write("files/.crashcart/x", "mine\n");
    let recipe = env.write(
        "r.toml",
        "[image]\nname = \"t\"\nversion = \"1\"\n\n[[package]]\nname = \"sneaky\"\nversion = \"1\"\nkind = \"local\"\npath = \"files\"\ninstall = \".\"\n",
    );
    let o = env.run(&recipe, &[]);
    assert_fails(
        &env,
        &o,
        &[".crashcart/ is installed by package sneaky", "reserved"],
    );
}

// ---------------------------------------------------------------------------
// No root, no e2fsprogs; the times a mount shows

/// Runs cartbuild as `nobody` (uid/gid 65534, no supplementary groups) from
/// a copy of the binary and in an environment that user owns.
fn build_as_nobody(env: &Env, recipe: &Path) -> Output {
    let bin_dir = env.dir.path().join("bin");
    fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("cartbuild");
    fs::copy(env!("CARGO_BIN_EXE_cartbuild"), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(env.dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "chown needs root (tests/run runs as root)");
    let c = env.command(recipe);
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let mut c = Command::new(tool("setpriv"));
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(&args)
        .env("HOME", env.dir.path())
        .env("XDG_CONFIG_HOME", env.dir.path().join("config"))
        .env_remove("CARTBUILD_CACHE")
        .env_remove("SOURCE_DATE_EPOCH");
    c.output().expect("setpriv (util-linux)")
}

#[test]
fn an_unprivileged_user_builds_the_same_image_without_e2fsprogs() {
    require_root();
    let (server, _, sha) = hello_server("x");
    let root_env = Env::new();
    let text = hello_recipe(&root_env, &[server.url("/hello.tar.gz")], &sha);
    let root_image = build(&root_env, &text, &[]);

    let env = Env::new();
    let recipe = env.write("r.toml", &text);
    // The counter file lives in root_env: let nobody append to it.
    fs::write(root_env.counter(), "").unwrap();
    fs::set_permissions(root_env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root_env.counter(), fs::Permissions::from_mode(0o666)).unwrap();
    // A PATH without e2fsprogs' directories proves nothing of it is needed.
    let o = build_as_nobody(&env, &recipe);
    assert!(o.status.success(), "as nobody:\n{}", stderr(&o));
    let image = env.image();
    assert_eq!(fs::metadata(&image).unwrap().uid(), 65534);
    assert_eq!(
        sha256(&fs::read(&image).unwrap()),
        sha256(&fs::read(&root_image).unwrap()),
        "the image depends on who builds it"
    );
    assert_fsck_clean(&image);
}

#[test]
fn every_time_on_a_mount_is_the_epoch() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let image = build(
        &env,
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
        &[],
    );
    let mount = LoopMount::new(&image, 0, None);
    let mut checked = 0;
    for e in walkdir::WalkDir::new(mount.path()) {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        let times = [m.atime(), m.mtime(), m.ctime()];
        assert_eq!(times, [EPOCH as i64; 3], "{}", e.path().display());
        let born = m.created().unwrap();
        assert_eq!(
            born.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            EPOCH,
            "crtime of {}",
            e.path().display()
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} entries");
    // What a person sees: no 1903, no build date.
    let o = Command::new("ls")
        .args(["-lAR", "--time-style=full-iso"])
        .arg(mount.path())
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = stdout(&o);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(['-', 'd', 'l']))
        .collect();
    assert!(lines.len() >= 5, "{text}");
    for l in lines {
        assert!(l.contains(EPOCH_ISO), "not the epoch: {l}");
    }
    drop(mount);
}

// ---------------------------------------------------------------------------
// --format gpt

/// Partition name → (start, size) in bytes, from `sfdisk --json`.
fn partitions(disk: &Path) -> BTreeMap<String, (u64, u64)> {
    let o = run_tool("sfdisk", &["--json".as_ref(), disk.as_os_str()]);
    assert!(o.status.success(), "sfdisk --json: {}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["partitiontable"]["label"], "gpt");
    assert_eq!(v["partitiontable"]["sectorsize"], 512);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                (
                    p["start"].as_u64().unwrap() * 512,
                    p["size"].as_u64().unwrap() * 512,
                ),
            )
        })
        .collect()
}

fn mtools(args: &[&str], disk: &Path, offset: u64) -> Output {
    let image = format!("{}@@{offset}", disk.display());
    let (cmd, rest) = args.split_first().unwrap();
    Command::new(cmd)
        .arg("-i")
        .arg(&image)
        .args(rest)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} ({e}): apt-get install mtools"))
}

#[test]
fn a_gpt_disk_holds_the_filesystem_and_describes_itself() {
    let (server, _, sha) = hello_server(MESSAGE);
    let env = Env::new();
    let text = hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha);
    let bare = build(&env, &text, &[]);
    let bare_bytes = fs::read(&bare).unwrap();
    let disk_env = Env::new();
    let disk = build(&disk_env, &text, &["--format", "gpt"]);
    let disk_bytes = fs::read(&disk).unwrap();
    assert_eq!(disk_bytes.len() % (1 << 20), 0, "a whole number of MiB");

    // The partition table: both partitions by name, and sfdisk finds no
    // problem in it (protective MBR, primary and backup GPT agree).
    let dump = run_tool("sfdisk", &["--dump".as_ref(), disk.as_os_str()]);
    let dump = stdout(&dump);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(dump.contains("name=\"crashcart\""), "{dump}");
    assert!(dump.contains("name=\"crashcart-meta\""), "{dump}");
    let verify = run_tool("sfdisk", &["--verify".as_ref(), disk.as_os_str()]);
    assert!(
        verify.status.success(),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    assert!(
        stdout(&verify).contains("No errors detected"),
        "{}",
        stdout(&verify)
    );
    assert_eq!(&disk_bytes[510..512], &[0x55, 0xaa], "MBR signature");
    assert_eq!(disk_bytes[446 + 4], 0xee, "protective MBR partition");
    let parts = partitions(&disk);
    let (fs_at, fs_len) = parts["crashcart"];
    let (meta_at, meta_len) = parts["crashcart-meta"];
    assert_eq!(fs_at, 1 << 20);
    assert_eq!(meta_at % (1 << 20), 0);

    // Partition 1 is the bare image, byte for byte, and e2fsck passes it.
    let fs_bytes = &disk_bytes[fs_at as usize..(fs_at + fs_len) as usize];
    assert_eq!(fs_bytes, bare_bytes.as_slice());
    let extracted = env.dir.path().join("partition1.img");
    fs::write(&extracted, fs_bytes).unwrap();
    assert_fsck_clean(&extracted);

    // cartimage::detect (what cartinject uses) finds it there.
    let (_, detected) = cartimage::detect::open(&disk).unwrap();
    assert_eq!((detected.offset, detected.size), (fs_at, fs_len));

    // The FAT partition, read with mtools: the manifest as inside, the SBOM
    // as beside, and the filesystem's checksum.
    let dir = mtools(&["mdir", "-b", "::"], &disk, meta_at);
    assert!(dir.status.success(), "mdir: {}", stderr(&dir));
    let listed = stdout(&dir);
    for name in [
        "manifest.json",
        "sbom.spdx.json",
        "crashcart.sha256",
        "README.txt",
    ] {
        assert!(listed.contains(name), "{name} not in:\n{listed}");
    }
    let get = |name: &str| {
        let o = mtools(&["mcopy", &format!("::{name}"), "-"], &disk, meta_at);
        assert!(o.status.success(), "mcopy {name}: {}", stderr(&o));
        o.stdout
    };
    assert_eq!(
        get("manifest.json"),
        read_from_image(&bare, &format!("/{PATH_IN_IMAGE}"))
    );
    assert_eq!(
        get("sbom.spdx.json"),
        fs::read(sidecar(&disk, ".spdx.json")).unwrap()
    );
    assert_eq!(
        String::from_utf8(get("crashcart.sha256")).unwrap(),
        format!("{}  test-1.0.img\n", sha256(&bare_bytes))
    );
    let fat = env.dir.path().join("partition2.img");
    fs::write(
        &fat,
        &disk_bytes[meta_at as usize..(meta_at + meta_len) as usize],
    )
    .unwrap();
    let fsck = run_tool("fsck.vfat", &["-n".as_ref(), fat.as_os_str()]);
    assert!(
        fsck.status.success(),
        "fsck.vfat -n: {}{}",
        stdout(&fsck),
        stderr(&fsck)
    );

    // The disk's own sidecars; inspect verifies all of it.
    assert_eq!(
        fs::read_to_string(sidecar(&disk, ".sha256")).unwrap(),
        format!("{}  test.img\n", sha256(&disk_bytes))
    );
    let m = Manifest::read(&sidecar(&disk, ".manifest.json")).unwrap();
    assert_eq!(m.image_size, Some(disk_bytes.len() as u64));
    let o = cartbuild(&["inspect".as_ref(), disk.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = stdout(&o);
    assert!(shown.contains("partition 1 `crashcart`"), "{shown}");
    assert!(shown.contains("crashcart-meta:crashcart.sha256"), "{shown}");

    // The kernel mounts partition 1 through a loop device at its offset,
    // and the program in it runs.
    {
        let mount = LoopMount::new(&disk, fs_at, Some(fs_len));
        let out = Command::new(mount.path().join("bin/hello"))
            .output()
            .unwrap();
        assert_eq!(stdout(&out).trim(), MESSAGE);
        assert_eq!(
            fs::read(mount.path().join(PATH_IN_IMAGE)).unwrap(),
            get("manifest.json")
        );
    }

    // Reproducible: a second build elsewhere gives the same disk.
    let other = Env::new();
    let disk2 = build(&other, &text, &["--format", "gpt"]);
    assert_eq!(sha256(&fs::read(&disk2).unwrap()), sha256(&disk_bytes));

    // Without -o, the disk is images/<name>-<version>.gpt.img.
    let cwd = tempfile::tempdir().unwrap();
    let recipe = env.write("r.toml", &text);
    let o = Command::new(env!("CARGO_BIN_EXE_cartbuild"))
        .current_dir(cwd.path())
        .arg(&recipe)
        .args(["--format", "gpt", "--cache"])
        .arg(env.cache())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cwd.path().join("images/test-1.0.gpt.img").is_file());
}

// ---------------------------------------------------------------------------
// inspect: corrupt, truncated and foreign files

/// A copy of `image` in a directory of its own (no sidecars), changed by `f`.
fn damaged(dir: &Path, name: &str, image: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = image.to_vec();
    f(&mut bytes);
    let sub = dir.join(name);
    fs::create_dir_all(&sub).unwrap();
    let path = sub.join("image.img");
    fs::write(&path, bytes).unwrap();
    path
}

/// `cartbuild inspect` fails with one error line containing every needle.
fn inspect_fails(image: &Path, needles: &[&str]) -> String {
    let o = cartbuild(&["inspect".as_ref(), image.as_os_str()]);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "inspect accepted {}:\n{}",
        image.display(),
        stdout(&o)
    );
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("cartbuild: error: "), "{err}");
    for n in needles {
        assert!(last.contains(n), "{n:?} not in {last:?}");
    }
    err
}

fn find(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn inspect_rejects_corrupt_truncated_and_foreign_images() {
    let env = Env::new();
    let (server, _, sha) = hello_server(MESSAGE);
    let image = build(
        &env,
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
        &[],
    );
    let bytes = fs::read(&image).unwrap();
    let work = tempfile::tempdir().unwrap();

    // A flipped byte in bin/hello's data block: the message is compiled into
    // the binary and appears nowhere else in the image.
    let at = find(&bytes, MESSAGE.as_bytes());
    assert_eq!(at.len(), 1, "the marker is in one data block");
    let flipped = damaged(work.path(), "data", &bytes, |b| b[at[0]] ^= 0x20);
    let err = inspect_fails(
        &flipped,
        &[
            "does not match its manifest",
            "1 problem",
            "bin/hello: sha256",
        ],
    );
    assert!(
        err.contains("cartbuild: mismatch: bin/hello: sha256"),
        "{err}"
    );

    // A manifest that lies about a file (its recorded sha256 changed).
    let manifest = Manifest::read(&sidecar(&image, ".manifest.json")).unwrap();
    let hello_sha = manifest.file("bin/hello").unwrap().sha256.clone().unwrap();
    let at = find(&bytes, hello_sha.as_bytes());
    assert_eq!(at.len(), 1, "the sha256 is in the in-image manifest only");
    let lying = damaged(work.path(), "manifest", &bytes, |b| {
        b[at[0]] = if b[at[0]] == b'0' { b'1' } else { b'0' }
    });
    inspect_fails(&lying, &["bin/hello: sha256", "the manifest says"]);

    // Truncated: cut at the last block.
    let cut = damaged(work.path(), "truncated", &bytes, |b| {
        b.truncate(b.len() - 4096)
    });
    inspect_fails(&cut, &["is truncated", "copy or build it again"]);

    // A broken superblock: the magic, then the block size.
    let magic = damaged(work.path(), "magic", &bytes, |b| b[1024 + 0x38] ^= 0xff);
    inspect_fails(&magic, &["is not a filesystem image"]);
    let block_size = damaged(work.path(), "block-size", &bytes, |b| b[1024 + 24] = 9);
    inspect_fails(&block_size, &["corrupt"]);

    // Not an image at all, and an empty file.
    let text = damaged(work.path(), "text", b"just some text\n", |_| {});
    inspect_fails(&text, &["is not a filesystem image"]);
    let empty = damaged(work.path(), "empty", b"", |_| {});
    inspect_fails(&empty, &["is empty"]);
    inspect_fails(&work.path().join("missing.img"), &["does not exist"]);

    // An ext4 image without a manifest (written by the writer alone).
    let bare = work.path().join("no-manifest.img");
    let mut tree = cartbuild::ext4::Tree::new();
    tree.add_dir("bin", cartbuild::ext4::Meta::root(0o755))
        .unwrap();
    let mut f = fs::File::create(&bare).unwrap();
    cartbuild::ext4::write_image(&tree, &mut f, &cartbuild::ext4::Options::default()).unwrap();
    inspect_fails(&bare, &["has no manifest", ".crashcart/manifest.json"]);

    // A checksum beside the image that does not match.
    let copy = damaged(work.path(), "sidecar", &bytes, |_| {});
    fs::write(
        sidecar(&copy, ".sha256"),
        format!("{}  image.img\n", "0".repeat(64)),
    )
    .unwrap();
    inspect_fails(&copy, &["image.img.sha256: says sha256 0000"]);

    // The untouched image still passes.
    let o = cartbuild(&["inspect".as_ref(), image.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------
// diff

#[test]
fn diff_names_the_package_and_the_files_that_changed() {
    let (server_a, _, sha_a) = hello_server("version one");
    let (server_b, _, sha_b) = hello_server("version two, longer");
    let a = Env::new();
    let b = Env::new();
    let text_a = hello_recipe(&a, &[server_a.url("/hello.tar.gz")], &sha_a);
    // The same recipe but for one package: hello 1.1 from another source.
    let text_b = hello_recipe(&a, &[server_b.url("/hello.tar.gz")], &sha_b)
        .replace("version = \"1.0\"\nlicense", "version = \"1.1\"\nlicense");
    assert_ne!(text_a, text_b);
    let old = build(&a, &text_a, &[]);
    let new = build(&b, &text_b, &[]);

    let o = cartbuild(&["diff".as_ref(), old.as_os_str(), new.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("manifest inside the image"), "{text}");
    assert!(
        text.contains("~ hello: version 1.0 -> 1.1, source changed (sha256)"),
        "{text}"
    );
    assert!(text.contains("~ bin/hello: content"), "{text}");
    assert!(text.contains("1 package and 1 file changed"), "{text}");

    let o = cartbuild(&[
        "diff".as_ref(),
        "--json".as_ref(),
        old.as_os_str(),
        new.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["same"], false);
    let pkgs = v["diff"]["packages"].as_array().unwrap();
    assert_eq!(pkgs.len(), 1, "{v}");
    assert_eq!(pkgs[0]["name"], "hello");
    assert_eq!(pkgs[0]["change"], "changed");
    assert_eq!(pkgs[0]["old_version"], "1.0");
    assert_eq!(pkgs[0]["new_version"], "1.1");
    let files: Vec<&str> = v["diff"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["bin/hello"]);

    // The sidecar manifests say the same; --exit-code makes a difference an
    // error, and an image compared with itself has none.
    let o = cartbuild(&[
        "diff".as_ref(),
        sidecar(&old, ".manifest.json").as_os_str(),
        sidecar(&new, ".manifest.json").as_os_str(),
        "--exit-code".as_ref(),
    ]);
    assert!(!o.status.success());
    let text = stdout(&o);
    assert!(text.contains("manifest file"), "{text}");
    assert!(text.contains("~ bin/hello: content"), "{text}");
    let o = cartbuild(&[
        "diff".as_ref(),
        "--exit-code".as_ref(),
        old.as_os_str(),
        old.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("no differences"));

    // A side that is not an image is one clear error.
    let o = cartbuild(&[
        "diff".as_ref(),
        old.as_os_str(),
        "/nonexistent/x.img".as_ref(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}
