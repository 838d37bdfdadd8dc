//! The guest's serial console, kept as a bounded tail in memory.
//!
//! The console is read continuously (a guest that floods it is never
//! blocked by us, and never grows our memory beyond [`CONSOLE_TAIL_BYTES`]);
//! its tail is what a boot-failure error shows. The same bounded tail keeps
//! QEMU's stderr.
//!
//! What the guest writes there is the guest's: anything that leaves here
//! (the tail in an error, the `--debug` echo) has gone through
//! [`mu2_protocol::text::sanitize`], so an escape sequence a tenant wrote to
//! its console never reaches a terminal or containerd's logs raw.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mu2_protocol::text::sanitize;

/// How much of the console's end is kept.
pub const CONSOLE_TAIL_BYTES: usize = 16 * 1024;

#[derive(Clone, Default)]
pub struct ConsoleTail {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl ConsoleTail {
    /// Starts a thread that drains `stream` until QEMU closes it.
    pub fn spawn(mut stream: UnixStream, echo: bool) -> (ConsoleTail, JoinHandle<()>) {
        let tail = ConsoleTail::default();
        let t = tail.clone();
        let handle = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if echo {
                            // A character cut at the chunk's end shows as
                            // U+FFFD; this is a debugging aid.
                            eprint!("{}", sanitize(strip_cr(&chunk[..n]), usize::MAX));
                        }
                        t.push(&chunk[..n]);
                    }
                }
            }
        });
        (tail, handle)
    }

    pub(crate) fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend_from_slice(bytes);
        if buf.len() > CONSOLE_TAIL_BYTES {
            let cut = buf.len() - CONSOLE_TAIL_BYTES;
            buf.drain(..cut);
        }
    }

    /// The last `lines` lines of the console, sanitised (control
    /// characters escaped, invalid UTF-8 replaced; the serial line's `\r\n`
    /// ends read as line ends).
    pub fn tail(&self, lines: usize) -> String {
        let buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<&[u8]> = buf
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect();
        // A final newline ends the last line; it does not start another.
        let all = match all.split_last() {
            Some((&[], rest)) => rest,
            _ => &all[..],
        };
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| sanitize(l, CONSOLE_TAIL_BYTES))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The serial console ends lines with `\r\n`: the `\r` is not worth an
/// escape each time.
fn strip_cr(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keeps_a_bounded_tail() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (tail, h) = ConsoleTail::spawn(b, false);
        for i in 0..10_000 {
            writeln!(a, "line {i}").unwrap();
        }
        drop(a);
        h.join().unwrap();
        assert!(tail.buf.lock().unwrap().len() <= CONSOLE_TAIL_BYTES);
        assert_eq!(tail.tail(2), "line 9998\nline 9999");
    }

    /// What a tenant writes to its console (escape sequences, a bell, a
    /// bare carriage return, invalid UTF-8) leaves only escaped.
    #[test]
    fn the_tail_is_sanitised() {
        let tail = ConsoleTail::default();
        tail.push(b"[    1.0] boot\r\n");
        tail.push(b"\x1b]0;owned\x07\x1b[2J\x1b[31mred\rover\xff\r\n");
        tail.push(b"\xe2\x9c\x93 last\n");
        let text = tail.tail(10);
        assert_eq!(
            text,
            "[    1.0] boot\n\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred\\x0dover\u{fffd}\n\u{2713} last"
        );
        assert!(!text.bytes().any(|b| b < 0x20 && b != b'\n'), "{text:?}");
        assert_eq!(tail.tail(1), "\u{2713} last");
    }

    #[test]
    fn the_echo_keeps_line_ends_and_escapes_the_rest() {
        assert_eq!(
            sanitize(strip_cr(b"a\r\nb\rc\x1b\n"), usize::MAX),
            "a\nb\\x0dc\\x1b\n"
        );
    }
}
