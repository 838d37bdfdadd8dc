//! The Task service: containerd's ttrpc API, one VM per task and per exec.
//!
//! Create parses the bundle, mounts the rootfs containerd prepared and boots
//! the task's VM; Start hands the agent its process. Exec boots another VM
//! on the same rootfs (read-only, with its own tmpfs upper layer inside the
//! guest: it sees none of the task's writes) and Start(exec_id) runs the
//! exec's process in it. Kill becomes a signal to the agent; Wait blocks on
//! the process's exit; Delete reports it and cleans up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, WaitRequest, WaitResponse,
};
use containerd_shim::protos::shim::shim::{
    CheckpointTaskRequest, PauseRequest, ResumeRequest, UpdateTaskRequest,
};
use containerd_shim::protos::types::task::{ProcessInfo, Status as ApiStatus};
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use mu2_microvm::spec::DEFAULT_QEMU;
use mu2_microvm::{AccelChoice, GuestImage, VmSpec};
use mu2_oci::{self as oci, Plan};

use crate::error::ShimError;
use crate::events::{timestamp, Event, Events};
use crate::process::{Launch, Process, Status, StdioPaths};

/// Environment: the QEMU binary (default `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "MU2_QEMU";
/// Environment: `auto`, `kvm` or `tcg`.
pub const ACCEL_ENV: &str = "MU2_ACCEL";

struct Container {
    id: String,
    bundle: PathBuf,
    plan: Plan,
    image: GuestImage,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The same execs, for the init's owner to end when the init exits.
    exec_list: Arc<Mutex<Vec<Arc<Process>>>>,
    rootfs_mounted: bool,
    /// What Updates changed since Create, for the execs started after them.
    updated: Mutex<oci::ResourceChange>,
}

impl Container {
    /// Runs the host hooks of a stage whose failures only get logged.
    fn run_hooks(&self, stage: &'static str, hooks: &[oci::hooks::HostHook], status: &str) {
        let state = oci::hooks::State {
            id: &self.id,
            status,
            pid: self.init.pid,
            bundle: &self.bundle,
        };
        for e in oci::hooks::run_logged(stage, hooks, &state) {
            log::warn!("task {}: {}", self.id, crate::error::describe(&e));
        }
    }

    /// The init and the execs that `keep` keeps: every VM of the task a
    /// task-wide request acts on.
    fn with_execs(&self, keep: impl Fn(&Process) -> bool) -> Vec<Arc<Process>> {
        let mut procs = vec![Arc::clone(&self.init)];
        procs.extend(
            self.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|p| keep(p))
                .cloned(),
        );
        procs
    }

    fn process(&self, exec_id: &str) -> Result<Arc<Process>, ShimError> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of task {}", self.id)))
    }
}

