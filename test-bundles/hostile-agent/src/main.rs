//! A hostile guest agent. The hostile-guest tests put it in place of
//! `/sbin/mu2-guest-agent` in an initramfs of their own, with its mode in
//! `/etc/mu2-hostile`, and check that the host ends the VM within its
//! deadlines, stays bounded in memory and leaves nothing behind:
//!
//! - `stall-ready`: half a Ready frame, then one byte every second, forever
//!   (a trickle must not stretch the Ready deadline);
//! - `silent-after-run`: a valid Ready, takes Run, never answers;
//! - `flood`: a valid Ready, takes Run, then sends Prepared frames without
//!   end (the host must not queue them without bound);
//! - `oversized`: a valid Ready, then a frame header claiming 4 GiB;
//! - `exit-out-of-turn`: a valid Ready, takes Run, answers with an Exit;
//! - `forge-exit`: plays by the rules up to Started, then claims an Exit
//!   with a gigabyte of stdout it never sends;
//! - `no-timer`: says on the console what init says of a guest kernel
//!   without timer interrupts, and ends (the VM powers off).

#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

use mu2_guest_agent::ports::Ports;
use mu2_protocol::{read_msg, write_msg, Exit, GuestMsg, HostMsg, Ready, PROTOCOL_VERSION};

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
    let Ports {
        control, stdout, ..
    } = Ports::open().expect("ports");
    let mut out = control.try_clone().expect("dup");
    let mut input = control;
    let mut expect = |what: &str| match read_msg::<_, HostMsg>(&mut input) {
        Ok(Some(_)) => eprintln!("mu2-hostile-agent: got the {what} it waited for"),
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
