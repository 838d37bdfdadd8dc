//! `linux.resources` as the VM's shape: guest RAM from the memory limit,
//! vCPUs from the CPU quota or cpuset, and the limits the agent applies to
//! the container's cgroup inside the guest.
//!
//! Values are checked as runc (and the kernel under it) checks them: a
//! negative limit other than -1 ("unlimited") is refused, a CFS period or
//! quota outside what the kernel takes is refused, a cpuset naming a CPU
//! above what Linux can have is refused. mu2 adds its own floors and caps:
//! a memory limit below [`MIN_MEMORY_LIMIT`] is refused (no process could
//! start under it), and vCPUs are capped at the host's CPUs (as Kata does:
//! more vCPUs than host CPUs only adds contention).

use mu2_microvm::spec::{DEFAULT_MEMORY_MIB, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use oci_spec::runtime::{LinuxCpu, LinuxResources};

use crate::error::{field, BundleError};
use crate::GUEST_OVERHEAD_MIB;

/// Smallest memory limit accepted: below it not even a shell starts in the
/// container's cgroup (Docker refuses below 6 MiB for the same reason).
pub const MIN_MEMORY_LIMIT: i64 = 8 << 20;
/// The kernel's CFS bounds: a period of 1 ms to 1 s, a quota of at least
/// 1 ms.
pub const CFS_PERIOD_RANGE: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
pub const MIN_CFS_QUOTA: i64 = 1_000;
/// The CFS period the kernel uses when none is set.
pub const DEFAULT_CFS_PERIOD: u64 = 100_000;
/// Highest CPU number a cpuset may name (x86_64's NR_CPUS is at most 8192),
/// and highest memory node (MAX_NUMNODES is at most 1024).
pub const MAX_CPU_ID: u32 = 8191;
pub const MAX_NODE_ID: u32 = 1023;

/// What the resources make of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub memory_mib: u32,
    pub memory_limit: Option<u64>,
    pub vcpus: u32,
    pub pids_limit: Option<u64>,
}

pub(crate) fn shape(r: Option<&LinuxResources>, host_cpus: u32) -> Result<Shape, BundleError> {
    let m = r.and_then(|r| r.memory().as_ref());
    let limit = memory_limit(m.and_then(|m| m.limit()))?;
    for (name, v) in [
        ("reservation", m.and_then(|m| m.reservation())),
        ("swap", m.and_then(|m| m.swap())),
        ("kernel", m.and_then(|m| m.kernel())),
        ("kernelTCP", m.and_then(|m| m.kernel_tcp())),
    ] {
        not_negative(&format!("linux.resources.memory.{name}"), v)?;
    }
    if let (Some(l), Some(swap)) = (limit, m.and_then(|m| m.swap())) {
        // runc: swap is memory+swap, so it cannot be below the memory.
        if swap > 0 && (swap as u64) < l {
            return Err(field(
                "linux.resources.memory.swap",
                format!("{swap} is below the memory limit {l} (swap counts memory plus swap)"),
            ));
        }
    }
    if let Some(s) = m.and_then(|m| m.swappiness()) {
        if s > 100 {
            return Err(field(
                "linux.resources.memory.swappiness",
                format!("{s} is above 100"),
            ));
        }
    }
    let memory_mib = match limit {
        None => DEFAULT_MEMORY_MIB,
        Some(l) => {
            let total = l.div_ceil(1 << 20) + u64::from(GUEST_OVERHEAD_MIB);
            if total > u64::from(MAX_MEMORY_MIB) {
                return Err(field(
                    "linux.resources.memory.limit",
                    format!(
                        "{l} bytes needs {total} MiB of guest RAM, more than the \
                         {MAX_MEMORY_MIB} MiB a VM may have"
                    ),
                ));
            }
            (total as u32).max(MIN_MEMORY_MIB)
        }
    };
    let pids_limit = match r.and_then(|r| r.pids().as_ref()).map(|p| p.limit()) {
        None | Some(0) | Some(-1) => None,
        Some(l) if l < 0 => {
            return Err(field(
                "linux.resources.pids.limit",
                format!("{l} is negative (only -1, unlimited, is allowed)"),
            ))
        }
        Some(l) => Some(l as u64),
    };
    Ok(Shape {
        memory_mib,
        memory_limit: limit,
        vcpus: vcpus(r.and_then(|r| r.cpu().as_ref()), host_cpus)?,
        pids_limit,
    })
}

