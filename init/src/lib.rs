//! PID 1 of mu2's guest VM.
//!
//! The VM lives for exactly one container process, so init is deliberately
//! small: it makes the kernel filesystems, loads the virtio/9p/overlay modules
//! Debian builds as modules, starts the guest agent and reaps every orphan
//! until the agent exits. Then it syncs and powers the VM off, which ends
//! QEMU (`-no-reboot`, ACPI on). Any error of its own is printed to the
//! console and also ends in a power-off: init never hangs and never returns,
//! because PID 1 exiting would be a kernel panic (which `panic=-1` and
//! `-no-reboot` also turn into a QEMU exit, the last line of defence).

#![forbid(unsafe_code)]

pub mod cmdline;
pub mod kmod;
pub mod mounts;
pub mod timer;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// Where the agent lives in the initramfs.
pub const AGENT_PATH: &str = "/sbin/mu2-guest-agent";

/// Score that exempts a process from the OOM killer: the container may run
/// the guest out of memory, but init and the agent must survive it to report.
const OOM_SCORE_ADJ_MIN: &str = "-1000";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Module(#[from] kmod::ModuleError),
    #[error("cannot set oom_score_adj of {what}")]
    OomScore {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set sysctl {path}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the agent {path}")]
    SpawnAgent {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Runs PID 1 to the end: never returns.
pub fn run() -> ! {
    // Before devtmpfs exists the kernel may have had no /dev/console to give
    // us, so stdio is only trustworthy after mounting it.
    let early = mounts::mount_early();
    attach_console();
    if let Err(e) = early {
        fail(&e.into());
    }
    match supervise(&cmdline::read()) {
        Ok(()) => power_off(),
        Err(e) => fail(&e),
    }
}

fn supervise(cmdline: &cmdline::Cmdline) -> Result<(), InitError> {
    let debug = cmdline.debug();
    if debug {
        log(&format!(
            "kernel command line keys: {:?}",
            cmdline.mu2_keys()
        ));
    }
    mounts::mount_rest()?;
    // Before anything waits on time (module loading already may).
    match timer::ticking() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("{}; the guest kernel disabled its APIC timer (its calibration was disturbed by a loaded host); powering off", timer::NO_TIMER_MARKER);
            power_off();
        }
        Err(e) => log(&format!("cannot read /proc/interrupts: {e}")),
    }
    kmod::load_all(debug)?;
    set_oom_score_adj("self", OOM_SCORE_ADJ_MIN)?;
    // Always overcommit, as a large host effectively does: a container that
    // mallocs more than the guest's RAM gets its memory and meets its
    // cgroup's OOM killer (exit 137, as under runc) instead of ENOMEM from
    // the small VM's heuristic.
    sysctl(OVERCOMMIT_MEMORY, "1")?;

    let mut cmd = Command::new(AGENT_PATH);
    cmd.env_clear()
        .env("PATH", "/sbin:/bin:/usr/sbin:/usr/bin")
        .envs(cmdline.agent_env());
    let agent = cmd.spawn().map_err(|source| InitError::SpawnAgent {
        path: AGENT_PATH,
        source,
    })?;
    let agent_pid = Pid::from_raw(agent.id() as i32);
    // Inherited already; written again so the agent keeps it even if a future
    // init raises its own.
    set_oom_score_adj(&agent_pid.to_string(), OOM_SCORE_ADJ_MIN)?;
    if debug {
        log(&format!("agent started as pid {agent_pid}"));
    }
    reap_until(agent_pid, debug);
    Ok(())
}

/// Reaps every child (orphans are reparented to PID 1) until the agent ends.
fn reap_until(agent: Pid, debug: bool) {
    loop {
        match waitpid(None, None) {
            Ok(status) if status.pid() == Some(agent) => {
                if debug {
                    log(&format!("agent ended: {}", describe(status)));
                } else if !matches!(status, WaitStatus::Exited(_, 0)) {
                    log(&format!("agent ended abnormally: {}", describe(status)));
                }
                return;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                // ECHILD cannot happen while the agent lives; never spin.
                log(&format!("waitpid failed: {e}"));
                return;
            }
        }
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit code {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

const OVERCOMMIT_MEMORY: &str = "/proc/sys/vm/overcommit_memory";

fn sysctl(path: &'static str, value: &str) -> Result<(), InitError> {
    std::fs::write(path, value).map_err(|source| InitError::Sysctl { path, source })
}

fn set_oom_score_adj(pid: &str, value: &str) -> Result<(), InitError> {
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), value).map_err(|source| {
        InitError::OomScore {
            what: pid.to_string(),
            source,
        }
    })
}

/// Points stdout and stderr (and stdin) at /dev/console, which the agent
/// inherits. Best effort: without a console there is nobody to tell.
fn attach_console() {
    if let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let fd = console.as_raw_fd();
        for target in 0..=2 {
            if fd != target {
                let _ = nix::unistd::dup2(fd, target);
            }
        }
        if fd > 2 {
            drop(console);
        } else {
            std::mem::forget(console);
        }
    }
}

/// Prints one line on the console.
pub fn log(msg: &str) {
    eprintln!("mu2-init: {msg}");
}

fn fail(e: &InitError) -> ! {
    let mut line = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    log(&format!("fatal: {line}; powering off"));
    power_off()
}

fn power_off() -> ! {
    nix::unistd::sync();
    let err = reboot(RebootMode::RB_POWER_OFF).unwrap_err();
    // Returning from PID 1 panics the kernel, which with panic=-1 and QEMU's
    // -no-reboot still ends the VM: better than hanging.
    log(&format!("power off failed: {err}"));
    std::process::exit(1)
}
