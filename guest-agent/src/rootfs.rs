//! The container's root filesystem and mounts.
//!
//! The image arrives as a read-only virtio-9p share. It is mounted at
//! `/run/mu2/lower`; a writable root is an overlay of it under a tmpfs upper
//! layer (the container's writes die with the VM), a read-only root is a
//! read-only bind of it. The root then gets what runc's default spec gives a
//! container — `/dev` (a tmpfs with the usual nodes), `/dev/pts`, `/dev/shm`,
//! `/sys` — and the request's own mounts, in order, each with its options
//! ([`MountOpts`]: flags, filesystem parameters, then propagation; a bound
//! file gets its flags by a bind remount, as runc does). `/proc` and cgroup
//! mounts are left to the container process ([`ChildMount`]): /proc must be
//! mounted from inside the new PID namespace, the cgroup hierarchy from
//! inside the container's cgroup namespace, so that its root is the
//! container's cgroup.
//!
//! When the request mounts a filesystem on one of the default destinations
//! (containerd's default spec lists them all), its options replace ours
//! instead of stacking a second mount there. Destinations are resolved with
//! [`paths::resolve`] so an image symlink cannot redirect a mount onto the
//! guest's own filesystem.

use std::io;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mu2_protocol::mount_options::{MountKind, MountOptionError};
use mu2_protocol::{Mount, MountSource, Root, Run};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::mountopts::MountOpts;
use crate::paths::{self, PathError};

