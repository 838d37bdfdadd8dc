//! One QEMU microvm process: launch, readiness, the agent channel, kill and
//! reap.
//!
//! Channels are socketpairs: the VM's ends are inherited by QEMU as fd
//! numbers (see [`crate::qemu`]), ours stay here. When QEMU exits, for any
//! reason, every channel reads EOF, so no reader can hang on a dead VM.
//! QEMU gets `PR_SET_PDEATHSIG(SIGKILL)`: if the owning process dies, the
//! kernel kills the VMM (the signal follows the *thread* that spawned it, so
//! launch from a thread that lives as long as the VM). Dropping a [`Vm`]
//! kills and reaps it.
//!
//! The agent's messages are read by one thread per VM and handed over a
//! small bounded queue ([`Vm::next_event`]): every wait on the guest is a
//! wait on that queue with a deadline ([`crate::Deadlines`]), so a guest
//! that trickles a frame byte by byte cannot stretch it, and one that floods
//! frames is held back by the queue (and killed by its owner at the first
//! message out of turn). A frame that breaks the protocol ends the reading:
//! the owner kills the VM.
//!
//! A [`KillHandle`] kills the VM from any thread through a pidfd of QEMU —
//! the jailer, not us, reaps QEMU, so a bare pid could name a reused process.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mu2_protocol::{
    check_version, read_msg, write_msg, FrameError, GuestMsg, HostMsg, ProtocolError, Ready,
};

use crate::cgroup::{self, CgroupError, Limits, VmCgroup};
use crate::console::ConsoleTail;
use crate::deadlines::Deadlines;
use crate::jail::{self, JailError, JailMode, JailRequest, JailResources};
use crate::qemu::{self, ChannelFds};
use crate::record::{self, RecordError, RecordGuard};
use crate::spec::{SpecError, VmSpec};

/// How long a jailer has to kill and reap QEMU after SIGTERM.
const JAILER_GRACE: Duration = Duration::from_secs(5);
/// How many boots a VM gets when its guest comes up without a timer
/// (see init's timer check): each boot calibrates anew.
const BOOT_ATTEMPTS: u32 = 3;
/// Agent messages queued between the reader thread and the VM's owner.
const EVENT_QUEUE: usize = 8;

