//! A hostile guest agent. The hostile-guest tests put it in place of
//! `/sbin/mu2-guest-agent` in an initramfs of their own, with its mode in
//! `/etc/mu2-hostile`, and check that the host ends the VM within its
//! deadlines, stays bounded in memory and leaves nothing behind:
//!
//! Every mode but `stall-ready` sends a valid Ready; those that get as far
//! as a request take the host's Identity first and answer Identified, as
//! the real agent does, so that they misbehave where they are meant to.
//!
//! - `stall-ready`: half a Ready frame, then one byte every second, forever
//!   (a trickle must not stretch the Ready deadline);
//! - `silent-after-ready`: takes Identity, never answers it;
//! - `refuse-identity`: takes Identity, answers StartFailed (Setup), as an
//!   agent that cannot apply it does;
//! - `silent-after-run`: takes Run, never answers;
//! - `flood`: takes Run, then sends Prepared frames without end (the host
//!   must not queue them without bound);
//! - `oversized`: then a frame header claiming 4 GiB;
//! - `exit-out-of-turn`: takes Run, answers with an Exit;
//! - `forge-exit`: plays by the rules up to Started, then claims an Exit
//!   with a gigabyte of stdout it never sends;
//! - `no-timer`: says on the console what init says of a guest kernel
//!   without timer interrupts, and ends (the VM powers off);
//! - `stale-clock`: not hostile, stale: plays a VM restored from an old
//!   template by setting the guest's wall clock to 2001, then runs the real
//!   agent (whose Identity must set it right before the container runs).

#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

use mu2_guest_agent::ports::Ports;
use mu2_protocol::{
    read_msg, write_msg, Exit, GuestMsg, HostMsg, Ready, StartFailReason, PROTOCOL_VERSION,
};

/// The wall clock of `stale-clock`: 2001-09-09, in ns since the epoch.
const STALE_REALTIME_NS: u64 = 1_000_000_000 * 1_000_000_000;

fn ready() -> GuestMsg {
    GuestMsg::Ready(Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "hostile".into(),
        kernel_release: "hostile".into(),
        uptime_ns: 0,
    })
}

fn frame(m: &GuestMsg) -> Vec<u8> {
    let mut v = Vec::new();
    write_msg(&mut v, m).expect("encode");
    v
}

fn forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let mode = std::fs::read_to_string("/etc/mu2-hostile").unwrap_or_default();
    let mode = mode.trim();
    eprintln!("mu2-hostile-agent: mode {mode}");
    if mode == "no-timer" {
        eprintln!(
            "{}; (played by the hostile agent)",
            mu2_protocol::console::NO_TIMER
        );
        return;
    }
    if mode == "stale-clock" {
        mu2_guest_agent::identity::set_clock(STALE_REALTIME_NS).expect("set the clock back");
        eprintln!("mu2-hostile-agent: clock set to 2001; the real agent takes over");
        std::process::exit(mu2_guest_agent::run());
    }
    let Ports {
        control, stdout, ..
    } = Ports::open().expect("ports");
    let mut out = control.try_clone().expect("dup");
    let mut input = control;
    let mut expect = |what: &str| match read_msg::<_, HostMsg>(&mut input) {
        Ok(Some(m)) if m.name() == what => {
            eprintln!("mu2-hostile-agent: got the {what} it waited for")
        }
        other => {
            eprintln!("mu2-hostile-agent: waiting for {what}: {other:?}");
            forever()
        }
    };
    if mode == "stall-ready" {
        for b in frame(&ready()) {
            out.write_all(&[b]).expect("write");
            std::thread::sleep(Duration::from_secs(1));
        }
        forever();
    }
    out.write_all(&frame(&ready())).expect("ready");
    expect("Identity");
    match mode {
        "silent-after-ready" => forever(),
        "refuse-identity" => {
            out.write_all(&frame(&GuestMsg::StartFailed {
                reason: StartFailReason::Setup,
                message: "cannot apply the host's identity: played by the hostile agent".into(),
            }))
            .expect("start failed");
            forever()
        }
        _ => {}
    }
    out.write_all(&frame(&GuestMsg::Identified { uptime_ns: 0 }))
        .expect("identified");
    match mode {
        "silent-after-run" => {
            expect("Run");
            forever()
        }
        "flood" => {
            expect("Run");
            let f = frame(&GuestMsg::Prepared {
                path: "/bin/sh".into(),
            });
            loop {
                if out.write_all(&f).is_err() {
                    forever()
                }
            }
        }
        "oversized" => {
            out.write_all(&0xFFFF_FFF0u32.to_be_bytes())
                .expect("header");
            forever()
        }
        "exit-out-of-turn" => {
            expect("Run");
            out.write_all(&frame(&GuestMsg::Exit(exit(0))))
                .expect("exit");
            forever()
        }
        "forge-exit" => {
            expect("Run");
            out.write_all(&frame(&GuestMsg::Prepared {
                path: "/bin/sh".into(),
            }))
            .expect("prepared");
            expect("Start");
            out.write_all(&frame(&GuestMsg::Started { pid: 1 }))
                .expect("started");
            let mut stdout = stdout;
            let _ = stdout.write_all(b"only this\n");
            out.write_all(&frame(&GuestMsg::Exit(exit(1 << 30))))
                .expect("exit");
            forever()
        }
        other => {
            eprintln!("mu2-hostile-agent: unknown mode {other:?}");
            forever()
        }
    }
}

fn exit(stdout_bytes: u64) -> Exit {
    Exit {
        status: 0,
        signal: None,
        oom_killed: false,
        stdout_bytes,
        stderr_bytes: 0,
    }
}
