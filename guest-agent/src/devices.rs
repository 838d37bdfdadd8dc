//! The container's device policy (`linux.resources.devices`) as a cgroup-v2
//! device program.
//!
//! The guest's cgroups are v2, where device access is decided by an eBPF
//! program of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup
//! ([`crate::cgroup::Cgroup::restrict_devices`]). The kernel runs it on
//! every open and mknod of a device node by a process of the cgroup with
//! the device's type, numbers and the access asked (any of mknod, read,
//! write at once); it answers 1 (allow) or 0 (deny).
//!
//! Semantics, as runc gives them on cgroup v2: the rules are read in order
//! and, for each access bit asked, the last rule that matches the device and
//! names that bit decides it; an access is allowed only if every bit asked
//! is; with no matching rule, denied. containerd's default list starts with
//! "deny all", which makes that explicit; the host appends runc's
//! always-allowed devices (`/dev/null`, ...). Where runc's cgroup-v1
//! emulation ignores a deny rule that would punch a hole into an earlier
//! wildcard allow, this policy honours it (it is the stricter reading).
//!
//! To every policy the agent appends a deny of reading and writing its own
//! virtio ports ([`agent_port_rules`]), so no container — root, with
//! CAP_MKNOD, or with an "allow all" rule — can open the channel to the
//! host. Making a node for them stays as the policy says (runc's allows
//! mknod of any device): a node that cannot be opened is harmless.
//!
//! [`program`] compiles the rules to instructions; [`allows`] is the same
//! policy written plainly, and the tests check one against the other
//! through a small interpreter of the instructions the compiler emits.

use std::path::Path;

use mu2_protocol::{DeviceAccess, DeviceKind, DeviceRule};

/// `bpf_cgroup_dev_ctx.access_type`: the device type in the low 16 bits,
/// the access bits in the high 16 (include/uapi/linux/bpf.h).
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;

/// One eBPF instruction (`struct bpf_insn`): opcode, destination register
/// in the low nibble and source register in the high nibble of `regs`,
/// offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used here: class | operation | source (include/uapi/linux/bpf.h).
const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_K: u8 = 0xb4;
const ALU32_MOV_X: u8 = 0xbc;
const JMP_JA: u8 = 0x05;
const JMP_EXIT: u8 = 0x95;
const JMP32_JEQ_K: u8 = 0x16;
const JMP32_JNE_K: u8 = 0x56;

// Registers: r1 holds the context on entry and is reused as scratch once
// it is read; r2 type, r3 access, r4 major, r5 minor; r0 the verdict.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// Instructions with forward jumps to labels, resolved at the end.
struct Asm {
    insns: Vec<BpfInsn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }
    fn emit(&mut self, i: BpfInsn) {
        self.insns.push(i);
    }
    fn jump(&mut self, code: u8, dst: u8, imm: i32, label: usize) {
        self.fixups.push((self.insns.len(), label));
        self.insns.push(insn(code, dst, 0, 0, imm));
    }
    fn verdict(&mut self, allow: bool) {
        self.emit(insn(ALU32_MOV_K, R0, 0, 0, i32::from(allow)));
        self.emit(insn(JMP_EXIT, 0, 0, 0, 0));
    }
    fn finish(mut self) -> Vec<BpfInsn> {
        for (at, label) in self.fixups {
            let target = self.labels[label].expect("every label is bound");
            // Offsets count from the next instruction; the rule count bound
            // (protocol::MAX_DEVICE_RULES) keeps them far within i16.
            self.insns[at].off = (target - at - 1) as i16;
        }
        self.insns
    }
}

fn has(access: DeviceAccess, bit: u32) -> bool {
    match bit {
        ACC_MKNOD => access.mknod,
        ACC_READ => access.read,
        ACC_WRITE => access.write,
        _ => false,
    }
}

fn kind_code(kind: DeviceKind) -> Option<u32> {
    match kind {
        DeviceKind::All => None,
        DeviceKind::Char => Some(DEV_CHAR),
        DeviceKind::Block => Some(DEV_BLOCK),
    }
}

fn matches(rule: &DeviceRule, dev_type: u32, major: u32, minor: u32) -> bool {
    kind_code(rule.kind).is_none_or(|k| k == dev_type)
        && rule.major.is_none_or(|m| m == major)
        && rule.minor.is_none_or(|m| m == minor)
}

/// The policy's answer for one access: for each bit asked, the last
/// matching rule naming it decides; no such rule denies.
pub fn allows(rules: &[DeviceRule], dev_type: u32, major: u32, minor: u32, access: u32) -> bool {
    [ACC_MKNOD, ACC_READ, ACC_WRITE]
        .into_iter()
        .filter(|bit| access & bit != 0)
        .all(|bit| {
            rules
                .iter()
                .rev()
                .find(|r| has(r.access, bit) && matches(r, dev_type, major, minor))
                .is_some_and(|r| r.allow)
        })
}

