//! From an OCI bundle to what one VM needs: its resources, its 9p shares,
//! and the agent's `Run` request.
//!
//! This is the contract of DESIGN.md made concrete: the image's rootfs is
//! shared read-only (the guest puts a tmpfs overlay on it unless
//! `root.readonly`); bind mounts become 9p shares and tmpfs, proc, cgroup
//! and the like are made by the guest, all with their options ([`mounts`]);
//! the process's capabilities, the device policy, sysctls, masked and
//! read-only paths travel to the agent, which applies them as runc would,
//! and anything a VM cannot honour is refused by name ([`security`]). The
//! memory limit sizes the guest RAM (plus the guest kernel's own overhead)
//! and is enforced on the container's processes inside the guest; the CPU
//! quota or cpuset sizes the vCPUs.

#![forbid(unsafe_code)]

pub mod mounts;
pub mod seccomp;
mod update;
pub use update::{update, ResourceChange};
pub mod security;

use std::path::{Path, PathBuf};

use mu2_protocol::mount_options;
use mu2_protocol::{ConsoleSize, Process, Rlimit, Root, Run, SeccompFilter, User};
use oci_spec::runtime::Spec;

pub use mounts::MountError;
pub use security::SecurityError;

use mu2_microvm::accel::Accel;
use mu2_microvm::guest::GuestImage;
use mu2_microvm::spec::{
    Share, VmSpec, DEFAULT_MEMORY_MIB, DEFAULT_TB_SIZE_MIB, MAX_MEMORY_MIB, MAX_VCPUS,
};

/// The share tag of the image's rootfs.
pub const ROOTFS_TAG: &str = "rootfs";
/// Guest RAM added to a container's memory limit for the guest kernel,
/// init and agent.
pub const GUEST_OVERHEAD_MIB: u32 = 96;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("no config.json in bundle {0}")]
    NoConfig(PathBuf),
    #[error("malformed {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error("config.json has no process to run")]
    NoProcess,
    #[error("process.args is empty")]
    NoArgs,
    #[error("process.cwd {0:?} is not an absolute path")]
    Cwd(PathBuf),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("the compiled linux.seccomp program is not one the agent takes")]
    SeccompProgram(#[source] mu2_protocol::ProtocolError),
    #[error("unsupported rlimit {0}")]
    Rlimit(String),
    #[error("memory limit of {0} bytes is outside what a VM can have")]
    Memory(i64),
    #[error("process.oomScoreAdj {0} is outside -1000..=1000")]
    OomScoreAdj(i32),
    #[error("invalid linux.resources.cpu: {0}")]
    Cpu(String),
    #[error("cannot update the resources: {0}")]
    Update(String),
}

/// What one VM needs to run a bundle's process.
#[derive(Debug, Clone)]
pub struct Plan {
    pub memory_mib: u32,
    pub vcpus: u32,
    pub shares: Vec<Share>,
    pub run: Run,
}

impl Plan {
    /// The spec of VM `id`, owned by `owner`, that runs this plan on
    /// `image`, with the default deadline and translation cache, and a
    /// quiet console.
    // Each argument is one independent fact of the host or the caller
    // (what the image is, which QEMU, accelerator, jail, deadlines, owner).
    #[allow(clippy::too_many_arguments)]
    pub fn vm_spec(
        &self,
        id: String,
        image: &GuestImage,
        qemu: PathBuf,
        accel: Accel,
        jail: mu2_microvm::jail::JailMode,
        deadlines: mu2_microvm::Deadlines,
        owner: mu2_microvm::record::Owner,
    ) -> VmSpec {
        VmSpec {
            id,
            qemu,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            accel,
            shares: self.shares.clone(),
            deadlines,
            tb_size_mib: DEFAULT_TB_SIZE_MIB,
            debug: false,
            jail,
            owner,
        }
    }
}

/// Reads and maps `BUNDLE/config.json`.
pub fn load(bundle: &Path) -> Result<Plan, BundleError> {
    if !bundle.is_dir() {
        return Err(BundleError::NotADirectory(bundle.to_path_buf()));
    }
    let bundle = bundle
        .canonicalize()
        .map_err(|_| BundleError::NotADirectory(bundle.to_path_buf()))?;
    let config = bundle.join("config.json");
    if !config.is_file() {
        return Err(BundleError::NoConfig(bundle));
    }
    let text = std::fs::read_to_string(&config).map_err(|e| BundleError::Malformed {
        path: config.clone(),
        reason: e.to_string(),
    })?;
    let spec: Spec = serde_json::from_str(&text).map_err(|e| BundleError::Malformed {
        path: config.clone(),
        reason: e.to_string(),
    })?;
    plan(&spec, &bundle)
}

