//! `mu2 pool serve`: keeps warm VMs per shape and leases them.
//!
//! One refill thread makes warm VMs, one at a time (a restore costs a core
//! for a moment; two cores serve requests too), for the shape furthest
//! below its target, while the guest memory of all warm VMs stays within
//! the budget. Each connection is served by a thread of its own, with
//! deadlines on every read and write. The daemon reaps the jailers of the
//! VMs it leased (they stay its children), and on SIGTERM kills its warm
//! VMs and removes its socket.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::wire::{self, Ack, Request, Response, ShapeKey, ShareInfo, WIRE_VERSION};
use super::{PoolConfig, Shape, MAX_SHAPES};
use crate::record::{Owner, OwnerKind, RecordDir};
use crate::spec::{Share, VmSpec};
use crate::template::{SharedTemplate, TemplateMode};
use crate::vm::{Start, Vm};

/// Connections served at once; more are answered "busy".
const MAX_CONNECTIONS: usize = 32;
/// How long a connection has to send its request, and a lessee to say it
/// took the VM over.
const IO_DEADLINE: Duration = Duration::from_secs(5);
/// A warm VM that dies this soon after its restore failed to resume.
const EARLY_DEATH: Duration = Duration::from_secs(10);
/// How long a warm VM runs after its restore before it is stopped: what
/// the guest does after a resume (and QEMU translates) is done by then,
/// off the lease's path; stopped at once, a lease measured ~130 ms slower.
const WARM_SETTLE: Duration = Duration::from_secs(1);
/// The pause after a failed refill (the template is rebuilt meanwhile).
const REFILL_BACKOFF: Duration = Duration::from_secs(2);
/// After a shared template failed to build, clones load the template file's
/// stream for this long before the next try (a try costs a cold boot).
const SHARED_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another pool serves {0}")]
    Running(PathBuf),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the pool needs the jail: {0}")]
    NotJailed(String),
    #[error("the pool needs templates ([templates] enabled in the host config)")]
    NoTemplates,
}

