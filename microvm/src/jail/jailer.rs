//! `mu2-jailer`: builds one jail and runs one program in it.
//!
//! Reads a [`Plan`] (JSON) on stdin. On success writes `ok <pid>` on stdout
//! (the program's pid as the host sees it), then stays as the program's
//! parent until it ends and exits with its status (a signal is re-raised).
//! SIGTERM, SIGINT or SIGHUP to the jailer SIGKILL the program. On failure
//! it writes `mu2-jailer: <error>` on stderr and exits 125, having started
//! nothing. The steps are docs/jailer.md's.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{
    chdir, chown, fork, getppid, pivot_root, setgroups, setresgid, setresuid, ForkResult, Gid, Pid,
    Uid,
};

use super::plan::{Bind, Plan};
use super::sys::{self, ExecArgs};
use super::{seccomp, JailError};

/// Exit status of a jailer that could not build the jail.
pub const SETUP_FAILED: i32 = 125;

fn err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |e| JailError::Io {
        what,
        source: std::io::Error::from(e),
    }
}

fn ioerr(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

/// The jailer's `main`.
pub fn main() -> ! {
    let mut text = Vec::new();
    let r = std::io::stdin()
        .read_to_end(&mut text)
        .map_err(ioerr("cannot read the plan on stdin"))
        .and_then(|_| Plan::parse(&text))
        .and_then(|plan| run(&plan));
    match r {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("mu2-jailer: {}", crate::describe_error(&e));
            std::process::exit(SETUP_FAILED);
        }
    }
}

const WATCHED: [Signal; 4] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
];

fn watched() -> SigSet {
    let mut s = SigSet::empty();
    for sig in WATCHED {
        s.add(sig);
    }
    s
}

fn pipe() -> Result<(File, File), JailError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    Ok((File::from(r), File::from(w)))
}

