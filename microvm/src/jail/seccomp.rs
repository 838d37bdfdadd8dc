//! The seccomp allow-list of the jailed QEMU (docs/seccomp.md).
//!
//! The policy is [`POLICY_PATH`] in the repository, embedded in the binary
//! as [`POLICY_JSON`], in seccompiler's JSON format. It holds two filters:
//!
//! - `qemu` ([`ALLOW_FILTER`]): the allow-list. Anything it does not list
//!   kills the process (`kill_process`). Every entry carries a `comment`
//!   saying why QEMU needs the syscall; several entries of one syscall are
//!   OR-ed rules. Exactly one entry is `execve`, with one condition
//!   `{"index": 0, "type": "qword", "op": "eq", "val": 0}`: a placeholder
//!   that [`compile`] replaces with the address of the jailer's path buffer,
//!   so that the jailer's exec of QEMU passes and an exec from QEMU does not.
//! - `qemu_enosys` ([`ENOSYS_FILTER`]): syscalls that fail with `ENOSYS`
//!   instead of killing, each one with a fallback in QEMU or glibc
//!   (`clone3` → `clone`, whose flags seccomp can check; `io_uring_setup` →
//!   epoll/ppoll).
//! - `qemu_eperm` ([`EPERM_FILTER`]): calls that fail with `EPERM`: every
//!   mode QEMU's 9p server can set on a file (`chmod`, `openat` with
//!   `O_CREAT`/`O_TMPFILE`, `mknodat`) that carries `S_ISUID` or `S_ISGID`,
//!   so that a guest cannot plant a setuid or setgid file, owned by host
//!   root through the share's id map, on the host (docs/jailer.md,
//!   "Writable shares").
//!
//! The two errno filters must have `default_action` `allow` and a
//! `filter_action` `errno`. [`compile`] turns the three into one BPF
//! program: `qemu_eperm` first, then `qemu_enosys`, then the allow-list,
//! each errno part with its `allow` returns rewritten into a jump to the
//! next part, so a call an errno filter matches fails with its errno and
//! any other is decided by the allow-list. An errno part can make a call
//! fail, never allow it. seccompiler's JSON has one match action per
//! filter, hence the three filters. [`install`] loads the program on the
//! calling thread; the jailer does that as its last step before `execve`,
//! after `no_new_privs`, and QEMU's own `-sandbox` adds its filter on top.

use std::collections::{BTreeMap, BTreeSet};

use seccompiler::{BpfProgram, TargetArch};
use serde::Deserialize;
use serde_json::Value;

/// The policy file, relative to the repository root.
pub const POLICY_PATH: &str = "resources/seccomp/qemu-x86_64.json";
/// The policy file's text, embedded at build time.
pub const POLICY_JSON: &str = include_str!("../../../resources/seccomp/qemu-x86_64.json");
/// The allow-list filter's name in the policy.
pub const ALLOW_FILTER: &str = "qemu";
/// The name of the filter of syscalls that fail with ENOSYS.
pub const ENOSYS_FILTER: &str = "qemu_enosys";
/// The name of the filter of calls that fail with EPERM (setuid and setgid
/// modes).
pub const EPERM_FILTER: &str = "qemu_eperm";
/// The value the policy's execve condition holds until [`compile`] fills in
/// the jailer's path address.
pub const EXEC_PLACEHOLDER: u64 = 0;
/// The kernel's limit on the length of a seccomp program (BPF_MAXINSNS).
pub const MAX_PROGRAM_LEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp policy is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("the seccomp policy is malformed: {0}")]
    Malformed(String),
    #[error(
        "the seccomp policy must allow execve by exactly one rule with the single condition \
         {{\"index\": 0, \"type\": \"qword\", \"op\": \"eq\", \"val\": 0}}: {0}"
    )]
    ExecRule(String),
    #[error(
        "the seccomp policy mixes an unconditional rule of {0} with conditional ones \
         (seccompiler would silently keep only the conditional ones)"
    )]
    MixedRules(String),
    #[error("the seccomp policy does not compile")]
    Compile(#[source] seccompiler::Error),
    #[error("the seccomp program has {0} instructions, more than the kernel's {MAX_PROGRAM_LEN}")]
    TooLong(usize),
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// How many bytes of an argument a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgLen {
    /// The low 32 bits.
    Dword,
    /// All 64 bits.
    Qword,
}

/// A condition's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Ge,
    Gt,
    Le,
    Lt,
    /// `arg & mask == val & mask`.
    MaskedEq(u64),
}

/// One condition of a rule: `arg[index] OP val`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub index: u8,
    pub len: ArgLen,
    pub op: CmpOp,
    pub val: u64,
    pub comment: Option<String>,
}

impl Condition {
    /// Whether a syscall argument satisfies the condition, as the compiled
    /// filter decides it.
    pub fn matches(&self, arg: u64) -> bool {
        let (arg, val) = match self.len {
            ArgLen::Dword => (arg & 0xffff_ffff, self.val & 0xffff_ffff),
            ArgLen::Qword => (arg, self.val),
        };
        match self.op {
            CmpOp::Eq => arg == val,
            CmpOp::Ne => arg != val,
            CmpOp::Ge => arg >= val,
            CmpOp::Gt => arg > val,
            CmpOp::Le => arg <= val,
            CmpOp::Lt => arg < val,
            CmpOp::MaskedEq(mask) => arg & mask == val & mask,
        }
    }
}

/// One entry of a filter: a syscall, allowed (or made to fail) when all
/// its conditions hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub syscall: String,
    pub conditions: Vec<Condition>,
    pub comment: String,
}

/// The policy file, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The allow-list, in file order.
    pub allow: Vec<Rule>,
    /// The syscalls that fail with [`Policy::errno`], in file order.
    pub enosys: Vec<Rule>,
    /// The errno of the `qemu_enosys` filter (ENOSYS), if it is there.
    pub errno: Option<u32>,
    /// The calls that fail with [`Policy::eperm_errno`], in file order.
    pub eperm: Vec<Rule>,
    /// The errno of the `qemu_eperm` filter (EPERM), if it is there.
    pub eperm_errno: Option<u32>,
}