/// Maps a parsed spec whose relative paths are relative to `bundle`.
pub fn plan(spec: &Spec, bundle: &Path) -> Result<Plan, BundleError> {
    let root = spec.root().as_ref();
    let root_path = root
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = if root_path.is_absolute() {
        root_path
    } else {
        bundle.join(root_path)
    };
    if !rootfs.is_dir() {
        return Err(BundleError::NoRootfs(rootfs));
    }
    let readonly_root = root.and_then(|r| r.readonly()).unwrap_or(false);
    let mut shares = vec![Share {
        tag: ROOTFS_TAG.into(),
        host_path: rootfs,
        readonly: true,
    }];
    let mut process = process(spec)?;
    security::refuse_spec(spec)?;
    process.seccomp = seccomp_filter(spec)?;
    let mounts = mounts::mounts(spec, bundle, &mut shares)?;
    let linux = spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let memory_limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0);
    let memory_mib = match memory_limit {
        None => DEFAULT_MEMORY_MIB,
        Some(l) => {
            let mib = (l as u64).div_ceil(1 << 20);
            let total = mib + u64::from(GUEST_OVERHEAD_MIB);
            if total > u64::from(MAX_MEMORY_MIB) {
                return Err(BundleError::Memory(l));
            }
            total as u32
        }
    };
    let vcpus = vcpus(resources.and_then(|r| r.cpu().as_ref()))?;
    let pids_limit = resources
        .and_then(|r| r.pids().as_ref())
        .map(|p| p.limit())
        .filter(|&l| l > 0)
        .map(|l| l as u64);
    Ok(Plan {
        memory_mib,
        vcpus,
        shares,
        run: Run {
            root: Root {
                share_tag: ROOTFS_TAG.into(),
                readonly: readonly_root,
            },
            process,
            hostname: spec.hostname().clone().unwrap_or_default(),
            mounts,
            memory_limit_bytes: memory_limit.map(|l| l as u64),
            pids_limit,
            masked_paths: security::paths(
                "maskedPaths",
                linux.and_then(|l| l.masked_paths().as_ref()),
            )?,
            readonly_paths: security::paths(
                "readonlyPaths",
                linux.and_then(|l| l.readonly_paths().as_ref()),
            )?,
            sysctls: security::sysctls(linux.and_then(|l| l.sysctl().as_ref()))?,
            device_rules: security::device_rules(
                resources
                    .and_then(|r| r.devices().as_deref())
                    .unwrap_or_default(),
            )?,
            rootfs_propagation: rootfs_propagation(
                linux.and_then(|l| l.rootfs_propagation().as_deref()),
            )?,
        },
    })
}

/// `linux.seccomp` compiled for the guest, if the spec has one.
fn seccomp_filter(spec: &Spec) -> Result<Option<SeccompFilter>, BundleError> {
    let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(None);
    };
    let f = seccomp::compile(profile)?;
    SeccompFilter::new(f.program, f.flags)
        .map(Some)
        .map_err(BundleError::SeccompProgram)
}

fn rootfs_propagation(
    word: Option<&str>,
) -> Result<Option<mount_options::PropagationChange>, BundleError> {
    match word.filter(|w| !w.is_empty()) {
        None => Ok(None),
        Some(w) => mount_options::propagation(w).map(Some).ok_or_else(|| {
            BundleError::Security(SecurityError::Refused {
                field: format!("linux.rootfsPropagation {w:?}"),
                reason: "not a propagation type".into(),
            })
        }),
    }
}

fn process(spec: &Spec) -> Result<Process, BundleError> {
    map_process(spec.process().as_ref().ok_or(BundleError::NoProcess)?)
}

/// Maps an OCI process given as JSON, as containerd sends an exec's
/// process spec.
pub fn process_from_json(json: &[u8]) -> Result<Process, BundleError> {
    let p: oci_spec::runtime::Process =
        serde_json::from_slice(json).map_err(|e| BundleError::Malformed {
            path: PathBuf::from("<process spec>"),
            reason: e.to_string(),
        })?;
    map_process(&p)
}

