//! `/sbin/mu2-guest-agent`: see the library for what the agent does.

#![forbid(unsafe_code)]

fn main() {
    std::process::exit(mu2_guest_agent::run())
}