pub struct TaskService {
    events: Events,
    exit: Arc<ExitSignal>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

/// Hex digits of the hash that ends every VM id (64 bits).
const VM_ID_HASH_HEX: usize = 16;
/// The readable part of a VM id: what the hash and its `-` leave of 64.
const VM_ID_READABLE: usize = 64 - 1 - VM_ID_HASH_HEX;
/// Least of an exec id a VM id keeps when the container id is long.
const VM_ID_EXEC_MIN: usize = 16;

/// The VM id of container `id`'s task (`exec_id` empty) or of one of its
/// execs, in containerd namespace `namespace`.
///
/// Always a valid VM id (1-64 of `[A-Za-z0-9_.-]`, not starting with a dot):
/// `<container>[.<exec>]-<hash>`, the readable part cut to fit and its odd
/// characters made `_`, and the hash (SHA-256, 64 bits) that of the exact
/// namespace, container id and exec id. So it keeps the owner's readable
/// prefix, and two different triples, even ones differing only where the
/// readable part was cut or sanitised, or only in the namespace, get
/// different ids.
pub(crate) fn vm_id(namespace: &str, id: &str, exec_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Each part with its length: no two triples hash the same bytes.
    for part in [namespace, id, exec_id] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let hash: String = h.finalize()[..VM_ID_HASH_HEX / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let (c, e) = (clean(id), clean(exec_id));
    let mut readable = if e.is_empty() {
        c[..c.len().min(VM_ID_READABLE)].to_string()
    } else {
        // The exec id tells one task's execs apart: it keeps at least
        // VM_ID_EXEC_MIN characters, the container id the rest.
        let e_len = e.len().min(
            VM_ID_READABLE
                .saturating_sub(1 + c.len())
                .max(VM_ID_EXEC_MIN),
        );
        let c_len = c.len().min(VM_ID_READABLE - 1 - e_len);
        format!("{}.{}", &c[..c_len], &e[..e_len])
    };
    if readable.is_empty() || readable.starts_with('.') {
        readable.insert(0, '_');
        readable.truncate(VM_ID_READABLE);
    }
    format!("{readable}-{hash}")
}

/// The spec of the VM of container `id`'s task (`exec_id` empty) or exec.
fn vm_spec(
    namespace: &str,
    id: &str,
    exec_id: &str,
    plan: &Plan,
    image: &GuestImage,
) -> Result<VmSpec, ShimError> {
    let accel: AccelChoice = std::env::var(ACCEL_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    let qemu = std::env::var_os(QEMU_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_QEMU));
    let config = mu2_microvm::config::HostConfig::load()?;
    let owner = mu2_microvm::record::Owner::shim(namespace, id, exec_id);
    let mut spec = plan.vm_spec(
        vm_id(namespace, id, exec_id),
        image,
        qemu,
        accel.resolve(),
        config.jail,
        config.deadlines,
        owner,
    );
    spec.templates = config.templates;
    spec.pool = config.pool;
    Ok(spec)
}

fn mount_rootfs(req: &CreateTaskRequest, bundle: &Path) -> Result<bool, ShimError> {
    if req.rootfs.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|source| ShimError::Io {
        path: target.clone(),
        source,
    })?;
    for m in &req.rootfs {
        if let Err(source) = crate::mount::mount_one(&m.type_, &m.source, &m.options, &target) {
            crate::mount::unmount_rootfs(bundle);
            return Err(ShimError::Mount {
                id: req.id.clone(),
                target,
                source,
            });
        }
    }
    Ok(true)
}

impl TaskService {
    pub fn new(events: Events, exit: Arc<ExitSignal>) -> TaskService {
        TaskService {
            events,
            exit,
            containers: Mutex::default(),
        }
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("task {id}")))
    }

    fn do_create(&self, req: &CreateTaskRequest) -> Result<u32, ShimError> {
        if self.containers().contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!("task {}", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported by mu2",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let image = GuestImage::locate(None)?;
        let rootfs_mounted = mount_rootfs(req, &bundle)?;
        let result = self.boot_container(req, &bundle, image, rootfs_mounted);
        if result.is_err() && rootfs_mounted {
            crate::mount::unmount_rootfs(&bundle);
        }
        result
    }

    fn boot_container(
        &self,
        req: &CreateTaskRequest,
        bundle: &Path,
        image: GuestImage,
        rootfs_mounted: bool,
    ) -> Result<u32, ShimError> {
        let mut plan = oci::load(bundle)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        plan.run.process.terminal = req.terminal;
        let exec_list = Arc::new(Mutex::new(Vec::new()));
        let init = Process::launch(Launch {
            container_id: req.id.clone(),
            exec_id: String::new(),
            spec: vm_spec(self.events.namespace(), &req.id, "", &plan, &image)?,
            run: plan.run.clone(),
            stdio: stdio.clone(),
            events: self.events.clone(),
            dependents: Some(Arc::clone(&exec_list)),
        })?;
        let pid = init.pid;
        // The host-side hooks of a created container (nerdctl's networking
        // is one): a failure ends the container, as runc's create.
        let state = oci::hooks::State {
            id: &req.id,
            status: "created",
            pid,
            bundle,
        };
        if let Err(e) = oci::hooks::run("createRuntime", &plan.hooks.created, &state) {
            init.force_end();
            return Err(e.into());
        }
        let c = Arc::new(Container {
            id: req.id.clone(),
            bundle: bundle.to_path_buf(),
            plan,
            image,
            init,
            execs: Mutex::default(),
            exec_list,
            rootfs_mounted,
            updated: Mutex::default(),
        });
        self.containers().insert(req.id.clone(), c);
        self.events.send(Event::Create {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            terminal: stdio.terminal,
            pid,
        });
        Ok(pid)
    }

    fn do_exec(&self, req: &ExecProcessRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec id is empty".into()));
        }
        match c.init.status() {
            _ if c.init.is_paused() => {
                return Err(ShimError::State {
                    op: "exec in",
                    what: format!("task {}", c.id),
                    state: "paused",
                })
            }
            Status::Created | Status::Running => {}
            other => {
                return Err(ShimError::State {
                    op: "exec in",
                    what: format!("task {}", c.id),
                    state: other.name(),
                })
            }
        }
        if c.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&req.exec_id)
        {
            return Err(ShimError::AlreadyExists(format!(
                "exec {} of task {}",
                req.exec_id, c.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec without a process spec".into()))?;
        let mut run = c.plan.run.clone();
        run.process = oci::exec_process(&c.plan.run, &spec.value)?;
        run.process.terminal = req.terminal;
        // Limits as the task's Updates left them.
        let updated = *c.updated.lock().unwrap_or_else(|e| e.into_inner());
        let limit = |l: mu2_protocol::Limit| match l {
            mu2_protocol::Limit::Unlimited => None,
            mu2_protocol::Limit::Amount(n) => Some(n),
        };
        if let Some(l) = updated.limits.memory_bytes {
            run.memory_limit_bytes = limit(l);
        }
        if let Some(l) = updated.limits.pids {
            run.pids_limit = limit(l);
        }
        // The task's mounts plus this process must still fit one frame.
        oci::check_run(&run)?;
        let proc = Process::launch(Launch {
            container_id: c.id.clone(),
            exec_id: req.exec_id.clone(),
            spec: vm_spec(
                self.events.namespace(),
                &c.id,
                &req.exec_id,
                &c.plan,
                &c.image,
            )?,
            run,
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            events: self.events.clone(),
            dependents: None,
        })?;
        if updated.cpu_quota.is_some() || updated.cpu_shares.is_some() {
            let cpu_only = oci::ResourceChange {
                limits: mu2_protocol::Update::default(),
                ..updated
            };
            proc.update(&cpu_only, boot_cpu_quota(&c.plan))?;
        }
        c.exec_list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&proc));
        c.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.exec_id.clone(), proc);
        self.events.send(Event::ExecAdded {
            id: c.id.clone(),
            exec_id: req.exec_id.clone(),
        });
        Ok(())
    }

    fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse, ShimError> {
        let c = self.container(&req.id)?;
        let proc = c.process(&req.exec_id)?;
        if matches!(proc.status(), Status::Created | Status::Starting) {
            // Never started: end its VM first, as runc deletes a created
            // container (a created exec is discarded: status 0, no exit).
            proc.force_end();
        }
        let (code, at) = proc.mark_deleted()?;
        if req.exec_id.is_empty() {
            let execs: Vec<_> = c
                .execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, p)| p)
                .collect();
            for p in execs {
                p.force_end();
            }
            if c.rootfs_mounted {
                crate::mount::unmount_rootfs(&c.bundle);
            }
            self.containers().remove(&req.id);
            self.events.send(Event::Delete {
                id: c.id.clone(),
                pid: proc.pid,
                status: code,
                at,
            });
            c.run_hooks("poststop", &c.plan.hooks.poststop, "stopped");
            log::info!("task {}: deleted", c.id);
        } else {
            c.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.exec_id);
            c.exec_list
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|p| !Arc::ptr_eq(p, &proc));
        }
        Ok(DeleteResponse {
            pid: proc.pid,
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    /// Pauses (or resumes) every VM of the task, its init's and its
    /// running execs', all or none: on a failure the VMs already changed
    /// are changed back.
    fn do_pause(&self, id: &str, pause: bool) -> Result<Empty, ShimError> {
        let c = self.container(id)?;
        let procs = c.with_execs(|p| p.status() == Status::Running && p.is_paused() != pause);
        let act = |p: &Process, pause: bool| if pause { p.pause() } else { p.resume() };
        for (i, p) in procs.iter().enumerate() {
            if let Err(e) = act(p, pause) {
                for done in &procs[..i] {
                    if let Err(back) = act(done, !pause) {
                        log::error!("task {id}: cannot undo a partial pause: {back}");
                    }
                }
                return Err(e);
            }
        }
        log::info!("task {id}: {}", if pause { "paused" } else { "resumed" });
        self.events.send(if pause {
            Event::Paused { id: id.to_string() }
        } else {
            Event::Resumed { id: id.to_string() }
        });
        Ok(Empty::new())
    }

    /// containerd's Update: what a VM can change, applied to every VM of
    /// the task; the rest refused by name.
    fn do_update(&self, req: &UpdateTaskRequest) -> Result<Empty, ShimError> {
        let c = self.container(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("update without resources".into()))?;
        let change = oci::update(&resources.value, c.plan.memory_mib, c.plan.vcpus)?;
        let procs = c.with_execs(|p| matches!(p.status(), Status::Created | Status::Running));
        let boot_quota = boot_cpu_quota(&c.plan);
        for p in &procs {
            p.update(&change, boot_quota)?;
        }
        // Execs started from now on get the new limits too.
        let mut u = c.updated.lock().unwrap_or_else(|e| e.into_inner());
        u.limits.memory_bytes = change.limits.memory_bytes.or(u.limits.memory_bytes);
        u.limits.pids = change.limits.pids.or(u.limits.pids);
        u.cpu_quota = change.cpu_quota.or(u.cpu_quota);
        u.cpu_shares = change.cpu_shares.or(u.cpu_shares);
        log::info!("task {}: updated ({change:?})", req.id);
        Ok(Empty::new())
    }

    /// The task VMM's cgroup figures, as containerd's cgroups v1 Metrics.
    fn do_stats(&self, req: &StatsRequest) -> Result<StatsResponse, ShimError> {
        use containerd_shim::protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
        };
        use containerd_shim::protos::protobuf::{well_known_types::any::Any, Message};
        let c = self.container(&req.id)?;
        let s = c.init.stats()?;
        let metrics = Metrics {
            cpu: Some(CPUStat {
                usage: Some(CPUUsage {
                    total: s.cpu_usage_ns,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                usage: Some(MemoryEntry {
                    usage: s.memory_usage_bytes,
                    limit: s.memory_limit_bytes,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStat {
                current: s.pids_current,
                limit: mu2_microvm::cgroup::VMM_PIDS_MAX,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let value = metrics
            .write_to_bytes()
            .map_err(|e| ShimError::InvalidArgument(format!("cannot encode metrics: {e}")))?;
        Ok(StatsResponse {
            stats: Some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".into(),
                value,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    fn do_state(&self, req: &StateRequest) -> Result<StateResponse, ShimError> {
        let c = self.container(&req.id)?;
        let proc = c.process(&req.exec_id)?;
        let (status, exit_status, exited_at) = match proc.status() {
            Status::Created | Status::Starting => (ApiStatus::CREATED, 0, None),
            Status::Running if proc.is_paused() => (ApiStatus::PAUSED, 0, None),
            Status::Running => (ApiStatus::RUNNING, 0, None),
            Status::Exited { code, at } => (ApiStatus::STOPPED, code, Some(timestamp(at))),
            Status::Deleted => (ApiStatus::STOPPED, 0, None),
        };
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: proc.pid,
            status: status.into(),
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }
}

/// The CPU cap a VM of `plan` boots with (what "no quota" restores).
fn boot_cpu_quota(plan: &Plan) -> (u64, u64) {
    let boot = mu2_microvm::cgroup::Limits::for_vm(plan.memory_mib, plan.vcpus);
    (boot.cpu_quota_us, mu2_microvm::cgroup::CPU_PERIOD_US)
}

type R<T> = TtrpcResult<T>;

fn edge<T>(op: &str, id: &str, r: Result<T, ShimError>) -> R<T> {
    r.map_err(|e| {
        log::warn!("{op} {id}: {}", crate::error::describe(&e));
        e.into()
    })
}

impl Task for TaskService {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> R<CreateTaskResponse> {
        log::info!("create task {} (bundle {})", req.id, req.bundle);
        let pid = edge("create", &req.id, self.do_create(&req))?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> R<StartResponse> {
        log::info!("start task {} exec {:?}", req.id, req.exec_id);
        let r = self.container(&req.id).and_then(|c| {
            let pid = c.process(&req.exec_id)?.start()?;
            if req.exec_id.is_empty() {
                c.run_hooks("poststart", &c.plan.hooks.poststart, "running");
            }
            Ok(pid)
        });
        let pid = edge("start", &req.id, r)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        log::info!("exec {} in task {}", req.exec_id, req.id);
        edge("exec", &req.id, self.do_exec(&req))?;
        Ok(Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> R<StateResponse> {
        edge("state", &req.id, self.do_state(&req))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> R<PidsResponse> {
        let c = edge("pids", &req.id, self.container(&req.id))?;
        let mut processes = vec![ProcessInfo {
            pid: c.init.pid,
            ..Default::default()
        }];
        for p in c.execs.lock().unwrap_or_else(|e| e.into_inner()).values() {
            processes.push(ProcessInfo {
                pid: p.pid,
                ..Default::default()
            });
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> R<Empty> {
        log::info!(
            "kill task {} exec {:?} signal {} all {}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        let r = self
            .container(&req.id)
            .and_then(|c| c.process(&req.exec_id))
            .and_then(|p| p.kill(req.signal, req.all));
        edge("kill", &req.id, r)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> R<WaitResponse> {
        let p = edge(
            "wait",
            &req.id,
            self.container(&req.id)
                .and_then(|c| c.process(&req.exec_id)),
        )?;
        let (code, at) = p.wait();
        Ok(WaitResponse {
            exit_status: code,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> R<DeleteResponse> {
        log::info!("delete task {} exec {:?}", req.id, req.exec_id);
        edge("delete", &req.id, self.do_delete(&req))
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> R<Empty> {
        let p = edge(
            "close_io",
            &req.id,
            self.container(&req.id)
                .and_then(|c| c.process(&req.exec_id)),
        )?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> R<Empty> {
        let r = self
            .container(&req.id)
            .and_then(|c| c.process(&req.exec_id))
            .and_then(|p| p.resize(req.height, req.width));
        edge("resize_pty", &req.id, r)?;
        Ok(Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> R<ConnectResponse> {
        let task_pid = self.container(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> R<Empty> {
        if !self.containers().is_empty() {
            log::info!("shutdown: tasks remain; staying up");
            return Ok(Empty::new());
        }
        log::info!("shutdown: no task left; exiting");
        self.events.flush();
        self.exit.signal();
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> R<StatsResponse> {
        edge("stats", &req.id, self.do_stats(&req))
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> R<Empty> {
        edge("pause", &req.id, self.do_pause(&req.id, true))
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> R<Empty> {
        edge("resume", &req.id, self.do_pause(&req.id, false))
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> R<Empty> {
        log::info!("update task {}", req.id);
        edge("update", &req.id, self.do_update(&req))
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> R<Empty> {
        edge(
            "checkpoint",
            &req.id,
            Err(ShimError::Unimplemented(
                "checkpoint: not supported by mu2 (a process lives only as long as its vm)",
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(id: &str) -> bool {
        mu2_microvm::jail::valid_id(id)
    }

    #[test]
    fn vm_ids_keep_the_owners_prefix_and_end_with_a_hash() {
        let id = vm_id("default", "web", "");
        assert!(id.starts_with("web-"), "{id}");
        assert_eq!(id.len(), 3 + 1 + VM_ID_HASH_HEX);
        let exec = vm_id("default", "web", "e1");
        assert!(exec.starts_with("web.e1-"), "{exec}");
        assert_ne!(id, exec);
        // Stable: the shim's delete action and a restarted shim agree.
        assert_eq!(vm_id("default", "web", "e1"), exec);
    }

    #[test]
    fn a_63_character_exec_id_makes_a_valid_vm_id() {
        let exec = "e".repeat(63);
        let id = vm_id("default", "web", &exec);
        assert!(valid(&id), "{id}");
        assert!(id.starts_with("web.eee"), "{id}");
        // Used to come out as ".eee…" (the task id cut off, a leading dot).
        let id = vm_id("default", "", &exec);
        assert!(valid(&id), "{id}");
    }

    #[test]
    fn cri_ids_map_to_distinct_valid_vm_ids() {
        // CRI: 64 hex digits for containers and for exec ids.
        let c1 = "a".repeat(63) + "1";
        let c2 = "a".repeat(63) + "2";
        let exec = "f".repeat(64);
        let ids = [
            vm_id("k8s.io", &c1, ""),
            vm_id("k8s.io", &c2, ""),
            vm_id("k8s.io", &c1, &exec),
            vm_id("k8s.io", &c2, &exec),
        ];
        for id in &ids {
            assert!(valid(id), "{id}");
            assert!(id.starts_with("aaaa"), "{id}");
        }
        assert!(ids[2].contains(".ffff"), "{}", ids[2]);
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn dots_odd_characters_and_namespaces_never_collide() {
        // The task of container "web.1" and exec "1" of container "web".
        assert_ne!(vm_id("default", "web.1", ""), vm_id("default", "web", "1"));
        // Characters that sanitise to the same `_`.
        assert_ne!(vm_id("default", "a b", ""), vm_id("default", "a/b", ""));
        assert_ne!(vm_id("default", "a_b", ""), vm_id("default", "a b", ""));
        // The same ids in two namespaces.
        assert_ne!(vm_id("default", "web", ""), vm_id("k8s.io", "web", ""));
        // Parts that concatenate alike.
        assert_ne!(vm_id("ab", "c", ""), vm_id("a", "bc", ""));
        for (ns, c, e) in [
            ("default", "e 1/../..", "x\u{e9}y"),
            ("default", ".hidden", ""),
            ("default", "..", ".."),
            ("", "", ""),
            ("default", &"x".repeat(200), &"y".repeat(200)),
        ] {
            let id = vm_id(ns, c, e);
            assert!(valid(&id), "{ns:?} {c:?} {e:?}: {id}");
        }
        assert!(vm_id("default", "a b", "").starts_with("a_b-"));
    }
}
