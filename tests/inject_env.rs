//! A hostile container's environment and dotfiles never run in a session (issue 9, "Environment
//! from an allow-list"), against real containers under a real Docker daemon. Needs root,
//! Docker, mke2fs, musl-gcc (or gcc), busybox-static, bash-static and `nsenter`; `tests/run`
//! installs and starts them. The tests that start the image's own bash need the net image
//! built from `recipes/` (`$CRASHCART_NET_IMAGE`, else built once by `cartbuild`).
//!
//! The hostile container's PID 1 has every variable a shell or loader runs code from
//! ([`HOSTILE_ENV`]), and its root holds every rc, profile and inputrc file a shell reads,
//! each of them running `/pwn` (`tests/fixtures/env_pwn.c`), which appends the tag it was
//! given and its effective capabilities to `/pwned`. So `/pwned` exists as soon as any
//! container code ran in a session, and names the way in.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crashcart_tests::*;

const LONG: Duration = Duration::from_secs(60);

/// The variables of the hostile container's PID 1: each runs `/pwn` if a shell or the loader
/// honours it. `LANG` is the one a session keeps.
const HOSTILE_ENV: &[&str] = &[
    "BASH_ENV=/hostile/rc",
    "ENV=/hostile/rc",
    "BASH_FUNC_true%%=() { /pwn BASH_FUNC_true; }",
    "BASH_FUNC_env%%=() { /pwn BASH_FUNC_env; }",
    "BASH_FUNC_echo%%=() { /pwn BASH_FUNC_echo; }",
    "SHELLOPTS=xtrace",
    "PS4=$(/pwn PS4)",
    "BASHOPTS=extdebug:xpg_echo",
    "PS0=$(/pwn PS0)",
    "PS1=$(/pwn PS1)",
    "PS2=$(/pwn PS2)",
    "PROMPT_COMMAND=/pwn PROMPT_COMMAND",
    "INPUTRC=/hostile/inputrc",
    "LD_PRELOAD=/hostile/pwn.so",
    "LD_LIBRARY_PATH=/hostile",
    "GCONV_PATH=/hostile",
    "POSIXLY_CORRECT=1",
    "TERMINFO=/hostile",
    "HOME=/root",
    "CRASHCART_TARGET=$(/pwn CRASHCART_TARGET)",
    "CRASHCART_TARGET_ENV=/hostile/rc",
    "LC_ALL=/hostile/locale",
    "LANG=C.UTF-8",
    "PATH=/hostile/\x1b]0;pwned\x07\x1b[2Jbin:/usr/bin:/bin",
];

/// Names no session may show, whatever its shell exported since.
const FORBIDDEN: &[&str] = &[
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS0",
    "PS2",
    "PS4",
    "PROMPT_COMMAND",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "GCONV_PATH",
    "POSIXLY_CORRECT",
    "LC_ALL",
];

/// A line that runs `/pwn TAG`.
fn runs(tag: &str) -> String {
    format!("/pwn {tag}\n")
}

/// An inputrc that turns Return into a macro running `/pwn TAG` before the typed line.
fn inputrc(tag: &str) -> String {
    format!("\"\\C-m\": \"\\C-a/pwn {tag}; \\C-e\\C-j\"\n")
}

