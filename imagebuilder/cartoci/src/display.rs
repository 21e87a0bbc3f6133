//! Text a registry sent, made safe to print on the operator's terminal.
//!
//! Everything a registry answers is hostile data: an error body, a `WWW-Authenticate`
//! realm, a tag list, a media type or a file name in a manifest may hold escape sequences
//! that rewrite the operator's screen or, on some terminals, answer back into its input;
//! and it may be megabytes long. [`untrusted`] escapes every C0 and C1 control, DEL,
//! backslash, bidi override and invalid byte and cuts what is left to a length fit for one
//! line. cartinject escapes what it reads from containers with the same [`escape`].

/// How many characters of registry text an error quotes at most.
pub const EXCERPT: usize = 200;

/// `text` with every control character, DEL, backslash, bidi override and invalid byte
/// escaped (`\xNN`, `\u{NNNN}`, `\\`).
pub fn escape(text: impl AsRef<[u8]>) -> String {
    escape_with(text.as_ref(), true)
}

/// [`escape`] that leaves backslashes as they are: for a whole message whose untrusted
/// parts were escaped already (doubling their backslashes again would only make them harder
/// to read).
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
    let code = u32::from(c);
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        _ if code < 0x20 || code == 0x7f => out.push_str(&format!("\\x{code:02x}")),
        // C1 controls (U+0080..U+009F: CSI is U+009B) and the bidi overrides, which
        // reorder what the operator reads.
        _ if (0x80..=0x9f).contains(&code) || matches!(code, 0x202a..=0x202e | 0x2066..=0x2069) => {
            out.push_str(&format!("\\u{{{code:04x}}}"))
        }
        _ => out.push(c),
    }
}

/// [`escape`]d and cut to [`EXCERPT`] characters (`…` marks a cut): how registry text
/// appears in a message.
pub fn untrusted(text: impl AsRef<[u8]>) -> String {
    excerpt(text, EXCERPT)
}

/// [`escape`]d and cut to `max` characters, `…` marking a cut. Only the first `4 * max`
/// bytes are looked at, so a huge input costs no more than a short one.
pub fn excerpt(text: impl AsRef<[u8]>, max: usize) -> String {
    let bytes = text.as_ref();
    let head = &bytes[..bytes.len().min(max.saturating_mul(4))];
    let escaped = escape(head);
    let cut = escaped.chars().count() > max || head.len() < bytes.len();
    if !cut {
        return escaped;
    }
    let mut out: String = escaped.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape("net"), "net");
        assert_eq!(escape("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(escape("\u{9b}31m"), "\\u{009b}31m");
        assert_eq!(escape(b"\xff\\"), "\\xff\\\\");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert!(
            !escape(b"\x1b[2J\x9b\x07\x7f\n")
                .bytes()
                .any(|b| b < 0x20 || b == 0x7f)
        );
    }

    #[test]
    fn excerpts_are_bounded() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("0123456789abc", 10), "0123456789…");
        // Escapes count after escaping: nothing raw slips past the cut.
        assert_eq!(excerpt("\x1b\x1b\x1b", 5), "\\x1b\\…");
        let huge = vec![b'a'; 10 << 20];
        assert_eq!(untrusted(&huge).chars().count(), EXCERPT + 1);
        assert_eq!(untrusted(""), "");
    }
}
