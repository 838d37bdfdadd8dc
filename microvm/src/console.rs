//! The guest's serial console, kept as a bounded tail in memory.
//!
//! The console is read continuously (a guest that floods it is never
//! blocked by us, and never grows our memory beyond [`CONSOLE_TAIL_BYTES`]);
//! its tail is what a boot-failure error shows.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
                            eprint!("{}", String::from_utf8_lossy(&chunk[..n]));
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

    /// The last `lines` lines of the console, lossily decoded.
    pub fn tail(&self, lines: usize) -> String {
        let buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
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
}
