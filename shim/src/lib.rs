//! containerd-shim-mu2-v1: the containerd shim v2 of mu2, runtime type
//! `io.containerd.mu2.v1`.
//!
//! Every task and every exec runs in its own fresh microVM ([`process`]),
//! booted in Create/Exec and handed its process in Start. [`task`] is the
//! Task service containerd drives over ttrpc; [`events`] publishes the task
//! events in containerd's order; [`io`] relays containerd's stdio FIFOs. No
//! QEMU knowledge lives here: `mu2_microvm` makes the VMs, `mu2_protocol`
//! speaks to their agents.

pub mod error;
pub mod events;
pub mod io;
pub mod log_uri;
pub mod mount;
pub mod process;
pub mod shim;
pub mod start;
mod sys;
pub mod task;

pub use error::ShimError;
pub use shim::Service;

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.mu2.v1";
