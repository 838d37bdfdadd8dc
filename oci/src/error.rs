//! The one error of the `oci` crate: what is wrong with a bundle, naming
//! the config.json field (`process.env`, `mounts[2]`,
//! `linux.resources.memory.limit`, …) or the path at fault.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("no config.json in bundle {0}")]
    NoConfig(PathBuf),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is {size} bytes, more than the {max} bytes mu2 reads of one")]
    TooBig { path: PathBuf, size: u64, max: u64 },
    /// Not JSON, or JSON that is not an OCI spec; `field` is where (empty
    /// when the document as a whole is wrong).
    #[error("malformed {path}: {}{reason}", field_prefix(.field))]
    Malformed {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error("config.json has no process to run")]
    NoProcess,
    #[error("process.args is empty")]
    NoArgs,
    #[error("process.cwd {0:?} is not an absolute path")]
    Cwd(PathBuf),
    #[error(transparent)]
    Mount(#[from] crate::mounts::MountError),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("the compiled linux.seccomp program is not one the agent takes")]
    SeccompProgram(#[source] mu2_protocol::ProtocolError),
    #[error("process.oomScoreAdj {0} is outside -1000..=1000")]
    OomScoreAdj(i32),
    #[error("cannot update the resources: {0}")]
    Update(String),
    #[error("invalid {field}: {reason}")]
    Field { field: String, reason: String },
    /// The agent's request would not fit in one protocol frame.
    #[error(
        "the request to the agent would be {size} bytes, more than the {max} bytes of one \
         frame: {field} alone takes {field_size} bytes"
    )]
    TooLarge {
        field: String,
        field_size: usize,
        size: usize,
        max: usize,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// A [`BundleError::Field`].
pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> BundleError {
    BundleError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}
