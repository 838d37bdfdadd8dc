//! The `mu2` command: run an OCI bundle in a fresh microVM without
//! containerd (`mu2 run`, runc-like) and diagnose a host (`mu2 check`).

#![deny(unsafe_code)]

pub mod check;
pub mod run;
mod tty;
