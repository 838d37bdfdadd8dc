//! `mu2-probe`: a static helper copied into test bundles as /bin/mu2-probe.
//!
//! Each subcommand makes the process do or report one thing the tests check
//! from the host side (exit by a forced fault, memory pressure, identity,
//! the wall clock in ns, limits, terminal size, a large byte-exact output, binding a port, a
//! syscall a seccomp profile denies), the way youki's `runtimetest` reports
//! what a container sees.

#![deny(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

const USAGE: &str = "usage: mu2-probe segv | alloc MB | urandom N | getrandom N | ids | pid | realtime | rlimit NAME | nnp | winsize | write-stdout MIB | sleep SECS | setxattr PATH NAME HEX | bind PORT | keyctl";

nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, nix::pty::Winsize);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mu2-probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    match args {
        ["segv"] => segv(),
        ["alloc", mb] => alloc(num(mb)?),
        ["urandom", n] => urandom(num(n)?),
        ["getrandom", n] => {
            let mut buf = vec![0u8; num(n)? as usize];
            getrandom::fill(&mut buf).map_err(|e| format!("getrandom: {e}"))?;
            let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            out(&format!("{hex}\n"))
        }
        ["ids"] => {
            let groups = nix::unistd::getgroups().map_err(|e| format!("getgroups: {e}"))?;
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            out(&format!(
                "uid={} gid={} groups={}\n",
                nix::unistd::getuid(),
                nix::unistd::getgid(),
                groups.join(",")
            ))
        }
        ["pid"] => out(&format!("{}\n", std::process::id())),
        ["realtime"] => {
            let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
                .map_err(|e| format!("clock_gettime: {e}"))?;
            out(&format!(
                "{}\n",
                t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
            ))
        }
        ["rlimit", name] => {
            let (soft, hard) = nix::sys::resource::getrlimit(resource(name)?)
                .map_err(|e| format!("getrlimit {name}: {e}"))?;
            out(&format!("{} {}\n", limit(soft), limit(hard)))
        }
        ["nnp"] => {
            let status = std::fs::read_to_string("/proc/self/status")
                .map_err(|e| format!("/proc/self/status: {e}"))?;
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix("NoNewPrivs:"))
                .ok_or("no NoNewPrivs line in /proc/self/status")?;
            out(&format!("{}\n", v.trim()))
        }
        ["winsize"] => {
            let (rows, cols) = winsize()?;
            out(&format!("{rows} {cols}\n"))
        }
        ["write-stdout", mib] => write_stdout(num(mib)?),
        ["setxattr", path, name, hex] => setxattr(path, name, &unhex(hex)?),
        ["bind", port] => {
            let port = u16::try_from(num(port)?).map_err(|_| format!("{port} is not a port"))?;
            std::net::TcpListener::bind(("0.0.0.0", port))
                .map_err(|e| format!("bind port {port}: {e}"))?;
            out(&format!("bound port {port}\n"))
        }
        ["keyctl"] => keyctl(),
        ["sleep", secs] => {
            std::thread::sleep(std::time::Duration::from_secs(num(secs)?));
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

fn num(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a number\n{USAGE}"))
}

fn out(s: &str) -> Result<(), String> {
    let mut o = io::stdout().lock();
    o.write_all(s.as_bytes())
        .and_then(|()| o.flush())
        .map_err(|e| format!("stdout: {e}"))
}

#[allow(unsafe_code)]
/// Faults on an unmapped address: a kernel-generated SIGSEGV is forced even
/// on a PID namespace's init, so the status is 139 as under runc.
fn segv() -> Result<(), String> {
    let addr = 16 as *const u8;
    // SAFETY: not safe at all, deliberately: reading an unmapped address is
    // how this subcommand gets the kernel to raise SIGSEGV.
    let v = unsafe { std::ptr::read_volatile(addr) };
    Err(format!("reading {addr:?} returned {v} instead of faulting"))
}

#[allow(unsafe_code)]
/// keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): a call
/// Docker's and containerd's default seccomp profiles deny with EPERM (the
/// keyring is not namespaced). Prints "keyctl: ok" or the errno.
fn keyctl() -> Result<(), String> {
    const KEYCTL_GET_KEYRING_ID: nix::libc::c_long = 0;
    const KEY_SPEC_SESSION_KEYRING: nix::libc::c_long = -3;
    // SAFETY: keyctl with this command takes two integers and touches no
    // memory of ours.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_SESSION_KEYRING,
            0,
        )
    };
    if r < 0 {
        out(&format!("keyctl: {}\n", nix::errno::Errno::last()))
    } else {
        out("keyctl: ok\n")
    }
}

