//! mu2's VMM layer: the only code that knows QEMU.
//!
//! A [`VmSpec`] describes one single-use microVM (kernel, initrd, memory,
//! vCPUs, 9p shares, accelerator). [`Vm::launch`] renders it into a QEMU
//! `microvm` command line ([`qemu`]), starts QEMU with the agent channel and
//! the stdio ports on socketpairs (no socket ever touches the filesystem),
//! and waits — with a deadline — for the guest agent's `Ready`. A VM that is
//! not ready in time is killed and the error carries the tail of its
//! console. Dropping a [`Vm`] kills and reaps QEMU, so no error path leaves
//! a VMM behind.
//!
//! Before anything of a request, every VM gets a fresh identity (host
//! entropy for its RNG, the host's wall clock, its id: `identity.rs`), so
//! that VMs restored from one snapshot are not copies of each other.
//!
//! [`guest`] finds the installed guest image;
//! [`accel`] decides between KVM and TCG; [`cgroup`] holds each VMM in a
//! host cgroup of its own (limits, statistics, pause); [`record`] keeps the
//! ownership record of every VM, by which leftovers are collected;
//! [`template`] saves a VM at Ready and resumes clones of it instead of
//! booting ([`qmp`] drives the save).

pub mod accel;
pub mod cgroup;
pub mod config;
pub mod console;
pub mod deadlines;
pub mod guest;
pub mod identity;
pub mod jail;
pub mod pool;
pub mod qemu;
pub mod qmp;
pub mod record;
pub mod relay;
pub mod spec;
mod sys;
pub mod template;
pub mod vm;

pub use accel::{Accel, AccelChoice};
pub use deadlines::Deadlines;
pub use guest::GuestImage;
pub use spec::{Share, VmSpec};
pub use vm::{AgentEvent, KillHandle, Vm, VmError};

/// An error and its causes on one line, each cause once (a cause whose text
/// its wrapper already shows is not repeated).
pub fn describe_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