/// Lines of console shown in a boot-failure error.
pub const CONSOLE_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("invalid vm spec")]
    Spec(#[from] SpecError),
    #[error("cannot set up the host cgroup of vm {id}")]
    Cgroup {
        id: String,
        #[source]
        source: CgroupError,
    },
    #[error("cannot claim vm id {id}")]
    Record {
        id: String,
        #[source]
        source: RecordError,
    },
    #[error("cannot create the channels of vm {id}")]
    Channel {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot jail vm {id}")]
    Jail {
        id: String,
        #[source]
        source: JailError,
    },
    #[error("cannot start {qemu}")]
    Spawn {
        qemu: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot get a handle on the vmm of vm {id} (pid {pid})")]
    Pidfd {
        id: String,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("vm {id} was not ready within {timeout:?}; console tail:\n{console}")]
    NotReady {
        id: String,
        timeout: Duration,
        console: String,
    },
    #[error("the guest of vm {id} had no timer after {attempts} boots (its kernel disabled the APIC timer: the host is too loaded for TCG's calibration); console tail:\n{console}")]
    NoTimer {
        id: String,
        attempts: u32,
        console: String,
    },
    #[error("vm {id} exited before it was ready ({status}); qemu said: {stderr}\nconsole tail:\n{console}")]
    ExitedEarly {
        id: String,
        status: String,
        stderr: String,
        console: String,
    },
    #[error("the agent of vm {id} did not answer {what} within {timeout:?}; killed it; console tail:\n{console}")]
    Deadline {
        id: String,
        what: &'static str,
        timeout: Duration,
        console: String,
    },
    #[error("vm {id} ended while {what}; console tail:\n{console}")]
    Gone {
        id: String,
        what: &'static str,
        console: String,
    },
    #[error("agent of vm {id} broke the protocol")]
    Protocol {
        id: String,
        #[source]
        source: ProtocolError,
    },
    #[error("agent of vm {id} broke the protocol: {message}")]
    Broken { id: String, message: String },
    #[error("agent of vm {id} sent {got} where {want} was expected")]
    Unexpected {
        id: String,
        got: String,
        want: &'static str,
    },
    #[error("vm {id} did not take its identity: {reason}; killed it; console tail:\n{console}")]
    Identity {
        id: String,
        reason: crate::identity::IdentityError,
        console: String,
    },
    #[error("vm {id} did not resume from its template's state: {why}")]
    Resume { id: String, why: String },
}

/// What the agent's reader thread hands to the VM's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    Msg(GuestMsg),
    /// The control channel ended: QEMU exited (or closed it).
    Closed,
    /// The agent sent something that is not a valid frame or message; the
    /// reader stopped. The VM should be killed.
    Broken(String),
}

/// The VM's raw stdio streams.
pub struct VmStdio {
    pub stdin: UnixStream,
    pub stdout: UnixStream,
    pub stderr: UnixStream,
}

/// Sends control messages; cheap to clone and share between threads. A
/// write that the guest does not take within the `control_write` deadline
/// fails (the socket has a send timeout).
#[derive(Clone)]
pub struct ControlSender {
    id: Arc<str>,
    stream: Arc<Mutex<UnixStream>>,
    /// A leased VM's image is this directory of its root share: every Run
    /// sent says so (the caller's Run names the share only).
    root_subdir: Option<Arc<str>>,
}

impl ControlSender {
    pub fn send(&self, msg: &HostMsg) -> Result<(), VmError> {
        let patched;
        let msg = match (msg, &self.root_subdir) {
            (HostMsg::Run(run), Some(sub)) => {
                let mut run = run.clone();
                run.root.share_subdir = Some(sub.to_string());
                patched = HostMsg::Run(run);
                &patched
            }
            _ => msg,
        };
        let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        write_msg(&mut *s, msg).map_err(|source| VmError::Protocol {
            id: self.id.to_string(),
            source,
        })
    }
}

/// Kills a VM from any thread: SIGKILL to QEMU through a pidfd (after
/// thawing a paused VM, which would not die frozen). The VM's owner then
/// sees its channels end and reaps it.
#[derive(Clone)]
pub struct KillHandle {
    inner: Arc<KillInner>,
}

struct KillInner {
    id: String,
    qemu: OwnedFd,
    cgroup: Arc<VmCgroup>,
    killed: AtomicBool,
}

impl KillHandle {
    pub fn kill(&self) {
        self.inner.killed.store(true, Ordering::SeqCst);
        let _ = self.inner.cgroup.thaw();
        match crate::sys::pidfd_send_signal(self.inner.qemu.as_fd(), libc::SIGKILL) {
            Ok(()) => log::info!("vm {}: killed", self.inner.id),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => log::warn!("vm {}: cannot kill its vmm: {e}", self.inner.id),
        }
    }

    /// Whether [`KillHandle::kill`] was called.
    pub fn killed(&self) -> bool {
        self.inner.killed.load(Ordering::SeqCst)
    }
}

pub struct Vm {
    id: String,
    /// Who waits for the VMM: our child, or a leased VM's pidfds.
    vmm: Vmm,
    /// QEMU's pid as the host sees it.
    qemu_pid: u32,
    /// The jail's directory and id claim, released after the reap (a
    /// leased VM's are released through its record).
    jail: Option<JailResources>,
    /// The jail's directory, owned or leased.
    jail_dir: Option<PathBuf>,
    /// The VMM is gone (and reaped, when it is our child).
    reaped: bool,
    status: Option<ExitStatus>,
    sender: ControlSender,
    events: Receiver<AgentEvent>,
    /// The reader thread said Closed (or stopped): later waits return at once.
    closed: bool,
    stdio: Option<VmStdio>,
    console: ConsoleTail,
    threads: Vec<JoinHandle<()>>,
    ready: Ready,
    boot_time: Duration,
    deadlines: Deadlines,
    kill: KillHandle,
    // Removed by Drop for Vm once QEMU is reaped; shared with
    // [`CgroupHandle`]s, which then fail.
    cgroup: Arc<VmCgroup>,
    /// The VM's ownership record, released once all of it is gone.
    record: RecordGuard,
    /// The QMP channel of a template being built.
    qmp: Option<UnixStream>,
    /// A warm VM's QMP session, and whether it was stopped through it
    /// ([`Vm::stop_warm`], [`Vm::cont`]).
    monitor: Option<crate::qmp::Qmp>,
    stopped: bool,
    /// Resumed from a template rather than booted.
    restored: bool,
    /// A warm VM of a pool: its channels are not read until it is leased
    /// ([`crate::pool`]), so these are held whole.
    dormant: Option<Dormant>,
    /// Handed to a lease: dropping leaves the VM to its new owner.
    handed_over: bool,
}

/// The unread channels of a warm VM, and its lifeline (given by the pool
/// once QEMU runs).
pub(crate) struct Dormant {
    pub(crate) console: UnixStream,
    pub(crate) control: UnixStream,
    pub(crate) lifeline: Option<OwnedFd>,
}

/// Who waits for the VMM.
enum Vmm {
    /// QEMU itself, or, when jailed, the jailer (QEMU's parent).
    Child(Child),
    /// A VM leased from a pool: the jailer is the pool's child. We hold
    /// pidfds of the jailer and QEMU, and the lifeline: closing it makes
    /// the jailer kill QEMU.
    Leased { jailer: OwnedFd, _lifeline: OwnedFd },
    /// Handed over to a lease.
    None,
}

impl Vmm {
    /// `Some` once the VMM is gone (its status when it was our child).
    fn try_wait(&mut self) -> Option<Option<ExitStatus>> {
        match self {
            Vmm::Child(c) => match c.try_wait() {
                Ok(Some(s)) => Some(Some(s)),
                Ok(None) => None,
                Err(_) => Some(None),
            },
            Vmm::Leased { jailer, .. } => crate::sys::pidfd_exited(jailer.as_fd()).then_some(None),
            Vmm::None => Some(None),
        }
    }

    /// Asks the jailer to end QEMU (SIGTERM).
    fn terminate(&self) {
        match self {
            Vmm::Child(c) => {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            Vmm::Leased { jailer, .. } => {
                let _ = crate::sys::pidfd_send_signal(jailer.as_fd(), libc::SIGTERM);
            }
            Vmm::None => {}
        }
    }

    fn force_kill(&mut self) {
        match self {
            Vmm::Child(c) => {
                let _ = c.kill();
            }
            Vmm::Leased { jailer, .. } => {
                let _ = crate::sys::pidfd_send_signal(jailer.as_fd(), libc::SIGKILL);
            }
            Vmm::None => {}
        }
    }

    /// Waits for the VMM to be gone: a child is reaped; a leased VM's
    /// jailer, dying once QEMU is, gets [`JAILER_GRACE`].
    fn wait(&mut self) -> Option<ExitStatus> {
        match self {
            Vmm::Child(c) => c.wait().ok(),
            Vmm::Leased { jailer, .. } => {
                crate::sys::pidfd_wait_exit(jailer.as_fd(), JAILER_GRACE);
                None
            }
            Vmm::None => None,
        }
    }
}

/// How long a warm VM's `stop` or `cont` may take (a lessee waits on it).
const CONT_DEADLINE: Duration = Duration::from_secs(2);

/// How a VM comes up.
pub(crate) enum Start<'a> {
    /// A cold boot to the agent's Ready, then the VM's own identity.
    Boot,
    /// A cold boot to Ready and no further, with a QMP channel: the VM a
    /// template is taken from ([`crate::template`]). `ram`: its guest RAM
    /// is this memfd, mapped shared (a shared template's), not QEMU's own.
    Template { ram: Option<RawFd> },
    /// Resumed from a template's saved state; `ready` is what its agent
    /// said when the template was taken. `ram`: the state was saved
    /// without the RAM (`x-ignore-shared`), which is this sealed memfd,
    /// mapped copy-on-write.
    Restore {
        state: &'a std::fs::File,
        ready: Ready,
        ram: Option<RawFd>,
    },
    /// Resumed from a template for a pool: no identity yet, no reader on
    /// its channels (they go to whoever leases it), and a jailer that lives
    /// by `lifeline` (the read end of a pipe) rather than by its parent.
    Warm {
        state: &'a std::fs::File,
        ready: Ready,
        ram: Option<RawFd>,
        lifeline: RawFd,
    },
}

impl Start<'_> {
    fn state(&self) -> Option<&std::fs::File> {
        match self {
            Start::Restore { state, .. } | Start::Warm { state, .. } => Some(state),
            _ => None,
        }
    }

    fn ready(&self) -> Option<&Ready> {
        match self {
            Start::Restore { ready, .. } | Start::Warm { ready, .. } => Some(ready),
            _ => None,
        }
    }

    /// Where the guest RAM is, as QEMU's command line says it.
    fn ram(&self) -> qemu::GuestRam {
        match self {
            Start::Template { ram: Some(fd) } => qemu::GuestRam::File {
                fd: *fd,
                shared: true,
            },
            Start::Restore { ram: Some(fd), .. } | Start::Warm { ram: Some(fd), .. } => {
                qemu::GuestRam::File {
                    fd: *fd,
                    shared: false,
                }
            }
            _ => qemu::GuestRam::Anonymous,
        }
    }

    /// A clone whose state was saved without its RAM: it comes in over
    /// QMP, once `x-ignore-shared` is set on its side too.
    fn deferred(&self) -> bool {
        self.state().is_some() && self.ram() != qemu::GuestRam::Anonymous
    }

    fn incoming(&self) -> Option<qemu::Incoming> {
        let state = self.state()?;
        Some(if self.deferred() {
            qemu::Incoming::Defer
        } else {
            qemu::Incoming::Fd(state.as_raw_fd())
        })
    }
}

