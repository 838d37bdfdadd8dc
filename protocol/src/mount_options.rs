//! The mount option words the host may send and the agent applies.
//!
//! `Mount.options` carries OCI option words as config.json spells them.
//! This table is their one definition: the host (`mu2-oci`) refuses, by
//! name, every word it does not list before a VM starts; the agent decodes
//! a `Run` through it, so it refuses the same words; and the agent's
//! `mountopts` maps what it returns to `mount(2)` flags.
//!
//! A word is a per-mount flag (`ro`, `nosuid`, `relatime`, ...; runc's
//! table, including the `r`-prefixed recursive forms), a propagation change
//! (`rprivate`, ...), `bind`/`rbind`/`defaults` (no effect of their own), or
//! a filesystem parameter handed to the kernel in the data string (`size=`,
//! `mode=`, ...), which is accepted only for the filesystem types that take
//! it. Every mount the agent makes is new and has no submounts when its
//! flags are applied, so a recursive flag (`rro`) means the same as its
//! plain form (`ro`) there.
//!
//! Refused by name: `remount` (a guest mount is always a fresh one),
//! `tmpcopyup` (runc's copy of the image directory into a tmpfs),
//! `idmap`/`ridmap` (id-mapped mounts need the user-namespace mappings a VM
//! does not take), and any word not listed here.

/// A per-mount flag the guest kernel applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountFlag {
    ReadOnly,
    NoSuid,
    NoDev,
    NoExec,
    Synchronous,
    DirSync,
    MandLock,
    NoAtime,
    NoDirAtime,
    RelAtime,
    StrictAtime,
    LazyTime,
    Silent,
    IVersion,
    NoSymFollow,
}

/// The propagation type a mount gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Private,
    Shared,
    Slave,
    Unbindable,
}

/// A propagation word: its type and whether it applies to submounts too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropagationChange {
    pub kind: Propagation,
    pub recursive: bool,
}

/// What one option word asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOption {
    /// Sets (`true`) or clears (`false`) a flag. Later words win.
    Flag(MountFlag, bool),
    Propagation(PropagationChange),
    /// `bind`, `rbind`, `defaults`: nothing to apply beyond the mount itself.
    NoOp,
    /// A filesystem parameter, passed in the data string.
    Data(String),
}

