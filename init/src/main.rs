//! `/init` of mu2's guest: see the library for what PID 1 does.

#![forbid(unsafe_code)]

fn main() {
    mu2_init::run()
}
