//! The container's `linux.seccomp` profile compiled into a classic-BPF
//! seccomp program (docs/seccomp.md, "The container's seccomp profile,
//! inside the guest").
//!
//! The host compiles; the guest agent only installs the bytes
//! ([`Filter::program`], with [`Filter::flags`], by
//! `seccomp(SECCOMP_SET_MODE_FILTER)`). So the guest needs no libseccomp
//! and no syscall tables, and what the profile means is decided here, once,
//! and tested on the host.
//!
//! What the program does, in order:
//!
//! 1. **Architecture.** `seccomp_data.arch` AUDIT_ARCH_X86_64 goes to the
//!    x86_64 section (always there: libseccomp's native architecture, as
//!    runc always has it), AUDIT_ARCH_I386 to the i386 section if the
//!    profile lists `SCMP_ARCH_X86`; anything else is killed
//!    (`KILL_PROCESS`, libseccomp's bad-architecture action). Under
//!    AUDIT_ARCH_X86_64 a syscall number with bit 0x40000000 is an x32 one:
//!    it goes to the x32 section if the profile lists `SCMP_ARCH_X32`, or is
//!    killed. Each section has the profile's rules translated by name with
//!    that ABI's table ([`syscalls`], generated from the kernel headers by
//!    `scripts/gen-syscall-tables`). Other architectures a profile lists
//!    (arm, s390x, …) cannot occur on an x86_64 guest and are ignored.
//! 2. **runc's ENOSYS stub.** Unless the default action allows (ALLOW, LOG,
//!    TRACE) or `defaultErrnoRet` is already ENOSYS, a syscall number above
//!    the largest one the profile names for that ABI fails with ENOSYS
//!    rather than the default action, as runc's patched filters do, so that
//!    a newer glibc falls back from a syscall the profile predates.
//! 3. **Dispatch**: a binary search over the sorted syscall numbers (`jge`
//!    nodes, leaves of up to 8 `jeq`s), then the syscall's entries.
//! 4. **Entries of one syscall: the first matching entry in profile order
//!    decides.** An entry matches when all its `args` conditions hold (AND);
//!    an entry without `args` always matches, so later entries of that
//!    syscall are unreachable and not emitted. As in runc, an entry naming
//!    the same argument index twice is split into one entry per condition
//!    (OR). Unlike runc, an entry whose action equals the default action is
//!    kept (runc drops it): first-match order makes it mean what it says.
//! 5. Otherwise the default action.
//!
//! Arguments are compared as unsigned 64-bit values on x86_64 and x32 (the
//! high word `args[i]` at offset 20+8i, then the low word at 16+8i), and as
//! 32-bit values on i386, whose syscalls see only the low words (the high
//! word is taken as 0, so `EQ 0x1_0000_0005` never matches there), as
//! libseccomp does for 32-bit ABIs. `SCMP_CMP_MASKED_EQ` is
//! `arg & value == valueTwo`.
//!
//! A syscall name the table of an ABI does not know is skipped for that ABI
//! (runc and libseccomp do the same: profiles list syscalls of every
//! architecture and kernel) and reported in [`Filter::skipped`].
//!
//! Refused, by name: `SCMP_ACT_NOTIFY` (as the default or an entry's
//! action), `listenerPath` and `listenerMetadata` (no seccomp agent on the
//! host can receive a guest's notifications), an argument index above 5, an
//! errno above 4095 (or a TRACE value above 0xffff), `errnoRet` or
//! `defaultErrnoRet` on an action that returns none, an empty syscall name,
//! and a program longer than the kernel's BPF_MAXINSNS (4096 instructions).
//! An unknown flag or action never gets here: oci-spec's closed enums refuse
//! it, naming it, when config.json is parsed.
//!
//! Jumps: classic BPF's conditional jumps reach at most 255 instructions
//! ahead. The program is built with symbolic labels and assembled by
//! [`assemble`], which gives a conditional jump whose target is further away
//! a trampoline (`ja`, 32-bit) right after it, and repeats until every jump
//! fits.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

#[rustfmt::skip]
mod syscalls;

/// The kernel's limit on a seccomp program's length (BPF_MAXINSNS).
pub const MAX_PROGRAM_LEN: usize = 4096;
/// Bytes per instruction in [`Filter::program`] (a `struct sock_filter`).
pub const INSN_LEN: usize = 8;
/// The most syscall numbers one leaf of the dispatch tree compares.
const LEAF: usize = 8;
/// The largest errno a seccomp ERRNO action can return (the kernel caps
/// SECCOMP_RET_DATA at MAX_ERRNO).
pub const MAX_ERRNO: u32 = 4095;

/// AUDIT_ARCH_X86_64 (EM_X86_64 | 64-bit | little-endian).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// AUDIT_ARCH_I386 (EM_386 | little-endian).
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// The bit of an x32 syscall number (__X32_SYSCALL_BIT).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// SECCOMP_RET_* (linux/seccomp.h).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

// SECCOMP_FILTER_FLAG_* (linux/seccomp.h).
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;

// Offsets in struct seccomp_data.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

/// A compiled profile: what the guest agent installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The program: `struct sock_filter` instructions, 8 bytes each (`u16`
    /// code, `u8` jt, `u8` jf, `u32` k), little-endian.
    pub program: Vec<u8>,
    /// `SECCOMP_FILTER_FLAG_*` for `seccomp(SECCOMP_SET_MODE_FILTER)`, from
    /// `linux.seccomp.flags` (TSYNC 1, LOG 2, SPEC_ALLOW 4).
    pub flags: u32,
    /// The names the profile lists that an ABI it covers has no syscall
    /// of, as `"name (SCMP_ARCH_X86)"`, sorted: skipped for that ABI, as
    /// runc and libseccomp skip them.
    pub skipped: Vec<String>,
}

impl Filter {
    /// The number of instructions.
    pub fn len(&self) -> usize {
        self.program.len() / INSN_LEN
    }

    /// Whether the program is empty (never, for a compiled profile).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "linux.seccomp.defaultAction SCMP_ACT_NOTIFY cannot be honoured in a VM: no seccomp \
         agent on the host can receive the guest's notifications"
    )]
    NotifyDefault,
    #[error(
        "linux.seccomp.syscalls[{entry}] ({name}): SCMP_ACT_NOTIFY cannot be honoured in a VM: \
         no seccomp agent on the host can receive the guest's notifications"
    )]
    Notify { entry: usize, name: String },
    #[error(
        "linux.seccomp.{field} cannot be honoured in a VM: there is no seccomp agent to notify"
    )]
    Listener { field: &'static str },
    #[error("{field}: {value} is not an errno a seccomp filter can return (0..={MAX_ERRNO})")]
    Errno { field: String, value: u32 },
    #[error("{field}: {value} is more than a SCMP_ACT_TRACE value can hold (0..=65535)")]
    TraceValue { field: String, value: u32 },
    #[error("{field} is set, but the action {action} returns no errno")]
    ErrnoNotUsed { field: String, action: String },
    #[error("linux.seccomp.syscalls[{entry}] ({name}): args[{arg}].index {index} is not a syscall argument (0..=5)")]
    ArgIndex {
        entry: usize,
        name: String,
        arg: usize,
        index: usize,
    },
    #[error("linux.seccomp.syscalls[{entry}].names[{position}] is empty")]
    EmptyName { entry: usize, position: usize },
    #[error(
        "linux.seccomp compiles to {0} BPF instructions, more than the kernel's limit of \
         {MAX_PROGRAM_LEN}"
    )]
    TooLong(usize),
    #[error("linux.seccomp: internal error laying out the BPF program: {0}")]
    Layout(String),
}

/// An ABI of an x86_64 kernel, each with its own syscall numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Abi {
    X86_64,
    I386,
    X32,
}

