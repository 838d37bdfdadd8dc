//! mu2's guest agent: runs one container process for the host.
//!
//! init starts the agent once the virtio modules are loaded. The agent
//! opens the four virtio-serial ports, announces itself with `Ready`, takes
//! the host's `Identity` and applies it ([`identity`]: entropy and a
//! reseeded kernel RNG, the wall clock, the VM id), answering `Identified`,
//! then takes exactly one `Run` and prepares the container for it — root ([`rootfs`]),
//! cgroup ([`cgroup`]), stdio ([`stdio`]), args[0] resolved — answering
//! `Prepared` (or `StartFailed`: a missing binary fails here, at containerd's
//! Create, as under runc). On `Start` it forks the process ([`spawn`]),
//! answers the host's control messages while it runs ([`control`]), and
//! reports `Exit` once the process ended and all of its output was written
//! to the ports. It then waits for the host's `ExitAck` — output can still
//! sit in a virtio queue — and exits, and init powers the VM off: one VM,
//! one process.
//!
//! Errors go to the console with a `mu2-agent:` prefix (`mu2-agent[VM id]:`
//! once the identity is applied); everything else only with `mu2.debug=1`
//! on the kernel command line (`MU2_DEBUG` from init).
//!
//! Nothing before the identity may draw random bytes or read
//! `/proc/sys/kernel/random/boot_id`: a template is snapshotted at Ready,
//! and whatever was drawn before is the same in every clone. That rules out
//! `getrandom`, /dev/urandom and std's `HashMap`/`HashSet` with their
//! default `RandomState` (its keys are drawn once per thread and reused)
//! on that path; see docs/agent-protocol.md.

// `unsafe` lives in `sys` alone, one commented function per syscall.
#![deny(unsafe_code)]

pub mod cgroup;
pub mod confine;
pub mod control;
pub mod devices;
pub mod identity;
pub mod mountopts;
pub mod paths;
pub mod ports;
pub mod rootfs;
pub mod spawn;
pub mod stdio;
#[allow(unsafe_code)]
pub mod sys;
pub mod user;

use std::error::Error;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mu2_protocol::{
    read_msg, write_msg, Exit, FrameError, GuestMsg, HostMsg, ProtocolError, Ready, Run,
    StartFailReason, PROTOCOL_VERSION,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::ports::Ports;
use crate::spawn::{ChildStdio, Plan, SpawnError};
use crate::stdio::{AgentPipes, Pty};

static DEBUG: AtomicBool = AtomicBool::new(false);

/// Prints an error line on the console.
pub fn log_error(msg: &str) {
    eprintln!("{}: {msg}", log_prefix());
}

/// Prints a line on the console with `mu2.debug=1`.
pub fn log_debug(msg: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        eprintln!("{}: {msg}", log_prefix());
    }
}

/// `mu2-agent`, with the VM id once the host gave it.
fn log_prefix() -> String {
    match identity::vm_id() {
        Some(id) => format!("mu2-agent[{id}]"),
        None => "mu2-agent".to_string(),
    }
}

/// An error and its sources on one line.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Ports(#[from] ports::PortError),
    #[error("cannot send {what} to the host")]
    Send {
        what: &'static str,
        #[source]
        source: ProtocolError,
    },
    #[error("cannot receive the {what} request")]
    Receive {
        what: &'static str,
        #[source]
        source: ProtocolError,
    },
    #[error("the host closed the control port before sending {what}")]
    HostGone { what: &'static str },
    #[error("cannot duplicate the {what} descriptor")]
    Dup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the {what} thread")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Stdio(#[from] stdio::StdioError),
    #[error("cannot wait for the container process {pid}")]
    Wait {
        pid: Pid,
        #[source]
        source: nix::errno::Errno,
    },
}

/// Why the process could not start, as reported in `StartFailed`.
#[derive(Debug)]
struct StartFailure {
    reason: StartFailReason,
    message: String,
}

impl StartFailure {
    fn setup(step: &str, e: &dyn Error) -> Self {
        StartFailure {
            reason: StartFailReason::Setup,
            message: format!("{step}: {}", chain(e)),
        }
    }
}

impl From<SpawnError> for StartFailure {
    fn from(e: SpawnError) -> Self {
        let reason = match &e {
            SpawnError::NotFound(_) => StartFailReason::NotFound,
            SpawnError::NotExecutable(_) => StartFailReason::NotExecutable,
            _ => StartFailReason::Setup,
        };
        StartFailure {
            reason,
            message: chain(&e),
        }
    }
}

/// Runs the agent; returns its exit code.
pub fn run() -> i32 {
    DEBUG.store(
        std::env::var("MU2_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0"),
        Ordering::Relaxed,
    );
    match serve() {
        Ok(()) => 0,
        Err(e) => {
            log_error(&chain(&e));
            1
        }
    }
}