/// What a mount is made of, which decides the parameters it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind<'a> {
    /// A 9p share (an OCI bind mount): no filesystem parameters.
    Share,
    /// A filesystem the guest kernel makes, by its OCI type name.
    Fs(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountOptionError {
    #[error("mount option {0:?} is not known")]
    Unknown(String),
    #[error("mount option {word:?} cannot be honoured inside a microVM: {why}")]
    Refused { word: String, why: &'static str },
    #[error("mount option {word:?} is not a parameter of {what}")]
    NotForKind { word: String, what: String },
}

/// Longest piece of an unknown option word an error quotes.
const QUOTED_WORD_MAX: usize = 64;

/// Flag words: (word, flag, set).
const FLAGS: &[(&str, MountFlag, bool)] = {
    use MountFlag::*;
    &[
        ("ro", ReadOnly, true),
        ("rw", ReadOnly, false),
        ("nosuid", NoSuid, true),
        ("suid", NoSuid, false),
        ("nodev", NoDev, true),
        ("dev", NoDev, false),
        ("noexec", NoExec, true),
        ("exec", NoExec, false),
        ("sync", Synchronous, true),
        ("async", Synchronous, false),
        ("dirsync", DirSync, true),
        ("mand", MandLock, true),
        ("nomand", MandLock, false),
        ("noatime", NoAtime, true),
        ("atime", NoAtime, false),
        ("nodiratime", NoDirAtime, true),
        ("diratime", NoDirAtime, false),
        ("relatime", RelAtime, true),
        ("norelatime", RelAtime, false),
        ("strictatime", StrictAtime, true),
        ("nostrictatime", StrictAtime, false),
        ("lazytime", LazyTime, true),
        ("nolazytime", LazyTime, false),
        ("silent", Silent, true),
        ("loud", Silent, false),
        ("iversion", IVersion, true),
        ("noiversion", IVersion, false),
        ("nosymfollow", NoSymFollow, true),
        ("symfollow", NoSymFollow, false),
    ]
};

/// The recursive forms (runc applies them with mount_setattr).
const RECURSIVE_FLAGS: &[(&str, &str)] = &[
    ("rro", "ro"),
    ("rrw", "rw"),
    ("rnosuid", "nosuid"),
    ("rsuid", "suid"),
    ("rnodev", "nodev"),
    ("rdev", "dev"),
    ("rnoexec", "noexec"),
    ("rexec", "exec"),
    ("rnodiratime", "nodiratime"),
    ("rdiratime", "diratime"),
    ("rrelatime", "relatime"),
    ("rnorelatime", "norelatime"),
    ("rnoatime", "noatime"),
    ("ratime", "atime"),
    ("rstrictatime", "strictatime"),
    ("rnostrictatime", "nostrictatime"),
    ("rnosymfollow", "nosymfollow"),
    ("rsymfollow", "symfollow"),
];

const PROPAGATION: &[(&str, Propagation, bool)] = &[
    ("private", Propagation::Private, false),
    ("rprivate", Propagation::Private, true),
    ("shared", Propagation::Shared, false),
    ("rshared", Propagation::Shared, true),
    ("slave", Propagation::Slave, false),
    ("rslave", Propagation::Slave, true),
    ("unbindable", Propagation::Unbindable, false),
    ("runbindable", Propagation::Unbindable, true),
];

const REFUSED: &[(&str, &str)] = &[
    ("remount", "every mount in the guest is a new one"),
    (
        "tmpcopyup",
        "the guest does not copy image directories into a tmpfs",
    ),
    (
        "idmap",
        "id-mapped mounts need user-namespace mappings, which a VM does not take",
    ),
    (
        "ridmap",
        "id-mapped mounts need user-namespace mappings, which a VM does not take",
    ),
];

/// The parameters (the part before `=`, or the whole word) each kernel
/// filesystem takes in its data string, per Linux 6.1's documentation.
fn parameters(fstype: &str) -> &'static [&'static str] {
    match fstype {
        "tmpfs" => &[
            "size",
            "nr_blocks",
            "nr_inodes",
            "mode",
            "uid",
            "gid",
            "huge",
            "mpol",
            "inode32",
            "inode64",
        ],
        "devpts" => &["newinstance", "ptmxmode", "mode", "gid", "uid", "max"],
        "proc" => &["hidepid", "subset", "gid"],
        "cgroup" | "cgroup2" => &["nsdelegate", "memory_recursiveprot", "favordynmods"],
        _ => &[],
    }
}

/// The propagation word `word`, if it is one.
pub fn propagation(word: &str) -> Option<PropagationChange> {
    PROPAGATION
        .iter()
        .find(|(w, _, _)| *w == word)
        .map(|&(_, kind, recursive)| PropagationChange { kind, recursive })
}

/// Classifies one option word of a mount of `kind`.
pub fn parse(word: &str, kind: MountKind<'_>) -> Result<MountOption, MountOptionError> {
    let plain = RECURSIVE_FLAGS
        .iter()
        .find(|(r, _)| *r == word)
        .map_or(word, |(_, p)| *p);
    if let Some(&(_, flag, set)) = FLAGS.iter().find(|(w, _, _)| *w == plain) {
        return Ok(MountOption::Flag(flag, set));
    }
    if let Some(p) = propagation(word) {
        return Ok(MountOption::Propagation(p));
    }
    if matches!(word, "bind" | "rbind" | "defaults") {
        return Ok(MountOption::NoOp);
    }
    if let Some((_, why)) = REFUSED.iter().find(|(w, _)| *w == word) {
        return Err(MountOptionError::Refused {
            word: word.to_string(),
            why,
        });
    }
    let key = word.split_once('=').map_or(word, |(k, _)| k);
    // An error quotes the word, bounded: it may be megabytes of anything.
    let quoted = || crate::text::sanitize(word, QUOTED_WORD_MAX);
    match kind {
        MountKind::Fs(fstype) if parameters(fstype).contains(&key) => {
            Ok(MountOption::Data(word.to_string()))
        }
        MountKind::Fs(fstype) if !parameters(fstype).is_empty() => {
            Err(MountOptionError::NotForKind {
                word: quoted(),
                what: format!("a {fstype} filesystem"),
            })
        }
        MountKind::Share => Err(MountOptionError::NotForKind {
            word: quoted(),
            what: "a bind mount".to_string(),
        }),
        MountKind::Fs(_) => Err(MountOptionError::Unknown(quoted())),
    }
}

/// Classifies every word; the first bad one is the error.
pub fn parse_all<S: AsRef<str>>(
    words: &[S],
    kind: MountKind<'_>,
) -> Result<Vec<MountOption>, MountOptionError> {
    words.iter().map(|w| parse(w.as_ref(), kind)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_propagation_and_data_are_told_apart() {
        let tmpfs = MountKind::Fs("tmpfs");
        assert_eq!(
            parse("nosuid", tmpfs),
            Ok(MountOption::Flag(MountFlag::NoSuid, true))
        );
        assert_eq!(
            parse("exec", tmpfs),
            Ok(MountOption::Flag(MountFlag::NoExec, false))
        );
        assert_eq!(
            parse("rro", MountKind::Share),
            Ok(MountOption::Flag(MountFlag::ReadOnly, true))
        );
        assert_eq!(
            parse("rprivate", MountKind::Share),
            Ok(MountOption::Propagation(PropagationChange {
                kind: Propagation::Private,
                recursive: true
            }))
        );
        assert_eq!(parse("rbind", MountKind::Share), Ok(MountOption::NoOp));
        assert_eq!(
            parse("size=65536k", tmpfs),
            Ok(MountOption::Data("size=65536k".into()))
        );
        assert_eq!(
            parse("newinstance", MountKind::Fs("devpts")),
            Ok(MountOption::Data("newinstance".into()))
        );
    }

    #[test]
    fn every_flag_word_has_a_recursive_or_plain_entry_that_parses() {
        for (w, _, _) in FLAGS {
            assert!(parse(w, MountKind::Share).is_ok(), "{w}");
        }
        for (r, p) in RECURSIVE_FLAGS {
            assert_eq!(
                parse(r, MountKind::Share),
                parse(p, MountKind::Share),
                "{r}"
            );
        }
    }

    #[test]
    fn what_the_guest_cannot_apply_is_refused_by_name() {
        let e = parse("idmap", MountKind::Share).unwrap_err();
        assert!(e.to_string().contains("\"idmap\""), "{e}");
        assert!(matches!(
            parse("tmpcopyup", MountKind::Fs("tmpfs")),
            Err(MountOptionError::Refused { .. })
        ));
        assert!(matches!(
            parse("remount", MountKind::Share),
            Err(MountOptionError::Refused { .. })
        ));
        // A filesystem parameter on a bind mount, or one the type lacks.
        assert!(matches!(
            parse("size=1m", MountKind::Share),
            Err(MountOptionError::NotForKind { .. })
        ));
        assert!(matches!(
            parse("ptmxmode=0666", MountKind::Fs("tmpfs")),
            Err(MountOptionError::NotForKind { .. })
        ));
        assert!(matches!(
            parse("x-systemd.automount", MountKind::Fs("mqueue")),
            Err(MountOptionError::Unknown(_))
        ));
        assert!(matches!(
            parse("z", MountKind::Share),
            Err(MountOptionError::NotForKind { .. })
        ));
    }

    #[test]
    fn containerd_and_cri_default_mounts_parse() {
        let cases: &[(&str, &[&str])] = &[
            ("proc", &["nosuid", "noexec", "nodev"]),
            (
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            (
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            ("mqueue", &["nosuid", "noexec", "nodev"]),
            ("sysfs", &["nosuid", "noexec", "nodev", "ro"]),
            ("cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
        ];
        for (fs, words) in cases {
            parse_all(words, MountKind::Fs(fs)).unwrap();
        }
        parse_all(&["rbind", "rprivate", "rw"], MountKind::Share).unwrap();
        parse_all(
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
            MountKind::Share,
        )
        .unwrap();
    }
}
