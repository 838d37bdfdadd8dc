//! From an OCI bundle to what one VM needs: its resources, its 9p shares,
//! and the agent's `Run` request.
//!
//! This is the contract of DESIGN.md made concrete: the image's rootfs is
//! shared read-only (the guest puts a tmpfs overlay on it unless
//! `root.readonly`); [`mounts`] become 9p shares or guest filesystems, or
//! are refused; the [`process`] is mapped as runc would run it; the memory
//! limit sizes the guest RAM (plus the guest kernel's own overhead) and is
//! enforced on the container's processes inside the guest; the CPU quota or
//! cpuset sizes the vCPUs ([`resources`]).
//!
//! Bad input is refused here, before anything starts, with an error naming
//! the field: config.json is read up to [`MAX_CONFIG_BYTES`], parsed with
//! the path of whatever does not parse, checked field by field, and the
//! resulting request is encoded and run through the agent's own decoder
//! ([`check_run`]) so that nothing a VM would refuse ever boots one.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use mu2_protocol::{Root, Run};
use oci_spec::runtime::Spec;

use mu2_microvm::accel::Accel;
use mu2_microvm::guest::GuestImage;
use mu2_microvm::spec::{Share, VmSpec, DEFAULT_READY_TIMEOUT, DEFAULT_TB_SIZE_MIB};

mod error;
mod mounts;
mod process;
mod request;
mod resources;

pub use error::BundleError;
pub use process::{map_process, process_from_json};
pub use request::check_run;
pub use resources::{
    CFS_PERIOD_RANGE, DEFAULT_CFS_PERIOD, MAX_CPU_ID, MAX_NODE_ID, MIN_CFS_QUOTA, MIN_MEMORY_LIMIT,
};

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
}

impl Plan {
    /// The spec of VM `id` that runs this plan on `image`, with the default
    /// deadline and translation cache, and a quiet console.
    pub fn vm_spec(
        &self,
        id: String,
        image: &GuestImage,
        qemu: PathBuf,
        accel: Accel,
        jail: mu2_microvm::jail::JailMode,
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
            ready_timeout: DEFAULT_READY_TIMEOUT,
            tb_size_mib: DEFAULT_TB_SIZE_MIB,
            debug: false,
            jail,
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
    let process = process::map_process(spec.process().as_ref().ok_or(BundleError::NoProcess)?)?;
    let mounts = mounts::mounts(spec, bundle, &mut shares)?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let shape = resources::shape(resources, mu2_microvm::spec::host_cpus())?;
    let run = Run {
        root: Root {
            share_tag: ROOTFS_TAG.into(),
            readonly: readonly_root,
        },
        process,
        hostname: spec.hostname().clone().unwrap_or_default(),
        mounts,
        memory_limit_bytes: shape.memory_limit,
        pids_limit: shape.pids_limit,
    };
    check_run(&run)?;
    Ok(Plan {
        memory_mib: shape.memory_mib,
        vcpus: shape.vcpus,
        shares,
        run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mu2_microvm::spec::DEFAULT_MEMORY_MIB;
    use mu2_protocol::{MountSource, Rlimit};
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
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].source, MountSource::Fs("tmpfs".into()));
        assert_eq!(m[0].options, ["size=1m"]);
        assert_eq!(m[1].source, MountSource::Share("vol0".into()));
        assert!(m[1].readonly);
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
            Err(BundleError::Mount { .. })
        ));
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
}
