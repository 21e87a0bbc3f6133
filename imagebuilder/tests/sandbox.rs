//! Build scripts run in a sandbox: a probe package (`tests/sandbox/probe.sh`) tries
//! to read a secret in the builder's home, write into the host's `/tmp`, its home
//! and the test's directory, reach a listener of the test on 127.0.0.1 and on the
//! host's address, see the cache and other packages' outputs, and signal a `sleep`
//! the test started; it reports what got through into the image, and the test checks
//! the host side too. As root (as CI runs it) and as nobody (unprivileged user
//! namespaces), and, to prove the probe itself, without the sandbox. Needs root
//! (chown, setpriv), musl-tools, bash and e2fsprogs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use cartimage::manifest::Manifest;
use common::*;

const SECRET: &str = "cartbuild-signing-key-SECRET-4c1d2e";

/// Who runs cartbuild.
#[derive(Clone, Copy, PartialEq)]
enum As {
    Root,
    Nobody,
}

/// Everything the probe aims at, and how to read what it found.
struct Probe {
    env: Env,
    recipe: PathBuf,
    home: PathBuf,
    listener: TcpListener,
    sleep: Child,
    tmp_marker: PathBuf,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.sleep.kill();
        let _ = self.sleep.wait();
        let _ = fs::remove_file(&self.tmp_marker);
    }
}

fn host_address() -> String {
    // The address a packet to the outside would leave from (no packet is sent).
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    match s.connect("192.0.2.1:9").and_then(|_| s.local_addr()) {
        Ok(a) if !a.ip().is_unspecified() => a.ip().to_string(),
        _ => "127.0.0.2".into(),
    }
}

fn probe(who: As) -> Probe {
    require_root();
    let env = Env::new();
    let dir = env.dir.path().to_path_buf();
    let home = dir.join("home");
    let secret = home.join(".config/cartbuild/secret");
    fs::create_dir_all(secret.parent().unwrap()).unwrap();
    fs::write(&secret, SECRET).unwrap();
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Nobody's sleep is nobody's: only the PID namespace keeps the probe from it.
    let sleep = match who {
        As::Root => Command::new("sleep").arg("600").spawn().unwrap(),
        As::Nobody => Command::new(tool("setpriv"))
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["sleep", "600"])
            .spawn()
            .unwrap(),
    };
    let tmp_marker = std::env::temp_dir().join(format!(
        "cartbuild-probe-{}-{}",
        std::process::id(),
        sleep.id()
    ));
    let config = format!(
        "SECRET='{}'\nHOST_HOME='{}'\nHOST_DIR='{}'\nCACHE='{}'\nPORT={port}\nHOST_IP={}\nSLEEP_PID={}\nTMP_MARKER='{}'\n",
        secret.display(),
        home.display(),
        dir.display(),
        env.cache().display(),
        host_address(),
        sleep.id(),
        tmp_marker.file_name().unwrap().to_string_lossy(),
    );
    let script =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sandbox/probe.sh")).unwrap();
    let tarball = tarball(
        "probe-1",
        &[
            ("probe.sh", &script, 0o644),
            ("probe.env", config.as_bytes(), 0o644),
        ],
    );
    let src = dir.join("probe.tar.gz");
    fs::write(&src, &tarball).unwrap();
    env.write("other/other-marker.txt", "OTHER-PACKAGE-MARKER\n");
    env.write("dep/dep-marker.txt", "a dependency\n");
    let recipe = env.write(
        "r.toml",
        &format!(
            r#"[image]
name = "probe"
version = "1"
epoch = 1700000000

# Built first (--jobs 1): in the cache while the probe runs, never its dependency.
[[package]]
name = "other"
version = "1"
kind = "local"
path = "other"
install = "share/other"

[[package]]
name = "dep"
version = "1"
kind = "local"
path = "dep"
install = "."

[[package]]
name = "probe"
version = "1"
urls = ["file://{src}"]
sha256 = "{sha}"
depends = ["dep"]
install = ["share/probe"]
script = """
sh ./probe.sh
"""
"#,
            src = src.display(),
            sha = sha256(&tarball),
        ),
    );
    if who == As::Nobody {
        let st = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
    Probe {
        env,
        recipe,
        home,
        listener,
        sleep,
        tmp_marker,
    }
}

