//! Ownership records: every VM on the host has one, naming who owns it and
//! what of it exists, so that no cleanup ever guesses from names.
//!
//! A record is a JSON file `<record dir>/<vm id>` (default
//! [`DEFAULT_RECORD_DIR`], `[vms] record_dir` in the config; the directory
//! is root's, mode 0700). It exists from before the VM's cgroup is created
//! until its cgroups, its jail directory and its uid claim are all gone.
//! Creating it claims the VM id host-wide: the record is written whole
//! under a temporary name and hard-linked into place, which fails when the
//! id is taken, so no two live VMs share an id (and with it cgroups and a
//! jail). Updates are written whole and renamed over it: a reader never
//! sees half a record.
//!
//! The owner is a process known by its pid *and* its start time (field 22
//! of /proc/PID/stat), so a pid reused after the owner died never passes
//! for it; the VMM (QEMU, and the jailer when jailed) is known the same
//! way. A record whose owner is dead, or which its owner gave up with
//! something left over, is abandoned, and [`RecordDir::collect`] takes it
//! apart: the VMM is killed through a pidfd if it still runs (its identity
//! checked once the pidfd pins it), its cgroups are thawed (a frozen task
//! does not die), it gets a bounded time to go, then its cgroups are
//! removed, then the jail directory, then the uid claim — only once the
//! cgroups are gone, so that a block is never handed to a new VM while the
//! old VMM may still run — and last the record. A collector holds an
//! `flock` on the record file, so two never take one record apart at once.
//!
//! Who collects: every claim (a launch) collects abandoned records without
//! waiting, so a crashed owner's leftovers do not pile up; `mu2 gc` collects
//! them and waits for their VMMs; the shim's delete action collects exactly
//! the records of one container, whether its owner lives or not (containerd
//! runs it when it has given up on that shim).
//!
//! Limits: the records describe one host and live under `/run`, which is
//! meant to be a tmpfs, so they are not fsynced. A record that does not
//! parse (another version's, or damaged by hand) is reported and left
//! alone, and its id stays taken until someone removes it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::FlockArg;
use serde::{Deserialize, Serialize};

use crate::jail::ids::{self, LeftClaim};
use crate::jail::{JailConfig, JailMode};
use crate::spec::VmSpec;

pub use crate::jail::config::DEFAULT_RECORD_DIR;

/// The record format this code writes and reads.
pub const RECORD_VERSION: u32 = 1;
/// How long `mu2 gc` and the shim's delete action wait for a killed VMM.
pub const GC_WAIT: Duration = Duration::from_secs(10);
/// How long a claim waits for an abandoned record of its id to go.
const CLAIM_WAIT: Duration = Duration::from_secs(5);
/// How long a gone VMM's cgroup may take to empty.
const CGROUP_EMPTYING: Duration = Duration::from_secs(1);
/// The largest record read; ours are well under 4 KiB.
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// Temporary files older than this were left by a writer that died.
const TEMP_MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("invalid vm id {0:?}")]
    Id(String),
    #[error("vm {id} cannot change hands: {why}")]
    Transfer { id: String, why: String },
    #[error("the owner of vm {id} ({owner}) is not a live process")]
    OwnerNotAlive { id: String, owner: String },
    #[error("vm id {id} is in use by {owner} (record {path})")]
    InUse {
        id: String,
        owner: String,
        path: PathBuf,
    },
    #[error(
        "vm id {id} is held by the abandoned record {path}, which cannot be collected yet: {why}"
    )]
    Stale {
        id: String,
        path: PathBuf,
        why: String,
    },
    #[error("record {path} is unreadable: {why}")]
    Unreadable { path: PathBuf, why: String },
    #[error("record directory {path}: {why}")]
    Dir { path: PathBuf, why: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RecordError {
    let path = path.to_path_buf();
    move |source| RecordError::Io { what, path, source }
}

/// Who owns a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    /// containerd-shim-mu2-v1: a task or an exec of a container.
    Shim,
    /// `mu2 run`.
    Run,
    /// The VM pool.
    Pool,
    /// The µ²service gateway.
    Gateway,
    /// A test.
    Test,
}

impl fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OwnerKind::Shim => "shim",
            OwnerKind::Run => "run",
            OwnerKind::Pool => "pool",
            OwnerKind::Gateway => "gateway",
            OwnerKind::Test => "test",
        })
    }
}

/// A process that pid reuse cannot fake: its pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcId {
    pub pid: u32,
    /// Clock ticks after boot (/proc/PID/stat field 22).
    pub start: u64,
}

/// The state letter and start time of a /proc/PID/stat text.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses itself: fields are counted after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was the state; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl ProcId {
    /// The identity of the running process `pid`.
    pub fn of(pid: u32) -> io::Result<ProcId> {
        let path = format!("/proc/{pid}/stat");
        let text = fs::read_to_string(&path)?;
        let (_, start) = parse_stat(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path}: unknown format"),
            )
        })?;
        Ok(ProcId { pid, start })
    }

    /// The calling process.
    pub fn current() -> io::Result<ProcId> {
        ProcId::of(std::process::id())
    }

    /// Whether this very process still runs: its pid exists, started at
    /// the same tick, and is not a zombie.
    pub fn is_alive(&self) -> bool {
        let text = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        matches!(parse_stat(&text), Some((state, start))
            if start == self.start && !matches!(state, 'Z' | 'X' | 'x'))
    }
}

/// Who owns a VM: a process and, for the shim, the container and exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub kind: OwnerKind,
    pub pid: u32,
    /// The owner's start time (/proc/PID/stat field 22).
    pub start: u64,
    /// containerd namespace (shim only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// containerd container id (shim only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Exec id (shim only; none for the task itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
}

impl Owner {
    /// The calling process, owning a VM as `kind`. Should its start time be
    /// unreadable, the owner names no live process and claims refuse it.
    pub fn this_process(kind: OwnerKind) -> Owner {
        let me = ProcId::current().unwrap_or(ProcId {
            pid: std::process::id(),
            start: 0,
        });
        Owner {
            kind,
            pid: me.pid,
            start: me.start,
            namespace: None,
            container: None,
            exec: None,
        }
    }

