//! The VM's identity, from the host's `Identity` message: the first thing
//! the agent does after Ready, before it takes any request.
//!
//! VMs restored from one snapshot (a template taken at Ready) start from
//! identical memory: the same kernel RNG state and the same wall clock. So,
//! in this order:
//! 1. the host's entropy is mixed into the kernel's input pool and credited
//!    (`RNDADDENTROPY` on /dev/urandom),
//! 2. the kernel's CRNG is reseeded from that pool now (`RNDRESEEDCRNG`;
//!    an RNG that is already initialised would otherwise go on drawing on
//!    its old, shared key until its next scheduled reseed),
//! 3. the wall clock (`CLOCK_REALTIME`) is set to the host's,
//! 4. the VM id is kept for the agent's log lines (in this process's
//!    memory only: no file, environment variable or hostname the container
//!    could see).
//!
//! Any step failing fails the VM: a request never runs on a stale identity.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::sync::OnceLock;

use mu2_protocol::Identity;
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

/// The device whose ioctls reach the kernel's RNG.
pub const URANDOM: &str = "/dev/urandom";

static VM_ID: OnceLock<String> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot open {URANDOM}")]
    Open(#[source] std::io::Error),
    #[error("cannot add the host's entropy to the kernel pool (RNDADDENTROPY)")]
    AddEntropy(#[source] nix::errno::Errno),
    #[error("cannot reseed the kernel RNG (RNDRESEEDCRNG)")]
    Reseed(#[source] nix::errno::Errno),
    #[error("cannot set the wall clock to the host's ({realtime_ns} ns since the epoch)")]
    Clock {
        realtime_ns: u64,
        #[source]
        source: nix::errno::Errno,
    },
}

/// Applies `identity` to this VM: entropy, reseed, clock, then the VM id.
pub fn apply(identity: &Identity) -> Result<(), IdentityError> {
    let urandom = OpenOptions::new()
        .write(true)
        .open(URANDOM)
        .map_err(IdentityError::Open)?;
    crate::sys::add_entropy(urandom.as_fd(), identity.entropy())
        .map_err(IdentityError::AddEntropy)?;
    crate::sys::reseed_crng(urandom.as_fd()).map_err(IdentityError::Reseed)?;
    set_clock(identity.realtime_ns())?;
    // A second identity cannot happen (the agent takes one, first); if it
    // did, the first id stays in the log lines.
    let _ = VM_ID.set(identity.vm_id().to_string());
    Ok(())
}

/// Sets CLOCK_REALTIME to `realtime_ns` since the epoch.
pub fn set_clock(realtime_ns: u64) -> Result<(), IdentityError> {
    clock_settime(ClockId::CLOCK_REALTIME, timespec(realtime_ns)).map_err(|source| {
        IdentityError::Clock {
            realtime_ns,
            source,
        }
    })
}

fn timespec(ns: u64) -> TimeSpec {
    // u64 nanoseconds reach year 2554: the seconds always fit an i64.
    TimeSpec::new((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64)
}

/// The VM id the host gave, once the identity is applied.
pub fn vm_id() -> Option<&'static str> {
    VM_ID.get().map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_split_into_a_timespec() {
        let t = timespec(1_700_000_000_123_456_789);
        assert_eq!(t.tv_sec(), 1_700_000_000);
        assert_eq!(t.tv_nsec(), 123_456_789);
        let t = timespec(u64::MAX);
        assert!(t.tv_sec() > 0 && t.tv_nsec() < 1_000_000_000);
    }
}
