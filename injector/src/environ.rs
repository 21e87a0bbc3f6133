//! The session's environment, built from an allow-list rather than inherited.
//!
//! The target's environment is hostile data: bash runs `BASH_ENV` (and `ENV` as `sh`),
//! imports `BASH_FUNC_name%%` as functions, applies `SHELLOPTS`/`BASHOPTS` (`xtrace` with
//! `PS4='$(cmd)'` runs `cmd` at every command), runs `PROMPT_COMMAND` and `PS0`, reads key
//! bindings (and `$include`s) from `INPUTRC`; the dynamic loader honours `LD_PRELOAD` and
//! `LD_LIBRARY_PATH` for any dynamic program the session runs from the container, and glibc
//! loads `GCONV_PATH` modules. Any of them would run the container's code with the session's
//! power. So, as sudo's `env_reset` does, the session gets only names it knows, each with a
//! value it made or checked (see [`session_env`]); the target's environment stays available
//! to look at in [`TARGET_ENV_FILE`] (`crashcart-info --env`), never to execute.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::display::prompt_safe;
use crate::place::MOUNT_POINT;

/// The PATH a target gets when its environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a session finds the target's own environment, NUL-separated as in
/// `/proc/PID/environ` (written into the session's private `/dev` cover, readable by root
/// only); the session's `CRASHCART_TARGET_ENV` names it.
pub const TARGET_ENV_FILE: &str = "/dev/crashcart.env";

#[cfg(test)]
#[test]
fn the_target_env_file_is_the_one_the_cover_holds() {
    assert_eq!(
        std::path::Path::new(TARGET_ENV_FILE),
        std::path::Path::new("/dev").join(crate::place::TARGET_ENV)
    );
}

/// The readline init file of the session (`INPUTRC`): the image's, so that readline never
/// falls back to the container's `~/.inputrc` or `/etc/inputrc`, even when the image has
/// none (readline then reads nothing).
pub const INPUTRC: &str = "/dev/crashcart/etc/inputrc";

/// The locale variables taken from the target when their value is a plain locale name
/// (POSIX's and glibc's categories).
const LOCALE_NAMES: [&str; 14] = [
    "LANG",
    "LC_ALL",
    "LC_ADDRESS",
    "LC_COLLATE",
    "LC_CTYPE",
    "LC_IDENTIFICATION",
    "LC_MEASUREMENT",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NAME",
    "LC_NUMERIC",
    "LC_PAPER",
    "LC_TELEPHONE",
    "LC_TIME",
];

/// The longest PATH a session gets: entries of the target's PATH that would make it longer
/// are left out (a hostile PATH must not make the environment too big for `execve`, whose
/// limit is 128 KiB per string, nor make a lookup try thousands of directories).
const MAX_PATH_LEN: usize = 4096;

/// The session's environment, and nothing else:
///
/// - `PATH`: the image's `bin` and `sbin`, then the entries of the target's PATH (Docker's
///   default without one) that are plain absolute directory names (see [`plain_dir`]);
/// - `HOME`: the image, so `~/.bashrc`, `~/.inputrc` and the like are the image's files;
/// - `TERM`: the operator's, given only with a terminal;
/// - `LANG` and `LC_*`: the target's, when their value is a plain locale name;
/// - `INPUTRC`: [`INPUTRC`];
/// - `PS1`: a prompt naming crashcart and the target (`label`, reduced by [`prompt_safe`]);
/// - `HISTFILE`: empty, so bash and ash write no history file into the container;
/// - `CRASHCART_TARGET` (the label, reduced the same way, since the image's rc file puts it
///   into its prompt) and `CRASHCART_TARGET_ENV` ([`TARGET_ENV_FILE`]).
pub fn session_env(
    target_env: &[(OsString, OsString)],
    label: &str,
    term: Option<&OsStr>,
) -> Vec<(OsString, OsString)> {
    let target = |name: &str| target_env.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let container_path = target("PATH").map_or(DEFAULT_PATH.as_bytes(), |v| v.as_bytes());
    env.push(("PATH".into(), session_path(container_path)));
    env.push(("HOME".into(), MOUNT_POINT.into()));
    if let Some(term) = term {
        env.push(("TERM".into(), term.to_owned()));
    }
    for name in LOCALE_NAMES {
        if let Some(value) = target(name).filter(|v| plain_locale(v.as_bytes())) {
            env.push((name.into(), value.clone()));
        }
    }
    env.push(("INPUTRC".into(), INPUTRC.into()));
    let label = prompt_safe(label);
    env.push(("PS1".into(), format!("[crashcart {label}] \\w \\$ ").into()));
    env.push(("HISTFILE".into(), "".into()));
    env.push(("CRASHCART_TARGET".into(), label.into()));
    env.push(("CRASHCART_TARGET_ENV".into(), TARGET_ENV_FILE.into()));
    env
}