/// What `mu2 pool status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub pid: u32,
    pub uptime_s: u64,
    pub budget_mib: u64,
    /// Guest memory of the warm VMs.
    pub warm_mib: u64,
    /// Their QEMUs' resident and proportional memory.
    pub warm_rss_kib: u64,
    pub warm_pss_kib: u64,
    /// Host memory of the shapes' shared templates' RAM (every clone of a
    /// shape maps its template's copy-on-write).
    #[serde(default)]
    pub template_kib: u64,
    pub leases: u64,
    pub shapes: Vec<ShapeStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeStatus {
    pub memory_mib: u32,
    pub vcpus: u32,
    pub target: u32,
    pub warm: u32,
    pub hits: u64,
    pub misses: u64,
    pub refills: u64,
    pub refill_failures: u64,
    /// The last refill's time, ms.
    pub refill_ms: u64,
    /// Warm VMs made per second since the pool started.
    pub refill_rate: f64,
    /// Whether its warm VMs map a shared template's RAM (else each loads
    /// the template file's stream into memory of its own).
    #[serde(default)]
    pub shared_template: bool,
    /// Misses answered with the shared template (the lessee restored from
    /// it).
    #[serde(default)]
    pub template_handouts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct WarmVm {
    vm: Vm,
    since: Instant,
    /// Past [`WARM_SETTLE`]: stopped (or tried).
    stopped: bool,
    share: ShareInfo,
}

struct ShapeSet {
    key: ShapeKey,
    base: VmSpec,
    target: u32,
    warm: VecDeque<WarmVm>,
    building: u32,
    hits: u64,
    misses: u64,
    refills: u64,
    failures: u64,
    refill_ms: u64,
    last_error: Option<String>,
    next_try: Instant,
    /// The shape's template in memory, once built.
    shared: Option<Arc<SharedTemplate>>,
    /// No shared template before this (the last build failed).
    shared_next_try: Instant,
    template_handouts: u64,
}

impl ShapeSet {
    /// Guest memory of its warm VMs and of its shared template.
    fn memory(&self) -> u64 {
        let vms = u64::from(self.warm.len() as u32 + self.building);
        u64::from(self.base.memory_mib) * (vms + u64::from(self.shared.is_some()))
    }
}

/// The refill thread's next step.
enum Next {
    Stop,
    Idle,
    Job(Box<Job>),
}

/// A refill: the set's shared template first if it needs one, then (with
/// `make_vm`) one warm VM.
struct Job {
    set: usize,
    base: VmSpec,
    shared: Shared,
    make_vm: bool,
}

/// Where a refill's clone comes from.
enum Shared {
    Ready(Arc<SharedTemplate>),
    /// The set has none yet: build it first.
    Build,
    /// A build failed lately: the template file's stream.
    Stream,
}

#[derive(Default)]
struct State {
    sets: Vec<ShapeSet>,
    /// Jailers of leased VMs, reaped when they end.
    reaping: Vec<Child>,
    leases: u64,
    stopping: bool,
}

/// The pool daemon.
pub struct Pool {
    cfg: PoolConfig,
    /// The spec every warm VM starts from (its shape and share set per set).
    base: VmSpec,
    template_dir: PathBuf,
    template_max: u64,
    state: Mutex<State>,
    wake: Condvar,
    started: Instant,
    next_id: AtomicU64,
    connections: AtomicUsize,
}

impl Pool {
    /// A pool with `cfg`, whose warm VMs are `base` (a spec of this host:
    /// guest image, QEMU, accelerator, jail, deadlines, templates) in each
    /// configured shape.
    pub fn new(cfg: PoolConfig, base: VmSpec) -> Result<Arc<Pool>, PoolError> {
        if !matches!(base.jail, crate::jail::JailMode::Jailed(_)) {
            return Err(PoolError::NotJailed(
                "warm VMs hand their mounts over in their jail's namespace".into(),
            ));
        }
        let TemplateMode::Use { dir, max_bytes, .. } = &base.templates else {
            return Err(PoolError::NoTemplates);
        };
        let (template_dir, template_max) = (dir.clone(), *max_bytes);
        let mut base = base;
        base.owner = Owner::this_process(OwnerKind::Pool);
        base.pool = super::PoolMode::Off;
        let pool = Pool {
            base,
            template_dir,
            template_max,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            cfg,
        };
        {
            let mut st = pool.lock();
            for shape in pool.cfg.shapes.clone() {
                let set = pool.set_for(shape, super::DEFAULT_SHARE_TAG);
                st.sets.push(set);
            }
        }
        Ok(Arc::new(pool))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_for(&self, shape: Shape, tag: &str) -> ShapeSet {
        let mut base = self.base.clone();
        base.memory_mib = shape.memory_mib;
        base.vcpus = shape.vcpus;
        base.shares = vec![Share {
            tag: tag.to_string(),
            host_path: self.cfg.dir.clone(),
            readonly: true,
        }];
        let key = super::client::shape_key(&base).expect("a pool spec is poolable");
        ShapeSet {
            key,
            base,
            target: self.cfg.warm,
            warm: VecDeque::new(),
            building: 0,
            hits: 0,
            misses: 0,
            refills: 0,
            failures: 0,
            refill_ms: 0,
            last_error: None,
            next_try: Instant::now(),
            shared: None,
            shared_next_try: Instant::now(),
            template_handouts: 0,
        }
    }

    /// Listens on the configured socket and serves until SIGTERM or SIGINT.
    pub fn serve(self: &Arc<Self>) -> Result<(), PoolError> {
        let io = |what: String| move |source| PoolError::Io { what, source };
        let vms = self.cfg.dir.join("vms");
        std::fs::create_dir_all(&vms).map_err(io(format!("cannot create {}", vms.display())))?;
        std::fs::set_permissions(&self.cfg.dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io(format!("cannot chmod {}", self.cfg.dir.display())))?;
        self.sweep(&vms);
        let listener = listen(&self.cfg.socket)?;
        log::info!(
            "pool: serving {} ({} warm per shape, budget {} MiB, shapes {:?})",
            self.cfg.socket.display(),
            self.cfg.warm,
            self.cfg.max_mib,
            self.cfg.shapes
        );
        let signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
            .map_err(io("cannot watch signals".into()))?;
        let refill = {
            let pool = Arc::clone(self);
            std::thread::Builder::new()
                .name("refill".into())
                .spawn(move || pool.refill_loop())
                .map_err(io("cannot start the refill thread".into()))?
        };
        {
            let pool = Arc::clone(self);
            std::thread::Builder::new()
                .name("accept".into())
                .spawn(move || pool.accept_loop(listener))
                .map_err(io("cannot start the accept thread".into()))?;
        }
        let mut signals = signals;
        if let Some(sig) = signals.forever().next() {
            log::info!("pool: signal {sig}: stopping");
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        let warm: Vec<WarmVm> = {
            let mut st = self.lock();
            st.stopping = true;
            st.sets.iter_mut().flat_map(|s| s.warm.drain(..)).collect()
        };
        self.wake.notify_all();
        let n = warm.len();
        drop(warm);
        let _ = refill.join();
        self.reap(true);
        log::info!("pool: stopped ({n} warm VMs removed)");
        Ok(())
    }

    /// Removes share directories no record names (left by a pool that died
    /// before recording them).
    fn sweep(&self, vms: &Path) {
        let records = RecordDir::for_mode(&self.base.jail);
        for e in std::fs::read_dir(vms).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if matches!(records.read(&id), Ok(Some(_))) {
                continue;
            }
            match super::remove_share_dir(&e.path()) {
                Ok(_) => log::info!("pool: removed the share of a lost VM {id}"),
                Err(err) => log::warn!("pool: cannot remove {}: {err}", e.path().display()),
            }
        }
    }

    fn accept_loop(self: Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if self.lock().stopping {
                return;
            }
            if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                let _ = conn.set_write_timeout(Some(IO_DEADLINE));
                let _ = wire::send(
                    &conn,
                    &Response::Error {
                        message: "the pool is busy".into(),
                    },
                    &[],
                );
                continue;
            }
            let pool = Arc::clone(&self);
            let spawned = std::thread::Builder::new()
                .name("lease".into())
                .spawn(move || {
                    pool.serve_one(&conn);
                    pool.connections.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                self.connections.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn serve_one(&self, conn: &UnixStream) {
        let _ = conn.set_read_timeout(Some(IO_DEADLINE));
        let _ = conn.set_write_timeout(Some(IO_DEADLINE));
        let req = match wire::recv::<Request>(conn, 0) {
            Ok((r, _)) => r,
            Err(e) => {
                log::debug!("pool: a bad request: {e}");
                let _ = wire::send(
                    conn,
                    &Response::Error {
                        message: format!("bad request: {e}"),
                    },
                    &[],
                );
                return;
            }
        };
        let answer = match req {
            Request::Status { version } if version == WIRE_VERSION => Response::Status {
                status: self.status(),
            },
            Request::Lease {
                version,
                shape,
                owner,
            } if version == WIRE_VERSION => match check_peer(conn, &owner) {
                Ok(()) => return self.lease(conn, &shape, *owner),
                Err(message) => Response::Error { message },
            },
            _ => Response::Error {
                message: format!("this pool speaks version {WIRE_VERSION}"),
            },
        };
        let _ = wire::send(conn, &answer, &[]);
    }

    /// Takes a warm VM of `shape` for `owner`, hands it over, and lets go
    /// of it once the lessee says it took it.
    fn lease(&self, conn: &UnixStream, shape: &ShapeKey, owner: Owner) {
        let taken = self.take(shape);
        let warm = match taken {
            Ok(w) => w,
            Err((why, Some(t))) => return self.hand_template(conn, shape, why, &t),
            Err((why, None)) => {
                let _ = wire::send(conn, &Response::Miss { why }, &[]);
                return;
            }
        };
        let mut warm = warm;
        // Stopped once it settled: it runs again from its lease on.
        if let Err(e) = warm.vm.cont() {
            log::warn!("pool: vm {}: {}", warm.vm.id(), crate::describe_error(&e));
            let _ = wire::send(
                conn,
                &Response::Miss {
                    why: "the warm VM did not resume".into(),
                },
                &[],
            );
            return;
        }
        let parts = warm.vm.lease_parts();
        let (info, fds) = match parts {
            Ok(p) => p,
            Err(e) => {
                log::warn!("pool: vm {}: cannot hand over: {e}", warm.vm.id());
                let _ = wire::send(
                    conn,
                    &Response::Miss {
                        why: "the warm VM could not be handed over".into(),
                    },
                    &[],
                );
                return;
            }
        };
        let id = info.id.clone();
        let answer = Response::Leased {
            info: Box::new(info),
            share: warm.share.clone(),
            warm_ms: warm.since.elapsed().as_millis() as u64,
        };
        let fds: Vec<OwnedFd> = fds.into_vec();
        if let Err(e) = wire::send(conn, &answer, &fds) {
            log::warn!("pool: vm {id}: the lessee went away ({e}); removed");
            return;
        }
        drop(fds);
        let _ = conn.set_read_timeout(Some(IO_DEADLINE));
        match wire::recv::<Ack>(conn, 0) {
            Ok((Ack { taken: true }, _)) => {
                log::info!("pool: vm {id}: leased to {owner}");
                let child = warm.vm.hand_over();
                let mut st = self.lock();
                st.leases += 1;
                st.reaping.extend(child);
            }
            Ok((Ack { taken: false }, _)) => {
                log::warn!("pool: vm {id}: the lessee refused it; removed");
            }
            Err(e) => log::warn!("pool: vm {id}: no word from the lessee ({e}); removed"),
        }
    }

    /// A miss with a shared template: the lessee restores from it itself.
    fn hand_template(&self, conn: &UnixStream, shape: &ShapeKey, why: String, t: &SharedTemplate) {
        let (info, fds) = match t.handout() {
            Ok(h) => h,
            Err(e) => {
                log::warn!("pool: cannot hand out a shared template: {e}");
                let _ = wire::send(conn, &Response::Miss { why }, &[]);
                return;
            }
        };
        let answer = Response::Template {
            why,
            template: Box::new(info),
        };
        if wire::send(conn, &answer, &fds).is_ok() {
            let mut st = self.lock();
            if let Some(set) = st.sets.iter_mut().find(|s| &s.key == shape) {
                set.template_handouts += 1;
            }
        }
    }

    /// A live warm VM of `shape`, or why there is none (a miss, which may
    /// teach the pool a new shape) and the shape's shared template if it
    /// has one.
    fn take(&self, shape: &ShapeKey) -> Result<WarmVm, (String, Option<Arc<SharedTemplate>>)> {
        let mut st = self.lock();
        let pos = st.sets.iter().position(|s| &s.key == shape);
        let Some(pos) = pos else {
            let b = &self.base;
            let same_guest = b.kernel == shape.kernel
                && b.initrd == shape.initrd
                && b.qemu == shape.qemu
                && format!("{:?}", b.accel) == shape.accel
                && b.tb_size_mib == shape.tb_size_mib
                && b.debug == shape.debug;
            if self.cfg.learn && same_guest && st.sets.len() < MAX_SHAPES && !st.stopping {
                let set = self.set_for(
                    Shape {
                        memory_mib: shape.memory_mib,
                        vcpus: shape.vcpus,
                    },
                    &shape.share_tag,
                );
                let mut set = set;
                set.misses = 1;
                st.sets.push(set);
                self.wake.notify_all();
                return Err(("a new shape: warm VMs of it are on their way".into(), None));
            }
            return Err(("the pool keeps no VM of this shape".into(), None));
        };
        let set = &mut st.sets[pos];
        while let Some(mut w) = set.warm.pop_front() {
            if w.vm.alive() {
                set.hits += 1;
                self.wake.notify_all();
                return Ok(w);
            }
            set.failures += 1;
            set.last_error = Some("a warm VM died".into());
        }
        set.misses += 1;
        self.wake.notify_all();
        Err(("no warm VM of this shape now".into(), set.shared.clone()))
    }

    fn refill_loop(self: Arc<Self>) {
        loop {
            self.reap(false);
            match self.next_job() {
                Next::Stop => return,
                Next::Idle => {}
                Next::Job(job) => {
                    if !self.run_job(job) {
                        return;
                    }
                }
            }
        }
    }

    /// What the refill thread does next: the set furthest below its target
    /// gets a warm VM; else a set without its shared template gets one
    /// (a pool with `warm = 0` keeps templates only); else it waits a
    /// moment for a lease or a stop.
    fn next_job(&self) -> Next {
        let mut st = self.lock();
        if st.stopping {
            return Next::Stop;
        }
        self.drop_dead(&mut st);
        self.stop_settled(&mut st);
        let used: u64 = st.sets.iter().map(ShapeSet::memory).sum();
        let now = Instant::now();
        let budget = self.cfg.max_mib;
        let shared_on = self.cfg.shared_templates;
        let template_due = |s: &ShapeSet| {
            shared_on && s.shared.is_none() && s.shared_next_try <= now && s.next_try <= now
        };
        let wants_vm = |s: &ShapeSet| {
            // A set without its shared template may build one first.
            let mem = u64::from(s.base.memory_mib);
            let room = mem * if template_due(s) { 2 } else { 1 };
            (s.warm.len() as u32 + s.building) < s.target
                && s.next_try <= now
                && used + room <= budget
        };
        let sets = st.sets.iter().enumerate();
        let vm = sets
            .clone()
            .filter(|(_, s)| wants_vm(s))
            .min_by_key(|(_, s)| s.warm.len() as u32 + s.building)
            .map(|(i, _)| (i, true));
        let template = sets
            .filter(|(_, s)| template_due(s) && used + u64::from(s.base.memory_mib) <= budget)
            .map(|(i, _)| (i, false))
            .next();
        let Some((i, make_vm)) = vm.or(template) else {
            let (st, _) = self
                .wake
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(|e| e.into_inner());
            drop(st);
            return Next::Idle;
        };
        let set = &mut st.sets[i];
        if make_vm {
            set.building += 1;
        }
        let shared = match &set.shared {
            Some(t) => Shared::Ready(Arc::clone(t)),
            None if template_due(set) => Shared::Build,
            None => Shared::Stream,
        };
        Next::Job(Box::new(Job {
            set: i,
            base: set.base.clone(),
            shared,
            make_vm,
        }))
    }

    /// Builds the set's shared template if the job says so, then makes its
    /// warm VM if it says so. False once the pool is stopping.
    fn run_job(&self, job: Box<Job>) -> bool {
        let Job {
            set: i,
            base,
            shared,
            make_vm,
        } = *job;
        let (shared, built) = match shared {
            Shared::Ready(t) => (Some(t), None),
            Shared::Stream => (None, None),
            Shared::Build => match self.build_shared(&base) {
                Ok(t) => (Some(Arc::clone(&t)), Some(Ok(t))),
                Err(e) => (None, Some(Err(e))),
            },
        };
        let t0 = Instant::now();
        let made = make_vm.then(|| self.make_warm(&base, shared.as_deref()));
        let mut st = self.lock();
        let set = &mut st.sets[i];
        match built {
            Some(Ok(t)) => set.shared = Some(t),
            Some(Err(e)) => {
                log::warn!(
                    "pool: no shared template for {} MiB, {} vCPU ({e}); warm VMs load the template file for the next {SHARED_RETRY:?}",
                    base.memory_mib,
                    base.vcpus
                );
                set.last_error = Some(e);
                set.shared_next_try = Instant::now() + SHARED_RETRY;
            }
            None => {}
        }
        let Some(made) = made else {
            return !st.stopping;
        };
        set.building -= 1;
        if let Err((_, true)) = &made {
            // It could not resume from this template: built again next.
            set.shared = None;
        }
        match made {
            Ok(w) => {
                set.refills += 1;
                set.refill_ms = t0.elapsed().as_millis() as u64;
                log::debug!("pool: vm {} warm in {:?}", w.vm.id(), t0.elapsed());
                if st.stopping {
                    return false;
                }
                st.sets[i].warm.push_back(w);
            }
            Err((e, _)) => {
                log::warn!("pool: refill failed: {e}");
                set.failures += 1;
                set.last_error = Some(e);
                set.next_try = Instant::now() + REFILL_BACKOFF;
            }
        }
        true
    }

    /// Stops the warm VMs that have run [`WARM_SETTLE`] since their
    /// restore; one that does not stop is left running (it still serves).
    fn stop_settled(&self, st: &mut State) {
        for set in &mut st.sets {
            for w in set.warm.iter_mut() {
                if !w.stopped && w.since.elapsed() >= WARM_SETTLE {
                    w.stopped = true;
                    if let Err(e) = w.vm.stop_warm() {
                        log::warn!("pool: vm {}: {}", w.vm.id(), crate::describe_error(&e));
                    }
                }
            }
        }
    }

    /// Removes warm VMs whose QEMU ended; one that ended early says its
    /// template does not resume: that template is removed (rebuilt next).
    fn drop_dead(&self, st: &mut State) {
        for set in &mut st.sets {
            let before = set.warm.len();
            let mut early = false;
            set.warm.retain_mut(|w| {
                let alive = w.vm.alive();
                if !alive && w.since.elapsed() < EARLY_DEATH {
                    early = true;
                }
                alive
            });
            let dead = before - set.warm.len();
            if dead > 0 {
                set.failures += dead as u64;
                set.last_error = Some(format!("{dead} warm VMs died"));
                log::warn!("pool: {dead} warm VMs died");
                if early {
                    set.shared = None;
                    if let (Ok(key), Ok(store)) = (
                        crate::template::Key::of(&set.base),
                        crate::template::Store::open(&self.template_dir),
                    ) {
                        store.discard(&key);
                    }
                }
            }
        }
    }

    /// The shared template of `base`'s shape, built now (a cold boot).
    fn build_shared(&self, base: &VmSpec) -> Result<Arc<SharedTemplate>, String> {
        let store = crate::template::Store::open(&self.template_dir)
            .map_err(|e| crate::describe_error(&e))?;
        SharedTemplate::build(&store, base)
            .map(Arc::new)
            .map_err(|e| crate::describe_error(&e))
    }

    /// One warm VM of `base`'s shape: a share directory of its own, a clone
    /// of the shared template, or else of the template file (built if
    /// missing), with a lifeline. The error says whether the template it
    /// came from is at fault.
    fn make_warm(
        &self,
        base: &VmSpec,
        shared: Option<&SharedTemplate>,
    ) -> Result<WarmVm, (String, bool)> {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        let id = format!("mu2p-{}-{n}", std::process::id());
        let share_dir = self.cfg.dir.join("vms").join(&id);
        let mut spec = base.clone();
        spec.id = id.clone();
        spec.shares[0].host_path = share_dir.clone();
        // Made by the launch once the record names it, removed with it.
        spec.owned_dir = Some(share_dir.clone());
        let vm = self.restore_warm(&spec, shared)?;
        let tag = &spec.shares[0].tag;
        Ok(WarmVm {
            vm,
            since: Instant::now(),
            stopped: false,
            share: ShareInfo {
                host: share_dir,
                jail: PathBuf::from(crate::spec::JAIL_SHARES).join(tag),
            },
        })
    }

    fn restore_warm(
        &self,
        spec: &VmSpec,
        shared: Option<&SharedTemplate>,
    ) -> Result<Vm, (String, bool)> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| (format!("cannot make a lifeline: {e}"), false))?;
        let lifeline = std::os::fd::AsRawFd::as_raw_fd(&r);
        let launched = match shared {
            Some(t) => t.restore(spec, Some(lifeline)),
            None => {
                let found = crate::template::find_or_build(
                    spec,
                    &self.template_dir,
                    true,
                    self.template_max,
                )
                .map_err(|e| (crate::describe_error(&e), false))?;
                let Some((store, key, t)) = found else {
                    return Err(("no template (being built elsewhere?)".into(), false));
                };
                let how = Start::Warm {
                    state: &t.state,
                    ready: t.meta.ready(),
                    ram: None,
                    lifeline,
                };
                let launched = Vm::launch_once(spec, &how);
                if matches!(&launched, Err(e) if !crate::template::host_side(e)) {
                    store.discard(&key);
                }
                launched
            }
        };
        drop(r);
        match launched {
            Ok(mut vm) => {
                vm.set_lifeline(w);
                Ok(vm)
            }
            Err(e) => Err((crate::describe_error(&e), !crate::template::host_side(&e))),
        }
    }

    /// Reaps leased VMs' jailers that ended; with `all`, waits for each.
    fn reap(&self, all: bool) {
        let mut st = self.lock();
        st.reaping.retain_mut(|c| match c.try_wait() {
            Ok(Some(_)) | Err(_) => false,
            Ok(None) => true,
        });
        if all {
            let left: Vec<Child> = st.reaping.drain(..).collect();
            drop(st);
            // Leased VMs belong to their lessees: the pool does not wait
            // for them, it only stops being their parent (they go to init).
            drop(left);
        }
    }

    pub fn status(&self) -> Status {
        let st = self.lock();
        let mut status = Status {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            budget_mib: self.cfg.max_mib,
            leases: st.leases,
            ..Status::default()
        };
        let up = self.started.elapsed().as_secs_f64().max(1.0);
        for set in &st.sets {
            if let Some(t) = &set.shared {
                status.template_kib += t.resident_bytes() >> 10;
            }
            for w in &set.warm {
                status.warm_mib += u64::from(set.base.memory_mib);
                let (rss, pss) = smaps_rollup(w.vm.pid());
                status.warm_rss_kib += rss;
                status.warm_pss_kib += pss;
            }
            status.shapes.push(ShapeStatus {
                memory_mib: set.base.memory_mib,
                vcpus: set.base.vcpus,
                target: set.target,
                warm: set.warm.len() as u32,
                hits: set.hits,
                misses: set.misses,
                refills: set.refills,
                refill_failures: set.failures,
                refill_ms: set.refill_ms,
                refill_rate: set.refills as f64 / up,
                shared_template: set.shared.is_some(),
                template_handouts: set.template_handouts,
                last_error: set.last_error.clone(),
            });
        }
        status
    }
}

/// The lessee must be the process it says will own the VM.
fn check_peer(conn: &UnixStream, owner: &Owner) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    if cred.uid() != 0 && cred.uid() != nix::unistd::geteuid().as_raw() {
        return Err("only root may lease VMs".into());
    }
    if u32::try_from(cred.pid()).ok() != Some(owner.pid) || !owner.is_alive() {
        return Err(format!(
            "the owner named ({owner}) is not the peer (pid {})",
            cred.pid()
        ));
    }
    Ok(())
}

/// Listens on `path` (root only), replacing a socket nobody serves.
fn listen(path: &Path) -> Result<UnixListener, PoolError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(PoolError::Running(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let l = UnixListener::bind(path).map_err(|source| PoolError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        PoolError::Listen {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(l)
}

/// Rss and Pss of process `pid` in KiB (zeros when unreadable).
pub fn smaps_rollup(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}
