//! The host <-> guest-agent protocol of mu2.
//!
//! `proto/mu2/agent/v1/agent.proto` defines the wire messages; the generated
//! types stay private to this crate. Callers use the domain types of
//! [`messages`], converted with `TryFrom` so that every field a peer sends is
//! checked (the host trusts nothing the guest sends, and the agent refuses a
//! malformed request instead of half-running it). Frames are bounded by
//! [`frame::MAX_FRAME_LEN`].
//!
//! Transport: virtio-serial ports named in [`port`]. Control messages travel
//! on [`port::CONTROL`]; stdio has raw ports of its own.
//!
//! Text the guest sends (its messages, its console) is shown to users only
//! through [`text::sanitize`].

#![forbid(unsafe_code)]

pub mod frame;
pub mod messages;
pub mod mount_options;
pub mod text;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
}

pub use frame::{FrameError, MAX_FRAME_LEN};
pub use messages::*;

/// The protocol version this build speaks. The host refuses an agent that
/// announces another one.
pub const PROTOCOL_VERSION: u32 = 4;

/// Lines the guest's init prints on the serial console for the host to act
/// on (the console is not a protocol channel: these are the only lines the
/// host reads for meaning, and a guest that fakes one can only make the
/// host do what the line asks for a broken guest).
pub mod console {
    /// The guest kernel has no timer interrupts (it disabled its APIC timer
    /// after a calibration disturbed by host load); the VM powers off and
    /// the host boots another.
    pub const NO_TIMER: &str = "mu2-init: no local timer interrupts";
}

/// Names of the virtio-serial ports, as the guest sees them in
/// `/sys/class/virtio-ports/*/name`.
pub mod port {
    pub const CONTROL: &str = "mu2.control";
    pub const STDIN: &str = "mu2.stdin";
    pub const STDOUT: &str = "mu2.stdout";
    pub const STDERR: &str = "mu2.stderr";
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("cannot decode a {what} message")]
    Decode {
        what: &'static str,
        #[source]
        source: protobuf::Error,
    },
    #[error("cannot encode a {what} message")]
    Encode {
        what: &'static str,
        #[source]
        source: protobuf::Error,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("agent speaks protocol version {got}, this host speaks {want}")]
    Version { got: u32, want: u32 },
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid {
        field,
        reason: reason.into(),
    }
}
