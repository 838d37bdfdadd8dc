//! Finding the installed guest image (kernel + initramfs).
//!
//! `scripts/install` puts it in [`DEFAULT_GUEST_DIR`]; the environment
//! variable [`GUEST_DIR_ENV`] points elsewhere.

use std::path::{Path, PathBuf};

pub const DEFAULT_GUEST_DIR: &str = "/usr/local/lib/mu2/guest";
pub const GUEST_DIR_ENV: &str = "MU2_GUEST_DIR";
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRD_FILE: &str = "initrd.img";

#[derive(Debug, Clone)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no guest image in {dir}: {missing} is missing (run scripts/install, or set {GUEST_DIR_ENV})"
)]
pub struct GuestImageError {
    pub dir: PathBuf,
    pub missing: &'static str,
}

impl GuestImage {
    /// The image in `dir`, or in `$MU2_GUEST_DIR`, or in the default place.
    pub fn locate(dir: Option<&Path>) -> Result<GuestImage, GuestImageError> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::var_os(GUEST_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_DIR)),
        };
        let kernel = dir.join(KERNEL_FILE);
        let initrd = dir.join(INITRD_FILE);
        if !kernel.is_file() {
            return Err(GuestImageError {
                dir,
                missing: KERNEL_FILE,
            });
        }
        if !initrd.is_file() {
            return Err(GuestImageError {
                dir,
                missing: INITRD_FILE,
            });
        }
        Ok(GuestImage {
            dir,
            kernel,
            initrd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pieces_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = GuestImage::locate(Some(d.path())).unwrap_err();
        assert_eq!(e.missing, KERNEL_FILE);
        std::fs::write(d.path().join(KERNEL_FILE), "k").unwrap();
        let e = GuestImage::locate(Some(d.path())).unwrap_err();
        assert_eq!(e.missing, INITRD_FILE);
        assert!(e.to_string().contains("scripts/install"));
        std::fs::write(d.path().join(INITRD_FILE), "i").unwrap();
        let g = GuestImage::locate(Some(d.path())).unwrap();
        assert_eq!(g.kernel, d.path().join(KERNEL_FILE));
    }
}
