//! OCI mount option words → `mount(2)` flags, data and propagation.
//!
//! The words are classified by the protocol's table
//! (`mu2_protocol::mount_options`, which the host checked them against
//! too); this module maps the result onto the kernel: flag words become
//! `MsFlags` (later words win), filesystem parameters are joined, in order,
//! into the data string, and propagation words are kept, in order, to be
//! applied once the mount exists. `bind`, `rbind` and `defaults` have no
//! effect of their own.
//!
//! A bind mount (a share's file bound onto its destination, a read-only
//! path) takes its flags through a second, remounting call, as runc does:
//! [`MountOpts::remount_flags`] are the flags such a call may carry.

use mu2_protocol::mount_options::{
    self, MountFlag, MountKind, MountOption, MountOptionError, Propagation, PropagationChange,
};
use nix::mount::MsFlags;

/// MS_NOSYMFOLLOW (Linux 5.10), which nix does not name.
const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(256);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOpts {
    pub flags: MsFlags,
    pub data: String,
    /// `MS_PRIVATE`, `MS_SHARED`, ... each with `MS_REC` when recursive.
    pub propagation: Vec<MsFlags>,
}

/// The kernel flag of a protocol flag.
pub fn flag(f: MountFlag) -> MsFlags {
    match f {
        MountFlag::ReadOnly => MsFlags::MS_RDONLY,
        MountFlag::NoSuid => MsFlags::MS_NOSUID,
        MountFlag::NoDev => MsFlags::MS_NODEV,
        MountFlag::NoExec => MsFlags::MS_NOEXEC,
        MountFlag::Synchronous => MsFlags::MS_SYNCHRONOUS,
        MountFlag::DirSync => MsFlags::MS_DIRSYNC,
        MountFlag::MandLock => MsFlags::MS_MANDLOCK,
        MountFlag::NoAtime => MsFlags::MS_NOATIME,
        MountFlag::NoDirAtime => MsFlags::MS_NODIRATIME,
        MountFlag::RelAtime => MsFlags::MS_RELATIME,
        MountFlag::StrictAtime => MsFlags::MS_STRICTATIME,
        MountFlag::LazyTime => MsFlags::MS_LAZYTIME,
        MountFlag::Silent => MsFlags::MS_SILENT,
        MountFlag::IVersion => MsFlags::MS_I_VERSION,
        MountFlag::NoSymFollow => MS_NOSYMFOLLOW,
    }
}

/// The kernel flags of a propagation word.
pub fn propagation(p: PropagationChange) -> MsFlags {
    let kind = match p.kind {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::Shared => MsFlags::MS_SHARED,
        Propagation::Slave => MsFlags::MS_SLAVE,
        Propagation::Unbindable => MsFlags::MS_UNBINDABLE,
    };
    if p.recursive {
        kind | MsFlags::MS_REC
    } else {
        kind
    }
}

/// The flags a bind remount keeps: the per-mount ones. Superblock flags
/// (sync, dirsync, mand, lazytime, silent, iversion) belong to the
/// filesystem the bind shows and are not changed through it.
const PER_MOUNT: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME)
    .union(MS_NOSYMFOLLOW);

impl MountOpts {
    /// The options of a mount of `kind`; `readonly` forces `ro`.
    pub fn parse<S: AsRef<str>>(
        options: &[S],
        kind: MountKind<'_>,
        readonly: bool,
    ) -> Result<MountOpts, MountOptionError> {
        let mut flags = MsFlags::empty();
        let mut data: Vec<String> = Vec::new();
        let mut props = Vec::new();
        for o in mount_options::parse_all(options, kind)? {
            match o {
                MountOption::Flag(f, true) => flags |= flag(f),
                MountOption::Flag(f, false) => flags &= !flag(f),
                MountOption::Propagation(p) => props.push(propagation(p)),
                MountOption::NoOp => {}
                MountOption::Data(d) => data.push(d),
            }
        }
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        Ok(MountOpts {
            flags,
            data: data.join(","),
            propagation: props,
        })
    }

    /// The data string, or `None` when empty.
    pub fn data(&self) -> Option<&str> {
        (!self.data.is_empty()).then_some(self.data.as_str())
    }

    /// The flags for `MS_BIND | MS_REMOUNT` on a bind of this mount.
    pub fn remount_flags(&self) -> MsFlags {
        self.flags & PER_MOUNT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_data_and_propagation_are_separated() {
        let o = MountOpts::parse(
            &[
                "nosuid",
                "strictatime",
                "mode=755",
                "size=65536k",
                "rprivate",
            ],
            MountKind::Fs("tmpfs"),
            false,
        )
        .unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data(), Some("mode=755,size=65536k"));
        assert_eq!(o.propagation, [MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
    }

    #[test]
    fn later_words_win_and_readonly_forces_ro() {
        let share = MountKind::Share;
        let o = MountOpts::parse(&["ro", "rw", "noexec"], share, false).unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOEXEC);
        assert_eq!(o.data(), None);
        let o = MountOpts::parse(&["rw"], share, true).unwrap();
        assert!(o.flags.contains(MsFlags::MS_RDONLY));
        let o = MountOpts::parse(&["noatime", "atime", "rnodev"], share, false).unwrap();
        assert_eq!(o.flags, MsFlags::MS_NODEV);
    }

    #[test]
    fn every_word_maps_to_its_kernel_flag() {
        let cases: &[(&str, MsFlags)] = &[
            ("ro", MsFlags::MS_RDONLY),
            ("nosuid", MsFlags::MS_NOSUID),
            ("nodev", MsFlags::MS_NODEV),
            ("noexec", MsFlags::MS_NOEXEC),
            ("sync", MsFlags::MS_SYNCHRONOUS),
            ("dirsync", MsFlags::MS_DIRSYNC),
            ("mand", MsFlags::MS_MANDLOCK),
            ("noatime", MsFlags::MS_NOATIME),
            ("nodiratime", MsFlags::MS_NODIRATIME),
            ("relatime", MsFlags::MS_RELATIME),
            ("strictatime", MsFlags::MS_STRICTATIME),
            ("lazytime", MsFlags::MS_LAZYTIME),
            ("silent", MsFlags::MS_SILENT),
            ("iversion", MsFlags::MS_I_VERSION),
            // MS_NOSYMFOLLOW in include/uapi/linux/mount.h
            ("nosymfollow", MsFlags::from_bits_retain(256)),
        ];
        for (word, want) in cases {
            let o = MountOpts::parse(&[*word], MountKind::Share, false).unwrap();
            assert_eq!(o.flags, *want, "{word}");
        }
        let p = |w: &str| {
            MountOpts::parse(&[w], MountKind::Share, false)
                .unwrap()
                .propagation
        };
        assert_eq!(p("slave"), [MsFlags::MS_SLAVE]);
        assert_eq!(p("rshared"), [MsFlags::MS_SHARED | MsFlags::MS_REC]);
        assert_eq!(p("runbindable"), [MsFlags::MS_UNBINDABLE | MsFlags::MS_REC]);
    }

    #[test]
    fn remounts_carry_only_per_mount_flags() {
        let o =
            MountOpts::parse(&["ro", "nosuid", "sync", "noexec"], MountKind::Share, false).unwrap();
        assert_eq!(
            o.remount_flags(),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC
        );
    }

    #[test]
    fn refused_words_stay_refused() {
        assert!(MountOpts::parse(&["idmap"], MountKind::Share, false).is_err());
        assert!(MountOpts::parse(&["size=1m"], MountKind::Share, false).is_err());
    }
}
