//! Attaching an image to a running jail: a VM leased from a pool was
//! started before its request was known, with an empty share; the lessee
//! attaches the request's rootfs under that share inside the jail's mount
//! namespace (QEMU's 9p export holds the share's directory open, so the
//! image goes in a directory of it, and the guest is told which).
//!
//! The trees are cloned and id-mapped on the host, exactly as the jailer
//! binds a share (read-only, nosuid, nodev, into the VM's user namespace;
//! an overlayfs by its layers), then moved into the jail from a thread that
//! entered QEMU's mount namespace through its pidfd. Nothing is mounted on
//! the host: the mounts end with the jail's namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use nix::sched::CloneFlags;

use super::jailer::{cpath, is_overlay, overlay_layers, overlay_of};
use super::{sys, JailError};

/// Where an image goes in a pooled VM's jail.
#[derive(Debug, Clone)]
pub struct AttachPoint {
    /// The share's directory on the host (layers are staged under it).
    pub host_share: PathBuf,
    /// The same directory as QEMU sees it in its jail.
    pub jail_share: PathBuf,
    /// The directory of the share that receives the image.
    pub subdir: String,
}

/// The staging directory's name, beside the image's directory.
const STAGE: &str = ".stage";

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

/// Attaches `source` (a directory, or an overlayfs mount point) read-only
/// at `at` in the jail of QEMU `qemu_pid`, whose pidfd is `qemu`.
pub fn attach_image(
    qemu_pid: u32,
    qemu: BorrowedFd<'_>,
    source: &Path,
    at: &AttachPoint,
) -> Result<(), JailError> {
    let userns = File::open(format!("/proc/{qemu_pid}/ns/user")).map_err(io(format!(
        "cannot open the user namespace of pid {qemu_pid}"
    )))?;
    // The namespace was opened by pid: it is QEMU's only if QEMU (pinned by
    // its pidfd) still runs now.
    crate::sys::pidfd_send_signal(qemu, 0).map_err(io("the VM's QEMU is gone"))?;
    let path = sys::open_no_symlinks(&cpath(source)?).map_err(io(format!(
        "cannot open {} (without following a symlink)",
        source.display()
    )))?;
    let ro = sys::MOUNT_ATTR_RDONLY
        | sys::MOUNT_ATTR_NOSUID
        | sys::MOUNT_ATTR_NODEV
        | sys::MOUNT_ATTR_IDMAP;
    let mapped = |tree: OwnedFd, what: &Path| {
        sys::mount_setattr(&tree, ro, Some(userns.as_raw_fd()))
            .map_err(io(format!("cannot id-map {}", what.display())))?;
        Ok::<_, JailError>(tree)
    };
    let target = at.jail_share.join(&at.subdir);
    if !is_overlay(&path) {
        let tree = sys::open_tree_clone_fd(&path)
            .map_err(io(format!("cannot open {}", source.display())))?;
        let tree = mapped(tree, source)?;
        return in_mount_ns(qemu, move || {
            sys::move_mount(&tree, &cpath(&target)?).map_err(io(format!(
                "cannot attach {} in the jail",
                source.display()
            )))
        });
    }
    // An overlayfs cannot be id-mapped whole: its layers are, staged in the
    // jail, and a read-only overlay of them is made there.
    let layers = overlay_layers(source)?;
    let mut trees = Vec::new();
    for layer in &layers {
        let tree = sys::open_tree_clone(&cpath(layer)?)
            .map_err(io(format!("cannot open layer {}", layer.display())))?;
        trees.push(mapped(tree, layer)?);
    }
    let host_stage = at.host_share.join(STAGE);
    let jail_stage = at.jail_share.join(STAGE);
    let made = (0..trees.len())
        .map(|i| {
            let d = host_stage.join(i.to_string());
            std::fs::create_dir_all(&d).map_err(io(format!("cannot create {}", d.display())))
        })
        .collect::<Result<Vec<_>, _>>();
    let result = made.and_then(|_| {
        in_mount_ns(qemu, move || {
            let staged: Vec<PathBuf> = (0..trees.len())
                .map(|i| jail_stage.join(i.to_string()))
                .collect();
            let mut moved = Vec::new();
            let r = (|| {
                for (tree, dir) in trees.iter().zip(&staged) {
                    sys::move_mount(tree, &cpath(dir)?)
                        .map_err(io(format!("cannot stage a layer at {}", dir.display())))?;
                    moved.push(dir.clone());
                }
                overlay_of(&staged, &target, source)
            })();
            // The overlay holds its layers: the staged mounts can go.
            for d in moved.iter().rev() {
                let _ = umount2(d, MntFlags::MNT_DETACH);
            }
            r
        })
    });
    for e in std::fs::read_dir(&host_stage)
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(e.path());
    }
    result
}

/// Runs `f` on a thread of its own that entered the mount namespace of
/// the process `pidfd` names (a thread's filesystem context is unshared
/// first, as setns into a mount namespace requires; the thread ends with
/// it, so the caller's namespace is untouched).
fn in_mount_ns<F>(pidfd: BorrowedFd<'_>, f: F) -> Result<(), JailError>
where
    F: FnOnce() -> Result<(), JailError> + Send,
{
    let fd = pidfd
        .try_clone_to_owned()
        .map_err(io("cannot duplicate the pidfd"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_FS).map_err(|e| JailError::Io {
                what: "cannot unshare the thread's filesystem context".into(),
                source: e.into(),
            })?;
            nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNS).map_err(|e| JailError::Io {
                what: "cannot enter the jail's mount namespace".into(),
                source: e.into(),
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(JailError::Setup("the attaching thread panicked".into())))
    })
}
