//! Text that came from a container, made safe to print on the operator's terminal.
//!
//! Everything cartinject reads from a container (names, paths, `/dev` entry names, labels,
//! `PATH` entries) is hostile data: printed raw, an escape sequence in it can rewrite the
//! operator's screen, set the window title or, on some terminals, answer back into the
//! input. [`escape`] turns every C0 and C1 control, DEL, backslash and invalid UTF-8 into a
//! visible `\xNN`/`\u{NNNN}` form (as `{:?}` does, without the quotes); [`controls`] leaves
//! backslashes alone, for whole messages. Both are cartoci's, which escapes what registries
//! send the same way. [`prompt_safe`] is stricter, for text that goes into a shell prompt
//! (where `$`, backquotes and `\` are expanded by the shell).

use std::path::Path;

pub use cartoci::display::{controls, escape};

/// A path from a container, escaped for printing.
pub fn path(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escape(p.as_os_str().as_bytes())
}

/// `text` reduced to characters a shell prompt shows as they are: letters, digits and
/// `-_.:@/ `; anything else becomes `?`. A prompt is expanded by the shell (`\`-escapes,
/// `$(...)`, backquotes with `promptvars`), so no container-controlled byte may reach it
/// otherwise.
pub fn prompt_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:@/ ".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_only_leaves_backslashes() {
        assert_eq!(controls("a\\x1b b\x1bc"), "a\\x1b b\\x1bc");
    }

    #[test]
    fn prompts_keep_only_plain_characters() {
        assert_eq!(prompt_safe("web-1_a.b"), "web-1_a.b");
        assert_eq!(prompt_safe("$(reboot)`x`\\w\x1b"), "??reboot??x??w?");
        assert_eq!(prompt_safe("pid 42"), "pid 42");
    }
}