fn alloc(mb: u64) -> Result<(), String> {
    let len = usize::try_from(mb << 20).map_err(|_| "too many megabytes")?;
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|e| format!("allocating {mb} MB: {e}"))?;
    v.resize(len, 0);
    // Touch every page so the memory is really committed.
    for i in (0..len).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
    out("allocated\n")
}

fn urandom(n: u64) -> Result<(), String> {
    let mut buf = vec![0u8; n as usize];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    out(&format!("{hex}\n"))
}

fn resource(name: &str) -> Result<nix::sys::resource::Resource, String> {
    use nix::sys::resource::Resource as R;
    let name = name.to_ascii_lowercase();
    let name = name.strip_prefix("rlimit_").unwrap_or(&name);
    Ok(match name {
        "cpu" => R::RLIMIT_CPU,
        "fsize" => R::RLIMIT_FSIZE,
        "data" => R::RLIMIT_DATA,
        "stack" => R::RLIMIT_STACK,
        "core" => R::RLIMIT_CORE,
        "rss" => R::RLIMIT_RSS,
        "nproc" => R::RLIMIT_NPROC,
        "nofile" => R::RLIMIT_NOFILE,
        "memlock" => R::RLIMIT_MEMLOCK,
        "as" => R::RLIMIT_AS,
        "locks" => R::RLIMIT_LOCKS,
        "sigpending" => R::RLIMIT_SIGPENDING,
        "msgqueue" => R::RLIMIT_MSGQUEUE,
        "nice" => R::RLIMIT_NICE,
        "rtprio" => R::RLIMIT_RTPRIO,
        "rttime" => R::RLIMIT_RTTIME,
        other => return Err(format!("unknown rlimit {other:?}")),
    })
}

fn limit(v: u64) -> String {
    if v == nix::sys::resource::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

#[allow(unsafe_code)]
fn winsize() -> Result<(u16, u16), String> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let fd = io::stdin().as_raw_fd();
    // SAFETY: stdin is open for the process's lifetime and the kernel writes
    // one Winsize into `ws`, which outlives the call.
    unsafe { tiocgwinsz(fd, &mut ws) }.map_err(|e| format!("TIOCGWINSZ on stdin: {e}"))?;
    Ok((ws.ws_row, ws.ws_col))
}

fn unhex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("{hex:?} is not hex bytes"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("{hex:?} is not hex bytes"))
        })
        .collect()
}

/// Sets extended attribute `name` of `path` (not following a symlink) to
/// `value`: busybox has no setfattr.
#[allow(unsafe_code)]
fn setxattr(path: &str, name: &str, value: &[u8]) -> Result<(), String> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| format!("{s:?} holds a NUL"));
    let (cpath, cname) = (c(path)?, c(name)?);
    // SAFETY: two NUL-terminated strings and a slice that outlive the call;
    // the kernel only reads them.
    let r = unsafe {
        nix::libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "setxattr {path} {name}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Byte `i` of the `write-stdout` stream; the host recomputes it.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 251)) as u8
}

fn write_stdout(mib: u64) -> Result<(), String> {
    let total = mib << 20;
    let mut o = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = 0u64;
    while i < total {
        let n = (total - i).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(i + k as u64);
        }
        o.write_all(&buf[..n]).map_err(|e| format!("stdout: {e}"))?;
        i += n as u64;
    }
    o.flush().map_err(|e| format!("stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_not_periodic_at_256() {
        assert_eq!(pattern(0), 0);
        assert_eq!(pattern(1), 7);
        assert_eq!(pattern(251), (251u64 * 7 + 1) as u8);
        assert_ne!(
            (0..256).map(pattern).collect::<Vec<_>>(),
            (256..512).map(pattern).collect::<Vec<_>>()
        );
    }

    #[test]
    fn rlimit_names_and_bad_usage() {
        assert!(resource("nofile").is_ok());
        assert!(resource("RLIMIT_NOFILE").is_ok());
        assert!(resource("bogus").is_err());
        assert!(run(&["nope"]).is_err());
        assert!(run(&["alloc", "x"]).is_err());
        assert_eq!(unhex("0100ff").unwrap(), [1, 0, 255]);
        assert!(unhex("0").is_err() && unhex("zz").is_err());
    }
}