    /// The calling shim, for container `container` of containerd namespace
    /// `namespace`: its task when `exec` is empty, else that exec.
    pub fn shim(namespace: &str, container: &str, exec: &str) -> Owner {
        Owner {
            namespace: Some(namespace.to_string()),
            container: Some(container.to_string()),
            exec: (!exec.is_empty()).then(|| exec.to_string()),
            ..Owner::this_process(OwnerKind::Shim)
        }
    }

    pub fn process(&self) -> ProcId {
        ProcId {
            pid: self.pid,
            start: self.start,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.process().is_alive()
    }

    /// `namespace/container`, when the owner is a container's.
    pub fn container_name(&self) -> Option<String> {
        let c = self.container.as_deref()?;
        Some(match self.namespace.as_deref() {
            Some(ns) => format!("{ns}/{c}"),
            None => c.to_string(),
        })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pid {}", self.kind, self.pid)?;
        if let Some(c) = self.container_name() {
            write!(f, " (container {c}")?;
            if let Some(e) = &self.exec {
                write!(f, " exec {e}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The VMM's processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vmm {
    pub qemu: ProcId,
    /// QEMU's parent when jailed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jailer: Option<ProcId>,
}

impl Vmm {
    fn processes(&self) -> impl Iterator<Item = (&'static str, ProcId)> + '_ {
        std::iter::once(("qemu", self.qemu)).chain(self.jailer.map(|j| ("jailer", j)))
    }

    pub fn is_alive(&self) -> bool {
        self.processes().any(|(_, p)| p.is_alive())
    }
}

/// A jailed VM's host paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailPaths {
    /// `<jail_root>/<vm id>`.
    pub dir: PathBuf,
    /// Where its uid claim is kept; searched for a claim naming the VM when
    /// the owner died before it knew `claim`.
    pub claim_dir: PathBuf,
    /// The uid claim file, once taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<PathBuf>,
}

/// One VM's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u32,
    pub id: String,
    /// When it was claimed, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub owner: Owner,
    /// The owner let go of a VM it could not entirely clean up: the rest is
    /// the collector's.
    #[serde(default)]
    pub released: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<Vmm>,
    /// The VMM's cgroup directories, once created.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Jailed VMs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailPaths>,
    /// A pooled VM's share directory (its image is attached under it in
    /// the jail's mount namespace; on the host it holds empty directories
    /// only): removed after the jail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_dir: Option<PathBuf>,
}

/// What a record says of its VM, as `mu2 ps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Owner and VMM alive.
    Running,
    /// Owner alive, no VMM yet.
    Starting,
    /// Owner alive, VMM gone (the owner is tearing it down).
    VmmDead,
    /// The owner died: the record is the collector's.
    OwnerDead,
    /// The owner gave it up with leftovers: the record is the collector's.
    Released,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Running => "running",
            State::Starting => "starting",
            State::VmmDead => "VMM dead",
            State::OwnerDead => "owner dead",
            State::Released => "released",
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Record {
    fn new(id: &str, owner: &Owner, jail: Option<&JailConfig>) -> Record {
        Record {
            version: RECORD_VERSION,
            id: id.to_string(),
            created_ms: now_ms(),
            owner: owner.clone(),
            released: false,
            vmm: None,
            cgroups: Vec::new(),
            // Known before the jail exists, so that a crash while it is
            // being made still leaves a way to it.
            jail: jail.map(|c| JailPaths {
                dir: crate::jail::jail_dir(c, id),
                claim_dir: c.claim_dir.clone(),
                claim: None,
            }),
            share_dir: None,
        }
    }

    /// Whether nobody holds this record any more (its owner died or let go).
    pub fn abandoned(&self) -> bool {
        self.released || !self.owner.is_alive()
    }

    pub fn vmm_alive(&self) -> bool {
        self.vmm.as_ref().is_some_and(Vmm::is_alive)
    }

    pub fn state(&self) -> State {
        if self.released {
            State::Released
        } else if !self.owner.is_alive() {
            State::OwnerDead
        } else if self.vmm.is_none() {
            State::Starting
        } else if self.vmm_alive() {
            State::Running
        } else {
            State::VmmDead
        }
    }

    /// Time since the claim.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.created_ms))
    }

    /// Every cgroup directory this VM may have: those recorded, and those
    /// its id names (created just before the owner died, unrecorded). The
    /// record holds the id, so both are this VM's.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.cgroups.clone();
        for d in crate::cgroup::paths_for(&self.id) {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs
    }

    /// The uid claim files that may be this VM's.
    fn claim_files(&self) -> Vec<PathBuf> {
        match &self.jail {
            None => Vec::new(),
            Some(JailPaths { claim: Some(c), .. }) => vec![c.clone()],
            Some(j) => ids::claims_naming(&j.claim_dir, &self.id),
        }
    }

    fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// A record as listed: the record, or why it cannot be read.
#[derive(Debug, Clone)]
pub struct RecordInfo {
    pub id: String,
    pub path: PathBuf,
    pub record: Result<Record, String>,
}

/// Which records a collection takes apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every abandoned record (`mu2 gc`, launches).
    Abandoned,
    /// That VM's record, if abandoned.
    Id(String),
    /// Every record of this container (its task's and its execs'), whether
    /// its owner lives or not: the shim's delete action, run when containerd
    /// has given up on the shim. Matched exactly, never by prefix.
    Container {
        namespace: String,
        container: String,
    },
}

impl Filter {
    fn selects(&self, r: &Record) -> bool {
        match self {
            Filter::Abandoned => r.abandoned(),
            Filter::Id(id) => *id == r.id && r.abandoned(),
            Filter::Container {
                namespace,
                container,
            } => {
                r.owner.kind == OwnerKind::Shim
                    && r.owner.namespace.as_deref() == Some(namespace)
                    && r.owner.container.as_deref() == Some(container)
            }
        }
    }
}

/// How a collection goes.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// How long to wait for killed VMMs to end; zero: kill them and leave
    /// their records to a later collection.
    pub wait: Duration,
    /// Only say what would be done.
    pub dry_run: bool,
}

/// What a collection did with one record.
#[derive(Debug, Clone)]
pub struct GcEntry {
    pub id: String,
    /// `None` when the record is unreadable.
    pub owner: Option<Owner>,
    pub owner_alive: bool,
    /// The processes killed (in a dry run: alive, to be killed): what, pid.
    pub killed: Vec<(&'static str, u32)>,
    /// What was removed (in a dry run: what exists, to be removed): what
    /// ("cgroup", "jail", "claim", "record"), path.
    pub removed: Vec<(&'static str, PathBuf)>,
    /// Why the record stays, if it does.
    pub kept: Option<String>,
    /// A dry run's entry: nothing was done.
    pub dry_run: bool,
}

impl GcEntry {
    fn new(id: &str, owner: Option<&Owner>) -> GcEntry {
        GcEntry {
            id: id.to_string(),
            owner: owner.cloned(),
            owner_alive: owner.is_some_and(Owner::is_alive),
            killed: Vec::new(),
            removed: Vec::new(),
            kept: None,
            dry_run: false,
        }
    }

    /// One line: the VM, its owner, what was killed and removed, and why
    /// the record stays, if it does.
    pub fn summary(&self) -> String {
        let mut s = format!("vm {}", self.id);
        if let Some(o) = &self.owner {
            let alive = if self.owner_alive { "alive" } else { "dead" };
            s.push_str(&format!(" (owner {o}, {alive})"));
        }
        if !self.killed.is_empty() {
            let k: Vec<String> = self
                .killed
                .iter()
                .map(|(what, pid)| format!("{what} {pid}"))
                .collect();
            let verb = if self.dry_run { "would kill" } else { "killed" };
            s.push_str(&format!(": {verb} {}", k.join(", ")));
        }
        let cgroups = self.removed.iter().filter(|(w, _)| *w == "cgroup").count();
        let mut parts = Vec::new();
        if cgroups > 0 {
            parts.push(format!(
                "{cgroups} cgroup{}",
                if cgroups == 1 { "" } else { "s" }
            ));
        }
        for (what, path) in self.removed.iter().filter(|(w, _)| *w != "cgroup") {
            parts.push(format!("{what} {}", path.display()));
        }
        if !parts.is_empty() {
            s.push_str(if self.killed.is_empty() { ": " } else { "; " });
            let verb = if self.dry_run {
                "would remove"
            } else {
                "removed"
            };
            s.push_str(&format!("{verb} {}", parts.join(", ")));
        }
        if let Some(why) = &self.kept {
            s.push_str(&format!("; record kept: {why}"));
        }
        s
    }
}

/// What a collection did, record by record.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub entries: Vec<GcEntry>,
}

impl GcReport {
    /// The entries whose record is gone.
    pub fn removed(&self) -> impl Iterator<Item = &GcEntry> {
        self.entries.iter().filter(|e| e.kept.is_none())
    }
}

/// The directory of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDir {
    path: PathBuf,
}

/// Claims the record of `spec`'s VM (what [`crate::Vm::launch`] does first).
pub fn claim_for(spec: &VmSpec) -> Result<RecordGuard, RecordError> {
    let jail = match &spec.jail {
        JailMode::Jailed(c) => Some(c),
        JailMode::Disabled { .. } => None,
    };
    RecordDir::for_mode(&spec.jail).claim(&spec.id, &spec.owner, jail)
}

impl RecordDir {
    pub fn new(path: impl Into<PathBuf>) -> RecordDir {
        RecordDir { path: path.into() }
    }

    /// The directory the configuration names.
    pub fn for_mode(mode: &JailMode) -> RecordDir {
        RecordDir::new(mode.record_dir())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record file of VM `id`.
    pub fn record_path(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    /// Makes the directory if missing (its parents 0711, itself 0700) and
    /// checks that it is a real directory of ours that nobody else may
    /// read or write: a collector kills the processes records name.
    fn ensure(&self) -> Result<(), RecordError> {
        let dir = &self.path;
        if let Some(parent) = dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(io_err("create", parent))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", dir)(e)),
        }
        self.check()
    }

    fn check(&self) -> Result<(), RecordError> {
        let dir = &self.path;
        let m = fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
        let bad = |why: &str| {
            Err(RecordError::Dir {
                path: dir.clone(),
                why: why.to_string(),
            })
        };
        if !m.file_type().is_dir() {
            return bad("not a directory (a symlink?)");
        }
        if m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o077 != 0 {
            return bad("must be owned by root and accessible by root only (mode 0700)");
        }
        Ok(())
    }

    /// Claims VM id `id` for `owner`: creates its record, or fails if a live
    /// owner holds the id (naming it). A record of the id that is abandoned
    /// is collected first; other abandoned records are collected on the way
    /// without waiting. `jail`: the jail the VM will have, if any.
    pub fn claim(
        &self,
        id: &str,
        owner: &Owner,
        jail: Option<&JailConfig>,
    ) -> Result<RecordGuard, RecordError> {
        if !crate::jail::valid_id(id) {
            return Err(RecordError::Id(id.to_string()));
        }
        if !owner.is_alive() {
            return Err(RecordError::OwnerNotAlive {
                id: id.to_string(),
                owner: owner.to_string(),
            });
        }
        self.ensure()?;
        let quick = GcOptions {
            wait: Duration::ZERO,
            dry_run: false,
        };
        for e in self.collect(&Filter::Abandoned, &quick).removed() {
            log::info!("collected the leftovers of a dead owner: {}", e.summary());
        }
        let record = Record::new(id, owner, jail);
        let path = self.record_path(id);
        let deadline = Instant::now() + CLAIM_WAIT;
        loop {
            if self.create(&record)? {
                return Ok(RecordGuard {
                    dir: self.clone(),
                    record,
                    done: false,
                });
            }
            let Some(existing) = self.read(id)? else {
                // Collected between our attempt and our look: try again.
                if Instant::now() >= deadline {
                    return Err(RecordError::Stale {
                        id: id.to_string(),
                        path,
                        why: "it keeps coming back".into(),
                    });
                }
                continue;
            };
            if !existing.abandoned() {
                return Err(RecordError::InUse {
                    id: id.to_string(),
                    owner: existing.owner.to_string(),
                    path,
                });
            }
            let opts = GcOptions {
                wait: deadline.saturating_duration_since(Instant::now()),
                dry_run: false,
            };
            let kept = self
                .collect_one(id, &Filter::Id(id.to_string()), &opts)
                .and_then(|e| e.kept);
            if Instant::now() >= deadline {
                return Err(RecordError::Stale {
                    id: id.to_string(),
                    path,
                    why: kept.unwrap_or_else(|| "another collector is at it".into()),
                });
            }
            if kept.is_some() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Moves VM `id`'s record from `from` to `to` (a VM leased from a
    /// pool changes hands): under the record's lock, only if `from` still
    /// owns it and its VMM runs. `to` must be alive. The record is the
    /// returned guard's from then on; a collector that raced us either
    /// finds the lock taken or the new owner.
    pub fn transfer(&self, id: &str, from: &Owner, to: Owner) -> Result<RecordGuard, RecordError> {
        let path = self.record_path(id);
        let refuse = |why: String| RecordError::Transfer {
            id: id.to_string(),
            why,
        };
        if !to.is_alive() {
            return Err(RecordError::OwnerNotAlive {
                id: id.to_string(),
                owner: to.to_string(),
            });
        }
        let file = open_nofollow(&path).map_err(io_err("open", &path))?;
        let file = nix::fcntl::Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| refuse(format!("its record is locked ({e})")))?;
        if !same_file(&file, &path) {
            return Err(refuse("its record was replaced".into()));
        }
        let mut record = parse(&file, id).map_err(refuse)?;
        if &record.owner != from {
            return Err(refuse(format!("it is owned by {}", record.owner)));
        }
        if record.released || !record.vmm_alive() {
            return Err(refuse("its VMM is gone".into()));
        }
        record.owner = to;
        self.update(&record)?;
        drop(file);
        Ok(RecordGuard {
            dir: self.clone(),
            record,
            done: false,
        })
    }

    /// VM `id`'s record, if there is one.
    pub fn read(&self, id: &str) -> Result<Option<Record>, RecordError> {
        let path = self.record_path(id);
        let f = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        parse(&f, id)
            .map(Some)
            .map_err(|why| RecordError::Unreadable { path, why })
    }

    /// Every record, sorted by VM id; an unreadable directory lists none.
    pub fn list(&self) -> Vec<RecordInfo> {
        let mut ids: Vec<String> = fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::jail::valid_id(n))
            .collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let path = self.record_path(&id);
                let record = match open_nofollow(&path) {
                    Ok(f) => parse(&f, &id),
                    Err(e) => Err(e.to_string()),
                };
                RecordInfo { id, path, record }
            })
            .collect()
    }

    /// Takes apart the records `filter` selects (see the module docs); in
    /// a dry run, only says what it would do.
    pub fn collect(&self, filter: &Filter, opts: &GcOptions) -> GcReport {
        let mut report = GcReport::default();
        if let Filter::Id(id) = filter {
            report.entries.extend(self.collect_one(id, filter, opts));
            return report;
        }
        for info in self.list() {
            report
                .entries
                .extend(self.collect_one(&info.id, filter, opts));
        }
        if !opts.dry_run {
            self.remove_old_temps();
        }
        report
    }

    fn collect_one(&self, id: &str, filter: &Filter, opts: &GcOptions) -> Option<GcEntry> {
        let path = self.record_path(id);
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                let mut entry = GcEntry::new(id, None);
                entry.kept = Some(format!("cannot open {}: {e}", path.display()));
                return Some(entry);
            }
        };
        let record = match parse(&file, id) {
            Ok(r) => r,
            // Nobody can tell whose it is, or what it holds.
            Err(why) => {
                if matches!(filter, Filter::Container { .. }) {
                    return None;
                }
                let mut entry = GcEntry::new(id, None);
                entry.kept = Some(format!("unreadable: {why}"));
                return Some(entry);
            }
        };
        if !filter.selects(&record) {
            return None;
        }
        if opts.dry_run {
            return Some(survey(&record, &path));
        }
        let mut entry = GcEntry::new(id, Some(&record.owner));
        let file = match nix::fcntl::Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, e)) => {
                entry.kept = Some(if e == nix::errno::Errno::EWOULDBLOCK {
                    "another process is collecting it".into()
                } else {
                    format!("cannot lock {}: {e}", path.display())
                });
                return Some(entry);
            }
        };
        // The record we locked may have been replaced, or collected and
        // claimed anew, since we opened it.
        if !same_file(&file, &path) {
            return None;
        }
        let record = match parse(&file, id) {
            Ok(r) if filter.selects(&r) => r,
            _ => return None,
        };
        take_apart(&record, opts.wait, &mut entry);
        if entry.kept.is_none() {
            if same_file(&file, &path) {
                if let Err(e) = fs::remove_file(&path) {
                    entry.kept = Some(format!("cannot remove {}: {e}", path.display()));
                    return Some(entry);
                }
            }
            entry.removed.push(("record", path));
        }
        Some(entry)
    }

    /// Removes the temporary files writers that died left.
    fn remove_old_temps(&self) {
        for e in fs::read_dir(&self.path).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with('.') && name.ends_with(".tmp")) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > TEMP_MAX_AGE);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Writes `r` whole under a temporary name in the directory.
    fn write_temp(&self, r: &Record) -> Result<PathBuf, RecordError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let tmp = self.path.join(format!(
            ".{}.{}.{}.tmp",
            r.id,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        if let Err(e) = f.write_all(&r.to_json()) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write", &tmp)(e));
        }
        Ok(tmp)
    }

    /// Puts `r` in place if its id is free: `Ok(false)` when it is taken.
    fn create(&self, r: &Record) -> Result<bool, RecordError> {
        let tmp = self.write_temp(r)?;
        let path = self.record_path(&r.id);
        // link(2) fails when the name exists: creating and claiming are one
        // atomic step, and the record appears complete.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("create", &path)(e)),
        }
    }

    /// Replaces `r`'s record whole.
    fn update(&self, r: &Record) -> Result<(), RecordError> {
        let tmp = self.write_temp(r)?;
        let path = self.record_path(&r.id);
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("replace", &path)(e)
        })
    }
}

