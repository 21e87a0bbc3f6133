//! The real thing: `cartbuild recipes/net.toml` with the Debian mirror resolved
//! from the host's apt sources (or `CARTBUILD_MIRROR_DEBIAN`), then every tool
//! of the image run from the image's bytes and checked static.
//!
//! Cold, this takes minutes (it builds ncurses, bash, busybox, libpcap, tcpdump,
//! lsof and strace). The cache lives in the target directory
//! (`$CARGO_TARGET_TMPDIR/cartbuild-net-cache`) so repeated local runs are quick;
//! `CARTBUILD_TEST_COLD=1` uses an empty cache instead. Needs musl-tools,
//! linux-libc-dev, flex, bison, gcc and e2fsprogs (`.ci/packages`) and the
//! Debian mirror; a missing one fails the test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cartimage::manifest::{FileKind, Manifest};
use common::{assert_fsck_clean, check_spdx, repo_root, sha256, spdx_validator};

fn cartbuild(cache: &Path, image: &Path) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cartbuild"));
    c.current_dir(repo_root())
        .arg("recipes/net.toml")
        .arg("--cache")
        .arg(cache)
        .arg("-o")
        .arg(image)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("CARTBUILD_CACHE");
    c.output().expect("run cartbuild")
}

/// Runs `bin args` and returns stdout and stderr together.
fn run(bin: &Path, args: &[&str]) -> String {
    let o = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn net_image_builds_and_its_tools_run() {
    let work = tempfile::Builder::new()
        .prefix("cartbuild-net-")
        .tempdir()
        .unwrap();
    let cold;
    let cache = if std::env::var_os("CARTBUILD_TEST_COLD").is_some() {
        cold = tempfile::tempdir().unwrap();
        cold.path().to_path_buf()
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cartbuild-net-cache")
    };
    let image = work.path().join("net.img");

    let o = cartbuild(&cache, &image);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "cartbuild recipes/net.toml failed:\n{err}"
    );
    assert!(image.exists());
    assert_fsck_clean(&image);
    let first_sha = sha256(&fs::read(&image).unwrap());
    let sidecar = fs::read_to_string(work.path().join("net.img.sha256")).unwrap();
    assert_eq!(sidecar, format!("{first_sha}  net.img\n"));

    // The manifest beside the image names every tool with its version and
    // license, and which package installed each file.
    let manifest = Manifest::read(&work.path().join("net.img.manifest.json")).unwrap();
    assert_eq!(manifest.image_sha256.as_deref(), Some(first_sha.as_str()));
    let versions: Vec<(&str, &str)> = manifest
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    for want in [
        ("bash", "5.2.15"),
        ("busybox", "1.35.0"),
        ("libpcap", "1.10.3"),
        ("lsof", "4.95.0"),
        ("strace", "6.1"),
        ("tcpdump", "4.99.3"),
    ] {
        assert!(versions.contains(&want), "{want:?} not in {versions:?}");
    }
    assert!(manifest.packages.iter().all(|p| p.license.is_some()));
    assert_eq!(
        manifest.file("bin/tcpdump").unwrap().package.as_deref(),
        Some("tcpdump")
    );
    assert_eq!(
        manifest
            .packages
            .iter()
            .find(|p| p.name == "tcpdump")
            .unwrap()
            .depends,
        ["libpcap"]
    );
    // Small: at most 5% above its content (every regular file's content
    // once, however many hard links name it, the manifest included, as the
    // benchmark counts it); the rest is inodes, directories and 64 KiB of
    // free space.
    let content: u64 = manifest
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File && f.link.is_none())
        .map(|f| f.size)
        .sum::<u64>()
        + common::read_from_image(&image, "/.crashcart/manifest.json").len() as u64;
    let size = manifest.image_size.unwrap();
    eprintln!(
        "net image: {size} bytes for {content} bytes of content ({:.2}% above)",
        (size as f64 / content as f64 - 1.0) * 100.0
    );
    assert!(
        size * 100 <= content * 105,
        "image {size} bytes for {content} bytes of content"
    );

    // The SBOM is valid SPDX 2.3 (the SPDX project's validator says so) and
    // names every package's source.
    let spdx_path = work.path().join("net.img.spdx.json");
    let spdx: serde_json::Value = serde_json::from_slice(&fs::read(&spdx_path).unwrap()).unwrap();
    check_spdx(&spdx);
    let tcpdump = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tcpdump")
        .unwrap();
    assert_eq!(
        tcpdump["downloadLocation"],
        "https://www.tcpdump.org/release/tcpdump-4.99.3.tar.gz"
    );
    assert_eq!(tcpdump["licenseDeclared"], "BSD-3-Clause");
    let o = Command::new(spdx_validator())
        .arg("-i")
        .arg(&spdx_path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pyspdxtools rejected the net SBOM:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // cartbuild inspect reads it back and every file matches.
    let o = Command::new(env!("CARGO_BIN_EXE_cartbuild"))
        .arg("inspect")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Take the tree out of the image (no root, no mount).
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", tree.display()))
        .arg(&image)
        .output()
        .expect("debugfs is missing: apt-get install e2fsprogs");
    assert!(out.status.success());
    let bin = tree.join("bin");

    for (tool, args, want) in [
        ("bash", &["--version"][..], "version 5.2.15"),
        ("tcpdump", &["--version"][..], "tcpdump version 4.99.3"),
        ("strace", &["-V"][..], "strace -- version 6.1"),
        ("lsof", &["-v"][..], "revision: 4.95.0"),
        ("busybox", &["--help"][..], "BusyBox v1.35.0"),
    ] {
        let path = bin.join(tool);
        let info = cartbuild::elf::inspect(&path)
            .unwrap()
            .unwrap_or_else(|| panic!("{tool} is not an ELF file"));
        assert!(info.is_static(), "{tool} is not static: {info:?}");
        let text = run(&path, args);
        assert!(
            text.contains(want),
            "{tool} {args:?}: {want:?} not in:\n{text}"
        );
    }
    assert!(run(&bin.join("tcpdump"), &["--version"]).contains("libpcap version 1.10.3"));

    // Core utilities are busybox applets: hard links of bin/busybox, one
    // inode in the image, and the manifest says so.
    let inodes = Command::new("debugfs")
        .args(["-R", "ls -p /bin"])
        .arg(&image)
        .output()
        .unwrap();
    let inodes: std::collections::BTreeMap<String, String> =
        String::from_utf8_lossy(&inodes.stdout)
            .lines()
            .filter_map(|l| {
                // `/inode/mode/uid/gid/name/size/`
                let f: Vec<&str> = l.split('/').collect();
                (f.len() >= 6).then(|| (f[5].to_string(), f[1].to_string()))
            })
            .collect();
    let busybox = manifest.file("bin/busybox").unwrap();
    let root = |f: &cartimage::manifest::FileEntry| f.link.clone().unwrap_or(f.path.clone());
    for applet in [
        "cat", "ls", "ps", "sleep", "tail", "grep", "less", "vi", "sh",
    ] {
        assert_eq!(
            inodes.get(applet),
            inodes.get("busybox"),
            "bin/{applet} is not a hard link of bin/busybox: {inodes:?}"
        );
        let entry = manifest
            .file(&format!("bin/{applet}"))
            .unwrap_or_else(|| panic!("bin/{applet} is missing"));
        assert_eq!(entry.kind, FileKind::File);
        assert_eq!(entry.sha256, busybox.sha256);
        assert_eq!(root(entry), root(busybox));
    }
    assert!(inodes.contains_key("busybox") && inodes["busybox"] != inodes["bash"]);
    // lsof comes from its own package, not busybox.
    assert!(fs::symlink_metadata(bin.join("lsof")).unwrap().is_file());

    // Nothing of the build host is embedded: lsof prints none of it.
    let lsof_v = run(&bin.join("lsof"), &["-v"]);
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(!lsof_v.contains("constructed"), "{lsof_v}");
    assert!(!lsof_v.contains(host.trim()), "{lsof_v}");
    assert!(!lsof_v.contains(cache.to_str().unwrap()), "{lsof_v}");

    // The tools work: strace traces, lsof lists this process's files.
    let traced = run(
        &bin.join("strace"),
        &[
            "-f",
            "-e",
            "trace=execve",
            &bin.join("busybox").display().to_string(),
            "true",
        ],
    );
    assert!(traced.contains("execve("), "{traced}");
    let me = std::process::id().to_string();
    let open = run(&bin.join("lsof"), &["-l", "-n", "-p", &me]);
    assert!(open.contains(&me) && open.contains("REG"), "{open}");

    // The rc file, terminfo, and bash reading the rc file by itself.
    let etc = tree.join("etc");
    for t in [
        "x/xterm",
        "x/xterm-256color",
        "s/screen",
        "v/vt100",
        "l/linux",
        "t/tmux",
    ] {
        assert!(
            etc.join("terminfo").join(t).is_file(),
            "terminfo {t} missing"
        );
    }
    let rc = etc.join("crashcartrc");
    let bash_bytes = fs::read(bin.join("bash")).unwrap();
    assert!(
        bash_bytes
            .windows(30)
            .any(|w| w == b"/dev/crashcart/etc/crashcartrc"),
        "bash does not read the image's rc file"
    );
    let o = Command::new(bin.join("bash"))
        .arg("--rcfile")
        .arg(&rc)
        .arg("-i")
        .arg("-c")
        .arg("alias lsof; echo TERMINFO=$TERMINFO; echo PATH=$PATH; echo \"PROMPT=${PS1@P}\"")
        .env_clear()
        .env("TERM", "xterm")
        .env("CRASHCART_TARGET", "web-1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    // The prompt names the container cartinject entered.
    assert!(text.contains("[crashcart web-1]"), "{text}");
    assert!(text.contains("alias lsof='lsof -l'"), "{text}");
    assert!(
        text.contains("TERMINFO=/dev/crashcart/etc/terminfo"),
        "{text}"
    );
    assert!(
        text.contains("PATH=/dev/crashcart/bin:/dev/crashcart/sbin"),
        "{text}"
    );

    // Without a target name the prompt is plain; busybox sh gets one too.
    let o = Command::new(bin.join("bash"))
        .args(["--rcfile"])
        .arg(&rc)
        .args(["-i", "-c", "echo \"PROMPT=${PS1@P}\""])
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("[crashcart]"), "{text}");
    // The prompt names the label through a variable, expanded when the prompt is shown
    // (never the label's text itself, which a shell would expand): expand it as ash does.
    let prompt = |label: &str| {
        let o = Command::new(bin.join("busybox"))
            .arg("sh")
            .arg("-c")
            .arg(format!(
                ". {}; eval \"echo \\\"PROMPT=$PS1\\\"\"",
                rc.display()
            ))
            .env_clear()
            .env("CRASHCART_TARGET", label)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = prompt("4242");
    assert!(text.contains("PROMPT=[crashcart 4242] $"), "{text}");
    // A label a shell would expand is not shown (nor run).
    let text = prompt("$(echo pwned)");
    assert!(text.contains("PROMPT=[crashcart ?] $"), "{text}");

    // crashcart-info prints the packages from the manifest in the image.
    let o = Command::new(bin.join("busybox"))
        .arg("sh")
        .arg(bin.join("crashcart-info"))
        .env_clear()
        .env("CRASHCART", &tree)
        .env("PATH", &bin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("crashcart image net 1.0.0"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["tcpdump", "4.99.3", "BSD-3-Clause"]),
        "{text}"
    );

    // A second build rebuilds nothing and gives the same bytes.
    let o = cartbuild(&cache, &image);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("0 built, 11 cached"), "{err}");
    assert_eq!(sha256(&fs::read(&image).unwrap()), first_sha);
}
