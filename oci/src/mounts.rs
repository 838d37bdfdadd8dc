//! config.json's mounts → the VM's 9p shares and the agent's `Mount`s.
//!
//! Bind mounts become 9p shares (a file travels as its parent directory
//! plus its name); tmpfs, proc, sysfs, devpts, mqueue and cgroup mounts are
//! made by the guest kernel. Every mount keeps its option words, checked
//! here against the protocol's table (`mu2_protocol::mount_options`): the
//! guest applies all of them, and a word it cannot apply is refused by name
//! before a VM starts; errors name the mount by its index. The mounts the agent always provides (`/proc`,
//! `/sys`, `/dev`, `/dev/pts`, `/dev/shm`) are sent too, so that the spec's
//! options for them replace the agent's defaults.

use std::path::Path;

use mu2_microvm::spec::{Share, MAX_SHARES};
use mu2_protocol::mount_options::{self, MountFlag, MountKind, MountOption, MountOptionError};
use mu2_protocol::{Mount, MountSource};
use oci_spec::runtime::Spec;

/// Filesystem types the guest kernel makes on request. The guest has only
/// the unified cgroup hierarchy: a `cgroup` mount is a cgroup2 one there,
/// made inside the container's cgroup namespace.
const GUEST_FS_TYPES: &[&str] = &[
    "tmpfs", "mqueue", "proc", "sysfs", "devpts", "cgroup", "cgroup2",
];

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("invalid mounts[{index}] (destination {destination:?}): {reason}")]
    Refused {
        index: usize,
        destination: String,
        reason: String,
    },
    #[error("invalid mounts[{index}] (destination {destination:?})")]
    Option {
        index: usize,
        destination: String,
        #[source]
        source: MountOptionError,
    },
}

/// Whether the words leave the mount read-only (the last of `ro`/`rw`
/// and their recursive forms wins).
fn is_readonly(options: &[MountOption]) -> bool {
    options.iter().fold(false, |ro, o| match o {
        MountOption::Flag(MountFlag::ReadOnly, set) => *set,
        _ => ro,
    })
}

/// Maps the spec's mounts, adding a share for each bind mount to `shares`.
pub fn mounts(
    spec: &Spec,
    bundle: &Path,
    shares: &mut Vec<Share>,
) -> Result<Vec<Mount>, MountError> {
    let mut out = Vec::new();
    for (index, m) in spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let destination = m.destination().to_string_lossy().into_owned();
        let refuse = |reason: String| MountError::Refused {
            index,
            destination: destination.clone(),
            reason,
        };
        if !destination.starts_with('/') {
            return Err(refuse("destination is not an absolute path".into()));
        }
        let options = m.options().clone().unwrap_or_default();
        let typ = m.typ().clone().unwrap_or_default();
        let is_bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let kind = if is_bind {
            MountKind::Share
        } else {
            MountKind::Fs(&typ)
        };
        if !is_bind && !GUEST_FS_TYPES.contains(&typ.as_str()) {
            return Err(refuse(format!(
                "type {typ:?} cannot be honoured inside a microVM"
            )));
        }
        let parsed =
            mount_options::parse_all(&options, kind).map_err(|source| MountError::Option {
                index,
                destination: destination.clone(),
                source,
            })?;
        let readonly = is_readonly(&parsed);
        if !is_bind {
            out.push(Mount {
                destination,
                source: MountSource::Fs(typ),
                options,
                readonly,
                share_file: None,
            });
            continue;
        }
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
        // A VM shares directories: a file travels as its parent directory
        // plus its name, and the guest binds just that file. The guest
        // kernel (not the container) then sees the file's siblings too,
        // read-only when the mount is.
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
            options,
            readonly,
            share_file,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_ro_or_rw_word_decides() {
        let p = |w: &[&str]| mount_options::parse_all(w, MountKind::Share).unwrap();
        assert!(is_readonly(&p(&["rbind", "ro"])));
        assert!(!is_readonly(&p(&["ro", "rw"])));
        assert!(is_readonly(&p(&["rro"])));
        assert!(!is_readonly(&p(&["nosuid"])));
    }
}