impl Abi {
    fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            Abi::X86_64 => syscalls::X86_64,
            Abi::I386 => syscalls::I386,
            Abi::X32 => syscalls::X32,
        }
    }

    fn scmp_name(self) -> &'static str {
        match self {
            Abi::X86_64 => "SCMP_ARCH_X86_64",
            Abi::I386 => "SCMP_ARCH_X86",
            Abi::X32 => "SCMP_ARCH_X32",
        }
    }

    /// Whether the syscall arguments are 64-bit.
    fn wide(self) -> bool {
        self != Abi::I386
    }

    fn number(self, name: &str) -> Option<u32> {
        let table = self.table();
        table
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| table[i].1)
    }
}

/// The syscall table of `arch` (name, number as in [`syscall_number`]),
/// sorted by name; empty for architectures other than x86_64, x86 and x32.
pub fn syscall_table(arch: Arch) -> &'static [(&'static str, u32)] {
    match abi_of(arch) {
        Some(abi) => abi.table(),
        None => &[],
    }
}

fn abi_of(arch: Arch) -> Option<Abi> {
    match arch {
        Arch::ScmpArchNative | Arch::ScmpArchX86_64 => Some(Abi::X86_64),
        Arch::ScmpArchX86 => Some(Abi::I386),
        Arch::ScmpArchX32 => Some(Abi::X32),
        _ => None,
    }
}

/// The number of syscall `name` on `arch` as the compiled program sees it
/// in `seccomp_data.nr` (x32 numbers with [`X32_SYSCALL_BIT`]), from the
/// generated tables; `None` for a name the ABI lacks and for architectures
/// other than x86_64, x86 and x32 (`SCMP_ARCH_NATIVE` is x86_64).
pub fn syscall_number(arch: Arch, name: &str) -> Option<u32> {
    abi_of(arch)?.number(name)
}

/// A comparison of a syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Ne(u64),
    Lt(u64),
    Le(u64),
    Eq(u64),
    Ge(u64),
    Gt(u64),
    /// `arg & mask == datum`.
    MaskedEq {
        mask: u64,
        datum: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cond {
    index: u32,
    cmp: Cmp,
}

/// One way for a syscall to get an action: all conditions hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    conds: Vec<Cond>,
    action: u32,
}

fn errno_value(field: String, value: Option<u32>) -> Result<u32, SeccompError> {
    match value {
        None => Ok(EPERM),
        Some(v) if v <= MAX_ERRNO => Ok(v),
        Some(v) => Err(SeccompError::Errno { field, value: v }),
    }
}

/// The SECCOMP_RET_* value of an action with its `errnoRet`, which
/// `errno_field` names in errors.
fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    errno_field: impl Fn() -> String,
) -> Result<u32, SeccompError> {
    use LinuxSeccompAction as A;
    let ret = match a {
        A::ScmpActErrno => return Ok(RET_ERRNO | errno_value(errno_field(), errno)?),
        A::ScmpActTrace => {
            let v = errno.unwrap_or(EPERM);
            if v > 0xffff {
                return Err(SeccompError::TraceValue {
                    field: errno_field(),
                    value: v,
                });
            }
            return Ok(RET_TRACE | v);
        }
        // runc: SCMP_ACT_KILL is libseccomp's KILL_THREAD.
        A::ScmpActKill | A::ScmpActKillThread => RET_KILL_THREAD,
        A::ScmpActKillProcess => RET_KILL_PROCESS,
        A::ScmpActTrap => RET_TRAP,
        A::ScmpActLog => RET_LOG,
        A::ScmpActAllow => RET_ALLOW,
        // The callers refuse NOTIFY, naming the entry, before this.
        A::ScmpActNotify => return Err(SeccompError::NotifyDefault),
    };
    if errno.is_some() {
        return Err(SeccompError::ErrnoNotUsed {
            field: errno_field(),
            action: a.to_string(),
        });
    }
    Ok(ret)
}

fn cmp(arg: &LinuxSeccompArg) -> Cmp {
    use LinuxSeccompOperator as O;
    let v = arg.value();
    match arg.op() {
        O::ScmpCmpNe => Cmp::Ne(v),
        O::ScmpCmpLt => Cmp::Lt(v),
        O::ScmpCmpLe => Cmp::Le(v),
        O::ScmpCmpEq => Cmp::Eq(v),
        O::ScmpCmpGe => Cmp::Ge(v),
        O::ScmpCmpGt => Cmp::Gt(v),
        O::ScmpCmpMaskedEq => Cmp::MaskedEq {
            mask: v,
            datum: arg.value_two().unwrap_or(0),
        },
    }
}

/// What the profile says, per ABI: syscall number → its rules in profile
/// order.
struct Rules {
    default: u32,
    abis: BTreeMap<Abi, BTreeMap<u32, Vec<Rule>>>,
    /// The largest number the profile names per ABI (runc's ENOSYS stub).
    largest: BTreeMap<Abi, u32>,
    skipped: BTreeSet<String>,
}

fn rules(profile: &LinuxSeccomp) -> Result<Rules, SeccompError> {
    if profile.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompError::NotifyDefault);
    }
    if profile
        .listener_path()
        .as_ref()
        .is_some_and(|p| !p.as_os_str().is_empty())
    {
        return Err(SeccompError::Listener {
            field: "listenerPath",
        });
    }
    if profile
        .listener_metadata()
        .as_deref()
        .is_some_and(|m| !m.is_empty())
    {
        return Err(SeccompError::Listener {
            field: "listenerMetadata",
        });
    }
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        || "linux.seccomp.defaultErrnoRet".to_string(),
    )?;

    let mut abis: BTreeMap<Abi, BTreeMap<u32, Vec<Rule>>> = BTreeMap::new();
    abis.insert(Abi::X86_64, BTreeMap::new());
    // Architectures that are not an ABI of an x86_64 guest are ignored: no
    // syscall can carry them.
    for abi in profile
        .architectures()
        .iter()
        .flatten()
        .filter_map(|&a| abi_of(a))
    {
        abis.entry(abi).or_default();
    }

    let mut largest = BTreeMap::new();
    let mut skipped = BTreeSet::new();
    for (entry, sc) in profile.syscalls().iter().flatten().enumerate() {
        let first_name = sc.names().first().cloned().unwrap_or_default();
        if sc.action() == LinuxSeccompAction::ScmpActNotify {
            return Err(SeccompError::Notify {
                entry,
                name: first_name,
            });
        }
        let act = action(sc.action(), sc.errno_ret(), || {
            format!("linux.seccomp.syscalls[{entry}] ({first_name}).errnoRet")
        })?;
        let args = sc.args().as_deref().unwrap_or_default();
        let mut conds = Vec::with_capacity(args.len());
        let mut per_index = [0usize; 6];
        for (i, a) in args.iter().enumerate() {
            if a.index() > 5 {
                return Err(SeccompError::ArgIndex {
                    entry,
                    name: first_name,
                    arg: i,
                    index: a.index(),
                });
            }
            per_index[a.index()] += 1;
            conds.push(Cond {
                index: a.index() as u32,
                cmp: cmp(a),
            });
        }
        // runc: the same argument twice in one entry means one rule per
        // condition (OR), not their conjunction.
        let alternatives: Vec<Rule> = if per_index.iter().any(|&n| n > 1) {
            conds
                .iter()
                .map(|&c| Rule {
                    conds: vec![c],
                    action: act,
                })
                .collect()
        } else {
            vec![Rule { conds, action: act }]
        };
        for (position, name) in sc.names().iter().enumerate() {
            if name.is_empty() {
                return Err(SeccompError::EmptyName { entry, position });
            }
            for (abi, table) in abis.iter_mut() {
                match abi.number(name) {
                    Some(nr) => {
                        table
                            .entry(nr)
                            .or_default()
                            .extend(alternatives.iter().cloned());
                        let l = largest.entry(*abi).or_insert(nr);
                        *l = (*l).max(nr);
                    }
                    None => {
                        skipped.insert(format!("{name} ({})", abi.scmp_name()));
                    }
                }
            }
        }
    }
    Ok(Rules {
        default,
        abis,
        largest,
        skipped,
    })
}

