//! The few raw syscalls the shim needs, each in a small function.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::fcntl::{fcntl, FcntlArg};

/// The first fd a child gets from [`pass_fds`].
pub const FIRST_PASSED_FD: RawFd = 3;

/// Gives `cmd`'s child `files` as fds 3, 4, 5…, the way Go's `ExtraFiles`
/// does. Our copies go when `cmd` is dropped.
pub fn pass_fds<const N: usize>(cmd: &mut Command, files: [File; N]) -> io::Result<()> {
    // Moved above every target first, so that no dup2 overwrites a source.
    let above = FIRST_PASSED_FD + N as RawFd;
    let mut sources = Vec::with_capacity(N);
    for f in files {
        let fd = fcntl(f.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(above))?;
        // SAFETY: fcntl just returned this fd, which nothing else owns.
        sources.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
    // SAFETY: the closure runs between fork and exec and calls only dup2,
    // which is async-signal-safe; it allocates nothing (the Vec was built
    // before the fork and is only read). The sources are close-on-exec;
    // the dup2 copies are not.
    unsafe {
        cmd.pre_exec(move || {
            for (i, src) in sources.iter().enumerate() {
                dup2(src.as_raw_fd(), FIRST_PASSED_FD + i as RawFd)?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// dup2(2), which also clears close-on-exec on `to`.
fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on fd numbers has no memory-safety preconditions; an
    // invalid fd yields EBADF, which we return.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