fn send(control: &Shared, what: &'static str, msg: &GuestMsg) -> Result<(), AgentError> {
    log_debug(&format!("send {msg:?}"));
    let mut out = control.lock().unwrap_or_else(|e| e.into_inner());
    write_msg(&mut *out, msg).map_err(|source| AgentError::Send { what, source })
}

/// The control port's writing end, shared by the main and control threads.
pub type Shared = Arc<std::sync::Mutex<File>>;

fn serve() -> Result<(), AgentError> {
    let Ports {
        control,
        stdin,
        stdout,
        stderr,
    } = Ports::open()?;
    let mut input = control.try_clone().map_err(|source| AgentError::Dup {
        what: "control",
        source,
    })?;
    let out: Shared = Arc::new(std::sync::Mutex::new(control));
    send(&out, "Ready", &GuestMsg::Ready(ready()))?;

    // The identity first: nothing of a request may run on the template's.
    let identity = match expect_request(read_msg::<_, HostMsg>(&mut input), "Identity", |m| match m
    {
        HostMsg::Identity(i) => Ok(i),
        other => Err(other),
    }) {
        Awaited::Got(i) => i,
        Awaited::Refuse(message) => return fail(&out, StartFailReason::Invalid, message),
        Awaited::Lost(e) => return Err(e),
    };
    if let Err(e) = identity::apply(&identity) {
        let message = format!("cannot apply the host's identity: {}", chain(&e));
        return fail(&out, StartFailReason::Setup, message);
    }
    log_debug(&format!("identity applied: {identity:?}"));
    send(
        &out,
        "Identified",
        &GuestMsg::Identified {
            uptime_ns: uptime_ns(),
        },
    )?;

    let run = match expect_request(read_msg::<_, HostMsg>(&mut input), "Run", |m| match m {
        HostMsg::Run(r) => Ok(r),
        other => Err(other),
    }) {
        Awaited::Got(r) => r,
        Awaited::Refuse(message) => return fail(&out, StartFailReason::Invalid, message),
        Awaited::Lost(e) => return Err(e),
    };
    log_debug(&format!("run {run:?}"));

    // Create: everything but the fork, so that a missing binary or a bad
    // mount fails here, as runc's create does.
    let prepared = match prepare(&run) {
        Ok(p) => p,
        Err(f) => return fail(&out, f.reason, f.message),
    };
    send(
        &out,
        "Prepared",
        &GuestMsg::Prepared {
            path: prepared.program.clone(),
        },
    )?;
    if !await_start(&mut input, &out, &prepared.cgroup)? {
        return Err(AgentError::HostGone { what: "Start" });
    }

    let started = match start(prepared) {
        Ok(s) => s,
        Err(f) => return fail(&out, f.reason, f.message),
    };
    let pid = started.pid;
    send(
        &out,
        "Started",
        &GuestMsg::Started {
            pid: pid.as_raw() as u32,
        },
    )?;

    // Threads only now: the fork is behind us.
    let (child_out, child_err, stdin_dst) = match started.stdio {
        AgentStdio::Pipes(p) => (p.stdout, Some(p.stderr), p.stdin),
        AgentStdio::Terminal(master) => {
            let out = master.try_clone().map_err(|source| AgentError::Dup {
                what: "terminal",
                source,
            })?;
            let input = master.try_clone().map_err(|source| AgentError::Dup {
                what: "terminal",
                source,
            })?;
            (out, None, input)
        }
    };
    let out_relay = stdio::spawn_output_relay("stdout", child_out, stdout)?;
    let err_relay = match child_err {
        Some(e) => Some(stdio::spawn_output_relay("stderr", e, stderr)?),
        None => None,
    };
    let (stdin_ctl, _stdin_relay) = stdio::spawn_stdin_relay(stdin, stdin_dst)?;
    let (acked_tx, acked) = std::sync::mpsc::channel();
    control::spawn(
        input,
        control::Target {
            pid,
            pty: started.pty,
            stdin: stdin_ctl,
            cgroup: started.cgroup.clone(),
            out: Arc::clone(&out),
            acked: acked_tx,
        },
    )
    .map_err(|source| AgentError::Thread {
        what: "control",
        source,
    })?;

    let (status, signal) = wait_exit(pid)?;
    // The namespace died with its init, so every copy of the output pipes
    // is closed and the relays reach EOF.
    let stdout_bytes = out_relay.join().unwrap_or(0);
    let stderr_bytes = err_relay.map(|h| h.join().unwrap_or(0)).unwrap_or(0);
    let exit = Exit {
        status,
        signal,
        oom_killed: started.cgroup.oom_killed(),
        stdout_bytes,
        stderr_bytes,
    };
    send(&out, "Exit", &GuestMsg::Exit(exit))?;
    // Bytes written to a port may still sit in its virtio queue: the VM
    // stays up until the host says it has them all (or goes away, which
    // ends the control thread and this process).
    let _ = acked.recv();
    log_debug("exit acknowledged");
    Ok(())
}