/// Builds the jail and runs the program; returns only on failure.
pub fn run(plan: &Plan) -> Result<std::convert::Infallible, JailError> {
    plan.validate()?;
    let parent = getppid();
    // Signals are taken with sigwait later; block them before the fork so
    // none is lost (the child unblocks them before exec).
    watched()
        .thread_block()
        .map_err(err("cannot block signals"))?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(err("cannot create the jail's namespaces"))?;
    nix::unistd::sethostname("mu2-jail").map_err(err("sethostname"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("cannot make the jail's mounts private"))?;
    let userns = user_namespace(plan)?;
    build(plan, &userns)?;

    let program = CString::new(plan.program.as_os_str().as_bytes())
        .map_err(|_| JailError::Input("program path has a NUL".into()))?;
    let argv = plan
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| JailError::Input("an argument has a NUL".into()))?;
    let exec = ExecArgs::new(program, argv);
    let filter = seccomp::compile(seccomp::POLICY_JSON, exec.path_addr())?;

    // The next child is PID 1 of a new pid namespace.
    unshare(CloneFlags::CLONE_NEWPID).map_err(err("cannot create the jail's pid namespace"))?;
    let (exec_r, exec_w) = pipe()?;
    // SAFETY: the jailer is single-threaded, so the child may do anything
    // the parent could.
    let child = match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Child => {
            drop(exec_r);
            let e = match child_steps(plan, &exec, &filter, userns, &exec_w) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let mut w = &exec_w;
            let _ = w.write_all(format!("{e}").as_bytes());
            // SAFETY: _exit ends the process without running destructors
            // that belong to the parent's state.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    drop((exec_w, userns));
    let mut msg = String::new();
    (&exec_r).read_to_string(&mut msg).map_err(ioerr("read"))?;
    if !msg.is_empty() {
        let _ = waitpid(child, None);
        return Err(JailError::Setup(msg));
    }
    let mut out = std::io::stdout();
    writeln!(out, "ok {child}")
        .and_then(|_| out.flush())
        .map_err(ioerr("cannot report the pid"))?;
    // SAFETY: closing our stdout, which nothing else in this process uses
    // any more; the host reads EOF after the pid line.
    unsafe { libc::close(1) };
    supervise(plan, child, parent)
}

/// A user namespace mapping ids 0..id_count to the VM's host block, held
/// by fd: it gives the shares their id mapping, and the program joins it.
/// Made by a short-lived child before the pid namespace exists.
fn user_namespace(plan: &Plan) -> Result<File, JailError> {
    let (r, w) = pipe()?;
    // SAFETY: single-threaded; the child only unshares, reads and exits.
    let helper = match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Child => {
            drop(w);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let mut b = [0u8; 1];
            // Wait until the parent has written the maps and opened the
            // namespace (it closes the pipe).
            let _ = (&r).read(&mut b);
            // SAFETY: ends the helper without touching the parent's state.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(r);
    let result = (|| {
        let map = format!("0 {} {}\n", plan.first_id, plan.id_count);
        // The helper's unshare may not have happened yet: retry briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let own = std::fs::read_link("/proc/self/ns/user").ok();
            let its = std::fs::read_link(format!("/proc/{helper}/ns/user")).ok();
            if its.is_some() && its != own {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(JailError::Setup(
                    "the user namespace helper did not start".into(),
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        for f in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{helper}/{f}"), &map)
                .map_err(ioerr(format!("cannot write the jail's {f}")))?;
        }
        File::open(format!("/proc/{helper}/ns/user"))
            .map_err(ioerr("cannot open the jail's user namespace"))
    })();
    drop(w);
    let _ = waitpid(helper, None);
    result
}

/// Builds the jail and pivots into it.
fn build(plan: &Plan, userns: &File) -> Result<(), JailError> {
    let vm_uid = Uid::from_raw(plan.first_id);
    let vm_gid = Gid::from_raw(plan.first_id);

    let root = &plan.root;
    let m = std::fs::symlink_metadata(root)
        .map_err(ioerr(format!("cannot stat {}", root.display())))?;
    if !m.file_type().is_dir() || m.uid() != 0 {
        return Err(JailError::Input(format!(
            "{} is not a root-owned directory",
            root.display()
        )));
    }
    let tmpfs = |target: &Path, flags: MsFlags, data: &str| {
        mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(data))
            .map_err(err(format!("cannot mount a tmpfs on {}", target.display())))
    };
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    tmpfs(
        root,
        base | MsFlags::MS_NODEV,
        "mode=0755,size=1m,nr_inodes=4096",
    )?;
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let mkdirs = |p: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
            .map_err(ioerr(format!("cannot create {}", p.display())))
    };

    if !plan.devices.is_empty() {
        let dev = root.join("dev");
        mkdirs(&dev)?;
        tmpfs(&dev, base, "mode=0755,size=64k,nr_inodes=64")?;
        for d in &plan.devices {
            let p = at(&d.path);
            let mode = if d.vm_owned { 0o600 } else { 0o666 };
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(mode),
                makedev(d.major.into(), d.minor.into()),
            )
            .map_err(err(format!("cannot create {}", d.path.display())))?;
            // mknod is subject to the umask; set the mode for real.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(ioerr(format!("chmod {}", d.path.display())))?;
            if d.vm_owned {
                chown(&p, Some(vm_uid), Some(vm_gid))
                    .map_err(err(format!("chown {}", d.path.display())))?;
            }
        }
        mount(
            None::<&str>,
            &dev,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | base,
            None::<&str>,
        )
        .map_err(err("cannot make the jail's /dev read-only"))?;
    }

    for b in &plan.binds {
        bind(b, &at(&b.target), userns)?;
    }
    for d in &plan.vm_dirs {
        let p = at(d);
        mkdirs(&p)?;
        tmpfs(
            &p,
            base | MsFlags::MS_NODEV,
            &format!(
                "mode=0700,size=64k,nr_inodes=64,uid={},gid={}",
                plan.first_id, plan.first_id
            ),
        )?;
    }
    // The program mounts its pid namespace's /proc here.
    mkdirs(&root.join("proc"))?;
    // The jail itself: read-only from now on.
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | base | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(err("cannot make the jail read-only"))?;
    chdir(root).map_err(err("chdir into the jail"))?;
    pivot_root(".", ".").map_err(err("pivot_root into the jail"))?;
    // The old root is stacked under the new one: detach it.
    umount2(".", MntFlags::MNT_DETACH).map_err(err("cannot detach the host's root"))?;
    chdir("/").map_err(err("chdir /"))?;
    Ok(())
}

/// Binds `b.source` at `target`: from an fd, so that the file checked is
/// the file mounted; read-only, nosuid, nodev, and id-mapped when asked.
fn bind(b: &Bind, target: &Path, userns: &File) -> Result<(), JailError> {
    let path = sys::open_no_symlinks(&cpath(&b.source)?).map_err(ioerr(format!(
        "cannot open {} (without following a symlink)",
        b.source.display()
    )))?;
    let m = File::from(path.try_clone().map_err(ioerr("dup"))?)
        .metadata()
        .map_err(ioerr(format!("cannot stat {}", b.source.display())))?;
    if b.dir != m.is_dir() || (!b.dir && !m.is_file()) {
        return Err(JailError::Input(format!(
            "{} is not a {}",
            b.source.display(),
            if b.dir { "directory" } else { "regular file" }
        )));
    }
    if b.input && m.nlink() != 1 {
        return Err(JailError::Input(format!(
            "{} has {} hard links",
            b.source.display(),
            m.nlink()
        )));
    }
    if let Some(parent) = target.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(ioerr(format!("cannot create {}", parent.display())))?;
    }
    if b.dir {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(target)
            .map_err(ioerr(format!("cannot create {}", target.display())))?;
    } else {
        File::options()
            .write(true)
            .create_new(true)
            .open(target)
            .map_err(ioerr(format!("cannot create {}", target.display())))?;
    }
    // overlayfs (a containerd snapshot) cannot be id-mapped as a whole,
    // but its layers can.
    if b.idmap && is_overlay(&path) {
        return bind_overlay(b, target, userns);
    }
    let tree = sys::open_tree_clone_fd(&path)
        .map_err(ioerr(format!("cannot open {}", b.source.display())))?;
    let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if b.readonly {
        attrs |= sys::MOUNT_ATTR_RDONLY;
    }
    attach(tree, attrs, b.idmap.then_some(userns), target).map_err(ioerr(format!(
        "cannot mount {} in the jail",
        b.source.display()
    )))
}

