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

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mu2_protocol::{
    check_version, read_msg, write_msg, FrameError, GuestMsg, HostMsg, ProtocolError, Ready,
};

use crate::cgroup::{self, CgroupError, Limits, VmCgroup};
use crate::console::ConsoleTail;
use crate::jail::{self, JailError, JailMode, JailRequest, JailResources};
use crate::qemu::{self, ChannelFds};
use crate::record::{self, RecordError, RecordGuard};
use crate::spec::{SpecError, VmSpec};

/// How long a jailer has to kill and reap QEMU after SIGTERM.
const JAILER_GRACE: Duration = Duration::from_secs(5);

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
    #[error("vm {id} was not ready within {timeout:?}; console tail:\n{console}")]
    NotReady {
        id: String,
        timeout: Duration,
        console: String,
    },
    #[error("vm {id} exited before it was ready ({status}); qemu said: {stderr}\nconsole tail:\n{console}")]
    ExitedEarly {
        id: String,
        status: String,
        stderr: String,
        console: String,
    },
    #[error("agent of vm {id} broke the protocol")]
    Protocol {
        id: String,
        #[source]
        source: ProtocolError,
    },
    #[error("agent of vm {id} sent {got} where {want} was expected")]
    Unexpected {
        id: String,
        got: String,
        want: &'static str,
    },
}

/// The VM's raw stdio streams.
pub struct VmStdio {
    pub stdin: UnixStream,
    pub stdout: UnixStream,
    pub stderr: UnixStream,
}

/// Sends control messages; cheap to clone and share between threads.
#[derive(Clone)]
pub struct ControlSender {
    id: Arc<str>,
    stream: Arc<Mutex<UnixStream>>,
}

impl ControlSender {
    pub fn send(&self, msg: &HostMsg) -> Result<(), VmError> {
        let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        write_msg(&mut *s, msg).map_err(|source| VmError::Protocol {
            id: self.id.to_string(),
            source,
        })
    }
}

