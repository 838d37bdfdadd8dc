//! `mu2 run BUNDLE`: one process in one fresh VM, wired to our stdio.
//!
//! The request runs as containerd would drive it: `Run` (the agent sets the
//! container up and resolves args[0]; a missing binary fails here), `Start`,
//! then the process's stdio until `Exit`. Every wait on the guest has a
//! deadline ([`mu2_microvm::Deadlines`], from `/etc/mu2/config.toml`); the
//! process itself may run as long as it likes, or `--timeout`.
//!
//! The VM's output ports are relayed to ours by [`OutputRelay`]s with
//! blocking I/O, so back-pressure runs end to end: a slow reader of our
//! stdout stalls the relay, which stalls QEMU, which stalls the guest's
//! writer. The agent's `Exit` counts the bytes of stdout and stderr; the VM
//! is told it may power off (`ExitAck`) only once every one of them arrived
//! here, however slow the reader — bytes can still be queued inside the
//! guest when `Exit` is sent. Our stdin's end is announced with its byte
//! count (`StdinClose`).
//!
//! Signals we receive (INT, TERM, HUP, QUIT, USR1, USR2) are forwarded to
//! the process; WINCH becomes a resize for a terminal process. A second INT
//! or TERM, or the grace period (`--kill-grace`) after the first, tears the
//! VM down instead: mu2 then exits 128+signal.
//!
//! Exit status: the process's (code, or 128+signal); 127 when its binary is
//! not found, 126 when it cannot be executed, 124 when `--timeout` ended
//! it, 125 when mu2 itself fails (bad bundle, no guest image, VM failure),
//! as `docker run` and `timeout` do.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mu2_microvm::record::{Owner, OwnerKind};
use mu2_microvm::relay::{Drain, DrainWatch, OutputRelay};
use mu2_microvm::vm::{describe_msg, ControlSender, CONSOLE_TAIL_LINES};
use mu2_microvm::{
    guest::GuestImageError, AccelChoice, AgentEvent, GuestImage, KillHandle, Vm, VmError,
};
use mu2_oci::{self as oci, BundleError};
use mu2_protocol::{Exit, GuestMsg, HostMsg, StartFailReason};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;

use crate::tty;

/// Exit status for mu2's own failures.
pub const EXIT_MU2_FAILED: u8 = 125;
/// Exit status when `--timeout` ended the process (as timeout(1)).
pub const EXIT_TIMEOUT: u8 = 124;
/// How long after a first INT or TERM the VM is torn down by default.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// How often the drain of the last output bytes is looked at.
const DRAIN_POLL: Duration = Duration::from_millis(5);

pub struct RunOptions {
    pub bundle: PathBuf,
    pub id: Option<String>,
    pub guest_dir: Option<PathBuf>,
    pub accel: AccelChoice,
    pub qemu: PathBuf,
    pub timings: bool,
    pub debug: bool,
    /// Ends the process (and its VM) after this long.
    pub timeout: Option<Duration>,
    /// After a first INT or TERM, tears the VM down after this long.
    pub kill_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Guest(#[from] GuestImageError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot read the mu2 configuration")]
    Config(#[from] mu2_microvm::jail::config::ConfigError),
    #[error("{message}")]
    StartFailed {
        reason: StartFailReason,
        message: String,
    },
    #[error("vm {id} ended before its process reported an exit; console tail:\n{console}")]
    VmGone { id: String, console: String },
    #[error("{stream} of vm {id} was cut short: {got} of {want} bytes arrived")]
    Truncated {
        id: String,
        stream: &'static str,
        got: u64,
        want: u64,
    },
    #[error("the process of vm {id} ran past --timeout {timeout:?}; its vm was killed")]
    Timeout { id: String, timeout: Duration },
    #[error("vm {id} torn down after signal {signal}")]
    TornDown { id: String, signal: i32 },
    #[error("cannot hold the stdin port open")]
    Stdin(#[source] io::Error),
    #[error("cannot relay the vm's {0}")]
    Relay(&'static str, #[source] io::Error),
    #[error("cannot set up signal forwarding")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Hook(#[from] mu2_oci::hooks::HookError),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::StartFailed {
                reason: StartFailReason::NotFound,
                ..
            } => 127,
            RunError::StartFailed {
                reason: StartFailReason::NotExecutable,
                ..
            } => 126,
            RunError::Timeout { .. } => EXIT_TIMEOUT,
            RunError::TornDown { signal, .. } => u8::try_from(128 + signal).unwrap_or(255),
            _ => EXIT_MU2_FAILED,
        }
    }
}

/// Longest error text mu2 prints.
pub const MAX_ERROR_LEN: usize = 64 * 1024;

/// The error and its causes on one line (the console tail, when there is
/// one, follows on its own lines), sanitised: it may quote the guest (a
/// StartFailed message, its console) and goes to a terminal.
pub fn describe(e: &RunError) -> String {
    mu2_protocol::text::sanitize(mu2_microvm::describe_error(e), MAX_ERROR_LEN)
}

fn default_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("run-{}-{nanos}", std::process::id())
}