/// The Docker image of the hostile container: `/pwn` (also its PID 1, `/pwn --idle`), the
/// scripts its variables name under `/hostile`, and every startup file of bash, sh and
/// readline in `/etc`, `/root` (root's home in its `/etc/passwd`) and `/`.
fn env_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let pwn = static_binary("env_pwn");
        let mut files: Vec<(&str, String)> = vec![
            ("hostile/rc", runs("hostile-rc")),
            ("hostile/inputrc", inputrc("INPUTRC-variable")),
            ("etc/passwd", "root:x:0:0:root:/root:/pwn\n".into()),
            ("etc/group", "root:x:0:\n".into()),
            ("etc/profile", runs("etc-profile")),
            ("etc/bash.bashrc", runs("etc-bash.bashrc")),
            ("etc/bash.bash_logout", runs("etc-bash.bash_logout")),
            ("etc/inputrc", inputrc("etc-inputrc")),
        ];
        for home in ["root", ""] {
            for (name, tag) in [
                (".bashrc", "bashrc"),
                (".profile", "profile"),
                (".bash_profile", "bash_profile"),
                (".bash_login", "bash_login"),
                (".bash_logout", "bash_logout"),
                (".mkshrc", "mkshrc"),
            ] {
                let path = if home.is_empty() {
                    name.to_string()
                } else {
                    format!("{home}/{name}")
                };
                let path: &'static str = Box::leak(path.into_boxed_str());
                files.push((path, runs(&format!("home{home}-{tag}"))));
            }
            let path = if home.is_empty() {
                ".inputrc".to_string()
            } else {
                format!("{home}/.inputrc")
            };
            let path: &'static str = Box::leak(path.into_boxed_str());
            files.push((path, inputrc(&format!("home{home}-inputrc"))));
        }
        let dir = tempfile::Builder::new()
            .prefix("cc-env-root-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        std::fs::copy(&pwn, root.join("pwn")).expect("copy pwn");
        let mut hasher = DefaultHasher::new();
        b"env-v1".hash(&mut hasher);
        std::fs::read(&pwn).expect("read pwn").hash(&mut hasher);
        for (path, text) in &files {
            let at = root.join(path);
            std::fs::create_dir_all(at.parent().expect("parent")).expect("mkdir");
            std::fs::write(&at, text).expect("write");
            (path, text).hash(&mut hasher);
        }
        let tag = "cc-inject-env:test".to_string();
        import_root(
            "docker",
            &tag,
            root,
            &format!("{:016x}", hasher.finish()),
            r#"CMD ["/pwn", "--idle"]"#,
        );
        tag
    })
}

/// The hostile container, running as `cc-<test>-<pid>` with [`HOSTILE_ENV`].
fn hostile_container(test: &str) -> Container {
    require_root();
    let mut args = Vec::new();
    for var in HOSTILE_ENV {
        args.push("-e");
        args.push(*var);
    }
    Container::start_with_command(&unique(test), env_image(), &args, &[])
}

/// What `/pwn` wrote into the container: empty while no container code ran in a session.
fn marker(c: &Container) -> String {
    std::fs::read_to_string(format!("/proc/{}/root/pwned", c.pid)).unwrap_or_default()
}

/// Asserts that no container code ran (`when` in the message).
fn assert_no_marker(c: &Container, when: &str) {
    let text = marker(c);
    assert!(
        text.is_empty(),
        "container code ran {when} (tag and CapEff, one line each):\n{text}"
    );
}

/// The names of `NAME=value` lines in `text` (`env`'s output).
fn names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .map(|(name, _)| name.to_string())
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()))
        .collect()
}

