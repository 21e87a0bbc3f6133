//! Text that came from a container, made safe to print on the operator's terminal.
//!
//! Everything cartinject reads from a container (names, paths, `/dev` entry names, labels,
//! `PATH` entries) is hostile data: printed raw, an escape sequence in it can rewrite the
//! operator's screen, set the window title or, on some terminals, answer back into the
//! input. [`escape`] turns every C0 and C1 control, DEL, backslash and invalid UTF-8 into a
//! visible `\xNN`/`\u{NNNN}` form (as `{:?}` does, without the quotes); [`controls`] leaves
//! backslashes alone, for whole messages. [`prompt_safe`] is stricter, for text that goes
//! into a shell prompt (where `$`, backquotes and `\` are expanded by the shell).

use std::path::Path;

/// `text` with every control character, DEL, backslash and invalid byte escaped.
pub fn escape(text: impl AsRef<[u8]>) -> String {
    escape_with(text.as_ref(), true)
}

/// `text` with every control character, DEL and invalid byte escaped, backslashes left as
/// they are: for a whole message whose container-controlled parts were escaped already
/// (doubling their backslashes again would only make them harder to read).
pub fn controls(text: impl AsRef<[u8]>) -> String {
    escape_with(text.as_ref(), false)
}

fn escape_with(text: &[u8], backslash: bool) -> String {
    let mut out = String::new();
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' && !backslash {
                out.push(c);
                continue;
            }
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
        // C1 controls (U+0080..U+009F: CSI is U+009B) and the bidi overrides, which reorder
        // what the operator reads.
        c if (0x80..=0x9f).contains(&(c as u32))
            || matches!(c as u32, 0x202a..=0x202e | 0x2066..=0x2069) =>
        {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32))
        }
        c => out.push(c),
    }
}

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
    fn controls_are_escaped() {
        assert_eq!(escape("web"), "web");
        assert_eq!(escape("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(escape("\u{9b}31m"), "\\u{009b}31m");
        assert_eq!(escape(b"\xff\\"), "\\xff\\\\");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert!(
            !escape(b"\x1b[2J\x9b\x07\x7f")
                .bytes()
                .any(|b| b < 0x20 || b == 0x7f)
        );
    }

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
