//! The operator's jail settings: `/etc/mu2/config.toml` (or `$MU2_CONFIG`).
//!
//! ```toml
//! [jail]
//! # Host uids and gids handed to VMs, 65536 per VM (its user namespace).
//! uid_range = "1000000000-1099999999"
//! # enabled = false   # run QEMU without a jail; `mu2 check` reports it
//!
//! [vms]
//! # Where the VMs' ownership records live (crate::record), jailed or not.
//! # record_dir = "/run/mu2/vms"
//! ```
//!
//! The jail fails closed: without a uid range (no file, or no key) every
//! launch is refused with an error naming the file, unless `enabled = false`
//! says, explicitly, that the operator wants no jail.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/mu2/config.toml";
pub const CONFIG_ENV: &str = "MU2_CONFIG";
/// Where per-VM jail directories live.
pub const DEFAULT_JAIL_ROOT: &str = "/run/mu2/jail";
/// Where the uid-block claims live.
pub const DEFAULT_CLAIM_DIR: &str = "/run/mu2/ids";
/// Where the VMs' ownership records live ([`crate::record`]).
pub const DEFAULT_RECORD_DIR: &str = "/run/mu2/vms";
/// Host ids mapped into one VM's user namespace (uids 0..65535 of an image).
pub const IDS_PER_VM: u32 = 65536;
/// The jailer binary's file name.
pub const JAILER_BIN: &str = "mu2-jailer";
pub const DEFAULT_JAILER: &str = "/usr/local/bin/mu2-jailer";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is malformed: {message}")]
    Malformed { path: PathBuf, message: String },
}

/// The host's config file: `$MU2_CONFIG`, or [`DEFAULT_CONFIG`].
pub fn config_path() -> PathBuf {
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// A block-aligned range of host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    /// How many VMs the range can hold at once.
    pub fn blocks(&self) -> u32 {
        (self.last - self.first + 1) / IDS_PER_VM
    }

    /// First host id of block `n`.
    pub fn block(&self, n: u32) -> u32 {
        self.first + n * IDS_PER_VM
    }

    fn parse(s: &str) -> Result<IdRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("uid_range {s:?} is not FIRST-LAST"))?;
        let first: u32 = a
            .trim()
            .parse()
            .map_err(|_| format!("uid_range {s:?}: {a:?} is not a number"))?;
        let last: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("uid_range {s:?}: {b:?} is not a number"))?;
        if first == 0 {
            return Err(format!("uid_range {s:?} includes root (uid 0)"));
        }
        if last < first || last - first + 1 < IDS_PER_VM {
            return Err(format!(
                "uid_range {s:?} holds fewer than {IDS_PER_VM} ids (one VM's block)"
            ));
        }
        if last >= u32::MAX - 1 {
            return Err(format!(
                "uid_range {s:?} reaches the invalid uid {}",
                u32::MAX
            ));
        }
        Ok(IdRange { first, last })
    }
}

/// Resource limits of the jailed VMM process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: QEMU's 9p server keeps one fd per open guest file.
    pub nofile: u64,
    /// RLIMIT_NPROC: counted per uid, and each VM has its own uid, so this
    /// bounds QEMU's threads (vCPUs, I/O, the 9p worker pool).
    pub nproc: u64,
    /// RLIMIT_FSIZE: the largest file QEMU may write through a writable
    /// share.
    pub fsize: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            nofile: 4096,
            nproc: 512,
            fsize: 64 << 30,
        }
    }
}

/// The jail as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The file it came from (for errors and `mu2 check`).
    pub source: PathBuf,
    /// `None`: not configured, and launches fail closed.
    pub ids: Option<IdRange>,
    pub jail_root: PathBuf,
    pub claim_dir: PathBuf,
    /// `None`: `mu2-jailer` beside the running binary, else
    /// [`DEFAULT_JAILER`].
    pub jailer: Option<PathBuf>,
    pub rlimits: Rlimits,
    /// `[vms] record_dir`: the VMs' ownership records.
    pub record_dir: PathBuf,
}

/// Whether QEMU runs jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JailMode {
    Jailed(JailConfig),
    /// The operator set `enabled = false` in this file.
    Disabled {
        source: PathBuf,
        /// `[vms] record_dir`: unjailed VMs have ownership records too.
        record_dir: PathBuf,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    jail: JailSection,
    /// Read by [`crate::deadlines`].
    #[serde(default)]
    timeouts: Option<toml::Table>,
    /// Read by [`crate::template`].
    #[serde(default)]
    templates: Option<toml::Table>,
    /// Read by [`crate::pool`].
    #[serde(default)]
    pool: Option<toml::Table>,
    #[serde(default)]
    vms: VmsSection,
}

/// Host-wide VM bookkeeping, jailed or not.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VmsSection {
    record_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JailSection {
    enabled: Option<bool>,
    uid_range: Option<String>,
    jail_root: Option<PathBuf>,
    claim_dir: Option<PathBuf>,
    jailer: Option<PathBuf>,
    rlimit_nofile: Option<u64>,
    rlimit_nproc: Option<u64>,
    rlimit_fsize: Option<u64>,
}

impl JailMode {
    /// Reads `$MU2_CONFIG`, or [`DEFAULT_CONFIG`]; a missing file means a
    /// jail with nothing configured (which refuses to launch).
    pub fn load() -> Result<JailMode, ConfigError> {
        Self::load_from(&config_path())
    }

    pub fn load_from(path: &Path) -> Result<JailMode, ConfigError> {
        Self::parse(path, &crate::config::read(path)?)
    }