/// What came of waiting for one request of the fixed opening (Identity,
/// then Run).
#[derive(Debug)]
enum Awaited<T> {
    Got(T),
    /// Something else came, or a message that does not decode: answer
    /// StartFailed (Invalid) with this text, and end.
    Refuse(String),
    /// The control channel ended or broke: nobody to answer.
    Lost(AgentError),
}

/// Takes the host's next message as the `what` request (`pick` returns it,
/// or gives back any other message).
fn expect_request<T>(
    got: Result<Option<HostMsg>, ProtocolError>,
    what: &'static str,
    pick: impl FnOnce(HostMsg) -> Result<T, HostMsg>,
) -> Awaited<T> {
    match got {
        Ok(Some(m)) => match pick(m) {
            Ok(t) => Awaited::Got(t),
            Err(other) => Awaited::Refuse(match what {
                "Identity" => format!("expected Identity first, got {}", other.name()),
                _ => format!("expected {what} after Identity, got {}", other.name()),
            }),
        },
        Ok(None) => Awaited::Lost(AgentError::HostGone { what }),
        Err(source @ ProtocolError::Frame(FrameError::Io(_))) => {
            Awaited::Lost(AgentError::Receive { what, source })
        }
        Err(e) => Awaited::Refuse(format!("a bad {what} request: {}", chain(&e))),
    }
}

/// Serves the host between Prepared and Start: Update is answered, anything
/// else waits for the process. `false`: the host went away.
fn await_start(
    input: &mut File,
    out: &Shared,
    cgroup: &cgroup::Cgroup,
) -> Result<bool, AgentError> {
    loop {
        match read_msg::<_, HostMsg>(input) {
            Ok(Some(HostMsg::Start)) => return Ok(true),
            Ok(Some(HostMsg::Update(u))) => {
                let error = cgroup.update(&u).err().map(|e| chain(&e));
                send(out, "Updated", &GuestMsg::Updated { error })?;
            }
            Ok(Some(other)) => log_error(&format!("ignoring {} before Start", other.name())),
            Ok(None) => return Ok(false),
            Err(source @ ProtocolError::Frame(_)) => {
                return Err(AgentError::Receive {
                    what: "Start",
                    source,
                })
            }
            Err(e) => log_error(&format!("ignoring a bad control message: {}", chain(&e))),
        }
    }
}

fn fail(out: &Shared, reason: StartFailReason, message: String) -> Result<(), AgentError> {
    log_error(&format!("start failed ({reason:?}): {message}"));
    send(
        out,
        "StartFailed",
        &GuestMsg::StartFailed { reason, message },
    )
}

fn ready() -> Ready {
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release,
        uptime_ns: uptime_ns(),
    }
}

/// The guest's CLOCK_BOOTTIME in nanoseconds (0 if it cannot be read).
fn uptime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

enum AgentStdio {
    Pipes(AgentPipes),
    Terminal(File),
}

struct Started {
    pid: Pid,
    stdio: AgentStdio,
    pty: Option<Arc<File>>,
    cgroup: cgroup::Cgroup,
}

/// A container set up and waiting for Start.
struct PreparedProcess {
    plan: Plan,
    /// args[0] as found in the root.
    program: String,
    child_stdio: ChildStdio,
    stdio: AgentStdio,
    pty: Option<Arc<File>>,
    cgroup: cgroup::Cgroup,
}

