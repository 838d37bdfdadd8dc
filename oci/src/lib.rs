//! From an OCI bundle to what one VM needs: its resources, its 9p shares,
//! and the agent's `Run` request.
//!
//! This is the contract of DESIGN.md made concrete: the image's rootfs is
//! shared read-only (the guest puts a tmpfs overlay on it unless
//! `root.readonly`); [`mounts`] become 9p shares or guest filesystems, all
//! with their options, or are refused; the process is mapped as runc would
//! run it, and its capabilities, the device policy, sysctls, masked and
//! read-only paths and its seccomp profile ([`seccomp`], compiled here)
//! travel to the agent, which applies them as runc would; anything a VM
//! cannot honour is refused by name ([`security`]). The memory limit sizes
//! the guest RAM (plus the guest kernel's own overhead) and is enforced on
//! the container's processes inside the guest; the CPU quota or cpuset sizes
//! the vCPUs. [`update`] maps containerd's Update.
//!
//! Bad input is refused here, before anything starts, with an error naming
//! the field: config.json is read up to [`MAX_CONFIG_BYTES`], parsed with
//! the path of whatever does not parse, checked field by field, and the
//! resulting request is encoded and run through the agent's own decoder
//! ([`check_run`]) so that nothing a VM would refuse ever boots one.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use mu2_protocol::mount_options;
use mu2_protocol::{Root, Run, SeccompFilter};
use oci_spec::runtime::Spec;

use mu2_microvm::accel::Accel;
use mu2_microvm::guest::GuestImage;
use mu2_microvm::spec::{Share, VmSpec, DEFAULT_TB_SIZE_MIB};

mod error;
pub mod hooks;
pub mod layout;
pub mod mounts;
mod process;
mod request;
mod resources;
pub mod seccomp;
pub mod security;
mod update;

pub use error::BundleError;
pub use mounts::MountError;
pub use process::{exec_process, map_process, process_from_json};
pub use request::check_run;
pub use resources::{
    CFS_PERIOD_RANGE, DEFAULT_CFS_PERIOD, MAX_CPU_ID, MAX_NODE_ID, MIN_CFS_QUOTA, MIN_MEMORY_LIMIT,
};
pub use security::SecurityError;
pub use update::{update, ResourceChange};

/// The share tag of the image's rootfs.
pub const ROOTFS_TAG: &str = "rootfs";
/// Guest RAM added to a container's memory limit for the guest kernel,
/// init and agent.
pub const GUEST_OVERHEAD_MIB: u32 = 96;
/// Most of a config.json (or an exec's process spec) mu2 reads. Real ones
/// are a few KiB; the request made of it must fit in one protocol frame
/// (1 MiB) anyway.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What one VM needs to run a bundle's process.
#[derive(Debug, Clone)]
pub struct Plan {
    pub memory_mib: u32,
    pub vcpus: u32,
    pub shares: Vec<Share>,
    pub run: Run,
    /// The hooks the runtime runs on the host ([`hooks`]).
    pub hooks: hooks::Hooks,
}

impl Plan {
    /// The spec of VM `id`, owned by `owner`, that runs this plan on
    /// `image`, with the default translation cache and a quiet console.
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
            templates: mu2_microvm::template::TemplateMode::Off,
            pool: mu2_microvm::pool::PoolMode::Off,
            owned_dir: None,
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
    let read_err = |source| BundleError::Read {
        path: config.clone(),
        source,
    };
    let file = std::fs::File::open(&config).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let too_big = |size| BundleError::TooBig {
        path: config.clone(),
        size,
        max: MAX_CONFIG_BYTES,
    };
    if size > MAX_CONFIG_BYTES {
        return Err(too_big(size));
    }
    // Bounded even if the file grows while it is read.
    let mut text = Vec::with_capacity(size as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big(text.len() as u64));
    }
    let spec: Spec = parse_json(&config, &text, "")?;
    plan(&spec, &bundle)
}

/// Parses JSON into `T`; the error names where in the document it failed
/// (`process.user.uid`), under `prefix`.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    json: &[u8],
    prefix: &str,
) -> Result<T, BundleError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        // "." is the document itself, "?" a place the parser cannot name.
        let at = if at == "." || at == "?" {
            String::new()
        } else {
            at
        };
        let field = match (prefix.is_empty(), at.is_empty()) {
            (_, true) => prefix.to_string(),
            (true, false) => at,
            (false, false) => format!("{prefix}.{at}"),
        };
        BundleError::Malformed {
            path: path.to_path_buf(),
            field,
            reason: e.into_inner().to_string(),
        }
    })?;
    // Trailing characters after the document.
    de.end().map_err(|e| BundleError::Malformed {
        path: path.to_path_buf(),
        field: prefix.to_string(),
        reason: e.to_string(),
    })?;
    Ok(parsed)
}

/// Maps a parsed spec whose relative paths are relative to `bundle`.
pub fn plan(spec: &Spec, bundle: &Path) -> Result<Plan, BundleError> {
    let root = spec.root().as_ref();
    let root_path = root
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    if root_path.as_os_str().is_empty() {
        return Err(error::field("root.path", "empty"));
    }
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
    let mut process = process::map_process(spec.process().as_ref().ok_or(BundleError::NoProcess)?)?;
    security::refuse_spec(spec)?;
    process.seccomp = seccomp_filter(spec)?;
    let mounts = mounts::mounts(spec, bundle, &mut shares)?;
    let linux = spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let shape = resources::shape(resources, mu2_microvm::spec::host_cpus())?;
    let run = Run {
        root: Root {
            share_tag: ROOTFS_TAG.into(),
            readonly: readonly_root,
            share_subdir: None,
        },
        process,
        hostname: spec.hostname().clone().unwrap_or_default(),
        mounts,
        memory_limit_bytes: shape.memory_limit,
        pids_limit: shape.pids_limit,
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
    };
    check_run(&run)?;
    Ok(Plan {
        memory_mib: shape.memory_mib,
        vcpus: shape.vcpus,
        shares,
        run,
        hooks: hooks::from_spec(spec),
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

#[cfg(test)]
mod tests {
    use super::*;
    use mu2_microvm::spec::DEFAULT_MEMORY_MIB;
    use mu2_protocol::{Capabilities, MountSource, Rlimit};
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
}
