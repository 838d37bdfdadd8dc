//! The `mu2` command: run an OCI bundle in a fresh microVM without
//! containerd (`mu2 run`, runc-like), diagnose a host (`mu2 check`), list
//! the host's VMs (`mu2 ps`), collect what dead owners left (`mu2 gc`) and
//! manage VM templates (`mu2 template`).

#![deny(unsafe_code)]

pub mod check;
pub mod pool;
pub mod run;
pub mod template;
mod tty;
pub mod vms;
