//! config.json's `mounts` as the agent's mounts and the VM's 9p shares.
//!
//! Bind mounts become 9p shares (a file travels as its parent directory
//! plus its name); tmpfs, mqueue and the like are made by the guest; `/proc`,
//! `/sys`, `/dev`, `/dev/pts`, `/dev/shm` and cgroup mounts are always
//! provided by the agent and so skipped; anything else a VM cannot honour
//! is refused, naming the mount by its index.

use std::path::Path;

use mu2_microvm::spec::{Share, MAX_SHARES};
use mu2_protocol::{Mount, MountSource};
use oci_spec::runtime::Spec;

use crate::error::BundleError;

/// Destinations the agent always provides itself.
const AGENT_PROVIDED: &[&str] = &["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"];
/// Filesystem types the guest kernel makes on request.
const GUEST_FS_TYPES: &[&str] = &["tmpfs", "mqueue", "proc", "sysfs", "devpts"];

pub(crate) fn mounts(
    spec: &Spec,
    bundle: &Path,
    shares: &mut Vec<Share>,
) -> Result<Vec<Mount>, BundleError> {
    let mut out = Vec::new();
    for (index, m) in spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let destination = m.destination().to_string_lossy().into_owned();
        let refuse = |reason: String| BundleError::Mount {
            index,
            destination: destination.clone(),
            reason,
        };
        if !destination.starts_with('/') {
            return Err(refuse("destination is not an absolute path".into()));
        }
        let trimmed = destination.trim_end_matches('/');
        let options = m.options().clone().unwrap_or_default();
        let typ = m.typ().clone().unwrap_or_default();
        let is_bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind
            && (AGENT_PROVIDED.contains(&trimmed)
                || typ == "cgroup"
                || typ == "cgroup2"
                || trimmed == "/sys/fs/cgroup")
        {
            continue;
        }
        let readonly = options.iter().any(|o| o == "ro");
        if is_bind {
            let source = m
                .source()
                .as_ref()
                .filter(|s| !s.as_os_str().is_empty())
                .ok_or_else(|| refuse("bind mount without a source".into()))?;
            let source = if source.is_absolute() {
                source.clone()
            } else {
                bundle.join(source)
            };
            // A VM shares directories: a file travels as its parent
            // directory plus its name, and the guest binds just that file.
            // The guest kernel (not the container) then sees the file's
            // siblings too, read-only when the mount is.
            let (dir, share_file) = if source.is_dir() {
                (source, None)
            } else if source.is_file() {
                let name = source.file_name().map(|n| n.to_string_lossy().into_owned());
                match (source.parent(), name) {
                    (Some(parent), Some(name)) => (parent.to_path_buf(), Some(name)),
                    _ => {
                        return Err(refuse(format!(
                            "bind source {} has no parent",
                            source.display()
                        )))
                    }
                }
            } else {
                return Err(refuse(format!(
                    "bind source {} is neither a directory nor a regular file",
                    source.display()
                )));
            };
            let tag = match shares
                .iter()
                .skip(1)
                .find(|s| s.host_path == dir && s.readonly == readonly && share_file.is_some())
            {
                Some(s) => s.tag.clone(),
                None => {
                    if shares.len() >= MAX_SHARES {
                        return Err(refuse(format!(
                            "a VM has at most {MAX_SHARES} shares (the rootfs and {} bind \
                             mounted directories)",
                            MAX_SHARES - 1
                        )));
                    }
                    let tag = format!("vol{}", shares.len() - 1);
                    shares.push(Share {
                        tag: tag.clone(),
                        host_path: dir,
                        readonly,
                    });
                    tag
                }
            };
            out.push(Mount {
                destination,
                source: MountSource::Share(tag),
                options: Vec::new(),
                readonly,
                share_file,
            });
        } else if GUEST_FS_TYPES.contains(&typ.as_str()) {
            out.push(Mount {
                destination,
                source: MountSource::Fs(typ),
                options,
                readonly,
                share_file: None,
            });
        } else {
            return Err(refuse(format!(
                "type {typ:?} cannot be honoured inside a microVM"
            )));
        }
    }
    Ok(out)
}