/// Sets `attrs` on the detached mount `tree` (id-mapped through `userns`
/// when given) and attaches it at `target`.
fn attach(
    tree: std::os::fd::OwnedFd,
    mut attrs: u64,
    userns: Option<&File>,
    target: &Path,
) -> std::io::Result<()> {
    if userns.is_some() {
        attrs |= sys::MOUNT_ATTR_IDMAP;
    }
    sys::mount_setattr(&tree, attrs, userns.map(|u| u.as_raw_fd()))?;
    let t = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    sys::move_mount(&tree, &t)
}

pub(super) fn cpath(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| JailError::Input(format!("{} has a NUL byte", p.display())))
}

fn child_steps(
    plan: &Plan,
    exec: &ExecArgs,
    filter: &seccompiler::BpfProgram,
    userns: File,
    exec_w: &File,
) -> Result<std::convert::Infallible, JailError> {
    crate::sys::die_with_parent().map_err(ioerr("PR_SET_PDEATHSIG"))?;
    // PID 1 of the new pid namespace, still root of the host's user
    // namespace: mount this namespace's /proc (only its own processes,
    // and with subset=pid nothing else: no /proc/sys, no kcore), which
    // QEMU needs for /proc/self/fd and /proc/self/exe.
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("subset=pid,hidepid=invisible"),
    )
    .map_err(err("cannot mount the jail's /proc"))?;
    nix::sched::setns(userns.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(err("cannot enter the jail's user namespace"))?;
    drop(userns);
    // Become uid/gid 0 of the user namespace = the VM's host ids.
    chdir("/").map_err(err("chdir /"))?;
    setgroups(&[]).map_err(err("setgroups"))?;
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(err("setresgid"))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(err("setresuid"))?;
    // That was the last credential change, and credential changes clear
    // the parent-death signal: set it again, then make sure the jailer did
    // not die before (our exec-status pipe has lost its reader then).
    crate::sys::die_with_parent().map_err(ioerr("PR_SET_PDEATHSIG"))?;
    if reader_gone(exec_w)? {
        return Err(JailError::Setup("the jailer went away".into()));
    }
    // A session of its own: no signal to a process group reaches the
    // jailer or the owner through it.
    nix::unistd::setsid().map_err(err("setsid"))?;
    let r = plan.rlimits;
    for (res, v) in [
        (Resource::RLIMIT_NOFILE, r.nofile),
        (Resource::RLIMIT_NPROC, r.nproc),
        (Resource::RLIMIT_FSIZE, r.fsize),
        (Resource::RLIMIT_CORE, 0),
    ] {
        setrlimit(res, v, v).map_err(err(format!("setrlimit {res:?}")))?;
    }
    // stdin and stdout: /dev/null. stderr stays (the host's diagnostics).
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(ioerr("cannot open /dev/null in the jail"))?;
    for fd in [0, 1] {
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(err("dup2"))?;
    }
    drop(null);
    close_other_fds(&plan.keep_fds, exec_w.as_fd())?;
    // Capabilities: none in any set, and uid 0 (of the user namespace)
    // regains none at exec.
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| JailError::Setup(format!("ambient caps: {e}")))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| JailError::Setup(format!("inheritable caps: {e}")))?;
    for c in caps::all() {
        caps::drop(None, CapSet::Bounding, c)
            .map_err(|e| JailError::Setup(format!("bounding set: {e}")))?;
    }
    sys::lock_securebits().map_err(ioerr("securebits"))?;
    caps::clear(None, CapSet::Effective)
        .map_err(|e| JailError::Setup(format!("effective caps: {e}")))?;
    caps::clear(None, CapSet::Permitted)
        .map_err(|e| JailError::Setup(format!("permitted caps: {e}")))?;
    nix::sys::prctl::set_no_new_privs().map_err(err("no_new_privs"))?;
    // Signals as a fresh process has them.
    // SAFETY: restoring default dispositions; no handler is involved.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(err("sigprocmask"))?;
    seccomp::install(filter)?;
    Err(JailError::Io {
        what: format!("cannot execute {}", plan.program.display()),
        source: exec.exec(),
    })
}

