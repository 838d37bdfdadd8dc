//! Length-prefixed framing of protobuf messages.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload.
//! The length is checked against [`MAX_FRAME_LEN`] before anything is
//! allocated, so a hostile or corrupted peer cannot make the reader allocate
//! more than that. A clean end of stream between frames is reported as
//! `Ok(None)`; an end of stream inside a frame is an error.

use std::io::{self, Read, Write};

/// Largest payload accepted in one frame. Control messages are small; the
/// largest is a `Run` with a big environment.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("i/o error on the agent channel")]
    Io(#[source] io::Error),
}

/// Writes one frame holding `payload` and flushes.
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        max: MAX_FRAME_LEN,
    })?;
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

/// Reads one frame. `Ok(None)` is a clean end of stream before a new frame.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            got,
            want: HEADER_LEN,
        });
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(FrameError::Truncated { got, want: len });
    }
    Ok(Some(payload))
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_several_frames() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"one").unwrap();
        write_frame(&mut wire, b"").unwrap();
        write_frame(&mut wire, &[7u8; 1000]).unwrap();
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"one");
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"");
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), vec![7u8; 1000]);
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let wire = (u32::MAX).to_be_bytes();
        let err = read_frame(&mut &wire[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
        let wire = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &wire[..]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_payload_is_not_written() {
        let mut wire = Vec::new();
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            write_frame(&mut wire, &big),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(wire.is_empty());
    }

    #[test]
    fn truncation_is_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").unwrap();
        for cut in 1..wire.len() {
            let err = read_frame(&mut &wire[..cut]).unwrap_err();
            assert!(matches!(err, FrameError::Truncated { .. }), "cut at {cut}");
        }
    }

    /// A cheap deterministic fuzz (scripts/fuzz runs the real one): streams
    /// of valid frames, some left intact and some mutated (a byte flipped,
    /// the stream cut, a length rewritten, junk appended), plus pure noise.
    /// The reader never panics, never yields a frame above the maximum, and
    /// gives back exactly the frames an intact stream holds.
    #[test]
    fn random_input_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut intact = 0;
        let mut decoded_from_mutants = 0;
        for round in 0..4000 {
            let frames: Vec<Vec<u8>> = (0..1 + next(&mut state) % 4)
                .map(|_| {
                    let len = (next(&mut state) % 300) as usize;
                    (0..len).map(|_| next(&mut state) as u8).collect()
                })
                .collect();
            let mut wire = Vec::new();
            for f in &frames {
                write_frame(&mut wire, f).unwrap();
            }
            let mutation = if round % 5 == 0 {
                None
            } else {
                Some(next(&mut state) % 5)
            };
            match mutation {
                None => {}
                Some(0) => {
                    let at = next(&mut state) as usize % wire.len();
                    wire[at] ^= 1 << (next(&mut state) % 8);
                }
                Some(1) => wire.truncate(next(&mut state) as usize % wire.len()),
                Some(2) => {
                    let len = next(&mut state) as u32;
                    wire[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
                }
                Some(3) => wire.extend((0..next(&mut state) % 16).map(|_| next(&mut state) as u8)),
                _ => {
                    wire = (0..next(&mut state) % 64)
                        .map(|_| next(&mut state) as u8)
                        .collect()
                }
            }
            let mut r = &wire[..];
            let mut got = Vec::new();
            loop {
                match read_frame(&mut r) {
                    Ok(Some(frame)) => {
                        assert!(frame.len() <= MAX_FRAME_LEN);
                        got.push(frame);
                    }
                    Ok(None) => break,
                    Err(FrameError::Io(e)) => panic!("a byte slice cannot fail: {e}"),
                    Err(_) => {
                        assert!(mutation.is_some(), "an intact stream failed to read");
                        break;
                    }
                }
            }
            if mutation.is_none() {
                assert_eq!(got, frames);
                intact += 1;
            } else {
                decoded_from_mutants += got.len();
            }
        }
        // Both kinds of input were exercised, not just rejections.
        assert_eq!(intact, 800);
        assert!(decoded_from_mutants > 1000, "{decoded_from_mutants}");
    }

    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }
}
