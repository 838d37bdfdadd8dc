//! The jail every QEMU runs in (docs/jailer.md).
//!
//! The host side ([`spawn`]) claims a block of host ids ([`ids`]), makes the
//! VM's jail directory, works out the files the program needs (its shared
//! libraries, QEMU's data files, the kernel and initrd, the 9p shares) and
//! starts `mu2-jailer` with a [`Plan`] on its stdin. The jailer
//! ([`jailer`]) builds the jail in new mount, pid, ipc, uts and network
//! namespaces — a tmpfs holding only those files, read-only, the shares
//! id-mapped into the VM's user namespace — pivots into it, and forks the
//! VMM: PID 1 of the new pid namespace, uid 0 of its own user namespace
//! (a host uid from the claimed block), every capability gone, securebits
//! locked, rlimits, no_new_privs, only its channel fds, an empty
//! environment, and the seccomp allow-list ([`seccomp`]) installed just
//! before `execve`. The jailer stays as the VMM's parent, unprivileged,
//! reaps it and exits with its status.

pub mod attach;
pub mod config;
pub mod ids;
pub mod jailer;
pub mod plan;
pub mod seccomp;
mod sys;

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};

pub use config::{JailConfig, JailMode};
pub use plan::Plan;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "the jail has no uid range: set `uid_range` under [jail] in {0} (docs/jailer.md), \
         or disable the jail there with `enabled = false`"
    )]
    NotConfigured(PathBuf),
    #[error("no free block of host ids in {range} ({blocks} VMs already run)")]
    NoFreeIds { range: String, blocks: u32 },
    #[error("jail input refused: {0}")]
    Input(String),
    #[error("jail directory {0} already exists")]
    Exists(PathBuf),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("this host cannot jail: {0}")]
    Host(String),
    #[error("cannot start the jailer {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the jailer failed: {0}")]
    Setup(String),
    #[error("seccomp policy")]
    Seccomp(#[from] seccomp::SeccompError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

/// Makes `dir` (and its parents) if missing and checks it is a real
/// directory owned by root that only root may write.
pub(crate) fn safe_dir(dir: &Path) -> Result<(), JailError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(io_err(format!("cannot create {}", dir.display())))?;
    let m =
        std::fs::symlink_metadata(dir).map_err(io_err(format!("cannot stat {}", dir.display())))?;
    if !m.file_type().is_dir() {
        return Err(JailError::Input(format!(
            "{} is not a directory (a symlink?)",
            dir.display()
        )));
    }
    if m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(JailError::Input(format!(
            "{} must be owned by root and writable by root only",
            dir.display()
        )));
    }
    Ok(())
}

/// Refuses a path that is relative or goes through a symlink anywhere.
fn no_symlinks(p: &Path) -> Result<(), JailError> {
    if !p.is_absolute() {
        return Err(JailError::Input(format!(
            "{} is not an absolute path",
            p.display()
        )));
    }
    let canon = p
        .canonicalize()
        .map_err(io_err(format!("cannot resolve {}", p.display())))?;
    if canon != p {
        return Err(JailError::Input(format!(
            "{} goes through a symlink (to {})",
            p.display(),
            canon.display()
        )));
    }
    Ok(())
}

/// Checks an input file (kernel, initrd): absolute, no symlink anywhere in
/// its path, a regular file with a single link.
pub(crate) fn check_input_file(p: &Path) -> Result<(), JailError> {
    no_symlinks(p)?;
    let m = std::fs::symlink_metadata(p).map_err(io_err(format!("cannot stat {}", p.display())))?;
    if !m.file_type().is_file() {
        return Err(JailError::Input(format!(
            "{} is not a regular file",
            p.display()
        )));
    }
    if m.nlink() != 1 {
        return Err(JailError::Input(format!(
            "{} has {} hard links",
            p.display(),
            m.nlink()
        )));
    }
    Ok(())
}

/// Checks a share: an absolute directory path without symlinks.
pub(crate) fn check_input_dir(p: &Path) -> Result<(), JailError> {
    no_symlinks(p)?;
    if !p.is_dir() {
        return Err(JailError::Input(format!(
            "{} is not a directory",
            p.display()
        )));
    }
    Ok(())
}