pub const BASE: &str = "/run/mu2";
/// msize of 9p mounts: big enough for few round trips per large read.
const MSIZE: u32 = 262_144;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot create directory {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount {what} on {path}")]
    Mount {
        what: String,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot create {path}")]
    Node {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the propagation of {path}")]
    Propagation {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("mount {destination}")]
    Option {
        destination: String,
        #[source]
        source: MountOptionError,
    },
    #[error(transparent)]
    Path(#[from] PathError),
}

/// A filesystem the container process mounts itself, after it entered its
/// namespaces (/proc, cgroup2), in this order.
#[derive(Debug, Clone)]
pub struct ChildMount {
    pub fstype: String,
    pub target: PathBuf,
    pub opts: MountOpts,
}

impl ChildMount {
    /// Mounts it, then applies its propagation words.
    pub fn mount(&self) -> Result<(), Errno> {
        mount(
            Some(self.fstype.as_str()),
            &self.target,
            Some(self.fstype.as_str()),
            self.opts.flags,
            self.opts.data(),
        )?;
        for p in &self.opts.propagation {
            mount(None::<&str>, &self.target, None::<&str>, *p, None::<&str>)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Prepared {
    /// The container root as the agent sees it.
    pub root: PathBuf,
    /// /proc first, then any cgroup mount.
    pub in_child: Vec<ChildMount>,
    /// Whether `/dev` is our tmpfs (so /dev/console may be created in it).
    pub dev_is_ours: bool,
}

/// A filesystem the guest kernel makes in the container root.
#[derive(Debug, Clone)]
struct KernelFs {
    destination: String,
    fstype: String,
    opts: MountOpts,
}

/// Mounts the root and everything in it except /proc.
pub fn prepare(run: &Run) -> Result<Prepared, RootfsError> {
    let base = Path::new(BASE);
    let root = base.join("root");
    mount_root(base, &root, &run.root)?;

    let (defaults, extra) = plan(&run.mounts)?;
    let mut in_child = Vec::new();
    let mut dev_is_ours = false;
    for fs in defaults {
        let target = mount_point(&root, &fs.destination)?;
        if fs.fstype == "proc" {
            in_child.insert(
                0,
                ChildMount {
                    fstype: fs.fstype,
                    target,
                    opts: fs.opts,
                },
            );
            continue;
        }
        do_mount(&fs.fstype, &target, &fs.opts)?;
        if fs.destination == "/dev" && fs.fstype == "tmpfs" {
            populate_dev(&target)?;
            dev_is_ours = true;
        }
    }
    for m in extra {
        if let MountSource::Fs(t) = &m.source {
            if fs_type(t) == "cgroup2" {
                in_child.push(ChildMount {
                    fstype: "cgroup2".into(),
                    target: mount_point(&root, &m.destination)?,
                    opts: options(m)?,
                });
                continue;
            }
        }
        mount_extra(&root, m)?;
    }
    if run.root.readonly {
        mount_raw(
            "none",
            &root,
            "",
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
            "the read-only root",
        )?;
    }
    Ok(Prepared {
        root,
        in_child,
        dev_is_ours,
    })
}

/// A request mount's options.
fn options(m: &Mount) -> Result<MountOpts, RootfsError> {
    let kind = match &m.source {
        MountSource::Share(_) => MountKind::Share,
        MountSource::Fs(t) => MountKind::Fs(t),
    };
    MountOpts::parse(&m.options, kind, m.readonly).map_err(|source| RootfsError::Option {
        destination: m.destination.clone(),
        source,
    })
}

/// Splits the request's mounts into the defaults (with the request's options
/// where it names the same destination and type) and the rest.
fn plan(mounts: &[Mount]) -> Result<(Vec<KernelFs>, Vec<&Mount>), RootfsError> {
    let mut defaults = default_mounts()?;
    let mut extra = Vec::new();
    for m in mounts {
        let dest = normalize(&m.destination);
        let slot = match &m.source {
            MountSource::Fs(t) => defaults
                .iter_mut()
                .find(|d| d.destination == dest && d.fstype == fs_type(t)),
            MountSource::Share(_) => None,
        };
        match slot {
            Some(d) => d.opts = options(m)?,
            None => extra.push(m),
        }
    }
    Ok((defaults, extra))
}

fn default_mounts() -> Result<Vec<KernelFs>, RootfsError> {
    let fs = |dest: &str, fstype: &str, opts: &[&str]| -> Result<KernelFs, RootfsError> {
        Ok(KernelFs {
            destination: dest.into(),
            fstype: fstype.into(),
            opts: MountOpts::parse(opts, MountKind::Fs(fstype), false).map_err(|source| {
                RootfsError::Option {
                    destination: dest.into(),
                    source,
                }
            })?,
        })
    };
    Ok(vec![
        fs("/proc", "proc", &["nosuid", "noexec", "nodev"])?,
        fs(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        fs(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        fs(
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        fs("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
    ])
}

/// The kernel's name for an OCI mount type. The guest has only the unified
/// cgroup hierarchy, so a v1 `cgroup` mount becomes cgroup2.
fn fs_type(t: &str) -> &str {
    match t {
        "cgroup" => "cgroup2",
        other => other,
    }
}

fn normalize(dest: &str) -> String {
    let trimmed = dest.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// The image root under a tmpfs overlay. A read-only root gets the overlay
/// too, so that mount points missing from the image can be made (runc
/// creates them in the image itself); [`prepare`] remounts it read-only once
/// everything is mounted.
fn mount_root(base: &Path, root: &Path, spec: &Root) -> Result<(), RootfsError> {
    let share = base.join("lower");
    mkdir(&share)?;
    mkdir(root)?;
    // The image never changes under a running VM, so the guest may cache it.
    let data = format!("trans=virtio,version=9p2000.L,msize={MSIZE},cache=loose,access=client");
    mount_raw(
        &spec.share_tag,
        &share,
        "9p",
        MsFlags::MS_RDONLY,
        Some(&data),
        &format!("9p share {}", spec.share_tag),
    )?;
    // A pooled VM's image sits in a directory of its share (the protocol
    // checked the name is one plain component).
    let lower = match &spec.share_subdir {
        Some(sub) => {
            let l = share.join(sub);
            if !l.is_dir() {
                return Err(RootfsError::Mkdir {
                    path: l,
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            l
        }
        None => share,
    };
    let rw = base.join("rw");
    mkdir(&rw)?;
    mount_raw(
        "tmpfs",
        &rw,
        "tmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
        "the root's upper tmpfs",
    )?;
    let upper = rw.join("upper");
    let work = rw.join("work");
    mkdir(&upper)?;
    mkdir(&work)?;
    // The overlay's root directory is the upper directory: give it the
    // image root's owner and mode.
    if let Ok(meta) = std::fs::metadata(&lower) {
        let _ = chown(&upper, Some(meta.uid()), Some(meta.gid()));
        let _ = std::fs::set_permissions(
            &upper,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        );
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount_raw(
        "overlay",
        root,
        "overlay",
        MsFlags::empty(),
        Some(&data),
        "the root overlay",
    )
}

/// Resolves and, if needed, creates the mount point of `destination` (in
/// the overlay's upper layer, so the image is never changed).
fn mount_point(root: &Path, destination: &str) -> Result<PathBuf, RootfsError> {
    let target = paths::resolve(root, destination)?;
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(&target).map_err(|source| RootfsError::Mkdir {
        path: target.clone(),
        source,
    })?;
    Ok(target)
}

fn mount_extra(root: &Path, m: &Mount) -> Result<(), RootfsError> {
    if let (MountSource::Share(tag), Some(file)) = (&m.source, &m.share_file) {
        return bind_shared_file(root, m, tag, file);
    }
    let target = mount_point(root, &m.destination)?;
    let opts = options(m)?;
    match &m.source {
        MountSource::Fs(t) => do_mount(fs_type(t), &target, &opts),
        MountSource::Share(tag) => {
            // A volume may change on the host: no loose caching; mmap mode
            // keeps shared writable mappings working. A bind mount takes no
            // filesystem parameters (the protocol refuses them), so its
            // words are all flags, applied by the 9p mount itself.
            let data =
                format!("trans=virtio,version=9p2000.L,msize={MSIZE},cache=mmap,access=client");
            mount_raw(
                tag,
                &target,
                "9p",
                opts.flags,
                Some(&data),
                &format!("9p share {tag}"),
            )?;
            propagate(&target, &opts)
        }
    }
}

/// Applies the propagation words of a mount that exists.
fn propagate(target: &Path, opts: &MountOpts) -> Result<(), RootfsError> {
    for p in &opts.propagation {
        mount(None::<&str>, target, None::<&str>, *p, None::<&str>).map_err(|source| {
            RootfsError::Propagation {
                path: target.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

/// A file bind mount: the share (the file's parent directory on the host)
/// is mounted once outside the container root, and only the file is bound
/// onto the destination, so the container sees none of its siblings.
fn bind_shared_file(root: &Path, m: &Mount, tag: &str, file: &str) -> Result<(), RootfsError> {
    let hidden = Path::new(BASE).join("files").join(tag);
    if !hidden.is_dir() {
        mkdir(&hidden)?;
        let flags = if m.readonly {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        let data = format!("trans=virtio,version=9p2000.L,msize={MSIZE},cache=mmap,access=client");
        mount_raw(
            tag,
            &hidden,
            "9p",
            flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(&data),
            &format!("9p share {tag}"),
        )?;
    }
    let target = paths::resolve(root, &m.destination)?;
    if let Some(parent) = target.parent() {
        mkdir(parent)?;
    }
    if !target.exists() {
        std::fs::File::create(&target).map_err(|source| RootfsError::Mkdir {
            path: target.clone(),
            source,
        })?;
    }
    let source = hidden.join(file);
    let what = format!("file {file} of share {tag}");
    let opts = options(m)?;
    mount_raw(
        &source.to_string_lossy(),
        &target,
        "",
        MsFlags::MS_BIND,
        None,
        &what,
    )?;
    // A bind takes its flags by a remount, as under runc.
    let flags = opts.remount_flags();
    if !flags.is_empty() {
        mount_raw(
            "none",
            &target,
            "",
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None,
            &what,
        )?;
    }
    propagate(&target, &opts)
}

fn do_mount(fstype: &str, target: &Path, opts: &MountOpts) -> Result<(), RootfsError> {
    mount_raw(fstype, target, fstype, opts.flags, opts.data(), fstype)?;
    propagate(target, opts)
}

fn mount_raw(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), RootfsError> {
    let fstype = (!fstype.is_empty()).then_some(fstype);
    mount(Some(source), target, fstype, flags, data).map_err(|source| RootfsError::Mount {
        what: what.to_string(),
        path: target.to_path_buf(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|source| RootfsError::Mkdir {
        path: path.to_path_buf(),
        source,
    })
}

/// The device nodes and links of runc's default /dev.
fn populate_dev(dev: &Path) -> Result<(), RootfsError> {
    const NODES: &[(&str, SFlag, u64, u64)] = &[
        ("null", SFlag::S_IFCHR, 1, 3),
        ("zero", SFlag::S_IFCHR, 1, 5),
        ("full", SFlag::S_IFCHR, 1, 7),
        ("random", SFlag::S_IFCHR, 1, 8),
        ("urandom", SFlag::S_IFCHR, 1, 9),
        ("tty", SFlag::S_IFCHR, 5, 0),
    ];
    const LINKS: &[(&str, &str)] = &[
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ];
    for (name, kind, major, minor) in NODES {
        let path = dev.join(name);
        mknod(
            &path,
            *kind,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(|e| RootfsError::Node {
            path: path.clone(),
            source: e.into(),
        })?;
        // mknod applies the umask; the nodes must be 0666.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(|source| RootfsError::Node { path, source })?;
    }
    for (name, target) in LINKS {
        let path = dev.join(name);
        symlink(target, &path).map_err(|source| RootfsError::Node { path, source })?;
    }
    Ok(())
}

/// Bind-mounts the container's terminal onto its /dev/console, as runc does.
pub fn bind_console(root: &Path, slave_path: &Path) -> Result<(), RootfsError> {
    let console = root.join("dev/console");
    std::fs::File::create(&console).map_err(|source| RootfsError::Node {
        path: console.clone(),
        source,
    })?;
    mount(
        Some(slave_path),
        &console,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| RootfsError::Mount {
        what: "the terminal".into(),
        path: console,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_mount(dest: &str, t: &str, opts: &[&str]) -> Mount {
        Mount {
            destination: dest.into(),
            source: MountSource::Fs(t.into()),
            options: opts.iter().map(|s| s.to_string()).collect(),
            readonly: false,
            share_file: None,
        }
    }

    #[test]
    fn request_options_replace_defaults_on_the_same_destination() {
        let mounts = vec![
            fs_mount("/dev/shm", "tmpfs", &["size=1m"]),
            fs_mount("/sys/fs/cgroup", "cgroup", &["ro"]),
            fs_mount("/proc/", "proc", &[]),
            Mount {
                destination: "/data".into(),
                source: MountSource::Share("vol0".into()),
                options: vec![],
                readonly: true,
                share_file: None,
            },
        ];
        let (defaults, extra) = plan(&mounts).unwrap();
        let shm = defaults
            .iter()
            .find(|d| d.destination == "/dev/shm")
            .unwrap();
        assert_eq!(shm.opts.data(), Some("size=1m"));
        let proc = defaults.iter().find(|d| d.destination == "/proc").unwrap();
        assert_eq!(proc.opts.flags, MsFlags::empty());
        let dests: Vec<&str> = extra.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(dests, vec!["/sys/fs/cgroup", "/data"]);
        assert_eq!(defaults.len(), 5);
    }

    #[test]
    fn defaults_mount_dev_before_its_children() {
        let d = default_mounts().unwrap();
        let pos = |p: &str| d.iter().position(|m| m.destination == p).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
    }
}
