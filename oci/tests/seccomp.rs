//! `oci::seccomp` programs under the real kernel: a forked child sets
//! no_new_privs, installs the compiled program with
//! `seccomp(SECCOMP_SET_MODE_FILTER, flags)` and makes raw syscalls
//! (`syscall` and, for i386, `int 0x80`), reporting each result on a pipe;
//! the parent checks the results and how the child ended. The host is
//! x86_64 Linux with IA-32 emulation; x32 syscalls reach seccomp even where
//! the kernel has no x32 ABI (they then fail with ENOSYS after the filter
//! let them through).
//!
//! After `fork` the child only makes raw syscalls on memory prepared
//! before it (the test process has other threads), then `exit_group`.
//! Every call's arguments are harmless if the filter wrongly let it
//! through: bad magic numbers, bad fds and pointers, invalid flags.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::arch::asm;

use mu2_oci::seccomp::{compile, syscall_number, syscall_table, Filter};
use oci_spec::runtime::{Arch, LinuxSeccomp};
use serde_json::json;

const CONTAINERD_PROFILE: &str = include_str!("data/containerd-default-seccomp.json");
const M: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
enum Call {
    /// A 64-bit syscall: number, arguments.
    Sys(u64, [u64; 6]),
    /// An i386 syscall by `int 0x80`: number, ebx, ecx, edx, esi.
    Int80(u32, [u32; 4]),
}

fn nr(name: &str) -> u64 {
    u64::from(syscall_number(Arch::ScmpArchX86_64, name).unwrap())
}

fn nr32(name: &str) -> u32 {
    syscall_number(Arch::ScmpArchX86, name).unwrap()
}

fn nrx32(name: &str) -> u64 {
    u64::from(syscall_number(Arch::ScmpArchX32, name).unwrap())
}

fn sys(name: &str, args: [u64; 6]) -> Call {
    Call::Sys(nr(name), args)
}

/// What a call must return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Any success (>= 0).
    Ok,
    /// Exactly this value.
    Value(i64),
    /// -errno.
    Errno(i32),
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Exited(i32),
    Signaled(i32),
}

// --- the child side ----------------------------------------------------------

