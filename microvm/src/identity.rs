//! Every VM's fresh identity, given right after the agent's Ready.
//!
//! A VM restored from a template starts from the template's memory: its
//! kernel RNG state and its wall clock are those of every other clone. So,
//! before anything of a request, the host sends each VM (cold-booted ones
//! too: one path) an `Identity` — [`ENTROPY_LEN`] bytes of the host's
//! `getrandom`, the host's wall clock, the VM id — and waits, within the
//! `reply` deadline, for `Identified`. The agent mixes the entropy into the
//! kernel pool and reseeds the CRNG, sets its clock and only then takes the
//! request (docs/agent-protocol.md). A VM that cannot take its identity is
//! killed: nothing runs on a stale one.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mu2_protocol::{GuestMsg, HostMsg, Identity, ProtocolError, StartFailReason};

use crate::vm::{Vm, VmError, CONSOLE_TAIL_LINES};

/// Bytes of host entropy each VM gets (credited in full: 512 bits, twice
/// what the kernel needs to call its CRNG initialised).
pub const ENTROPY_LEN: usize = 64;

/// Why a VM did not take its identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot draw entropy from the host's getrandom: {0}")]
    Entropy(getrandom::Error),
    #[error("the host's clock is not after the Unix epoch")]
    Clock,
    #[error("cannot make its Identity message: {0}")]
    Message(ProtocolError),
    /// The agent answered StartFailed (its message sanitised on decode).
    #[error("its agent could not apply it ({reason:?}): {message}")]
    Refused {
        reason: StartFailReason,
        message: String,
    },
}

/// Gives `vm` its identity and waits for the agent's `Identified`; returns
/// the guest's uptime then. On any error the VM is (or, dropped, will be)
/// killed.
pub(crate) fn identify(vm: &mut Vm) -> Result<Duration, VmError> {
    let started = Instant::now();
    let identity = match fresh(vm.id()) {
        Ok(i) => i,
        Err(reason) => return Err(failed(vm, reason)),
    };
    vm.sender().send(&HostMsg::Identity(identity))?;
    let answer = vm.await_reply("Identified after Identity", |m| match m {
        GuestMsg::Identified { uptime_ns } => Ok(Ok(Duration::from_nanos(uptime_ns))),
        GuestMsg::StartFailed { reason, message } => {
            Ok(Err(IdentityError::Refused { reason, message }))
        }
        other => Err(other),
    })?;
    match answer {
        Ok(uptime) => {
            log::debug!(
                "vm {}: identity applied in {:?} (guest uptime {uptime:?})",
                vm.id(),
                started.elapsed()
            );
            Ok(uptime)
        }
        Err(reason) => Err(failed(vm, reason)),
    }
}

/// Kills the VM; the error carries its console tail.
fn failed(vm: &mut Vm, reason: IdentityError) -> VmError {
    vm.kill();
    VmError::Identity {
        id: vm.id().to_string(),
        reason,
        console: vm.console_tail(CONSOLE_TAIL_LINES),
    }
}

/// A new identity for VM `id`: fresh entropy, and the clock read last, as
/// close to the send as it gets.
fn fresh(id: &str) -> Result<Identity, IdentityError> {
    let mut entropy = vec![0u8; ENTROPY_LEN];
    getrandom::fill(&mut entropy).map_err(IdentityError::Entropy)?;
    let realtime_ns = nanos_since_epoch(SystemTime::now())?;
    Identity::new(entropy, realtime_ns, id.to_string()).map_err(IdentityError::Message)
}

fn nanos_since_epoch(t: SystemTime) -> Result<u64, IdentityError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| IdentityError::Clock)?;
    match u64::try_from(d.as_nanos()) {
        Ok(0) | Err(_) => Err(IdentityError::Clock),
        Ok(ns) => Ok(ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_is_fresh_and_now() {
        let before = nanos_since_epoch(SystemTime::now()).unwrap();
        let a = fresh("t-vm.1").unwrap();
        let b = fresh("t-vm.1").unwrap();
        let after = nanos_since_epoch(SystemTime::now()).unwrap();
        assert_eq!(a.entropy().len(), ENTROPY_LEN);
        assert_ne!(a.entropy(), b.entropy());
        assert!(a.entropy().iter().any(|x| *x != 0));
        assert!((before..=after).contains(&a.realtime_ns()));
        assert!(a.realtime_ns() <= b.realtime_ns());
        assert_eq!(a.vm_id(), "t-vm.1");
    }

    #[test]
    fn a_clock_at_or_before_the_epoch_is_refused() {
        assert!(matches!(
            nanos_since_epoch(UNIX_EPOCH),
            Err(IdentityError::Clock)
        ));
        assert!(matches!(
            nanos_since_epoch(UNIX_EPOCH - Duration::from_secs(1)),
            Err(IdentityError::Clock)
        ));
        assert_eq!(
            nanos_since_epoch(UNIX_EPOCH + Duration::from_nanos(1_500_000_000)).unwrap(),
            1_500_000_000
        );
    }

    #[test]
    fn an_invalid_id_makes_no_identity() {
        assert!(matches!(fresh(".x"), Err(IdentityError::Message(_))));
    }
}
