//! `mu2 check`: what this host offers mu2, one line per fact.

use std::path::Path;
use std::process::Command;

use mu2_microvm::{accel, GuestImage};

/// Prints the report; false when mu2 cannot run VMs here.
pub fn check(guest_dir: Option<&Path>) -> bool {
    let mut ok = true;
    let verdict = accel::probe(Path::new("/"));
    println!("accel: {:?} ({})", verdict.accel, verdict.reason);
    match Command::new(mu2_microvm::spec::DEFAULT_QEMU)
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => println!(
            "qemu: {}",
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
        ),
        _ => {
            println!("qemu: qemu-system-x86_64 not found (apt-get install qemu-system-x86)");
            ok = false;
        }
    }
    match GuestImage::locate(guest_dir) {
        Ok(g) => println!("guest image: {}", g.dir.display()),
        Err(e) => {
            println!("guest image: {e}");
            ok = false;
        }
    }
    match accel::host_tsc_khz() {
        Some(khz) => println!("host tsc: {khz} kHz"),
        None => println!("host tsc: unknown (TCG guests calibrate it themselves)"),
    }
    ok
}
