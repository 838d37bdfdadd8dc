//! config.json → plan: arbitrary bytes as the config.json of a bundle that
//! has a rootfs (and a directory and a file to bind), through `mu2_oci::load`.
//! It must never panic; what it accepts fits in one frame.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mu2_protocol::{HostMsg, Wire, MAX_FRAME_LEN};

/// This process's bundle, under fuzz/target (so nothing is left in /tmp):
/// one per process, as `-jobs` runs several; those of processes that are
/// gone are removed first.
fn bundle() -> &'static PathBuf {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let parent = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/config-bundles");
        std::fs::create_dir_all(&parent).unwrap();
        for e in std::fs::read_dir(&parent).unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let d = parent.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("rootfs")).unwrap();
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