fn close_other_fds(keep: &[i32], exec_w: std::os::fd::BorrowedFd<'_>) -> Result<(), JailError> {
    let mut keep: Vec<u32> = keep.iter().map(|&f| f as u32).collect();
    keep.push(exec_w.as_raw_fd() as u32);
    keep.extend([0, 1, 2]);
    keep.sort_unstable();
    keep.dedup();
    let mut next = 0u32;
    for k in keep {
        if k > next {
            sys::close_range(next, k - 1).map_err(ioerr("close_range"))?;
        }
        next = k + 1;
    }
    sys::close_range(next, u32::MAX).map_err(ioerr("close_range"))?;
    Ok(())
}

/// The jailer after the exec: unprivileged, the program's parent and
/// reaper.
fn supervise(plan: &Plan, child: Pid, parent: Pid) -> Result<std::convert::Infallible, JailError> {
    // Same host uid as the program, so that it may signal it without
    // CAP_KILL; nothing else.
    let id = plan.first_id;
    // The bounding set while CAP_SETPCAP is still ours; setresuid away
    // from root then clears the permitted and effective sets.
    for c in caps::all() {
        caps::drop(None, CapSet::Bounding, c)
            .map_err(|e| JailError::Setup(format!("bounding set: {e}")))?;
    }
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| JailError::Setup(format!("inheritable caps: {e}")))?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| JailError::Setup(format!("ambient caps: {e}")))?;
    setgroups(&[]).map_err(err("setgroups"))?;
    setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id)).map_err(err("setresgid"))?;
    setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id)).map_err(err("setresuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(err("no_new_privs"))?;
    let set = watched();
    if let Some(fd) = plan.lifeline {
        // The credential change cleared the parent-death signal, and it
        // stays cleared: the lifeline says when the owner is gone.
        return supervise_lifeline(child, set, fd);
    }
    // A credential change cleared the parent-death signal: set it again,
    // and check the parent did not die in between.
    crate::sys::die_with_parent().map_err(ioerr("PR_SET_PDEATHSIG"))?;
    if getppid() != parent {
        let _ = kill(child, Signal::SIGKILL);
    }
    loop {
        let sig = set.wait().map_err(err("sigwait"))?;
        on_signal(child, sig)?;
    }
}

/// Reaps the program on SIGCHLD (exiting with its status), kills it on
/// any other watched signal.
fn on_signal(child: Pid, sig: Signal) -> Result<(), JailError> {
    match sig {
        Signal::SIGCHLD => loop {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                Ok(WaitStatus::Signaled(_, s, _)) => reraise(s),
                Ok(WaitStatus::StillAlive) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(err("waitpid")(e)),
            }
        },
        _ => {
            let _ = kill(child, Signal::SIGKILL);
            Ok(())
        }
    }
}

/// Supervises with a lifeline: the watched signals through a signalfd, and
/// the lifeline's read end, which reads EOF (or hangs up) once its last
/// write end is closed — the owner ended, whoever it is by then. The
/// program is killed then, and reaped as usual.
fn supervise_lifeline(
    child: Pid,
    set: SigSet,
    lifeline: i32,
) -> Result<std::convert::Infallible, JailError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    // SAFETY: the fd number was inherited for this use alone (the plan
    // names it) and nothing else in the jailer owns it.
    let lifeline = unsafe { OwnedFd::from_raw_fd(lifeline) };
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).map_err(err("signalfd"))?;
    let mut owner_gone = false;
    loop {
        // SAFETY: both fds live for the whole loop body.
        let sfd_fd = unsafe { BorrowedFd::borrow_raw(sfd.as_raw_fd()) };
        let mut fds = vec![PollFd::new(sfd_fd, PollFlags::POLLIN)];
        if !owner_gone {
            fds.push(PollFd::new(lifeline.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err("poll")(e)),
        }
        let lifeline_ready = fds.get(1).and_then(|f| f.revents()).is_some_and(|r| {
            r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        });
        let signal_ready = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if lifeline_ready {
            // Nothing is ever written: readable means the writers are gone.
            owner_gone = true;
            let _ = kill(child, Signal::SIGKILL);
        }
        if signal_ready {
            if let Some(info) = sfd.read_signal().map_err(err("read signalfd"))? {
                if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                    on_signal(child, sig)?;
                }
            }
        }
    }
}