struct Pair {
    ours: UnixStream,
    theirs: UnixStream,
}

fn pair(id: &str) -> Result<Pair, VmError> {
    let (ours, theirs) = UnixStream::pair().map_err(|source| VmError::Channel {
        id: id.to_string(),
        source,
    })?;
    Ok(Pair { ours, theirs })
}

/// The host's ends of a VM's channels, prepared before QEMU starts so that
/// nothing fallible remains between its spawn and the [`Vm`] that reaps it.
struct HostEnds {
    console: UnixStream,
    control_reader: UnixStream,
    control_writer: UnixStream,
    stdio: VmStdio,
}

impl Vm {
    /// Starts QEMU for `spec` and waits for the agent's Ready. A guest that
    /// comes up without a timer (a TCG calibration disturbed by host load)
    /// is booted again, up to [`BOOT_ATTEMPTS`] times.
    pub fn launch(spec: &VmSpec) -> Result<Vm, VmError> {
        spec.validate()?;
        if let crate::pool::PoolMode::Use {
            socket,
            lease_timeout,
        } = &spec.pool
        {
            if let Some(vm) = crate::pool::client::lease(spec, socket, *lease_timeout) {
                return Ok(vm);
            }
        }
        if let crate::template::TemplateMode::Use {
            dir,
            build,
            max_bytes,
        } = &spec.templates
        {
            if let Some(vm) = crate::template::restore_or_build(spec, dir, *build, *max_bytes)? {
                return Ok(vm);
            }
        }
        Self::boot(spec, &Start::Boot)
    }