/// What to run in a jail.
#[derive(Debug, Clone)]
pub struct JailRequest {
    /// Names the jail directory and the id claim; `[A-Za-z0-9_-][A-Za-z0-9_.-]*`.
    pub id: String,
    /// Host path of the program; it appears at the same path in the jail,
    /// with its shared libraries.
    pub program: PathBuf,
    /// argv[1..], naming jail paths.
    pub args: Vec<String>,
    /// Read-only files: (host path, jail path). Checked as inputs.
    pub inputs: Vec<(PathBuf, PathBuf)>,
    /// Read-only system files the program reads (data files, modules):
    /// bound at their own path, their libraries too.
    pub system_files: Vec<PathBuf>,
    /// Directories: (host path, jail path, read-only), id-mapped.
    pub shares: Vec<(PathBuf, PathBuf, bool)>,
    /// Fds the program inherits (same numbers).
    pub keep_fds: Vec<RawFd>,
    /// `cgroup.procs` files the jailer joins before anything else.
    pub cgroup_procs: Vec<RawFd>,
    /// Adds /dev/kvm.
    pub kvm: bool,
    /// Leaves transparent huge pages on for the jailer and the program
    /// ([`crate::Accel::huge_pages`]).
    pub huge_pages: bool,
    /// How long the jailer has to say it started the program.
    pub start_deadline: std::time::Duration,
    /// The read end of a lifeline pipe, kept by the jailer only: the VM
    /// lives while a write end is open, wherever it went, rather than
    /// dying with the jailer's parent (see [`Plan::lifeline`]).
    pub lifeline: Option<RawFd>,
}

/// A running jail: the jailer process, parent of the jailed program.
pub struct Jailed {
    pub jailer: Child,
    /// The jailed program's pid, as the host sees it.
    pub pid: u32,
    pub stderr: Option<ChildStderr>,
    /// Released when dropped, after the jailer is reaped.
    pub resources: JailResources,
}

/// The jail directory and the id claim of a jail; dropping removes the
/// directory and releases the ids. Drop only once the jailer is reaped.
pub struct JailResources {
    pub dir: PathBuf,
    pub first_id: u32,
    claim: Option<ids::IdClaim>,
    /// Handed to another owner: dropping removes nothing.
    disowned: bool,
}

impl JailResources {
    /// Lets go of the jail without removing anything: its VM went to an
    /// owner that releases it through the VM's record.
    pub fn disown(mut self) {
        self.disowned = true;
        if let Some(c) = self.claim.take() {
            c.disown();
        }
    }
}

impl Drop for JailResources {
    fn drop(&mut self) {
        if self.disowned {
            return;
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove jail {}: {e}", self.dir.display());
            }
        }
        drop(self.claim.take());
    }
}

impl JailResources {
    /// The id claim's file, while the claim is held.
    pub fn claim_path(&self) -> Option<&Path> {
        self.claim.as_ref().map(|c| c.path())
    }
}

/// The jail directory of VM `id`.
pub fn jail_dir(cfg: &JailConfig, id: &str) -> PathBuf {
    cfg.jail_root.join(id)
}

/// What is left of VM `id`'s jail: its directory and the claim files that
/// name it; empty when everything was released. (What a crashed owner
/// leaves is collected through its record: [`crate::record`].)
pub fn leftovers(cfg: &JailConfig, id: &str) -> Vec<PathBuf> {
    leftovers_matching(cfg, |name| name == id)
}