    pub fn parse(path: &Path, text: &str) -> Result<JailMode, ConfigError> {
        let malformed = |message: String| ConfigError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| malformed(e.message().to_string()))?;
        let _ = (file.timeouts, file.templates, file.pool);
        let j = file.jail;
        let record_dir = match file.vms.record_dir {
            Some(p) if !p.is_absolute() => {
                return Err(malformed(format!(
                    "{} is not an absolute path",
                    p.display()
                )))
            }
            Some(p) => p,
            None => DEFAULT_RECORD_DIR.into(),
        };
        if j.enabled == Some(false) {
            return Ok(JailMode::Disabled {
                source: path.to_path_buf(),
                record_dir,
            });
        }
        let ids = j
            .uid_range
            .as_deref()
            .map(IdRange::parse)
            .transpose()
            .map_err(malformed)?;
        let defaults = Rlimits::default();
        for p in [&j.jail_root, &j.claim_dir, &j.jailer]
            .into_iter()
            .flatten()
        {
            if !p.is_absolute() {
                return Err(malformed(format!(
                    "{} is not an absolute path",
                    p.display()
                )));
            }
        }
        Ok(JailMode::Jailed(JailConfig {
            source: path.to_path_buf(),
            ids,
            jail_root: j.jail_root.unwrap_or_else(|| DEFAULT_JAIL_ROOT.into()),
            claim_dir: j.claim_dir.unwrap_or_else(|| DEFAULT_CLAIM_DIR.into()),
            jailer: j.jailer,
            rlimits: Rlimits {
                nofile: j.rlimit_nofile.unwrap_or(defaults.nofile),
                nproc: j.rlimit_nproc.unwrap_or(defaults.nproc),
                fsize: j.rlimit_fsize.unwrap_or(defaults.fsize),
            },
            record_dir,
        }))
    }

    /// Where the VMs' ownership records live, jailed or not.
    pub fn record_dir(&self) -> &Path {
        match self {
            JailMode::Jailed(c) => &c.record_dir,
            JailMode::Disabled { record_dir, .. } => record_dir,
        }
    }

    /// One line for `mu2 check`.
    pub fn describe(&self) -> String {
        match self {
            JailMode::Disabled { source, .. } => format!(
                "jail: DISABLED by {} (enabled = false): QEMU runs as root, unconfined",
                source.display()
            ),
            JailMode::Jailed(c) => match c.ids {
                None => format!(
                    "jail: enabled but NOT CONFIGURED: no uid_range in {}; every launch will fail",
                    c.source.display()
                ),
                Some(r) => format!(
                    "jail: enabled ({}), uids {}-{} ({} VMs at once), jails in {}",
                    c.source.display(),
                    r.first,
                    r.last,
                    r.blocks(),
                    c.jail_root.display()
                ),
            },
        }
    }
}

impl JailConfig {
    /// The jailer binary: configured, else beside the running executable,
    /// else the installed one.
    pub fn jailer_path(&self) -> PathBuf {
        if let Some(p) = &self.jailer {
            return p.clone();
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                let p = dir.join(JAILER_BIN);
                if p.is_file() {
                    return p;
                }
            }
        }
        PathBuf::from(DEFAULT_JAILER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<JailMode, ConfigError> {
        JailMode::parse(Path::new("/etc/mu2/config.toml"), t)
    }

    #[test]
    fn missing_file_is_jailed_without_ids() {
        let m = JailMode::load_from(Path::new("/nonexistent/mu2.toml")).unwrap();
        match m {
            JailMode::Jailed(c) => assert_eq!(c.ids, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn range_and_disable() {
        let JailMode::Jailed(c) = parse("[jail]\nuid_range = \"100000-231071\"\n").unwrap() else {
            panic!()
        };
        assert_eq!(
            c.ids,
            Some(IdRange {
                first: 100000,
                last: 231071
            })
        );
        assert_eq!(c.ids.unwrap().blocks(), 2);
        assert_eq!(c.ids.unwrap().block(1), 165536);
        assert!(matches!(
            parse("[jail]\nenabled = false\n").unwrap(),
            JailMode::Disabled { .. }
        ));
    }

    #[test]
    fn the_record_dir_is_configurable_jailed_or_not() {
        assert_eq!(
            parse("").unwrap().record_dir(),
            Path::new(DEFAULT_RECORD_DIR)
        );
        for t in [
            "[jail]\nenabled = false\n[vms]\nrecord_dir = \"/tmp/r\"\n",
            "[jail]\nuid_range = \"100000-231071\"\n[vms]\nrecord_dir = \"/tmp/r\"\n",
        ] {
            assert_eq!(parse(t).unwrap().record_dir(), Path::new("/tmp/r"), "{t}");
        }
    }

    #[test]
    fn bad_ranges_and_keys_are_refused() {
        for t in [
            "[jail]\nuid_range = \"0-70000\"\n",
            "[jail]\nuid_range = \"100000-100010\"\n",
            "[jail]\nuid_range = \"x-y\"\n",
            "[jail]\nuid_range = \"100000\"\n",
            "[jail]\nuid_rnage = \"100000-300000\"\n",
            "[jail]\njail_root = \"relative\"\n",
            "[vms]\nrecord_dir = \"relative\"\n",
            "[vms]\nrecords = \"/x\"\n",
            "not toml",
        ] {
            let e = parse(t).unwrap_err();
            assert!(matches!(e, ConfigError::Malformed { .. }), "{t}: {e}");
        }
    }
}
