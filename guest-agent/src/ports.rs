//! Finding and opening the virtio-serial ports by name.
//!
//! The kernel names each port's device `/dev/vportNpM` by position and
//! publishes the name QEMU gave it in `/sys/class/virtio-ports/*/name`. The
//! ports appear asynchronously once virtio_console is loaded, so the agent
//! polls for them with a deadline instead of waiting forever.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mu2_protocol::port;

pub const SYS_PORTS: &str = "/sys/class/virtio-ports";
pub const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("virtio-serial port {name} did not appear in {SYS_PORTS} within {waited:?}")]
    Timeout {
        name: &'static str,
        waited: Duration,
    },
    #[error("cannot open virtio-serial port {name} at {path}")]
    Open {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The four ports of the protocol, open read/write.
#[derive(Debug)]
pub struct Ports {
    pub control: File,
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

impl Ports {
    /// Waits for the four ports and opens them.
    pub fn open() -> Result<Ports, PortError> {
        let names = [port::CONTROL, port::STDIN, port::STDOUT, port::STDERR];
        let paths = wait_for(Path::new(SYS_PORTS), Path::new("/dev"), &names, WAIT)?;
        let mut files = names.iter().zip(paths).map(|(name, path)| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| PortError::Open { name, path, source })
        });
        let mut next = || files.next().expect("four names, four paths");
        Ok(Ports {
            control: next()?,
            stdin: next()?,
            stdout: next()?,
            stderr: next()?,
        })
    }
}

/// Polls until every named port has a device node; returns their paths in
/// the order of `names`.
pub fn wait_for(
    sys: &Path,
    dev: &Path,
    names: &[&'static str],
    timeout: Duration,
) -> Result<Vec<PathBuf>, PortError> {
    let start = Instant::now();
    loop {
        let found = scan(sys, dev);
        let paths: Vec<Option<PathBuf>> = names
            .iter()
            .map(|n| {
                found
                    .iter()
                    .find(|(name, path)| name == n && path.exists())
                    .map(|(_, p)| p.clone())
            })
            .collect();
        if let Some(missing) = paths.iter().position(Option::is_none) {
            if start.elapsed() >= timeout {
                return Err(PortError::Timeout {
                    name: names[missing],
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(POLL);
            continue;
        }
        return Ok(paths.into_iter().flatten().collect());
    }
}

/// (name, device path) of every port the kernel announced so far.
fn scan(sys: &Path, dev: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(sys) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = std::fs::read_to_string(e.path().join("name")).ok()?;
            Some((name.trim_end().to_string(), dev.join(e.file_name())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ports_by_name_and_times_out_on_missing() {
        let dir = std::env::temp_dir().join(format!("mu2-ports-{}", std::process::id()));
        let sys = dir.join("sys");
        let dev = dir.join("dev");
        for (node, name) in [("vport0p1", "mu2.control"), ("vport0p2", "mu2.stdin")] {
            std::fs::create_dir_all(sys.join(node)).unwrap();
            std::fs::write(sys.join(node).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vport0p1"), "").unwrap();
        std::fs::write(dev.join("vport0p2"), "").unwrap();
        let got = wait_for(&sys, &dev, &["mu2.stdin", "mu2.control"], WAIT).unwrap();
        assert_eq!(got, vec![dev.join("vport0p2"), dev.join("vport0p1")]);
        let err = wait_for(&sys, &dev, &["mu2.stdout"], Duration::from_millis(30)).unwrap_err();
        assert!(matches!(
            err,
            PortError::Timeout {
                name: "mu2.stdout",
                ..
            }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