/// Jail directories and claim files of the VMs whose names `matches`.
pub fn leftovers_matching(cfg: &JailConfig, matches: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut left = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&cfg.jail_root) {
        for e in rd.flatten() {
            if matches(&e.file_name().to_string_lossy()) {
                left.push(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(&cfg.claim_dir) {
        for e in rd.flatten() {
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            if matches(&owner) {
                left.push(e.path());
            }
        }
    }
    left
}

/// A VM id: 1-64 of `A-Za-z0-9_.-`, not starting with a dot (no `.`,
/// `..`), since it names directories.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Checks the host can jail at all: seccomp filters and the namespaces.
pub fn probe_host() -> Result<(), JailError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(io_err("cannot read /proc/self/status"))?;
    if !status.lines().any(|l| l.starts_with("Seccomp:")) {
        return Err(JailError::Host(
            "the kernel has no seccomp (CONFIG_SECCOMP)".into(),
        ));
    }
    for ns in ["mnt", "pid", "ipc", "uts", "net", "user"] {
        if !Path::new("/proc/self/ns").join(ns).exists() {
            return Err(JailError::Host(format!("no {ns} namespaces")));
        }
    }
    Ok(())
}

/// The jailer's one start line (`ok PID`), read within `deadline`: a jailer
/// that hangs, or writes without a newline, cannot hold the launch.
fn read_start_line(
    mut out: std::process::ChildStdout,
    deadline: std::time::Duration,
) -> Result<String, String> {
    use std::os::fd::AsFd;
    const MAX: usize = 64;
    let end = std::time::Instant::now() + deadline;
    let mut line = Vec::new();
    let mut byte = [0u8; MAX];
    while !line.contains(&b'\n') {
        let left = end.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if ms == 0 {
            return Err(format!("none within {deadline:?}"));
        }
        let mut fds = [nix::poll::PollFd::new(
            out.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.to_string()),
        }
        let n = out.read(&mut byte).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&byte[..n]);
        if line.len() > MAX {
            return Err("an overlong start line".into());
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Starts `req.program` in a new jail.
pub fn spawn(cfg: &JailConfig, req: &JailRequest) -> Result<Jailed, JailError> {
    let range = cfg
        .ids
        .ok_or_else(|| JailError::NotConfigured(cfg.source.clone()))?;
    if !valid_id(&req.id) {
        return Err(JailError::Input(format!("invalid jail id {:?}", req.id)));
    }
    // The host does not change under a running process: probe it once.
    static PROBED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBED
        .get_or_init(|| {
            probe_host().map_err(|e| match e {
                JailError::Host(why) => why,
                other => other.to_string(),
            })
        })
        .clone()
        .map_err(JailError::Host)?;
    for (host, _) in &req.inputs {
        check_input_file(host)?;
    }
    for (host, _, _) in &req.shares {
        check_input_dir(host)?;
    }
    let program = req
        .program
        .canonicalize()
        .map_err(io_err(format!("cannot find {}", req.program.display())))?;
    let mut system = vec![program.clone()];
    for f in &req.system_files {
        // Bound at the path the program looks for, whatever it links to.
        if !f.is_absolute() || !f.is_file() {
            return Err(JailError::Input(format!("{} is not a file", f.display())));
        }
        system.push(f.clone());
    }
    let libs = plan::libraries(&system)?;

    let claim = ids::IdClaim::acquire(range, &cfg.claim_dir, &req.id)?;
    safe_dir(&cfg.jail_root)?;
    let dir = jail_dir(cfg, &req.id);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(JailError::Exists(dir));
        }
        Err(e) => return Err(io_err(format!("cannot create {}", dir.display()))(e)),
    }
    let resources = JailResources {
        dir: dir.clone(),
        first_id: claim.first,
        claim: Some(claim),
        disowned: false,
    };

    let plan = Plan::build(cfg, req, &program, &system, &libs, &resources)?;
    let text = serde_json::to_string(&plan).map_err(|e| JailError::Setup(e.to_string()))?;
    let jailer_path = cfg.jailer_path();
    let mut cmd = Command::new(&jailer_path);
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut keep = req.keep_fds.clone();
    if let Some(c) = &resources.claim {
        keep.push(c.fd());
    }
    keep.extend(req.lifeline);
    crate::sys::prepare_child(&mut cmd, keep, req.cgroup_procs.clone(), req.huge_pages);
    let mut child = cmd.spawn().map_err(|source| JailError::Spawn {
        path: jailer_path.clone(),
        source,
    })?;
    let stderr = child.stderr.take();
    let fail = |mut child: Child, stderr: Option<ChildStderr>, what: String| {
        let _ = child.kill();
        let _ = child.wait();
        let mut msg = String::new();
        if let Some(mut s) = stderr {
            let _ = io::Read::read_to_string(&mut s, &mut msg);
        }
        let msg = msg.trim();
        JailError::Setup(if msg.is_empty() {
            what
        } else {
            msg.to_string()
        })
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(text.as_bytes()) {
            return Err(fail(child, stderr, format!("cannot send the plan: {e}")));
        }
    }
    let line = match child.stdout.take() {
        Some(out) => read_start_line(out, req.start_deadline),
        None => Err("no stdout".into()),
    };
    let pid = match &line {
        Ok(l) => l
            .trim()
            .strip_prefix("ok ")
            .and_then(|p| p.parse::<u32>().ok()),
        Err(_) => None,
    };
    let Some(pid) = pid else {
        return Err(fail(
            child,
            stderr,
            match line {
                Ok(l) => format!("no pid from the jailer ({l:?})"),
                Err(why) => format!("no pid from the jailer: {why}"),
            },
        ));
    };
    Ok(Jailed {
        jailer: child,
        pid,
        stderr,
        resources,
    })
}
