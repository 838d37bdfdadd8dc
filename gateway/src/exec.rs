//! One request in one fresh VM: launch, Run, Start, the body to stdin, the
//! CGI response from stdout, Exit, the drain of the last bytes, and the VM
//! gone — on every path.
//!
//! A request's VM lives in a thread of its own ([`run`]), which launches
//! it (QEMU's parent-death signal follows that thread) and drops it before
//! the thread ends, so the VM never outlives its request. The guest is
//! driven as `mu2 run` drives it (cli/src/run.rs): the same messages in the
//! same order, [`OutputRelay`]s with blocking I/O for stdout and stderr,
//! the [`DrainWatch`] before `ExitAck`. What differs is where stdout goes:
//! into a [`CgiSink`], which parses the header block and then streams the
//! body to the HTTP side over a bounded channel, so a slow client stalls
//! the guest instead of filling memory.
//!
//! Everything that ends a request early goes through its [`Cancel`]: the
//! deadline (a watchdog thread), the client hanging up (the HTTP side drops
//! its guard), a bad header block, SIGTERM's grace running out. The first
//! reason is kept, the VM is killed through its [`KillHandle`], and every
//! wait of the VM thread then ends because QEMU's channels close.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mu2_microvm::relay::{Drain, DrainWatch, OutputRelay};
use mu2_microvm::vm::{describe_msg, ControlSender};
use mu2_microvm::{AgentEvent, KillHandle, Vm, VmSpec};
use mu2_protocol::{Exit, GuestMsg, HostMsg, Run};
use tokio::sync::{mpsc, oneshot};

use crate::cgi::{Head, HeadParser};
use crate::metrics::Metrics;

/// Body chunks queued between the VM's stdout and the client.
pub const BODY_QUEUE: usize = 8;
/// Longest stderr line logged whole.
const MAX_LOG_LINE: usize = 4096;
/// Most stderr bytes of one request that reach the log.
const MAX_LOG_BYTES: usize = 64 * 1024;
/// How often the drain of the last output bytes is looked at.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// How long a finished request's relays get to see QEMU's end.
const RELAY_JOIN: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a request ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its deadline passed (504).
    Timeout,
    /// The client hung up.
    ClientGone,
    /// The script's header block was not valid (502, already answered).
    BadHead,
    /// The gateway is shutting down and the grace period is over.
    Shutdown,
}

#[derive(Default)]
struct CancelState {
    kill: Option<KillHandle>,
    reason: Option<Reason>,
    /// The VM thread is done: nothing left to kill.
    done: bool,
}

/// Ends a request's VM from any thread, keeping the first reason.
#[derive(Default)]
pub struct Cancel {
    state: Mutex<CancelState>,
}

impl Cancel {
    /// Cancels with `why` unless already cancelled or done; kills the VM
    /// if it runs.
    pub fn cancel(&self, why: Reason) {
        let mut s = lock(&self.state);
        if s.done || s.reason.is_some() {
            return;
        }
        s.reason = Some(why);
        if let Some(k) = &s.kill {
            k.kill();
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        lock(&self.state).reason
    }

    /// Hands over the VM's kill handle; `false` (and the VM killed) if the
    /// request was cancelled while the VM came up.
    fn set_vm(&self, k: KillHandle) -> bool {
        let mut s = lock(&self.state);
        if s.reason.is_some() {
            k.kill();
            return false;
        }
        s.kill = Some(k);
        true
    }

    fn done(&self) {
        let mut s = lock(&self.state);
        s.done = true;
        s.kill = None;
    }
}

/// Every request that has or may soon have a VM, for SIGTERM.
#[derive(Default)]
pub struct Registry {
    jobs: Mutex<HashMap<String, Arc<Cancel>>>,
}

impl Registry {
    fn add(&self, id: &str, c: Arc<Cancel>) {
        lock(&self.jobs).insert(id.to_string(), c);
    }

    fn remove(&self, id: &str) {
        lock(&self.jobs).remove(id);
    }

