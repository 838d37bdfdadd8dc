//! Starting the container process.
//!
//! The process is PID 1 of a new PID namespace, exactly as under runc: the
//! agent unshares `CLONE_NEWPID` for its next child, forks, and steps its own
//! children's namespace back (threads cannot be created while it differs).
//! The child joins the container cgroup, unshares its mount and cgroup
//! namespaces (the latter rooted at that cgroup, so it cannot leave it),
//! mounts /proc and the cgroup hierarchy, moves the prepared root onto `/`
//! and chroots into it — `pivot_root` cannot leave the initramfs rootfs, so
//! this is switch_root's way — and sets up its terminal, limits, identity
//! and confinement ([`crate::confine`], in runc's order) before `execve`.
//!
//! Everything the child needs is computed before the fork (the agent is
//! single-threaded then), and every failure in the child travels back to the
//! agent through a close-on-exec pipe as `kind, errno, message`; EOF without
//! a message means the exec succeeded.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use mu2_protocol::{Capabilities, Run, SeccompFilter, Sysctl};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{self, ForkResult, Gid, Pid, Uid};

use crate::confine::{self, View};
use crate::rootfs::ChildMount;
use crate::sys;

/// PATH when the process's environment has none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("rlimit resource {0} is not known to the guest kernel")]
    UnknownRlimit(u32),
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot create the {what} pipe")]
    Pipe {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot create the container's pid namespace")]
    PidNamespace(#[source] Errno),
    #[error("cannot fork the container process")]
    Fork(#[source] Errno),
    #[error("cannot read the container process's start report")]
    Report(#[source] std::io::Error),
    /// args[0] does not exist in the root.
    #[error("{0}")]
    NotFound(String),
    /// args[0] exists but cannot be executed.
    #[error("{0}")]
    NotExecutable(String),
    /// A step of the child's set-up failed.
    #[error("{0}")]
    Setup(String),
}

/// What the container process gets as stdin, stdout and stderr.
#[derive(Debug)]
pub enum ChildStdio {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Terminal {
        slave: OwnedFd,
    },
}

/// Everything the child does, decided before the fork.
#[derive(Debug)]
pub struct Plan {
    root: PathBuf,
    in_child: Vec<ChildMount>,
    cgroup_procs: Option<PathBuf>,
    rlimits: Vec<(Resource, u64, u64)>,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    umask: Option<Mode>,
    cwd: String,
    no_new_privs: bool,
    oom_score_adj: String,
    capabilities: Capabilities,
    seccomp: Option<SeccompFilter>,
    root_propagation: Option<MsFlags>,
    sysctls: Vec<Sysctl>,
    readonly_paths: Vec<String>,
    masked_paths: Vec<String>,
    arg0: String,
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Plan {
    /// `passwd`: the image's /etc/passwd, if it has one.
    pub fn new(
        run: &Run,
        root: PathBuf,
        in_child: Vec<ChildMount>,
        cgroup_procs: Option<PathBuf>,
        passwd: Option<&str>,
    ) -> Result<Plan, SpawnError> {
        let p = &run.process;
        let rlimits = p
            .rlimits
            .iter()
            .map(|r| Ok((resource(r.resource)?, r.soft, r.hard)))
            .collect::<Result<_, SpawnError>>()?;
        let mut env = p.env.clone();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", crate::user::home(passwd, p.user.uid)));
        }
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let candidates = candidates(&p.args[0], path)
            .into_iter()
            .map(|c| cstring(c, "args[0]"))
            .collect::<Result<_, _>>()?;
        confine::check_known(&p.capabilities)?;
        Ok(Plan {
            root,
            in_child,
            cgroup_procs,
            rlimits,
            uid: Uid::from_raw(p.user.uid),
            gid: Gid::from_raw(p.user.gid),
            groups: p
                .user
                .additional_gids
                .iter()
                .map(|g| Gid::from_raw(*g))
                .collect(),
            umask: p.user.umask.map(|m| Mode::from_bits_truncate(m & 0o777)),
            cwd: p.cwd.clone(),
            no_new_privs: p.no_new_privileges,
            oom_score_adj: p.oom_score_adj.unwrap_or(0).to_string(),
            capabilities: p.capabilities,
            seccomp: p.seccomp.clone(),
            root_propagation: run.rootfs_propagation.map(crate::mountopts::propagation),
            sysctls: run.sysctls.clone(),
            readonly_paths: run.readonly_paths.clone(),
            masked_paths: run.masked_paths.clone(),
            arg0: p.args[0].clone(),
            candidates,
            argv: p
                .args
                .iter()
                .map(|a| cstring(a.clone(), "args"))
                .collect::<Result<_, _>>()?,
            envp: env
                .into_iter()
                .map(|e| cstring(e, "env"))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Plan {
    /// Finds args[0] in the container root the way the exec will (PATH,
    /// cwd for a relative name, symlinks re-rooted), before anything is
    /// forked: a missing or non-executable binary fails the container's
    /// set-up, as runc's create does. Returns the path found.
    pub fn resolve(&self) -> Result<String, SpawnError> {
        use std::os::unix::fs::PermissionsExt;
        let mut denied = false;
        for c in &self.candidates {
            let c = c.to_string_lossy();
            let abs = if c.starts_with('/') {
                c.into_owned()
            } else {
                format!("{}/{c}", self.cwd.trim_end_matches('/'))
            };
            let Ok(host) = crate::paths::resolve(&self.root, &abs) else {
                denied = true;
                continue;
            };
            match std::fs::metadata(&host) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(abs),
                Ok(_) => denied = true,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
                Err(_) => denied = true,
            }
        }
        let f = exec_failure(
            &self.arg0,
            if denied { Errno::EACCES } else { Errno::ENOENT },
        );
        Err(match f.kind {
            KIND_NOT_FOUND => SpawnError::NotFound(f.message),
            _ => SpawnError::NotExecutable(f.message),
        })
    }
}

fn cstring(s: String, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul { what })
}

/// The paths execve tries, in order, as execvp would.
pub fn candidates(arg0: &str, path: &str) -> Vec<String> {
    if arg0.contains('/') {
        return vec![arg0.to_string()];
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{arg0}", dir.trim_end_matches('/'))
        })
        .collect()
}

/// An RLIMIT_* number (x86_64) as nix's enum.
pub fn resource(n: u32) -> Result<Resource, SpawnError> {
    Ok(match n {
        0 => Resource::RLIMIT_CPU,
        1 => Resource::RLIMIT_FSIZE,
        2 => Resource::RLIMIT_DATA,
        3 => Resource::RLIMIT_STACK,
        4 => Resource::RLIMIT_CORE,
        5 => Resource::RLIMIT_RSS,
        6 => Resource::RLIMIT_NPROC,
        7 => Resource::RLIMIT_NOFILE,
        8 => Resource::RLIMIT_MEMLOCK,
        9 => Resource::RLIMIT_AS,
        10 => Resource::RLIMIT_LOCKS,
        11 => Resource::RLIMIT_SIGPENDING,
        12 => Resource::RLIMIT_MSGQUEUE,
        13 => Resource::RLIMIT_NICE,
        14 => Resource::RLIMIT_RTPRIO,
        15 => Resource::RLIMIT_RTTIME,
        other => return Err(SpawnError::UnknownRlimit(other)),
    })
}

/// Kinds of child failure on the report pipe.
const KIND_NOT_FOUND: u8 = 1;
const KIND_NOT_EXECUTABLE: u8 = 2;
const KIND_SETUP: u8 = 3;

struct ChildFailure {
    kind: u8,
    message: String,
}

fn setup(step: &str) -> impl Fn(Errno) -> ChildFailure + '_ {
    move |e| ChildFailure {
        kind: KIND_SETUP,
        message: format!("{step}: {}", e.desc()),
    }
}

/// Forks the container process; returns its pid once it has exec'd.
/// The caller must be single-threaded.
pub fn spawn(plan: &Plan, stdio: ChildStdio) -> Result<Pid, SpawnError> {
    let (report_r, report_w) =
        unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| SpawnError::Pipe {
            what: "start report",
            source,
        })?;
    let own_ns =
        File::open("/proc/self/ns/pid").map_err(|e| SpawnError::PidNamespace(errno_of(&e)))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(SpawnError::PidNamespace)?;
    let forked = sys::fork_single_threaded();
    if let Ok(ForkResult::Child) = forked {
        drop(report_r);
        let failure = match child(plan, stdio) {
            Err(f) => f,
            Ok(never) => match never {},
        };
        let mut w = File::from(report_w);
        let mut msg = vec![failure.kind];
        msg.extend_from_slice(failure.message.as_bytes());
        let _ = w.write_all(&msg);
        sys::exit_child(127);
    }
    // Children of the agent from now on (none planned) and, above all, its
    // threads must live in its own namespace again.
    let restored = setns(own_ns.as_fd(), CloneFlags::CLONE_NEWPID);
    let pid = match forked {
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(SpawnError::Fork(e)),
        Ok(ForkResult::Child) => unreachable!("the child never gets here"),
    };
    restored.map_err(SpawnError::PidNamespace)?;
    drop(report_w);
    drop(stdio);

    let mut report = Vec::new();
    File::from(report_r)
        .read_to_end(&mut report)
        .map_err(SpawnError::Report)?;
    if report.is_empty() {
        return Ok(pid);
    }
    // The child failed before exec and exits: reap it.
    let _ = sys::retry(|| waitpid(pid, None));
    let message = String::from_utf8_lossy(&report[1..]).into_owned();
    Err(match report[0] {
        KIND_NOT_FOUND => SpawnError::NotFound(message),
        KIND_NOT_EXECUTABLE => SpawnError::NotExecutable(message),
        _ => SpawnError::Setup(message),
    })
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The container process up to execve; returns only on failure.
fn child(plan: &Plan, stdio: ChildStdio) -> Result<std::convert::Infallible, ChildFailure> {
    sys::default_sigpipe().map_err(setup("reset SIGPIPE"))?;
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(setup("reset the signal mask"))?;
    // The agent is exempt from the OOM killer; the container is not, and
    // gets the spec's adjustment (CRI sets one per QoS class).
    write_file(
        "/proc/self/oom_score_adj",
        &plan.oom_score_adj,
        "set oom_score_adj",
    )?;
    if let Some(procs) = &plan.cgroup_procs {
        write_file(procs, "0", "join the container cgroup")?;
        // Rooted at the cgroup just joined: the process sees it as "/" and
        // cannot move out of it.
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(setup("create the cgroup namespace"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(setup("create the mount namespace"))?;
    for m in &plan.in_child {
        m.mount().map_err(|e| ChildFailure {
            kind: KIND_SETUP,
            message: format!("mount {} on {}: {}", m.fstype, m.target.display(), e.desc()),
        })?;
    }

    unistd::setsid().map_err(setup("create a session"))?;
    match &stdio {
        ChildStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                unistd::dup2(fd.as_raw_fd(), target).map_err(setup("set up stdio"))?;
            }
        }
        ChildStdio::Terminal { slave } => {
            sys::set_controlling_tty(slave.as_fd())
                .map_err(setup("set the controlling terminal"))?;
            for target in 0..=2 {
                unistd::dup2(slave.as_raw_fd(), target).map_err(setup("set up the terminal"))?;
            }
        }
    }
    drop(stdio);
    if !plan.uid.is_root() {
        // As runc does: the user may reopen its stdio through /proc/self/fd.
        for fd in 0..=2 {
            let _ = unistd::fchown(fd, Some(plan.uid), Some(plan.gid));
        }
    }

    unistd::chdir(&plan.root).map_err(setup("enter the container root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(setup("move the container root onto /"))?;
    unistd::chroot(".").map_err(setup("chroot into the container root"))?;
    unistd::chdir("/").map_err(setup("enter the container root"))?;
    confine::view(&View {
        root_propagation: plan.root_propagation,
        sysctls: &plan.sysctls,
        readonly_paths: &plan.readonly_paths,
        masked_paths: &plan.masked_paths,
    })
    .map_err(confined)?;

    for (resource, soft, hard) in &plan.rlimits {
        setrlimit(*resource, *soft, *hard).map_err(|e| ChildFailure {
            kind: KIND_SETUP,
            message: format!("setrlimit {resource:?}: {}", e.desc()),
        })?;
    }
    if plan.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(setup("set no_new_privs"))?;
    }
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: now,
    // before the capabilities go (runc's order).
    if let (Some(f), false) = (&plan.seccomp, plan.no_new_privs) {
        sys::install_seccomp(f.program(), f.flags())
            .map_err(setup("install the seccomp filter"))?;
    }
    confine::drop_bounding(plan.capabilities.bounding).map_err(confined)?;
    confine::keep_caps(true).map_err(confined)?;
    unistd::setgroups(&plan.groups).map_err(setup("setgroups"))?;
    unistd::setgid(plan.gid).map_err(|e| ChildFailure {
        kind: KIND_SETUP,
        message: format!("setgid {}: {}", plan.gid, e.desc()),
    })?;
    unistd::setuid(plan.uid).map_err(|e| ChildFailure {
        kind: KIND_SETUP,
        message: format!("setuid {}: {}", plan.uid, e.desc()),
    })?;
    confine::keep_caps(false).map_err(confined)?;
    confine::apply_caps(&plan.capabilities).map_err(confined)?;
    if let Some(mask) = plan.umask {
        nix::sys::stat::umask(mask);
    }
    unistd::chdir(plan.cwd.as_str()).map_err(|e| ChildFailure {
        kind: KIND_SETUP,
        message: format!(
            "chdir to cwd {:?} set in config.json: {}",
            plan.cwd,
            e.desc()
        ),
    })?;
    // With no_new_privs the filter goes last, as close to execve as can be.
    if let (Some(f), true) = (&plan.seccomp, plan.no_new_privs) {
        sys::install_seccomp(f.program(), f.flags())
            .map_err(setup("install the seccomp filter"))?;
    }
    Err(exec(plan))
}

fn confined(e: confine::ConfineError) -> ChildFailure {
    ChildFailure {
        kind: KIND_SETUP,
        message: crate::chain(&e),
    }
}

fn write_file(
    path: impl AsRef<std::path::Path>,
    value: &str,
    step: &str,
) -> Result<(), ChildFailure> {
    std::fs::write(path, value).map_err(|e| setup(step)(errno_of(&e)))
}

/// Tries each candidate like execvp: a permission error is remembered and
/// reported only if no later candidate exists.
fn exec(plan: &Plan) -> ChildFailure {
    let mut denied = None;
    for path in &plan.candidates {
        match unistd::execve(path, &plan.argv, &plan.envp) {
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(Errno::EACCES) => {
                denied.get_or_insert(Errno::EACCES);
            }
            Err(e) => return exec_failure(&plan.arg0, e),
            Ok(never) => match never {},
        }
    }
    exec_failure(&plan.arg0, denied.unwrap_or(Errno::ENOENT))
}

fn exec_failure(arg0: &str, e: Errno) -> ChildFailure {
    match e {
        Errno::ENOENT => ChildFailure {
            kind: KIND_NOT_FOUND,
            message: format!("exec {arg0:?}: no such file or directory in the container root"),
        },
        Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR => ChildFailure {
            kind: KIND_NOT_EXECUTABLE,
            message: format!("exec {arg0:?}: {}", e.desc().to_lowercase()),
        },
        e => ChildFailure {
            kind: KIND_SETUP,
            message: format!("exec {arg0:?}: {}", e.desc().to_lowercase()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path_unless_arg0_has_a_slash() {
        assert_eq!(
            candidates("sh", "/usr/bin:/bin/::/x"),
            vec!["/usr/bin/sh", "/bin/sh", "./sh", "/x/sh"]
        );
        assert_eq!(candidates("./run", "/bin"), vec!["./run"]);
        assert_eq!(candidates("/bin/true", "/nope"), vec!["/bin/true"]);
    }

    #[test]
    fn rlimit_numbers_map_to_x86_64_resources() {
        assert_eq!(resource(7).unwrap(), Resource::RLIMIT_NOFILE);
        assert_eq!(resource(6).unwrap(), Resource::RLIMIT_NPROC);
        assert!(matches!(resource(16), Err(SpawnError::UnknownRlimit(16))));
    }

    fn plan_in(root: &std::path::Path, arg0: &str, path_env: &str) -> Plan {
        let run = Run {
            root: mu2_protocol::Root {
                share_tag: "rootfs".into(),
                readonly: false,
                share_subdir: None,
            },
            process: mu2_protocol::Process {
                args: vec![arg0.into()],
                env: vec![format!("PATH={path_env}")],
                cwd: "/work".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        Plan::new(&run, root.to_path_buf(), Vec::new(), None, None).unwrap()
    }

    #[test]
    fn args0_is_resolved_in_the_root_before_the_fork() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for dir in ["bin", "usr/bin", "work", "data"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let exe = |p: &str, mode: u32| {
            std::fs::write(root.join(p), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        exe("usr/bin/tool", 0o755);
        exe("bin/plain", 0o644);
        exe("work/local", 0o700);
        // An absolute symlink is re-rooted: /bin/sh -> /usr/bin/tool.
        std::os::unix::fs::symlink("/usr/bin/tool", root.join("bin/sh")).unwrap();
        assert_eq!(
            plan_in(root, "tool", "/bin:/usr/bin").resolve().unwrap(),
            "/usr/bin/tool"
        );
        assert_eq!(plan_in(root, "sh", "/bin").resolve().unwrap(), "/bin/sh");
        assert_eq!(
            plan_in(root, "./local", "/bin").resolve().unwrap(),
            "/work/./local"
        );
        assert!(matches!(
            plan_in(root, "nothing", "/bin:/usr/bin").resolve(),
            Err(SpawnError::NotFound(_))
        ));
        assert!(matches!(
            plan_in(root, "plain", "/bin").resolve(),
            Err(SpawnError::NotExecutable(_))
        ));
        // A directory on the way is not the binary.
        assert!(matches!(
            plan_in(root, "/data", "/bin").resolve(),
            Err(SpawnError::NotExecutable(_))
        ));
        // A later candidate still wins over an earlier non-executable one.
        exe("usr/bin/plain", 0o755);
        assert_eq!(
            plan_in(root, "plain", "/bin:/usr/bin").resolve().unwrap(),
            "/usr/bin/plain"
        );
    }

    #[test]
    fn exec_failures_are_classified() {
        let f = exec_failure("nope", Errno::ENOENT);
        assert_eq!(f.kind, KIND_NOT_FOUND);
        assert_eq!(
            f.message,
            "exec \"nope\": no such file or directory in the container root"
        );
        assert_eq!(exec_failure("x", Errno::EACCES).kind, KIND_NOT_EXECUTABLE);
        assert_eq!(exec_failure("x", Errno::ENOEXEC).kind, KIND_NOT_EXECUTABLE);
        assert_eq!(exec_failure("x", Errno::E2BIG).kind, KIND_SETUP);
    }
}
