//! The command lines of both tools as users meet them: bad usage is exit 2 with one line,
//! as `--help` says, and the shell completions and man pages that `./build.sh` installs
//! name the real subcommands and flags (read from `--help`, so a new flag that misses
//! them fails here). No root needed: nothing here reaches the kernel.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crashcart_tests::*;

/// Runs `cartinject ARGS` and asserts exit 2 and exactly one line on stderr containing
/// `needle`, nothing on stdout.
fn assert_usage_error(args: &[&str], needle: &str) {
    let out = output(cartinject().args(args));
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "cartinject {args:?} should exit 2 (bad usage); stderr: {err}"
    );
    assert_eq!(
        err.lines().count(),
        1,
        "one line for {args:?}, got: {err:?}"
    );
    assert!(
        err.starts_with("cartinject: ") && err.contains(needle),
        "cartinject {args:?}: {err:?} should say {needle:?}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout for {args:?}");
}

#[test]
fn cartinject_bad_usage_exits_2_with_one_line() {
    assert_usage_error(&[], "no TARGET given");
    assert_usage_error(&["--list", "x"], "--list takes no IMAGE, TARGET or command");
    assert_usage_error(
        &["-m", "img", "target", "--", "ls"],
        "-m and -u take no command",
    );
    // --help promises it.
    let help = ok(cartinject().arg("--help"));
    assert!(help.contains("2 for bad usage"), "{help}");
}

/// Every `--long` flag in a `--help` text.
fn long_flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
        .filter(|w| {
            w.starts_with("--")
                && w.len() > 2
                && w[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-')
        })
        .map(str::to_string)
        .collect()
}

/// Generates the assets of `tool` into a temporary directory; returns it with the text of
/// the bash, zsh and fish completions and of every man page.
fn assets(tool: &Path) -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = tool.file_name().unwrap().to_string_lossy().into_owned();
    let flag = if name == "cartbuild" {
        "generate-assets"
    } else {
        "--generate-assets"
    };
    ok(Command::new(tool).arg(flag).arg(dir.path()));
    let mut files = Vec::new();
    for rel in [
        format!("completions/bash/{name}"),
        format!("completions/zsh/_{name}"),
        format!("completions/fish/{name}.fish"),
        format!("man/man1/{name}.1"),
    ] {
        let path = dir.path().join(&rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{name} generate-assets did not write {rel}: {e}"));
        files.push((rel, text));
    }
    (dir, files)
}

/// Asserts that each of `files` names every one of `words` (a man page escapes `-` as
/// `\-`; fish names `--flag` as `-l flag`).
fn assert_named(files: &[(String, String)], words: &BTreeSet<String>) {
    assert!(!words.is_empty());
    for (rel, text) in files {
        let unescaped = text.replace("\\-", "-");
        for w in words {
            let expected = match w.strip_prefix("--") {
                Some(long) if rel.ends_with(".fish") => format!("-l {long}"),
                _ => w.clone(),
            };
            assert!(unescaped.contains(&expected), "{rel} does not name {w}");
        }
    }
}

#[test]
fn cartinject_completions_and_man_page_name_its_flags() {
    let help = ok(cartinject().arg("--help"));
    let flags = long_flags(&help);
    for f in [
        "--mount",
        "--unmount",
        "--list",
        "--profile",
        "--verify-key",
    ] {
        assert!(flags.contains(f), "{f} not read from --help: {flags:?}");
    }
    let (_dir, files) = assets(&bin("cartinject"));
    assert_named(&files, &flags);
    // The generator itself is not documented to users.
    assert!(
        !files[3].1.contains("generate"),
        "the man page hides --generate-assets"
    );
}

#[test]
fn cartbuild_completions_and_man_pages_name_its_subcommands_and_flags() {
    let cartbuild = bin("cartbuild");
    let help = ok(Command::new(&cartbuild).arg("--help"));
    let commands: BTreeSet<String> = help
        .split("Commands:")
        .nth(1)
        .expect("--help lists Commands:")
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    for c in [
        "build", "inspect", "diff", "push", "release", "keygen", "sign",
    ] {
        assert!(
            commands.contains(c),
            "{c} not read from --help: {commands:?}"
        );
    }
    let (dir, files) = assets(&cartbuild);
    assert_named(&files, &commands);
    for c in &commands {
        // One man page per subcommand, naming that subcommand's own flags.
        let page = dir.path().join(format!("man/man1/cartbuild-{c}.1"));
        let text = std::fs::read_to_string(&page)
            .unwrap_or_else(|e| panic!("no man page {}: {e}", page.display()))
            .replace("\\-", "-");
        let flags = long_flags(&ok(Command::new(&cartbuild).args([c.as_str(), "--help"])));
        for f in &flags {
            assert!(
                text.contains(f.as_str()),
                "{} does not name {f}",
                page.display()
            );
        }
        // And the completions offer those flags.
        assert_named(&files[..3], &flags);
    }
}
