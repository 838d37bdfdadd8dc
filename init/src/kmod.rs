//! Loading the guest's kernel modules with `finit_module`.
//!
//! Debian's kernel builds virtio, 9p and overlayfs as modules; the initramfs
//! carries just these, flat in [`MODULE_DIR`], and init loads them in
//! dependency order (there is no modprobe or modules.dep in the guest). A
//! module that is missing as a file but present in `/sys/module` is built in;
//! one that is already loaded is fine. Anything else is fatal: without these
//! the agent cannot talk to the host.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// Where the initramfs keeps the modules.
pub const MODULE_DIR: &str = "/lib/modules/mu2";

/// Load order: every module after the ones it depends on.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_console",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",
];

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("kernel module {name} is neither at {path} nor built in")]
    Missing { name: &'static str, path: PathBuf },
    #[error("cannot open kernel module {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load kernel module {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// What happened to one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Loaded,
    AlreadyLoaded,
    BuiltIn,
}

/// Loads [`MODULES`] in order.
pub fn load_all(debug: bool) -> Result<(), ModuleError> {
    for name in MODULES {
        let outcome = load(Path::new(MODULE_DIR), Path::new("/sys/module"), name)?;
        if debug {
            crate::log(&format!("module {name}: {outcome:?}"));
        }
    }
    Ok(())
}

/// Loads `dir/NAME.ko`, or accepts `sys_module/NAME` as proof it is built in.
pub fn load(dir: &Path, sys_module: &Path, name: &'static str) -> Result<Outcome, ModuleError> {
    let path = dir.join(format!("{name}.ko"));
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return if sys_module.join(name).exists() {
                Ok(Outcome::BuiltIn)
            } else {
                Err(ModuleError::Missing { name, path })
            };
        }
        Err(source) => return Err(ModuleError::Open { path, source }),
    };
    match finit_module(&file, c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(Outcome::Loaded),
        Err(Errno::EEXIST) => Ok(Outcome::AlreadyLoaded),
        Err(source) => Err(ModuleError::Load { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_but_built_in_is_skipped() {
        let dir = std::env::temp_dir().join(format!("mu2-kmod-test-{}", std::process::id()));
        let sys = dir.join("sys");
        std::fs::create_dir_all(sys.join("virtio")).unwrap();
        assert_eq!(load(&dir, &sys, "virtio").unwrap(), Outcome::BuiltIn);
        assert!(matches!(
            load(&dir, &sys, "overlay"),
            Err(ModuleError::Missing {
                name: "overlay",
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn order_puts_dependencies_first() {
        let pos = |n: &str| MODULES.iter().position(|m| *m == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio_mmio"));
        assert!(pos("virtio") < pos("virtio_console"));
        assert!(pos("netfs") < pos("fscache"));
        assert!(pos("fscache") < pos("9p"));
        assert!(pos("9pnet") < pos("9pnet_virtio"));
        assert!(pos("9pnet_virtio") < pos("9p"));
    }
}
