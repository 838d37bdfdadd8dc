//! The pool of warm VMs (docs/pool.md): a host daemon, `mu2 pool serve`,
//! keeps VMs restored from templates and never used, per VM shape, within
//! a memory budget, and leases each to exactly one owner over a unix
//! socket (`/run/mu2/pool.sock`). A lease hands over the VM's channel fds,
//! pidfds of QEMU and its jailer and the VM's lifeline (SCM_RIGHTS), and
//! its ownership record moves to the lessee. A VM is never returned.
//!
//! - [`server`]: the daemon (warm sets, refill, leases, status).
//! - [`client`]: [`crate::Vm::launch`]'s first way to a VM: lease, take
//!   the record over, attach the request's image under the VM's share,
//!   give it its identity. Any failure falls back to a restore or a boot.
//! - [`wire`]: the socket's messages, bounded and checked both ways.
//!
//! A warm VM was started before its request was known: its one 9p share
//! is an empty directory of the pool's (`<dir>/vms/<id>`), and the
//! lessee attaches the request's rootfs in the jail's mount namespace
//! under it, at [`IMAGE_SUBDIR`] ([`crate::jail::attach`]). Warm VMs live by
//! a lifeline, not by their parent: the jailer kills QEMU once every copy
//! of the lifeline's write end is closed, so a pool that dies takes its
//! unleased VMs with it and leaves leased ones to their lessees.

pub mod client;
pub mod server;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::jail::config::ConfigError;

/// Where the pool listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/mu2/pool.sock";
/// The pool's working directory (the warm VMs' share directories).
pub const DEFAULT_DIR: &str = "/run/mu2/pool";
/// Warm VMs kept per shape unless configured otherwise.
pub const DEFAULT_WARM: u32 = 2;
/// Guest memory the warm VMs may hold in total, by default.
pub const DEFAULT_MAX_MIB: u64 = 1024;
/// How long a lessee waits for the pool before it restores or boots.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// The directory of a warm VM's share that receives the request's image.
pub const IMAGE_SUBDIR: &str = "root";
/// The share tag of the configured shapes' warm VMs (the OCI rootfs's).
pub const DEFAULT_SHARE_TAG: &str = "rootfs";
/// Switches the pool off for one process (`off`), whatever the config.
pub const POOL_ENV: &str = "MU2_POOL";

/// A VM shape the pool keeps warm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub memory_mib: u32,
    pub vcpus: u32,
}

/// Whether, and where, a VM is leased from the pool (a [`crate::VmSpec`]'s
/// `pool`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolMode {
    Off,
    Use {
        socket: PathBuf,
        lease_timeout: Duration,
    },
}

/// The daemon's settings: the `[pool]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub enabled: bool,
    pub socket: PathBuf,
    pub dir: PathBuf,
    /// Warm VMs per shape.
    pub warm: u32,
    /// Guest memory of all warm VMs together, MiB.
    pub max_mib: u64,
    pub lease_timeout: Duration,
    /// Shapes kept warm from the start.
    pub shapes: Vec<Shape>,
    /// Also keep warm a shape that was asked for and missed (up to
    /// [`MAX_SHAPES`] shapes).
    pub learn: bool,
    /// Clone warm VMs from a shared template in memory (docs/templates.md);
    /// `false`: from the template file, each loading its own RAM.
    pub shared_templates: bool,
}

/// Most shapes the pool keeps.
pub const MAX_SHAPES: usize = 8;

#[derive(Debug, Deserialize, Default)]
struct File_ {
    #[serde(default)]
    pool: Section,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Section {
    enabled: Option<bool>,
    socket: Option<PathBuf>,
    dir: Option<PathBuf>,
    warm: Option<u32>,
    max_mib: Option<u64>,
    lease_timeout: Option<String>,
    shapes: Option<Vec<Shape>>,
    learn: Option<bool>,
    shared_templates: Option<bool>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            enabled: true,
            socket: DEFAULT_SOCKET.into(),
            dir: DEFAULT_DIR.into(),
            warm: DEFAULT_WARM,
            max_mib: DEFAULT_MAX_MIB,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            shapes: vec![Shape {
                memory_mib: crate::spec::DEFAULT_MEMORY_MIB,
                vcpus: 1,
            }],
            learn: true,
            shared_templates: true,
        }
    }
}