/// The image a test runs with: the fixture (Debian's bash-static, whose compiled-in
/// `SYS_BASHRC` is `/etc/bash.bashrc`, and an rc file at `etc/bashrc`) or the net image
/// (bash built by `recipes/base.toml`, `etc/crashcartrc`).
fn images() -> [(&'static str, TestImage); 2] {
    [
        ("fixture", TestImage::fixture()),
        ("net", TestImage::copy_of(net_image())),
    ]
}

#[test]
fn commands_get_only_the_allow_listed_environment() {
    let c = hostile_container("env-cmd");
    for (which, img) in images() {
        for command in [
            &["bash", "-c", "true"][..],
            &["sh", "-c", "true"],
            &["bash", "-c", "echo x; env >/dev/null"],
            &["sh", "-c", "echo x; env >/dev/null"],
        ] {
            ok(&mut inject(&img, &c.name, command));
            assert_no_marker(
                &c,
                &format!("in `{}` with the {which} image", command.join(" ")),
            );
        }
        let env = ok(&mut inject(&img, &c.name, &["env"]));
        assert_eq!(
            names(&env),
            [
                "PATH",
                "HOME",
                "LANG",
                "INPUTRC",
                "PS1",
                "HISTFILE",
                "CRASHCART_TARGET",
                "CRASHCART_TARGET_ENV"
            ],
            "{which}: {env}"
        );
        for expected in [
            "PATH=/dev/crashcart/bin:/dev/crashcart/sbin:/usr/bin:/bin\n",
            "HOME=/dev/crashcart\n",
            "LANG=C.UTF-8\n",
            "INPUTRC=/dev/crashcart/etc/inputrc\n",
            &format!("PS1=[crashcart {}] \\w \\$ \n", c.name),
            "HISTFILE=\n",
            &format!("CRASHCART_TARGET={}\n", c.name),
            "CRASHCART_TARGET_ENV=/dev/crashcart.env\n",
        ] {
            assert!(env.contains(expected), "{which}: no {expected:?} in {env}");
        }
        // A PATH entry or a command holding escape sequences reaches the operator's
        // terminal escaped, if at all.
        for command in ["no-such-tool", "/hostile/\x1b]0;pwned\x07\x1b[2J"] {
            let out = output(&mut inject(&img, &c.name, &[command]));
            assert_eq!(out.status.code(), Some(127), "{which}: {}", stderr(&out));
            assert!(
                !stderr(&out).contains('\x1b'),
                "{which}: {:?}",
                stderr(&out)
            );
        }
        img.assert_no_loop_device();
    }
    c.assert_clean();
}

#[test]
fn an_interactive_bash_started_by_the_operator_reads_only_the_image() {
    // The image's own bash, as a command: `-i` makes it read its compiled-in rc files, which
    // recipes/base.toml points into the image. (Debian's bash, in the fixture image, would
    // read the container's /etc/bash.bashrc: no image can make another bash safe.)
    let c = hostile_container("env-bash-i");
    let img = TestImage::copy_of(net_image());
    for command in [
        &["bash", "-i", "-c", "true"][..],
        &["bash", "-l", "-c", "true"],
        &["bash", "-l", "-i", "-c", "true"],
        &["sh", "-l", "-c", "true"],
        &["hush", "-l", "-c", "true"],
    ] {
        ok(&mut inject(&img, &c.name, command));
        assert_no_marker(&c, &format!("in `{}`", command.join(" ")));
    }
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn an_interactive_session_reads_only_the_image() {
    let c = hostile_container("env-pty");
    for (which, img) in images() {
        let mut pty = Pty::open(30, 100);
        let mut cmd = inject(&img, &c.name, &[]);
        cmd.env("TERM", "xterm");
        let mut child = pty.spawn(&mut cmd);
        let prompt = pty.read_until(&format!("[crashcart {}]", c.name), LONG);
        assert!(
            prompt.contains(&format!("[crashcart {}]", c.name)),
            "{which}: {prompt:?}"
        );
        // Return (bound to a macro by the container's inputrc files), a command (PS0, PS4
        // with xtrace, exported functions), a continuation line (PS2), prompts
        // (PROMPT_COMMAND).
        pty.master
            .write_all(b"env; echo END-$((6*7))\r")
            .expect("type");
        let text = pty.read_until("END-42", LONG);
        assert!(text.contains("END-42"), "{which}: {text:?}");
        pty.master
            .write_all(b"for i in 1\rdo echo P2-$((i+1)); done\r")
            .expect("type");
        let more = pty.read_until("P2-2", LONG);
        assert!(more.contains("P2-2"), "{which}: {more:?}");
        pty.master.write_all(b"exit\r").expect("type");
        let status = wait_with_timeout(&mut child, LONG);
        assert!(status.success(), "{which}: {status:?}");
        assert_no_marker(
            &c,
            &format!("in an interactive session with the {which} image"),
        );

        let seen = names(&text);
        for name in FORBIDDEN {
            assert!(
                !seen.iter().any(|n| n == name),
                "{which}: {name} in {text:?}"
            );
        }
        assert!(
            !seen.iter().any(|n| n.starts_with("BASH_FUNC_")),
            "{which}: {text:?}"
        );
        for expected in [
            "HOME=/dev/crashcart\r\n",
            "INPUTRC=/dev/crashcart/etc/inputrc\r\n",
            "TERM=xterm\r\n",
        ] {
            assert!(
                text.contains(expected),
                "{which}: no {expected:?} in {text:?}"
            );
        }
        assert!(!text.contains("/hostile"), "{which}: {text:?}");
        img.assert_no_loop_device();
    }
    c.assert_clean();
}

/// `COMMAND...` in the container with an empty environment but `HOME=/root` (the
/// container's home for root, full of planted files) and `TERM`, through the image's `env`:
/// as an operator's `docker exec` or `nsenter` would start the image's shell, minus the
/// container's variables (which docker exec passes on by design).
fn clean_env(command: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = ["/dev/crashcart/bin/env", "-i", "HOME=/root", "TERM=xterm"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(command.iter().map(|s| s.to_string()));
    argv
}

/// `docker exec -it C COMMAND...` on a pty: Return pressed on a command line, then `exit`.
fn docker_exec_on_a_pty(c: &Container, command: &[String]) {
    let mut pty = Pty::open(30, 100);
    let mut cmd = Command::new("docker");
    cmd.args(["exec", "-it", &c.name]).args(command);
    let mut child = pty.spawn(&mut cmd);
    std::thread::sleep(Duration::from_millis(500));
    pty.master
        .write_all(b"echo TYPED-$((6*7))\r")
        .expect("type");
    let text = pty.read_until("TYPED-42", LONG);
    assert!(text.contains("TYPED-42"), "{command:?}: {text:?}");
    pty.master.write_all(b"exit\r").expect("type");
    wait_with_timeout(&mut child, LONG);
}

#[test]
fn the_image_bash_reads_only_the_image_under_docker_exec_and_nsenter() {
    let c = hostile_container("env-exec");
    let img = TestImage::copy_of(net_image());
    ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));

    // The attack is real: a bash with stock defaults (Debian's bash-static, copied into the
    // container) runs the planted files.
    let stock = Path::new("/bin/bash-static");
    assert!(
        stock.is_file(),
        "/bin/bash-static is missing: install bash-static (tests/run does)"
    );
    ok(Command::new("docker")
        .arg("cp")
        .arg(stock)
        .arg(format!("{}:/stockbash", c.name)));
    let run = |argv: &[String]| {
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        c.exec(&args);
    };
    run(&clean_env(&["/stockbash", "-i", "-c", "true"]));
    run(&clean_env(&["/stockbash", "-l", "-c", "true"]));
    docker_exec_on_a_pty(&c, &clean_env(&["/stockbash", "-i"]));
    let fired = marker(&c);
    for tag in [
        "etc-bash.bashrc",
        "homeroot-bashrc",
        "etc-profile",
        "homeroot-bash_profile",
        "homeroot-inputrc",
    ] {
        assert!(fired.contains(tag), "{tag} did not run: {fired}");
    }
    c.exec(&["/dev/crashcart/bin/rm", "/pwned", "/stockbash"]);
    assert_no_marker(&c, "after rm");

    // The image's bash, busybox sh and hush read the image's files instead.
    let shells: [&[&str]; 7] = [
        &["/dev/crashcart/bin/bash", "-i", "-c", "true"],
        &["/dev/crashcart/bin/bash", "-l", "-c", "true"],
        &["/dev/crashcart/bin/bash", "-l", "-i", "-c", "exit"],
        &["/dev/crashcart/bin/sh", "-l", "-c", "true"],
        &["/dev/crashcart/bin/hush", "-l", "-c", "true"],
        &["/dev/crashcart/bin/sh", "-i", "-c", "true"],
        &["/dev/crashcart/bin/bash", "-c", "true"],
    ];
    for shell in shells {
        run(&clean_env(shell));
        assert_no_marker(&c, &format!("in docker exec {shell:?}"));
        let mut argv = vec!["-a".to_string(), "-t".to_string(), c.pid.to_string()];
        argv.extend(clean_env(shell));
        ok(Command::new("nsenter").args(&argv));
        assert_no_marker(&c, &format!("in nsenter {shell:?}"));
    }
    docker_exec_on_a_pty(&c, &clean_env(&["/dev/crashcart/bin/bash", "-i"]));
    assert_no_marker(&c, "in docker exec -it /dev/crashcart/bin/bash -i");

    // The image's bash holds the image's paths, not the stock ones.
    let strings = ok(Command::new("strings").arg(PathBuf::from(format!(
        "/proc/{}/root/dev/crashcart/bin/bash",
        c.pid
    ))));
    for path in [
        "/dev/crashcart/etc/crashcartrc",
        "/dev/crashcart/etc/profile",
        "/dev/crashcart/etc/inputrc",
        "/dev/crashcart/.bashrc",
        "/dev/crashcart/.inputrc",
    ] {
        assert!(
            strings.lines().any(|l| l == path),
            "{path} not in the image's bash"
        );
    }
    for path in [
        "/etc/bash.bashrc",
        "/etc/profile",
        "/etc/inputrc",
        "~/.bashrc",
        "~/.inputrc",
        "~/.profile",
        "~/.bash_profile",
        "~/.bash_login",
        "~/.bash_logout",
    ] {
        assert!(
            !strings.lines().any(|l| l == path),
            "{path} is in the image's bash"
        );
    }

    ok(cartinject().arg("-u").arg(&c.name));
    img.assert_no_loop_device();
    c.assert_clean();
}

#[test]
fn crashcart_info_shows_the_target_environment_and_runs_nothing() {
    let c = hostile_container("env-info");
    let img = TestImage::copy_of(net_image());
    let out = output(&mut inject(&img, &c.name, &["crashcart-info", "--env"]));
    let text = stdout(&out);
    let err = stderr(&out);
    if out.status.success() {
        // The session saved the target's environment: every variable, one a line, escape
        // sequences made visible.
        assert!(out.status.success(), "{err}");
        assert!(text.contains("BASH_ENV=/hostile/rc\n"), "{text}");
        assert!(text.contains("PS4=$(/pwn PS4)\n"), "{text}");
        assert!(
            text.contains("PATH=/hostile/^[]0;pwned^G^[[2Jbin:/usr/bin:/bin\n"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text:?}");
    } else {
        // No saved environment (a cartinject that does not write it): one clear line.
        assert!(
            err.contains("/dev/crashcart.env is missing"),
            "{err} / {text}"
        );
    }
    assert_no_marker(&c, "in crashcart-info --env");

    // Under docker exec there is no saved environment: it says so, escaping the name it
    // was given.
    ok(cartinject().arg("-m").arg(&img.path).arg(&c.name));
    let out = output(Command::new("docker").args([
        "exec",
        "-e",
        "CRASHCART_TARGET_ENV=/nope\x1b[2J",
        &c.name,
        "/dev/crashcart/bin/crashcart-info",
        "--env",
    ]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("crashcart-info: /nope^[[2J is missing: only a cartinject session"),
        "{err:?}"
    );
    assert!(!err.contains('\x1b'), "{err:?}");
    // How it prints a saved environment, shown on the container's own (NUL-separated, like
    // the saved one): one variable a line, escape sequences made visible.
    let text = ok(Command::new("docker").args([
        "exec",
        "-e",
        "CRASHCART_TARGET_ENV=/proc/1/environ",
        &c.name,
        "/dev/crashcart/bin/crashcart-info",
        "--env",
    ]));
    for line in [
        "BASH_ENV=/hostile/rc\n",
        "BASH_FUNC_true%%=() { /pwn BASH_FUNC_true; }\n",
        "PS4=$(/pwn PS4)\n",
        "PATH=/hostile/^[]0;pwned^G^[[2Jbin:/usr/bin:/bin\n",
    ] {
        assert!(text.contains(line), "no {line:?} in {text}");
    }
    assert!(!text.contains('\x1b'), "{text:?}");
    assert_no_marker(&c, "in crashcart-info --env under docker exec");
    ok(cartinject().arg("-u").arg(&c.name));
    img.assert_no_loop_device();
    c.assert_clean();
}