/// An answer the agent may give to Run or Start.
enum Reply {
    Ok(String),
    Refused(StartFailReason, String),
}

fn refused(reason: StartFailReason, message: String) -> RunError {
    RunError::StartFailed { reason, message }
}

/// Runs the bundle; returns the process's exit status.
pub fn run(opts: &RunOptions) -> Result<u8, RunError> {
    let t0 = Instant::now();
    let mut plan = oci::load(&opts.bundle)?;
    let image = GuestImage::locate(opts.guest_dir.as_deref())?;
    let id = opts.id.clone().unwrap_or_else(default_id);
    let config = mu2_microvm::config::HostConfig::load()?;
    let mut spec = plan.vm_spec(
        id.clone(),
        &image,
        opts.qemu.clone(),
        opts.accel.resolve(),
        config.jail,
        config.deadlines,
        Owner::this_process(OwnerKind::Run),
    );
    spec.debug = opts.debug;
    spec.templates = config.templates;
    spec.pool = config.pool;
    let terminal = plan.run.process.terminal;
    if terminal && plan.run.process.console_size.is_none() {
        plan.run.process.console_size = tty::window_size();
    }
    let mut vm = Vm::launch(&spec)?;
    let boot = vm.boot_time();
    let stdio = vm.take_stdio().expect("stdio is taken once");
    let sender = vm.sender();
    // Closing our end of the stdin port makes QEMU drop what it has not yet
    // handed to the guest: this handle keeps it open until the VM is gone;
    // the end of stdin is told by StdinClose instead.
    let _stdin_keepalive = stdio.stdin.try_clone().map_err(RunError::Stdin)?;
    let out = OutputRelay::spawn("stdout", stdio.stdout, Some(io::stdout()), true)
        .map_err(|e| RunError::Relay("stdout", e))?;
    let err = OutputRelay::spawn("stderr", stdio.stderr, Some(io::stderr()), true)
        .map_err(|e| RunError::Relay("stderr", e))?;

    let t_run = Instant::now();
    sender.send(&HostMsg::Run(Box::new(plan.run)))?;
    match vm.await_reply("Prepared after Run", |m| match m {
        GuestMsg::Prepared { path } => Ok(Reply::Ok(path)),
        GuestMsg::StartFailed { reason, message } => Ok(Reply::Refused(reason, message)),
        other => Err(other),
    })? {
        Reply::Ok(path) => log::debug!("vm {id}: args[0] is {path:?}"),
        Reply::Refused(reason, message) => return Err(refused(reason, message)),
    }
    let vmm_pid = vm.pid();
    let hook_state = |status| mu2_oci::hooks::State {
        id: &id,
        status,
        pid: vmm_pid,
        bundle: &opts.bundle,
    };
    mu2_oci::hooks::run("createRuntime", &plan.hooks.created, &hook_state("created"))?;
    sender.send(&HostMsg::Start)?;
    match vm.await_reply("Started after Start", |m| match m {
        GuestMsg::Started { pid } => Ok(Reply::Ok(pid.to_string())),
        GuestMsg::StartFailed { reason, message } => Ok(Reply::Refused(reason, message)),
        other => Err(other),
    })? {
        Reply::Ok(pid) => log::debug!("vm {id}: started as guest pid {pid}"),
        Reply::Refused(reason, message) => return Err(refused(reason, message)),
    }
    for e in mu2_oci::hooks::run_logged("poststart", &plan.hooks.poststart, &hook_state("running"))
    {
        log::warn!("{}", mu2_microvm::describe_error(&e));
    }

    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH])
        .map_err(RunError::Signals)?;
    let signal_handle = signals.handle();
    let torn_down = Arc::new(AtomicI32::new(0));
    let forwarder = forward_signals(
        signals,
        vm.sender(),
        vm.kill_handle(),
        Arc::clone(&torn_down),
        terminal,
        opts.kill_grace,
    );
    let _raw = terminal.then(tty::RawMode::enter);
    // Only after Start: the agent relays stdin once the process runs. The
    // relay blocks on our stdin, which may never end: it is not joined.
    spawn_stdin_relay(stdio.stdin, sender.clone());

    let outcome = await_exit(&mut vm, opts.timeout.map(|t| (t_run + t, t)));
    let outcome = match outcome {
        Ok(exit) => drain(&mut vm, &out, &err, &exit).map(|()| exit),
        Err(e) => Err(e),
    };
    let run_time = t_run.elapsed();
    vm.finish(vm.deadlines().poweroff);
    signal_handle.close();
    let _ = forwarder.join();
    // QEMU is gone: the relays end at once.
    let _ = out.join(Duration::from_secs(5));
    let _ = err.join(Duration::from_secs(5));
    for e in mu2_oci::hooks::run_logged("poststop", &plan.hooks.poststop, &hook_state("stopped")) {
        log::warn!("{}", mu2_microvm::describe_error(&e));
    }
    let signal = torn_down.load(Ordering::SeqCst);
    if signal != 0 {
        return Err(RunError::TornDown { id, signal });
    }
    let exit = outcome?;
    if opts.timings {
        eprintln!(
            "mu2: timing boot_to_ready_ms={} run_ms={} total_ms={}",
            boot.as_millis(),
            run_time.as_millis(),
            t0.elapsed().as_millis()
        );
    }
    if exit.oom_killed {
        log::info!("vm {id}: the process was killed by the out-of-memory killer");
    }
    Ok(u8::try_from(exit.status).unwrap_or(EXIT_MU2_FAILED))
}