/// Builds the container up to the fork: hostname, root, mounts, cgroup,
/// stdio, and args[0] resolved. Single-threaded.
fn prepare(run: &Run) -> Result<PreparedProcess, StartFailure> {
    if !run.hostname.is_empty() {
        nix::unistd::sethostname(&run.hostname)
            .map_err(|e| StartFailure::setup("set the hostname", &e))?;
    }
    let prepared =
        rootfs::prepare(run).map_err(|e| StartFailure::setup("set up the container root", &e))?;
    let cgroup = cgroup::Cgroup::create(
        Path::new(cgroup::ROOT),
        run.memory_limit_bytes,
        run.pids_limit,
    )
    .map_err(|e| StartFailure::setup("set up resource limits", &e))?;
    cgroup
        .restrict_devices(&run.device_rules, Path::new(ports::SYS_PORTS))
        .map_err(|e| StartFailure::setup("set up the device policy", &e))?;
    let passwd = paths::resolve(&prepared.root, "/etc/passwd")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let plan = Plan::new(
        run,
        prepared.root.clone(),
        prepared.in_child.clone(),
        Some(cgroup.procs_file()),
        passwd.as_deref(),
    )?;
    let program = plan.resolve()?;

    let p = &run.process;
    let (child_stdio, stdio, pty) = if p.terminal {
        let (rows, cols) = p.console_size.map(|s| (s.rows, s.cols)).unwrap_or((0, 0));
        let pts = prepared.root.join("dev/pts");
        let pts = if prepared.dev_is_ours {
            pts
        } else {
            "/dev/pts".into()
        };
        let pty = Pty::open(&pts, rows, cols)
            .map_err(|e| StartFailure::setup("set up the terminal", &e))?;
        if prepared.dev_is_ours {
            rootfs::bind_console(&prepared.root, &pty.slave_path)
                .map_err(|e| StartFailure::setup("set up /dev/console", &e))?;
        }
        let master = Arc::new(
            pty.master
                .try_clone()
                .map_err(|e| StartFailure::setup("set up the terminal", &e))?,
        );
        (
            ChildStdio::Terminal { slave: pty.slave },
            AgentStdio::Terminal(pty.master),
            Some(master),
        )
    } else {
        let (child, agent) = stdio::pipes().map_err(|e| StartFailure::setup("set up stdio", &e))?;
        (child, AgentStdio::Pipes(agent), None)
    };
    Ok(PreparedProcess {
        plan,
        program,
        child_stdio,
        stdio,
        pty,
        cgroup,
    })
}

/// Starts the prepared process. Single-threaded.
fn start(p: PreparedProcess) -> Result<Started, StartFailure> {
    let pid = spawn::spawn(&p.plan, p.child_stdio)?;
    log_debug(&format!("container process {pid} started"));
    Ok(Started {
        pid,
        stdio: p.stdio,
        pty: p.pty,
        cgroup: p.cgroup,
    })
}

/// Waits for the process; returns (status, signal) as runc reports them.
fn wait_exit(pid: Pid) -> Result<(i32, Option<i32>), AgentError> {
    loop {
        match sys::retry(|| waitpid(pid, None)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok((code, None)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                let n = sig as i32;
                return Ok((128 + n, Some(n)));
            }
            Ok(_) => continue,
            Err(source) => return Err(AgentError::Wait { pid, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> mu2_protocol::Identity {
        mu2_protocol::Identity::new(vec![1; 64], 1_700_000_000_000_000_000, "vm-1".into()).unwrap()
    }

    fn want_identity(
        got: Result<Option<HostMsg>, ProtocolError>,
    ) -> Awaited<mu2_protocol::Identity> {
        expect_request(got, "Identity", |m| match m {
            HostMsg::Identity(i) => Ok(i),
            other => Err(other),
        })
    }

    #[test]
    fn the_first_request_must_be_identity() {
        assert!(matches!(
            want_identity(Ok(Some(HostMsg::Identity(identity())))),
            Awaited::Got(i) if i == identity()
        ));
        // A Run first would run on the template's RNG and clock.
        match want_identity(Ok(Some(HostMsg::Run(Box::default())))) {
            Awaited::Refuse(m) => assert_eq!(m, "expected Identity first, got Run"),
            other => panic!("{other:?}"),
        }
        match want_identity(Ok(Some(HostMsg::Start))) {
            Awaited::Refuse(m) => assert_eq!(m, "expected Identity first, got Start"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            want_identity(Ok(None)),
            Awaited::Lost(AgentError::HostGone { what: "Identity" })
        ));
        // An identity that does not decode is refused, not applied.
        let bad = mu2_protocol::Identity::new(vec![0; 31], 1, "a".into()).unwrap_err();
        match want_identity(Err(bad)) {
            Awaited::Refuse(m) => assert!(m.contains("identity.entropy"), "{m}"),
            other => panic!("{other:?}"),
        }
        let broken = ProtocolError::Frame(FrameError::Io(std::io::Error::other("eof")));
        assert!(matches!(
            want_identity(Err(broken)),
            Awaited::Lost(AgentError::Receive {
                what: "Identity",
                ..
            })
        ));
    }

    #[test]
    fn run_comes_after_identity() {
        let got = expect_request(
            Ok(Some(HostMsg::Identity(identity()))),
            "Run",
            |m| match m {
                HostMsg::Run(r) => Ok(r),
                other => Err(other),
            },
        );
        match got {
            Awaited::Refuse(m) => assert_eq!(m, "expected Run after Identity, got Identity"),
            other => panic!("{other:?}"),
        }
    }
}