/// One 64-bit syscall, its raw result (-errno on failure).
///
/// # Safety
/// The arguments must be harmless to the process.
unsafe fn raw64(nr: u64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the caller vouches for the arguments; `syscall` clobbers
    // rcx and r11, declared.
    unsafe {
        asm!("syscall",
            inlateout("rax") nr as i64 => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

/// One i386 syscall by `int 0x80`, its raw result.
///
/// # Safety
/// The arguments must be harmless to the process.
unsafe fn raw32(nr: u32, a: [u32; 4]) -> i64 {
    let ret: u32;
    // SAFETY: the caller vouches for the arguments. rbx cannot be an asm
    // operand, so ebx's value is swapped in and rbx restored whole; the
    // compat entry may clear r8-r11, declared clobbered.
    unsafe {
        asm!("xchg {b}, rbx", "int 0x80", "xchg {b}, rbx",
            b = inout(reg) u64::from(a[0]) => _,
            inlateout("eax") nr => ret,
            in("ecx") a[1], in("edx") a[2], in("esi") a[3],
            lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
            options(nostack));
    }
    i64::from(ret as i32)
}

fn exit_group(code: i32) -> ! {
    // SAFETY: exit_group ends the process.
    unsafe { raw64(libc::SYS_exit_group as u64, [code as u64, 0, 0, 0, 0, 0]) };
    // SAFETY: only reached if exit_group was refused.
    unsafe { libc::_exit(code) }
}

/// The child: no core file, no_new_privs, the filter, then each call with
/// its result on `fd`, then exit_group(0). Exits 10 if the set-up fails.
fn child(prog: &libc::sock_fprog, flags: u32, calls: &[Call], fd: i32) -> ! {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 on ourselves reads `zero`; prctl takes no pointer;
    // seccomp reads the program, which outlives the call.
    let ok = unsafe {
        raw64(
            libc::SYS_prlimit64 as u64,
            [
                0,
                libc::RLIMIT_CORE as u64,
                &zero as *const _ as u64,
                0,
                0,
                0,
            ],
        ) == 0
            && raw64(
                libc::SYS_prctl as u64,
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            ) == 0
            && raw64(
                libc::SYS_seccomp as u64,
                [
                    libc::SECCOMP_SET_MODE_FILTER as u64,
                    u64::from(flags),
                    prog as *const _ as u64,
                    0,
                    0,
                    0,
                ],
            ) == 0
    };
    if !ok {
        exit_group(10);
    }
    for c in calls {
        // SAFETY: every test call's arguments are harmless (module docs).
        let r = unsafe {
            match *c {
                Call::Sys(nr, a) => raw64(nr, a),
                Call::Int80(nr, a) => raw32(nr, a),
            }
        };
        let rec = r.to_le_bytes();
        // SAFETY: writes 8 bytes from a live buffer.
        unsafe {
            raw64(
                libc::SYS_write as u64,
                [fd as u64, rec.as_ptr() as u64, 8, 0, 0, 0],
            )
        };
    }
    exit_group(0)
}

// --- the parent side ---------------------------------------------------------

fn skip_unless_root() -> bool {
    // Not needed by seccomp itself (no_new_privs suffices), but the calls'
    // expectations (EINVAL rather than EPERM when allowed) assume root.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: these seccomp tests expect to run as root");
        return true;
    }
    false
}

/// Installs `filter` in a forked child, makes `calls`: their results and
/// how the child ended.
fn in_child(filter: &Filter, calls: &[Call]) -> (Vec<i64>, End) {
    let mut insns: Vec<libc::sock_filter> = filter
        .program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: u16::try_from(insns.len()).unwrap(),
        filter: insns.as_mut_ptr(),
    };
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    let (r, w) = (fds[0], fds[1]);
    // SAFETY: the child only runs `child`: raw syscalls on memory prepared
    // here, then exit_group.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        child(&prog, filter.flags, calls, w);
    }
    // SAFETY: closes our copy of the write end.
    unsafe { libc::close(w) };
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let got = unsafe { libc::waitpid(pid, &mut status, 0) };
        if got == pid {
            break;
        }
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR)
        );
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into a live buffer.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: closes the read end we own.
    unsafe { libc::close(r) };
    drop(insns);
    let results = out
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let end = if libc::WIFEXITED(status) {
        End::Exited(libc::WEXITSTATUS(status))
    } else {
        End::Signaled(libc::WTERMSIG(status))
    };
    (results, end)
}

/// Runs `calls` under `filter`; each must give its `Want`, and the child
/// must exit 0.
fn expect(filter: &Filter, calls: &[(&str, Call, Want)]) {
    let only: Vec<Call> = calls.iter().map(|c| c.1).collect();
    let (results, end) = in_child(filter, &only);
    assert_eq!(
        end,
        End::Exited(0),
        "the child died after {} of {} calls (next: {})",
        results.len(),
        calls.len(),
        calls.get(results.len()).map(|c| c.0).unwrap_or("none")
    );
    assert_eq!(results.len(), calls.len());
    for ((what, _, want), got) in calls.iter().zip(results) {
        let ok = match *want {
            Want::Ok => got >= 0,
            Want::Value(v) => got == v,
            Want::Errno(e) => got == -i64::from(e),
        };
        assert!(ok, "{what}: got {got}, want {want:?}");
    }
}

/// Runs one call under `filter`, which must kill the child with SIGSYS.
fn expect_sigsys(filter: &Filter, what: &str, call: Call) {
    let (results, end) = in_child(filter, &[call]);
    assert_eq!(end, End::Signaled(libc::SIGSYS), "{what}");
    assert!(results.is_empty(), "{what}: returned {results:?}");
}

fn filter(v: serde_json::Value) -> Filter {
    let p: LinuxSeccomp = serde_json::from_value(v).unwrap();
    compile(&p).unwrap()
}

fn ppid() -> i64 {
    i64::from(std::process::id())
}

// --- the tests ---------------------------------------------------------------