pub struct Vm {
    id: String,
    /// QEMU itself, or, when jailed, the jailer (QEMU's parent).
    child: Child,
    /// QEMU's pid as the host sees it.
    qemu_pid: u32,
    /// The jail's directory and id claim, released after the reap.
    jail: Option<JailResources>,
    reaped: Option<ExitStatus>,
    control: UnixStream,
    sender: ControlSender,
    stdio: Option<VmStdio>,
    console: ConsoleTail,
    threads: Vec<JoinHandle<()>>,
    ready: Ready,
    boot_time: Duration,
    // Removed by Drop for Vm once QEMU is reaped; shared with
    // [`CgroupHandle`]s, which then fail.
    cgroup: Arc<VmCgroup>,
    /// The VM's ownership record, released once all of it is gone.
    record: RecordGuard,
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

impl Vm {
    /// Starts QEMU for `spec` and waits for the agent's Ready.
    pub fn launch(spec: &VmSpec) -> Result<Vm, VmError> {
        spec.validate()?;
        let started = Instant::now();
        let id = spec.id.clone();
        // Before anything of the VM exists: the record claims its id (and
        // collects what dead owners left).
        let mut record = record::claim_for(spec).map_err(|source| VmError::Record {
            id: id.clone(),
            source,
        })?;
        let cgroup = VmCgroup::create(&id, Limits::for_vm(spec.memory_mib, spec.vcpus)).map_err(
            |source| VmError::Cgroup {
                id: id.clone(),
                source,
            },
        )?;
        record.set_cgroups(cgroup.dirs());
        let console = pair(&id)?;
        let control = pair(&id)?;
        let stdin = pair(&id)?;
        let stdout = pair(&id)?;
        let stderr = pair(&id)?;
        let fds = ChannelFds {
            console: console.theirs.as_raw_fd(),
            control: control.theirs.as_raw_fd(),
            stdin: stdin.theirs.as_raw_fd(),
            stdout: stdout.theirs.as_raw_fd(),
            stderr: stderr.theirs.as_raw_fd(),
        };
        let tsc = match spec.accel {
            crate::Accel::Tcg => crate::accel::host_tsc_khz(),
            crate::Accel::Kvm => None,
        };
        let procs = cgroup.procs_fds();
        let channel_fds = vec![fds.console, fds.control, fds.stdin, fds.stdout, fds.stderr];
        let (mut child, qemu_pid, jail, qemu_stderr) = match &spec.jail {
            JailMode::Disabled { .. } => {
                let args = qemu::command_line(spec, fds, tsc, None);
                log::debug!("vm {id}: {} {}", spec.qemu.display(), args.join(" "));
                let mut cmd = Command::new(&spec.qemu);
                cmd.args(&args)
                    .env_clear()
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                crate::sys::prepare_child(&mut cmd, channel_fds, procs);
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
        let (console_tail, console_thread) = ConsoleTail::spawn(console.ours, spec.debug);
        let qemu_stderr = qemu_stderr.map(read_to_tail);
        let _ = child.stderr.take();
        let mut vm = Vm {
            id: id.clone(),
            child,
            qemu_pid,
            jail,
            reaped: None,
            sender: ControlSender {
                id: id.clone().into(),
                stream: Arc::new(Mutex::new(control.ours.try_clone().map_err(|source| {
                    VmError::Channel {
                        id: id.clone(),
                        source,
                    }
                })?)),
            },
            control: control.ours,
            stdio: Some(VmStdio {
                stdin: stdin.ours,
                stdout: stdout.ours,
                stderr: stderr.ours,
            }),
            console: console_tail,
            threads: vec![console_thread],
            ready: Ready {
                protocol_version: 0,
                agent_version: String::new(),
                kernel_release: String::new(),
                uptime_ns: 0,
            },
            boot_time: Duration::ZERO,
            cgroup: Arc::new(cgroup),
            record,
        };
        match vm.await_ready(spec.ready_timeout, started) {
            Ok(ready) => {
                vm.ready = ready;
                vm.boot_time = started.elapsed();
                // The stderr reader ends with QEMU; keep its handle to join.
                if let Some((_, h)) = qemu_stderr {
                    vm.threads.push(h);
                }
                log::info!(
                    "vm {id}: ready in {:?} (pid {}, kernel {})",
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
                    other => other,
                };
                Err(e)
            }
        }
    }

    fn await_ready(&mut self, timeout: Duration, started: Instant) -> Result<Ready, VmError> {
        let remaining = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let not_ready = || VmError::NotReady {
            id: self.id.clone(),
            timeout,
            console: String::new(),
        };
        self.control
            .set_read_timeout(Some(remaining))
            .map_err(|source| VmError::Channel {
                id: self.id.clone(),
                source,
            })?;
        let msg = read_msg::<_, GuestMsg>(&mut self.control);
        let _ = self.control.set_read_timeout(None);
        match msg {
            Ok(Some(GuestMsg::Ready(r))) => {
                check_version(&r).map_err(|source| VmError::Protocol {
                    id: self.id.clone(),
                    source,
                })?;
                Ok(r)
            }
            Ok(Some(other)) => Err(VmError::Unexpected {
                id: self.id.clone(),
                got: format!("{other:?}"),
                want: "Ready",
            }),
            Ok(None) => {
                let status = self.wait_reaped();
                Err(VmError::ExitedEarly {
                    id: self.id.clone(),
                    status: status.map(|s| s.to_string()).unwrap_or_default(),
                    stderr: String::new(),
                    console: String::new(),
                })
            }
            Err(ProtocolError::Frame(FrameError::Io(e)))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(not_ready())
            }
            Err(source) => Err(VmError::Protocol {
                id: self.id.clone(),
                source,
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.qemu_pid
    }

    /// Whether QEMU runs in a jail.
    pub fn jailed(&self) -> bool {
        self.jail.is_some()
    }

    /// The jail's directory on the host (empty there: the jail is a tmpfs
    /// in QEMU's own mount namespace, seen at /proc/PID/root).
    pub fn jail_dir(&self) -> Option<&Path> {
        self.jail.as_ref().map(|j| j.dir.as_path())
    }

    /// The QMP socket, reached through QEMU's root (jailed VMs only).
    pub fn qmp_path(&self) -> Option<std::path::PathBuf> {
        self.jail.as_ref().map(|_| {
            std::path::PathBuf::from(format!("/proc/{}/root{}", self.qemu_pid, qemu::QMP_SOCKET))
        })
    }

    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Wall time from launch to the agent's Ready.
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

    /// The next message from the agent; `Ok(None)` when the VM is gone.
    pub fn recv(&mut self) -> Result<Option<GuestMsg>, VmError> {
        read_msg(&mut self.control).map_err(|source| VmError::Protocol {
            id: self.id.clone(),
            source,
        })
    }

    pub fn console_tail(&self, lines: usize) -> String {
        self.console.tail(lines)
    }

    /// Waits up to `grace` for QEMU to end by itself (the guest powers off
    /// when its process is done), then kills it. Returns QEMU's status.
    pub fn finish(&mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.reaped = Some(s);
                    return Some(s);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        log::warn!(
            "vm {}: did not power off within {grace:?}; killing it",
            self.id
        );
        self.kill();
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

    /// SIGKILLs QEMU and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        if self.jail.is_none() {
            let _ = self.child.kill();
            // A frozen (paused) VMM does not die until it is thawed.
            let _ = self.cgroup.thaw();
            self.wait_reaped();
            return;
        }
        // The jailer kills QEMU, reaps it and exits: once it is reaped,
        // QEMU is gone too.
        let jailer = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(jailer, nix::sys::signal::Signal::SIGTERM);
        let _ = self.cgroup.thaw();
        let deadline = Instant::now() + JAILER_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.reaped = Some(s);
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        log::warn!(
            "vm {}: the jailer did not end; killing it and QEMU",
            self.id
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.qemu_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        self.wait_reaped();
    }

    fn wait_reaped(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.wait().ok();
        }
        self.reaped
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.cgroup.remove();
        drop(self.jail.take());
        self.record.release();
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
fn find_program(program: &Path) -> Result<PathBuf, String> {
    if program.components().count() > 1 {
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{} is not in PATH", program.display()))
}
