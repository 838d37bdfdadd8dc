//! Raw syscalls of the jail that neither `nix` nor `std` wrap: the new mount
//! API (for id-mapped, read-only bind mounts taken from an fd, so that what
//! was checked is what gets mounted), `close_range`, `flock`, securebits and
//! the final `execve`. Each is a small function around one syscall.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const SYS_OPEN_TREE: libc::c_long = 428;
const SYS_MOVE_MOUNT: libc::c_long = 429;
const SYS_CLOSE_RANGE: libc::c_long = 436;
const SYS_MOUNT_SETATTR: libc::c_long = 442;
const SYS_OPENAT2: libc::c_long = 437;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

const PR_SET_SECUREBITS: libc::c_int = 28;
/// SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
/// SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
/// SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: uid 0
/// (even in a user namespace) gains nothing at exec, for good.
pub const SECUREBITS_LOCKED_DOWN: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A detached copy of the mount at `path` (not following a final symlink).
pub fn open_tree_clone(path: &CStr) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    // SAFETY: open_tree reads the NUL-terminated path; it returns a new fd
    // that we own, or -1.
    let fd = check(unsafe { libc::syscall(SYS_OPEN_TREE, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` as an O_PATH fd, refusing a symlink in *any* component
/// (`openat2` with RESOLVE_NO_SYMLINKS): the path checked is the path
/// opened, with no window to swap a directory for a link.
pub fn open_no_symlinks(path: &CStr) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: openat2 reads the NUL-terminated path and `how` (size given);
    // it returns a new fd that we own, or -1.
    let fd = check(unsafe {
        libc::syscall(
            SYS_OPENAT2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A detached copy of the mount at the file `fd` refers to.
pub fn open_tree_clone_fd(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: open_tree on an fd with an empty path; returns a new fd or -1.
    let t = check(unsafe { libc::syscall(SYS_OPEN_TREE, fd.as_raw_fd(), c"".as_ptr(), flags) })?;
    // SAFETY: t is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(t as RawFd) })
}

/// Sets `attrs` (MOUNT_ATTR_*) on the detached mount `tree`; with
/// MOUNT_ATTR_IDMAP, `userns` gives the id mapping.
pub fn mount_setattr(tree: &OwnedFd, attrs: u64, userns: Option<RawFd>) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map(|fd| fd as u64).unwrap_or(0),
    };
    // SAFETY: mount_setattr reads `attr` (size given) and the empty path;
    // both outlive the call.
    check(unsafe {
        libc::syscall(
            SYS_MOUNT_SETATTR,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches the detached mount `tree` at `target`.
pub fn move_mount(tree: &OwnedFd, target: &CStr) -> io::Result<()> {
    // SAFETY: move_mount reads the two NUL-terminated paths.
    check(unsafe {
        libc::syscall(
            SYS_MOVE_MOUNT,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Closes every fd from `first` to `last` inclusive.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range takes integers only; closing fds we do not use
    // is the point (the caller is about to exec).
    check(unsafe { libc::syscall(SYS_CLOSE_RANGE, first, last, 0u32) })?;
    Ok(())
}

/// Takes an exclusive `flock` on `fd` without waiting: `Ok(false)` when
/// another open file holds it.
pub fn try_lock(fd: RawFd) -> io::Result<bool> {
    // SAFETY: flock takes an fd and flags.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Locks the securebits so that uid 0 confers no capabilities at exec.
pub fn lock_securebits() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Everything `execve` needs, built before the seccomp filter goes on so
/// that the filter can name the path buffer's address.
pub struct ExecArgs {
    path: CString,
    // Kept alive: `argv` points into these.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: [*const libc::c_char; 1],
}

impl ExecArgs {
    pub fn new(path: CString, args: Vec<CString>) -> ExecArgs {
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        ExecArgs {
            path,
            _args: args,
            argv,
            envp: [std::ptr::null()],
        }
    }

    /// The address the seccomp policy allows `execve` to be called with.
    pub fn path_addr(&self) -> u64 {
        self.path.as_ptr() as u64
    }

    /// Replaces the process with the program, environment empty. Returns
    /// only on failure.
    pub fn exec(&self) -> io::Error {
        // SAFETY: path, argv and envp are NUL-terminated / NULL-terminated
        // and live in `self`, which outlives the call.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        io::Error::last_os_error()
    }
}
