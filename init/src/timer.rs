//! Does the guest kernel have a working timer?
//!
//! Under `-M microvm` the guest's ACPI is hardware-reduced, so the kernel
//! sets up no PIT or HPET tick: the local APIC timer is its only clock event
//! device. Under TCG (no TSC-deadline mode) the kernel calibrates that timer
//! at boot against the TSC, and a host that stalls the vCPU for a few tens of
//! milliseconds right at the start of the calibration makes it measure almost
//! nothing ("APIC frequency too slow, disabling apic timer"). Such a guest
//! boots and even answers, but no timer ever fires again: jiffies stand
//! still and the first wait on a grace period or a timeout (a cgroup
//! migration's `synchronize_rcu`, a `nanosleep`) never returns. That is how
//! one VM in a few dozen hung under a loaded host.
//!
//! So init checks, before anything waits on time, that local timer
//! interrupts have been counted; if none were, the VM is useless and init
//! says so on the console with [`NO_TIMER_MARKER`] and powers off at once.
//! The host recognises the marker and boots a fresh VM (whose calibration
//! runs anew). A count read from `/proc/interrupts` costs no timer.

use std::io;

/// The console line init prints for a guest without timer interrupts; the
/// host (microvm's launch) looks for it to boot again.
pub use mu2_protocol::console::NO_TIMER as NO_TIMER_MARKER;

/// The `LOC:` (local timer interrupts) counts of every CPU in the text of
/// `/proc/interrupts`; `None` when there is no such line.
pub fn local_timer_interrupts(interrupts: &str) -> Option<u64> {
    let line = interrupts
        .lines()
        .find(|l| l.trim_start().starts_with("LOC:"))?;
    let counts = line.trim_start().trim_start_matches("LOC:");
    let mut total = 0u64;
    let mut any = false;
    for word in counts.split_whitespace() {
        match word.parse::<u64>() {
            Ok(n) => {
                total = total.saturating_add(n);
                any = true;
            }
            // The description ("Local timer interrupts") follows the counts.
            Err(_) => break,
        }
    }
    any.then_some(total)
}

/// Whether the kernel's local timer has fired at least once.
pub fn ticking() -> io::Result<bool> {
    let text = std::fs::read_to_string("/proc/interrupts")?;
    // A kernel without the line (not x86) cannot be judged: assume it ticks.
    Ok(!matches!(local_timer_interrupts(&text), Some(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKING: &str = "           CPU0       \n 49:          6   IO-APIC  23-fasteoi   virtio0\nNMI:          0   Non-maskable interrupts\nLOC:        902   Local timer interrupts\nSPU:          0   Spurious interrupts\n";

    #[test]
    fn counts_local_timer_interrupts() {
        assert_eq!(local_timer_interrupts(WORKING), Some(902));
        let dead = WORKING.replace("902", "0");
        assert_eq!(local_timer_interrupts(&dead), Some(0));
        let two = "  CPU0 CPU1\nLOC:   3   4   Local timer interrupts\n";
        assert_eq!(local_timer_interrupts(two), Some(7));
        assert_eq!(local_timer_interrupts("NMI: 0\n"), None);
    }
}
