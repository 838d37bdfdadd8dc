//! The shim's parser of containerd's stdout/stderr paths and log URIs.
//! Never a panic; a URI it accepts names an absolute path without `..`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mu2_shim::log_uri::{parse_output, Output};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_output(text) {
        Ok(Output::File(p)) | Ok(Output::Binary { path: p, .. }) => {
            assert!(p.is_absolute(), "{p:?}");
            assert!(
                !p.components().any(|c| c == std::path::Component::ParentDir),
                "{p:?}"
            );
        }
        Ok(Output::Fifo(_)) | Ok(Output::None) | Err(_) => {}
    }
});
