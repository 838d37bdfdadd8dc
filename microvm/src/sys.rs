//! The few raw syscalls this crate needs, each in a small function.

use std::io;
use std::os::fd::RawFd;

/// Clears FD_CLOEXEC so `fd` survives the exec of QEMU. Called between fork
/// and exec only.
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd number has no memory-safety preconditions; an
    // invalid fd yields EBADF, which we return.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to SIGKILL the calling process when its parent dies, so a
/// VMM never outlives the mu2 process that owns it. Called between fork and
/// exec only.
pub(crate) fn die_with_parent() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open
/// as `fd` (writing 0 names the writer). Called between fork and exec only.
pub(crate) fn join_cgroup(fd: RawFd) -> io::Result<()> {
    // SAFETY: write(2) reads one byte from a static buffer; an invalid fd
    // yields EBADF, which we return.
    if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s child join the cgroups open as `cgroup_procs`, keep `fds`
/// open across exec, and die with its parent.
pub(crate) fn prepare_child(
    cmd: &mut std::process::Command,
    fds: Vec<RawFd>,
    cgroup_procs: Vec<RawFd>,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only write,
    // fcntl and prctl, which are async-signal-safe; it allocates nothing
    // (the Vecs were allocated before the fork and are only read).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &cgroup_procs {
                join_cgroup(fd)?;
            }
            for &fd in &fds {
                clear_cloexec(fd)?;
            }
            die_with_parent()
        });
    }
}
