//! The agent's only `unsafe`: one small function per syscall or ioctl that
//! `nix` exposes only as `unsafe` (or not at all), each returning a `Result`.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc;
use nix::pty::Winsize;
use nix::unistd::ForkResult;

nix::ioctl_write_ptr_bad!(ioctl_tiocswinsz, libc::TIOCSWINSZ, Winsize);
nix::ioctl_write_int_bad!(ioctl_tiocsctty, libc::TIOCSCTTY);
nix::ioctl_write_ptr_bad!(ioctl_tiocsptlck, libc::TIOCSPTLCK, libc::c_int);
nix::ioctl_read_bad!(ioctl_tiocgptn, libc::TIOCGPTN, libc::c_uint);

/// `fork(2)`.
///
/// Callers must be single-threaded: the agent forks the container process
/// before it starts any relay thread, so the child cannot inherit a lock held
/// by a thread that does not exist in it.
pub fn fork_single_threaded() -> nix::Result<ForkResult> {
    // SAFETY: the agent calls this while it runs a single thread (see above),
    // which is the condition under which the child may run arbitrary code.
    unsafe { nix::unistd::fork() }
}

/// `_exit(2)`: ends a forked child without running the parent's exit
/// handlers or flushing buffers it copied from the parent.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// Restores the default action of SIGPIPE, which Rust's runtime ignores and
/// an exec would otherwise pass on to the container process.
pub fn default_sigpipe() -> nix::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}

/// `TIOCSWINSZ`: sets a terminal's window size.
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the fd is borrowed, hence open, and `ws` outlives the call.
    unsafe { ioctl_tiocswinsz(fd.as_raw_fd(), &ws) }.map(drop)
}

/// `TIOCSCTTY`: makes the terminal the controlling terminal of the calling
/// session leader.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: the fd is borrowed, hence open; the argument is a plain int.
    unsafe { ioctl_tiocsctty(fd.as_raw_fd(), 0) }.map(drop)
}

/// `TIOCSPTLCK` with 0: unlocks the slave of a pty master (`unlockpt`).
pub fn unlock_pty(master: BorrowedFd<'_>) -> nix::Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: the fd is borrowed, hence open, and `unlock` outlives the call.
    unsafe { ioctl_tiocsptlck(master.as_raw_fd(), &unlock) }.map(drop)
}

/// `TIOCGPTN`: the number N of the slave `/dev/pts/N` of a pty master.
pub fn pty_number(master: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: the fd is borrowed, hence open; the kernel writes one c_uint
    // into `n`, which outlives the call.
    unsafe { ioctl_tiocgptn(master.as_raw_fd(), &mut n) }?;
    Ok(n)
}

/// `EINTR`-retrying wrapper for blocking calls.
pub fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// `kill(2)` with any signal number, including the real-time signals nix's
/// `Signal` enum does not name.
pub fn kill_raw(pid: nix::unistd::Pid, signal: i32) -> nix::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    Errno::result(unsafe { libc::kill(pid.as_raw(), signal) }).map(drop)
}
