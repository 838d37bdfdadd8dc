//! One containerd process — a task's init or an exec — and the VM that runs
//! it, owned by one thread.
//!
//! QEMU gets `PR_SET_PDEATHSIG(SIGKILL)` from the thread that spawns it, and
//! ttrpc handler threads come and go: so each VM is launched by an *owner*
//! thread that lives exactly as long as its VM. The owner boots the VM
//! (Create/Exec wait for that), takes Start or Kill from a channel, then
//! reads the agent until the process exits, reaps QEMU, and publishes the
//! one exit of the process (after a TaskOOM when the guest's OOM killer
//! ended it). Signals, resizes and the end of stdin go to the
//! agent straight from the handlers through the VM's control sender.
//!
//! The lifecycle is [`Status`]: Created → Running → Exited → Deleted; an
//! illegal step is a FailedPrecondition.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use mu2_microvm::cgroup;
use mu2_microvm::vm::{CgroupHandle, ControlSender};
use mu2_microvm::{Vm, VmSpec};
use mu2_protocol::{GuestMsg, HostMsg, Run, StartFailReason};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::ShimError;
use crate::events::{Event, Events};
use crate::io::{spawn_output_relay, spawn_stdin_relay, StdinCloser};

/// How long a guest may take to power off after its process exited.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// How long an agent has to end its process after SIGKILL before the VM is
/// killed under it.
const SIGKILL_GRACE: Duration = Duration::from_secs(5);
/// How long the exit waits for the output relays to hand their last bytes
/// to containerd's FIFOs.
const RELAY_DRAIN: Duration = Duration::from_secs(5);
/// Exit status of a process whose VM died without reporting one (as if
/// SIGKILLed).
pub const STATUS_VM_GONE: u32 = 128 + libc::SIGKILL as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Exited { code: u32, at: SystemTime },
    Deleted,
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited { .. } => "stopped",
            Status::Deleted => "deleted",
        }
    }
}

/// containerd's stdio for one process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

struct State {
    status: Status,
    /// QEMU is not yet being reaped: its pid is still ours to signal.
    vm_alive: bool,
}

enum Cmd {
    Start(Sender<Result<u32, ShimError>>),
    Kill(i32),
}

pub struct Process {
    pub container_id: String,
    /// Empty for a task's init.
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The VMM's pid: what containerd knows as the process's pid.
    pub pid: u32,
    state: Mutex<State>,
    changed: Condvar,
    cmds: Mutex<Sender<Cmd>>,
    control: ControlSender,
    stdin: StdinCloser,
    /// Pause, resume and statistics of the VMM.
    cgroup: CgroupHandle,
    paused: AtomicBool,
}

/// What a VM owner needs beside the VM.
pub struct Launch {
    pub container_id: String,
    pub exec_id: String,
    pub spec: VmSpec,
    pub run: Run,
    pub stdio: StdioPaths,
    pub events: Events,
    /// Processes to end before this one's exit is published (a task's
    /// execs end with its init, as in runc's pid namespace).
    pub dependents: Option<Arc<Mutex<Vec<Arc<Process>>>>>,
}

