//! Frame decoding on arbitrary bytes: `read_frame` never panics, never
//! yields more than the maximum, and a payload written as a frame reads back
//! as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mu2_protocol::frame::{read_frame, write_frame};
use mu2_protocol::MAX_FRAME_LEN;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    let mut consumed = 0;
    while let Ok(Some(frame)) = read_frame(&mut r) {
        assert!(frame.len() <= MAX_FRAME_LEN);
        consumed += frame.len() + 4;
        assert!(consumed <= data.len());
    }
    let mut wire = Vec::new();
    write_frame(&mut wire, data).expect("fuzz inputs are below the maximum");
    let back = read_frame(&mut &wire[..]).unwrap().unwrap();
    assert_eq!(back, data);
});
