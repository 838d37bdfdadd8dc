//! The host's mu2 configuration, `/etc/mu2/config.toml` (or `$MU2_CONFIG`),
//! read once for a VM: its jail, its deadlines and its templates. Each
//! table has its own parser next to what it configures
//! ([`crate::jail::config`], [`crate::deadlines`], [`crate::template`]).

use std::path::Path;

use crate::deadlines::Deadlines;
use crate::jail::config::{config_path, ConfigError, JailMode};
use crate::template::TemplateMode;

/// Everything of the config file a VM's spec takes.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub jail: JailMode,
    pub deadlines: Deadlines,
    pub templates: TemplateMode,
    /// Whether VMs are leased from the pool first (the `[pool]` table).
    pub pool: crate::pool::PoolMode,
}

impl HostConfig {
    pub fn load() -> Result<HostConfig, ConfigError> {
        let path = config_path();
        let text = read(&path)?;
        Ok(HostConfig {
            jail: JailMode::parse(&path, &text)?,
            deadlines: Deadlines::parse(&path, &text)?,
            templates: TemplateMode::parse(&path, &text)?.with_env(),
            pool: crate::pool::PoolConfig::parse(&path, &text)?.mode(),
        })
    }
}

/// The file's text; a missing file reads as empty (every default).
pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}
