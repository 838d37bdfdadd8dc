//! containerd's Update (and CRI's UpdateContainerResources): which of the new
//! `LinuxResources` a running VM can take.
//!
//! A VM's RAM and vCPUs are fixed when it boots. What can change: the
//! container's memory limit inside the guest (its cgroup's `memory.max`, up
//! to what the guest RAM holds), its pids limit, and the VMM's CPU time on
//! the host (quota/period, and the weight from `shares`). Everything else
//! that is set — swap other than none, reservations, cpusets, block I/O,
//! hugepages, network, RDMA, devices, unified keys — is refused by name
//! rather than silently dropped.

use mu2_protocol::{Limit, Update};
use oci_spec::runtime::LinuxResources;

use crate::{BundleError, GUEST_OVERHEAD_MIB};

/// What an Update changes, for the shim to apply to every VM of a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceChange {
    /// Sent to each guest's agent.
    pub limits: Update,
    /// The VMM's CPU cap: `Some(None)` restores the boot-time cap, `None`
    /// leaves it.
    pub cpu_quota: Option<Option<(u64, u64)>>,
    /// The VMM's CPU weight as cgroup v1 shares (2..=262144).
    pub cpu_shares: Option<u64>,
}

fn refuse(field: &str, why: &str) -> BundleError {
    BundleError::Update(format!("{field}: {why}"))
}

/// Maps containerd's Update resources (OCI `LinuxResources` as JSON) for a
/// VM booted with `memory_mib` MiB of RAM and `vcpus` vCPUs.
pub fn update(json: &[u8], memory_mib: u32, vcpus: u32) -> Result<ResourceChange, BundleError> {
    let r: LinuxResources = serde_json::from_slice(json)
        .map_err(|e| BundleError::Update(format!("malformed resources: {e}")))?;
    let mut change = ResourceChange::default();
    if let Some(m) = r.memory() {
        let room = u64::from(memory_mib.saturating_sub(GUEST_OVERHEAD_MIB)) << 20;
        change.limits.memory_bytes = match m.limit() {
            None => None,
            Some(-1) => Some(Limit::Unlimited),
            Some(l) if l > 0 && l as u64 <= room => Some(Limit::Amount(l as u64)),
            Some(l) if l > 0 => {
                return Err(refuse(
                    "memory.limit",
                    &format!(
                        "{l} bytes is more than the {room} bytes this VM holds for its container ({memory_mib} MiB of RAM, fixed at boot)"
                    ),
                ))
            }
            Some(l) => return Err(refuse("memory.limit", &format!("{l} is not a limit"))),
        };
        match (m.swap(), m.limit()) {
            (None | Some(-1), _) => {}
            (Some(s), Some(l)) if s == l => {}
            (Some(_), _) => return Err(refuse("memory.swap", "the guest has no swap")),
        }
        if m.reservation().is_some_and(|v| v != 0) {
            return Err(refuse("memory.reservation", "not supported in a VM"));
        }
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            return Err(refuse("memory.kernel", "not supported in a VM"));
        }
        if m.swappiness().is_some() || m.disable_oom_killer().is_some() {
            return Err(refuse(
                "memory.swappiness / memory.disableOOMKiller",
                "not supported in a VM",
            ));
        }
    }
    if let Some(c) = r.cpu() {
        match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                change.cpu_quota = Some(Some((q as u64, p)));
            }
            (Some(q), _) if q > 0 => {
                change.cpu_quota = Some(Some((q as u64, 100_000)));
            }
            (Some(-1), _) => change.cpu_quota = Some(None),
            (Some(0) | None, _) => {}
            (Some(q), _) => return Err(refuse("cpu.quota", &format!("{q} is not a quota"))),
        }
        if let Some(s) = c.shares().filter(|&s| s > 0) {
            change.cpu_shares = Some(s.clamp(2, 262_144));
        }
        if c.cpus().as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(refuse(
                "cpu.cpus",
                &format!("a VM's {vcpus} vCPUs are fixed at boot"),
            ));
        }
        if c.mems().as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(refuse("cpu.mems", "not supported in a VM"));
        }
        if c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0)
        {
            return Err(refuse("cpu.realtimeRuntime", "not supported in a VM"));
        }
    }
    if let Some(p) = r.pids() {
        change.limits.pids = Some(match p.limit() {
            l if l > 0 => Limit::Amount(l as u64),
            _ => Limit::Unlimited,
        });
    }
    if r.block_io().is_some() {
        return Err(refuse("blockIO", "not supported in a VM"));
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(refuse("hugepageLimits", "not supported in a VM"));
    }
    if r.network().is_some() {
        return Err(refuse("network", "not supported in a VM"));
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(refuse("rdma", "not supported in a VM"));
    }
    if r.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(refuse("devices", "cannot change on a running VM"));
    }
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(refuse("unified", "not supported in a VM"));
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(json: &str) -> Result<ResourceChange, BundleError> {
        update(json.as_bytes(), 256, 1)
    }

    #[test]
    fn memory_up_to_the_guest_ram_and_pids_go_to_the_guest() {
        let c = up(r#"{"memory": {"limit": 67108864}, "pids": {"limit": 50}}"#).unwrap();
        assert_eq!(c.limits.memory_bytes, Some(Limit::Amount(64 << 20)));
        assert_eq!(c.limits.pids, Some(Limit::Amount(50)));
        assert_eq!(c.cpu_quota, None);
        let c = up(r#"{"memory": {"limit": -1, "swap": -1}}"#).unwrap();
        assert_eq!(c.limits.memory_bytes, Some(Limit::Unlimited));
        let e = up(r#"{"memory": {"limit": 1073741824}}"#).unwrap_err();
        assert!(e.to_string().contains("memory.limit"), "{e}");
        assert!(up(r#"{"memory": {"limit": -5}}"#).is_err());
        assert!(up(r#"{"memory": {"limit": 67108864, "swap": 134217728}}"#).is_err());
    }

    #[test]
    fn cpu_goes_to_the_vmm_and_cpusets_are_refused() {
        let c = up(r#"{"cpu": {"quota": 50000, "period": 100000, "shares": 512}}"#).unwrap();
        assert_eq!(c.cpu_quota, Some(Some((50_000, 100_000))));
        assert_eq!(c.cpu_shares, Some(512));
        let c = up(r#"{"cpu": {"quota": -1}}"#).unwrap();
        assert_eq!(c.cpu_quota, Some(None));
        let c = up(r#"{"cpu": {"shares": 2, "cpus": ""}}"#).unwrap();
        assert_eq!(c.cpu_quota, None);
        let e = up(r#"{"cpu": {"cpus": "0-1"}}"#).unwrap_err();
        assert!(e.to_string().contains("cpu.cpus"), "{e}");
    }

    #[test]
    fn what_a_vm_cannot_change_is_refused_by_name() {
        for (json, field) in [
            (r#"{"blockIO": {"weight": 10}}"#, "blockIO"),
            (
                r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}"#,
                "hugepageLimits",
            ),
            (
                r#"{"devices": [{"allow": false, "access": "rwm"}]}"#,
                "devices",
            ),
            (r#"{"unified": {"memory.high": "1"}}"#, "unified"),
            (r#"{"memory": {"reservation": 1024}}"#, "memory.reservation"),
        ] {
            let e = up(json).unwrap_err();
            assert!(e.to_string().contains(field), "{json}: {e}");
        }
        assert!(up("{nope").is_err());
        assert_eq!(up("{}").unwrap(), ResourceChange::default());
    }
}