/// Compiles the rules into a cgroup device program.
pub fn program(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut a = Asm {
        insns: Vec::new(),
        labels: Vec::new(),
        fixups: Vec::new(),
    };
    a.emit(insn(LDX_MEM_W, R2, R1, 0, 0));
    a.emit(insn(ALU32_AND_K, R2, 0, 0, 0xffff));
    a.emit(insn(LDX_MEM_W, R3, R1, 0, 0));
    a.emit(insn(ALU32_RSH_K, R3, 0, 0, 16));
    a.emit(insn(LDX_MEM_W, R4, R1, 4, 0));
    a.emit(insn(LDX_MEM_W, R5, R1, 8, 0));
    for bit in [ACC_MKNOD, ACC_READ, ACC_WRITE] {
        // This bit's section: skipped when the bit is not asked; ends in
        // a deny, or falls through to the next section when allowed.
        let allowed = a.label();
        a.emit(insn(ALU32_MOV_X, R1, R3, 0, 0));
        a.emit(insn(ALU32_AND_K, R1, 0, 0, bit as i32));
        a.jump(JMP32_JEQ_K, R1, 0, allowed);
        let mut decided = false;
        for rule in rules.iter().rev().filter(|r| has(r.access, bit)) {
            let next = a.label();
            if let Some(k) = kind_code(rule.kind) {
                a.jump(JMP32_JNE_K, R2, k as i32, next);
            }
            if let Some(m) = rule.major {
                a.jump(JMP32_JNE_K, R4, m as i32, next);
            }
            if let Some(m) = rule.minor {
                a.jump(JMP32_JNE_K, R5, m as i32, next);
            }
            if rule.allow {
                a.jump(JMP_JA, 0, 0, allowed);
            } else {
                a.verdict(false);
            }
            a.bind(next);
            // A rule that matches every device decides for all earlier ones.
            if kind_code(rule.kind).is_none() && rule.major.is_none() && rule.minor.is_none() {
                decided = true;
                break;
            }
        }
        if !decided {
            a.verdict(false);
        }
        a.bind(allowed);
    }
    a.verdict(true);
    a.finish()
}