impl Probe {
    fn run(&self, who: As, args: &[&str]) -> Output {
        let mut c = self.env.command(&self.recipe);
        c.args(["--jobs", "1"]).args(args);
        if who == As::Nobody {
            let bin = self.env.dir.path().join("cartbuild");
            fs::copy(env!("CARGO_BIN_EXE_cartbuild"), &bin).unwrap();
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
            let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
            c = Command::new(tool("setpriv"));
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&bin)
                .args(&args)
                .env("XDG_CONFIG_HOME", self.env.dir.path().join("config"))
                .env_remove("CARTBUILD_CACHE");
        }
        c.env("HOME", &self.home)
            .env_remove("XDG_CACHE_HOME")
            .current_dir(self.env.dir.path());
        c.output().expect("run cartbuild")
    }

    /// The probe's report, read back from the image.
    fn report(&self) -> BTreeMap<String, String> {
        let bytes = read_from_image(&self.env.image(), "/share/probe/report.txt");
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn manifest(&self) -> Manifest {
        Manifest::read(&cartimage::manifest::sidecar(
            &self.env.image(),
            cartimage::manifest::MANIFEST_SUFFIX,
        ))
        .unwrap()
    }

    fn connections(&self) -> usize {
        let mut n = 0;
        loop {
            match self.listener.accept() {
                Ok(_) => n += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    fn sleep_alive(&mut self) -> bool {
        self.sleep.try_wait().unwrap().is_none()
    }
}

const ATTEMPTS: &[&str] = &[
    "read_secret",
    "list_host_home",
    "write_host_home",
    "write_host_dir",
    "list_cache",
    "list_cached_outputs",
    "read_cached_sources",
    "find_other_package",
    "connect_loopback",
    "connect_host_address",
    "see_outside_process",
    "signal_outside_process",
    "write_usr",
    "write_root",
    "write_toolchain",
    "write_deps",
    "write_script",
    "write_etc",
    "uid_root",
    "capabilities",
    "capability_bounding_set",
    "mount",
];

const CONTROLS: &[&str] = &[
    "deps_read",
    "write_out",
    "write_home",
    "write_private_tmp",
    "write_source",
    "compile",
];

fn assert_nothing_got_through(mut p: Probe, who: As) {
    let o = p.run(who, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = p.report();
    for name in ATTEMPTS {
        assert_eq!(
            report.get(*name).map(String::as_str),
            Some("blocked"),
            "{name} got through the sandbox: {report:?}"
        );
    }
    for name in CONTROLS {
        assert_eq!(
            report.get(*name).map(String::as_str),
            Some("ok"),
            "{name} must work in the sandbox: {report:?}"
        );
    }
    assert_eq!(report["uid"], "1000");
    // And from the host's side.
    assert_eq!(p.connections(), 0, "the listener got a connection");
    assert!(p.sleep_alive(), "the sleep outside was killed");
    assert!(
        !p.tmp_marker.exists(),
        "the probe wrote into the host's /tmp"
    );
    let dir = p.env.dir.path();
    for f in [dir.join("pwned"), p.home.join("pwned")] {
        assert!(!f.exists(), "the probe wrote {}", f.display());
    }
    let home: Vec<_> = fs::read_dir(&p.home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(home, [".config"], "the probe wrote into the builder's home");
    for f in [
        "/usr/cartbuild-probe",
        "/cartbuild-probe",
        "/etc/cartbuild-probe",
    ] {
        let there = Path::new(f).exists();
        let _ = fs::remove_file(f);
        assert!(!there, "the probe wrote {f}");
    }
    // The secret is nowhere in what was built.
    let image = fs::read(p.env.image()).unwrap();
    assert!(
        !image.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the secret is in the image"
    );
    for e in walkdir::WalkDir::new(p.env.cache().join("builds")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let text = fs::read(e.path()).unwrap();
            assert!(
                !text.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "the secret is in {}",
                e.path().display()
            );
            // Nothing of the cache belongs to the sandbox's user.
            use std::os::unix::fs::MetadataExt;
            let owner = e.metadata().unwrap().uid();
            assert_ne!(owner, cartbuild::sandbox::HOST_ID, "{}", e.path().display());
        }
    }
    assert_eq!(p.manifest().sandbox.as_deref(), Some("namespaces"));
    assert_cache_verified(&p.env);
}

#[test]
fn the_probe_reaches_nothing_as_root() {
    assert_nothing_got_through(probe(As::Root), As::Root);
}

#[test]
fn the_probe_reaches_nothing_as_an_ordinary_user() {
    assert_nothing_got_through(probe(As::Nobody), As::Nobody);
}

/// The probe itself works: without the sandbox (as nobody, so that nothing of the
/// host's system is at stake) it reads the secret, writes into the test's directory,
/// connects, lists the cache, finds the other package and kills the sleep.
#[test]
fn without_the_sandbox_the_probe_gets_through() {
    let mut p = probe(As::Nobody);
    let o = p.run(As::Nobody, &["--no-sandbox"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--no-sandbox"), "{}", stderr(&o));
    let report = p.report();
    for name in [
        "read_secret",
        "list_host_home",
        "write_host_home",
        "write_host_dir",
        "list_cache",
        "list_cached_outputs",
        "find_other_package",
        "connect_loopback",
        "see_outside_process",
        "signal_outside_process",
    ] {
        assert_eq!(
            report.get(name).map(String::as_str),
            Some("SUCCEEDED"),
            "{name}: {report:?}"
        );
    }
    assert!(p.connections() >= 1);
    assert!(!p.sleep_alive());
    assert!(p.env.dir.path().join("pwned").exists());
    assert_eq!(p.manifest().sandbox.as_deref(), Some("none"));
}

/// Where no user namespace can be made (here: a user namespace whose
/// user.max_user_namespaces is 0), cartbuild refuses with one line naming the fix,
/// and builds with --no-sandbox.
#[test]
fn without_namespaces_cartbuild_refuses_unless_no_sandbox() {
    require_root();
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
    );
    let run = |extra: &[&str]| {
        let c = env.command(&recipe);
        let mut u = Command::new(tool("unshare"));
        u.args(["--user", "--map-root-user", "--", "sh", "-c"])
            .arg("echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"")
            .arg("sh")
            .arg(c.get_program())
            .args(c.get_args())
            .args(extra);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => u.env(k, v),
                None => u.env_remove(k),
            };
        }
        u.output().expect("unshare (util-linux)")
    };
    let o = run(&[]);
    assert_fails(
        &env,
        &o,
        &[
            "cannot run build scripts in a sandbox",
            "namespaces",
            "user.max_user_namespaces",
            "--no-sandbox",
        ],
    );
    assert!(
        !env.cache().join("builds").exists()
            || fs::read_dir(env.cache().join("builds")).unwrap().count() == 0
    );
    let o = run(&["--no-sandbox"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = Manifest::read(&cartimage::manifest::sidecar(
        &env.image(),
        cartimage::manifest::MANIFEST_SUFFIX,
    ))
    .unwrap();
    assert_eq!(m.sandbox.as_deref(), Some("none"));
}

/// The sandbox is part of the build key: an output built without it is not taken
/// for a sandboxed one (nor the other way round), and each is cached.
#[test]
fn sandboxed_and_unsandboxed_outputs_are_cached_apart() {
    let env = Env::new();
    let (server, _, sha) = hello_server("x");
    let recipe = env.write(
        "r.toml",
        &hello_recipe(&env, &[server.url("/hello.tar.gz")], &sha),
    );
    let manifest = || {
        Manifest::read(&cartimage::manifest::sidecar(
            &env.image(),
            cartimage::manifest::MANIFEST_SUFFIX,
        ))
        .unwrap()
    };
    let o = env.run(&recipe, &["--no-sandbox"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let unsandboxed = manifest();
    assert_eq!(unsandboxed.sandbox.as_deref(), Some("none"));
    let o = env.run(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(env.builds(), 2, "the unsandboxed output was reused");
    let sandboxed = manifest();
    assert_eq!(sandboxed.sandbox.as_deref(), Some("namespaces"));
    assert_ne!(
        unsandboxed.packages[0].build_key,
        sandboxed.packages[0].build_key
    );
    for args in [&[][..], &["--no-sandbox"][..]] {
        let o = env.run(&recipe, args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(env.builds(), 2, "a cached output was rebuilt");
}