/// The image's `bin` and `sbin`, then the plain entries of `container_path`, each once, up
/// to [`MAX_PATH_LEN`] bytes.
fn session_path(container_path: &[u8]) -> OsString {
    let image_bin = format!("{MOUNT_POINT}/bin");
    let image_sbin = format!("{MOUNT_POINT}/sbin");
    let mut path = format!("{image_bin}:{image_sbin}").into_bytes();
    let mut kept: Vec<&[u8]> = vec![image_bin.as_bytes(), image_sbin.as_bytes()];
    for dir in container_path.split(|&b| b == b':') {
        if !plain_dir(dir) || kept.contains(&dir) {
            continue;
        }
        if path.len() + 1 + dir.len() > MAX_PATH_LEN {
            break;
        }
        kept.push(dir);
        path.push(b':');
        path.extend_from_slice(dir);
    }
    OsString::from(OsStr::from_bytes(&path))
}

/// Whether `dir` is a plain absolute directory name: it starts with `/`, holds only
/// printable ASCII (no control character, no escape sequence, no byte above 0x7e), and has
/// no `.` or `..` component. An empty entry (which means the working directory) is not.
pub fn plain_dir(dir: &[u8]) -> bool {
    dir.first() == Some(&b'/')
        && dir.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b':')
        && dir
            .split(|&b| b == b'/')
            .all(|component| component != b"." && component != b"..")
}