impl PoolConfig {
    pub fn parse(path: &Path, text: &str) -> Result<PoolConfig, ConfigError> {
        let malformed = |message: String| ConfigError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let file: File_ = toml::from_str(text).map_err(|e| malformed(e.message().to_string()))?;
        let p = file.pool;
        let d = PoolConfig::default();
        let abs = |what: &str, v: Option<PathBuf>, default: PathBuf| {
            let v = v.unwrap_or(default);
            if v.is_absolute() {
                Ok(v)
            } else {
                Err(malformed(format!(
                    "pool.{what}: {} is not an absolute path",
                    v.display()
                )))
            }
        };
        let warm = p.warm.unwrap_or(d.warm);
        if warm > 64 {
            return Err(malformed(format!("pool.warm: {warm} is not in 0..=64")));
        }
        let max_mib = p.max_mib.unwrap_or(d.max_mib);
        if max_mib > 1 << 30 {
            return Err(malformed(format!("pool.max_mib: {max_mib} is too large")));
        }
        let lease_timeout = match p.lease_timeout {
            Some(t) => crate::deadlines::parse_duration(&t)
                .map_err(|e| malformed(format!("pool.lease_timeout: {e}")))?,
            None => d.lease_timeout,
        };
        if lease_timeout.is_zero() || lease_timeout > Duration::from_secs(60) {
            return Err(malformed(
                "pool.lease_timeout: must be more than 0 and at most 60s".into(),
            ));
        }
        let shapes = p.shapes.unwrap_or(d.shapes);
        if shapes.len() > MAX_SHAPES {
            return Err(malformed(format!(
                "pool.shapes: {} shapes, at most {MAX_SHAPES}",
                shapes.len()
            )));
        }
        for s in &shapes {
            if !(crate::spec::MIN_MEMORY_MIB..=crate::spec::MAX_MEMORY_MIB).contains(&s.memory_mib)
                || !(1..=crate::spec::MAX_VCPUS).contains(&s.vcpus)
            {
                return Err(malformed(format!(
                    "pool.shapes: {} MiB, {} vCPUs is not a VM shape",
                    s.memory_mib, s.vcpus
                )));
            }
        }
        Ok(PoolConfig {
            enabled: p.enabled.unwrap_or(d.enabled),
            socket: abs("socket", p.socket, d.socket)?,
            dir: abs("dir", p.dir, d.dir)?,
            warm,
            max_mib,
            lease_timeout,
            shapes,
            learn: p.learn.unwrap_or(d.learn),
            shared_templates: p.shared_templates.unwrap_or(d.shared_templates),
        })
    }

    pub fn load() -> Result<PoolConfig, ConfigError> {
        let path = crate::jail::config::config_path();
        Self::parse(&path, &crate::config::read(&path)?)
    }

    /// What a VM spec takes of it: lease from the pool unless it, or
    /// [`POOL_ENV`]`=off`, says not to.
    pub fn mode(&self) -> PoolMode {
        let off = std::env::var(POOL_ENV).as_deref() == Ok("off");
        if !self.enabled || off {
            return PoolMode::Off;
        }
        PoolMode::Use {
            socket: self.socket.clone(),
            lease_timeout: self.lease_timeout,
        }
    }
}

/// Makes a warm VM's share directory `dir`: itself, its image directory,
/// all root's and empty.
pub(crate) fn make_share_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o755).create(dir)?;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dir.join(IMAGE_SUBDIR))
}

/// Removes a warm VM's share directory: only the empty directories it is
/// made of (an image is only ever attached in the jail's namespace, so on
/// the host nothing else is there; anything else is left alone, and
/// reported). `Ok(false)`: it was not there.
pub fn remove_share_dir(dir: &Path) -> std::io::Result<bool> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(false);
    }
    let stage = dir.join(".stage");
    for e in std::fs::read_dir(&stage).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(e.path());
    }
    let _ = std::fs::remove_dir(&stage);
    let _ = std::fs::remove_dir(dir.join(IMAGE_SUBDIR));
    std::fs::remove_dir(dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PoolConfig, ConfigError> {
        PoolConfig::parse(Path::new("/c"), text)
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(parse("").unwrap(), PoolConfig::default());
        let c = parse(
            "[pool]\nwarm = 3\nmax_mib = 512\nlease_timeout = \"500ms\"\n\
             shapes = [{ memory_mib = 128, vcpus = 2 }]\nlearn = false\n",
        )
        .unwrap();
        assert_eq!(c.warm, 3);
        assert_eq!(c.max_mib, 512);
        assert_eq!(c.lease_timeout, Duration::from_millis(500));
        assert_eq!(
            c.shapes,
            [Shape {
                memory_mib: 128,
                vcpus: 2
            }]
        );
        assert!(!c.learn);
        assert_eq!(
            parse("[pool]\nenabled = false\n").unwrap().mode(),
            PoolMode::Off
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "[pool]\nsocket = \"rel\"\n",
            "[pool]\nwarm = 65\n",
            "[pool]\nlease_timeout = \"0s\"\n",
            "[pool]\nlease_timeout = \"2h\"\n",
            "[pool]\nshapes = [{ memory_mib = 8, vcpus = 1 }]\n",
            "[pool]\nshapes = [{ memory_mib = 256, vcpus = 0 }]\n",
            "[pool]\nwhat = 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn share_dirs_are_made_and_removed_empty_only() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("vm1");
        make_share_dir(&d).unwrap();
        assert!(d.join(IMAGE_SUBDIR).is_dir());
        std::fs::create_dir_all(d.join(".stage/0")).unwrap();
        assert!(remove_share_dir(&d).unwrap());
        assert!(!d.exists());
        assert!(!remove_share_dir(&d).unwrap());
        // Something that is not ours stays.
        make_share_dir(&d).unwrap();
        std::fs::write(d.join(IMAGE_SUBDIR).join("f"), b"x").unwrap();
        assert!(remove_share_dir(&d).is_err());
        assert!(d.join(IMAGE_SUBDIR).join("f").exists());
    }
}
