//! Mounting the rootfs containerd prepared (a snapshot: overlay, or a bind
//! mount) on BUNDLE/rootfs, which the VM then gets as its read-only 9p root.
//!
//! Done in-process with mount(2): the containerd-shim crate's helper forks
//! a child from this multi-threaded process and relies on its SIGCHLD
//! reaper, which this shim turns off (QEMU is reaped by its owner).

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Splits mount options into flags and the filesystem's data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, f) = match o.as_str() {
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "bind" => (true, MsFlags::MS_BIND),
            "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nodev" => (true, MsFlags::MS_NODEV),
            "dev" => (false, MsFlags::MS_NODEV),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "defaults" => continue,
            other => {
                data.push(other);
                continue;
            }
        };
        if set {
            flags |= f;
        } else {
            flags &= !f;
        }
    }
    (flags, data.join(","))
}

/// Mounts one of containerd's rootfs mounts on `target`.
pub fn mount_one(
    typ: &str,
    source: &str,
    options: &[String],
    target: &Path,
) -> Result<(), nix::Error> {
    let (flags, data) = parse_options(options);
    let typ = (!typ.is_empty() && typ != "bind").then_some(typ);
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(source), target, typ, flags, data)?;
    // A read-only bind needs a remount to take the flag.
    if flags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// Unmounts BUNDLE/rootfs (every layer mounted there). Idempotent.
pub fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    // EINVAL (not a mount point any more) or ENOENT end the loop.
    while umount2(&target, MntFlags::MNT_DETACH).is_ok() {
        log::info!("unmounted {}", target.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (f, d) = parse_options(&o(&["index=off", "ro", "lowerdir=/a:/b", "nodev"]));
        assert_eq!(f, MsFlags::MS_RDONLY | MsFlags::MS_NODEV);
        assert_eq!(d, "index=off,lowerdir=/a:/b");
        let (f, d) = parse_options(&o(&["rbind", "rw"]));
        assert_eq!(f, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(d, "");
    }
}