#[test]
fn containerds_default_profile_under_the_real_kernel() {
    if skip_unless_root() {
        return;
    }
    let p: LinuxSeccomp = serde_json::from_str(CONTAINERD_PROFILE).unwrap();
    let f = compile(&p).unwrap();
    eprintln!(
        "containerd's profile: {} instructions, {} names skipped: {:?}",
        f.len(),
        f.skipped.len(),
        f.skipped
    );
    let clone_newuser_thread = (libc::CLONE_NEWUSER | libc::CLONE_THREAD) as u64;
    expect(
        &f,
        &[
            ("getpid", sys("getpid", [0; 6]), Want::Ok),
            ("getppid", sys("getppid", [0; 6]), Want::Value(ppid())),
            // Not in the profile: its default, ERRNO without errnoRet (EPERM).
            (
                "kexec_load",
                sys("kexec_load", [0, 0, 0, M, 0, 0]),
                Want::Errno(libc::EPERM),
            ),
            (
                "reboot (bad magic)",
                sys("reboot", [0, 0, 0, 0, 0, 0]),
                Want::Errno(libc::EPERM),
            ),
            (
                "mount",
                sys("mount", [M, M, M, M, M, 0]),
                Want::Errno(libc::EPERM),
            ),
            (
                "unshare(-1)",
                sys("unshare", [M, 0, 0, 0, 0, 0]),
                Want::Errno(libc::EPERM),
            ),
            // personality: EQ 0, 8, 0x20000, 0x20008, 0xffffffff; 64-bit.
            (
                "personality(0xffffffff)",
                sys("personality", [0xffff_ffff, 0, 0, 0, 0, 0]),
                Want::Ok,
            ),
            (
                "personality(0x1ffffffff)",
                sys("personality", [0x1_ffff_ffff, 0, 0, 0, 0, 0]),
                Want::Errno(libc::EPERM),
            ),
            (
                "personality(READ_IMPLIES_EXEC)",
                sys("personality", [0x040_0000, 0, 0, 0, 0, 0]),
                Want::Errno(libc::EPERM),
            ),
            // clone: MASKED_EQ 0x7e020000 == 0 (no namespace flags).
            (
                "clone(NEWUSER|THREAD)",
                sys("clone", [clone_newuser_thread, 0, 0, 0, 0, 0]),
                Want::Errno(libc::EPERM),
            ),
            // clone3: ERRNO with errnoRet 38.
            (
                "clone3",
                sys("clone3", [0, 0, 0, 0, 0, 0]),
                Want::Errno(libc::ENOSYS),
            ),
            // Beyond the profile's largest (futex_waitv, 449): runc's
            // ENOSYS stub. fchmodat2 (452) would be EBADF if let through.
            (
                "fchmodat2 (beyond the profile)",
                Call::Sys(452, [M, 0, 0, 0, 0, 0]),
                Want::Errno(libc::ENOSYS),
            ),
            // i386 (SCMP_ARCH_X86 is listed): its own numbers.
            ("i386 getpid", Call::Int80(nr32("getpid"), [0; 4]), Want::Ok),
            (
                "i386 getppid",
                Call::Int80(nr32("getppid"), [0; 4]),
                Want::Value(ppid()),
            ),
            (
                "i386 reboot",
                Call::Int80(nr32("reboot"), [0; 4]),
                Want::Errno(libc::EPERM),
            ),
            (
                "i386 kexec_load",
                Call::Int80(nr32("kexec_load"), [0, 0, 0, u32::MAX]),
                Want::Errno(libc::EPERM),
            ),
            (
                "i386 personality(0xffffffff)",
                Call::Int80(nr32("personality"), [u32::MAX, 0, 0, 0]),
                Want::Ok,
            ),
            (
                "i386 personality(READ_IMPLIES_EXEC)",
                Call::Int80(nr32("personality"), [0x040_0000, 0, 0, 0]),
                Want::Errno(libc::EPERM),
            ),
            // x32 (listed): the filter lets getpid through, and this kernel
            // (no x32 ABI) answers ENOSYS; reboot the filter refuses.
            (
                "x32 getpid",
                Call::Sys(nrx32("getpid"), [0; 6]),
                Want::Errno(libc::ENOSYS),
            ),
            (
                "x32 reboot",
                Call::Sys(nrx32("reboot"), [0; 6]),
                Want::Errno(libc::EPERM),
            ),
        ],
    );
}

