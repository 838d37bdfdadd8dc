//! The container's cgroup: memory and pids limits, and OOM detection.
//!
//! Every container process runs in `/sys/fs/cgroup/ctr`, with the memory and
//! pids controllers enabled even without limits: the cgroup's
//! `memory.events` counts OOM kills of its processes by any OOM killer, so
//! `oom_killed` is reported whether the cgroup limit or the VM's RAM (the
//! host's way of applying a memory limit) ran out. init and the agent stay in
//! the root cgroup and are exempt from the OOM killer.
//!
//! The cgroup also carries the container's device policy
//! ([`Cgroup::restrict_devices`], a BPF program from [`crate::devices`]).
//! The process cannot leave the cgroup: it joins it, then unshares a cgroup
//! namespace rooted there ([`crate::spawn`]), and init mounts the hierarchy
//! with `nsdelegate`, so from inside that namespace neither `cgroup.procs`
//! of a cgroup outside it nor the limit files of its root can be written.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use mu2_protocol::DeviceRule;

pub const ROOT: &str = "/sys/fs/cgroup";
pub const NAME: &str = "ctr";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot enable the {controller} controller in {path}")]
    Controller {
        controller: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot find the agent's virtio ports in {path}")]
    Ports {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the device policy ({rules} rules) into the guest kernel")]
    DeviceProgram {
        rules: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach the device policy to cgroup {path}")]
    Attach {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the container cgroup under `root` with the given limits.
    pub fn create(
        root: &Path,
        memory_limit: Option<u64>,
        pids_limit: Option<u64>,
    ) -> Result<Cgroup, CgroupError> {
        let control = root.join("cgroup.subtree_control");
        for (controller, needed) in [
            ("memory", memory_limit.is_some()),
            ("pids", pids_limit.is_some()),
        ] {
            // Written one by one: a kernel without pids still gets memory.
            if let Err(source) = std::fs::write(&control, format!("+{controller}")) {
                if needed {
                    return Err(CgroupError::Controller {
                        controller,
                        path: control,
                        source,
                    });
                }
            }
        }
        let path = root.join(NAME);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path, source }),
        }
        let cg = Cgroup { path };
        if let Some(limit) = memory_limit {
            cg.write("memory.max", &limit.to_string())?;
            if cg.path.join("memory.swap.max").exists() {
                cg.write("memory.swap.max", "0")?;
            }
        }
        if let Some(limit) = pids_limit {
            cg.write("pids.max", &limit.to_string())?;
        }
        Ok(cg)
    }

    /// Applies new limits (containerd's Update); limits not given stay.
    pub fn update(&self, u: &mu2_protocol::Update) -> Result<(), CgroupError> {
        use mu2_protocol::Limit;
        let value = |l: Limit| match l {
            Limit::Unlimited => "max".to_string(),
            Limit::Amount(n) => n.to_string(),
        };
        if let Some(l) = u.memory_bytes {
            self.write("memory.max", &value(l))?;
        }
        if let Some(l) = u.pids {
            self.write("pids.max", &value(l))?;
        }
        Ok(())
    }

    /// Attaches the device policy `rules`, followed by a deny of the
    /// agent's virtio ports (found in `sys_ports`), to the cgroup.
    pub fn restrict_devices(
        &self,
        rules: &[DeviceRule],
        sys_ports: &Path,
    ) -> Result<(), CgroupError> {
        let mut all = rules.to_vec();
        all.extend(
            crate::devices::agent_port_rules(sys_ports).map_err(|source| CgroupError::Ports {
                path: sys_ports.to_path_buf(),
                source,
            })?,
        );
        let program = crate::devices::program(&all);
        let prog = crate::sys::bpf_load_cgroup_device(&program).map_err(|source| {
            CgroupError::DeviceProgram {
                rules: all.len(),
                source,
            }
        })?;
        let attach = |source| CgroupError::Attach {
            path: self.path.clone(),
            source,
        };
        let dir = std::fs::File::open(&self.path).map_err(attach)?;
        // The attachment holds the program; our descriptor may close.
        crate::sys::bpf_attach_cgroup_device(dir.as_fd(), prog.as_fd()).map_err(attach)
    }

    /// `cgroup.procs`, where the container process writes "0" to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Whether the OOM killer killed any process of the cgroup.
    pub fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.path.join("memory.events"))
            .map(|s| oom_kills(&s) > 0)
            .unwrap_or(false)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        std::fs::write(&path, value).map_err(|source| CgroupError::Write {
            path,
            value: value.to_string(),
            source,
        })
    }
}

/// The `oom_kill` count of a `memory.events` file.
pub fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oom_kill_count() {
        let ev = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(ev), 2);
        assert_eq!(oom_kills("oom 1\n"), 0);
        assert_eq!(oom_kills(""), 0);
    }

    #[test]
    fn creates_and_limits_in_a_fake_hierarchy() {
        let root = std::env::temp_dir().join(format!("mu2-cg-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let cg = Cgroup::create(&root, Some(64 << 20), None).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("ctr/memory.max")).unwrap(),
            "67108864"
        );
        assert!(!root.join("ctr/pids.max").exists());
        assert_eq!(cg.procs_file(), root.join("ctr/cgroup.procs"));
        std::fs::write(root.join("ctr/memory.events"), "oom_kill 1\n").unwrap();
        cg.update(&mu2_protocol::Update {
            memory_bytes: Some(mu2_protocol::Limit::Unlimited),
            pids: Some(mu2_protocol::Limit::Amount(7)),
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("ctr/memory.max")).unwrap(),
            "max"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("ctr/pids.max")).unwrap(),
            "7"
        );
        assert!(cg.oom_killed());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