/// What collecting `r` would do: what lives and what exists.
fn survey(r: &Record, path: &Path) -> GcEntry {
    let mut entry = GcEntry::new(&r.id, Some(&r.owner));
    entry.dry_run = true;
    if let Some(v) = &r.vmm {
        entry.killed = v
            .processes()
            .filter(|(_, p)| p.is_alive())
            .map(|(what, p)| (what, p.pid))
            .collect();
    }
    for d in r.cgroup_dirs() {
        if d.exists() {
            entry.removed.push(("cgroup", d));
        }
    }
    if let Some(j) = &r.jail {
        if fs::symlink_metadata(&j.dir).is_ok() {
            entry.removed.push(("jail", j.dir.clone()));
        }
    }
    for c in r.claim_files() {
        if fs::symlink_metadata(&c).is_ok() {
            entry.removed.push(("claim", c));
        }
    }
    entry.removed.push(("record", path.to_path_buf()));
    entry
}

/// Kills `r`'s VMM if it lives, waits up to `wait` for it to end, then
/// removes its cgroups, its jail directory and its uid claim, in that
/// order; stops (setting `entry.kept`) at the first thing that must stay.
fn take_apart(r: &Record, wait: Duration, entry: &mut GcEntry) {
    let mut pidfds = Vec::new();
    if let Some(v) = &r.vmm {
        for (what, p) in v.processes() {
            match kill_if_alive(p) {
                Ok(Some(fd)) => {
                    entry.killed.push((what, p.pid));
                    pidfds.push(fd);
                }
                Ok(None) => {}
                Err(e) => {
                    entry.kept = Some(format!("cannot kill {what} {}: {e}", p.pid));
                    return;
                }
            }
        }
    }
    let cgroups: Vec<PathBuf> = r.cgroup_dirs().into_iter().filter(|d| d.exists()).collect();
    for d in &cgroups {
        crate::cgroup::thaw_dir(d);
    }
    if !wait_gone(&pidfds, wait) {
        entry.kept = Some("its VMM has not ended yet".into());
        return;
    }
    release_resources(r, &cgroups, entry);
}