/// Whether `value` is a plain locale name such as `C`, `POSIX`, `C.UTF-8` or
/// `en_US.UTF-8@euro`: 1 to 64 of `[A-Za-z0-9_.@-]`, starting with a letter or digit. A
/// `/` would make glibc load the locale from that path.
pub fn plain_locale(value: &[u8]) -> bool {
    (1..=64).contains(&value.len())
        && value[0].is_ascii_alphanumeric()
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a OsString> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn pairs(list: &[(&str, &[u8])]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsStr::from_bytes(v).to_owned()))
            .collect()
    }

    /// Every variable of the hostile-environment attack: none of them reaches the session.
    const HOSTILE: [(&str, &[u8]); 20] = [
        ("BASH_ENV", b"/pwn"),
        ("ENV", b"/pwn"),
        ("BASH_FUNC_ls%%", b"() { /pwn; }"),
        ("SHELLOPTS", b"xtrace"),
        ("BASHOPTS", b"extdebug"),
        ("PS0", b"$(/pwn)"),
        ("PS2", b"$(/pwn)"),
        ("PS4", b"$(/pwn)"),
        ("PROMPT_COMMAND", b"/pwn"),
        ("INPUTRC", b"/etc/evil-inputrc"),
        ("LD_PRELOAD", b"/pwn.so"),
        ("LD_LIBRARY_PATH", b"/evil"),
        ("GCONV_PATH", b"/evil"),
        ("HOME", b"/root"),
        ("TERM", b"\x1b]0;x\x07"),
        ("POSIXLY_CORRECT", b"1"),
        ("PAGER", b"/pwn"),
        ("CRASHCART_TARGET", b"$(/pwn)"),
        ("LC_ALL", b"/evil/locale"),
        ("LANG", b"../../evil"),
    ];

    #[test]
    fn only_allowed_names_with_checked_values() {
        let mut target = pairs(&HOSTILE);
        target.push(("PATH".into(), "/app/bin:/bin".into()));
        target.push(("LC_TIME".into(), "en_GB.UTF-8".into()));
        target.push(("LC_EVIL".into(), "C".into()));
        let env = session_env(&target, "web", Some(OsStr::new("xterm-256color")));
        let names: Vec<&str> = env
            .iter()
            .map(|(k, _)| k.to_str().expect("ASCII"))
            .collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "TERM",
                "LC_TIME",
                "INPUTRC",
                "PS1",
                "HISTFILE",
                "CRASHCART_TARGET",
                "CRASHCART_TARGET_ENV"
            ]
        );
        assert_eq!(
            get(&env, "PATH"),
            Some(&OsString::from(
                "/dev/crashcart/bin:/dev/crashcart/sbin:/app/bin:/bin"
            ))
        );
        assert_eq!(get(&env, "HOME"), Some(&OsString::from("/dev/crashcart")));
        assert_eq!(get(&env, "TERM"), Some(&OsString::from("xterm-256color")));
        assert_eq!(get(&env, "LC_TIME"), Some(&OsString::from("en_GB.UTF-8")));
        assert_eq!(
            get(&env, "INPUTRC"),
            Some(&OsString::from("/dev/crashcart/etc/inputrc"))
        );
        assert_eq!(
            get(&env, "PS1"),
            Some(&OsString::from("[crashcart web] \\w \\$ "))
        );
        assert_eq!(get(&env, "HISTFILE"), Some(&OsString::from("")));
        assert_eq!(get(&env, "CRASHCART_TARGET"), Some(&OsString::from("web")));
        assert_eq!(
            get(&env, "CRASHCART_TARGET_ENV"),
            Some(&OsString::from("/dev/crashcart.env"))
        );
    }

    #[test]
    fn no_terminal_no_term() {
        let target = pairs(&[("TERM", b"xterm"), ("LANG", b"C.UTF-8")]);
        let env = session_env(&target, "pid 7", None);
        assert_eq!(get(&env, "TERM"), None);
        assert_eq!(get(&env, "LANG"), Some(&OsString::from("C.UTF-8")));
        assert_eq!(
            get(&env, "CRASHCART_TARGET"),
            Some(&OsString::from("pid 7"))
        );
    }

    #[test]
    fn the_label_is_reduced_for_the_prompt() {
        let env = session_env(&[], "a$(reboot)\x1b[2J`x`\\", None);
        assert_eq!(
            get(&env, "PS1"),
            Some(&OsString::from("[crashcart a??reboot???2J?x??] \\w \\$ "))
        );
        assert_eq!(
            get(&env, "CRASHCART_TARGET"),
            Some(&OsString::from("a??reboot???2J?x??"))
        );
    }

    #[test]
    fn default_path_without_one() {
        let env = session_env(&[], "pid 7", None);
        assert_eq!(
            get(&env, "PATH"),
            Some(&OsString::from(format!(
                "/dev/crashcart/bin:/dev/crashcart/sbin:{DEFAULT_PATH}"
            )))
        );
        // An empty PATH is the target's choice: only the image's directories.
        let env = session_env(&pairs(&[("PATH", b"")]), "pid 7", None);
        assert_eq!(
            get(&env, "PATH"),
            Some(&OsString::from("/dev/crashcart/bin:/dev/crashcart/sbin"))
        );
    }

    #[test]
    fn path_keeps_only_plain_directories() {
        let hostile: &[u8] = b"/usr/bin:\x1b]0;pwned\x07:/bin/\x1b[2J:::.:bin:./x:/a/../b:/c/.:\
            /usr/bin:/dev/crashcart/bin:/opt/\xc2\x9b31m:/opt/caf\xc3\xa9:/usr/local/my tools:/sbin";
        let env = session_env(&pairs(&[("PATH", hostile)]), "x", None);
        assert_eq!(
            get(&env, "PATH"),
            Some(&OsString::from(
                "/dev/crashcart/bin:/dev/crashcart/sbin:/usr/bin:/usr/local/my tools:/sbin"
            ))
        );
    }

    #[test]
    fn a_huge_path_is_cut() {
        let dirs: Vec<String> = (0..100_000).map(|i| format!("/d{i}")).collect();
        let env = session_env(&pairs(&[("PATH", dirs.join(":").as_bytes())]), "x", None);
        let path = get(&env, "PATH").expect("PATH");
        assert!(path.len() <= MAX_PATH_LEN, "{}", path.len());
        assert!(
            path.as_bytes()
                .starts_with(b"/dev/crashcart/bin:/dev/crashcart/sbin:/d0:/d1:")
        );
    }

    #[test]
    fn plain_names() {
        for dir in [
            "/",
            "/bin",
            "/usr/local/bin",
            "//x",
            "/a b/c-d_e.f",
            "/..x/y..",
        ] {
            assert!(plain_dir(dir.as_bytes()), "{dir}");
        }
        for dir in [
            "", "bin", ".", "/.", "/a/..", "/a/./b", "/a\tb", "/a\x7f", "/\x1b[1m",
        ] {
            assert!(!plain_dir(dir.as_bytes()), "{dir:?}");
        }
        for value in [
            "C",
            "POSIX",
            "C.UTF-8",
            "en_US.UTF-8",
            "de_DE@euro",
            "sr_RS.UTF-8@latin",
        ] {
            assert!(plain_locale(value.as_bytes()), "{value}");
        }
        let long = "a".repeat(65);
        for value in [
            "",
            ".",
            "..",
            "/usr/lib/locale/x",
            "../x",
            "C;x",
            "C\n",
            "-C",
            &long,
        ] {
            assert!(!plain_locale(value.as_bytes()), "{value:?}");
        }
    }
}
