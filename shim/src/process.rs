//! One containerd process — a task's init or an exec — and the VM that runs
//! it.
//!
//! The lifecycle is [`Status`]: Created → Starting → Running → Exited →
//! Deleted, with Paused as a flag on Running. Every transition happens in
//! [`Process::transition`], under the process's one lock, and every request
//! is answered in every state — by acting or by a typed refusal
//! (FailedPrecondition, NotFound); nothing is ever queued where nobody
//! reads.
//!
//! QEMU gets `PR_SET_PDEATHSIG(SIGKILL)` from the thread that spawns it, and
//! ttrpc handler threads come and go: so each VM is launched by an *owner*
//! thread that lives exactly as long as its VM. The owner boots the VM,
//! sends the process's `Run` (the agent sets the container up and resolves
//! args[0] — Create and Exec wait for that), then reads the agent's messages
//! until the VM is gone, with a deadline on every answer it waits for. The
//! ttrpc handlers never wait on the owner: Start sends `Start` itself and
//! waits for the state to change; Kill goes to the agent as a signal, or
//! ends the VM through its [`KillHandle`] (a pidfd: the jailer reaps QEMU,
//! so a bare pid could name another process); Pause freezes the VMM's
//! cgroup.
//!
//! After `Exit`, the owner waits until every output byte the agent counted
//! reached containerd's FIFOs (however slowly they are read), then lets the
//! guest power off (`ExitAck`), reaps QEMU and publishes the one exit of the
//! process (after a TaskOOM when the guest's OOM killer ended it).

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use mu2_microvm::cgroup;
use mu2_microvm::relay::{Drain, DrainWatch, OutputRelay};
use mu2_microvm::vm::{describe_msg, CgroupHandle, ControlSender};
use mu2_microvm::{AgentEvent, KillHandle, Vm, VmSpec};
use mu2_protocol::{Exit, GuestMsg, HostMsg, Run, StartFailReason};

use crate::error::ShimError;
use crate::events::{Event, Events};
use crate::io::{spawn_stdin_relay, Outputs, StdinCloser};

/// How long an agent has to end its process after SIGKILL before the VM is
/// killed under it.
const SIGKILL_GRACE: Duration = Duration::from_secs(5);
/// How long the exit waits for the output relays to hand their last bytes
/// to containerd's FIFOs once QEMU is gone.
const RELAY_DRAIN: Duration = Duration::from_secs(5);
/// How often the owner looks at its deadlines while nothing arrives.
const TICK: Duration = Duration::from_millis(50);
/// How long a handler waits for the owner beyond the agent's own deadline.
const HANDLER_MARGIN: Duration = Duration::from_secs(5);
/// Exit status of a process whose VM died without reporting one (as if
/// SIGKILLed).
pub const STATUS_VM_GONE: u32 = 128 + libc::SIGKILL as u32;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    /// Set up in its VM, waiting for Start.
    #[default]
    Created,
    /// Start was sent; the agent has not answered yet.
    Starting,
    Running,
    Exited {
        code: u32,
        at: SystemTime,
    },
    Deleted,
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Starting => "starting",
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

