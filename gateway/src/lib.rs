#![forbid(unsafe_code)]
pub mod cgi;
pub mod config;
