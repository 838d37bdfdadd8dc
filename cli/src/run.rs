//! `mu2 run BUNDLE`: one process in one fresh VM, wired to our stdio.
//!
//! The VM's stdio ports are relayed to ours by one thread per stream with
//! blocking I/O, so back-pressure runs end to end: a slow reader of our
//! stdout stalls the relay, which stalls QEMU, which stalls the guest's
//! writer. Our stdin's end is announced with its byte count
//! (`StdinClose`), and the agent's `Exit` carries the byte counts of stdout
//! and stderr, which are checked against what arrived. Signals we receive
//! (INT, TERM, HUP, QUIT, USR1, USR2) are forwarded to the process; WINCH
//! becomes a resize for a terminal process.
//!
//! Exit status: the process's (code, or 128+signal); 127 when its binary is
//! not found, 126 when it cannot be executed, 125 when mu2 itself fails
//! (bad bundle, no guest image, VM failure), as `docker run` does.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mu2_microvm::vm::{ControlSender, CONSOLE_TAIL_LINES};
use mu2_microvm::{guest::GuestImageError, AccelChoice, GuestImage, Vm, VmError};
use mu2_oci::{self as oci, BundleError};
use mu2_protocol::{Exit, GuestMsg, HostMsg, StartFailReason};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;

use crate::tty;

/// How long a guest may take to power off after its process exited.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// Exit status for mu2's own failures.
pub const EXIT_MU2_FAILED: u8 = 125;

pub struct RunOptions {
    pub bundle: PathBuf,
    pub id: Option<String>,
    pub guest_dir: Option<PathBuf>,
    pub accel: AccelChoice,
    pub qemu: PathBuf,
    pub timings: bool,
    pub debug: bool,
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
    #[error("cannot hold the stdin port open")]
    Stdin(#[source] io::Error),
    #[error("cannot set up signal forwarding")]
    Signals(#[source] io::Error),
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

/// Runs the bundle; returns the process's exit status.
pub fn run(opts: &RunOptions) -> Result<u8, RunError> {
    let t0 = Instant::now();
    let mut plan = oci::load(&opts.bundle)?;
    let image = GuestImage::locate(opts.guest_dir.as_deref())?;
    let id = opts.id.clone().unwrap_or_else(default_id);
    let jail = mu2_microvm::jail::JailMode::load()?;
    let mut spec = plan.vm_spec(
        id.clone(),
        &image,
        opts.qemu.clone(),
        opts.accel.resolve(),
        jail,
    );
    spec.debug = opts.debug;
    let terminal = plan.run.process.terminal;
    if terminal && plan.run.process.console_size.is_none() {
        plan.run.process.console_size = tty::window_size();
    }
    let mut vm = Vm::launch(&spec)?;
    let boot = vm.boot_time();
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH])
        .map_err(RunError::Signals)?;
    let signal_handle = signals.handle();
    let forwarder = forward_signals(signals, vm.sender(), terminal);
    let _raw = terminal.then(tty::RawMode::enter);
    let stdio = vm.take_stdio().expect("stdio is taken once");
    let sender = vm.sender();
    // Closing our end of the stdin port makes QEMU drop what it has not yet
    // handed to the guest: this handle keeps it open until the VM is gone;
    // the end of stdin is told by StdinClose instead.
    let _stdin_keepalive = stdio.stdin.try_clone().map_err(RunError::Stdin)?;
    let out = spawn_output_relay(stdio.stdout, io::stdout());
    let err = spawn_output_relay(stdio.stderr, io::stderr());
    let t_run = Instant::now();
    sender.send(&HostMsg::Run(Box::new(plan.run)))?;
    // Only after Run: the agent takes nothing else first. The relay blocks
    // on our stdin, which may never end: it is not joined; the process
    // exits without it.
    spawn_stdin_relay(stdio.stdin, sender.clone());
    let outcome = await_exit(&mut vm);
    let run_time = t_run.elapsed();
    vm.finish(POWEROFF_GRACE);
    signal_handle.close();
    let _ = forwarder.join();
    let got_out = out.join().unwrap_or(0);
    let got_err = err.join().unwrap_or(0);
    let exit = outcome?;
    for (stream, got, want) in [
        ("stdout", got_out, exit.stdout_bytes),
        ("stderr", got_err, exit.stderr_bytes),
    ] {
        if got != want {
            return Err(RunError::Truncated {
                id,
                stream,
                got,
                want,
            });
        }
    }
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

fn await_exit(vm: &mut Vm) -> Result<Exit, RunError> {
    loop {
        match vm.recv()? {
            Some(GuestMsg::Started { pid }) => {
                log::debug!("vm {}: process started as guest pid {pid}", vm.id())
            }
            Some(GuestMsg::Exit(e)) => return Ok(e),
            Some(GuestMsg::StartFailed { reason, message }) => {
                return Err(RunError::StartFailed { reason, message })
            }
            Some(GuestMsg::Ready(_)) => {
                return Err(VmError::Unexpected {
                    id: vm.id().to_string(),
                    got: "a second Ready".into(),
                    want: "Started, StartFailed or Exit",
                }
                .into())
            }
            None => {
                vm.finish(Duration::ZERO);
                return Err(RunError::VmGone {
                    id: vm.id().to_string(),
                    console: vm.console_tail(CONSOLE_TAIL_LINES),
                });
            }
        }
    }
}

fn forward_signals(mut signals: Signals, sender: ControlSender, terminal: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let msg = if sig == SIGWINCH {
                match (terminal, tty::window_size()) {
                    (true, Some(size)) => HostMsg::Resize(size),
                    _ => continue,
                }
            } else {
                HostMsg::Signal {
                    signal: sig,
                    all: false,
                }
            };
            if sender.send(&msg).is_err() {
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

/// Copies a VM output stream to `out` until the VM closes it; returns the
/// bytes received. If `out` fails (a closed pipe), the stream is still
/// drained so that the guest is never blocked forever.
fn spawn_output_relay<W: Write + Send + 'static>(
    mut from: UnixStream,
    mut out: W,
) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let mut out_ok = true;
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    if out_ok && (out.write_all(&buf[..n]).is_err() || out.flush().is_err()) {
                        out_ok = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        total
    })
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
