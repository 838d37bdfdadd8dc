//! config.json's security settings, as the guest applies them, and the
//! refusal of what a VM cannot honour.
//!
//! The agent applies these inside the guest the way runc applies them on a
//! host (docs/security-in-guest.md): the process's five capability sets by
//! number, the device policy (`linux.resources.devices` followed by the
//! devices runc always allows), sysctls, masked and read-only paths. A
//! capability name is turned into its number here, once, with the `caps`
//! crate's table, so the guest never parses names.
//!
//! Everything else in config.json that would change what the process may
//! do, and that a per-container VM cannot honour, is refused by name here,
//! before a VM starts: joining a namespace by path (except the pod-shared
//! namespaces of a CRI container, whose VM cannot share them), user
//! namespaces and id mappings, time offsets, Intel RDT, a non-default
//! personality, host device nodes (`linux.devices`), the hooks that run in the
//! container's namespaces (createContainer, startContainer), LSM labels other
//! than containerd's default AppArmor profile, a domain name, I/O priority,
//! scheduler and CPU-affinity settings. `linux.seccomp` is compiled on the
//! host by [`crate::seccomp`], which refuses what a VM cannot honour in it
//! (a listener, NOTIFY).

use std::str::FromStr;

use mu2_protocol::{
    check_sysctl, Capabilities, DeviceAccess, DeviceKind, DeviceRule, Sysctl, MAX_DEVICE_RULES,
};
use oci_spec::runtime::{
    LinuxCapabilities, LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespaceType, Process, Spec,
};