impl Process {
    fn what(&self) -> String {
        if self.exec_id.is_empty() {
            format!("task {}", self.container_id)
        } else {
            format!("exec {} of task {}", self.exec_id, self.container_id)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Boots the VM on its owner thread; returns once the agent is ready.
    pub fn launch(l: Launch) -> Result<Arc<Process>, ShimError> {
        let outputs = crate::io::open_outputs(
            &l.stdio.stdout,
            &l.stdio.stderr,
            &l.container_id,
            l.events.namespace(),
        )?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let what = if l.exec_id.is_empty() {
            format!("task {}", l.container_id)
        } else {
            format!("exec {} of task {}", l.exec_id, l.container_id)
        };
        std::thread::Builder::new()
            .name(format!("vm-{}", l.spec.id))
            .spawn(move || {
                // The logger is reaped once the owner is done with the output.
                let _logger = outputs.logger;
                owner(l, outputs.stdout, outputs.stderr, ready_tx)
            })
            .map_err(|source| ShimError::Io {
                path: "owner thread".into(),
                source,
            })?;
        ready_rx
            .recv()
            .map_err(|_| ShimError::OwnerGone(what.clone()))?
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    /// Starts the process; returns its pid.
    pub fn start(&self) -> Result<u32, ShimError> {
        let status = self.status();
        if status != Status::Created {
            return Err(ShimError::State {
                op: "start",
                what: self.what(),
                state: status.name(),
            });
        }
        let (tx, rx) = mpsc::channel();
        self.cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Cmd::Start(tx))
            .map_err(|_| ShimError::OwnerGone(self.what()))?;
        rx.recv().map_err(|_| ShimError::OwnerGone(self.what()))?
    }

    /// Hands a command to the VM's owner thread; a gone owner has nothing
    /// left to act on.
    fn send_cmd(&self, cmd: Cmd) {
        let _ = self
            .cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(cmd);
    }

    /// Delivers `signal` to the process (or all its processes).
    pub fn kill(self: &Arc<Self>, signal: u32, all: bool) -> Result<(), ShimError> {
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=mu2_protocol::MAX_SIGNAL).contains(s))
            .ok_or_else(|| ShimError::InvalidArgument(format!("signal {signal}")))?;
        match self.status() {
            Status::Created => {
                // No process yet: the VM is the process. It dies of the
                // signal, as a created runc container's init would.
                self.send_cmd(Cmd::Kill(signal));
                Ok(())
            }
            Status::Running => {
                log::info!("{}: signal {signal} (all: {all})", self.what());
                if self.control.send(&HostMsg::Signal { signal, all }).is_err() {
                    self.kill_vm();
                } else if signal == libc::SIGKILL {
                    let me = Arc::clone(self);
                    std::thread::spawn(move || {
                        if me.wait_timeout(SIGKILL_GRACE).is_none() {
                            log::warn!(
                                "{}: agent did not end the process after SIGKILL; killing the vm",
                                me.what()
                            );
                            me.kill_vm();
                        }
                    });
                }
                Ok(())
            }
            Status::Exited { .. } | Status::Deleted => Err(ShimError::NotFound(format!(
                "{} (process already finished)",
                self.what()
            ))),
        }
    }

    /// SIGKILLs QEMU if it is not being reaped yet; its owner then sees the
    /// VM end and publishes the exit.
    pub fn kill_vm(&self) {
        let st = self.lock();
        if st.vm_alive {
            // The owner reaps only after clearing vm_alive under this lock,
            // so the pid cannot have been reused.
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            // A paused VMM only dies once thawed.
            let _ = self.cgroup.resume();
        }
    }

