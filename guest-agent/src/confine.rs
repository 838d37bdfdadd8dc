//! The container process's confinement, applied by the child between
//! `chroot` and `execve` in runc's order (libcontainer's standard init and
//! finalizeNamespace):
//!
//! 1. in the container's view of its root: the root's propagation, the
//!    sysctls (under its own /proc/sys), the read-only paths, then the
//!    masked paths ([`view`]);
//! 2. no_new_privs; the seccomp filter now if no_new_privs is off (loading
//!    it then needs CAP_SYS_ADMIN, which is about to go);
//! 3. the bounding set cut to the spec's, caps kept across the change of
//!    user ([`keep_caps`]), the user set, then the inheritable, effective
//!    and permitted sets and the ambient set raised ([`apply_caps`]);
//! 4. the seccomp filter last, right before `execve`, when no_new_privs is
//!    on: the calls the child makes after it (`execve`, and `write` and
//!    `exit_group` to report a failed exec) are allowed by any profile that
//!    lets a process start.
//!
//! Missing masked or read-only paths are skipped, as runc does. An
//! ambient capability that is not both permitted and inheritable is not
//! raised (the kernel refuses it; runc skips it too).

use std::io;
use std::path::Path;

use mu2_protocol::{Capabilities, Sysctl};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("sysctl {name} does not exist in the guest kernel")]
    NoSysctl { name: String },
    #[error("cannot set sysctl {name} to {value:?}")]
    Sysctl {
        name: String,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot make {path} read-only")]
    Readonly {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("cannot mask {path}")]
    Mask {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("cannot set the propagation of the container root")]
    Propagation(#[source] Errno),
    #[error("capability {0} is not known to the guest kernel")]
    UnknownCapability(u8),
    #[error("cannot {what}")]
    Caps {
        what: String,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// Everything of the container's view the child sets before the caps go.
pub struct View<'a> {
    pub root_propagation: Option<MsFlags>,
    pub sysctls: &'a [Sysctl],
    pub readonly_paths: &'a [String],
    pub masked_paths: &'a [String],
}

/// Step 1, in the chroot (paths are the container's).
pub fn view(v: &View<'_>) -> Result<(), ConfineError> {
    if let Some(flags) = v.root_propagation {
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(ConfineError::Propagation)?;
    }
    for s in v.sysctls {
        sysctl(s)?;
    }
    for p in v.readonly_paths {
        readonly(p)?;
    }
    for p in v.masked_paths {
        mask(p)?;
    }
    Ok(())
}

fn sysctl(s: &Sysctl) -> Result<(), ConfineError> {
    let path = Path::new("/proc/sys").join(s.path());
    let failed = |source| ConfineError::Sysctl {
        name: s.name.clone(),
        value: s.value.clone(),
        source,
    };
    let mut f = match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ConfineError::NoSysctl {
                name: s.name.clone(),
            })
        }
        Err(e) => return Err(failed(e)),
    };
    io::Write::write_all(&mut f, s.value.as_bytes()).map_err(failed)
}

/// The mount flags of the mount holding `path` that a bind remount must
/// repeat (it would clear them otherwise).
fn flags_of(path: &str) -> Result<MsFlags, Errno> {
    let st = statvfs(path)?;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    Ok(out)
}

/// A read-only path: bound onto itself, then remounted read-only.
fn readonly(path: &str) -> Result<(), ConfineError> {
    let failed = |source| ConfineError::Readonly {
        path: path.to_string(),
        source,
    };
    if !exists(path) {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(failed)?;
    let keep = flags_of(path).map_err(failed)?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        keep | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(failed)
}

/// A masked path: a directory gets an empty read-only tmpfs over it,
/// anything else /dev/null bound over it.
fn mask(path: &str) -> Result<(), ConfineError> {
    let failed = |source| ConfineError::Mask {
        path: path.to_string(),
        source,
    };
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(failed)
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(failed)
    }
}

fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The capabilities of `mask` as the `caps` crate's set.
fn set_of(mask: u64) -> caps::CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .collect()
}

/// Refuses a mask naming a capability the running kernel lacks.
pub fn check_known(c: &Capabilities) -> Result<(), ConfineError> {
    let known = caps::runtime::thread_all_supported()
        .iter()
        .fold(0u64, |m, c| m | c.bitmask());
    let all = c.bounding | c.effective | c.permitted | c.inheritable | c.ambient;
    match all & !known {
        0 => Ok(()),
        unknown => Err(ConfineError::UnknownCapability(
            unknown.trailing_zeros() as u8
        )),
    }
}

fn caps_err(what: impl Into<String>) -> impl FnOnce(caps::errors::CapsError) -> ConfineError {
    let what = what.into();
    move |source| ConfineError::Caps { what, source }
}

/// Step 3a: drops from the bounding set what `keep` lacks.
pub fn drop_bounding(keep: u64) -> Result<(), ConfineError> {
    for cap in caps::runtime::thread_all_supported() {
        if keep & cap.bitmask() == 0 {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(caps_err(format!("drop {cap} from the bounding set")))?;
        }
    }
    Ok(())
}

/// PR_SET_KEEPCAPS around the change of user: the permitted set survives
/// setuid to a non-root uid, so the spec's sets can still be applied.
pub fn keep_caps(on: bool) -> Result<(), ConfineError> {
    caps::securebits::set_keepcaps(on).map_err(caps_err("set PR_SET_KEEPCAPS"))
}

/// Step 3c, after the user is set. Inheritable first, while the
/// permitted set is still whole; then effective, then permitted (which
/// must hold the effective set), then ambient.
pub fn apply_caps(c: &Capabilities) -> Result<(), ConfineError> {
    use caps::CapSet;
    for (set, name, mask) in [
        (CapSet::Inheritable, "inheritable", c.inheritable),
        (CapSet::Effective, "effective", c.effective),
        (CapSet::Permitted, "permitted", c.permitted),
    ] {
        caps::set(None, set, &set_of(mask))
            .map_err(caps_err(format!("set the {name} capabilities")))?;
    }
    let raisable = c.ambient & c.permitted & c.inheritable;
    for cap in set_of(raisable) {
        caps::raise(None, CapSet::Ambient, cap)
            .map_err(caps_err(format!("raise {cap} in the ambient set")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_become_sets_of_the_same_numbers() {
        let s = set_of((1 << 5) | (1 << 10) | (1 << 29));
        let mut names: Vec<String> = s.iter().map(|c| c.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
        assert!(set_of(0).is_empty());
    }

    #[test]
    fn capabilities_the_kernel_lacks_are_refused() {
        check_known(&Capabilities {
            bounding: 1 << 21,
            ..Default::default()
        })
        .unwrap();
        let e = check_known(&Capabilities {
            ambient: 1 << 63,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ConfineError::UnknownCapability(63)), "{e}");
    }
}