// The policy file as seccompiler reads it (the subset this module accepts).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFilter {
    default_action: Value,
    filter_action: Value,
    filter: Vec<JsonRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRule {
    syscall: String,
    #[serde(default)]
    args: Option<Vec<JsonCondition>>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCondition {
    index: u8,
    #[serde(rename = "type")]
    len: String,
    op: Value,
    val: u64,
    #[serde(default)]
    comment: Option<String>,
}

fn malformed(msg: impl Into<String>) -> SeccompError {
    SeccompError::Malformed(msg.into())
}

fn condition(syscall: &str, c: JsonCondition) -> Result<Condition, SeccompError> {
    let len = match c.len.as_str() {
        "dword" => ArgLen::Dword,
        "qword" => ArgLen::Qword,
        other => {
            return Err(malformed(format!(
                "{syscall}: unknown argument type {other:?}"
            )))
        }
    };
    let op = match &c.op {
        Value::String(s) => match s.as_str() {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "ge" => CmpOp::Ge,
            "gt" => CmpOp::Gt,
            "le" => CmpOp::Le,
            "lt" => CmpOp::Lt,
            other => return Err(malformed(format!("{syscall}: unknown operator {other:?}"))),
        },
        Value::Object(m) if m.len() == 1 => match m.get("masked_eq").and_then(Value::as_u64) {
            Some(mask) => CmpOp::MaskedEq(mask),
            None => return Err(malformed(format!("{syscall}: unknown operator {}", c.op))),
        },
        other => return Err(malformed(format!("{syscall}: unknown operator {other}"))),
    };
    if c.index > 5 {
        return Err(malformed(format!(
            "{syscall}: argument index {} > 5",
            c.index
        )));
    }
    Ok(Condition {
        index: c.index,
        len,
        op,
        val: c.val,
        comment: c.comment,
    })
}

fn rules(filter: JsonFilter) -> Result<Vec<Rule>, SeccompError> {
    let mut out = Vec::with_capacity(filter.filter.len());
    for r in filter.filter {
        let conditions = match r.args {
            None => Vec::new(),
            Some(args) if args.is_empty() => {
                return Err(malformed(format!("{}: an empty \"args\" list", r.syscall)))
            }
            Some(args) => args
                .into_iter()
                .map(|c| condition(&r.syscall, c))
                .collect::<Result<_, _>>()?,
        };
        out.push(Rule {
            syscall: r.syscall,
            conditions,
            comment: r.comment.unwrap_or_default(),
        });
    }
    // seccompiler ORs the conditional rules of a syscall and drops an
    // unconditional one next to them: refuse what would not mean what it says.
    let mut kinds: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for r in &out {
        let k = kinds.entry(r.syscall.as_str()).or_default();
        if r.conditions.is_empty() {
            k.0 = true;
        } else {
            k.1 = true;
        }
    }
    if let Some((name, _)) = kinds.iter().find(|(_, (u, c))| *u && *c) {
        return Err(SeccompError::MixedRules((*name).to_string()));
    }
    Ok(out)
}

/// Reads and checks a policy: its two filters and their actions, every
/// rule's shape, and the single execve placeholder rule.
pub fn parse(policy_json: &str) -> Result<Policy, SeccompError> {
    let mut filters: BTreeMap<String, JsonFilter> =
        serde_json::from_str(policy_json).map_err(SeccompError::Json)?;
    if let Some(name) = filters
        .keys()
        .find(|k| ![ALLOW_FILTER, ENOSYS_FILTER, EPERM_FILTER].contains(&k.as_str()))
    {
        return Err(malformed(format!("unknown filter {name:?}")));
    }

    let allow = filters
        .remove(ALLOW_FILTER)
        .ok_or_else(|| malformed(format!("no {ALLOW_FILTER:?} filter")))?;
    if allow.default_action != "kill_process" || allow.filter_action != "allow" {
        return Err(malformed(format!(
            "{ALLOW_FILTER:?} must be an allow-list: default_action \"kill_process\", \
             filter_action \"allow\""
        )));
    }
    let allow = rules(allow)?;

    let (enosys, errno) = errno_filter(filters.remove(ENOSYS_FILTER), ENOSYS_FILTER)?;
    let (eperm, eperm_errno) = errno_filter(filters.remove(EPERM_FILTER), EPERM_FILTER)?;

    let execs: Vec<&Rule> = allow.iter().filter(|r| r.syscall == "execve").collect();
    match execs.as_slice() {
        [] => return Err(SeccompError::ExecRule("there is none".into())),
        [one] => {
            let placeholder = Condition {
                index: 0,
                len: ArgLen::Qword,
                op: CmpOp::Eq,
                val: EXEC_PLACEHOLDER,
                comment: None,
            };
            let ok = matches!(one.conditions.as_slice(),
                [c] if Condition { comment: None, ..c.clone() } == placeholder);
            if !ok {
                return Err(SeccompError::ExecRule(
                    "the execve rule has other conditions".into(),
                ));
            }
        }
        more => {
            return Err(SeccompError::ExecRule(format!(
                "there are {} execve rules",
                more.len()
            )))
        }
    }
    if allow.iter().any(|r| r.syscall == "execveat") {
        return Err(SeccompError::ExecRule(
            "execveat must not be allowed".into(),
        ));
    }
    Ok(Policy {
        allow,
        enosys,
        errno,
        eperm,
        eperm_errno,
    })
}

/// The rules and errno of an errno filter (`default_action` `allow`,
/// `filter_action` `{"errno": N}`), or none if the policy has no `name`.
fn errno_filter(
    filter: Option<JsonFilter>,
    name: &str,
) -> Result<(Vec<Rule>, Option<u32>), SeccompError> {
    let Some(f) = filter else {
        return Ok((Vec::new(), None));
    };
    let errno = f
        .filter_action
        .get("errno")
        .and_then(Value::as_u64)
        .and_then(|e| u32::try_from(e).ok());
    match errno {
        Some(e)
            if f.default_action == "allow"
                && f.filter_action.as_object().map(|m| m.len()) == Some(1) =>
        {
            Ok((rules(f)?, Some(e)))
        }
        _ => Err(malformed(format!(
            "{name:?} must have default_action \"allow\" and filter_action {{\"errno\": N}}"
        ))),
    }
}

/// Compiles the policy for x86_64 with the execve rule bound to
/// `exec_path_addr` (the address of the path the jailer passes to
/// `execve`): one program, the `qemu_eperm` part first, then `qemu_enosys`,
/// then the allow-list.
pub fn compile(policy_json: &str, exec_path_addr: u64) -> Result<BpfProgram, SeccompError> {
    let policy = parse(policy_json)?;
    let mut doc: Value = serde_json::from_str(policy_json).map_err(SeccompError::Json)?;
    let val = doc
        .get_mut(ALLOW_FILTER)
        .and_then(|f| f.get_mut("filter"))
        .and_then(Value::as_array_mut)
        .and_then(|rules| {
            rules
                .iter_mut()
                .find(|r| r.get("syscall").and_then(Value::as_str) == Some("execve"))
        })
        .and_then(|r| r.get_mut("args"))
        .and_then(|a| a.get_mut(0))
        .and_then(|c| c.get_mut("val"))
        .ok_or_else(|| SeccompError::ExecRule("there is none".into()))?;
    *val = Value::from(exec_path_addr);
    let text = serde_json::to_vec(&doc).map_err(SeccompError::Json)?;
    let mut programs = seccompiler::compile_from_json(text.as_slice(), TargetArch::x86_64)
        .map_err(SeccompError::Compile)?;
    let allow = programs
        .remove(ALLOW_FILTER)
        .ok_or_else(|| malformed(format!("no {ALLOW_FILTER:?} filter")))?;
    let program = match programs.remove(ENOSYS_FILTER) {
        Some(first) if !policy.enosys.is_empty() => chain(first, allow),
        _ => allow,
    };
    let program = match programs.remove(EPERM_FILTER) {
        Some(first) if !policy.eperm.is_empty() => chain(first, program),
        _ => program,
    };
    if program.len() > MAX_PROGRAM_LEN {
        return Err(SeccompError::TooLong(program.len()));
    }
    Ok(program)
}

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA

/// `first` then `then`: every `return ALLOW` of `first` becomes a jump to
/// the start of `then`. Jumps inside `first` are relative and no instruction
/// moves, so they stay right; `first` can no longer allow anything itself.
fn chain(first: BpfProgram, then: BpfProgram) -> BpfProgram {
    let n = first.len();
    let mut out = Vec::with_capacity(n + then.len());
    for (i, mut ins) in first.into_iter().enumerate() {
        if ins.code == BPF_RET_K && ins.k == libc::SECCOMP_RET_ALLOW {
            // pc after this instruction is i + 1; i + 1 + k == n.
            ins = seccompiler::sock_filter {
                code: BPF_JMP_JA,
                jt: 0,
                jf: 0,
                k: (n - 1 - i) as u32,
            };
        }
        out.push(ins);
    }
    out.extend(then);
    out
}

/// Installs the program on the calling thread (only: the jailer's child is
/// single-threaded when it calls this). The caller has set no_new_privs;
/// seccompiler sets it again, which is harmless.
pub fn install(prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(SeccompError::Install)
}

/// The syscalls the policy allows, sorted (for docs, tests, `mu2 check`).
pub fn syscall_names(policy_json: &str) -> Result<Vec<String>, SeccompError> {
    let policy = parse(policy_json)?;
    let names: BTreeSet<String> = policy.allow.into_iter().map(|r| r.syscall).collect();
    Ok(names.into_iter().collect())
}

/// The syscalls the policy makes fail with its errno (ENOSYS), sorted.
pub fn enosys_names(policy_json: &str) -> Result<Vec<String>, SeccompError> {
    let policy = parse(policy_json)?;
    let names: BTreeSet<String> = policy.enosys.into_iter().map(|r| r.syscall).collect();
    Ok(names.into_iter().collect())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    //! The policy's own tests. The fork tests install the compiled filter in
    //! a forked child of the test process: after `fork` the child only makes
    //! raw syscalls (`libc::syscall`), `libc::sigaction` and `libc::_exit`,
    //! all async-signal-safe, on data prepared before the fork.

    use std::ffi::CString;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// x86_64 syscall numbers by name, for every syscall the policy names
    /// and the ones the tests probe.
    macro_rules! table {
        ($($nr:ident),* $(,)?) => { &[$((stringify!($nr), libc::$nr)),*] };
    }
    const SYSCALLS: &[(&str, libc::c_long)] = table![
        SYS_accept4,
        SYS_access,
        SYS_arch_prctl,
        SYS_bind,
        SYS_bpf,
        SYS_brk,
        SYS_chmod,
        SYS_chroot,
        SYS_clock_nanosleep,
        SYS_clone,
        SYS_clone3,
        SYS_close,
        SYS_connect,
        SYS_epoll_create1,
        SYS_eventfd2,
        SYS_execve,
        SYS_execveat,
        SYS_exit,
        SYS_exit_group,
        SYS_fchdir,
        SYS_fchownat,
        SYS_fcntl,
        SYS_fdatasync,
        SYS_fork,
        SYS_fstatfs,
        SYS_fsync,
        SYS_ftruncate,
        SYS_futex,
        SYS_get_mempolicy,
        SYS_getdents64,
        SYS_getpeername,
        SYS_getpid,
        SYS_getrandom,
        SYS_getsockname,
        SYS_getsockopt,
        SYS_gettid,
        SYS_io_uring_setup,
        SYS_ioctl,
        SYS_kexec_load,
        SYS_lgetxattr,
        SYS_linkat,
        SYS_listen,
        SYS_llistxattr,
        SYS_lremovexattr,
        SYS_lseek,
        SYS_lsetxattr,
        SYS_madvise,
        SYS_memfd_create,
        SYS_mkdirat,
        SYS_mknodat,
        SYS_mmap,
        SYS_mount,
        SYS_mprotect,
        SYS_munmap,
        SYS_newfstatat,
        SYS_openat,
        SYS_pivot_root,
        SYS_poll,
        SYS_ppoll,
        SYS_prctl,
        SYS_pread64,
        SYS_preadv,
        SYS_prlimit64,
        SYS_ptrace,
        SYS_pwritev,
        SYS_read,
        SYS_readlink,
        SYS_readlinkat,
        SYS_readv,
        SYS_recvmsg,
        SYS_renameat,
        SYS_restart_syscall,
        SYS_rseq,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sched_getaffinity,
        SYS_seccomp,
        SYS_sendmsg,
        SYS_set_mempolicy,
        SYS_set_robust_list,
        SYS_set_tid_address,
        SYS_setns,
        SYS_setsockopt,
        SYS_setuid,
        SYS_signalfd4,
        SYS_socket,
        SYS_statfs,
        SYS_symlinkat,
        SYS_sysinfo,
        SYS_tgkill,
        SYS_unlink,
        SYS_unlinkat,
        SYS_unshare,
        SYS_utimensat,
        SYS_vfork,
        SYS_write,
        SYS_writev,
    ];

    fn nr(name: &str) -> libc::c_long {
        SYSCALLS
            .iter()
            .find(|(n, _)| n.strip_prefix("SYS_") == Some(name))
            .map(|&(_, nr)| nr)
            .unwrap_or_else(|| panic!("add SYS_{name} to the tests' syscall table"))
    }

    /// Syscalls QEMU must never be allowed: a probe calling them is killed.
    const FORBIDDEN: &[&str] = &[
        "connect",
        "ptrace",
        "mount",
        "umount2",
        "bpf",
        "kexec_load",
        "kexec_file_load",
        "execveat",
        "fork",
        "vfork",
        "setuid",
        "setgid",
        "setreuid",
        "setregid",
        "setresuid",
        "setresgid",
        "setfsuid",
        "setfsgid",
        "setgroups",
        "capset",
        "unshare",
        "setns",
        "pivot_root",
        "chroot",
        "init_module",
        "finit_module",
        "delete_module",
        "perf_event_open",
        "userfaultfd",
        "process_vm_readv",
        "process_vm_writev",
        "open_by_handle_at",
        "name_to_handle_at",
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_enter",
        "io_uring_register",
        "io_uring_setup",
        "clone3",
        "kill",
        "socketpair",
        "sendto",
        "move_mount",
        "fsopen",
        "fsmount",
        "open_tree",
    ];

    const M: u64 = u64::MAX; // -1: a bad fd, a bad pointer, invalid flags

    /// How a rule is exercised.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Expect {
        /// Called; any result but death will do.
        Survive,
        /// Must fail with this errno.
        Errno(i32),
        /// Must fail (return -1): clone must not create anything.
        Fail,
        /// rt_sigreturn: returning from a real signal handler.
        SignalReturn,
    }

    #[derive(Clone, Copy, Debug)]
    struct Call {
        rule: usize,
        nr: libc::c_long,
        args: [u64; 6],
        expect: Expect,
    }

    /// Arguments that make a syscall fail fast and harmlessly (bad fds,
    /// bad pointers, invalid flags, zero lengths), before a rule's
    /// conditions are applied.
    fn harmless_args(syscall: &str) -> [u64; 6] {
        match syscall {
            // len 0: EINVAL before anything is mapped.
            "mmap" => [0, 0, 0, 0x22, M, 0],
            // Reports the break, moves nothing.
            "brk" => [0; 6],
            // Clears the clear-child-tid pointer; nothing reads it.
            "set_tid_address" => [0; 6],
            // Option-specific: arg2 0 makes PR_SET_TIMERSLACK reset the
            // slack to its default and the other options fail (EINVAL).
            "prctl" => [M, 0, M, M, M, M],
            // The thread flags come from the rule; a non-canonical TLS
            // pointer makes copy_thread fail with EPERM before any thread
            // exists (and a thread that did start with stack -1 would
            // crash the child: the test fails loudly, not silently).
            "clone" => [M, M, M, M, M, M],
            // A null path: ENOENT/EFAULT before anything runs.
            "execve" => [M, 0, 0, 0, 0, 0],
            _ => [M; 6],
        }
    }

    /// A value for one argument satisfying all of `conds` (all on that
    /// argument), starting from `default`.
    fn satisfy(default: u64, conds: &[&Condition]) -> Option<u64> {
        let mut candidates = vec![default];
        for c in conds {
            candidates.extend(match c.op {
                CmpOp::Eq | CmpOp::Ge | CmpOp::Le => vec![c.val],
                CmpOp::MaskedEq(mask) => vec![c.val & mask],
                CmpOp::Ne => vec![c.val ^ 1],
                CmpOp::Gt => c.val.checked_add(1).into_iter().collect(),
                CmpOp::Lt => c.val.checked_sub(1).into_iter().collect(),
            });
        }
        candidates
            .into_iter()
            .find(|&v| conds.iter().all(|c| c.matches(v)))
    }

    fn args_for(rule: &Rule, exec_addr: u64) -> [u64; 6] {
        let mut args = harmless_args(&rule.syscall);
        for i in 0..6u8 {
            let conds: Vec<Condition> = rule
                .conditions
                .iter()
                .filter(|c| c.index == i)
                .map(|c| {
                    let mut c = c.clone();
                    if rule.syscall == "execve" {
                        c.val = exec_addr;
                    }
                    c
                })
                .collect();
            if conds.is_empty() {
                continue;
            }
            let refs: Vec<&Condition> = conds.iter().collect();
            args[usize::from(i)] = satisfy(args[usize::from(i)], &refs).unwrap_or_else(|| {
                panic!(
                    "no value satisfies {}'s conditions on arg {i}",
                    rule.syscall
                )
            });
        }
        args
    }

    /// The compiled program with `exec`'s address, and the calls that
    /// exercise every rule, in policy order (allow-list, qemu_enosys,
    /// qemu_eperm).
    /// `exit` and `exit_group` are not in the list: they are the children's
    /// ways out.
    fn plan(exec: &CString) -> (BpfProgram, Vec<Call>, Vec<String>) {
        let policy = parse(POLICY_JSON).expect("the policy parses");
        let exec_addr = exec.as_ptr() as u64;
        let prog = compile(POLICY_JSON, exec_addr).expect("the policy compiles");
        let mut calls = Vec::new();
        let mut names = Vec::new();
        let enosys = policy.errno.map_or(libc::ENOSYS, |e| e as i32);
        let eperm = policy.eperm_errno.map_or(libc::EPERM, |e| e as i32);
        let all = policy
            .allow
            .iter()
            .map(|r| (r, None))
            .chain(policy.enosys.iter().map(|r| (r, Some(enosys))))
            .chain(policy.eperm.iter().map(|r| (r, Some(eperm))));
        for (i, (rule, fails)) in all.enumerate() {
            names.push(describe(rule));
            if fails.is_none() && (rule.syscall == "exit" || rule.syscall == "exit_group") {
                continue;
            }
            let expect = if let Some(errno) = fails {
                Expect::Errno(errno)
            } else {
                match rule.syscall.as_str() {
                    "rt_sigreturn" => Expect::SignalReturn,
                    // The jailer's path buffer, which names no file here.
                    "execve" => Expect::Errno(libc::ENOENT),
                    "clone" => Expect::Fail,
                    _ => Expect::Survive,
                }
            };
            calls.push(Call {
                rule: i,
                nr: nr(&rule.syscall),
                args: args_for(rule, exec_addr),
                expect,
            });
        }
        (prog, calls, names)
    }

    fn describe(rule: &Rule) -> String {
        let conds: Vec<String> = rule
            .conditions
            .iter()
            .map(|c| format!("arg{} {:?} {:#x}", c.index, c.op, c.val))
            .collect();
        format!("{}({})", rule.syscall, conds.join(", "))
    }

    // --- the child side: raw syscalls only --------------------------------

    static TRAPPED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_trap(_: libc::c_int) {
        TRAPPED.store(true, Ordering::SeqCst);
    }

    /// A record the child writes to the pipe: the rule it is about to call
    /// (tag 0), or a call that returned what it should not have (tag 1,
    /// with the errno or the return value).
    const RECORD: usize = 8;

    fn report(fd: libc::c_int, rule: usize, tag: u16, value: i32) {
        let mut rec = [0u8; RECORD];
        rec[0..2].copy_from_slice(&(rule as u16).to_le_bytes());
        rec[2..4].copy_from_slice(&tag.to_le_bytes());
        rec[4..8].copy_from_slice(&value.to_le_bytes());
        // SAFETY: writes 8 bytes from a live stack buffer; the result does
        // not matter (the parent notices a missing record).
        unsafe { libc::syscall(libc::SYS_write, fd, rec.as_ptr(), RECORD) };
    }

    /// The calling thread's errno.
    fn errno() -> i32 {
        // SAFETY: __errno_location returns the calling thread's errno slot.
        unsafe { *libc::__errno_location() }
    }

    /// Makes one raw syscall.
    ///
    /// # Safety
    /// The arguments must make the call harmless to the process (see
    /// `harmless_args`); they are plain integers, never dereferenced here.
    unsafe fn raw(nr: libc::c_long, a: [u64; 6]) -> libc::c_long {
        // SAFETY: the caller vouches for the arguments.
        unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
    }

    fn exit_now(code: i32) -> ! {
        // SAFETY: ends the child at once, no destructor or atexit handler.
        unsafe { libc::_exit(code) }
    }

    /// The child's preparation: no core file when the filter kills it, a
    /// SIGTRAP handler (for rt_sigreturn), no_new_privs, then the filter.
    /// Exits 10 if any step fails.
    fn child_setup(prog: &BpfProgram) {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 on ourselves reads `zero`, writes nothing.
        let r = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_CORE,
                &zero as *const libc::rlimit,
                std::ptr::null_mut::<libc::rlimit>(),
            )
        };
        if r != 0 {
            exit_now(10);
        }
        // SAFETY: a zeroed sigaction is a valid one; the handler only
        // stores to an atomic (async-signal-safe); sigaction itself is
        // async-signal-safe and sets glibc's restorer, which returns from
        // the handler through rt_sigreturn.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_trap as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            exit_now(10);
        }
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
        let r = unsafe { libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if r != 0 || install(prog).is_err() {
            exit_now(10);
        }
    }

    /// Raises SIGTRAP with an int3 instruction (no syscall) and returns
    /// whether the handler ran and returned.
    fn trap() -> bool {
        // SAFETY: int3 raises SIGTRAP, whose handler (child_setup) returns
        // to the next instruction; no register or memory is clobbered.
        unsafe { std::arch::asm!("int3") };
        TRAPPED.load(Ordering::SeqCst)
    }

    /// The main child of the every-rule test: calls each rule with its
    /// arguments, reports each before the call, and leaves by exit_group.
    fn exercise(prog: &BpfProgram, calls: &[Call], exit_group_rule: usize, fd: libc::c_int) -> ! {
        child_setup(prog);
        for c in calls {
            report(fd, c.rule, 0, 0);
            if c.expect == Expect::SignalReturn {
                if !trap() {
                    report(fd, c.rule, 1, 0);
                    exit_now(3);
                }
                continue;
            }
            // SAFETY: `args_for` chose arguments that fail fast or do
            // nothing lasting (see harmless_args).
            let ret = unsafe { raw(c.nr, c.args) };
            let e = errno();
            let ok = match c.expect {
                Expect::Survive | Expect::SignalReturn => true,
                Expect::Errno(want) => ret == -1 && e == want,
                Expect::Fail => ret == -1,
            };
            if !ok {
                report(fd, c.rule, 1, if ret == -1 { e } else { ret as i32 });
                exit_now(3);
            }
        }
        report(fd, exit_group_rule, 0, 0);
        // SAFETY: exit_group(0) ends the process.
        unsafe { libc::syscall(libc::SYS_exit_group, 0) };
        exit_now(4)
    }

    /// The other child: installs the filter and leaves by exit (the
    /// single-threaded child's only thread ends, so the process ends).
    fn exit_by_exit(prog: &BpfProgram, exit_rule: usize, fd: libc::c_int) -> ! {
        child_setup(prog);
        report(fd, exit_rule, 0, 0);
        // SAFETY: exit(0) ends the calling (and only) thread.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        exit_now(4)
    }

    /// A child that installs the filter, makes one forbidden call and
    /// exits 0 if it survived it (a fork-like call's new child exits 0 too).
    fn probe(prog: &BpfProgram, nr: libc::c_long, args: [u64; 6]) -> ! {
        child_setup(prog);
        // SAFETY: the probes' arguments fail fast (bad fds, pointers or
        // flags) in case the filter let them through.
        unsafe { raw(nr, args) };
        exit_now(0)
    }

    // --- the parent side ---------------------------------------------------

    /// A pipe whose read end does not block (forked children of other
    /// tests may hold copies of the write end).
    fn pipe() -> (libc::c_int, libc::c_int) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
        (fds[0], fds[1])
    }

    fn read_all(fd: libc::c_int) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a live buffer of the given length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        out
    }

    fn close(fd: libc::c_int) {
        // SAFETY: closes a descriptor this test owns.
        unsafe { libc::close(fd) };
    }

    /// Forks; the child runs `child`, which exits itself and makes only
    /// raw syscalls. Returns the child's wait status.
    fn in_child(child: impl FnOnce()) -> libc::c_int {
        // SAFETY: the child only runs `child`, which uses async-signal-safe
        // calls on memory prepared before the fork, then exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            child();
            exit_now(99);
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child, writing its status.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                return status;
            }
            assert!(
                r == -1 && errno() == libc::EINTR,
                "waitpid: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    fn status_text(status: libc::c_int) -> String {
        if libc::WIFEXITED(status) {
            format!("exited {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("wait status {status:#x}")
        }
    }

    fn killed_by_sigsys(status: libc::c_int) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    // --- (a) the policy as a file --------------------------------------------

    #[test]
    fn the_embedded_policy_is_the_file_and_compiles() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(POLICY_PATH);
        let on_disk = std::fs::read_to_string(&path).expect("the policy file");
        assert_eq!(
            on_disk,
            POLICY_JSON,
            "{} differs from the embedded copy",
            path.display()
        );
        let prog = compile(POLICY_JSON, 0x7fff_1234_5678).expect("compiles");
        assert!(!prog.is_empty() && prog.len() <= MAX_PROGRAM_LEN);
    }

    #[test]
    fn every_entry_says_why_qemu_needs_it() {
        let policy = parse(POLICY_JSON).unwrap();
        assert!(!policy.allow.is_empty());
        for r in policy
            .allow
            .iter()
            .chain(&policy.enosys)
            .chain(&policy.eperm)
        {
            assert!(
                r.comment.trim().len() >= 10,
                "{}: the comment must say why QEMU needs it",
                r.syscall
            );
            for c in &r.conditions {
                assert!(
                    c.comment.as_deref().is_some_and(|s| !s.trim().is_empty()),
                    "{}: condition on arg {} has no comment",
                    r.syscall,
                    c.index
                );
            }
        }
    }

    #[test]
    fn forbidden_syscalls_are_not_allowed() {
        let allowed = syscall_names(POLICY_JSON).unwrap();
        for name in FORBIDDEN {
            assert!(
                !allowed.iter().any(|a| a == name),
                "{name} must not be allowed"
            );
        }
        // clone3 and io_uring_setup fail (ENOSYS) rather than kill: QEMU
        // and glibc fall back.
        assert_eq!(
            enosys_names(POLICY_JSON).unwrap(),
            ["clone3", "io_uring_setup"]
        );
        assert_eq!(parse(POLICY_JSON).unwrap().errno, Some(libc::ENOSYS as u32));
        // The setuid/setgid refusals cover every mode-setting call the
        // allow-list has, and nothing else.
        let policy = parse(POLICY_JSON).unwrap();
        assert_eq!(policy.eperm_errno, Some(libc::EPERM as u32));
        let eperm: BTreeSet<&str> = policy.eperm.iter().map(|r| r.syscall.as_str()).collect();
        assert_eq!(eperm, BTreeSet::from(["chmod", "mknodat", "openat"]));
        for mode_setter in [
            "fchmod",
            "fchmodat",
            "fchmodat2",
            "open",
            "creat",
            "mknod",
            "openat2",
        ] {
            assert!(
                !allowed.iter().any(|a| a == mode_setter),
                "{mode_setter} sets a mode: allow it only with a qemu_eperm rule"
            );
        }
    }

    #[test]
    fn the_argument_filters_are_the_ones_documented() {
        let policy = parse(POLICY_JSON).unwrap();
        let vals = |name: &str, index: u8| -> Vec<(CmpOp, u64)> {
            policy
                .allow
                .iter()
                .filter(|r| r.syscall == name)
                .flat_map(|r| r.conditions.iter().filter(|c| c.index == index))
                .map(|c| (c.op, c.val))
                .collect()
        };
        assert_eq!(
            vals("ioctl", 1),
            [(CmpOp::Eq, 0x8008_7601), (CmpOp::MaskedEq(0xff00), 0xae00)]
        );
        assert_eq!(
            vals("prctl", 0),
            [
                (CmpOp::Eq, libc::PR_MCE_KILL as u64),
                (CmpOp::Eq, libc::PR_SET_NO_NEW_PRIVS as u64),
                (CmpOp::Eq, libc::PR_SET_TIMERSLACK as u64)
            ]
        );
        assert_eq!(vals("socket", 0), [(CmpOp::Eq, libc::AF_UNIX as u64)]);
        let thread = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        assert_eq!(vals("clone", 0), [(CmpOp::Eq, thread as u64)]);

        let eperm = |name: &str| -> Vec<Vec<(u8, CmpOp, u64)>> {
            policy
                .eperm
                .iter()
                .filter(|r| r.syscall == name)
                .map(|r| {
                    r.conditions
                        .iter()
                        .map(|c| (c.index, c.op, c.val))
                        .collect()
                })
                .collect()
        };
        let bit = |index: u8, b: u32| (index, CmpOp::MaskedEq(u64::from(b)), u64::from(b));
        let (suid, sgid) = (libc::S_ISUID, libc::S_ISGID);
        assert_eq!(eperm("chmod"), [vec![bit(1, suid)], vec![bit(1, sgid)]]);
        assert_eq!(eperm("mknodat"), [vec![bit(2, suid)], vec![bit(2, sgid)]]);
        let (creat, tmpfile) = (libc::O_CREAT as u32, 0o20000000u32);
        assert_eq!(
            eperm("openat"),
            [
                vec![bit(2, creat), bit(3, suid)],
                vec![bit(2, creat), bit(3, sgid)],
                vec![bit(2, tmpfile), bit(3, suid)],
                vec![bit(2, tmpfile), bit(3, sgid)],
            ]
        );
        assert!(policy
            .eperm
            .iter()
            .flat_map(|r| &r.conditions)
            .all(|c| c.len == ArgLen::Dword));
    }

    // --- (b) every rule, with allowed arguments, under the filter -------------

    #[test]
    fn every_rule_is_allowed_with_its_arguments() {
        let exec = CString::new("/nonexistent/mu2-seccomp-test/qemu").unwrap();
        let (prog, calls, names) = plan(&exec);
        let policy = parse(POLICY_JSON).unwrap();
        let index_of = |name: &str| {
            policy
                .allow
                .iter()
                .position(|r| r.syscall == name)
                .unwrap_or_else(|| panic!("{name} is not in the policy"))
        };
        let (exit_group, exit) = (index_of("exit_group"), index_of("exit"));

        let (r, w) = pipe();
        let status = in_child(|| exercise(&prog, &calls, exit_group, w));
        close(w);
        let records = read_all(r);
        close(r);

        let mut seen = Vec::new();
        let mut failure = None;
        for rec in records.chunks_exact(RECORD) {
            let rule = usize::from(u16::from_le_bytes([rec[0], rec[1]]));
            let tag = u16::from_le_bytes([rec[2], rec[3]]);
            let value = i32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
            if tag == 0 {
                seen.push(rule);
            } else {
                failure = Some((rule, value));
            }
        }
        let last = seen.last().map(|&i| names[i].as_str()).unwrap_or("(none)");
        assert!(
            !killed_by_sigsys(status),
            "the filter killed the child (SIGSYS) at rule #{}: {last}",
            seen.last().copied().unwrap_or(0)
        );
        if let Some((rule, value)) = failure {
            panic!(
                "rule #{rule} {} returned an unexpected result ({value})",
                names[rule]
            );
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child {} after rule {last}",
            status_text(status)
        );
        let mut want: Vec<usize> = calls.iter().map(|c| c.rule).collect();
        want.push(exit_group);
        assert_eq!(seen, want, "not every rule reported");

        // exit: the other way out.
        let (r, w) = pipe();
        let status = in_child(|| exit_by_exit(&prog, exit, w));
        close(w);
        let records = read_all(r);
        close(r);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "exit: the child {}",
            status_text(status)
        );
        assert_eq!(records.len(), RECORD, "exit: the child did not report");

        // Every rule of the policy was called: all but exit above, exit here.
        let mut covered: Vec<usize> = calls.iter().map(|c| c.rule).collect();
        covered.extend([exit_group, exit]);
        covered.sort_unstable();
        assert_eq!(covered, (0..names.len()).collect::<Vec<_>>());
    }

    // --- (c) calls outside the policy are killed ------------------------------

    fn assert_killed(prog: &BpfProgram, what: &str, nr: libc::c_long, args: [u64; 6]) {
        let status = in_child(|| probe(prog, nr, args));
        assert!(
            killed_by_sigsys(status),
            "{what}: the child {}, want killed by SIGSYS",
            status_text(status)
        );
    }

    #[test]
    fn calls_outside_the_policy_are_killed() {
        let exec = CString::new("/nonexistent/mu2-seccomp-test/qemu").unwrap();
        let other = CString::new("/nonexistent/mu2-seccomp-test/qemu").unwrap();
        let prog = compile(POLICY_JSON, exec.as_ptr() as u64).unwrap();
        let p = &prog;
        // Flags -1: EINVAL even for root, were it allowed.
        assert_killed(p, "kexec_load", nr("kexec_load"), [0, 0, 0, M, 0, 0]);
        assert_killed(p, "ptrace", nr("ptrace"), [M, 0, 0, 0, 0, 0]);
        assert_killed(p, "mount", nr("mount"), [M, M, M, M, M, 0]);
        assert_killed(p, "bpf", nr("bpf"), [M, 0, 0, 0, 0, 0]);
        assert_killed(p, "connect", nr("connect"), [M, 0, 0, 0, 0, 0]);
        assert_killed(
            p,
            "execve of another path buffer",
            nr("execve"),
            [other.as_ptr() as u64, 0, 0, 0, 0, 0],
        );
        assert_killed(p, "execveat", nr("execveat"), [M, M, 0, 0, M, 0]);
        assert_killed(p, "fork", nr("fork"), [0; 6]);
        assert_killed(p, "vfork", nr("vfork"), [0; 6]);
        assert_killed(
            p,
            "clone as fork",
            nr("clone"),
            [libc::SIGCHLD as u64, 0, 0, 0, 0, 0],
        );
        assert_killed(p, "unshare", nr("unshare"), [M, 0, 0, 0, 0, 0]);
        assert_killed(p, "setns", nr("setns"), [M, 0, 0, 0, 0, 0]);
        assert_killed(p, "setuid", nr("setuid"), [M, 0, 0, 0, 0, 0]);
        assert_killed(p, "pivot_root", nr("pivot_root"), [M, M, 0, 0, 0, 0]);
        assert_killed(p, "chroot", nr("chroot"), [M, 0, 0, 0, 0, 0]);
        // Allowed syscalls with arguments their rules do not allow.
        assert_killed(
            p,
            "socket(AF_INET)",
            nr("socket"),
            [libc::AF_INET as u64, M, M, 0, 0, 0],
        );
        assert_killed(
            p,
            "ioctl(TIOCSTI)",
            nr("ioctl"),
            [M, libc::TIOCSTI, 0, 0, 0, 0],
        );
        assert_killed(
            p,
            "prctl(PR_SET_DUMPABLE)",
            nr("prctl"),
            [libc::PR_SET_DUMPABLE as u64, M, 0, 0, 0, 0],
        );
        assert_killed(
            p,
            "tgkill(SIGKILL)",
            nr("tgkill"),
            [M, M, libc::SIGKILL as u64, 0, 0, 0],
        );
        assert_killed(
            p,
            "prlimit64 setting a limit",
            nr("prlimit64"),
            [M, 0, M, 0, 0, 0],
        );
        assert_killed(
            p,
            "clone with CLONE_NEWUSER",
            nr("clone"),
            [0x3d0f00 | libc::CLONE_NEWUSER as u64, M, M, M, M, 0],
        );
    }

    #[test]
    fn the_errno_parts_cannot_allow_anything() {
        // Errno filters that would allow everything, chained before a
        // deny-all one, allow nothing: their allows became jumps.
        let json = r#"{
            "qemu": {"default_action": "kill_process", "filter_action": "allow", "filter": [
                {"syscall": "execve", "args": [{"index": 0, "type": "qword", "op": "eq", "val": 0}]},
                {"syscall": "exit_group", "comment": "the way out"},
                {"syscall": "write", "comment": "reports"}]},
            "qemu_enosys": {"default_action": "allow", "filter_action": {"errno": 38}, "filter": [
                {"syscall": "getppid", "comment": "fails"}]},
            "qemu_eperm": {"default_action": "allow", "filter_action": {"errno": 1}, "filter": [
                {"syscall": "getpgid", "comment": "fails"}]}
        }"#;
        let prog = compile(json, 1).unwrap();
        let status = in_child(|| probe(&prog, libc::SYS_getpid, [0; 6]));
        assert!(killed_by_sigsys(status), "getpid: {}", status_text(status));
        // getppid fails with ENOSYS, getpgid with EPERM, and the child goes
        // on to exit_group.
        let status = in_child(|| {
            child_setup(&prog);
            // SAFETY: getppid takes no arguments.
            let r = unsafe { libc::syscall(libc::SYS_getppid) };
            let enosys = r == -1 && errno() == libc::ENOSYS;
            // SAFETY: getpgid(0) reads the caller's process group.
            let r = unsafe { libc::syscall(libc::SYS_getpgid, 0) };
            let eperm = r == -1 && errno() == libc::EPERM;
            let code = if enosys && eperm { 0 } else { 5 };
            // SAFETY: exit_group ends the process.
            unsafe { libc::syscall(libc::SYS_exit_group, code) };
            exit_now(6)
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "getppid: {}",
            status_text(status)
        );
    }

    // --- (c2) setuid and setgid modes fail with EPERM ---------------------------

    /// What a compromised or guest-driven QEMU can do to modes on a share,
    /// as the 9p server does it (traced: chmod of /proc/self/fd/N with the
    /// file type bits, openat with O_CREAT and the guest's mode, mknodat of
    /// a FIFO), each on a path of a host temp dir. The test runs as root,
    /// so without the filter every setuid/setgid call would succeed.
    #[test]
    fn setuid_and_setgid_modes_fail_with_eperm_and_plain_modes_pass() {
        let exec = CString::new("/nonexistent/mu2-seccomp-test/qemu").unwrap();
        let prog = compile(POLICY_JSON, exec.as_ptr() as u64).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| CString::new(dir.path().join(name).to_str().unwrap()).unwrap();
        let (file, fresh, suid_new, fifo_bad, fifo_ok, here) = (
            path("f"),
            path("fresh"),
            path("suid"),
            path("fifo-suid"),
            path("fifo"),
            path(""),
        );
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let p = |c: &CString| c.as_ptr() as u64;
        let cwd = libc::AT_FDCWD as u64;
        let wr_creat = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC) as u64;
        let tmpfile = (libc::O_WRONLY | libc::O_TMPFILE | libc::O_CLOEXEC) as u64;
        let fifo = u64::from(libc::S_IFIFO);
        let eperm = -libc::EPERM;
        // (what, syscall, args, want: Some(-errno) or None for success)
        let calls: Vec<(&str, libc::c_long, [u64; 6], Option<i32>)> = vec![
            (
                "chmod 04755",
                nr("chmod"),
                [p(&file), 0o4755, 0, 0, 0, 0],
                Some(eperm),
            ),
            (
                "chmod 02755",
                nr("chmod"),
                [p(&file), 0o2755, 0, 0, 0, 0],
                Some(eperm),
            ),
            (
                "chmod 06755",
                nr("chmod"),
                [p(&file), 0o6755, 0, 0, 0, 0],
                Some(eperm),
            ),
            (
                "chmod S_IFREG|04755",
                nr("chmod"),
                [p(&file), 0o104755, 0, 0, 0, 0],
                Some(eperm),
            ),
            (
                "chmod 01755",
                nr("chmod"),
                [p(&file), 0o1755, 0, 0, 0, 0],
                None,
            ),
            (
                "chmod 0755",
                nr("chmod"),
                [p(&file), 0o755, 0, 0, 0, 0],
                None,
            ),
            (
                "openat O_CREAT 04755",
                nr("openat"),
                [cwd, p(&suid_new), wr_creat, 0o4755, 0, 0],
                Some(eperm),
            ),
            (
                "openat O_CREAT 02755",
                nr("openat"),
                [cwd, p(&suid_new), wr_creat, 0o2755, 0, 0],
                Some(eperm),
            ),
            (
                "openat O_TMPFILE 04755",
                nr("openat"),
                [cwd, p(&here), tmpfile, 0o4755, 0, 0],
                Some(eperm),
            ),
            (
                "openat O_CREAT 0644",
                nr("openat"),
                [cwd, p(&fresh), wr_creat, 0o644, 0, 0],
                None,
            ),
            // Without O_CREAT the kernel ignores the mode.
            (
                "openat O_RDONLY, mode 04755",
                nr("openat"),
                [cwd, p(&file), libc::O_RDONLY as u64, 0o4755, 0, 0],
                None,
            ),
            (
                "mknodat S_IFIFO|04644",
                nr("mknodat"),
                [cwd, p(&fifo_bad), fifo | 0o4644, 0, 0, 0],
                Some(eperm),
            ),
            (
                "mknodat S_IFIFO|02644",
                nr("mknodat"),
                [cwd, p(&fifo_bad), fifo | 0o2644, 0, 0, 0],
                Some(eperm),
            ),
            (
                "mknodat S_IFIFO|0644",
                nr("mknodat"),
                [cwd, p(&fifo_ok), fifo | 0o644, 0, 0, 0],
                None,
            ),
        ];
        let (r, w) = pipe();
        let status = in_child(|| {
            child_setup(&prog);
            for (i, (_, nr, args, _)) in calls.iter().enumerate() {
                // SAFETY: paths in the test's temp dir, plain flags and modes.
                let ret = unsafe { raw(*nr, *args) };
                let value = if ret == -1 { -errno() } else { ret as i32 };
                report(w, i, 0, value);
            }
            // SAFETY: exit_group(0) ends the process.
            unsafe { libc::syscall(libc::SYS_exit_group, 0) };
            exit_now(4)
        });
        close(w);
        let records = read_all(r);
        close(r);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child {}",
            status_text(status)
        );
        assert_eq!(records.len(), calls.len() * RECORD);
        for (rec, (what, _, _, want)) in records.chunks_exact(RECORD).zip(&calls) {
            let value = i32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
            match want {
                Some(e) => assert_eq!(value, *e, "{what}"),
                None => assert!(value >= 0, "{what}: {value}"),
            }
        }
        // On the host: the plain chmod took, nothing setuid or setgid exists.
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::symlink_metadata(dir.path().join(name))
                .map(|m| m.permissions().mode() & 0o7777)
                .ok()
        };
        assert_eq!(mode("f"), Some(0o755));
        assert_eq!(mode("suid"), None);
        assert_eq!(mode("fifo-suid"), None);
        // (Their permission bits are the umask's business.)
        assert!(mode("fifo").is_some() && mode("fresh").is_some());
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let m = e.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(m & 0o6000, 0, "a setuid/setgid file was made");
        }
    }

    // --- (d) policies compile refuses -----------------------------------------

    fn with_filter(rules: &str) -> String {
        format!(
            r#"{{"qemu": {{"default_action": "kill_process", "filter_action": "allow",
                "filter": [{rules}]}}}}"#
        )
    }
    const EXEC: &str =
        r#"{"syscall": "execve", "args": [{"index": 0, "type": "qword", "op": "eq", "val": 0}]}"#;
    const READ: &str = r#"{"syscall": "read"}"#;

    #[test]
    fn a_policy_without_the_exec_placeholder_is_refused() {
        let e = compile(&with_filter(READ), 1).unwrap_err();
        assert!(matches!(e, SeccompError::ExecRule(_)), "{e}");
    }

    #[test]
    fn two_exec_rules_are_refused() {
        let e = compile(&with_filter(&format!("{EXEC}, {READ}, {EXEC}")), 1).unwrap_err();
        assert!(matches!(e, SeccompError::ExecRule(_)), "{e}");
    }

    #[test]
    fn an_exec_rule_other_than_the_placeholder_is_refused() {
        for exec in [
            r#"{"syscall": "execve"}"#,
            r#"{"syscall": "execve", "args": [{"index": 0, "type": "qword", "op": "eq", "val": 5}]}"#,
            r#"{"syscall": "execve", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 0}]}"#,
            r#"{"syscall": "execve", "args": [{"index": 0, "type": "qword", "op": "ne", "val": 0}]}"#,
        ] {
            let e = compile(&with_filter(&format!("{exec}, {READ}")), 1).unwrap_err();
            assert!(matches!(e, SeccompError::ExecRule(_)), "{exec}: {e}");
        }
        let e = compile(
            &with_filter(&format!(r#"{EXEC}, {{"syscall": "execveat"}}"#)),
            1,
        )
        .unwrap_err();
        assert!(matches!(e, SeccompError::ExecRule(_)), "{e}");
    }

    #[test]
    fn other_malformed_policies_are_refused() {
        let mixed = with_filter(&format!(
            r#"{EXEC}, {READ}, {{"syscall": "read", "args": [{{"index": 0, "type": "dword", "op": "eq", "val": 0}}]}}"#
        ));
        assert!(
            matches!(compile(&mixed, 1).unwrap_err(), SeccompError::MixedRules(n) if n == "read")
        );
        let deny_list = format!(
            r#"{{"qemu": {{"default_action": "allow", "filter_action": "kill_process", "filter": [{EXEC}]}}}}"#
        );
        assert!(matches!(
            compile(&deny_list, 1).unwrap_err(),
            SeccompError::Malformed(_)
        ));
        let enosys_allows = format!(
            r#"{{"qemu": {{"default_action": "kill_process", "filter_action": "allow", "filter": [{EXEC}]}},
                "qemu_enosys": {{"default_action": "kill_process", "filter_action": "allow", "filter": [{READ}]}}}}"#
        );
        assert!(matches!(
            compile(&enosys_allows, 1).unwrap_err(),
            SeccompError::Malformed(_)
        ));
        let eperm_allows = format!(
            r#"{{"qemu": {{"default_action": "kill_process", "filter_action": "allow", "filter": [{EXEC}]}},
                "qemu_eperm": {{"default_action": "kill_process", "filter_action": "allow", "filter": [{READ}]}}}}"#
        );
        assert!(matches!(
            compile(&eperm_allows, 1).unwrap_err(),
            SeccompError::Malformed(m) if m.contains("qemu_eperm")
        ));
        let unknown = with_filter(&format!(r#"{EXEC}, {{"syscall": "no_such_syscall"}}"#));
        assert!(matches!(
            compile(&unknown, 1).unwrap_err(),
            SeccompError::Compile(_)
        ));
        assert!(matches!(
            compile("{", 1).unwrap_err(),
            SeccompError::Json(_)
        ));
        let other_filter = format!(
            r#"{{"qemu": {{"default_action": "kill_process", "filter_action": "allow", "filter": [{EXEC}]}},
                "vcpu": {{"default_action": "kill_process", "filter_action": "allow", "filter": [{READ}]}}}}"#
        );
        assert!(matches!(
            compile(&other_filter, 1).unwrap_err(),
            SeccompError::Malformed(_)
        ));
    }

    #[test]
    fn compile_binds_the_exec_rule_to_the_address() {
        let a = compile(POLICY_JSON, 0x1111_2222_3333).unwrap();
        let b = compile(POLICY_JSON, 0x4444_5555_6666).unwrap();
        assert_eq!(a.len(), b.len());
        let has = |p: &BpfProgram, k: u32| p.iter().any(|i| i.k == k);
        assert!(has(&a, 0x2222_3333) && has(&a, 0x1111) && !has(&a, 0x5555_6666));
        assert!(has(&b, 0x5555_6666) && has(&b, 0x4444));
    }
}
