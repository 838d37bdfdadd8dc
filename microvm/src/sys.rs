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

/// Turns transparent huge pages off for the calling process and what it
/// execs and forks (`PR_SET_THP_DISABLE` survives both). Under TCG they
/// only cost: QEMU asks for them on guest RAM and on the translation
/// buffer, so every first touch of 2 MiB zeroes 2 MiB, while the soft MMU
/// maps 4 KiB pages anyway; a warm VM then holds whole huge pages it
/// touched a few bytes of. Called between fork and exec only.
pub(crate) fn no_huge_pages() -> io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integers and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0) } < 0 {
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
    huge_pages: bool,
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
            if !huge_pages {
                no_huge_pages()?;
            }
            die_with_parent()
        });
    }
}

/// A pidfd for process `pid`: a handle that keeps naming that process even
/// after it died and its pid was given to another one.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags, no pointers; it returns a
    // new fd that nothing else owns, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor returned to us alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process `pidfd` names; ESRCH once it has exited.
pub(crate) fn pidfd_send_signal(pidfd: std::os::fd::BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with a null siginfo and no flags reads no
    // memory of ours; a stale or invalid fd yields an error.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout` for the process of `pidfd` to exit (a pidfd polls
/// readable once it has); whether it did.
pub(crate) fn pidfd_wait_exit(
    pidfd: std::os::fd::BorrowedFd<'_>,
    timeout: std::time::Duration,
) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return true,
            Ok(_) if left.is_zero() => return false,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // A pidfd that cannot be polled names no process we can wait for.
            Err(_) => return true,
        }
    }
}

/// Whether the process of `pidfd` has exited, without waiting.
pub(crate) fn pidfd_exited(pidfd: std::os::fd::BorrowedFd<'_>) -> bool {
    pidfd_wait_exit(pidfd, std::time::Duration::ZERO)
}