    /// Freezes the VM of a running process.
    pub fn pause(&self) -> Result<(), ShimError> {
        let status = self.status();
        if status != Status::Running {
            return Err(ShimError::State {
                op: "pause",
                what: self.what(),
                state: status.name(),
            });
        }
        self.cgroup.pause()?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) -> Result<(), ShimError> {
        if !self.is_paused() {
            return Err(ShimError::State {
                op: "resume",
                what: self.what(),
                state: self.status().name(),
            });
        }
        self.cgroup.resume()?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Paused and not yet exited.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst) && self.status() == Status::Running
    }

    /// CPU, memory and pids of the process's VMM.
    pub fn stats(&self) -> Result<cgroup::Stats, ShimError> {
        Ok(self.cgroup.stats()?)
    }

    /// Ends the process now, whatever its state, and waits (bounded) for its
    /// exit.
    pub fn force_end(&self) {
        match self.status() {
            Status::Created => {
                self.send_cmd(Cmd::Kill(libc::SIGKILL));
            }
            Status::Running => self.kill_vm(),
            _ => return,
        }
        let _ = self.wait_timeout(POWEROFF_GRACE);
    }

    pub fn close_stdin(&self) {
        self.stdin.close();
    }

    pub fn resize(&self, rows: u32, cols: u32) -> Result<(), ShimError> {
        if !self.stdio.terminal {
            return Ok(());
        }
        let size = mu2_protocol::ConsoleSize {
            rows: rows.min(u32::from(u16::MAX)) as u16,
            cols: cols.min(u32::from(u16::MAX)) as u16,
        };
        self.control
            .send(&HostMsg::Resize(size))
            .map_err(ShimError::from)
    }

    /// Blocks until the process exited; returns (status, time).
    pub fn wait(&self) -> (u32, SystemTime) {
        let mut st = self.lock();
        loop {
            match st.status {
                Status::Exited { code, at } => return (code, at),
                Status::Deleted => return (STATUS_VM_GONE, SystemTime::now()),
                _ => st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    pub fn wait_timeout(&self, timeout: Duration) -> Option<(u32, SystemTime)> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Status::Exited { code, at } = st.status {
                return Some((code, at));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Exited → Deleted; returns the exit.
    pub fn mark_deleted(&self) -> Result<(u32, SystemTime), ShimError> {
        let mut st = self.lock();
        match st.status {
            Status::Exited { code, at } => {
                st.status = Status::Deleted;
                self.changed.notify_all();
                Ok((code, at))
            }
            other => Err(ShimError::State {
                op: "delete",
                what: self.what(),
                state: other.name(),
            }),
        }
    }

    fn set_status(&self, status: Status) {
        let mut st = self.lock();
        st.status = status;
        self.changed.notify_all();
    }
}

fn start_fail_status(reason: StartFailReason) -> u32 {
    match reason {
        StartFailReason::NotFound => 127,
        StartFailReason::NotExecutable => 126,
        _ => 128,
    }
}

/// The VM owner thread.
fn owner(
    l: Launch,
    stdout: Option<File>,
    stderr: Option<File>,
    ready: Sender<Result<Arc<Process>, ShimError>>,
) {
    let what = if l.exec_id.is_empty() {
        format!("task {}", l.container_id)
    } else {
        format!("exec {} of task {}", l.exec_id, l.container_id)
    };
    log::info!("{what}: booting vm {}", l.spec.id);
    let mut vm = match Vm::launch(&l.spec) {
        Ok(vm) => vm,
        Err(e) => {
            log::error!("{what}: {}", crate::error::describe(&e));
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let proc = Arc::new(Process {
        container_id: l.container_id.clone(),
        exec_id: l.exec_id.clone(),
        stdio: l.stdio.clone(),
        pid: vm.pid(),
        state: Mutex::new(State {
            status: Status::Created,
            vm_alive: true,
        }),
        changed: Condvar::new(),
        cmds: Mutex::new(cmd_tx),
        control: vm.sender(),
        stdin: StdinCloser::new(&l.stdio.stdin),
        cgroup: vm.cgroup_handle(),
        paused: AtomicBool::new(false),
    });
    log::info!(
        "{what}: vm {} ready in {:?} (pid {})",
        l.spec.id,
        vm.boot_time(),
        proc.pid
    );
    if ready.send(Ok(Arc::clone(&proc))).is_err() {
        return;
    }
    let mut io = Running::default();
    let exit = match await_start(
        &mut vm,
        &proc,
        &l,
        &cmd_rx,
        (stdout, stderr),
        &mut io,
        &what,
    ) {
        Some(code) => ExitReport {
            code,
            oom_killed: false,
        },
        None => run_to_exit(&mut vm, &what),
    };
    end(vm, &proc, &l, exit, io, &what);
}

/// What a started process holds until its VM is gone.
#[derive(Default)]
struct Running {
    /// Closing our end of the stdin port makes QEMU drop what it has not
    /// yet handed to the guest: it stays open until the VM ends.
    stdin_port: Option<UnixStream>,
    relays: Vec<JoinHandle<u64>>,
}

/// Serves commands until Start ran the process (None: it runs) or the
/// process ended before running (Some(status)).
fn await_start(
    vm: &mut Vm,
    proc: &Arc<Process>,
    l: &Launch,
    cmds: &Receiver<Cmd>,
    (stdout, stderr): (Option<File>, Option<File>),
    io: &mut Running,
    what: &str,
) -> Option<u32> {
    let reply = {
        match cmds.recv() {
            Ok(Cmd::Start(reply)) => reply,
            Ok(Cmd::Kill(sig)) => {
                log::info!("{what}: killed by signal {sig} before it started");
                proc.lock().vm_alive = false;
                vm.kill();
                return Some(128 + sig as u32);
            }
            // Every handle on the process is gone: nobody will start it.
            Err(_) => {
                proc.lock().vm_alive = false;
                vm.kill();
                return Some(STATUS_VM_GONE);
            }
        }
    };
    let stdio = vm.take_stdio().expect("stdio is taken once");
    io.relays.push(spawn_output_relay(stdio.stdout, stdout));
    io.relays.push(spawn_output_relay(stdio.stderr, stderr));
    log::info!("{what}: run {:?}", l.run.process.args);
    if let Err(e) = proc.control.send(&HostMsg::Run(Box::new(l.run.clone()))) {
        let _ = reply.send(Err(e.into()));
        return Some(STATUS_VM_GONE);
    }
    loop {
        match vm.recv() {
            Ok(Some(GuestMsg::Started { pid })) => {
                log::info!("{what}: started as guest pid {pid}");
                break;
            }
            Ok(Some(GuestMsg::StartFailed { reason, message })) => {
                log::warn!("{what}: cannot start: {message}");
                let code = start_fail_status(reason);
                // Stopped before the reply, so that the Delete containerd
                // sends next finds it so; no process ran, so no TaskExit.
                proc.lock().vm_alive = false;
                vm.kill();
                proc.set_status(Status::Exited {
                    code,
                    at: SystemTime::now(),
                });
                let _ = reply.send(Err(ShimError::StartFailed {
                    what: what.to_string(),
                    reason,
                    message,
                }));
                return Some(code);
            }
            Ok(Some(other)) => log::warn!("{what}: unexpected {other:?} before Started"),
            Ok(None) | Err(_) => {
                let _ = reply.send(Err(ShimError::VmGone(what.to_string())));
                return Some(STATUS_VM_GONE);
            }
        }
    }
    match stdio.stdin.try_clone() {
        Ok(relay_end) => spawn_stdin_relay(relay_end, proc.stdin.clone(), proc.control.clone()),
        Err(e) => log::warn!("{what}: no stdin relay: {e}"),
    }
    io.stdin_port = Some(stdio.stdin);
    proc.set_status(Status::Running);
    l.events.send(if l.exec_id.is_empty() {
        Event::Start {
            id: l.container_id.clone(),
            pid: proc.pid,
        }
    } else {
        Event::ExecStarted {
            id: l.container_id.clone(),
            exec_id: l.exec_id.clone(),
            pid: proc.pid,
        }
    });
    let _ = reply.send(Ok(proc.pid));
    None
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
struct ExitReport {
    code: u32,
    /// The guest kernel's OOM killer ended it (or a process of its cgroup).
    oom_killed: bool,
}

impl ExitReport {
    fn vm_gone() -> ExitReport {
        ExitReport {
            code: STATUS_VM_GONE,
            oom_killed: false,
        }
    }
}

/// Reads the agent until the process exits; returns how it ended.
fn run_to_exit(vm: &mut Vm, what: &str) -> ExitReport {
    loop {
        match vm.recv() {
            Ok(Some(GuestMsg::Exit(e))) => {
                log::info!(
                    "{what}: exited with status {} (oom killed: {})",
                    e.status,
                    e.oom_killed
                );
                return ExitReport {
                    code: u32::try_from(e.status).unwrap_or(STATUS_VM_GONE),
                    oom_killed: e.oom_killed,
                };
            }
            Ok(Some(other)) => log::debug!("{what}: agent says {other:?}"),
            Ok(None) => {
                log::warn!("{what}: vm ended without an exit; status {STATUS_VM_GONE}");
                return ExitReport::vm_gone();
            }
            Err(e) => {
                log::error!("{what}: {}", crate::error::describe(&e));
                return ExitReport::vm_gone();
            }
        }
    }
}

fn end(mut vm: Vm, proc: &Arc<Process>, l: &Launch, exit: ExitReport, io: Running, what: &str) {
    proc.lock().vm_alive = false;
    vm.finish(POWEROFF_GRACE);
    log::info!("{what}: vm {} gone", vm.id());
    drop(vm);
    drop(io.stdin_port);
    proc.stdin.close();
    // The output relays end with QEMU, once they handed everything to the
    // FIFOs; a FIFO nobody reads may hold them back, so the wait is bounded.
    let deadline = Instant::now() + RELAY_DRAIN;
    for r in io.relays {
        while !r.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if r.is_finished() {
            let _ = r.join();
        } else {
            log::warn!("{what}: an output fifo is not being read; not waiting for it");
        }
    }
    if let Some(deps) = &l.dependents {
        let deps: Vec<_> = deps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for d in deps {
            d.force_end();
        }
    }
    if matches!(proc.status(), Status::Exited { .. }) {
        return;
    }
    let code = exit.code;
    let at = SystemTime::now();
    if exit.oom_killed {
        l.events.send(Event::Oom {
            id: l.container_id.clone(),
        });
    }
    proc.set_status(Status::Exited { code, at });
    l.events.send(Event::Exit {
        id: l.container_id.clone(),
        exec_id: l.exec_id.clone(),
        pid: proc.pid,
        status: code,
        at,
    });
}