    /// A cold boot, again if the guest came up without a timer.
    pub(crate) fn boot(spec: &VmSpec, how: &Start<'_>) -> Result<Vm, VmError> {
        let mut attempt = 1;
        loop {
            match Self::launch_once(spec, how) {
                Err(VmError::ExitedEarly { console, .. })
                    if console.contains(mu2_protocol::console::NO_TIMER) =>
                {
                    if attempt == BOOT_ATTEMPTS {
                        return Err(VmError::NoTimer {
                            id: spec.id.clone(),
                            attempts: attempt,
                            console,
                        });
                    }
                    log::warn!(
                        "vm {}: the guest came up without a timer (a loaded host disturbed its calibration); booting again ({} of {BOOT_ATTEMPTS})",
                        spec.id,
                        attempt + 1
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    pub(crate) fn launch_once(spec: &VmSpec, how: &Start<'_>) -> Result<Vm, VmError> {
        let started = Instant::now();
        let id = spec.id.clone();
        // Before anything of the VM exists: the record claims its id (and
        // collects what dead owners left).
        let mut record = record::claim_for(spec).map_err(|source| VmError::Record {
            id: id.clone(),
            source,
        })?;
        if let Some(dir) = &spec.owned_dir {
            // Named by the record first: whatever happens next, the
            // collector finds it.
            record.set_share_dir(dir);
            crate::pool::make_share_dir(dir).map_err(|source| VmError::Channel {
                id: id.clone(),
                source,
            })?;
        }
        let cgroup = VmCgroup::create(&id, Limits::for_vm(spec.memory_mib, spec.vcpus)).map_err(
            |source| VmError::Cgroup {
                id: id.clone(),
                source,
            },
        )?;
        record.set_cgroups(cgroup.dirs());
        let cgroup = Arc::new(cgroup);
        let channel_err = |source| VmError::Channel {
            id: id.clone(),
            source,
        };
        let console = pair(&id)?;
        let control = pair(&id)?;
        let stdin = pair(&id)?;
        let stdout = pair(&id)?;
        let stderr = pair(&id)?;
        let qmp = match how {
            Start::Template { .. } | Start::Warm { .. } => Some(pair(&id)?),
            _ if how.deferred() => Some(pair(&id)?),
            _ => None,
        };
        control
            .ours
            .set_write_timeout(Some(spec.deadlines.control_write))
            .map_err(channel_err)?;
        let ends = HostEnds {
            console: console.ours,
            control_reader: control.ours.try_clone().map_err(channel_err)?,
            control_writer: control.ours,
            stdio: VmStdio {
                stdin: stdin.ours,
                stdout: stdout.ours,
                stderr: stderr.ours,
            },
        };
        let fds = ChannelFds {
            console: console.theirs.as_raw_fd(),
            control: control.theirs.as_raw_fd(),
            stdin: stdin.theirs.as_raw_fd(),
            stdout: stdout.theirs.as_raw_fd(),
            stderr: stderr.theirs.as_raw_fd(),
            qmp: qmp.as_ref().map(|p| p.theirs.as_raw_fd()),
            incoming: how.incoming(),
            ram: how.ram(),
        };
        let tsc = match spec.accel {
            crate::Accel::Tcg => crate::accel::host_tsc_khz(),
            crate::Accel::Kvm => None,
        };
        let procs = cgroup.procs_fds();
        let mut channel_fds = vec![fds.console, fds.control, fds.stdin, fds.stdout, fds.stderr];
        channel_fds.extend(fds.qmp);
        // A deferred clone's state is read by its number too
        // (`migrate-incoming fd:N`).
        channel_fds.extend(how.state().map(|s| s.as_raw_fd()));
        if let qemu::GuestRam::File { fd, .. } = fds.ram {
            channel_fds.push(fd);
        }
        let (child, qemu_pid, jail, qemu_stderr) = match &spec.jail {
            JailMode::Disabled { .. } if matches!(how, Start::Warm { .. }) => {
                return Err(VmError::Jail {
                    id: id.clone(),
                    source: JailError::Input("a pooled VM must be jailed".into()),
                });
            }
            JailMode::Disabled { .. } => {
                let args = qemu::command_line(spec, fds, tsc, None);
                log::debug!("vm {id}: {} {}", spec.qemu.display(), args.join(" "));
                let mut cmd = Command::new(&spec.qemu);
                cmd.args(&args)
                    .env_clear()
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                let huge_pages = spec.accel.huge_pages();
                crate::sys::prepare_child(&mut cmd, channel_fds, procs, huge_pages);
                let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
                    qemu: spec.qemu.display().to_string(),
                    source,
                })?;
                let pid = child.id();
                let stderr = child.stderr.take();
                (child, pid, None, stderr)
            }
            JailMode::Jailed(cfg) => {
                let jail_err = |source| VmError::Jail {
                    id: id.clone(),
                    source,
                };
                let program =
                    find_program(&spec.qemu).map_err(|e| jail_err(JailError::Input(e)))?;
                let view = spec.jail_view();
                let args = qemu::command_line(&view, fds, tsc, Some(Path::new(qemu::QMP_SOCKET)));
                log::debug!("vm {id}: jailed {} {}", program.display(), args.join(" "));
                let req = JailRequest {
                    id: id.clone(),
                    system_files: qemu::data_files(&program, spec.accel),
                    program,
                    args,
                    inputs: vec![
                        (spec.kernel.clone(), view.kernel.clone()),
                        (spec.initrd.clone(), view.initrd.clone()),
                    ],
                    shares: spec
                        .shares
                        .iter()
                        .zip(&view.shares)
                        .map(|(s, v)| (s.host_path.clone(), v.host_path.clone(), s.readonly))
                        .collect(),
                    keep_fds: channel_fds,
                    cgroup_procs: procs,
                    kvm: spec.accel == crate::Accel::Kvm,
                    huge_pages: spec.accel.huge_pages(),
                    start_deadline: spec.deadlines.jailer,
                    lifeline: match how {
                        Start::Warm { lifeline, .. } => Some(*lifeline),
                        _ => None,
                    },
                };
                let j = jail::spawn(cfg, &req).map_err(jail_err)?;
                (j.jailer, j.pid, Some(j.resources), j.stderr)
            }
        };
        record.set_vmm(qemu_pid, jail.as_ref().map(|_| child.id()));
        if let Some(j) = &jail {
            record.set_jail(&j.dir, j.claim_path());
        }
        // QEMU holds its ends now; ours must go so that QEMU's exit reads
        // as EOF here.
        drop((
            console.theirs,
            control.theirs,
            stdin.theirs,
            stdout.theirs,
            stderr.theirs,
        ));
        let qmp = qmp.map(|p| p.ours);
        Self::assemble(
            how,
            qmp,
            spec,
            started,
            child,
            qemu_pid,
            jail,
            qemu_stderr,
            ends,
            cgroup,
            record,
        )
    }

    /// Everything after QEMU's spawn: nothing here may leave it running
    /// (every error path drops a Vm, which kills and reaps).
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        how: &Start<'_>,
        qmp: Option<UnixStream>,
        spec: &VmSpec,
        started: Instant,
        mut child: Child,
        qemu_pid: u32,
        jail: Option<JailResources>,
        qemu_stderr: Option<std::process::ChildStderr>,
        ends: HostEnds,
        cgroup: Arc<VmCgroup>,
        record: RecordGuard,
    ) -> Result<Vm, VmError> {
        let id = spec.id.clone();
        let qemu = match vmm_pidfd(&mut child, qemu_pid, jail.is_some()) {
            Ok(fd) => fd,
            Err(source) => {
                // Not a Vm yet: kill and reap by hand.
                let _ = child.kill();
                let _ = cgroup.thaw();
                let _ = child.wait();
                cgroup.remove();
                drop(jail);
                return Err(VmError::Pidfd {
                    id,
                    pid: qemu_pid,
                    source,
                });
            }
        };
        let kill = KillHandle {
            inner: Arc::new(KillInner {
                id: id.clone(),
                qemu,
                cgroup: Arc::clone(&cgroup),
                killed: AtomicBool::new(false),
            }),
        };
        let warm = matches!(how, Start::Warm { .. });
        let (console_tail, events, threads, dormant) = if warm {
            // Nobody reads a warm VM's channels: its lessee will.
            let (_, events) = mpsc::sync_channel(0);
            let dormant = Dormant {
                console: ends.console,
                control: ends.control_reader,
                lifeline: None,
            };
            (ConsoleTail::default(), events, Vec::new(), Some(dormant))
        } else {
            let (console_tail, console_thread) = ConsoleTail::spawn(ends.console, spec.debug);
            let (events_tx, events) = mpsc::sync_channel(EVENT_QUEUE);
            let reader = spawn_reader(ends.control_reader, events_tx);
            (console_tail, events, vec![console_thread, reader], None)
        };
        let qemu_stderr = qemu_stderr.map(read_to_tail);
        let _ = child.stderr.take();
        let jail_dir = jail.as_ref().map(|j| j.dir.clone());
        let mut vm = Vm {
            id: id.clone(),
            vmm: Vmm::Child(child),
            qemu_pid,
            jail,
            jail_dir,
            reaped: false,
            status: None,
            sender: ControlSender {
                id: id.clone().into(),
                stream: Arc::new(Mutex::new(ends.control_writer)),
                root_subdir: None,
            },
            events,
            closed: false,
            stdio: Some(ends.stdio),
            console: console_tail,
            threads,
            ready: Ready {
                protocol_version: 0,
                agent_version: String::new(),
                kernel_release: String::new(),
                uptime_ns: 0,
            },
            boot_time: Duration::ZERO,
            deadlines: spec.deadlines,
            kill,
            cgroup,
            record,
            qmp,
            monitor: None,
            stopped: false,
            restored: how.state().is_some(),
            dormant,
            handed_over: false,
        };
        let up = match how.ready() {
            None => vm.await_ready(spec.deadlines.ready, started),
            Some(ready) if how.deferred() || warm => {
                let qmp = vm
                    .take_qmp()
                    .expect("a deferred or warm clone has a QMP channel");
                let state = how
                    .deferred()
                    .then(|| how.state().expect("a clone has a state").as_raw_fd());
                crate::template::resume(&id, qmp, state, spec.deadlines.reply).map(|q| {
                    // A warm VM keeps its monitor: its lease lets it run.
                    if warm {
                        vm.monitor = Some(q);
                    }
                    ready.clone()
                })
            }
            Some(ready) => Ok(ready.clone()),
        };
        match up {
            Ok(ready) => {
                vm.ready = ready;
                // A template's VM stays as it booted, and so does a warm
                // one until it is leased; every other VM takes its own
                // identity before anything else (for a clone, its
                // Identified is also the sign it resumed).
                if !matches!(how, Start::Template { .. } | Start::Warm { .. }) {
                    crate::identity::identify(&mut vm)?;
                }
                vm.boot_time = started.elapsed();
                // The stderr reader ends with QEMU; keep its handle to join.
                if let Some((_, h)) = qemu_stderr {
                    vm.threads.push(h);
                }
                log::info!(
                    "vm {id}: {} in {:?} (pid {}, kernel {})",
                    match how {
                        Start::Restore { .. } => "restored",
                        Start::Warm { .. } => "restored warm",
                        _ => "ready",
                    },
                    vm.boot_time,
                    vm.pid(),
                    vm.ready.kernel_release
                );
                Ok(vm)
            }
            Err(e) => {
                vm.kill();
                let e = match e {
                    VmError::ExitedEarly { id, status, .. } => VmError::ExitedEarly {
                        id,
                        status,
                        stderr: qemu_stderr
                            .map(|(tail, h)| {
                                let _ = h.join();
                                tail.tail(5)
                            })
                            .unwrap_or_default(),
                        console: vm.console_tail(CONSOLE_TAIL_LINES),
                    },
                    VmError::NotReady { id, timeout, .. } => VmError::NotReady {
                        id,
                        timeout,
                        console: vm.console_tail(CONSOLE_TAIL_LINES),
                    },
                    VmError::Resume { id, why } => VmError::Resume {
                        id,
                        why: match qemu_stderr.map(|(tail, h)| {
                            let _ = h.join();
                            tail.tail(5)
                        }) {
                            Some(said) if !said.is_empty() => format!("{why}; qemu said: {said}"),
                            _ => why,
                        },
                    },
                    other => other,
                };
                Err(e)
            }
        }
    }

    /// Ready as one whole frame within the deadline: the clock runs from the
    /// launch, however the guest paces its bytes.
    fn await_ready(&mut self, timeout: Duration, started: Instant) -> Result<Ready, VmError> {
        match self.next_event(Some(started + timeout)) {
            Some(AgentEvent::Msg(GuestMsg::Ready(r))) => {
                check_version(&r).map_err(|source| VmError::Protocol {
                    id: self.id.clone(),
                    source,
                })?;
                Ok(r)
            }
            Some(AgentEvent::Msg(other)) => Err(VmError::Unexpected {
                id: self.id.clone(),
                got: describe_msg(&other),
                want: "Ready",
            }),
            Some(AgentEvent::Closed) => {
                let status = self.wait_reaped();
                Err(VmError::ExitedEarly {
                    id: self.id.clone(),
                    status: status.map(|s| s.to_string()).unwrap_or_default(),
                    stderr: String::new(),
                    console: String::new(),
                })
            }
            Some(AgentEvent::Broken(message)) => Err(VmError::Broken {
                id: self.id.clone(),
                message,
            }),
            None => Err(VmError::NotReady {
                id: self.id.clone(),
                timeout,
                console: String::new(),
            }),
        }
    }

    /// The next event from the agent, or `None` once `deadline` passed.
    /// After the channel ended every call answers [`AgentEvent::Closed`].
    pub fn next_event(&mut self, deadline: Option<Instant>) -> Option<AgentEvent> {
        if self.closed {
            return Some(AgentEvent::Closed);
        }
        let got = match deadline {
            None => self
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => self
                .events
                .recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        match got {
            Ok(AgentEvent::Closed) | Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                Some(AgentEvent::Closed)
            }
            Ok(e @ AgentEvent::Broken(_)) => {
                self.closed = true;
                Some(e)
            }
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    /// Waits (with the `reply` deadline) for the agent's answer to a
    /// request: the first message `accept` takes. Anything else, a deadline
    /// missed or the VM's end kills the VM and is an error naming `what`.
    pub fn await_reply<T>(
        &mut self,
        what: &'static str,
        mut accept: impl FnMut(GuestMsg) -> Result<T, GuestMsg>,
    ) -> Result<T, VmError> {
        let timeout = self.deadlines.reply;
        let deadline = Instant::now() + timeout;
        let err = match self.next_event(Some(deadline)) {
            Some(AgentEvent::Msg(m)) => match accept(m) {
                Ok(t) => return Ok(t),
                Err(other) => VmError::Unexpected {
                    id: self.id.clone(),
                    got: describe_msg(&other),
                    want: what,
                },
            },
            Some(AgentEvent::Closed) => {
                self.finish(Duration::ZERO);
                return Err(VmError::Gone {
                    id: self.id.clone(),
                    what,
                    console: self.console_tail(CONSOLE_TAIL_LINES),
                });
            }
            Some(AgentEvent::Broken(message)) => VmError::Broken {
                id: self.id.clone(),
                message,
            },
            None => VmError::Deadline {
                id: self.id.clone(),
                what,
                timeout,
                console: String::new(),
            },
        };
        self.kill();
        Err(match err {
            VmError::Deadline {
                id, what, timeout, ..
            } => VmError::Deadline {
                id,
                what,
                timeout,
                console: self.console_tail(CONSOLE_TAIL_LINES),
            },
            other => other,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.qemu_pid
    }

    /// The deadlines this VM runs under.
    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    /// Whether QEMU runs in a jail.
    pub fn jailed(&self) -> bool {
        self.jail_dir.is_some()
    }

    /// The jail's directory on the host (empty there: the jail is a tmpfs
    /// in QEMU's own mount namespace, seen at /proc/PID/root).
    pub fn jail_dir(&self) -> Option<&Path> {
        self.jail_dir.as_deref()
    }

    /// The QMP socket, reached through QEMU's root (jailed VMs only).
    pub fn qmp_path(&self) -> Option<std::path::PathBuf> {
        self.jail_dir.as_ref().map(|_| {
            std::path::PathBuf::from(format!("/proc/{}/root{}", self.qemu_pid, qemu::QMP_SOCKET))
        })
    }

    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Wall time from launch to the agent's Ready.
    /// Whether the VM was resumed from a template rather than booted.
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// The QMP channel of a template's VM (taken once).
    pub(crate) fn take_qmp(&mut self) -> Option<UnixStream> {
        self.qmp.take()
    }

    /// Stops a warm VM that has settled since it resumed: idle under TCG,
    /// a running guest still costs ~35 ms of CPU a second (its timers).
    pub(crate) fn stop_warm(&mut self) -> Result<(), VmError> {
        let Some(q) = self.monitor.as_mut() else {
            return Ok(());
        };
        q.execute("stop", serde_json::json!({}), CONT_DEADLINE)
            .map_err(|e| VmError::Resume {
                id: self.id.clone(),
                why: format!("stop: {e}"),
            })?;
        self.stopped = true;
        Ok(())
    }

    /// Lets a warm VM that [`Vm::stop_warm`] stopped run again (the pool
    /// does so as it leases it); its monitor closes either way.
    pub(crate) fn cont(&mut self) -> Result<(), VmError> {
        let Some(mut q) = self.monitor.take() else {
            return Ok(());
        };
        if !std::mem::take(&mut self.stopped) {
            return Ok(());
        }
        q.execute("cont", serde_json::json!({}), CONT_DEADLINE)
            .map(|_| ())
            .map_err(|e| VmError::Resume {
                id: self.id.clone(),
                why: format!("cont: {e}"),
            })
    }

    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The VM's stdio streams; `None` after the first call.
    pub fn take_stdio(&mut self) -> Option<VmStdio> {
        self.stdio.take()
    }

    pub fn sender(&self) -> ControlSender {
        self.sender.clone()
    }

    /// Kills the VM from any thread.
    pub fn kill_handle(&self) -> KillHandle {
        self.kill.clone()
    }

    pub fn console_tail(&self, lines: usize) -> String {
        self.console.tail(lines)
    }

    /// Waits up to `grace` for QEMU to end by itself (the guest powers off
    /// when its process is done), then kills it. Returns QEMU's status.
    pub fn finish(&mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            if self.poll_gone() {
                return self.status;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !grace.is_zero() {
            log::warn!(
                "vm {}: did not power off within {grace:?}; killing it",
                self.id
            );
        }
        self.kill();
        self.status
    }

    /// Whether the VMM is gone (reaping it if it is our child).
    fn poll_gone(&mut self) -> bool {
        if !self.reaped {
            if let Some(status) = self.vmm.try_wait() {
                self.reaped = true;
                self.status = status;
            }
        }
        self.reaped
    }

    /// A handle on the VMM's cgroup (pause, resume, stats) that other
    /// threads may hold while this Vm is busy; it outlives the VM harmlessly.
    pub fn cgroup_handle(&self) -> CgroupHandle {
        CgroupHandle {
            id: self.id.clone(),
            cgroup: Arc::clone(&self.cgroup),
        }
    }

    /// Pauses the whole VM (every VMM thread is frozen).
    pub fn pause(&self) -> Result<(), VmError> {
        self.cgroup_handle().pause()
    }

    /// Resumes a paused VM.
    pub fn resume(&self) -> Result<(), VmError> {
        self.cgroup_handle().resume()
    }

    /// CPU, memory and pids of the VMM's cgroup.
    pub fn stats(&self) -> Result<cgroup::Stats, VmError> {
        self.cgroup_handle().stats()
    }

    /// The host cgroup directories of the VMM.
    pub fn cgroup_dirs(&self) -> &[std::path::PathBuf] {
        self.cgroup.dirs()
    }

    /// Kills QEMU and reaps it (and its jailer). Idempotent.
    pub fn kill(&mut self) {
        if self.reaped || self.handed_over {
            return;
        }
        if self.jail_dir.is_none() {
            self.kill.kill();
            self.wait_reaped();
            return;
        }
        // The jailer kills QEMU, reaps it and exits: once it is gone, QEMU
        // is gone too.
        self.vmm.terminate();
        let _ = self.cgroup.thaw();
        let deadline = Instant::now() + JAILER_GRACE;
        while Instant::now() < deadline {
            if self.poll_gone() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        log::warn!(
            "vm {}: the jailer did not end; killing it and QEMU",
            self.id
        );
        self.kill.kill();
        self.vmm.force_kill();
        self.wait_reaped();
    }

    fn wait_reaped(&mut self) -> Option<ExitStatus> {
        if !self.reaped {
            self.status = self.vmm.wait();
            self.reaped = true;
        }
        self.status
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.handed_over {
            // Everything of it is its lessee's now.
            return;
        }
        self.kill();
        // The reader may be blocked handing a message to a full queue
        // (a flooding guest): its receiver must go before it is joined.
        let (_, closed) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.events, closed));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.cgroup.remove();
        drop(self.jail.take());
        self.record.release();
    }
}

/// A warm VM's channels and handles as they cross the pool's socket, in
/// this order (see [`crate::pool`]).
pub(crate) struct LeaseFds {
    pub(crate) console: OwnedFd,
    pub(crate) control: OwnedFd,
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    pub(crate) qemu: OwnedFd,
    pub(crate) jailer: OwnedFd,
    pub(crate) lifeline: OwnedFd,
}

impl LeaseFds {
    pub(crate) const COUNT: usize = 8;

    pub(crate) fn into_vec(self) -> Vec<OwnedFd> {
        vec![
            self.console,
            self.control,
            self.stdin,
            self.stdout,
            self.stderr,
            self.qemu,
            self.jailer,
            self.lifeline,
        ]
    }

    pub(crate) fn from_vec(v: Vec<OwnedFd>) -> Option<LeaseFds> {
        let [console, control, stdin, stdout, stderr, qemu, jailer, lifeline]: [OwnedFd;
            Self::COUNT] = v.try_into().ok()?;
        Some(LeaseFds {
            console,
            control,
            stdin,
            stdout,
            stderr,
            qemu,
            jailer,
            lifeline,
        })
    }
}

/// What a lessee learns of a warm VM besides its fds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseInfo {
    pub id: String,
    pub qemu_pid: u32,
    pub jailer_pid: u32,
    pub protocol_version: u32,
    pub agent_version: String,
    pub kernel_release: String,
    pub uptime_ns: u64,
    pub jail_dir: PathBuf,
    pub cgroups: Vec<PathBuf>,
    /// The record's owner until the lessee takes it over.
    pub owner: crate::record::Owner,
}

impl Vm {
    /// A warm VM: sets the write end of its lifeline (the jailer kills QEMU
    /// once every copy of it is closed).
    pub(crate) fn set_lifeline(&mut self, w: OwnedFd) {
        if let Some(d) = &mut self.dormant {
            d.lifeline = Some(w);
        }
    }

    /// Copies of a warm VM's fds and what a lessee needs to adopt it; the
    /// VM stays ours until [`Vm::hand_over`].
    pub(crate) fn lease_parts(&self) -> io::Result<(LeaseInfo, LeaseFds)> {
        let d = self
            .dormant
            .as_ref()
            .ok_or_else(|| io::Error::other("not a warm VM"))?;
        let lifeline = d
            .lifeline
            .as_ref()
            .ok_or_else(|| io::Error::other("no lifeline"))?;
        let stdio = self
            .stdio
            .as_ref()
            .ok_or_else(|| io::Error::other("stdio taken"))?;
        let Vmm::Child(child) = &self.vmm else {
            return Err(io::Error::other("not our child"));
        };
        let dup = |s: &UnixStream| s.try_clone().map(OwnedFd::from);
        let fds = LeaseFds {
            console: dup(&d.console)?,
            control: dup(&d.control)?,
            stdin: dup(&stdio.stdin)?,
            stdout: dup(&stdio.stdout)?,
            stderr: dup(&stdio.stderr)?,
            qemu: self.kill.inner.qemu.try_clone()?,
            // Our unreaped child: its pid names it.
            jailer: crate::sys::pidfd_open(child.id())?,
            lifeline: lifeline.try_clone()?,
        };
        let info = LeaseInfo {
            id: self.id.clone(),
            qemu_pid: self.qemu_pid,
            jailer_pid: child.id(),
            protocol_version: self.ready.protocol_version,
            agent_version: self.ready.agent_version.clone(),
            kernel_release: self.ready.kernel_release.clone(),
            uptime_ns: self.ready.uptime_ns,
            jail_dir: self.jail_dir.clone().unwrap_or_default(),
            cgroups: self.cgroup.dirs().to_vec(),
            owner: self.record.record().owner.clone(),
        };
        Ok((info, fds))
    }

    /// Whether a warm VM's QEMU still runs.
    pub(crate) fn alive(&mut self) -> bool {
        !crate::sys::pidfd_exited(self.kill.inner.qemu.as_fd()) && !self.poll_gone()
    }

    /// Lets go of a warm VM its lessee took over: nothing of it is removed
    /// here (the record, cgroup, jail and claim are the lessee's); the
    /// jailer, our child, is returned to be reaped when it ends.
    pub(crate) fn hand_over(mut self) -> Option<Child> {
        self.handed_over = true;
        self.record.disown();
        self.cgroup.disown();
        if let Some(j) = self.jail.take() {
            j.disown();
        }
        match std::mem::replace(&mut self.vmm, Vmm::None) {
            Vmm::Child(c) => Some(c),
            _ => None,
        }
    }

    /// Adopts a VM leased from a pool, whose record `record` this process
    /// now holds: starts its readers, then gives it its identity. Any error
    /// kills it (the lifeline closes with the Vm).
    pub(crate) fn adopt(
        spec: &VmSpec,
        info: LeaseInfo,
        fds: LeaseFds,
        record: RecordGuard,
        root_subdir: Option<&str>,
        started: Instant,
    ) -> Result<Vm, VmError> {
        let id = info.id.clone();
        let cgroup = VmCgroup::adopt(&id, &info.cgroups).map_err(|source| VmError::Cgroup {
            id: id.clone(),
            source,
        })?;
        let cgroup = Arc::new(cgroup);
        let kill = KillHandle {
            inner: Arc::new(KillInner {
                id: id.clone(),
                qemu: fds.qemu,
                cgroup: Arc::clone(&cgroup),
                killed: AtomicBool::new(false),
            }),
        };
        let channel_err = |source| VmError::Channel {
            id: id.clone(),
            source,
        };
        let control = UnixStream::from(fds.control);
        control
            .set_write_timeout(Some(spec.deadlines.control_write))
            .map_err(channel_err)?;
        let reader_end = control.try_clone().map_err(channel_err)?;
        let (console_tail, console_thread) =
            ConsoleTail::spawn(UnixStream::from(fds.console), spec.debug);
        let (events_tx, events) = mpsc::sync_channel(EVENT_QUEUE);
        let reader = spawn_reader(reader_end, events_tx);
        let mut vm = Vm {
            id: id.clone(),
            vmm: Vmm::Leased {
                jailer: fds.jailer,
                _lifeline: fds.lifeline,
            },
            qemu_pid: info.qemu_pid,
            jail: None,
            jail_dir: Some(info.jail_dir),
            reaped: false,
            status: None,
            sender: ControlSender {
                id: id.clone().into(),
                stream: Arc::new(Mutex::new(control)),
                root_subdir: root_subdir.map(Into::into),
            },
            events,
            closed: false,
            stdio: Some(VmStdio {
                stdin: UnixStream::from(fds.stdin),
                stdout: UnixStream::from(fds.stdout),
                stderr: UnixStream::from(fds.stderr),
            }),
            console: console_tail,
            threads: vec![console_thread, reader],
            ready: Ready {
                protocol_version: info.protocol_version,
                agent_version: info.agent_version,
                kernel_release: info.kernel_release,
                uptime_ns: info.uptime_ns,
            },
            boot_time: Duration::ZERO,
            deadlines: spec.deadlines,
            kill,
            cgroup,
            record,
            qmp: None,
            monitor: None,
            stopped: false,
            restored: true,
            dormant: None,
            handed_over: false,
        };
        check_version(&vm.ready).map_err(|source| VmError::Protocol {
            id: id.clone(),
            source,
        })?;
        crate::identity::identify(&mut vm)?;
        vm.boot_time = started.elapsed();
        Ok(vm)
    }

    pub(crate) fn set_boot_time(&mut self, t: Duration) {
        self.boot_time = t;
    }

    /// QEMU's pidfd, borrowed.
    pub(crate) fn qemu_pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.kill.inner.qemu.as_fd()
    }
}

/// A pidfd of the VMM. Unjailed, QEMU is our own unreaped child, so its pid
/// is still its own. Jailed, QEMU is the jailer's child: the pidfd is taken,
/// then QEMU's parent is checked to be our (unreaped) jailer — a pid reused
/// by another process would have another parent.
fn vmm_pidfd(child: &mut Child, qemu_pid: u32, jailed: bool) -> io::Result<OwnedFd> {
    let fd = crate::sys::pidfd_open(qemu_pid)?;
    if jailed {
        let stat = std::fs::read_to_string(format!("/proc/{qemu_pid}/stat"))?;
        // The command name may hold spaces and parentheses: fields start
        // after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(child.id()) {
            return Err(io::Error::other(format!(
                "pid {qemu_pid} is not the jailer's child"
            )));
        }
    }
    Ok(fd)
}

/// Reads the agent's frames into `events` until the channel ends or breaks.
fn spawn_reader(mut control: UnixStream, events: mpsc::SyncSender<AgentEvent>) -> JoinHandle<()> {
    std::thread::spawn(move || loop {
        let event = match read_msg::<_, GuestMsg>(&mut control) {
            Ok(Some(m)) => AgentEvent::Msg(m),
            Ok(None) | Err(ProtocolError::Frame(FrameError::Io(_))) => AgentEvent::Closed,
            Err(e) => AgentEvent::Broken(crate::describe_error(&e)),
        };
        let last = !matches!(event, AgentEvent::Msg(_));
        if events.send(event).is_err() || last {
            return;
        }
    })
}

/// A guest message as a log or error shows it: its kind, never its
/// (guest-chosen) text in full.
pub fn describe_msg(m: &GuestMsg) -> String {
    match m {
        GuestMsg::Ready(_) => "Ready".into(),
        GuestMsg::Prepared { .. } => "Prepared".into(),
        GuestMsg::Updated { .. } => "Updated".into(),
        GuestMsg::Started { pid } => format!("Started (pid {pid})"),
        GuestMsg::StartFailed { reason, .. } => format!("StartFailed ({reason:?})"),
        GuestMsg::Exit(e) => format!("Exit (status {})", e.status),
        GuestMsg::Identified { .. } => "Identified".into(),
    }
}

/// Pause, resume and statistics of a VM, usable from any thread.
#[derive(Clone)]
pub struct CgroupHandle {
    id: String,
    cgroup: Arc<VmCgroup>,
}

impl CgroupHandle {
    fn map(&self, r: Result<(), CgroupError>) -> Result<(), VmError> {
        r.map_err(|source| VmError::Cgroup {
            id: self.id.clone(),
            source,
        })
    }

    pub fn pause(&self) -> Result<(), VmError> {
        self.map(self.cgroup.freeze())
    }

    pub fn resume(&self) -> Result<(), VmError> {
        self.map(self.cgroup.thaw())
    }

    pub fn stats(&self) -> Result<cgroup::Stats, VmError> {
        self.cgroup.stats().map_err(|source| VmError::Cgroup {
            id: self.id.clone(),
            source,
        })
    }

    /// Sets the VMM's CPU cap to `quota` µs per `period` µs (None: no cap).
    pub fn set_cpu_quota(&self, quota: Option<(u64, u64)>) -> Result<(), VmError> {
        self.map(self.cgroup.set_cpu_quota(quota))
    }

    /// Sets the VMM's CPU weight (as cgroup v1 shares).
    pub fn set_cpu_shares(&self, shares: u64) -> Result<(), VmError> {
        self.map(self.cgroup.set_cpu_shares(shares))
    }

    /// The VMM's CPU cap as (quota µs, period µs).
    pub fn cpu_quota(&self) -> Result<Option<(u64, u64)>, VmError> {
        self.cgroup.cpu_quota().map_err(|source| VmError::Cgroup {
            id: self.id.clone(),
            source,
        })
    }
}

fn read_to_tail<R: Read + Send + 'static>(mut r: R) -> (ConsoleTail, JoinHandle<()>) {
    let tail = ConsoleTail::default();
    let t = tail.clone();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.push(&buf[..n]);
        }
    });
    (tail, h)
}

/// `program` as an absolute path: as given when it has a slash, else
/// looked up in PATH.
pub(crate) fn find_program(program: &Path) -> Result<PathBuf, String> {
    if program.components().count() > 1 {
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{} is not in PATH", program.display()))
}
