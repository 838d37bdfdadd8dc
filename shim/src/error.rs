//! The shim's errors, and their one mapping to ttrpc status codes at the
//! edge of the Task service.

use std::io;
use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};
use mu2_microvm::guest::GuestImageError;
use mu2_microvm::VmError;
use mu2_oci::BundleError;
use mu2_protocol::StartFailReason;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("cannot {op} {what}: it is {state}")]
    State {
        op: &'static str,
        what: String,
        state: &'static str,
    },
    #[error("invalid bundle")]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Guest(#[from] GuestImageError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot read the mu2 configuration")]
    Config(#[from] mu2_microvm::jail::config::ConfigError),
    #[error("cannot start the process of {what}: {message}")]
    StartFailed {
        what: String,
        reason: StartFailReason,
        message: String,
    },
    #[error("vm of {0} ended before its process started")]
    VmGone(String),
    #[error("cannot open {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the log binary {path}")]
    LogBinary {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount the rootfs of {id} on {target}")]
    Mount {
        id: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the vm owner of {0} is gone")]
    OwnerGone(String),
    #[error(transparent)]
    Hook(#[from] mu2_oci::hooks::HookError),
    #[error("{0}")]
    Unimplemented(&'static str),
}

/// The error and its causes, on one line.
pub use mu2_microvm::describe_error as describe;

impl ShimError {
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_) | ShimError::Bundle(_) => Code::INVALID_ARGUMENT,
            ShimError::State { .. } | ShimError::Guest(_) | ShimError::StartFailed { .. } => {
                Code::FAILED_PRECONDITION
            }
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Vm(_)
            | ShimError::Config(_)
            | ShimError::VmGone(_)
            | ShimError::Io { .. }
            | ShimError::LogBinary { .. }
            | ShimError::Mount { .. }
            | ShimError::OwnerGone(_)
            | ShimError::Hook(_) => Code::UNKNOWN,
        }
    }
}

/// Longest error text handed to containerd.
pub const MAX_STATUS_LEN: usize = 16 * 1024;

impl From<ShimError> for ttrpc::Error {
    /// The text may hold what a guest said (a StartFailed message, a
    /// console tail): containerd shows it to users, so it is sanitised.
    fn from(e: ShimError) -> Self {
        let text = mu2_protocol::text::sanitize(describe(&e), MAX_STATUS_LEN);
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn maps_to_containerd_codes() {
        assert_eq!(
            status(ShimError::NotFound("task t1".into())),
            (Code::NOT_FOUND, "task t1 not found".into())
        );
        assert_eq!(
            status(ShimError::AlreadyExists("exec e1".into())).0,
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            status(ShimError::InvalidArgument("x".into())).0,
            Code::INVALID_ARGUMENT
        );
        let (code, msg) = status(ShimError::Bundle(BundleError::NoArgs));
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert_eq!(msg, "invalid bundle: process.args is empty");
        assert_eq!(
            status(ShimError::State {
                op: "start",
                what: "task t1".into(),
                state: "running",
            }),
            (
                Code::FAILED_PRECONDITION,
                "cannot start task t1: it is running".into()
            )
        );
        assert_eq!(
            status(ShimError::Unimplemented("pause is not supported")).0,
            Code::UNIMPLEMENTED
        );
        assert_eq!(status(ShimError::VmGone("t1".into())).0, Code::UNKNOWN);
    }

    #[test]
    fn guest_text_reaches_containerd_sanitised() {
        let (code, msg) = status(ShimError::StartFailed {
            what: "task t1".into(),
            reason: StartFailReason::Setup,
            message: "chdir /\x1b[2J\x1b]0;x\x07: no such file".into(),
        });
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert_eq!(
            msg,
            "cannot start the process of task t1: chdir /\\x1b[2J\\x1b]0;x\\x07: no such file"
        );
    }
}
