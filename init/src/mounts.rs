//! The guest's kernel filesystems.
//!
//! `/proc`, `/sys` and `/dev` come first (stdio and the command line need
//! them), then `/dev/pts`, `/run`, `/tmp` and the cgroup2 hierarchy the agent
//! uses for the container's memory and pids limits.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount {fstype} on {path}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot link {path}")]
    Symlink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

struct Fs {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const EARLY: &[Fs] = &[
    Fs {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Fs {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Fs {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
];

const REST: &[Fs] = &[
    Fs {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    Fs {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Fs {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    // nsdelegate: a cgroup namespace is a delegation boundary, so the
    // container (in a namespace rooted at its cgroup) can write neither the
    // limits of that cgroup nor cgroup.procs outside it.
    Fs {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Mounts /proc, /sys and /dev.
pub fn mount_early() -> Result<(), MountError> {
    EARLY.iter().try_for_each(mount_one)
}

/// Mounts /dev/pts (with /dev/ptmx pointing into it), /run, /tmp and cgroup2.
pub fn mount_rest() -> Result<(), MountError> {
    REST.iter().try_for_each(mount_one)?;
    let ptmx = PathBuf::from("/dev/ptmx");
    // devtmpfs has a ptmx node of the initial devpts instance; with
    // newinstance, openpty must go through /dev/pts/ptmx.
    let _ = std::fs::remove_file(&ptmx);
    std::os::unix::fs::symlink("pts/ptmx", &ptmx)
        .map_err(|source| MountError::Symlink { path: ptmx, source })
}

fn mount_one(fs: &Fs) -> Result<(), MountError> {
    std::fs::create_dir_all(fs.target).map_err(|source| MountError::Mkdir {
        path: fs.target.into(),
        source,
    })?;
    match mount(
        Some(fs.fstype),
        fs.target,
        Some(fs.fstype),
        fs.flags,
        fs.data,
    ) {
        // The kernel may have mounted devtmpfs itself (CONFIG_DEVTMPFS_MOUNT).
        Err(Errno::EBUSY) if fs.fstype == "devtmpfs" => Ok(()),
        Err(source) => Err(MountError::Mount {
            fstype: fs.fstype,
            path: fs.target.into(),
            source,
        }),
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_comes_after_sys_and_pts_after_dev() {
        let all: Vec<&str> = EARLY.iter().chain(REST).map(|f| f.target).collect();
        let pos = |t: &str| all.iter().position(|x| *x == t).unwrap();
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
        assert!(pos("/dev") < pos("/dev/pts"));
    }
}