/// Ends the jailer with the signal that ended the program.
fn reraise(sig: Signal) -> ! {
    // SAFETY: default disposition, then the signal to ourselves, unblocked.
    unsafe {
        let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
    }
    let mut s = SigSet::empty();
    s.add(sig);
    let _ = s.thread_unblock();
    let _ = nix::sys::signal::raise(sig);
    std::process::exit(128 + sig as i32)
}

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// A read-only overlay at `target` of the staged (id-mapped) layers
/// `lowers`, top first: the id-mapped view of overlayfs `source`.
pub(super) fn overlay_of(
    lowers: &[PathBuf],
    target: &Path,
    source: &Path,
) -> Result<(), JailError> {
    let lowerdir = lowers
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .map_err(err(format!(
        "cannot mount the id-mapped overlay of {}",
        source.display()
    )))
}

pub(super) fn is_overlay(fd: &std::os::fd::OwnedFd) -> bool {
    nix::sys::statfs::fstatfs(fd).is_ok_and(|s| s.filesystem_type().0 == OVERLAYFS_SUPER_MAGIC)
}

/// The layers of the overlay mounted at `mountpoint`, top first (its
/// upper directory, then its lower ones), from /proc/self/mountinfo.
pub(super) fn overlay_layers(mountpoint: &Path) -> Result<Vec<std::path::PathBuf>, JailError> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(ioerr("cannot read mountinfo"))?;
    let want = mountpoint.to_string_lossy();
    // The last mount on a mount point is the visible one.
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*want))
        .ok_or_else(|| JailError::Input(format!("{want} is not a mount point")))?;
    let (_, tail) = line
        .split_once(" - ")
        .ok_or_else(|| JailError::Input(format!("unreadable mountinfo line {line:?}")))?;
    let superopts = tail.split(' ').nth(2).unwrap_or("");
    let mut upper = None;
    let mut lower = Vec::new();
    for opt in superopts.split(',') {
        if let Some(v) = opt.strip_prefix("upperdir=") {
            upper = Some(unescape(v));
        } else if let Some(v) = opt.strip_prefix("lowerdir=") {
            lower.extend(
                unescape(v)
                    .split(':')
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
    }
    if lower.is_empty() {
        return Err(JailError::Input(format!(
            "overlay at {want} has no lowerdir"
        )));
    }
    Ok(upper.into_iter().chain(lower).map(Into::into).collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Rebuilds the overlay at `b.source` read-only at `target` from
/// id-mapped copies of its layers. The layer mounts are staged beside the
/// target and detached once the overlay holds them, so the jail shows only
/// the merged tree.
fn bind_overlay(b: &Bind, target: &Path, userns: &File) -> Result<(), JailError> {
    if !b.readonly {
        return Err(JailError::Input(format!(
            "{} is an overlayfs: only a read-only share of it can be id-mapped",
            b.source.display()
        )));
    }
    let layers = overlay_layers(&b.source)?;
    let stage = target.with_file_name(format!(
        ".layers-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::create_dir(&stage).map_err(ioerr(format!("cannot create {}", stage.display())))?;
    let mut staged = Vec::new();
    let result = (|| {
        for (i, layer) in layers.iter().enumerate() {
            let dir = stage.join(i.to_string());
            std::fs::create_dir(&dir).map_err(ioerr(format!("cannot create {}", dir.display())))?;
            let tree = sys::open_tree_clone(&cpath(layer)?)
                .map_err(ioerr(format!("cannot open layer {}", layer.display())))?;
            let ro = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
            attach(tree, ro, Some(userns), &dir)
                .map_err(ioerr(format!("cannot stage layer {}", layer.display())))?;
            staged.push(dir);
        }
        overlay_of(&staged, target, &b.source)
    })();
    for d in staged.iter().rev() {
        let _ = umount2(d, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(d);
    }
    for e in std::fs::read_dir(&stage).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(e.path());
    }
    let _ = std::fs::remove_dir(&stage);
    result
}

/// Whether the read end of the pipe whose write end is `w` is closed.
fn reader_gone(w: &File) -> Result<bool, JailError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(w.as_fd(), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).map_err(err("poll"))?;
    Ok(fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)))
}