/// Rules denying reads and writes of the character devices of the agent's
/// virtio ports (the majors in `SYS/*/dev`, normally one), which the
/// container must never open.
pub fn agent_port_rules(sys_ports: &Path) -> std::io::Result<Vec<DeviceRule>> {
    let mut majors = Vec::new();
    for e in std::fs::read_dir(sys_ports)? {
        let dev = std::fs::read_to_string(e?.path().join("dev"))?;
        let major = dev
            .trim()
            .split_once(':')
            .and_then(|(m, _)| m.parse::<u32>().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{dev:?} is not major:minor"),
                )
            })?;
        if !majors.contains(&major) {
            majors.push(major);
        }
    }
    if majors.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no virtio port in {}", sys_ports.display()),
        ));
    }
    Ok(majors
        .into_iter()
        .map(|major| DeviceRule {
            allow: false,
            kind: DeviceKind::Char,
            major: Some(major),
            minor: None,
            access: DeviceAccess {
                read: true,
                write: true,
                mknod: false,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program of the instructions [`program`] emits on one context.
    fn run(prog: &[BpfInsn], access_type: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access_type, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "no exit");
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let jump = |cond: bool, pc: &mut usize| {
                if cond {
                    *pc = (*pc as i64 + 1 + i64::from(i.off)) as usize;
                } else {
                    *pc += 1;
                }
            };
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                    pc += 1;
                }
                ALU32_AND_K => {
                    r[dst] = u64::from(r[dst] as u32 & i.imm as u32);
                    pc += 1;
                }
                ALU32_RSH_K => {
                    r[dst] = u64::from((r[dst] as u32) >> i.imm);
                    pc += 1;
                }
                ALU32_MOV_K => {
                    r[dst] = u64::from(i.imm as u32);
                    pc += 1;
                }
                ALU32_MOV_X => {
                    r[dst] = u64::from(r[src] as u32);
                    pc += 1;
                }
                JMP_JA => jump(true, &mut pc),
                JMP32_JEQ_K => jump(r[dst] as u32 == i.imm as u32, &mut pc),
                JMP32_JNE_K => jump(r[dst] as u32 != i.imm as u32, &mut pc),
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        kind: DeviceKind,
        major: Option<u32>,
        minor: Option<u32>,
        acc: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: DeviceAccess {
                read: acc.contains('r'),
                write: acc.contains('w'),
                mknod: acc.contains('m'),
            },
        }
    }

    /// containerd's default list, runc's additions, and the agent's port.
    fn default_policy() -> Vec<DeviceRule> {
        use DeviceKind::*;
        vec![
            rule(false, All, None, None, "rwm"),
            rule(true, Char, None, None, "m"),
            rule(true, Block, None, None, "m"),
            rule(true, Char, Some(1), Some(3), "rwm"),
            rule(true, Char, Some(1), Some(9), "rwm"),
            rule(true, Char, Some(136), None, "rwm"),
            rule(true, Char, Some(5), Some(2), "rwm"),
            rule(false, Char, Some(252), None, "rw"),
        ]
    }

    fn ask(dev: u32, acc: u32) -> u32 {
        dev | (acc << 16)
    }

    #[test]
    fn the_default_policy_allows_null_and_denies_the_rest() {
        let p = default_policy();
        let prog = program(&p);
        let rw = ACC_READ | ACC_WRITE;
        for (dev, major, minor, acc, want) in [
            (DEV_CHAR, 1, 3, rw, true),        // /dev/null
            (DEV_CHAR, 136, 7, rw, true),      // a pty
            (DEV_CHAR, 1, 1, ACC_READ, false), // /dev/mem
            (DEV_CHAR, 252, 1, rw, false),     // the agent's port
            (DEV_CHAR, 252, 1, ACC_READ, false),
            (DEV_CHAR, 252, 1, ACC_MKNOD, true), // a node, never opened
            (DEV_CHAR, 10, 229, ACC_MKNOD, true), // mknod of anything else
            (DEV_CHAR, 10, 229, ACC_READ, false),
            (DEV_BLOCK, 8, 0, ACC_MKNOD | ACC_READ, false),
            (DEV_BLOCK, 8, 0, ACC_MKNOD, true),
        ] {
            assert_eq!(
                allows(&p, dev, major, minor, acc),
                want,
                "{dev} {major}:{minor} {acc}"
            );
            assert_eq!(run(&prog, ask(dev, acc), major, minor), u64::from(want));
        }
    }

    #[test]
    fn an_allow_all_policy_still_denies_the_agents_port() {
        let p = vec![
            rule(true, DeviceKind::All, None, None, "rwm"),
            rule(false, DeviceKind::Char, Some(252), None, "rwm"),
        ];
        let prog = program(&p);
        assert_eq!(run(&prog, ask(DEV_CHAR, ACC_READ), 1, 1), 1);
        assert_eq!(run(&prog, ask(DEV_CHAR, ACC_READ | ACC_WRITE), 252, 3), 0);
        assert_eq!(run(&prog, ask(DEV_BLOCK, ACC_WRITE), 252, 3), 1);
    }

    #[test]
    fn each_access_bit_is_decided_by_the_last_rule_naming_it() {
        use DeviceKind::*;
        let p = vec![
            rule(true, Char, Some(1), Some(3), "rwm"),
            rule(false, Char, Some(1), Some(3), "w"),
        ];
        assert!(allows(&p, DEV_CHAR, 1, 3, ACC_READ));
        assert!(!allows(&p, DEV_CHAR, 1, 3, ACC_WRITE));
        assert!(!allows(&p, DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE));
        // An empty list denies everything.
        assert!(!allows(&[], DEV_CHAR, 1, 3, ACC_READ));
        assert_eq!(run(&program(&[]), ask(DEV_CHAR, ACC_READ), 1, 3), 0);
    }

    #[test]
    fn the_program_agrees_with_the_policy_on_many_requests() {
        use DeviceKind::*;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let kinds = [All, Char, Block];
        for _ in 0..200 {
            let rules: Vec<DeviceRule> = (0..next(8))
                .map(|_| {
                    let acc = ["r", "w", "m", "rw", "rwm", "wm", ""][next(7) as usize];
                    rule(
                        next(2) == 1,
                        kinds[next(3) as usize],
                        (next(3) > 0).then(|| next(4) as u32),
                        (next(3) > 0).then(|| next(4) as u32),
                        acc,
                    )
                })
                .collect();
            let prog = program(&rules);
            for dev in [DEV_CHAR, DEV_BLOCK] {
                for acc in 1..8 {
                    for major in 0..4 {
                        for minor in 0..4 {
                            assert_eq!(
                                run(&prog, ask(dev, acc), major, minor),
                                u64::from(allows(&rules, dev, major, minor, acc)),
                                "{rules:?} {dev} {major}:{minor} {acc}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn large_device_numbers_compare_as_32_bits() {
        let p = vec![rule(
            true,
            DeviceKind::Char,
            Some(0xffff_fff0),
            Some(u32::MAX),
            "r",
        )];
        let prog = program(&p);
        assert_eq!(
            run(&prog, ask(DEV_CHAR, ACC_READ), 0xffff_fff0, u32::MAX),
            1
        );
        assert_eq!(run(&prog, ask(DEV_CHAR, ACC_READ), 0xffff_fff0, 0), 0);
    }

    #[test]
    fn the_agents_ports_are_found_by_their_major() {
        let d = std::env::temp_dir().join(format!("mu2-vports-{}", std::process::id()));
        for (name, dev) in [("vport0p1", "252:1\n"), ("vport0p2", "252:2\n")] {
            std::fs::create_dir_all(d.join(name)).unwrap();
            std::fs::write(d.join(name).join("dev"), dev).unwrap();
        }
        let rules = agent_port_rules(&d).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].major, Some(252));
        assert!(!rules[0].allow);
        assert!(rules[0].access.read && rules[0].access.write && !rules[0].access.mknod);
        std::fs::remove_dir_all(&d).unwrap();
        assert!(agent_port_rules(&d).is_err());
    }

    /// The host kernel's verifier accepts the program (needs root).
    #[test]
    fn the_kernel_loads_the_program() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: loading a BPF program needs root");
            return;
        }
        let prog = program(&default_policy());
        crate::sys::bpf_load_cgroup_device(&prog).unwrap();
    }
}
