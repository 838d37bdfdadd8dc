//! The gateway's parser of a CGI script's header block, fed in pieces as
//! a VM's stdout delivers them. Never a panic; it never holds more than
//! its limit; a head it accepts has a status HTTP can send and no
//! hop-by-hop field; the body's start it hands on is what followed the
//! blank line in the piece that completed the head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mu2_gateway::cgi::{HeadParser, MAX_HEAD_BYTES};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, the rest is the output.
    let Some((&split, out)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut p = HeadParser::new();
    for chunk in out.chunks(piece) {
        match p.feed(chunk) {
            Ok(None) => {
                assert!(p.buffered() <= MAX_HEAD_BYTES + 2);
            }
            Ok(Some((head, body))) => {
                let s = head.status.as_u16();
                assert!((200..=599).contains(&s), "{s}");
                for h in [
                    "transfer-encoding",
                    "connection",
                    "keep-alive",
                    "upgrade",
                    "status",
                ] {
                    assert!(!head.headers.contains_key(h), "{h}");
                }
                // The body's start: the tail of the piece that ended the head.
                assert!(chunk.ends_with(&body), "the body is not the piece's tail");
                return;
            }
            Err(_) => return,
        }
    }
});