    pub fn len(&self) -> usize {
        lock(&self.jobs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every request (their VMs are killed).
    pub fn cancel_all(&self, why: Reason) {
        for c in lock(&self.jobs).values() {
            c.cancel(why);
        }
    }
}

/// How a request failed before its response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The script's output is not a CGI response, or it could not run: 502.
    BadGateway(String),
    /// The deadline passed: 504.
    Timeout,
    /// No VM could be started: 503.
    Unavailable(String),
    /// The gateway is shutting down: 503.
    Shutdown,
    /// The client is gone: nobody to answer.
    ClientGone,
}

/// The answer the HTTP side waits for.
pub enum Outcome {
    Head {
        head: Head,
        body: mpsc::Receiver<Bytes>,
    },
    Failed(Failure),
}

/// The one answer of a request: the first to give it wins.
#[derive(Clone)]
struct Responder(Arc<Mutex<Option<oneshot::Sender<Outcome>>>>);

impl Responder {
    /// Whether the answer was taken (not given before, and a client waits).
    fn answer(&self, o: Outcome) -> bool {
        match lock(&self.0).take() {
            Some(tx) => tx.send(o).is_ok(),
            None => false,
        }
    }

    fn answered(&self) -> bool {
        lock(&self.0).is_none()
    }
}

/// The body channel of a response whose head went out; shared by the sink
/// (which sends) and the VM thread (which ends it: dropping the last
/// sender ends the body; [`BodyEnd`] tells a clean end from a cut one).
type BodySender = Arc<Mutex<Option<mpsc::Sender<Bytes>>>>;

/// How a streamed body ended, read by the HTTP side once its channel
/// closes: a body not marked complete is cut (the client sees the
/// connection fail rather than a short response that looks whole).
#[derive(Default)]
pub struct BodyEnd {
    complete: std::sync::atomic::AtomicBool,
}

impl BodyEnd {
    pub fn complete(&self) -> bool {
        self.complete.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The VM's stdout: a CGI response, parsed, then streamed.
struct CgiSink {
    parser: Option<HeadParser>,
    responder: Responder,
    body: BodySender,
    cancel: Arc<Cancel>,
    request: String,
}

impl CgiSink {
    fn send(&self, data: Bytes) -> io::Result<()> {
        // A clone, so that the lock is not held while the client is slow.
        let tx = lock(&self.body).clone();
        let Some(tx) = tx else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        tx.blocking_send(data).map_err(|_| {
            self.cancel.cancel(Reason::ClientGone);
            io::Error::from(io::ErrorKind::BrokenPipe)
        })
    }
}

impl Write for CgiSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(parser) = self.parser.as_mut() else {
            self.send(Bytes::copy_from_slice(buf))?;
            return Ok(buf.len());
        };
        match parser.feed(buf) {
            Ok(None) => Ok(buf.len()),
            Ok(Some((head, rest))) => {
                self.parser = None;
                let (tx, rx) = mpsc::channel(BODY_QUEUE);
                *lock(&self.body) = Some(tx);
                if !self.responder.answer(Outcome::Head { head, body: rx }) {
                    self.cancel.cancel(Reason::ClientGone);
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                if !rest.is_empty() {
                    self.send(Bytes::from(rest))?;
                }
                Ok(buf.len())
            }
            Err(e) => {
                log::warn!("request {}: invalid CGI response: {e}", self.request);
                self.parser = None;
                self.responder
                    .answer(Outcome::Failed(Failure::BadGateway(e.to_string())));
                self.cancel.cancel(Reason::BadHead);
                Err(io::Error::other(e))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The VM's stderr, to the log line by line with the request's id.
struct LogSink {
    request: String,
    line: Vec<u8>,
    logged: usize,
}

impl LogSink {
    fn emit(&mut self) {
        if self.logged < MAX_LOG_BYTES {
            let text = mu2_protocol::text::sanitize(&self.line, MAX_LOG_LINE);
            log::info!("request {}: stderr: {text}", self.request);
        } else if self.logged - self.line.len() < MAX_LOG_BYTES {
            log::info!(
                "request {}: stderr: more than {MAX_LOG_BYTES} bytes; the rest is not logged",
                self.request
            );
        }
        self.line.clear();
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.logged += 1;
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LOG_LINE {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

/// One request for one VM.
pub struct Job {
    pub request: String,
    pub spec: VmSpec,
    pub run: Run,
    pub deadline: Instant,
    /// The request body, chunk by chunk (closed at its end); taken once.
    pub body: Mutex<Option<mpsc::Receiver<Bytes>>>,
    pub cancel: Arc<Cancel>,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    /// Admission permits, released when the VM is gone.
    pub permits: Vec<tokio::sync::OwnedSemaphorePermit>,
}

/// Where the HTTP side waits for a job's answer.
pub struct Handle {
    pub outcome: oneshot::Receiver<Outcome>,
    pub body_end: Arc<BodyEnd>,
    /// The id of the VM that runs the job.
    pub vm: String,
}

/// A job with the two ends its thread answers through.
struct Assigned {
    job: Job,
    responder: Responder,
    body_end: Arc<BodyEnd>,
    /// The VM's id, under which the job is registered.
    id: String,
}

fn assign(job: Job, vm: String) -> (Assigned, Handle) {
    let (tx, rx) = oneshot::channel();
    let body_end = Arc::new(BodyEnd::default());
    let handle = Handle {
        outcome: rx,
        body_end: Arc::clone(&body_end),
        vm: vm.clone(),
    };
    let a = Assigned {
        job,
        responder: Responder(Arc::new(Mutex::new(Some(tx)))),
        body_end,
        id: vm,
    };
    (a, handle)
}

/// Starts `job` in a thread of its own, which launches its VM.
pub fn spawn(job: Job) -> io::Result<Handle> {
    let id = job.spec.id.clone();
    let (a, handle) = assign(job, id.clone());
    let registry = Arc::clone(&a.job.registry);
    // Registered before the thread runs, so that SIGTERM's end of grace
    // finds every request that may get a VM.
    registry.add(&id, Arc::clone(&a.job.cancel));
    let spawned = std::thread::Builder::new()
        .name(format!("vm-{id}"))
        .spawn(move || run(a, None));
    if let Err(e) = spawned {
        registry.remove(&id);
        return Err(e);
    }
    Ok(handle)
}

/// Makes the spec of a route's VMs, given an id.
pub type SpecMaker = Arc<dyn Fn(String) -> VmSpec + Send + Sync>;

/// A warm VM waiting for its job.
struct Idle {
    id: String,
    jobs: std::sync::mpsc::SyncSender<Assigned>,
}

/// A route's warm set: VMs booted (or restored) ahead, each held by a
/// keeper thread that runs the one job it is given in it. When its VM is
/// taken, a keeper starts its replacement at once, so the set refills while
/// the request runs: at most `warm` idle VMs plus the running ones. A
/// keeper is the thread its VM was launched from and lives as long as the
/// VM, as QEMU's parent-death signal wants.
pub struct Warm {
    idle: Mutex<std::collections::VecDeque<Idle>>,
    closed: std::sync::atomic::AtomicBool,
    keepers: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
    make: SpecMaker,
    /// Ids of the VMs: this and a serial number.
    prefix: String,
    serial: std::sync::atomic::AtomicU64,
}

/// Longest pause between failed launches of a keeper.
const WARM_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Warm {
    /// Starts `n` keepers for VMs made by `make`, ids `PREFIX<n>`.
    pub fn start(n: usize, prefix: String, make: SpecMaker, metrics: Arc<Metrics>) -> Arc<Warm> {
        let warm = Arc::new(Warm {
            idle: Mutex::new(std::collections::VecDeque::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            keepers: std::sync::atomic::AtomicUsize::new(0),
            metrics,
            make,
            prefix,
            serial: std::sync::atomic::AtomicU64::new(0),
        });
        for _ in 0..n {
            warm.spawn_keeper();
        }
        warm
    }

    /// A keeper: launches one VM, offers it, runs the job it is given.
    fn spawn_keeper(self: &Arc<Self>) {
        let w = Arc::clone(self);
        w.keepers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name(format!("warm-{}", self.prefix))
            .spawn(move || {
                w.keep();
                w.keepers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a warm vm keeper: {e}");
            self.keepers
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn keep(self: &Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        let (mut vm, id) = loop {
            if self.closed() {
                return;
            }
            let n = self
                .serial
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let spec = (self.make)(format!("{}{n}", self.prefix));
            match Vm::launch(&spec) {
                Ok(vm) => break (vm, spec.id),
                Err(e) => {
                    self.metrics.vm_failed();
                    log::warn!(
                        "warm vm {}: cannot start: {}; again in {backoff:?}",
                        spec.id,
                        mu2_microvm::describe_error(&e)
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(WARM_BACKOFF_MAX);
                }
            }
        };
        self.metrics.vm_started(vm.restored());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        {
            let mut idle = lock(&self.idle);
            if self.closed() {
                return;
            }
            idle.push_back(Idle {
                id: id.clone(),
                jobs: tx,
            });
            self.metrics.warm(1);
        }
        let Ok(a) = rx.recv() else {
            // Closed (shutdown): the VM goes with this thread.
            return;
        };
        // The replacement comes up while this VM serves its request.
        if !self.closed() {
            self.spawn_keeper();
        }
        // A VM that died while it waited is replaced by a launch of the
        // job's own.
        match vm.next_event(Some(Instant::now())) {
            None => run(a, Some(vm)),
            Some(e) => {
                log::warn!("warm vm {id}: gone while idle ({e:?}); the request launches its own");
                // Gone with its record: the id is free for the new VM.
                drop(vm);
                let mut a = a;
                a.job.spec.id = a.id.clone();
                run(a, None);
            }
        }
    }

    /// Gives `job` to an idle warm VM, if there is one; else gives it back.
    pub fn dispatch(&self, job: Job) -> Result<Handle, Box<Job>> {
        let mut job = job;
        loop {
            let Some(idle) = lock(&self.idle).pop_front() else {
                return Err(Box::new(job));
            };
            self.metrics.warm(-1);
            let (a, handle) = assign(job, idle.id.clone());
            match idle.jobs.send(a) {
                Ok(()) => {
                    return Ok(Handle {
                        vm: idle.id,
                        ..handle
                    })
                }
                // Its keeper is gone: try the next.
                Err(std::sync::mpsc::SendError(a)) => job = a.job,
            }
        }
    }

    /// Stops refilling and lets the idle VMs go.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let idle: Vec<Idle> = lock(&self.idle).drain(..).collect();
        self.metrics.warm(-(idle.len() as i64));
    }

    /// Keepers still running (each may hold a VM).
    pub fn keepers(&self) -> usize {
        self.keepers.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What became of the VM.
enum Ended {
    /// The process exited and every byte of its output was delivered.
    Exited(Exit),
    Failed(Failure),
}

/// Runs an assigned job in `vm`, or in a VM of its own launched here.
fn run(a: Assigned, vm: Option<Vm>) {
    let Assigned {
        job,
        responder,
        body_end,
        id,
    } = a;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let cancel = Arc::clone(&job.cancel);
        let wait = job.deadline.saturating_duration_since(Instant::now());
        let request = job.request.clone();
        let responder = responder.clone();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(wait) {
                log::warn!("request {request}: deadline passed; killing its vm");
                cancel.cancel(Reason::Timeout);
                // At once, even if the VM is still coming up (a launch is
                // not interrupted); after the head it is a no-op and the
                // body is cut instead.
                responder.answer(Outcome::Failed(Failure::Timeout));
            }
        })
    };
    let body: BodySender = Arc::new(Mutex::new(None));
    let t0 = Instant::now();
    let ended = in_vm(&job, vm, &responder, &body, &body_end);
    let failure = match ended {
        Ended::Exited(exit) => {
            if responder.answered() {
                body_end
                    .complete
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                log::info!(
                    "request {}: vm {id} done in {} ms, exit status {}",
                    job.request,
                    t0.elapsed().as_millis(),
                    exit.status
                );
                None
            } else {
                Some(Failure::BadGateway(format!(
                    "the command exited (status {}) without a complete CGI header block",
                    exit.status
                )))
            }
        }
        Ended::Failed(f) => Some(f),
    };
    if let Some(f) = failure {
        // A cancel's reason says more than the VM's end it caused.
        let f = match job.cancel.reason() {
            Some(Reason::Timeout) => Failure::Timeout,
            Some(Reason::ClientGone) => Failure::ClientGone,
            Some(Reason::Shutdown) => Failure::Shutdown,
            _ => f,
        };
        match &f {
            Failure::BadGateway(why) | Failure::Unavailable(why) => {
                log::warn!("request {}: vm {id}: {why}", job.request)
            }
            Failure::ClientGone => log::info!(
                "request {}: the client went away; vm {id} was killed",
                job.request
            ),
            Failure::Timeout => log::info!(
                "request {}: vm {id} ran past its deadline and was killed",
                job.request
            ),
            Failure::Shutdown => log::info!(
                "request {}: vm {id} was killed at the end of the grace period",
                job.request
            ),
        }
        responder.answer(Outcome::Failed(f));
    }
    // Ends the body: cleanly if marked complete above, else cut.
    lock(&body).take();
    job.cancel.done();
    drop(done_tx);
    let _ = watchdog.join();
    job.registry.remove(&id);
}

/// Runs the job's VM to its end; the VM is gone when this returns.
fn in_vm(
    job: &Job,
    vm: Option<Vm>,
    responder: &Responder,
    body: &BodySender,
    end: &BodyEnd,
) -> Ended {
    let mut vm = match vm {
        Some(vm) => vm,
        None => match Vm::launch(&job.spec) {
            Ok(vm) => {
                job.metrics.vm_started(vm.restored());
                vm
            }
            Err(e) => {
                job.metrics.vm_failed();
                return Ended::Failed(Failure::Unavailable(format!(
                    "cannot start a vm: {}",
                    mu2_microvm::describe_error(&e)
                )));
            }
        },
    };
    job.metrics.running(1);
    let ended = drive(job, &mut vm, responder, body, end);
    drop(vm);
    job.metrics.running(-1);
    ended
}

fn drive(job: &Job, vm: &mut Vm, responder: &Responder, body: &BodySender, end: &BodyEnd) -> Ended {
    let vm_err = |e: mu2_microvm::VmError| {
        Ended::Failed(Failure::BadGateway(mu2_microvm::describe_error(&e)))
    };
    if !job.cancel.set_vm(vm.kill_handle()) {
        return Ended::Failed(Failure::ClientGone);
    }
    let Some(stdio) = vm.take_stdio() else {
        return Ended::Failed(Failure::BadGateway("the vm has no stdio".into()));
    };
    // As in `mu2 run`: closing our end of the stdin port would make QEMU
    // drop what it has not yet handed to the guest.
    let Ok(_stdin_keepalive) = stdio.stdin.try_clone() else {
        return Ended::Failed(Failure::BadGateway("cannot hold the stdin port".into()));
    };
    let sink = CgiSink {
        parser: Some(HeadParser::new()),
        responder: responder.clone(),
        body: Arc::clone(body),
        cancel: Arc::clone(&job.cancel),
        request: job.request.clone(),
    };
    let log = LogSink {
        request: job.request.clone(),
        line: Vec::new(),
        logged: 0,
    };
    let relays = OutputRelay::spawn("stdout", stdio.stdout, Some(sink), false).and_then(|out| {
        OutputRelay::spawn("stderr", stdio.stderr, Some(log), false).map(|err| (out, err))
    });
    let Ok((out, err)) = relays else {
        return Ended::Failed(Failure::BadGateway("cannot relay the vm's output".into()));
    };
    let ended = converse(job, vm, stdio.stdin, &out, &err).unwrap_or_else(vm_err);
    if matches!(ended, Ended::Exited(_)) && responder.answered() {
        // Every byte is with the client: the response ends now, not after
        // the VM's teardown.
        end.complete
            .store(true, std::sync::atomic::Ordering::SeqCst);
        lock(body).take();
    }
    if !matches!(ended, Ended::Exited(_)) {
        vm.kill();
    }
    vm.finish(vm.deadlines().poweroff);
    let _ = out.join(RELAY_JOIN);
    let _ = err.join(RELAY_JOIN);
    ended
}

/// Run, Start, stdin, Exit, drain.
fn converse(
    job: &Job,
    vm: &mut Vm,
    stdin: UnixStream,
    out: &OutputRelay,
    err: &OutputRelay,
) -> Result<Ended, mu2_microvm::VmError> {
    let sender = vm.sender();
    let t_run = Instant::now();
    sender.send(&HostMsg::Run(Box::new(job.run.clone())))?;
    let prepared = vm.await_reply("Prepared after Run", |m| match m {
        GuestMsg::Prepared { .. } => Ok(None),
        GuestMsg::StartFailed { reason, message } => Ok(Some(format!("{reason:?}: {message}"))),
        other => Err(other),
    })?;
    if let Some(why) = prepared {
        let why = mu2_protocol::text::sanitize(why, MAX_LOG_LINE);
        return Ok(Ended::Failed(Failure::BadGateway(format!(
            "the command cannot start: {why}"
        ))));
    }
    let t_start = Instant::now();
    sender.send(&HostMsg::Start)?;
    let started = vm.await_reply("Started after Start", |m| match m {
        GuestMsg::Started { .. } => Ok(None),
        GuestMsg::StartFailed { reason, message } => Ok(Some(format!("{reason:?}: {message}"))),
        other => Err(other),
    })?;
    if let Some(why) = started {
        let why = mu2_protocol::text::sanitize(why, MAX_LOG_LINE);
        return Ok(Ended::Failed(Failure::BadGateway(format!(
            "the command cannot start: {why}"
        ))));
    }
    let t_started = Instant::now();
    // Only after Start: the agent relays stdin once the process runs.
    // The feeder ends with the body, or when the VM's port fails.
    if let Some(body) = lock(&job.body).take() {
        spawn_stdin(stdin, body, sender.clone());
    }
    // The watchdog bounds this wait; the margin only guards against a
    // watchdog that could not kill.
    let deadline = job.deadline + Duration::from_secs(5);
    let exit = match vm.next_event(Some(deadline)) {
        Some(AgentEvent::Msg(GuestMsg::Exit(e))) => e,
        Some(AgentEvent::Msg(other)) => {
            return Ok(Ended::Failed(Failure::BadGateway(format!(
                "the agent sent {} while the command ran",
                describe_msg(&other)
            ))))
        }
        Some(AgentEvent::Closed) => {
            return Ok(Ended::Failed(Failure::BadGateway(
                "the vm ended before the command exited".into(),
            )))
        }
        Some(AgentEvent::Broken(m)) => {
            return Ok(Ended::Failed(Failure::BadGateway(format!(
                "the agent broke the protocol: {m}"
            ))))
        }
        None => return Ok(Ended::Failed(Failure::Timeout)),
    };
    log::debug!(
        "request {}: run to prepared {} ms, start to started {} ms, started to exit {} ms",
        job.request,
        (t_start - t_run).as_millis(),
        (t_started - t_start).as_millis(),
        t_started.elapsed().as_millis()
    );
    let watch = DrainWatch::new(
        vec![exit.stdout_bytes, exit.stderr_bytes],
        vm.deadlines().drain,
    );
    loop {
        match watch.poll(&[out, err], false) {
            Drain::Pending => std::thread::sleep(DRAIN_POLL),
            Drain::Complete => break,
            Drain::Short { stream, got, want } => {
                return Ok(Ended::Failed(Failure::BadGateway(format!(
                    "the vm's {stream} was cut short: {got} of {want} bytes"
                ))))
            }
        }
    }
    // A cancel that raced the drain (the client left): not a success.
    if job.cancel.reason().is_some() {
        return Ok(Ended::Failed(Failure::ClientGone));
    }
    sender.send(&HostMsg::ExitAck)?;
    Ok(Ended::Exited(exit))
}

/// Writes the body to the VM's stdin, then says how much it was.
fn spawn_stdin(mut stdin: UnixStream, mut body: mpsc::Receiver<Bytes>, sender: ControlSender) {
    std::thread::spawn(move || {
        let mut total: u64 = 0;
        while let Some(chunk) = body.blocking_recv() {
            if stdin.write_all(&chunk).is_err() {
                // The VM is gone or the process will not read more.
                return;
            }
            total += chunk.len() as u64;
        }
        let _ = sender.send(&HostMsg::StdinClose { total_bytes: total });
    });
}