fn flags(profile: &LinuxSeccomp) -> u32 {
    profile
        .flags()
        .iter()
        .flatten()
        .map(|f| match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
        })
        .fold(0, |a, b| a | b)
}

/// Compiles `profile` for an x86_64 guest.
pub fn compile(profile: &oci_spec::runtime::LinuxSeccomp) -> Result<Filter, SeccompError> {
    let rules = rules(profile)?;
    let stub = !matches!(
        profile.default_action(),
        LinuxSeccompAction::ScmpActAllow
            | LinuxSeccompAction::ScmpActLog
            | LinuxSeccompAction::ScmpActTrace
    ) && rules.default != RET_ERRNO | ENOSYS;
    let insns = assemble(generate(&rules, stub))?;
    if insns.len() > MAX_PROGRAM_LEN {
        return Err(SeccompError::TooLong(insns.len()));
    }
    let mut program = Vec::with_capacity(insns.len() * INSN_LEN);
    for i in &insns {
        program.extend_from_slice(&i.code.to_le_bytes());
        program.push(i.jt);
        program.push(i.jf);
        program.extend_from_slice(&i.k.to_le_bytes());
    }
    Ok(Filter {
        program,
        flags: flags(profile),
        skipped: rules.skipped.into_iter().collect(),
    })
}

// --- code generation ---------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Label(usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JmpOp {
    Jeq,
    Jgt,
    Jge,
}

/// A symbolic instruction: jumps name labels, which [`assemble`] resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `A = seccomp_data[k]` (32 bits).
    Ld(u32),
    /// `A &= k`.
    And(u32),
    /// `if A OP k goto jt else goto jf`.
    Jmp {
        op: JmpOp,
        k: u32,
        jt: Label,
        jf: Label,
    },
    Ja(Label),
    Ret(u32),
    /// Marks the position of the next instruction.
    Mark(Label),
}

#[derive(Default)]
struct Code {
    ops: Vec<Op>,
    labels: usize,
}

impl Code {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }
    fn mark(&mut self, l: Label) {
        self.ops.push(Op::Mark(l));
    }
    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }
    fn jmp(&mut self, op: JmpOp, k: u32, jt: Label, jf: Label) {
        self.ops.push(Op::Jmp { op, k, jt, jf });
    }
    /// A jump to `jt` if `A OP k`, else on to the next instruction.
    fn jmp_or_next(&mut self, op: JmpOp, k: u32, jt: Label) {
        let next = self.label();
        self.jmp(op, k, jt, next);
        self.mark(next);
    }
}

fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

fn lo(v: u64) -> u32 {
    v as u32
}

/// Code that goes to `ok` if the condition holds and to `fail` if not.
/// Wide: 64-bit comparison, high words first. Narrow (i386): the high word
/// of the argument is 0, which decides the high-word step at compile time.
fn condition(code: &mut Code, c: Cond, wide: bool, ok: Label, fail: Label) {
    let lo_off = DATA_ARGS + 8 * c.index;
    let hi_off = lo_off + 4;
    // The high-word step of an ordered comparison: A > H → `above`;
    // A == H → on to the low word; A < H → `below`.
    let ordered = |code: &mut Code, h: u32, above: Label, below: Label| -> bool {
        if wide {
            code.push(Op::Ld(hi_off));
            code.jmp_or_next(JmpOp::Jgt, h, above);
            let next = code.label();
            code.jmp(JmpOp::Jeq, h, next, below);
            code.mark(next);
            true
        } else if h == 0 {
            true
        } else {
            // 0 < H.
            code.push(Op::Ja(below));
            false
        }
    };
    // The high-word step of an equality: A == H → on; else `differ`.
    let equal = |code: &mut Code, h: u32, mask: Option<u32>, differ: Label| -> bool {
        if wide {
            code.push(Op::Ld(hi_off));
            if let Some(m) = mask {
                code.push(Op::And(m));
            }
            let next = code.label();
            code.jmp(JmpOp::Jeq, h, next, differ);
            code.mark(next);
            true
        } else if h == 0 {
            true
        } else {
            code.push(Op::Ja(differ));
            false
        }
    };
    match c.cmp {
        Cmp::Eq(v) => {
            if equal(code, hi(v), None, fail) {
                code.push(Op::Ld(lo_off));
                code.jmp(JmpOp::Jeq, lo(v), ok, fail);
            }
        }
        Cmp::Ne(v) => {
            if equal(code, hi(v), None, ok) {
                code.push(Op::Ld(lo_off));
                code.jmp(JmpOp::Jeq, lo(v), fail, ok);
            }
        }
        Cmp::MaskedEq { mask, datum } => {
            let go_on = if wide {
                equal(code, hi(datum), Some(hi(mask)), fail)
            } else {
                // 0 & mask == datum's high word.
                equal(code, hi(datum), None, fail)
            };
            if go_on {
                code.push(Op::Ld(lo_off));
                code.push(Op::And(lo(mask)));
                code.jmp(JmpOp::Jeq, lo(datum), ok, fail);
            }
        }
        Cmp::Gt(v) => {
            if ordered(code, hi(v), ok, fail) {
                code.push(Op::Ld(lo_off));
                code.jmp(JmpOp::Jgt, lo(v), ok, fail);
            }
        }
        Cmp::Ge(v) => {
            if ordered(code, hi(v), ok, fail) {
                code.push(Op::Ld(lo_off));
                code.jmp(JmpOp::Jge, lo(v), ok, fail);
            }
        }
        Cmp::Lt(v) => {
            if ordered(code, hi(v), fail, ok) {
                code.push(Op::Ld(lo_off));
                code.jmp(JmpOp::Jge, lo(v), fail, ok);
            }
        }
        Cmp::Le(v) => {
            if ordered(code, hi(v), fail, ok) {
                code.push(Op::Ld(lo_off));
                code.jmp(JmpOp::Jgt, lo(v), fail, ok);
            }
        }
    }
}

/// The body of one syscall: its rules, first match wins, then `default`.
fn body(code: &mut Code, rules: &[Rule], wide: bool, default: u32) {
    for rule in rules {
        if rule.conds.is_empty() {
            code.push(Op::Ret(rule.action));
            // Later rules of this syscall cannot be reached.
            return;
        }
        let next_rule = code.label();
        for c in &rule.conds {
            let ok = code.label();
            condition(code, *c, wide, ok, next_rule);
            code.mark(ok);
        }
        code.push(Op::Ret(rule.action));
        code.mark(next_rule);
    }
    code.push(Op::Ret(default));
}

/// A binary search over `nrs` (sorted, A holds the syscall number): at a
/// leaf, one `jeq` per number to its body, then `default`, then the
/// leaf's bodies (identical ones emitted once).
fn dispatch(code: &mut Code, nrs: &[(u32, &Vec<Rule>)], wide: bool, default: u32) {
    if nrs.len() > LEAF {
        let mid = nrs.len() / 2;
        let (left, right) = (code.label(), code.label());
        code.jmp(JmpOp::Jge, nrs[mid].0, right, left);
        code.mark(left);
        dispatch(code, &nrs[..mid], wide, default);
        code.mark(right);
        dispatch(code, &nrs[mid..], wide, default);
        return;
    }
    let mut bodies: Vec<(&Vec<Rule>, Label)> = Vec::new();
    for &(nr, rules) in nrs {
        let target = match bodies.iter().find(|(r, _)| *r == rules) {
            Some(&(_, l)) => l,
            None => {
                let l = code.label();
                bodies.push((rules, l));
                l
            }
        };
        code.jmp_or_next(JmpOp::Jeq, nr, target);
    }
    code.push(Op::Ret(default));
    for (rules, l) in bodies {
        code.mark(l);
        body(code, rules, wide, default);
    }
}