#[test]
fn a_denied_call_returns_the_configured_errno_and_others_run() {
    if skip_unless_root() {
        return;
    }
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES},
            {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO"}
        ]
    }));
    expect(
        &f,
        &[
            ("getpid", sys("getpid", [0; 6]), Want::Ok),
            ("getppid", sys("getppid", [0; 6]), Want::Errno(libc::EACCES)),
            (
                "getpgid (no errnoRet)",
                sys("getpgid", [0; 6]),
                Want::Errno(libc::EPERM),
            ),
        ],
    );
}

#[test]
fn default_errno_ret_is_what_unlisted_calls_get() {
    if skip_unless_root() {
        return;
    }
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EACCES,
        "syscalls": [{"names": ["write", "exit_group", "getpid", "openat2"], "action": "SCMP_ACT_ALLOW"}]
    }));
    expect(
        &f,
        &[
            ("getpid", sys("getpid", [0; 6]), Want::Ok),
            ("getppid", sys("getppid", [0; 6]), Want::Errno(libc::EACCES)),
            (
                "mount",
                sys("mount", [M, M, M, M, M, 0]),
                Want::Errno(libc::EACCES),
            ),
        ],
    );
}

#[test]
fn kill_actions_end_the_child_with_sigsys_and_log_and_trace_do_not() {
    if skip_unless_root() {
        return;
    }
    for action in [
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_TRAP",
    ] {
        let f = filter(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": action}]
        }));
        expect_sigsys(&f, action, sys("getppid", [0; 6]));
    }
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
            // No tracer: the kernel fails a TRACE'd call with ENOSYS.
            {"names": ["getpgid"], "action": "SCMP_ACT_TRACE"}
        ]
    }));
    expect(
        &f,
        &[
            ("LOG getppid", sys("getppid", [0; 6]), Want::Value(ppid())),
            (
                "TRACE getpgid",
                sys("getpgid", [0; 6]),
                Want::Errno(libc::ENOSYS),
            ),
        ],
    );
}

#[test]
fn argument_rules_select_on_all_64_bits() {
    if skip_unless_root() {
        return;
    }
    let big = 0x1_0000_0000u64;
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 101,
             "args": [{"index": 0, "value": big + 5, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 102,
             "args": [{"index": 1, "value": 0xffff_0000_0000_0000u64, "valueTwo": 0x1234_0000_0000_0000u64,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 103,
             "args": [{"index": 2, "value": 2 * big, "op": "SCMP_CMP_GE"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 104,
             "args": [{"index": 3, "value": big, "op": "SCMP_CMP_GT"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 105,
             "args": [{"index": 4, "value": big, "op": "SCMP_CMP_LE"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 106,
             "args": [{"index": 5, "value": M, "op": "SCMP_CMP_NE"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 107,
             "args": [{"index": 4, "value": M, "op": "SCMP_CMP_LT"}, {"index": 5, "value": M, "op": "SCMP_CMP_EQ"}]}
        ]
    }));
    // Matching none: arg 4 = MAX (not <= 2^32, not < MAX), arg 5 = MAX.
    let base = [0, 0, 0, 0, M, M];
    let with = |i: usize, v: u64| {
        let mut a = base;
        a[i] = v;
        sys("getppid", a)
    };
    let pass = Want::Value(ppid());
    expect(
        &f,
        &[
            ("none", sys("getppid", base), pass),
            ("EQ: 5 (low word equal)", with(0, 5), pass),
            ("EQ: 2^32+5", with(0, big + 5), Want::Errno(101)),
            ("EQ: 2^33+5", with(0, 2 * big + 5), pass),
            (
                "MASKED_EQ: 0x1234_5678_...",
                with(1, 0x1234_5678_9abc_def0),
                Want::Errno(102),
            ),
            (
                "MASKED_EQ: 0x1235_...",
                with(1, 0x1235_0000_0000_0000),
                pass,
            ),
            ("MASKED_EQ: 0x1234 (low word)", with(1, 0x1234), pass),
            ("GE: 2^33", with(2, 2 * big), Want::Errno(103)),
            ("GE: MAX", with(2, M), Want::Errno(103)),
            ("GE: 2^33-1", with(2, 2 * big - 1), pass),
            ("GE: 0xffffffff", with(2, 0xffff_ffff), pass),
            ("GT: 2^32+1", with(3, big + 1), Want::Errno(104)),
            ("GT: 2^32", with(3, big), pass),
            ("GT: 0xffffffff", with(3, 0xffff_ffff), pass),
            ("LE: 2^32", with(4, big), Want::Errno(105)),
            ("LE: 0xffffffff", with(4, 0xffff_ffff), Want::Errno(105)),
            (
                "LE: 2^32+1 < MAX, so LT MAX and EQ MAX",
                with(4, big + 1),
                Want::Errno(107),
            ),
            ("NE: 5", with(5, 5), Want::Errno(106)),
            (
                "NE: 0xffffffff (low word equal)",
                with(5, 0xffff_ffff),
                Want::Errno(106),
            ),
        ],
    );
}

#[test]
fn entries_of_one_syscall_first_match_in_profile_order() {
    if skip_unless_root() {
        return;
    }
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11,
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 12,
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GE"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
        ]
    }));
    expect(
        &f,
        &[
            (
                "arg 1: the first entry",
                sys("getppid", [1, 0, 0, 0, 0, 0]),
                Want::Errno(11),
            ),
            (
                "arg 2: the second",
                sys("getppid", [2, 0, 0, 0, 0, 0]),
                Want::Errno(12),
            ),
        ],
    );
    expect_sigsys(
        &f,
        "arg 0: the third (kill), never the fourth",
        sys("getppid", [0; 6]),
    );
}

#[test]
fn a_profile_listing_only_x86_64_kills_i386_and_x32_calls() {
    if skip_unless_root() {
        return;
    }
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]
    }));
    expect(
        &f,
        &[
            (
                "x86_64 getppid",
                sys("getppid", [0; 6]),
                Want::Value(ppid()),
            ),
            (
                "x86_64 reboot",
                sys("reboot", [0; 6]),
                Want::Errno(libc::EPERM),
            ),
        ],
    );
    expect_sigsys(&f, "i386 getpid", Call::Int80(nr32("getpid"), [0; 4]));
    expect_sigsys(&f, "x32 getpid", Call::Sys(nrx32("getpid"), [0; 6]));
}