#[derive(Default)]
struct State {
    status: Status,
    paused: bool,
    /// Start's outcome, for the handler waiting in [`Process::start`].
    started: Option<Result<u32, ShimError>>,
    /// The signal that ended a process before it ran (its status is
    /// 128+signal, as for a created runc container).
    killed_by: Option<i32>,
    /// A never-started exec being deleted: it ends with status 0 and no
    /// TaskExit (nothing ran).
    discard: bool,
    /// An exec whose set-up failed in Exec: Start reports this.
    doomed: Option<(StartFailReason, String)>,
    /// The answer to the Update in flight.
    updated: Option<Result<(), String>>,
    /// A SIGKILL was sent to the agent: the VM goes if the process does not.
    sigkill_at: Option<Instant>,
    /// The agent reported the exit; its last output may still be on the way.
    exited_in_guest: bool,
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
    control: ControlSender,
    kill: KillHandle,
    stdin: StdinCloser,
    /// Pause, resume, statistics and CPU quota of the VMM.
    cgroup: CgroupHandle,
    /// The longest wait for an agent's answer.
    reply_deadline: Duration,
    /// One Update at a time: its answer has one slot.
    updating: Mutex<()>,
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

impl Launch {
    fn what(&self) -> String {
        if self.exec_id.is_empty() {
            format!("task {}", self.container_id)
        } else {
            format!("exec {} of task {}", self.exec_id, self.container_id)
        }
    }
}

impl Process {
    fn what(&self) -> String {
        if self.exec_id.is_empty() {
            format!("task {}", self.container_id)
        } else {
            format!("exec {} of task {}", self.exec_id, self.container_id)
        }
    }

    fn is_exec(&self) -> bool {
        !self.exec_id.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The one place the state changes: `f` runs under the lock, waiters
    /// are woken after.
    fn transition<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut st = self.lock();
        let r = f(&mut st);
        self.changed.notify_all();
        r
    }