fn not_negative(name: &str, v: Option<i64>) -> Result<(), BundleError> {
    match v {
        Some(v) if v < -1 => Err(field(
            name,
            format!("{v} is negative (only -1, unlimited, is allowed)"),
        )),
        _ => Ok(()),
    }
}

/// The memory limit in bytes; `None` when unset, 0 or -1 (unlimited).
fn memory_limit(limit: Option<i64>) -> Result<Option<u64>, BundleError> {
    const FIELD: &str = "linux.resources.memory.limit";
    match limit {
        None | Some(0) | Some(-1) => Ok(None),
        Some(l) if l < 0 => Err(field(
            FIELD,
            format!("{l} is negative (only -1, unlimited, is allowed)"),
        )),
        Some(l) if l < MIN_MEMORY_LIMIT => Err(field(
            FIELD,
            format!(
                "{l} bytes is below the minimum of {} MiB",
                MIN_MEMORY_LIMIT >> 20
            ),
        )),
        Some(l) => Ok(Some(l as u64)),
    }
}

/// vCPUs: the quota rounded up to whole CPUs, or the cpuset's size, the
/// smaller of both when both are set; 1 without either; never more than
/// the host has or a VM may have.
fn vcpus(cpu: Option<&LinuxCpu>, host_cpus: u32) -> Result<u32, BundleError> {
    let Some(cpu) = cpu else { return Ok(1) };
    let period = match cpu.period() {
        None | Some(0) => DEFAULT_CFS_PERIOD,
        Some(p) if CFS_PERIOD_RANGE.contains(&p) => p,
        Some(p) => {
            return Err(field(
                "linux.resources.cpu.period",
                format!(
                    "{p} µs is outside {}..={} µs",
                    CFS_PERIOD_RANGE.start(),
                    CFS_PERIOD_RANGE.end()
                ),
            ))
        }
    };
    let from_quota = match cpu.quota() {
        None | Some(0) | Some(-1) => None,
        Some(q) if q < 0 => {
            return Err(field(
                "linux.resources.cpu.quota",
                format!("{q} is negative (only -1, unlimited, is allowed)"),
            ))
        }
        Some(q) if q < MIN_CFS_QUOTA => {
            return Err(field(
                "linux.resources.cpu.quota",
                format!("{q} µs is below the kernel's minimum of {MIN_CFS_QUOTA} µs"),
            ))
        }
        Some(q) => Some((q as u64).div_ceil(period)),
    };
    let from_cpuset = match cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(list) => Some(
            id_list_count(list, MAX_CPU_ID)
                .map_err(|reason| field("linux.resources.cpu.cpus", reason))?,
        ),
    };
    if let Some(mems) = cpu.mems().as_deref().filter(|c| !c.is_empty()) {
        id_list_count(mems, MAX_NODE_ID)
            .map_err(|reason| field("linux.resources.cpu.mems", reason))?;
    }
    let n = match (from_quota, from_cpuset) {
        (None, None) => 1,
        (Some(q), None) => q,
        (None, Some(c)) => u64::from(c),
        (Some(q), Some(c)) => q.min(u64::from(c)),
    };
    let cap = host_cpus.clamp(1, MAX_VCPUS);
    Ok(n.clamp(1, u64::from(cap)) as u32)
}