#[test]
fn flags_reach_the_kernel() {
    if skip_unless_root() {
        return;
    }
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}]
    }));
    assert_eq!(f.flags, 6);
    // The set-up (seccomp with these flags) succeeded if the calls ran.
    expect(
        &f,
        &[("getppid", sys("getppid", [0; 6]), Want::Errno(libc::EPERM))],
    );
}

#[test]
fn a_profile_of_every_syscall_with_argument_rules_loads_and_works() {
    if skip_unless_root() {
        return;
    }
    // Every x86_64 syscall the tables know, each first with a rule that
    // never matches here, then allowed: ~360 syscalls, long bodies, far
    // jumps. getppid is refused.
    let mut syscalls = Vec::new();
    let mut names = 0;
    for &(name, _) in syscall_table(Arch::ScmpArchX86_64) {
        names += 1;
        syscalls.push(
            json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 99,
            "args": [{"index": 5, "value": 0xdead_beef_0000_0000u64, "op": "SCMP_CMP_EQ"},
                     {"index": 4, "value": 3, "op": "SCMP_CMP_GE"}]}),
        );
        let action = if name == "getppid" {
            "SCMP_ACT_ERRNO"
        } else {
            "SCMP_ACT_ALLOW"
        };
        syscalls.push(json!({"names": [name], "action": action}));
    }
    assert!(names > 350, "{names} syscalls");
    let f = filter(json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": syscalls
    }));
    eprintln!("{names} syscalls: {} instructions", f.len());
    expect(
        &f,
        &[
            ("getpid", sys("getpid", [0; 6]), Want::Ok),
            ("getppid", sys("getppid", [0; 6]), Want::Errno(libc::EPERM)),
            (
                "gettid with the never-matching rule",
                sys("gettid", [0, 0, 0, 0, 3, 0xdead_beef_0000_0000]),
                Want::Errno(99),
            ),
            (
                "gettid",
                sys("gettid", [0, 0, 0, 0, 2, 0xdead_beef_0000_0000]),
                Want::Ok,
            ),
        ],
    );
}