/// Removes a gone VMM's cgroups, then its jail directory, then its uid
/// claim (never before the cgroups are gone).
fn release_resources(r: &Record, cgroups: &[PathBuf], entry: &mut GcEntry) {
    for d in cgroups {
        if let Err(e) = crate::cgroup::remove_dir(d, CGROUP_EMPTYING) {
            entry.kept = Some(format!("cannot remove cgroup {}: {e}", d.display()));
            return;
        }
        entry.removed.push(("cgroup", d.clone()));
    }
    let Some(j) = &r.jail else { return };
    match fs::remove_dir(&j.dir) {
        Ok(()) => entry.removed.push(("jail", j.dir.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // On the host a jail directory is always empty (the jail's tmpfs
        // is in QEMU's mount namespace): one with files was never this
        // VM's (the launch refused it as existing), and is left alone.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            log::warn!(
                "vm {}: {} is not an empty jail directory; left alone",
                r.id,
                j.dir.display()
            );
        }
        Err(e) => {
            entry.kept = Some(format!("cannot remove jail {}: {e}", j.dir.display()));
            return;
        }
    }
    if let Some(d) = &r.share_dir {
        match crate::pool::remove_share_dir(d) {
            Ok(true) => entry.removed.push(("share", d.clone())),
            Ok(false) => {}
            Err(e) => log::warn!("vm {}: cannot remove {}: {e}", r.id, d.display()),
        }
    }
    for c in r.claim_files() {
        match ids::release_left_behind(&c, &r.id) {
            LeftClaim::Released => entry.removed.push(("claim", c)),
            LeftClaim::Absent | LeftClaim::NotOurs => {}
            LeftClaim::Held => {
                entry.kept = Some(format!("its uid claim {} is still held", c.display()));
                return;
            }
        }
    }
}

