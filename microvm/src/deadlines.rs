//! How long the host waits on a guest, the jailer or QEMU.
//!
//! The guest is hostile, so every wait on it ends: a VM that misses a
//! deadline is killed and the error says which wait ran out. The defaults
//! are generous (a TCG guest on a host loaded with other VMs has been seen
//! taking 30 s to boot); an operator tunes them in the `[timeouts]` table of
//! `/etc/mu2/config.toml` (or `$MU2_CONFIG`), durations written as
//! `"500ms"`, `"10s"` or `"2m"`:
//!
//! ```toml
//! [timeouts]
//! ready = "60s"        # boot to the agent's whole Ready frame
//! reply = "60s"        # Run to Prepared, Start to Started, Update to Updated
//! drain = "30s"        # after Exit: the guest delivers no counted output byte
//! poweroff = "10s"     # ExitAck to QEMU's exit
//! control_write = "10s" # one write on the control channel
//! jailer = "30s"       # the jailer's start line
//! ```
//!
//! `drain` bounds a guest that stalls, not a reader that is slow: while the
//! host is still writing output to a slow reader, no deadline runs (that is
//! back-pressure, as with runc).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::jail::config::ConfigError;

/// Every deadline of a VM's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub ready: Duration,
    pub reply: Duration,
    pub drain: Duration,
    pub poweroff: Duration,
    pub control_write: Duration,
    pub jailer: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            ready: Duration::from_secs(60),
            reply: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            poweroff: Duration::from_secs(10),
            control_write: Duration::from_secs(10),
            jailer: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
struct File {
    #[serde(default)]
    timeouts: Section,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Section {
    ready: Option<String>,
    reply: Option<String>,
    drain: Option<String>,
    poweroff: Option<String>,
    control_write: Option<String>,
    jailer: Option<String>,
}

impl Deadlines {
    /// The deadlines of the host's config file (see [`crate::jail::JailMode::load`]
    /// for where it is); defaults for what it does not set.
    pub fn load() -> Result<Deadlines, ConfigError> {
        let path = crate::jail::config::config_path();
        Self::parse(&path, &crate::config::read(&path)?)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Deadlines, ConfigError> {
        let malformed = |message: String| ConfigError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| malformed(e.message().to_string()))?;
        let t = file.timeouts;
        let mut d = Deadlines::default();
        for (name, value, slot) in [
            ("ready", t.ready, &mut d.ready),
            ("reply", t.reply, &mut d.reply),
            ("drain", t.drain, &mut d.drain),
            ("poweroff", t.poweroff, &mut d.poweroff),
            ("control_write", t.control_write, &mut d.control_write),
            ("jailer", t.jailer, &mut d.jailer),
        ] {
            if let Some(v) = value {
                let dur = parse_duration(&v)
                    .map_err(|why| malformed(format!("timeouts.{name}: {why}")))?;
                if dur.is_zero() {
                    return Err(malformed(format!("timeouts.{name}: must not be zero")));
                }
                *slot = dur;
            }
        }
        Ok(d)
    }
}

/// `"500ms"`, `"10s"`, `"2m"`, `"1h"` as a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m or h)")),
    }
    .ok_or_else(|| format!("{s:?} is too long"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration(" 2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "10", "s", "10x", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_overrides_defaults_and_refuses_nonsense() {
        let p = Path::new("/etc/mu2/config.toml");
        let d = Deadlines::parse(p, "[jail]\nuid_range = \"1-2\"\n").unwrap();
        assert_eq!(d, Deadlines::default());
        let d = Deadlines::parse(p, "[timeouts]\nready = \"5s\"\ndrain = \"250ms\"\n").unwrap();
        assert_eq!(d.ready, Duration::from_secs(5));
        assert_eq!(d.drain, Duration::from_millis(250));
        assert_eq!(d.reply, Deadlines::default().reply);
        for bad in [
            "[timeouts]\nready = \"0s\"\n",
            "[timeouts]\nready = \"soon\"\n",
            "[timeouts]\nreadyy = \"5s\"\n",
            "[timeouts]\nready = 5\n",
        ] {
            let e = Deadlines::parse(p, bad).unwrap_err();
            assert!(matches!(e, ConfigError::Malformed { .. }), "{bad}: {e}");
        }
    }
}