/// One ABI's section (A holds the syscall number).
fn section(
    code: &mut Code,
    table: &BTreeMap<u32, Vec<Rule>>,
    wide: bool,
    default: u32,
    enosys_above: Option<u32>,
) {
    if let Some(max) = enosys_above {
        let (enosys, go_on) = (code.label(), code.label());
        code.jmp(JmpOp::Jgt, max, enosys, go_on);
        code.mark(enosys);
        code.push(Op::Ret(RET_ERRNO | ENOSYS));
        code.mark(go_on);
    }
    let nrs: Vec<(u32, &Vec<Rule>)> = table.iter().map(|(&nr, r)| (nr, r)).collect();
    if nrs.is_empty() {
        code.push(Op::Ret(default));
    } else {
        dispatch(code, &nrs, wide, default);
    }
}

fn generate(rules: &Rules, stub: bool) -> Code {
    let mut code = Code::default();
    let empty = BTreeMap::new();
    let x86_64 = rules.abis.get(&Abi::X86_64).unwrap_or(&empty);
    let i386 = rules.abis.get(&Abi::I386);
    let x32 = rules.abis.get(&Abi::X32);
    let stub_for = |abi: Abi| stub.then(|| rules.largest.get(&abi).copied()).flatten();

    let l64 = code.label();
    code.push(Op::Ld(DATA_ARCH));
    code.jmp_or_next(JmpOp::Jeq, AUDIT_ARCH_X86_64, l64);
    let l32 = i386.map(|_| {
        let l = code.label();
        code.jmp_or_next(JmpOp::Jeq, AUDIT_ARCH_I386, l);
        l
    });
    code.push(Op::Ret(RET_KILL_PROCESS));

    code.mark(l64);
    code.push(Op::Ld(DATA_NR));
    let lx32 = code.label();
    code.jmp_or_next(JmpOp::Jge, X32_SYSCALL_BIT, lx32);
    section(
        &mut code,
        x86_64,
        Abi::X86_64.wide(),
        rules.default,
        stub_for(Abi::X86_64),
    );
    code.mark(lx32);
    match x32 {
        // A is still the syscall number: the section's code never returns
        // here, and the jump came straight from the test above.
        Some(t) => section(
            &mut code,
            t,
            Abi::X32.wide(),
            rules.default,
            stub_for(Abi::X32),
        ),
        None => code.push(Op::Ret(RET_KILL_PROCESS)),
    }
    if let (Some(l), Some(t)) = (l32, i386) {
        code.mark(l);
        code.push(Op::Ld(DATA_NR));
        section(
            &mut code,
            t,
            Abi::I386.wide(),
            rules.default,
            stub_for(Abi::I386),
        );
    }
    code
}

// --- assembly ------------------------------------------------------------------

