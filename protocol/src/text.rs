//! Text that came from the guest, made safe to show.
//!
//! A guest is hostile: what it writes to its console, what its agent puts
//! in a `StartFailed` message, what QEMU prints about it, all reach a
//! terminal (mu2's stderr) or containerd's error text and logs. An escape
//! sequence there can retitle a window, rewrite what the user sees, or
//! worse on old terminals. [`sanitize`] is the one filter all of it goes
//! through before it leaves mu2: every control character except `\n` and
//! `\t` (C0, DEL and the C1 range U+0080..U+009F, which some terminals take
//! as escapes too) becomes a visible `\xNN` or `\u{NN}`, invalid UTF-8
//! becomes U+FFFD, and the result is capped at a length with a marker.
//!
//! Backslashes are kept as they are, so sanitising twice changes nothing
//! (below the cap): a guest can print a literal `\x1b`, which is harmless.

/// Appended when the text was cut at the cap.
pub const CUT_MARKER: &str = "…[cut]";

/// `text` (bytes or a string) with every control character but `\n` and
/// `\t` escaped, invalid UTF-8 replaced, and at most `max_len` bytes of
/// output (plus [`CUT_MARKER`] when it was cut; never in the middle of an
/// escape or a character).
pub fn sanitize(text: impl AsRef<[u8]>, max_len: usize) -> String {
    let text = String::from_utf8_lossy(text.as_ref());
    let mut out = String::with_capacity(text.len().min(max_len) + CUT_MARKER.len());
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        match c {
            '\n' | '\t' => piece.push(c),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                piece.push_str(&format!("\\x{:02x}", c as u32));
            }
            // C1 controls: an 8-bit CSI (U+009B) starts an escape sequence
            // on terminals that honour them.
            c if (0x80..0xa0).contains(&(c as u32)) => {
                piece.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            // Bidi overrides and isolates reorder what a reader sees.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                piece.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => piece.push(c),
        }
        if out.len() + piece.len() > max_len {
            out.push_str(CUT_MARKER);
            return out;
        }
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_but_newline_and_tab() {
        assert_eq!(
            sanitize("a\x1b[2Jb\r\n\tc\x07\x7f\0", 100),
            "a\\x1b[2Jb\\x0d\n\tc\\x07\\x7f\\x00"
        );
        assert_eq!(sanitize("héllo wörld ✓", 100), "héllo wörld ✓");
    }

    #[test]
    fn escapes_c1_controls_and_bidi_overrides() {
        assert_eq!(sanitize("x\u{9b}31m", 100), "x\\u{9b}31m");
        assert_eq!(sanitize("a\u{202e}b", 100), "a\\u{202e}b");
    }

    #[test]
    fn replaces_invalid_utf8() {
        assert_eq!(sanitize(b"ok\xff\xfe!", 100), "ok\u{fffd}\u{fffd}!");
        // A lone ESC byte among invalid bytes is still escaped.
        assert_eq!(sanitize(b"\xc3\x1b", 100), "\u{fffd}\\x1b");
    }

    #[test]
    fn caps_the_length_with_a_marker() {
        let s = sanitize("x".repeat(10_000), 100);
        assert_eq!(s, format!("{}{CUT_MARKER}", "x".repeat(100)));
        // Never inside an escape or a character.
        assert_eq!(sanitize("ab\x1b", 4), format!("ab{CUT_MARKER}"));
        assert_eq!(sanitize("aé", 2), format!("a{CUT_MARKER}"));
        assert_eq!(sanitize("", 0), "");
        assert_eq!(sanitize("abc", 3), "abc");
    }

    #[test]
    fn is_idempotent_below_the_cap() {
        let once = sanitize(b"a\x1b]0;pwned\x07\xffz\\x1b", 1000);
        assert_eq!(sanitize(&once, 1000), once);
    }

    /// No output byte is a control character other than \n and \t, for
    /// every single byte and every pair of bytes.
    #[test]
    fn output_never_holds_a_control_byte() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let s = sanitize([a, b, b'x'], 64);
                assert!(
                    s.chars().all(|c| c == '\n'
                        || c == '\t'
                        || !(c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c))),
                    "{a:#x} {b:#x}: {s:?}"
                );
            }
        }
    }
}
