//! The agent's only `unsafe`: one small function per syscall or ioctl that
//! `nix` exposes only as `unsafe` (or not at all), each returning a `Result`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::pty::Winsize;
use nix::unistd::ForkResult;

nix::ioctl_write_ptr_bad!(ioctl_tiocswinsz, libc::TIOCSWINSZ, Winsize);
nix::ioctl_write_int_bad!(ioctl_tiocsctty, libc::TIOCSCTTY);
nix::ioctl_write_ptr_bad!(ioctl_tiocsptlck, libc::TIOCSPTLCK, libc::c_int);
nix::ioctl_read_bad!(ioctl_tiocgptn, libc::TIOCGPTN, libc::c_uint);

/// `RNDADDENTROPY` and `RNDRESEEDCRNG` of linux/random.h (`libc` names
/// neither): `_IOW('R', 0x03, int[2])` and `_IO('R', 0x07)`.
pub const RNDADDENTROPY: libc::c_ulong =
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()) as libc::c_ulong;
pub const RNDRESEEDCRNG: libc::c_ulong = nix::request_code_none!(b'R', 0x07) as libc::c_ulong;
nix::ioctl_write_ptr_bad!(ioctl_rndaddentropy, RNDADDENTROPY, RandPoolInfo);
nix::ioctl_none_bad!(ioctl_rndreseedcrng, RNDRESEEDCRNG);

/// `struct rand_pool_info` of linux/random.h with room for the most entropy
/// an Identity carries: the bits to credit, the bytes that follow, then the
/// bytes (the kernel reads `buf_size` of them after the two ints).
#[repr(C)]
pub struct RandPoolInfo {
    pub entropy_count: libc::c_int,
    pub buf_size: libc::c_int,
    pub buf: [u8; mu2_protocol::MAX_ENTROPY_LEN],
}

impl RandPoolInfo {
    /// `entropy`, credited in full (8 bits a byte: the host's getrandom is
    /// a cryptographic RNG). `E2BIG` above [`mu2_protocol::MAX_ENTROPY_LEN`].
    pub fn new(entropy: &[u8]) -> nix::Result<RandPoolInfo> {
        let mut info = RandPoolInfo {
            entropy_count: 0,
            buf_size: 0,
            buf: [0; mu2_protocol::MAX_ENTROPY_LEN],
        };
        info.buf
            .get_mut(..entropy.len())
            .ok_or(Errno::E2BIG)?
            .copy_from_slice(entropy);
        // At most MAX_ENTROPY_LEN (256) bytes: both fit a c_int.
        info.buf_size = entropy.len() as libc::c_int;
        info.entropy_count = (entropy.len() * 8) as libc::c_int;
        Ok(info)
    }
}

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

/// `RNDADDENTROPY`: mixes `entropy` into the kernel's input pool and
/// credits it (needs CAP_SYS_ADMIN; `fd` is /dev/random or /dev/urandom).
pub fn add_entropy(fd: BorrowedFd<'_>, entropy: &[u8]) -> nix::Result<()> {
    let info = RandPoolInfo::new(entropy)?;
    // SAFETY: the fd is borrowed, hence open; `info` is a valid
    // rand_pool_info whose buf holds at least buf_size bytes, and it
    // outlives the call; the kernel only reads it.
    unsafe { ioctl_rndaddentropy(fd.as_raw_fd(), &info) }.map(drop)
}

/// `RNDRESEEDCRNG`: reseeds the kernel's CRNG from its input pool now
/// (needs CAP_SYS_ADMIN; `ENODATA` while the CRNG is not initialised).
pub fn reseed_crng(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: the fd is borrowed, hence open; the ioctl takes no argument.
    unsafe { ioctl_rndreseedcrng(fd.as_raw_fd()) }.map(drop)
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

/// `bpf(2)` commands, program and attach types used here
/// (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Bytes of the verifier's log kept for an error message.
const BPF_LOG_SIZE: usize = 16 * 1024;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD; the kernel
/// takes a shorter attr and treats the fields it lacks as zero.
#[repr(C)]
#[derive(Default)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The fields of `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct BpfProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// `bpf(BPF_PROG_LOAD)` of a cgroup device program; the error carries the
/// verifier's log.
pub fn bpf_load_cgroup_device(insns: &[crate::devices::BpfInsn]) -> std::io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; BPF_LOG_SIZE];
    let mut attr = BpfProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: BPF_LOG_SIZE as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    attr.prog_name[..6].copy_from_slice(b"mu2dev");
    // SAFETY: `attr` is a valid, initialised prefix of bpf_attr whose size
    // is passed; the instruction, license and log buffers it points to
    // outlive the call, and the kernel writes at most `log_size` bytes
    // into the log.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut BpfProgLoadAttr,
            std::mem::size_of::<BpfProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join(" / ");
        return Err(std::io::Error::new(
            err.kind(),
            format!("{err}; verifier: {tail}"),
        ));
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `bpf(BPF_PROG_ATTACH)` of a device program to a cgroup, without
/// BPF_F_ALLOW_OVERRIDE or MULTI: no cgroup below it can attach another.
pub fn bpf_attach_cgroup_device(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
) -> std::io::Result<()> {
    let attr = BpfProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    // SAFETY: `attr` is a valid prefix of bpf_attr whose size is passed;
    // both descriptors are borrowed, hence open, for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const BpfProgAttachAttr,
            std::mem::size_of::<BpfProgAttachAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `seccomp(SECCOMP_SET_MODE_FILTER)` of a classic-BPF program given as
/// 8-byte little-endian `struct sock_filter`s (the protocol checked the
/// length). Needs no_new_privs or CAP_SYS_ADMIN.
pub fn install_seccomp(program: &[u8], flags: u32) -> nix::Result<()> {
    let mut filter: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| Errno::E2BIG)?,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, `len` instructions long, both alive
    // for the call; the kernel copies the program and keeps no pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flags),
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ioctls_have_the_kernels_numbers() {
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
    }

    #[test]
    fn rand_pool_info_is_bits_then_bytes_then_the_bytes() {
        assert_eq!(std::mem::offset_of!(RandPoolInfo, entropy_count), 0);
        assert_eq!(std::mem::offset_of!(RandPoolInfo, buf_size), 4);
        assert_eq!(std::mem::offset_of!(RandPoolInfo, buf), 8);
        let entropy: Vec<u8> = (1..=64).collect();
        let info = RandPoolInfo::new(&entropy).unwrap();
        assert_eq!(info.entropy_count, 512);
        assert_eq!(info.buf_size, 64);
        assert_eq!(&info.buf[..64], &entropy[..]);
        assert!(info.buf[64..].iter().all(|b| *b == 0));
        let full = RandPoolInfo::new(&[9; mu2_protocol::MAX_ENTROPY_LEN]).unwrap();
        assert_eq!(full.entropy_count, 2048);
        assert_eq!(
            RandPoolInfo::new(&[0; mu2_protocol::MAX_ENTROPY_LEN + 1]).err(),
            Some(Errno::E2BIG)
        );
    }
}
