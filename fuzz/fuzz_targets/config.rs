//! config.json → plan: arbitrary bytes as the config.json of a bundle that
//! has a rootfs (and a directory and a file to bind), through `mu2_oci::load`.
//! It must never panic; what it accepts fits in one frame.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mu2_protocol::{HostMsg, Wire, MAX_FRAME_LEN};

fn bundle() -> &'static PathBuf {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("mu2-fuzz-config-")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::create_dir(d.join("rootfs")).unwrap();
        std::fs::create_dir(d.join("data")).unwrap();
        std::fs::write(d.join("data/file"), "x").unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = bundle();
    std::fs::write(dir.join("config.json"), data).unwrap();
    if let Ok(plan) = mu2_oci::load(dir) {
        let bytes = HostMsg::Run(Box::new(plan.run)).encode().unwrap();
        assert!(bytes.len() <= MAX_FRAME_LEN);
        // What the host accepts, the agent accepts.
        HostMsg::decode(&bytes).unwrap();
    }
});