/// Waits for the process's Exit; `timeout`: (deadline, as given).
fn await_exit(vm: &mut Vm, timeout: Option<(Instant, Duration)>) -> Result<Exit, RunError> {
    let event = vm.next_event(timeout.map(|(d, _)| d));
    let unexpected = match event {
        Some(AgentEvent::Msg(GuestMsg::Exit(e))) => return Ok(e),
        // Answers to nothing we asked: out of turn.
        Some(AgentEvent::Msg(other)) => describe_msg(&other),
        Some(AgentEvent::Closed) => {
            vm.finish(Duration::ZERO);
            return Err(RunError::VmGone {
                id: vm.id().to_string(),
                console: vm.console_tail(CONSOLE_TAIL_LINES),
            });
        }
        Some(AgentEvent::Broken(message)) => {
            vm.kill();
            return Err(VmError::Broken {
                id: vm.id().to_string(),
                message,
            }
            .into());
        }
        None => {
            vm.kill();
            let (_, timeout) = timeout.expect("no deadline, no timeout");
            return Err(RunError::Timeout {
                id: vm.id().to_string(),
                timeout,
            });
        }
    };
    vm.kill();
    Err(VmError::Unexpected {
        id: vm.id().to_string(),
        got: unexpected,
        want: "Exit",
    }
    .into())
}

/// Waits until every byte `exit` counted has reached our stdout and stderr,
/// then lets the VM power off.
fn drain(vm: &mut Vm, out: &OutputRelay, err: &OutputRelay, exit: &Exit) -> Result<(), RunError> {
    let watch = DrainWatch::new(
        vec![exit.stdout_bytes, exit.stderr_bytes],
        vm.deadlines().drain,
    );
    loop {
        match watch.poll(&[out, err], false) {
            Drain::Pending => std::thread::sleep(DRAIN_POLL),
            Drain::Complete => {
                vm.sender().send(&HostMsg::ExitAck)?;
                return Ok(());
            }
            Drain::Short { stream, got, want } => {
                vm.kill();
                return Err(RunError::Truncated {
                    id: vm.id().to_string(),
                    stream,
                    got,
                    want,
                });
            }
        }
    }
}

/// Forwards our signals to the process; a second INT or TERM, or the grace
/// period after the first, kills the VM instead (and records the signal).
fn forward_signals(
    mut signals: Signals,
    sender: ControlSender,
    kill: KillHandle,
    torn_down: Arc<AtomicI32>,
    terminal: bool,
    grace: Duration,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut first_stop: Option<i32> = None;
        let tear_down = |sig: i32| {
            if torn_down
                .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                log::warn!("signal {sig}: tearing the vm down");
                kill.kill();
            }
        };
        for sig in signals.forever() {
            if sig == SIGWINCH {
                if let (true, Some(size)) = (terminal, tty::window_size()) {
                    let _ = sender.send(&HostMsg::Resize(size));
                }
                continue;
            }
            if sig == SIGINT || sig == SIGTERM {
                if first_stop.is_some() {
                    tear_down(sig);
                    continue;
                }
                first_stop = Some(sig);
                let kill = kill.clone();
                let torn_down = Arc::clone(&torn_down);
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    if torn_down
                        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        log::warn!("the process did not end within {grace:?} of signal {sig}: tearing the vm down");
                        kill.kill();
                    }
                });
            }
            if sender
                .send(&HostMsg::Signal {
                    signal: sig,
                    all: false,
                })
                .is_err()
            {
                break;
            }
        }
    })
}

fn spawn_stdin_relay(mut vm_stdin: UnixStream, sender: ControlSender) {
    std::thread::spawn(move || {
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let mut stdin = io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if vm_stdin.write_all(&buf[..n]).is_err() {
                        // The VM is gone or the process stopped reading for
                        // good; nothing more to deliver.
                        return;
                    }
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = sender.send(&HostMsg::StdinClose { total_bytes: total });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quoting_the_guest_are_sanitised() {
        let e = RunError::StartFailed {
            reason: StartFailReason::Setup,
            message: "chdir /\x1b[2J\x1b]0;owned\x07: no such file".into(),
        };
        assert_eq!(
            describe(&e),
            "chdir /\\x1b[2J\\x1b]0;owned\\x07: no such file"
        );
        let e = RunError::VmGone {
            id: "v1".into(),
            console: "[ 1.0] \x1b[31mred\nlast line\r".into(),
        };
        let text = describe(&e);
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        assert!(text.ends_with("\\x1b[31mred\nlast line\\x0d"), "{text:?}");
    }
}