/// Number of ids in a list such as "0-2,5" (cpuset.cpus, cpuset.mems
/// syntax), each at most `max`.
pub(crate) fn id_list_count(list: &str, max: u32) -> Result<u32, String> {
    let id = |s: &str| -> Result<u32, String> {
        let s = s.trim();
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} in {list:?} is not a number"))?;
        if n > max {
            return Err(format!("{n} in {list:?} is above {max}"));
        }
        Ok(n)
    };
    let mut n = 0u32;
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (id(a)?, id(b)?);
                if b < a {
                    return Err(format!("range {a}-{b} in {list:?} runs backwards"));
                }
                n += b - a + 1;
            }
            None => {
                id(part)?;
                n += 1;
            }
        }
        if n > max + 1 {
            return Err(format!("{list:?} names more than {} ids", max + 1));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(json: &str) -> LinuxCpu {
        serde_json::from_str(json).unwrap()
    }

    fn vcpus_ok(cpu: Option<&LinuxCpu>, host_cpus: u32) -> u32 {
        vcpus(cpu, host_cpus).unwrap()
    }

    #[test]
    fn id_lists_count_and_bound() {
        assert_eq!(id_list_count("0-2,5", MAX_CPU_ID), Ok(4));
        assert_eq!(id_list_count("3", MAX_CPU_ID), Ok(1));
        assert_eq!(id_list_count(" 1 , 3-4", MAX_CPU_ID), Ok(3));
        assert_eq!(id_list_count("0-8191", MAX_CPU_ID), Ok(8192));
        for bad in ["2-1", "x", "", "1,", "0-4294967295", "8192", "-1", "1-2-3"] {
            assert!(id_list_count(bad, MAX_CPU_ID).is_err(), "{bad}");
        }
        // Overlapping ranges cannot add up past the bound.
        let many = ["0-8191"; 3].join(",");
        assert!(id_list_count(&many, MAX_CPU_ID).is_err());
    }

    #[test]
    fn vcpus_follow_the_quota_or_the_cpuset_within_the_host() {
        let q = cpu(r#"{"quota": 150000, "period": 100000}"#);
        assert_eq!(vcpus_ok(Some(&q), 8), 2);
        // A quota without a period uses the kernel's default period.
        assert_eq!(vcpus_ok(Some(&cpu(r#"{"quota": 250000}"#)), 8), 3);
        assert_eq!(vcpus_ok(Some(&cpu(r#"{"cpus": "0-3"}"#)), 8), 4);
        assert_eq!(
            vcpus_ok(Some(&cpu(r#"{"quota": 400000, "cpus": "0-1"}"#)), 8),
            2
        );
        assert_eq!(vcpus_ok(Some(&cpu(r#"{"quota": -1}"#)), 8), 1);
        assert_eq!(vcpus_ok(None, 8), 1);
        // 64 CPUs of quota on a 2-CPU host: 2 vCPUs.
        let big = cpu(r#"{"quota": 6400000, "period": 100000}"#);
        assert_eq!(vcpus_ok(Some(&big), 2), 2);
        assert_eq!(vcpus_ok(Some(&big), 1000), MAX_VCPUS);
        let huge = cpu(&format!(r#"{{"quota": {}, "period": 1000}}"#, i64::MAX));
        assert_eq!(vcpus_ok(Some(&huge), 2), 2);
    }

    #[test]
    fn bad_cpu_values_name_their_field() {
        for (json, name) in [
            (r#"{"quota": -5}"#, "linux.resources.cpu.quota"),
            (r#"{"quota": 10}"#, "linux.resources.cpu.quota"),
            (
                r#"{"quota": 100000, "period": 10}"#,
                "linux.resources.cpu.period",
            ),
            (r#"{"period": 2000000}"#, "linux.resources.cpu.period"),
            (r#"{"cpus": "0-4294967295"}"#, "linux.resources.cpu.cpus"),
            (r#"{"cpus": "3-1"}"#, "linux.resources.cpu.cpus"),
            (r#"{"mems": "0-70000"}"#, "linux.resources.cpu.mems"),
        ] {
            match vcpus(Some(&cpu(json)), 2) {
                Err(BundleError::Field { field, .. }) => assert_eq!(field, name, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn memory_limits_as_runc_takes_them() {
        assert_eq!(memory_limit(None).unwrap(), None);
        assert_eq!(memory_limit(Some(0)).unwrap(), None);
        assert_eq!(memory_limit(Some(-1)).unwrap(), None);
        assert_eq!(memory_limit(Some(64 << 20)).unwrap(), Some(64 << 20));
        assert_eq!(
            memory_limit(Some(MIN_MEMORY_LIMIT)).unwrap(),
            Some(MIN_MEMORY_LIMIT as u64)
        );
        for bad in [-5, -2, i64::MIN, 1, 4 << 20, MIN_MEMORY_LIMIT - 1] {
            let e = memory_limit(Some(bad)).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("invalid linux.resources.memory.limit: "),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_smallest_limit_still_gets_a_guest_that_boots() {
        let r: LinuxResources =
            serde_json::from_str(&format!(r#"{{"memory": {{"limit": {MIN_MEMORY_LIMIT}}}}}"#))
                .unwrap();
        let s = shape(Some(&r), 2).unwrap();
        assert!(s.memory_mib >= MIN_MEMORY_MIB, "{s:?}");
        assert_eq!(s.memory_limit, Some(MIN_MEMORY_LIMIT as u64));
    }
}