/// The annotation CRI puts on the containers and sandboxes it creates.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// containerd's default AppArmor profiles (CRI's and ctr's
/// `--apparmor-default-profile` suggestion, Docker's): the VM boundary and
/// the jail do the job they do on a host.
const DEFAULT_APPARMOR_PROFILES: &[&str] = &["cri-containerd.apparmor.d", "docker-default"];

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("process.capabilities.{set}: {name} has no number in the guest kernel's table")]
    Capability { set: &'static str, name: String },
    #[error("linux.resources.devices[{index}]: {reason}")]
    DeviceRule { index: usize, reason: String },
    #[error("linux.resources.devices: {0} rules, at most {MAX_DEVICE_RULES}")]
    TooManyDeviceRules(usize),
    #[error("linux.sysctl: {0}")]
    Sysctl(String),
    #[error("linux.{field}: {path:?} is not an absolute path")]
    Path { field: &'static str, path: String },
    #[error("{field} cannot be honoured inside a microVM: {reason}")]
    Refused { field: String, reason: String },
}

fn refused(field: impl Into<String>, reason: impl Into<String>) -> SecurityError {
    SecurityError::Refused {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The kernel number of a capability, by its `CAP_` name.
pub fn capability_number(name: &str) -> Option<u8> {
    caps::Capability::from_str(name).ok().map(|c| c.index())
}

/// The five sets as bit masks; no `capabilities` at all means none, as
/// runc does.
pub fn capabilities(c: Option<&LinuxCapabilities>) -> Result<Capabilities, SecurityError> {
    let Some(c) = c else {
        return Ok(Capabilities::default());
    };
    let mask = |set: &'static str,
                caps: &Option<oci_spec::runtime::Capabilities>|
     -> Result<u64, SecurityError> {
        let mut m = 0u64;
        for cap in caps.iter().flatten() {
            // oci-spec spells them as config.json does ("CAP_KILL").
            let name = serde_json::to_value(cap)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{cap:?}"));
            let n = capability_number(&name)
                .filter(|n| *n < 64)
                .ok_or(SecurityError::Capability { set, name })?;
            m |= 1 << n;
        }
        Ok(m)
    };
    Ok(Capabilities {
        bounding: mask("bounding", c.bounding())?,
        effective: mask("effective", c.effective())?,
        permitted: mask("permitted", c.permitted())?,
        inheritable: mask("inheritable", c.inheritable())?,
        ambient: mask("ambient", c.ambient())?,
    })
}

/// The devices runc allows every container after its own rules (runc's
/// `AllowedDevices`): mknod of any node, the standard character devices,
/// the terminals.
pub fn runc_allowed_devices() -> Vec<DeviceRule> {
    let chr = |major: Option<u32>, minor: Option<u32>, access| DeviceRule {
        allow: true,
        kind: DeviceKind::Char,
        major,
        minor,
        access,
    };
    let mknod = DeviceAccess {
        read: false,
        write: false,
        mknod: true,
    };
    let all = DeviceAccess::ALL;
    vec![
        chr(None, None, mknod),
        DeviceRule {
            kind: DeviceKind::Block,
            ..chr(None, None, mknod)
        },
        chr(Some(1), Some(3), all), // null
        chr(Some(1), Some(8), all), // random
        chr(Some(1), Some(7), all), // full
        chr(Some(5), Some(0), all), // tty
        chr(Some(1), Some(5), all), // zero
        chr(Some(1), Some(9), all), // urandom
        chr(Some(136), None, all),  // pts/*
        chr(Some(5), Some(2), all), // ptmx
    ]
}

/// `linux.resources.devices` then [`runc_allowed_devices`].
pub fn device_rules(rules: &[LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>, SecurityError> {
    let mut out = rules
        .iter()
        .enumerate()
        .map(|(index, r)| {
            device_rule(r).map_err(|reason| SecurityError::DeviceRule { index, reason })
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.extend(runc_allowed_devices());
    if out.len() > MAX_DEVICE_RULES {
        return Err(SecurityError::TooManyDeviceRules(out.len()));
    }
    Ok(out)
}

fn device_rule(r: &LinuxDeviceCgroup) -> Result<DeviceRule, String> {
    let kind = match r.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => DeviceKind::All,
        LinuxDeviceType::C => DeviceKind::Char,
        LinuxDeviceType::B => DeviceKind::Block,
        other => return Err(format!("type {:?} is not a, b or c", other.as_str())),
    };
    let number = |what: &str, n: Option<i64>| match n {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| format!("{what} {n} is not a device number")),
    };
    // No access letters means all of them, as the kernel reads "a".
    let letters = r.access().as_deref().unwrap_or("");
    let access = if letters.is_empty() {
        DeviceAccess::ALL
    } else {
        let mut a = DeviceAccess::default();
        for ch in letters.chars() {
            match ch {
                'r' => a.read = true,
                'w' => a.write = true,
                'm' => a.mknod = true,
                other => return Err(format!("access {letters:?}: {other:?} is not r, w or m")),
            }
        }
        a
    };
    Ok(DeviceRule {
        allow: r.allow(),
        kind,
        major: number("major", r.major())?,
        minor: number("minor", r.minor())?,
        access,
    })
}

/// `linux.sysctl`, sorted by name. In a VM every sysctl is the guest's own,
/// so unlike runc there is no check that it belongs to a namespace the
/// container owns; the agent checks that the guest kernel has it.
pub fn sysctls(
    map: Option<&std::collections::HashMap<String, String>>,
) -> Result<Vec<Sysctl>, SecurityError> {
    let mut out: Vec<Sysctl> = map
        .into_iter()
        .flatten()
        .map(|(name, value)| {
            check_sysctl(name, value).map_err(SecurityError::Sysctl)?;
            Ok(Sysctl {
                name: name.clone(),
                value: value.clone(),
            })
        })
        .collect::<Result<_, SecurityError>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `linux.maskedPaths` or `linux.readonlyPaths`, checked.
pub fn paths(
    field: &'static str,
    list: Option<&Vec<String>>,
) -> Result<Vec<String>, SecurityError> {
    let list = list.cloned().unwrap_or_default();
    for p in &list {
        if !p.starts_with('/') || p.contains('\0') {
            return Err(SecurityError::Path {
                field,
                path: p.clone(),
            });
        }
    }
    Ok(list)
}

/// Whether CRI made this spec (a pod's sandbox or one of its containers).
fn is_cri(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(CRI_CONTAINER_TYPE))
}

/// Refuses what the process's settings ask that a VM cannot honour.
pub fn refuse_process(p: &Process) -> Result<(), SecurityError> {
    if let Some(profile) = p.apparmor_profile().as_deref() {
        if !profile.is_empty()
            && profile != "unconfined"
            && !DEFAULT_APPARMOR_PROFILES.contains(&profile)
        {
            return Err(refused(
                format!("process.apparmorProfile {profile:?}"),
                "the guest kernel has no AppArmor policy loaded; only containerd's default profiles, whose confinement the VM and its jail provide, are accepted",
            ));
        }
    }
    if p.selinux_label().as_deref().is_some_and(|l| !l.is_empty()) {
        return Err(refused(
            "process.selinuxLabel",
            "the guest kernel has no SELinux policy",
        ));
    }
    if p.io_priority().is_some() {
        return Err(refused(
            "process.ioPriority",
            "the guest has no I/O scheduler classes of the host's disks",
        ));
    }
    if p.scheduler().is_some() {
        return Err(refused(
            "process.scheduler",
            "scheduling policies of the guest's vCPUs do not reach the host",
        ));
    }
    if p.exec_cpu_affinity().is_some() {
        return Err(refused(
            "process.execCPUAffinity",
            "the guest's CPUs are not the host's",
        ));
    }
    Ok(())
}

/// Refuses what the rest of config.json asks that a VM cannot honour.
pub fn refuse_spec(spec: &Spec) -> Result<(), SecurityError> {
    if spec.domainname().as_deref().is_some_and(|d| !d.is_empty()) {
        return Err(refused("domainname", "the guest sets only the hostname"));
    }
    if let Some(h) = spec.hooks() {
        // The host-side hooks run on the host (crate::hooks); these two run
        // in the container's namespaces, which are a guest's.
        for (name, list) in [
            ("hooks.createContainer", h.create_container()),
            ("hooks.startContainer", h.start_container()),
        ] {
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(refused(
                    name,
                    "these hooks run in the container's namespaces, which are inside the guest",
                ));
            }
        }
        for (i, hook) in [
            h.create_runtime(),
            h.prestart(),
            h.poststart(),
            h.poststop(),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .enumerate()
        {
            if !hook.path().is_absolute() {
                return Err(refused(
                    format!("hooks (entry {i})"),
                    "the path is not absolute",
                ));
            }
        }
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let cri = is_cri(spec);
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let typ = ns.typ();
        let name = format!("{typ:?}").to_lowercase();
        if typ == LinuxNamespaceType::User {
            return Err(refused(
                format!("linux.namespaces[{i}] (user)"),
                "the container's uids are the guest's own; user namespaces are not made",
            ));
        }
        if let Some(path) = ns.path() {
            // A pod's containers share its network, IPC and UTS (and maybe
            // PID) namespaces by path. Each container has a VM of its own,
            // so each gets its own namespaces: the one way such a pod runs
            // on a VM per container (docs/security-in-guest.md).
            let pod_shared = cri
                && matches!(
                    typ,
                    LinuxNamespaceType::Network
                        | LinuxNamespaceType::Ipc
                        | LinuxNamespaceType::Uts
                        | LinuxNamespaceType::Pid
                );
            if !pod_shared {
                return Err(refused(
                    format!("linux.namespaces[{i}] ({name}) path {}", path.display()),
                    "a process in a VM cannot join a namespace of the host",
                ));
            }
        }
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    {
        return Err(refused(
            "linux.uidMappings/gidMappings",
            "the container's uids are the guest's own; user namespaces are not made",
        ));
    }
    if linux.time_offsets().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(refused(
            "linux.timeOffsets",
            "the guest's clocks are set from the host and not offset",
        ));
    }
    if linux.intel_rdt().is_some() {
        return Err(refused(
            "linux.intelRdt",
            "cache and memory-bandwidth allocation is the host's, not the guest's",
        ));
    }
    if let Some(p) = linux.personality() {
        let default = matches!(
            p.domain(),
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux
        );
        if !default || p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(refused(
                "linux.personality",
                "only the default LINUX personality without flags is run",
            ));
        }
    }
    if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(refused(
            "linux.devices",
            "the host's device nodes are not in the guest (CRI: set privileged_without_host_devices)",
        ));
    }
    if linux
        .mount_label()
        .as_deref()
        .is_some_and(|l| !l.is_empty())
    {
        return Err(refused(
            "linux.mountLabel",
            "the guest kernel has no SELinux policy",
        ));
    }
    // linux.seccomp (listenerPath and NOTIFY included) is checked by its
    // compiler, crate::seccomp.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps_of(v: serde_json::Value) -> Result<Capabilities, SecurityError> {
        let c: LinuxCapabilities = serde_json::from_value(v).unwrap();
        capabilities(Some(&c))
    }

    #[test]
    fn capability_names_have_the_kernels_numbers() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("CAP_KILL"), Some(5));
        assert_eq!(capability_number("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CAP_MKNOD"), Some(27));
        assert_eq!(capability_number("CAP_AUDIT_WRITE"), Some(29));
        assert_eq!(capability_number("CAP_BPF"), Some(39));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("CAP_NOPE"), None);
        assert_eq!(capability_number("kill"), None);
    }

    #[test]
    fn every_name_oci_spec_knows_has_a_number() {
        // All 41 of Linux 6.1, as config.json spells them.
        for n in 0..=40u8 {
            let cap = caps::all().into_iter().find(|c| c.index() == n).unwrap();
            let parsed: oci_spec::runtime::Capability =
                serde_json::from_value(json!(cap.to_string())).unwrap();
            let back = serde_json::to_value(parsed).unwrap();
            assert_eq!(capability_number(back.as_str().unwrap()), Some(n));
        }
    }

    #[test]
    fn the_default_sets_become_masks() {
        let default = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
        let c = caps_of(json!({
            "bounding": default, "effective": default, "permitted": default,
            "ambient": ["CAP_NET_BIND_SERVICE"]
        }))
        .unwrap();
        assert_eq!(c.bounding, 0x2000_0420);
        assert_eq!(c.effective, 0x2000_0420);
        assert_eq!(c.permitted, 0x2000_0420);
        assert_eq!(c.inheritable, 0);
        assert_eq!(c.ambient, 1 << 10);
        assert_eq!(capabilities(None).unwrap(), Capabilities::default());
    }

    #[test]
    fn device_rules_map_and_end_with_runcs_allowed_devices() {
        let rules: Vec<LinuxDeviceCgroup> = serde_json::from_value(json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": -1, "access": "rw"},
            {"allow": false, "type": "b", "major": 8, "minor": 0}
        ]))
        .unwrap();
        let out = device_rules(&rules).unwrap();
        assert_eq!(out.len(), 3 + runc_allowed_devices().len());
        assert_eq!(
            out[0],
            DeviceRule {
                allow: false,
                kind: DeviceKind::All,
                major: None,
                minor: None,
                access: DeviceAccess::ALL
            }
        );
        assert_eq!(out[1].kind, DeviceKind::Char);
        assert_eq!((out[1].major, out[1].minor), (Some(10), None));
        assert!(out[1].access.read && out[1].access.write && !out[1].access.mknod);
        assert_eq!(out[2].access, DeviceAccess::ALL);
        assert_eq!(&out[3..], runc_allowed_devices().as_slice());
        // /dev/null is among them.
        assert!(out
            .iter()
            .any(|r| r.allow && r.major == Some(1) && r.minor == Some(3)));
    }

    #[test]
    fn bad_device_rules_are_refused_with_their_index() {
        for bad in [
            json!([{"allow": true, "type": "p"}]),
            json!([{"allow": true, "type": "c", "major": -2}]),
            json!([{"allow": true, "type": "c", "access": "rwx"}]),
        ] {
            let rules: Vec<LinuxDeviceCgroup> = serde_json::from_value(bad).unwrap();
            let e = device_rules(&rules).unwrap_err();
            assert!(
                matches!(e, SecurityError::DeviceRule { index: 0, .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn sysctls_are_checked_and_sorted() {
        let mut m = std::collections::HashMap::new();
        m.insert("net.ipv4.ip_forward".to_string(), "1".to_string());
        m.insert("kernel.shm_rmid_forced".to_string(), "1".to_string());
        let s = sysctls(Some(&m)).unwrap();
        assert_eq!(s[0].name, "kernel.shm_rmid_forced");
        assert_eq!(s[1].path(), "net/ipv4/ip_forward");
        for bad in ["kernel/../x", "kernel..x", "", "a.b/c"] {
            let mut m = std::collections::HashMap::new();
            m.insert(bad.to_string(), "1".to_string());
            assert!(matches!(sysctls(Some(&m)), Err(SecurityError::Sysctl(_))));
        }
    }

    fn spec(linux: serde_json::Value, annotations: serde_json::Value) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": linux,
            "annotations": annotations,
        }))
        .unwrap()
    }

    #[test]
    fn what_a_vm_cannot_honour_is_refused_by_name() {
        let cases = [
            (
                json!({"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}]}),
                "linux.namespaces[1] (network) path /proc/1/ns/net",
            ),
            (json!({"namespaces": [{"type": "user"}]}), "(user)"),
            (
                json!({"uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}),
                "linux.uidMappings",
            ),
            (json!({"intelRdt": {"closID": "x"}}), "linux.intelRdt"),
            (
                json!({"personality": {"domain": "LINUX32"}}),
                "linux.personality",
            ),
            (
                json!({"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]}),
                "linux.devices",
            ),
            (
                json!({"timeOffsets": {"monotonic": "1"}}),
                "linux.timeOffsets",
            ),
        ];
        for (linux, field) in cases {
            let e = refuse_spec(&spec(linux, json!({}))).unwrap_err();
            assert!(
                e.to_string().contains(field) && e.to_string().contains("microVM"),
                "{e}"
            );
        }
    }

    #[test]
    fn containerd_and_cri_defaults_are_accepted() {
        let ns = json!({"namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}
        ], "personality": {"domain": "LINUX"}});
        refuse_spec(&spec(ns, json!({}))).unwrap();
        // A CRI container joins its pod's namespaces by path.
        let pod = json!({"namespaces": [
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"},
            {"type": "uts", "path": "/proc/42/ns/uts"},
            {"type": "mount"}
        ]});
        refuse_spec(&spec(pod.clone(), json!({CRI_CONTAINER_TYPE: "container"}))).unwrap();
        assert!(refuse_spec(&spec(pod, json!({}))).is_err());
        let p: Process = serde_json::from_value(json!({
            "cwd": "/", "user": {"uid": 0, "gid": 0},
            "apparmorProfile": "cri-containerd.apparmor.d"
        }))
        .unwrap();
        refuse_process(&p).unwrap();
        let p: Process = serde_json::from_value(json!({
            "cwd": "/", "user": {"uid": 0, "gid": 0}, "apparmorProfile": "my-profile"
        }))
        .unwrap();
        let e = refuse_process(&p).unwrap_err();
        assert!(e.to_string().contains("my-profile"), "{e}");
    }
}