/// Maps an exec's process spec for a VM that runs beside task `task`: the
/// container's seccomp filter applies to its execs too, as under runc.
pub fn exec_process(task: &Run, json: &[u8]) -> Result<Process, BundleError> {
    let mut p = process_from_json(json)?;
    p.seccomp = task.process.seccomp.clone();
    Ok(p)
}

/// Maps an OCI process: the one mapping of config.json's `process` and of
/// an exec's process spec.
pub fn map_process(p: &oci_spec::runtime::Process) -> Result<Process, BundleError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(BundleError::NoArgs);
    }
    let cwd = p.cwd();
    if !cwd.is_absolute() {
        return Err(BundleError::Cwd(cwd.clone()));
    }
    security::refuse_process(p)?;
    if let Some(adj) = p.oom_score_adj().filter(|a| !(-1000..=1000).contains(a)) {
        return Err(BundleError::OomScoreAdj(adj));
    }
    let u = p.user();
    let rlimits = p
        .rlimits()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let name = serde_json::to_value(r.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let resource = rlimit_number(&name).ok_or(BundleError::Rlimit(name))?;
            Ok(Rlimit {
                resource,
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect::<Result<Vec<_>, BundleError>>()?;
    Ok(Process {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: cwd.to_string_lossy().into_owned(),
        user: User {
            uid: u.uid(),
            gid: u.gid(),
            additional_gids: u.additional_gids().clone().unwrap_or_default(),
            umask: u.umask(),
        },
        terminal: p.terminal().unwrap_or(false),
        console_size: p.console_size().as_ref().map(|b| ConsoleSize {
            rows: b.height().min(u64::from(u16::MAX)) as u16,
            cols: b.width().min(u64::from(u16::MAX)) as u16,
        }),
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        capabilities: security::capabilities(p.capabilities().as_ref())?,
        seccomp: None,
        oom_score_adj: p.oom_score_adj(),
    })
}

/// x86_64 numbering of the RLIMIT_* resources.
fn rlimit_number(name: &str) -> Option<u32> {
    const NAMES: [&str; 16] = [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

fn vcpus(cpu: Option<&oci_spec::runtime::LinuxCpu>) -> Result<u32, BundleError> {
    let Some(cpu) = cpu else { return Ok(1) };
    let mut n = 1u32;
    if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
        if quota > 0 && period > 0 {
            n = (quota as u64).div_ceil(period).min(u64::from(MAX_VCPUS)) as u32;
        }
    }
    if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
        let count = cpuset_count(cpus).ok_or_else(|| BundleError::Cpu(format!("cpus {cpus:?}")))?;
        if cpu.quota().unwrap_or(0) <= 0 {
            n = count;
        } else {
            n = n.min(count);
        }
    }
    Ok(n.clamp(1, MAX_VCPUS))
}

/// Number of CPUs in a cpuset list such as "0-2,5".
fn cpuset_count(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                n = n.checked_add(b - a + 1)?;
            }
            None => {
                part.parse::<u32>().ok()?;
                n = n.checked_add(1)?;
            }
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mu2_protocol::{Capabilities, MountSource};
    use serde_json::json;

    fn bundle(config: serde_json::Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::create_dir(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
        d
    }

    fn base() -> serde_json::Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [50]},
                "args": ["sh", "-c", "echo hi"],
                "env": ["PATH=/bin", "A=b c=d"],
                "cwd": "/tmp",
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "box",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
                {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro"]}
            ],
            "linux": {"resources": {
                "memory": {"limit": 67108864},
                "cpu": {"quota": 150000, "period": 100000},
                "pids": {"limit": 100}
            }}
        })
    }

    #[test]
    fn maps_process_root_and_resources() {
        let b = bundle(base());
        let p = load(b.path()).unwrap();
        let run = &p.run;
        assert_eq!(run.process.args, ["sh", "-c", "echo hi"]);
        assert_eq!(run.process.env, ["PATH=/bin", "A=b c=d"]);
        assert_eq!(run.process.cwd, "/tmp");
        assert_eq!(run.process.user.uid, 1000);
        assert_eq!(run.process.user.additional_gids, [50]);
        assert_eq!(
            run.process.rlimits,
            [Rlimit {
                resource: 7,
                soft: 512,
                hard: 1024
            }]
        );
        assert!(run.process.no_new_privileges);
        assert!(run.root.readonly);
        assert_eq!(run.hostname, "box");
        assert_eq!(run.memory_limit_bytes, Some(64 << 20));
        assert_eq!(run.pids_limit, Some(100));
        assert_eq!(p.memory_mib, 64 + GUEST_OVERHEAD_MIB);
        assert_eq!(p.vcpus, 2);
        assert_eq!(p.shares[0].tag, ROOTFS_TAG);
        assert!(p.shares[0].readonly);
    }

    #[test]
    fn mounts_become_shares_or_guest_filesystems() {
        let b = bundle(base());
        let p = load(b.path()).unwrap();
        let m = &p.run.mounts;
        // Every mount travels with its options, the agent's defaults too.
        let dests: Vec<&str> = m.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            ["/proc", "/dev", "/sys/fs/cgroup", "/scratch", "/data"],
            "{m:?}"
        );
        assert_eq!(m[2].source, MountSource::Fs("cgroup".into()));
        assert_eq!(m[3].source, MountSource::Fs("tmpfs".into()));
        assert_eq!(m[3].options, ["size=1m"]);
        assert_eq!(m[4].source, MountSource::Share("vol0".into()));
        assert_eq!(m[4].options, ["rbind", "ro"]);
        assert!(m[4].readonly);
        assert_eq!(p.shares[1].tag, "vol0");
        assert!(p.shares[1].readonly);
        assert!(p.shares[1].host_path.ends_with("data"));
    }

    #[test]
    fn unsupported_mounts_are_refused() {
        let mut c = base();
        c["mounts"] = json!([{"destination": "/x", "type": "nfs", "source": "srv:/x"}]);
        let e = load(bundle(c).path()).unwrap_err();
        assert!(e.to_string().contains("cannot be honoured"), "{e}");
        let mut c = base();
        c["mounts"] = json!([{"destination": "/x", "type": "bind", "source": "/nonexistent-mu2"}]);
        assert!(matches!(
            load(bundle(c).path()),
            Err(BundleError::Mount(MountError::Refused { .. }))
        ));
        // An option the guest cannot apply is refused by name.
        for (m, word) in [
            (
                json!({"destination": "/x", "type": "bind", "source": "data", "options": ["rbind", "idmap"]}),
                "idmap",
            ),
            (
                json!({"destination": "/x", "type": "tmpfs", "source": "tmpfs", "options": ["bogus=1"]}),
                "bogus=1",
            ),
            (
                json!({"destination": "/x", "type": "bind", "source": "data", "options": ["rbind", "size=1m"]}),
                "size=1m",
            ),
        ] {
            let mut c = base();
            c["mounts"] = json!([m]);
            let e = load(bundle(c).path()).unwrap_err();
            let text = format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            assert!(text.contains(word) && text.contains("/x"), "{text}");
        }
    }

    #[test]
    fn security_settings_reach_the_run() {
        let mut c = base();
        c["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_KILL"],
        });
        c["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
        c["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
        c["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1"});
        c["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
        c["linux"]["rootfsPropagation"] = json!("rslave");
        c["process"]["oomScoreAdj"] = json!(-998);
        let p = load(bundle(c).path()).unwrap();
        assert_eq!(p.run.process.oom_score_adj, Some(-998));
        let caps = p.run.process.capabilities;
        assert_eq!(caps.bounding, (1 << 5) | (1 << 10));
        assert_eq!(caps.permitted, 1 << 5);
        assert_eq!(caps.effective, 0);
        assert_eq!(p.run.masked_paths, ["/proc/kcore"]);
        assert_eq!(p.run.readonly_paths, ["/proc/sys"]);
        assert_eq!(p.run.sysctls[0].name, "kernel.shm_rmid_forced");
        assert_eq!(
            p.run.device_rules.len(),
            1 + security::runc_allowed_devices().len()
        );
        assert!(!p.run.device_rules[0].allow);
        assert_eq!(
            p.run.rootfs_propagation.map(mu2_protocol::propagation_word),
            Some("rslave")
        );
        // No capabilities listed: none.
        let p = load(bundle(base()).path()).unwrap();
        assert_eq!(p.run.process.capabilities, Capabilities::default());
        let mut c = base();
        c["process"]["oomScoreAdj"] = json!(1001);
        assert!(matches!(
            load(bundle(c).path()),
            Err(BundleError::OomScoreAdj(1001))
        ));
        let mut c = base();
        c["linux"]["rootfsPropagation"] = json!("sideways");
        assert!(load(bundle(c).path()).is_err());
        let mut c = base();
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        let e = load(bundle(c).path()).unwrap_err();
        assert!(e.to_string().contains("linux.uidMappings"), "{e}");
    }

    #[test]
    fn file_binds_share_their_directory_once() {
        let mut c = base();
        let b = bundle(json!({}));
        let etc = b.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 x\n").unwrap();
        std::fs::write(etc.join("hostname"), "x\n").unwrap();
        c["mounts"] = json!([
            {"destination": "/etc/hosts", "type": "bind", "source": etc.join("hosts"), "options": ["rbind", "rw"]},
            {"destination": "/etc/hostname", "type": "bind", "source": etc.join("hostname"), "options": ["rbind", "rw"]},
            {"destination": "/etc/ro-hosts", "type": "bind", "source": etc.join("hosts"), "options": ["rbind", "ro"]}
        ]);
        std::fs::write(b.path().join("config.json"), c.to_string()).unwrap();
        let p = load(b.path()).unwrap();
        let m = &p.run.mounts;
        assert_eq!(m[0].share_file.as_deref(), Some("hosts"));
        assert_eq!(m[1].share_file.as_deref(), Some("hostname"));
        // One read-write share of the directory, one read-only.
        assert_eq!(m[0].source, m[1].source);
        assert_ne!(m[0].source, m[2].source);
        assert_eq!(p.shares.len(), 3);
        assert!(p.shares[2].readonly);
        assert_eq!(
            p.shares[1].host_path,
            etc.canonicalize().unwrap_or(etc.clone())
        );
    }

    #[test]
    fn bad_bundles_get_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load(d.path()), Err(BundleError::NoConfig(_))));
        std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
        let e = load(d.path()).unwrap_err();
        assert!(matches!(e, BundleError::Malformed { .. }), "{e}");
        std::fs::write(d.path().join("config.json"), base().to_string()).unwrap();
        assert!(matches!(load(d.path()), Err(BundleError::NoRootfs(_))));
        assert!(matches!(
            load(&d.path().join("nope")),
            Err(BundleError::NotADirectory(_))
        ));
        let mut c = base();
        c["process"]["args"] = json!([]);
        assert!(matches!(load(bundle(c).path()), Err(BundleError::NoArgs)));
    }

    #[test]
    fn defaults_without_resources() {
        let mut c = base();
        c["linux"] = json!({});
        let p = load(bundle(c).path()).unwrap();
        assert_eq!(p.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(p.vcpus, 1);
        assert_eq!(p.run.memory_limit_bytes, None);
    }

    #[test]
    fn exec_process_json_maps_like_config_process() {
        let json = base()["process"].to_string();
        let p = process_from_json(json.as_bytes()).unwrap();
        let b = bundle(base());
        assert_eq!(p, load(b.path()).unwrap().run.process);
        assert!(matches!(
            process_from_json(b"{"),
            Err(BundleError::Malformed { .. })
        ));
        let e = process_from_json(br#"{"cwd": "/", "user": {"uid": 0, "gid": 0}, "args": []}"#);
        assert!(matches!(e, Err(BundleError::NoArgs)), "{e:?}");
    }

    #[test]
    fn seccomp_is_compiled_for_the_process_and_its_execs() {
        let profile: serde_json::Value = serde_json::from_str(include_str!(
            "../tests/data/containerd-default-seccomp.json"
        ))
        .unwrap();
        let mut c = base();
        c["linux"]["seccomp"] = profile;
        let p = load(bundle(c).path()).unwrap();
        let f = p.run.process.seccomp.clone().expect("a filter");
        assert!(f.instructions() > 10);
        let exec = exec_process(&p.run, base()["process"].to_string().as_bytes()).unwrap();
        assert_eq!(exec.seccomp, Some(f));
        // Without a profile, none.
        assert!(load(bundle(base()).path())
            .unwrap()
            .run
            .process
            .seccomp
            .is_none());
        let mut c = base();
        c["linux"]["seccomp"] =
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/a.sock"});
        let e = load(bundle(c).path()).unwrap_err();
        assert!(e.to_string().contains("listenerPath"), "{e}");
    }

    #[test]
    fn cpusets_count() {
        assert_eq!(cpuset_count("0-2,5"), Some(4));
        assert_eq!(cpuset_count("3"), Some(1));
        assert_eq!(cpuset_count("2-1"), None);
        assert_eq!(cpuset_count("x"), None);
    }
}