/// SIGKILLs process `p` if it is still the process recorded; returns its
/// pidfd to wait on, or `None` when it is gone (or its pid is another's).
fn kill_if_alive(p: ProcId) -> io::Result<Option<OwnedFd>> {
    let fd = match crate::sys::pidfd_open(p.pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Whatever a record says, a collector never kills itself.
    if p.pid == std::process::id() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "that is the collector itself",
        ));
    }
    // The pidfd pins the process that had the pid when it was opened:
    // checking the identity now means the signal reaches the recorded
    // process or nobody.
    if !p.is_alive() {
        return Ok(None);
    }
    match crate::sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL) {
        Ok(()) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits up to `wait` for every process behind `pidfds` to end (a pidfd
/// polls readable once its process has exited).
fn wait_gone(pidfds: &[OwnedFd], wait: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags};
    let deadline = Instant::now() + wait;
    let mut pending: Vec<&OwnedFd> = pidfds.iter().collect();
    loop {
        let mut fds: Vec<PollFd<'_>> = pending
            .iter()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let slice = left.min(Duration::from_millis(100)).as_millis() as u16;
        match poll(&mut fds, slice) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
        let done: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut i = 0;
        pending.retain(|_| {
            i += 1;
            !done[i - 1]
        });
        if pending.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Reads the record in `f` (from its start), checking that it is VM `id`'s.
fn parse(f: &File, id: &str) -> Result<Record, String> {
    use std::io::Seek;
    let mut f = f;
    let mut text = Vec::new();
    f.rewind()
        .and_then(|_| f.take(MAX_RECORD_BYTES + 1).read_to_end(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!("larger than {MAX_RECORD_BYTES} bytes"));
    }
    let r: Record = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if r.version != RECORD_VERSION {
        return Err(format!("version {} (this is {RECORD_VERSION})", r.version));
    }
    if r.id != id {
        return Err(format!("it names vm {:?}", r.id));
    }
    Ok(r)
}

/// Whether `path` is still the file `f` has open.
fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// A claimed record, held by the VM's owner: updated as the VM acquires
/// things, released (removed) once they are all gone. Dropping releases.
#[derive(Debug)]
pub struct RecordGuard {
    dir: RecordDir,
    record: Record,
    done: bool,
}

impl RecordGuard {
    pub fn id(&self) -> &str {
        &self.record.id
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    pub fn path(&self) -> PathBuf {
        self.dir.record_path(&self.record.id)
    }

    /// Records the VMM's cgroup directories (just after creating them).
    pub fn set_cgroups(&mut self, dirs: &[PathBuf]) {
        self.record.cgroups = dirs.to_vec();
        self.save();
    }

    /// Records the VMM: QEMU's pid and, when jailed, the jailer's (just
    /// after spawning them; their start times are read here).
    pub fn set_vmm(&mut self, qemu_pid: u32, jailer_pid: Option<u32>) {
        let ident = |pid: u32| {
            ProcId::of(pid).unwrap_or_else(|e| {
                // Gone already: no start time matches it, so it is dead.
                log::debug!("vm {}: no identity for pid {pid}: {e}", self.record.id);
                ProcId { pid, start: 0 }
            })
        };
        self.record.vmm = Some(Vmm {
            qemu: ident(qemu_pid),
            jailer: jailer_pid.map(ident),
        });
        self.save();
    }

    /// Records a pooled VM's share directory (see [`Record::share_dir`]).
    pub fn set_share_dir(&mut self, dir: &Path) {
        self.record.share_dir = Some(dir.to_path_buf());
        self.save();
    }

    /// Records the jail directory and the uid claim file.
    pub fn set_jail(&mut self, dir: &Path, claim: Option<&Path>) {
        let claim_dir = self
            .record
            .jail
            .as_ref()
            .map(|j| j.claim_dir.clone())
            .or_else(|| claim.and_then(Path::parent).map(Path::to_path_buf))
            .unwrap_or_default();
        self.record.jail = Some(JailPaths {
            dir: dir.to_path_buf(),
            claim_dir,
            claim: claim.map(Path::to_path_buf),
        });
        self.save();
    }

    /// Lets go of the record without removing it: it was transferred to
    /// another owner ([`RecordDir::transfer`]).
    pub fn disown(&mut self) {
        self.done = true;
    }

    /// Removes the record, once the VMM is gone and its owner has released
    /// its cgroups, jail and uid claim; whatever is left is removed here,
    /// and if something must stay (a VMM that still runs, a cgroup that
    /// cannot go), the record stays, marked released, for the collector.
    /// Idempotent; dropping the guard does it.
    pub fn release(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let id = self.record.id.clone();
        let mut entry = GcEntry::new(&id, Some(&self.record.owner));
        if self.record.vmm_alive() {
            entry.kept = Some("its VMM still runs".into());
        } else {
            let cgroups: Vec<PathBuf> = self
                .record
                .cgroup_dirs()
                .into_iter()
                .filter(|d| d.exists())
                .collect();
            release_resources(&self.record, &cgroups, &mut entry);
        }
        if let Some(why) = &entry.kept {
            log::warn!("vm {id}: its record stays for `mu2 gc`: {why}");
            self.record.released = true;
            self.save();
            return;
        }
        if !entry.removed.is_empty() {
            log::debug!("vm {id}: released late: {}", entry.summary());
        }
        let path = self.path();
        // Only our own record: a shim's delete action may have taken it
        // apart already, and the id been claimed anew.
        match self.dir.read(&id) {
            Ok(Some(r))
                if r.owner == self.record.owner && r.created_ms == self.record.created_ms =>
            {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("cannot remove record {}: {e}", path.display());
                }
            }
            _ => {}
        }
    }

    fn save(&self) {
        if let Err(e) = self.dir.update(&self.record) {
            // The VM goes on: should its owner crash now, the collector
            // still finds its cgroups and jail from the id.
            log::warn!(
                "vm {}: cannot update its record: {}",
                self.record.id,
                crate::describe_error(&e)
            );
        }
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, RecordDir) {
        let t = tempfile::tempdir().unwrap();
        let d = RecordDir::new(t.path().join("vms"));
        (t, d)
    }

    /// A process that has exited (and been reaped): its identity is dead.
    fn dead_process() -> ProcId {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let p = ProcId::of(c.id()).unwrap();
        c.wait().unwrap();
        p
    }

    fn owner_at(p: ProcId) -> Owner {
        Owner {
            pid: p.pid,
            start: p.start,
            ..Owner::this_process(OwnerKind::Test)
        }
    }

    /// Writes a record as a dead owner would have left it.
    fn leave(d: &RecordDir, r: &Record) {
        d.ensure().unwrap();
        assert!(d.create(r).unwrap());
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 \
                    987654 12345678 300 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("12 (x) Z 1 2"), None);
        let me = ProcId::current().unwrap();
        assert!(me.is_alive());
        assert!(me.start > 0);
    }

    #[test]
    fn a_reused_pid_or_a_dead_process_is_not_the_owner() {
        let me = ProcId::current().unwrap();
        // Same pid, another start time: a process that reused the pid.
        let reused = ProcId {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!reused.is_alive());
        assert!(!dead_process().is_alive());
        assert!(!owner_at(reused).is_alive());
        assert!(Owner::this_process(OwnerKind::Test).is_alive());
    }

    #[test]
    fn a_claim_is_written_atomically_and_the_directory_is_private() {
        let (_t, d) = dir();
        let owner = Owner::shim("k8s.io", "web", "e1");
        let mut g = d.claim("web-1", &owner, None).unwrap();
        let mode = fs::metadata(d.path()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        let r = d.read("web-1").unwrap().unwrap();
        assert_eq!(r.owner, owner);
        assert_eq!(r.state(), State::Starting);
        g.set_cgroups(&["/nonexistent/mu2/web-1".into()]);
        let mut vmm = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        g.set_vmm(vmm.id(), None);
        let r = d.read("web-1").unwrap().unwrap();
        assert_eq!(r.cgroups, [PathBuf::from("/nonexistent/mu2/web-1")]);
        assert_eq!(r.state(), State::Running);
        // Only the record itself: every temporary file is gone.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["web-1"]);
        // Not under a name that could be a record: ids never start with '.'.
        let tmp = d.write_temp(&r).unwrap();
        assert!(tmp.file_name().unwrap().to_string_lossy().starts_with('.'));
        assert_eq!(d.list().len(), 1);
        fs::remove_file(tmp).unwrap();
        // The VMM still runs: the record stays, for the collector (which
        // the next claim runs: it kills the VMM, without waiting for it).
        g.release();
        assert_eq!(d.read("web-1").unwrap().unwrap().state(), State::Released);
        let vmm_pid = ProcId::of(vmm.id()).unwrap();
        let mut g = d.claim("web-2", &owner, None).unwrap();
        g.set_vmm(dead_process().pid, None);
        assert_eq!(d.read("web-2").unwrap().unwrap().state(), State::VmmDead);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(vmm.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(!vmm_pid.is_alive());
        drop(g);
        assert!(d.read("web-2").unwrap().is_none());
        // web-1 went with that claim's collection if its VMM died at once,
        // else it goes with the next one.
        let report = d.collect(
            &Filter::Abandoned,
            &GcOptions {
                wait: Duration::ZERO,
                dry_run: false,
            },
        );
        assert!(d.list().is_empty(), "{:?}", report.entries);
        assert!(d.read("web-1").unwrap().is_none());
        assert!(d.list().is_empty());
    }

    #[test]
    fn a_live_owner_keeps_its_id_and_is_named_in_the_refusal() {
        let (_t, d) = dir();
        let _held = d
            .claim("web", &Owner::shim("default", "web", ""), None)
            .unwrap();
        let e = d
            .claim("web", &Owner::this_process(OwnerKind::Run), None)
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, RecordError::InUse { .. }), "{msg}");
        assert!(
            msg.contains("shim pid") && msg.contains("default/web"),
            "{msg}"
        );
        // A different id is free, even one the first is a prefix of.
        d.claim("web.1", &Owner::this_process(OwnerKind::Run), None)
            .unwrap();
    }

    #[test]
    fn of_concurrent_claims_of_one_id_exactly_one_wins() {
        let (_t, d) = dir();
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| d.claim("race", &Owner::this_process(OwnerKind::Test), None)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, RecordError::InUse { .. }), "{e}");
            }
        }
        // Every record read whole: never a half-written one.
        assert!(d.list().iter().all(|i| i.record.is_ok()));
    }

    #[test]
    fn a_dead_owners_record_is_stale_and_collected_by_the_next_claim() {
        let (t, d) = dir();
        let jail_root = t.path().join("jail");
        fs::create_dir_all(jail_root.join("web")).unwrap();
        let mut r = Record::new("web", &owner_at(dead_process()), None);
        r.vmm = Some(Vmm {
            qemu: dead_process(),
            jailer: None,
        });
        r.jail = Some(JailPaths {
            dir: jail_root.join("web"),
            claim_dir: t.path().join("ids"),
            claim: None,
        });
        leave(&d, &r);
        assert_eq!(
            d.list()[0].record.as_ref().unwrap().state(),
            State::OwnerDead
        );
        let g = d
            .claim("web", &Owner::this_process(OwnerKind::Run), None)
            .unwrap();
        assert!(!jail_root.join("web").exists(), "the dead VM's jail stayed");
        assert_eq!(d.read("web").unwrap().unwrap().owner, g.record().owner);
    }

    #[test]
    fn claims_refuse_bad_ids_and_dead_owners() {
        let (_t, d) = dir();
        for bad in ["", ".", "..", ".x", "a/b", &"x".repeat(65)] {
            let e = d
                .claim(bad, &Owner::this_process(OwnerKind::Test), None)
                .unwrap_err();
            assert!(matches!(e, RecordError::Id(_)), "{bad:?}: {e}");
        }
        let e = d.claim("x", &owner_at(dead_process()), None).unwrap_err();
        assert!(matches!(e, RecordError::OwnerNotAlive { .. }), "{e}");
    }

    #[test]
    fn gc_takes_dead_owners_records_and_leaves_live_ones() {
        let (t, d) = dir();
        let jails = t.path().join("jail");
        let mk = |id: &str, owner: Owner| {
            fs::create_dir_all(jails.join(id)).unwrap();
            let mut r = Record::new(id, &owner, None);
            r.jail = Some(JailPaths {
                dir: jails.join(id),
                claim_dir: t.path().join("ids"),
                claim: None,
            });
            leave(&d, &r);
        };
        mk("dead", owner_at(dead_process()));
        mk("live", Owner::this_process(OwnerKind::Test));
        // The same pid as a live process, but not its start time.
        let me = ProcId::current().unwrap();
        mk(
            "reused",
            owner_at(ProcId {
                pid: me.pid,
                start: me.start - 1,
            }),
        );
        let opts = GcOptions {
            wait: Duration::from_secs(1),
            dry_run: true,
        };
        let plan = d.collect(&Filter::Abandoned, &opts);
        let ids: Vec<_> = plan.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["dead", "reused"]);
        assert!(jails.join("dead").exists(), "a dry run removed something");
        let done = d.collect(
            &Filter::Abandoned,
            &GcOptions {
                dry_run: false,
                ..opts
            },
        );
        assert_eq!(done.removed().count(), 2, "{:?}", done.entries);
        let e = &done.entries[0];
        assert!(e.summary().contains("removed jail"), "{}", e.summary());
        assert!(!jails.join("dead").exists() && !jails.join("reused").exists());
        assert!(jails.join("live").exists());
        let left: Vec<_> = d.list().into_iter().map(|i| i.id).collect();
        assert_eq!(left, ["live"]);
    }

    #[test]
    fn a_dead_owners_live_vmm_is_killed_and_waited_for() {
        let (_t, d) = dir();
        let mut vmm = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let mut r = Record::new("v", &owner_at(dead_process()), None);
        r.vmm = Some(Vmm {
            qemu: ProcId::of(vmm.id()).unwrap(),
            jailer: None,
        });
        leave(&d, &r);
        let reaper = std::thread::spawn(move || vmm.wait().unwrap());
        let report = d.collect(
            &Filter::Abandoned,
            &GcOptions {
                wait: Duration::from_secs(10),
                dry_run: false,
            },
        );
        let st = reaper.join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        let e = &report.entries[0];
        assert_eq!(e.killed.len(), 1, "{}", e.summary());
        assert!(e.kept.is_none(), "{}", e.summary());
        assert!(d.list().is_empty());
    }

    #[test]
    fn a_vmm_whose_pid_was_reused_is_not_killed() {
        let (_t, d) = dir();
        let mut stranger = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let p = ProcId::of(stranger.id()).unwrap();
        let mut r = Record::new("v", &owner_at(dead_process()), None);
        r.vmm = Some(Vmm {
            qemu: ProcId {
                pid: p.pid,
                start: p.start - 1,
            },
            jailer: None,
        });
        leave(&d, &r);
        let report = d.collect(
            &Filter::Abandoned,
            &GcOptions {
                wait: Duration::from_secs(1),
                dry_run: false,
            },
        );
        assert!(report.entries[0].killed.is_empty());
        assert!(p.is_alive(), "a stranger with the VMM's old pid was killed");
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }

    #[test]
    fn the_delete_action_takes_exactly_its_containers_records() {
        let (_t, d) = dir();
        let shim = |c: &str, e: &str| Owner::shim("default", c, e);
        let _web = d.claim("web", &shim("web", ""), None).unwrap();
        let _web_e1 = d.claim("web.e1", &shim("web", "e1"), None).unwrap();
        let _web1 = d.claim("web.1", &shim("web.1", ""), None).unwrap();
        let _other_ns = d
            .claim("web-k8s", &Owner::shim("k8s.io", "web", ""), None)
            .unwrap();
        let report = d.collect(
            &Filter::Container {
                namespace: "default".into(),
                container: "web".into(),
            },
            &GcOptions {
                wait: Duration::from_secs(1),
                dry_run: false,
            },
        );
        let mut ids: Vec<_> = report.removed().map(|e| e.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["web", "web.e1"]);
        let left: Vec<_> = d.list().into_iter().map(|i| i.id).collect();
        assert_eq!(left, ["web-k8s", "web.1"]);
    }

    #[test]
    fn an_unreadable_record_is_reported_and_kept() {
        let (_t, d) = dir();
        d.ensure().unwrap();
        fs::write(d.record_path("junk"), "{not json").unwrap();
        let list = d.list();
        assert!(list[0].record.is_err());
        let report = d.collect(
            &Filter::Abandoned,
            &GcOptions {
                wait: Duration::ZERO,
                dry_run: false,
            },
        );
        assert!(report.entries[0]
            .kept
            .as_deref()
            .unwrap()
            .contains("unreadable"));
        assert!(d.record_path("junk").exists());
        let e = d
            .claim("junk", &Owner::this_process(OwnerKind::Test), None)
            .unwrap_err();
        assert!(matches!(e, RecordError::Unreadable { .. }), "{e}");
    }

    #[test]
    fn a_record_directory_others_may_read_is_refused() {
        let (_t, d) = dir();
        fs::DirBuilder::new().mode(0o755).create(d.path()).unwrap();
        let e = d
            .claim("x", &Owner::this_process(OwnerKind::Test), None)
            .unwrap_err();
        assert!(matches!(e, RecordError::Dir { .. }), "{e}");
    }

    #[test]
    fn a_released_record_with_leftovers_goes_to_the_collector() {
        let (t, d) = dir();
        let jail = t.path().join("jail-x");
        fs::create_dir(&jail).unwrap();
        // Something the owner cannot remove yet: a uid claim still held.
        let claim = t.path().join("claim");
        fs::write(&claim, "x").unwrap();
        let holder = File::open(&claim).unwrap();
        let held = nix::fcntl::Flock::lock(holder, FlockArg::LockExclusiveNonblock).unwrap();
        let mut g = d
            .claim("x", &Owner::this_process(OwnerKind::Test), None)
            .unwrap();
        g.set_jail(&jail, Some(&claim));
        g.release();
        let r = d.read("x").unwrap().unwrap();
        assert!(r.released);
        assert_eq!(r.state(), State::Released);
        // Once the holder lets go, the collector finishes.
        drop(held);
        let report = d.collect(
            &Filter::Abandoned,
            &GcOptions {
                wait: Duration::ZERO,
                dry_run: false,
            },
        );
        assert_eq!(report.removed().count(), 1, "{:?}", report.entries);
        assert!(!jail.exists() && !claim.exists());
        assert!(d.list().is_empty());
    }

    #[test]
    fn a_jail_directory_with_files_was_never_ours_and_is_left_alone() {
        let (t, d) = dir();
        let jail = t.path().join("jail-y");
        fs::create_dir(&jail).unwrap();
        fs::write(jail.join("operator-file"), "mine").unwrap();
        let mut g = d
            .claim("y", &Owner::this_process(OwnerKind::Test), None)
            .unwrap();
        g.set_jail(&jail, None);
        drop(g);
        assert_eq!(
            fs::read_to_string(jail.join("operator-file")).unwrap(),
            "mine"
        );
        assert!(
            d.list().is_empty(),
            "the record stayed for a foreign directory"
        );
    }
}