/// One `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// Resolves labels into offsets. A conditional jump whose target is more
/// than 255 instructions ahead gets a trampoline (`ja`) right after it;
/// nothing falls through a jump, so inserting after one changes no path.
/// Each jump is given trampolines at most once, so this ends.
fn assemble(code: Code) -> Result<Vec<Insn>, SeccompError> {
    let Code {
        mut ops,
        mut labels,
    } = code;
    loop {
        // Where each label is.
        let mut at: Vec<Option<usize>> = vec![None; labels];
        let mut len = 0usize;
        for op in &ops {
            match *op {
                Op::Mark(Label(l)) => {
                    let slot = at
                        .get_mut(l)
                        .ok_or_else(|| SeccompError::Layout(format!("unknown label {l}")))?;
                    if slot.replace(len).is_some() {
                        return Err(SeccompError::Layout(format!("label {l} placed twice")));
                    }
                }
                _ => len += 1,
            }
        }
        // Every jump gets trampolines at most twice; far beyond the limit
        // something is wrong.
        if len > 4 * MAX_PROGRAM_LEN {
            return Err(SeccompError::TooLong(len));
        }
        let offset = |pc: usize, Label(l): Label| -> Result<usize, SeccompError> {
            let target = at
                .get(l)
                .copied()
                .flatten()
                .ok_or_else(|| SeccompError::Layout(format!("label {l} never placed")))?;
            target
                .checked_sub(pc + 1)
                .ok_or_else(|| SeccompError::Layout(format!("backward jump to label {l}")))
        };

        let mut out = Vec::with_capacity(len);
        // (op index, jt too far, jf too far)
        let mut far: Vec<(usize, bool, bool)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let pc = out.len();
            let (code, jt, jf, k) = match *op {
                Op::Mark(_) => continue,
                Op::Ld(k) => (BPF_LD_W_ABS, 0, 0, k),
                Op::And(k) => (BPF_ALU_AND_K, 0, 0, k),
                Op::Ret(k) => (BPF_RET_K, 0, 0, k),
                Op::Ja(l) => {
                    let off =
                        u32::try_from(offset(pc, l)?).map_err(|_| SeccompError::TooLong(len))?;
                    (BPF_JMP_JA, 0, 0, off)
                }
                Op::Jmp { op, k, jt, jf } => {
                    let (t, f) = (offset(pc, jt)?, offset(pc, jf)?);
                    if t > 255 || f > 255 {
                        far.push((i, t > 255, f > 255));
                    }
                    let code = match op {
                        JmpOp::Jeq => BPF_JMP_JEQ_K,
                        JmpOp::Jgt => BPF_JMP_JGT_K,
                        JmpOp::Jge => BPF_JMP_JGE_K,
                    };
                    (code, t.min(255) as u8, f.min(255) as u8, k)
                }
            };
            out.push(Insn { code, jt, jf, k });
        }
        if far.is_empty() {
            return Ok(out);
        }
        // From the back, so that the recorded indices stay right.
        for &(i, far_t, far_f) in far.iter().rev() {
            let Op::Jmp { op, k, jt, jf } = ops[i] else {
                return Err(SeccompError::Layout("a trampoline for a non-jump".into()));
            };
            let mut fresh = || {
                labels += 1;
                Label(labels - 1)
            };
            let tt = if far_t { fresh() } else { jt };
            let tf = if far_f { fresh() } else { jf };
            let mut tramp = Vec::with_capacity(4);
            if far_t {
                tramp.extend([Op::Mark(tt), Op::Ja(jt)]);
            }
            if far_f {
                tramp.extend([Op::Mark(tf), Op::Ja(jf)]);
            }
            ops[i] = Op::Jmp {
                op,
                k,
                jt: tt,
                jf: tf,
            };
            ops.splice(i + 1..i + 1, tramp);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Pure logic: a classic-BPF interpreter (checking what the kernel's
    //! seccomp_check_filter checks) runs the compiled programs, and a
    //! direct reading of the profile says what each call should get. The
    //! real kernel runs them in oci/tests/seccomp.rs.

    use super::*;
    use serde_json::json;

    /// struct seccomp_data.
    #[derive(Debug, Clone, Copy)]
    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Data {
        fn bytes(&self) -> [u8; 64] {
            let mut b = [0u8; 64];
            b[0..4].copy_from_slice(&self.nr.to_le_bytes());
            b[4..8].copy_from_slice(&self.arch.to_le_bytes());
            b[8..16].copy_from_slice(&0x7f00_dead_beefu64.to_le_bytes());
            for (i, a) in self.args.iter().enumerate() {
                b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
            }
            b
        }
    }

    fn decode(program: &[u8]) -> Vec<Insn> {
        assert_eq!(program.len() % INSN_LEN, 0, "a partial instruction");
        program
            .chunks_exact(INSN_LEN)
            .map(|c| Insn {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect()
    }

    /// Checks the program as the kernel would before loading it: only the
    /// instructions seccomp allows, aligned loads inside seccomp_data,
    /// jumps inside the program, the last instruction a return.
    fn check(insns: &[Insn]) {
        assert!(!insns.is_empty() && insns.len() <= MAX_PROGRAM_LEN);
        for (pc, i) in insns.iter().enumerate() {
            let rest = insns.len() - pc - 1;
            match i.code {
                BPF_LD_W_ABS => assert!(i.k % 4 == 0 && i.k < 64, "pc {pc}: load {}", i.k),
                BPF_ALU_AND_K | BPF_RET_K => {}
                BPF_JMP_JA => assert!((i.k as usize) < rest, "pc {pc}: ja out of the program"),
                BPF_JMP_JEQ_K | BPF_JMP_JGT_K | BPF_JMP_JGE_K => assert!(
                    usize::from(i.jt) < rest && usize::from(i.jf) < rest,
                    "pc {pc}: jump out of the program"
                ),
                c => panic!("pc {pc}: opcode {c:#x} is not one seccomp accepts"),
            }
        }
        assert_eq!(insns.last().unwrap().code, BPF_RET_K, "does not end in ret");
    }

    /// Runs a program on `data`: its return value and the instructions run.
    fn run(insns: &[Insn], data: &Data) -> (u32, usize) {
        let bytes = data.bytes();
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = insns[pc];
            steps += 1;
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    a = u32::from_le_bytes(bytes[k..k + 4].try_into().unwrap());
                }
                BPF_ALU_AND_K => a &= i.k,
                BPF_RET_K => return (i.k, steps),
                BPF_JMP_JA => pc += i.k as usize,
                c => {
                    let taken = match c {
                        BPF_JMP_JEQ_K => a == i.k,
                        BPF_JMP_JGT_K => a > i.k,
                        BPF_JMP_JGE_K => a >= i.k,
                        _ => unreachable!("check() refuses other opcodes"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
            }
        }
    }

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).expect("a valid LinuxSeccomp")
    }

    fn compiled(p: &LinuxSeccomp) -> Vec<Insn> {
        let f = compile(p).expect("compiles");
        let insns = decode(&f.program);
        check(&insns);
        assert_eq!(f.len(), insns.len());
        insns
    }

    fn x86_64(nr: u32, args: [u64; 6]) -> Data {
        Data {
            nr,
            arch: AUDIT_ARCH_X86_64,
            args,
        }
    }

    fn nr64(name: &str) -> u32 {
        syscall_number(Arch::ScmpArchX86_64, name).unwrap()
    }

    // --- a reference: the profile read directly --------------------------

    fn matches(arg: u64, a: &LinuxSeccompArg) -> bool {
        use LinuxSeccompOperator as O;
        let v = a.value();
        match a.op() {
            O::ScmpCmpNe => arg != v,
            O::ScmpCmpLt => arg < v,
            O::ScmpCmpLe => arg <= v,
            O::ScmpCmpEq => arg == v,
            O::ScmpCmpGe => arg >= v,
            O::ScmpCmpGt => arg > v,
            O::ScmpCmpMaskedEq => arg & v == a.value_two().unwrap_or(0),
        }
    }

    fn ret_of(a: LinuxSeccompAction, errno: Option<u32>) -> u32 {
        use LinuxSeccompAction as A;
        match a {
            A::ScmpActErrno => 0x0005_0000 | errno.unwrap_or(1),
            A::ScmpActTrace => 0x7ff0_0000 | errno.unwrap_or(1),
            A::ScmpActKill | A::ScmpActKillThread => 0,
            A::ScmpActKillProcess => 0x8000_0000,
            A::ScmpActTrap => 0x0003_0000,
            A::ScmpActLog => 0x7ffc_0000,
            A::ScmpActAllow => 0x7fff_0000,
            A::ScmpActNotify => unreachable!(),
        }
    }

    /// What the profile says `data` gets.
    fn reference(p: &LinuxSeccomp, data: &Data) -> u32 {
        let archs = p.architectures().clone().unwrap_or_default();
        let abi = match data.arch {
            AUDIT_ARCH_X86_64 if data.nr < X32_SYSCALL_BIT => Arch::ScmpArchX86_64,
            AUDIT_ARCH_X86_64 if archs.contains(&Arch::ScmpArchX32) => Arch::ScmpArchX32,
            AUDIT_ARCH_I386 if archs.contains(&Arch::ScmpArchX86) => Arch::ScmpArchX86,
            _ => return 0x8000_0000,
        };
        let narrow = abi == Arch::ScmpArchX86;
        let entries = p.syscalls().clone().unwrap_or_default();
        for e in &entries {
            if !e
                .names()
                .iter()
                .any(|n| syscall_number(abi, n) == Some(data.nr))
            {
                continue;
            }
            let args = e.args().clone().unwrap_or_default();
            let arg = |a: &LinuxSeccompArg| {
                let v = data.args[a.index()];
                if narrow {
                    v & 0xffff_ffff
                } else {
                    v
                }
            };
            let repeated = (0..6).any(|i| args.iter().filter(|a| a.index() == i).count() > 1);
            let hit = if repeated {
                args.iter().any(|a| matches(arg(a), a))
            } else {
                args.iter().all(|a| matches(arg(a), a))
            };
            if hit {
                return ret_of(e.action(), e.errno_ret());
            }
        }
        let default = ret_of(p.default_action(), p.default_errno_ret());
        let allowish = matches!(
            p.default_action(),
            LinuxSeccompAction::ScmpActAllow
                | LinuxSeccompAction::ScmpActLog
                | LinuxSeccompAction::ScmpActTrace
        );
        if !allowish && default != 0x0005_0000 | 38 {
            let largest = entries
                .iter()
                .flat_map(|e| e.names().iter())
                .filter_map(|n| syscall_number(abi, n))
                .max();
            if largest.is_some_and(|l| data.nr > l) {
                return 0x0005_0000 | 38;
            }
        }
        default
    }

    // --- a small deterministic generator ---------------------------------

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
            &v[self.below(v.len())]
        }
    }

    /// Values around the interesting edges: the 32-bit boundary, the
    /// halves, small numbers.
    const VALUES: &[u64] = &[
        0,
        1,
        2,
        8,
        0xff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffe,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0001,
        0x1_0000_0008,
        0x2_0000_0000,
        0xffff_ffff_0000_0000,
        0xffff_ffff_ffff_fffe,
        u64::MAX,
        0x1234_5678_9abc_def0,
    ];
    const OPS: &[&str] = &[
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    ];
    const ACTIONS: &[&str] = &[
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_LOG",
    ];
    /// Names on all three ABIs, names missing on some (newfstatat and
    /// arch_prctl-likes), and one nobody has.
    const NAMES: &[&str] = &[
        "read",
        "write",
        "getpid",
        "getppid",
        "personality",
        "clone",
        "mount",
        "reboot",
        "kexec_load",
        "ioctl",
        "socket",
        "newfstatat",
        "fstatat64",
        "socketcall",
        "ipc",
        "_llseek",
        "rt_sigaction",
        "io_uring_setup",
        "futex_waitv",
        "no_such_syscall",
    ];

    fn random_profile(rng: &mut Rng) -> serde_json::Value {
        let mut syscalls = Vec::new();
        for _ in 0..rng.below(12) {
            let names: Vec<&str> = (0..1 + rng.below(3)).map(|_| *rng.pick(NAMES)).collect();
            let mut args = Vec::new();
            for _ in 0..rng.below(4) {
                args.push(json!({
                    "index": rng.below(3),
                    "value": *rng.pick(VALUES),
                    "valueTwo": *rng.pick(VALUES),
                    "op": *rng.pick(OPS),
                }));
            }
            let action = *rng.pick(ACTIONS);
            let mut e = json!({"names": names, "action": action, "args": args});
            if (action == "SCMP_ACT_ERRNO" || action == "SCMP_ACT_TRACE") && rng.below(2) == 0 {
                e["errnoRet"] = json!(rng.below(200));
            }
            syscalls.push(e);
        }
        let default = *rng.pick(ACTIONS);
        let mut p = json!({"defaultAction": default, "syscalls": syscalls});
        if default == "SCMP_ACT_ERRNO" && rng.below(2) == 0 {
            p["defaultErrnoRet"] = json!(*rng.pick(&[13u32, 38, 0]));
        }
        let archs: Vec<&str> = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
            .into_iter()
            .filter(|_| rng.below(2) == 0)
            .collect();
        p["architectures"] = json!(archs);
        p
    }

    fn random_data(rng: &mut Rng, p: &LinuxSeccomp) -> Data {
        let archs = [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, 0xc000_00b7];
        let arch = *rng.pick(&archs);
        let names: Vec<String> = p
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|e| e.names().clone())
            .collect();
        let abi = match (arch, rng.below(3)) {
            (AUDIT_ARCH_I386, _) => Arch::ScmpArchX86,
            (_, 0) => Arch::ScmpArchX32,
            _ => Arch::ScmpArchX86_64,
        };
        let bit = if abi == Arch::ScmpArchX32 {
            X32_SYSCALL_BIT
        } else {
            0
        };
        let nr = match rng.below(4) {
            0 => (rng.next() as u32 % 600) | bit,
            1 => rng.next() as u32,
            _ if !names.is_empty() => syscall_number(abi, rng.pick::<String>(&names)).unwrap_or(0),
            _ => 0,
        };
        let mut args = [0u64; 6];
        for a in &mut args {
            *a = match rng.below(4) {
                0 => rng.next(),
                _ => *rng.pick(VALUES),
            };
        }
        Data { nr, arch, args }
    }

    #[test]
    fn random_profiles_do_what_they_say() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut calls = 0;
        for round in 0..400 {
            let json = random_profile(&mut rng);
            let p = profile(json.clone());
            let insns = compiled(&p);
            for _ in 0..400 {
                let d = random_data(&mut rng, &p);
                let (got, _) = run(&insns, &d);
                let want = reference(&p, &d);
                assert_eq!(
                    got, want,
                    "round {round}: {d:x?} got {got:#x}, want {want:#x}\nprofile {json}"
                );
                calls += 1;
            }
        }
        assert_eq!(calls, 400 * 400);
    }

    // --- architectures -----------------------------------------------------

    #[test]
    fn architectures_the_profile_does_not_list_are_killed() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]
        }));
        let insns = compiled(&p);
        let at = |arch, nr| {
            run(
                &insns,
                &Data {
                    nr,
                    arch,
                    args: [0; 6],
                },
            )
            .0
        };
        assert_eq!(at(AUDIT_ARCH_X86_64, 39), RET_ERRNO | EPERM);
        assert_eq!(at(AUDIT_ARCH_X86_64, 110), RET_ALLOW);
        // i386 getpid (20) and x32 getpid: not listed, so killed, not
        // allowed by the x86_64 default.
        assert_eq!(at(AUDIT_ARCH_I386, 20), RET_KILL_PROCESS);
        assert_eq!(
            at(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39),
            RET_KILL_PROCESS
        );
        assert_eq!(at(AUDIT_ARCH_X86_64, u32::MAX), RET_KILL_PROCESS);
        assert_eq!(at(0xc000_00b7, 39), RET_KILL_PROCESS); // aarch64
        assert_eq!(at(0, 39), RET_KILL_PROCESS);

        // No architectures at all: the native one only, as runc.
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        let insns = compiled(&p);
        let at = |arch, nr| {
            run(
                &insns,
                &Data {
                    nr,
                    arch,
                    args: [0; 6],
                },
            )
            .0
        };
        assert_eq!(at(AUDIT_ARCH_X86_64, 39), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_I386, 20), RET_KILL_PROCESS);
        assert_eq!(
            at(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn listed_32_bit_abis_get_the_rules_by_their_own_numbers() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 13,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["getpid", "newfstatat", "fstatat64"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        }));
        let f = compile(&p).unwrap();
        assert_eq!(
            f.skipped,
            [
                "fstatat64 (SCMP_ARCH_X32)",
                "fstatat64 (SCMP_ARCH_X86_64)",
                "newfstatat (SCMP_ARCH_X86)"
            ]
        );
        let insns = compiled(&p);
        let at = |arch, nr, a0| {
            run(
                &insns,
                &Data {
                    nr,
                    arch,
                    args: [a0, 0, 0, 0, 0, 0],
                },
            )
            .0
        };
        let deny = RET_ERRNO | 13;
        // getpid: 39, 20 on i386, 0x40000027 on x32; 20 on x86_64 is writev.
        assert_eq!(at(AUDIT_ARCH_X86_64, 39, 0), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_I386, 20, 0), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39, 0), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_X86_64, 20, 0), deny);
        assert_eq!(at(AUDIT_ARCH_I386, 39, 0), deny); // mkdir on i386
                                                      // newfstatat 262, fstatat64 300 on i386, newfstatat on x32.
        assert_eq!(at(AUDIT_ARCH_X86_64, 262, 0), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_I386, 300, 0), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 262, 0), RET_ALLOW);
        // personality (135 / 136 on i386): 64-bit on x86_64, 32-bit on i386.
        assert_eq!(at(AUDIT_ARCH_X86_64, 135, 8), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_X86_64, 135, 0x1_0000_0008), deny);
        assert_eq!(at(AUDIT_ARCH_I386, 136, 8), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_I386, 136, 0xffff_ffff_0000_0008), RET_ALLOW);
        assert_eq!(at(AUDIT_ARCH_I386, 136, 9), deny);
        assert_eq!(
            at(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 135, 0x1_0000_0008),
            deny
        );
    }

    #[test]
    fn a_value_above_32_bits_never_matches_an_i386_argument() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
                 "args": [{"index": 1, "value": 0x1_0000_0005u64, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 6,
                 "args": [{"index": 1, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_LT"}]}
            ]
        }));
        let insns = compiled(&p);
        let at = |a1| {
            run(
                &insns,
                &Data {
                    nr: 20,
                    arch: AUDIT_ARCH_I386,
                    args: [0, a1, 0, 0, 0, 0],
                },
            )
            .0
        };
        // Every 32-bit value is below 2^32, none equals 0x1_0000_0005.
        assert_eq!(at(5), RET_ERRNO | 6);
        assert_eq!(at(0x1_0000_0005), RET_ERRNO | 6);
        assert_eq!(at(u64::MAX), RET_ERRNO | 6);
    }

    // --- actions, errnos, flags --------------------------------------------

    #[test]
    fn actions_map_to_the_kernel_values() {
        let cases = [
            ("SCMP_ACT_ALLOW", None, RET_ALLOW),
            ("SCMP_ACT_ERRNO", None, RET_ERRNO | EPERM),
            ("SCMP_ACT_ERRNO", Some(0), RET_ERRNO),
            ("SCMP_ACT_ERRNO", Some(4095), RET_ERRNO | 4095),
            ("SCMP_ACT_KILL", None, RET_KILL_THREAD),
            ("SCMP_ACT_KILL_THREAD", None, RET_KILL_THREAD),
            ("SCMP_ACT_KILL_PROCESS", None, RET_KILL_PROCESS),
            ("SCMP_ACT_TRAP", None, RET_TRAP),
            ("SCMP_ACT_TRACE", None, RET_TRACE | EPERM),
            ("SCMP_ACT_TRACE", Some(0xffff), RET_TRACE | 0xffff),
            ("SCMP_ACT_LOG", None, RET_LOG),
        ];
        for (action, errno, want) in cases {
            let mut e = json!({"names": ["getpid"], "action": action});
            if let Some(v) = errno {
                e["errnoRet"] = json!(v);
            }
            let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [e]}));
            let insns = compiled(&p);
            assert_eq!(
                run(&insns, &x86_64(39, [0; 6])).0,
                want,
                "{action} {errno:?}"
            );
            // The default action is the same mapping.
            let mut d = json!({"defaultAction": action});
            if let Some(v) = errno {
                d["defaultErrnoRet"] = json!(v);
            }
            let insns = compiled(&profile(d));
            assert_eq!(run(&insns, &x86_64(39, [0; 6])).0, want, "default {action}");
        }
    }

    #[test]
    fn default_errno_ret_is_honoured() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 13,
            "syscalls": [
                {"names": ["getpid", "openat2"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}
            ]
        }));
        let insns = compiled(&p);
        assert_eq!(
            run(&insns, &x86_64(nr64("kexec_load"), [0; 6])).0,
            RET_ERRNO | 13
        );
        // An entry's ERRNO without errnoRet is EPERM, not the default's.
        assert_eq!(
            run(&insns, &x86_64(nr64("getppid"), [0; 6])).0,
            RET_ERRNO | EPERM
        );
    }

    #[test]
    fn syscalls_newer_than_the_profile_fail_with_enosys_as_under_runc() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid", "openat2"], "action": "SCMP_ACT_ALLOW"}]
        }));
        let insns = compiled(&p);
        let openat2 = nr64("openat2");
        assert_eq!(run(&insns, &x86_64(openat2, [0; 6])).0, RET_ALLOW);
        assert_eq!(
            run(&insns, &x86_64(openat2 - 1, [0; 6])).0,
            RET_ERRNO | EPERM
        );
        assert_eq!(
            run(&insns, &x86_64(openat2 + 1, [0; 6])).0,
            RET_ERRNO | ENOSYS
        );
        assert_eq!(
            run(&insns, &x86_64(0x3fff_ffff, [0; 6])).0,
            RET_ERRNO | ENOSYS
        );
        // Not with a permissive default, nor when the default is ENOSYS.
        for d in [
            json!({"defaultAction": "SCMP_ACT_ALLOW"}),
            json!({"defaultAction": "SCMP_ACT_LOG"}),
            json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38}),
        ] {
            let mut d = d;
            d["syscalls"] = json!([{"names": ["getpid"], "action": "SCMP_ACT_KILL"}]);
            let p = profile(d.clone());
            let want = ret_of(p.default_action(), p.default_errno_ret());
            let insns = compiled(&p);
            assert_eq!(run(&insns, &x86_64(500, [0; 6])).0, want, "{d}");
        }
    }

    #[test]
    fn flags_pass_through() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
        }));
        assert_eq!(compile(&p).unwrap().flags, 2 | 4);
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC"]
        }));
        assert_eq!(compile(&p).unwrap().flags, 1);
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        assert_eq!(compile(&p).unwrap().flags, 0);
    }

    #[test]
    fn unknown_flags_actions_and_operators_are_refused_by_name_when_parsed() {
        for (v, name) in [
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}),
                "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_SOMETIMES"}),
                "SCMP_ACT_SOMETIMES",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
                    "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ODD"}]}]}),
                "SCMP_CMP_ODD",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}),
                "SCMP_ARCH_VAX",
            ),
        ] {
            let e = serde_json::from_value::<LinuxSeccomp>(v).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    // --- arguments and precedence ------------------------------------------

    #[test]
    fn arguments_compare_as_64_bit_values() {
        let big = 0x1_0000_0000u64;
        let ops = [
            ("SCMP_CMP_EQ", big + 5, None),
            ("SCMP_CMP_NE", big + 5, None),
            ("SCMP_CMP_LT", big + 5, None),
            ("SCMP_CMP_LE", big + 5, None),
            ("SCMP_CMP_GE", big + 5, None),
            ("SCMP_CMP_GT", big + 5, None),
            (
                "SCMP_CMP_MASKED_EQ",
                0xff00_0000_0000_00ff,
                Some(0x1200_0000_0000_0034u64),
            ),
        ];
        let probes = [
            0,
            5,
            big,
            big + 4,
            big + 5,
            big + 6,
            2 * big + 5,
            0xffff_ffff,
            u64::MAX,
            0x1200_0000_0000_0034,
            0x12ff_ffff_ffff_ff34,
            0x1300_0000_0000_0034,
            0x0000_0000_0000_0034,
        ];
        for (op, value, two) in ops {
            let mut a = json!({"index": 3, "value": value, "op": op});
            if let Some(t) = two {
                a["valueTwo"] = json!(t);
            }
            let p = profile(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "args": [a]}]
            }));
            let insns = compiled(&p);
            let arg: LinuxSeccompArg = serde_json::from_value(a).unwrap();
            for v in probes {
                let got = run(&insns, &x86_64(39, [0, 0, 0, v, 0, 0])).0 == RET_ERRNO | EPERM;
                assert_eq!(got, matches(v, &arg), "{op} {value:#x}: arg {v:#x}");
            }
        }
    }

    #[test]
    fn several_arguments_of_one_entry_must_all_hold() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 5, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_GE"}
            ]}]
        }));
        let insns = compiled(&p);
        let at = |a0, a5| run(&insns, &x86_64(39, [a0, 0, 0, 0, 0, a5])).0;
        assert_eq!(at(1, 0x1_0000_0000), RET_ERRNO | EPERM);
        assert_eq!(at(1, 0xffff_ffff), RET_ALLOW);
        assert_eq!(at(2, 0x1_0000_0000), RET_ALLOW);
    }

    #[test]
    fn the_same_argument_twice_in_one_entry_is_either_as_under_runc() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}
            ]}]
        }));
        let insns = compiled(&p);
        let at = |a0| run(&insns, &x86_64(39, [a0, 0, 0, 0, 0, 0])).0;
        assert_eq!(at(1), RET_ERRNO | EPERM);
        assert_eq!(at(2), RET_ERRNO | EPERM);
        assert_eq!(at(3), RET_ALLOW);
    }

    #[test]
    fn the_first_matching_entry_in_profile_order_decides() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11,
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getppid", "getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 12},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getppid"], "action": "SCMP_ACT_KILL"},
                // The default action, kept: it takes gettid(7) before the
                // entry after it.
                {"names": ["gettid"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 7, "op": "SCMP_CMP_EQ"}]},
                {"names": ["gettid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 14}
            ]
        }));
        let insns = compiled(&p);
        let at = |name: &str, a0| run(&insns, &x86_64(nr64(name), [a0, 0, 0, 0, 0, 0])).0;
        assert_eq!(at("getpid", 1), RET_ERRNO | 11);
        assert_eq!(at("getpid", 2), RET_ERRNO | 12); // the unconditional entry came first
        assert_eq!(at("getpid", 3), RET_ERRNO | 12);
        assert_eq!(at("getppid", 0), RET_ERRNO | 12);
        assert_eq!(at("gettid", 7), RET_ALLOW);
        assert_eq!(at("gettid", 8), RET_ERRNO | 14);
    }

    // --- size ------------------------------------------------------------------

    /// Every x86_64 syscall, each with two argument rules: long bodies, far
    /// jumps everywhere.
    fn every_syscall(args_per_entry: usize, entries_per_syscall: usize) -> serde_json::Value {
        let mut syscalls = Vec::new();
        for &(name, _) in syscalls::X86_64 {
            for e in 0..entries_per_syscall {
                let args: Vec<_> = (0..args_per_entry)
                    .map(|i| json!({"index": i, "value": 0x1_0000_0000u64 + e as u64, "op": "SCMP_CMP_GE"}))
                    .collect();
                syscalls.push(json!({"names": [name], "action": "SCMP_ACT_ALLOW", "args": args}));
            }
            syscalls.push(json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 + syscalls.len() % 100}));
        }
        json!({"defaultAction": "SCMP_ACT_KILL_PROCESS", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": syscalls})
    }

    #[test]
    fn a_profile_of_every_syscall_compiles_and_long_jumps_are_right() {
        let json = every_syscall(1, 1);
        let p = profile(json);
        let insns = compiled(&p);
        assert!(
            insns.len() > 255 * 3,
            "{} instructions: no long jumps",
            insns.len()
        );
        assert!(insns.iter().any(|i| i.code == BPF_JMP_JA && i.k > 255));
        let mut rng = Rng(7);
        let mut longest = 0;
        for &(_, nr) in syscalls::X86_64 {
            for _ in 0..4 {
                let mut args = [0u64; 6];
                args[0] = *rng.pick(VALUES);
                let d = x86_64(nr, args);
                let (got, steps) = run(&insns, &d);
                assert_eq!(got, reference(&p, &d), "{d:x?}");
                longest = longest.max(steps);
            }
        }
        // A binary search, not a chain: a few dozen instructions at most.
        assert!(longest < 40, "{longest} instructions run for one syscall");
    }

    #[test]
    fn a_program_over_the_kernel_limit_is_refused() {
        let p = profile(every_syscall(6, 2));
        match compile(&p) {
            Err(SeccompError::TooLong(n)) => assert!(n > MAX_PROGRAM_LEN),
            other => panic!("want TooLong, got {other:?}"),
        }
    }

    // --- refusals ----------------------------------------------------------------

    fn refused(v: serde_json::Value) -> String {
        compile(&profile(v.clone()))
            .map(|_| ())
            .expect_err(&format!("{v} compiled"))
            .to_string()
    }

    #[test]
    fn what_a_vm_cannot_honour_is_refused_by_name() {
        let e = refused(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(e.contains("defaultAction SCMP_ACT_NOTIFY"), "{e}");
        let e = refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["openat", "open"], "action": "SCMP_ACT_NOTIFY"}]}));
        assert!(e.contains("syscalls[1] (openat): SCMP_ACT_NOTIFY"), "{e}");
        let e =
            refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}));
        assert!(e.contains("listenerPath"), "{e}");
        let e = refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "x"}));
        assert!(e.contains("listenerMetadata"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let e = refused(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 4096}));
        assert!(e.contains("defaultErrnoRet: 4096"), "{e}");
        let e = refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}));
        assert!(
            e.contains("defaultErrnoRet is set, but the action SCMP_ACT_ALLOW"),
            "{e}"
        );
        let e = refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}));
        assert!(e.contains("syscalls[0] (mount).errnoRet: 70000"), "{e}");
        let e = refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mount"], "action": "SCMP_ACT_TRACE", "errnoRet": 70000}]}));
        assert!(e.contains("syscalls[0] (mount).errnoRet: 70000"), "{e}");
        let e = refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mount"], "action": "SCMP_ACT_KILL", "errnoRet": 1}]}));
        assert!(e.contains("syscalls[0] (mount).errnoRet is set"), "{e}");
        let e = refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}));
        assert!(e.contains("syscalls[0] (mount): args[1].index 6"), "{e}");
        let e = refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount", ""], "action": "SCMP_ACT_ERRNO"}]}));
        assert!(e.contains("syscalls[1].names[1] is empty"), "{e}");
    }

    #[test]
    fn unknown_names_are_skipped_and_reported() {
        let p = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
            "syscalls": [{"names": ["getpid", "no_such_syscall", "fstatat64"], "action": "SCMP_ACT_ALLOW"}]
        }));
        let f = compile(&p).unwrap();
        assert_eq!(
            f.skipped,
            [
                "fstatat64 (SCMP_ARCH_X86_64)",
                "no_such_syscall (SCMP_ARCH_X86_64)"
            ]
        );
        let insns = compiled(&p);
        assert_eq!(run(&insns, &x86_64(39, [0; 6])).0, RET_ALLOW);
    }

    // --- the tables ----------------------------------------------------------------

    #[test]
    fn the_tables_are_sorted_unique_and_plausible() {
        for (table, bit) in [
            (syscalls::X86_64, 0),
            (syscalls::I386, 0),
            (syscalls::X32, X32_SYSCALL_BIT),
        ] {
            assert!(table.len() > 300);
            assert!(
                table.windows(2).all(|w| w[0].0 < w[1].0),
                "not sorted by name"
            );
            let mut nrs: Vec<u32> = table.iter().map(|&(_, n)| n).collect();
            nrs.sort_unstable();
            nrs.dedup();
            assert_eq!(nrs.len(), table.len(), "a number twice");
            assert!(table.iter().all(|&(_, n)| n & X32_SYSCALL_BIT == bit));
        }
        assert_eq!(syscall_number(Arch::ScmpArchX86_64, "read"), Some(0));
        assert_eq!(syscall_number(Arch::ScmpArchNative, "getpid"), Some(39));
        assert_eq!(syscall_number(Arch::ScmpArchX86, "getpid"), Some(20));
        assert_eq!(
            syscall_number(Arch::ScmpArchX32, "getpid"),
            Some(X32_SYSCALL_BIT | 39)
        );
        assert_eq!(
            syscall_number(Arch::ScmpArchX32, "rt_sigaction"),
            Some(X32_SYSCALL_BIT | 512)
        );
        assert_eq!(syscall_number(Arch::ScmpArchAarch64, "read"), None);
    }

    #[test]
    fn the_committed_tables_are_what_the_headers_give() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if !std::path::Path::new("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").exists() {
            eprintln!("skipping: no kernel headers (apt-get install linux-libc-dev)");
            return;
        }
        let out = std::process::Command::new(root.join("scripts/gen-syscall-tables"))
            .arg("--check")
            .output()
            .expect("run scripts/gen-syscall-tables");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn containerds_default_profile_compiles_and_says_what_it_said() {
        let text = include_str!("../tests/data/containerd-default-seccomp.json");
        let p: LinuxSeccomp = serde_json::from_str(text).unwrap();
        let f = compile(&p).unwrap();
        let insns = compiled(&p);
        assert!(f.len() < MAX_PROGRAM_LEN);
        let mut rng = Rng(3);
        for _ in 0..20_000 {
            let d = random_data(&mut rng, &p);
            assert_eq!(run(&insns, &d).0, reference(&p, &d), "{d:x?}");
        }
        let at = |name: &str, a0| run(&insns, &x86_64(nr64(name), [a0, 0, 0, 0, 0, 0])).0;
        assert_eq!(at("getpid", 0), RET_ALLOW);
        assert_eq!(at("kexec_load", 0), RET_ERRNO | EPERM);
        assert_eq!(at("mount", 0), RET_ERRNO | EPERM);
        assert_eq!(at("personality", 0xffff_ffff), RET_ALLOW);
        assert_eq!(at("personality", 0x1_ffff_ffff), RET_ERRNO | EPERM);
        assert_eq!(at("clone3", 0), RET_ERRNO | ENOSYS);
    }
}