    /// Waits (bounded) until `done` holds; returns its value.
    fn wait_for<T>(
        &self,
        within: Duration,
        mut done: impl FnMut(&mut State) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + within;
        let mut st = self.lock();
        loop {
            if let Some(t) = done(&mut st) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Boots the VM on its owner thread and sets the process up in it;
    /// returns once the agent answered. A task whose process cannot be set
    /// up (a missing binary) fails here, as runc's create does; an exec's
    /// failure is kept for its Start, where runc reports it.
    pub fn launch(l: Launch) -> Result<Arc<Process>, ShimError> {
        let terminal = l.stdio.terminal;
        // A terminal has no stderr: containerd may name a FIFO it never made.
        let stderr = if terminal {
            ""
        } else {
            l.stdio.stderr.as_str()
        };
        let outputs = crate::io::open_outputs(
            &l.stdio.stdout,
            stderr,
            &l.container_id,
            l.events.namespace(),
        )?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let what = l.what();
        std::thread::Builder::new()
            .name(format!("vm-{}", l.spec.id))
            .spawn(move || owner(l, outputs, ready_tx))
            .map_err(|source| ShimError::Io {
                path: "owner thread".into(),
                source,
            })?;
        ready_rx.recv().map_err(|_| ShimError::OwnerGone(what))?
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    /// Created → Starting: sends Start and waits for the agent's answer.
    /// Returns the pid.
    pub fn start(&self) -> Result<u32, ShimError> {
        let doomed = self.transition(|st| {
            if st.paused {
                return Err(ShimError::State {
                    op: "start",
                    what: self.what(),
                    state: "paused",
                });
            }
            if st.status != Status::Created {
                return Err(ShimError::State {
                    op: "start",
                    what: self.what(),
                    state: st.status.name(),
                });
            }
            if let Some((reason, message)) = st.doomed.clone() {
                // Nothing runs: no TaskExit, as for runc's failed exec.
                st.status = Status::Exited {
                    code: start_fail_status(reason),
                    at: SystemTime::now(),
                };
                return Ok(Some((reason, message)));
            }
            st.status = Status::Starting;
            Ok(None)
        })?;
        if let Some((reason, message)) = doomed {
            return Err(ShimError::StartFailed {
                what: self.what(),
                reason,
                message,
            });
        }
        log::info!("{}: start", self.what());
        if let Err(e) = self.control.send(&HostMsg::Start) {
            log::warn!("{}: cannot send Start: {e}", self.what());
            self.kill.kill();
        }
        // The owner answers within the agent's deadline (or kills the VM).
        self.wait_for(self.reply_deadline + HANDLER_MARGIN, |st| st.started.take())
            .unwrap_or_else(|| {
                self.kill.kill();
                Err(ShimError::VmGone(self.what()))
            })
    }

    /// Delivers `signal` to the process (or all its processes).
    pub fn kill(&self, signal: u32, all: bool) -> Result<(), ShimError> {
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=mu2_protocol::MAX_SIGNAL).contains(s))
            .ok_or_else(|| ShimError::InvalidArgument(format!("signal {signal}")))?;
        enum Act {
            KillVm,
            Signal,
        }
        let act = self.transition(|st| match st.status {
            Status::Created if self.is_exec() => Err(ShimError::State {
                op: "signal",
                what: self.what(),
                state: "created (not started)",
            }),
            // No process yet: the VM is the process. It dies of the
            // signal, as a created runc container's init would.
            Status::Created | Status::Starting => {
                st.killed_by.get_or_insert(signal);
                Ok(Act::KillVm)
            }
            // Exited in the guest, its last output still on the way to a
            // slow reader: SIGKILL abandons that output, as it would a
            // runc process blocked writing to its pipe.
            Status::Running if st.exited_in_guest && signal == libc::SIGKILL => {
                st.killed_by.get_or_insert(signal);
                Ok(Act::KillVm)
            }
            Status::Running => {
                if signal == libc::SIGKILL {
                    st.sigkill_at.get_or_insert_with(Instant::now);
                }
                Ok(Act::Signal)
            }
            Status::Exited { .. } | Status::Deleted => Err(ShimError::NotFound(format!(
                "{} (process already finished)",
                self.what()
            ))),
        })?;
        log::info!("{}: signal {signal} (all: {all})", self.what());
        match act {
            Act::KillVm => self.kill.kill(),
            Act::Signal => {
                if self.control.send(&HostMsg::Signal { signal, all }).is_err() {
                    self.kill.kill();
                }
            }
        }
        Ok(())
    }

    /// Freezes the VM of a running process.
    pub fn pause(&self) -> Result<(), ShimError> {
        self.transition(|st| {
            if st.status != Status::Running || st.paused {
                return Err(ShimError::State {
                    op: "pause",
                    what: self.what(),
                    state: if st.paused {
                        "paused"
                    } else {
                        st.status.name()
                    },
                });
            }
            self.cgroup.pause()?;
            st.paused = true;
            Ok(())
        })
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) -> Result<(), ShimError> {
        self.transition(|st| {
            if !st.paused {
                return Err(ShimError::State {
                    op: "resume",
                    what: self.what(),
                    state: st.status.name(),
                });
            }
            self.cgroup.resume()?;
            st.paused = false;
            Ok(())
        })
    }

    /// Paused and not yet exited.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// CPU, memory and pids of the process's VMM.
    pub fn stats(&self) -> Result<cgroup::Stats, ShimError> {
        Ok(self.cgroup.stats()?)
    }

    /// New limits for the container's cgroup inside this VM (and the VMM's
    /// CPU cap), while it is created or running.
    pub fn update(
        &self,
        change: &mu2_oci::ResourceChange,
        boot_quota: (u64, u64),
    ) -> Result<(), ShimError> {
        let limits = change.limits;
        let _one = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        self.transition(|st| match st.status {
            Status::Created | Status::Starting | Status::Running => {
                st.updated = None;
                Ok(())
            }
            other => Err(ShimError::State {
                op: "update",
                what: self.what(),
                state: other.name(),
            }),
        })?;
        if let Some(q) = change.cpu_quota {
            // "No cap" restores the cap the VM booted with.
            self.cgroup.set_cpu_quota(Some(q.unwrap_or(boot_quota)))?;
        }
        if let Some(s) = change.cpu_shares {
            self.cgroup.set_cpu_shares(s)?;
        }
        if limits == mu2_protocol::Update::default() {
            return Ok(());
        }
        self.control.send(&HostMsg::Update(limits))?;
        match self.wait_for(self.reply_deadline, |st| st.updated.take()) {
            Some(Ok(())) => Ok(()),
            Some(Err(message)) => Err(ShimError::InvalidArgument(format!(
                "update of {}: the guest refused it: {message}",
                self.what()
            ))),
            None => Err(ShimError::VmGone(self.what())),
        }
    }

    /// Ends the process now, whatever its state, and waits (bounded) for its
    /// exit. A never-started exec is discarded: status 0, no TaskExit.
    pub fn force_end(&self) {
        let kill = self.transition(|st| match st.status {
            Status::Created | Status::Starting => {
                if self.is_exec() && st.status == Status::Created {
                    st.discard = true;
                    if st.doomed.is_some() {
                        st.status = Status::Exited {
                            code: 0,
                            at: SystemTime::now(),
                        };
                        return false;
                    }
                } else {
                    st.killed_by.get_or_insert(libc::SIGKILL);
                }
                true
            }
            Status::Running => {
                st.killed_by.get_or_insert(libc::SIGKILL);
                true
            }
            Status::Exited { .. } | Status::Deleted => false,
        });
        if kill {
            self.kill.kill();
            let _ = self.wait_timeout(SIGKILL_GRACE + RELAY_DRAIN + HANDLER_MARGIN);
        }
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
        self.wait_for(timeout, |st| match st.status {
            Status::Exited { code, at } => Some((code, at)),
            _ => None,
        })
    }

    /// Exited → Deleted; returns the exit.
    pub fn mark_deleted(&self) -> Result<(u32, SystemTime), ShimError> {
        self.transition(|st| match st.status {
            Status::Exited { code, at } => {
                st.status = Status::Deleted;
                Ok((code, at))
            }
            other => Err(ShimError::State {
                op: "delete",
                what: self.what(),
                state: other.name(),
            }),
        })
    }
}

fn start_fail_status(reason: StartFailReason) -> u32 {
    match reason {
        StartFailReason::NotFound => 127,
        StartFailReason::NotExecutable => 126,
        _ => 128,
    }
}

/// The VM owner thread: boots, prepares, then serves the VM until it is
/// gone.
fn owner(
    l: Launch,
    outputs: Outputs,
    ready: std::sync::mpsc::Sender<Result<Arc<Process>, ShimError>>,
) {
    let what = l.what();
    // The logger is reaped, and the held FIFO read ends closed, once the
    // owner is done with the output.
    let _logger = outputs.logger;
    let _held = outputs.held;
    log::info!("{what}: booting vm {}", l.spec.id);
    let mut vm = match Vm::launch(&l.spec) {
        Ok(vm) => vm,
        Err(e) => {
            log::error!("{what}: {}", crate::error::describe(&e));
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    log::info!(
        "{what}: vm {} ready in {:?} (pid {})",
        l.spec.id,
        vm.boot_time(),
        vm.pid()
    );
    let stdio = vm.take_stdio().expect("stdio is taken once");
    let relays = match (
        OutputRelay::spawn("stdout", stdio.stdout, outputs.stdout, false),
        OutputRelay::spawn("stderr", stdio.stderr, outputs.stderr, false),
    ) {
        (Ok(o), Ok(e)) => [o, e],
        (Err(source), _) | (_, Err(source)) => {
            let _ = ready.send(Err(ShimError::Io {
                path: "output relay".into(),
                source,
            }));
            return;
        }
    };
    let proc = Arc::new(Process {
        container_id: l.container_id.clone(),
        exec_id: l.exec_id.clone(),
        stdio: l.stdio.clone(),
        pid: vm.pid(),
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        control: vm.sender(),
        kill: vm.kill_handle(),
        stdin: StdinCloser::new(&l.stdio.stdin),
        cgroup: vm.cgroup_handle(),
        reply_deadline: vm.deadlines().reply,
        updating: Mutex::new(()),
    });
    log::info!("{what}: run {:?}", l.run.process.args);
    let prepared = vm
        .sender()
        .send(&HostMsg::Run(Box::new(l.run.clone())))
        .and_then(|()| {
            vm.await_reply("Prepared after Run", |m| match m {
                GuestMsg::Prepared { path } => Ok(Ok(path)),
                GuestMsg::StartFailed { reason, message } => Ok(Err((reason, message))),
                other => Err(other),
            })
        });
    match prepared {
        Ok(Ok(path)) => log::info!("{what}: set up; args[0] is {path:?}"),
        Ok(Err((reason, message))) if !proc.is_exec() => {
            log::warn!("{what}: cannot be set up: {message}");
            let _ = ready.send(Err(ShimError::StartFailed {
                what,
                reason,
                message,
            }));
            return;
        }
        Ok(Err((reason, message))) => {
            log::warn!("{what}: cannot be set up (Start will fail): {message}");
            proc.transition(|st| {
                st.doomed = Some((reason, message));
            });
            let _ = ready.send(Ok(proc));
            return;
        }
        Err(e) => {
            log::error!("{what}: {}", crate::error::describe(&e));
            let _ = ready.send(Err(e.into()));
            return;
        }
    }
    if ready.send(Ok(Arc::clone(&proc))).is_err() {
        return;
    }
    let mut o = Owner {
        vm,
        proc,
        l,
        relays,
        stdin_port: Some(stdio.stdin),
        exit: None,
        drain: None,
        acked_at: None,
        starting_since: None,
        result: None,
    };
    o.serve();
    o.end();
}

/// How the process ended, as the owner saw it.
#[derive(Debug, Clone, Copy)]
struct ExitReport {
    code: u32,
    /// The guest kernel's OOM killer ended it (or a process of its cgroup).
    oom_killed: bool,
}

struct Owner {
    vm: Vm,
    proc: Arc<Process>,
    l: Launch,
    relays: [OutputRelay; 2],
    /// Closing our end of the stdin port makes QEMU drop what it has not
    /// yet handed to the guest: it stays open until the VM ends.
    stdin_port: Option<UnixStream>,
    /// The agent's Exit, once it came.
    exit: Option<Exit>,
    drain: Option<DrainWatch>,
    acked_at: Option<Instant>,
    starting_since: Option<Instant>,
    /// How it ended, once known.
    result: Option<ExitReport>,
}

impl Owner {
    fn what(&self) -> String {
        self.l.what()
    }

    /// Reads the agent until the VM is gone, minding every deadline.
    fn serve(&mut self) {
        loop {
            let event = self.vm.next_event(Some(Instant::now() + TICK));
            match event {
                Some(AgentEvent::Closed) => return,
                Some(AgentEvent::Broken(message)) => {
                    log::error!(
                        "{}: the agent broke the protocol: {message}; killing its vm",
                        self.what()
                    );
                    self.vm.kill_handle().kill();
                }
                Some(AgentEvent::Msg(m)) => self.on_message(m),
                None => {}
            }
            self.on_tick();
        }
    }

    fn on_message(&mut self, m: GuestMsg) {
        let status = self.proc.status();
        match (status, m) {
            (Status::Starting, GuestMsg::Started { pid }) => self.on_started(pid),
            (Status::Starting, GuestMsg::StartFailed { reason, message }) => {
                log::warn!("{}: cannot start: {message}", self.what());
                let code = start_fail_status(reason);
                // Stopped before Start answers, so that the Delete containerd
                // sends next finds it so; no process ran, so no TaskExit.
                self.proc.transition(|st| {
                    st.status = Status::Exited {
                        code,
                        at: SystemTime::now(),
                    };
                    st.started = Some(Err(ShimError::StartFailed {
                        what: self.l.what(),
                        reason,
                        message,
                    }));
                });
                self.vm.kill_handle().kill();
            }
            (Status::Running, GuestMsg::Exit(e)) if self.exit.is_none() => {
                log::info!(
                    "{}: exited with status {} (oom killed: {}); draining {}+{} output bytes",
                    self.what(),
                    e.status,
                    e.oom_killed,
                    e.stdout_bytes,
                    e.stderr_bytes
                );
                self.proc.transition(|st| st.exited_in_guest = true);
                self.drain = Some(DrainWatch::new(
                    vec![e.stdout_bytes, e.stderr_bytes],
                    self.vm.deadlines().drain,
                ));
                self.exit = Some(e);
            }
            (_, GuestMsg::Updated { error }) => {
                self.proc
                    .transition(|st| st.updated = Some(error.map_or(Ok(()), Err)));
            }
            (status, other) => {
                log::error!(
                    "{}: the agent sent {} while the process is {}; killing its vm",
                    self.what(),
                    describe_msg(&other),
                    status.name()
                );
                self.vm.kill_handle().kill();
            }
        }
    }

    fn on_started(&mut self, guest_pid: u32) {
        log::info!("{}: started as guest pid {guest_pid}", self.what());
        if let Some(port) = &self.stdin_port {
            match port.try_clone() {
                Ok(relay_end) => spawn_stdin_relay(
                    relay_end,
                    self.proc.stdin.clone(),
                    self.proc.control.clone(),
                ),
                Err(e) => log::warn!("{}: no stdin relay: {e}", self.what()),
            }
        }
        let pid = self.proc.pid;
        self.proc.transition(|st| {
            st.status = Status::Running;
            st.started = Some(Ok(pid));
        });
        self.l.events.send(if self.l.exec_id.is_empty() {
            Event::Start {
                id: self.l.container_id.clone(),
                pid,
            }
        } else {
            Event::ExecStarted {
                id: self.l.container_id.clone(),
                exec_id: self.l.exec_id.clone(),
                pid,
            }
        });
    }

    /// Deadlines: Started after Start, a SIGKILL the agent did not carry
    /// out, the drain of the last output, the power-off after ExitAck.
    fn on_tick(&mut self) {
        let now = Instant::now();
        let (status, paused, sigkill_at) = {
            let st = self.proc.lock();
            (st.status, st.paused, st.sigkill_at)
        };
        let d = *self.vm.deadlines();
        if status == Status::Starting {
            let since = *self.starting_since.get_or_insert(now);
            if now.duration_since(since) >= d.reply {
                log::error!(
                    "{}: no answer to Start within {:?}; killing its vm",
                    self.what(),
                    d.reply
                );
                self.proc.transition(|st| {
                    st.started = Some(Err(ShimError::Vm(mu2_microvm::VmError::Deadline {
                        id: self.vm.id().to_string(),
                        what: "Started after Start",
                        timeout: d.reply,
                        console: self.vm.console_tail(mu2_microvm::vm::CONSOLE_TAIL_LINES),
                    })));
                });
                self.vm.kill_handle().kill();
            }
        }
        if let Some(at) = sigkill_at {
            if self.exit.is_none() && !paused && now.duration_since(at) >= SIGKILL_GRACE {
                log::warn!(
                    "{}: agent did not end the process after SIGKILL; killing the vm",
                    self.what()
                );
                self.vm.kill_handle().kill();
            }
        }
        if let (Some(watch), None) = (&self.drain, self.acked_at) {
            match watch.poll(&[&self.relays[0], &self.relays[1]], paused) {
                Drain::Pending => {}
                Drain::Complete => {
                    let e = self.exit.expect("a drain follows an exit");
                    self.result = Some(ExitReport {
                        code: u32::try_from(e.status).unwrap_or(STATUS_VM_GONE),
                        oom_killed: e.oom_killed,
                    });
                    self.acked_at = Some(now);
                    if self.proc.control.send(&HostMsg::ExitAck).is_err() {
                        self.vm.kill_handle().kill();
                    }
                }
                Drain::Short { stream, got, want } => {
                    log::error!(
                        "{}: {stream} cut short: {got} of {want} bytes arrived, then nothing for {:?}; killing its vm",
                        self.what(),
                        d.drain
                    );
                    self.result = Some(ExitReport {
                        code: STATUS_VM_GONE,
                        oom_killed: false,
                    });
                    self.acked_at = Some(now);
                    self.vm.kill_handle().kill();
                }
            }
        }
        if let Some(at) = self.acked_at {
            if now.duration_since(at) >= d.poweroff {
                log::warn!(
                    "{}: vm did not power off within {:?}; killing it",
                    self.what(),
                    d.poweroff
                );
                self.vm.kill_handle().kill();
            }
        }
    }

    /// The VM is gone: reap it, flush the output, end the dependents and
    /// publish the one exit.
    fn end(self) {
        let Owner {
            mut vm,
            proc,
            l,
            relays,
            stdin_port,
            result,
            ..
        } = self;
        let what = l.what();
        vm.finish(Duration::ZERO);
        log::info!("{what}: vm {} gone", vm.id());
        drop(vm);
        drop(stdin_port);
        proc.stdin.close();
        // The relays end with QEMU once they handed everything to the
        // FIFOs; a FIFO nobody reads may hold them back, so the wait is
        // bounded.
        for r in relays {
            let name = r.name();
            if r.join(RELAY_DRAIN).is_none() {
                log::warn!("{what}: the {name} fifo is not being read; not waiting for it");
            }
        }
        if let Some(deps) = &l.dependents {
            let deps: Vec<_> = deps.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for d in deps {
                d.force_end();
            }
        }
        proc.transition(|st| {
            if let Status::Exited { .. } | Status::Deleted = st.status {
                // Ended before it ran (StartFailed): no exit to publish.
                if let Some(Ok(_)) | None = st.started {
                    st.started = Some(Err(ShimError::VmGone(what.clone())));
                }
                return;
            }
            let report = match (st.discard, st.killed_by, result) {
                (true, _, _) => None,
                (_, Some(sig), None) => Some(ExitReport {
                    code: 128 + sig as u32,
                    oom_killed: false,
                }),
                (_, _, Some(r)) => Some(r),
                (_, None, None) => {
                    log::warn!("{what}: vm ended without an exit; status {STATUS_VM_GONE}");
                    Some(ExitReport {
                        code: STATUS_VM_GONE,
                        oom_killed: false,
                    })
                }
            };
            let was_starting = st.status == Status::Starting;
            let at = SystemTime::now();
            st.status = Status::Exited {
                code: report.map_or(0, |r| r.code),
                at,
            };
            // Killed while its Start was on the way: to containerd the
            // process started and died of the signal, as under runc.
            let started_then_killed = was_starting && st.killed_by.is_some();
            if started_then_killed {
                st.started = Some(Ok(proc.pid));
            } else if was_starting {
                st.started = Some(Err(ShimError::VmGone(what.clone())));
            }
            // Queued before the lock drops: a Wait woken by this exit
            // (and the Delete its caller sends next) cannot overtake the
            // TaskExit, nor find the process deleted before it went out.
            // A full queue (containerd not taking events) holds the lock
            // until the publisher, whose every try is bounded, makes room.
            if let Some(r) = report {
                publish_exit(&l, proc.pid, r, at, started_then_killed);
            }
        });
    }
}

/// The events of one process's end, in containerd's order: its Start when
/// a kill overtook it, the OOM, the exit.
fn publish_exit(l: &Launch, pid: u32, report: ExitReport, at: SystemTime, started: bool) {
    if started {
        l.events.send(if l.exec_id.is_empty() {
            Event::Start {
                id: l.container_id.clone(),
                pid,
            }
        } else {
            Event::ExecStarted {
                id: l.container_id.clone(),
                exec_id: l.exec_id.clone(),
                pid,
            }
        });
    }
    if report.oom_killed {
        l.events.send(Event::Oom {
            id: l.container_id.clone(),
        });
    }
    l.events.send(Event::Exit {
        id: l.container_id.clone(),
        exec_id: l.exec_id.clone(),
        pid,
        status: report.code,
        at,
    });
}
