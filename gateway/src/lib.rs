//! mu2-gateway: the µ²service dispatcher (DESIGN.md, "The gateway").
//!
//! An HTTP server whose routes map a path prefix to an image and a command:
//! every request runs the command once, under CGI/1.1, in a fresh microVM
//! that is destroyed when the response is complete. [`config`] reads the
//! routes, [`image`] turns an OCI image layout into a rootfs and a process,
//! [`cgi`] is the CGI contract (meta-variables in, a CGI response out),
//! [`exec`] runs one request in one VM, [`server`] is HTTP, admission and
//! draining, [`metrics`] what `/metrics` shows.

#![forbid(unsafe_code)]

pub mod cgi;
pub mod config;
pub mod containerd;
pub mod exec;
pub mod image;
pub mod metrics;
pub mod server;
