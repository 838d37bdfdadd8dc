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

/// Makes `cmd`'s child keep `fds` open across exec and die with its parent.
pub(crate) fn inherit_fds_and_die_with_parent(cmd: &mut std::process::Command, fds: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only fcntl
    // and prctl, which are async-signal-safe; it allocates nothing (the Vec
    // was allocated before the fork and is only read).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                clear_cloexec(fd)?;
            }
            die_with_parent()
        });
    }
}
