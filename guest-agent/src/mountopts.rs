//! OCI mount option words → `mount(2)` flags and data.
//!
//! Flag words (`ro`, `nosuid`, `relatime`, ...) become `MsFlags`; everything
//! else (`size=`, `mode=`, `newinstance`, ...) is passed to the filesystem as
//! its data string, in order. Bind and propagation words mean nothing for a
//! filesystem the guest kernel makes, so they are dropped.

use nix::mount::MsFlags;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOpts {
    pub flags: MsFlags,
    pub data: String,
}

impl MountOpts {
    pub fn parse<S: AsRef<str>>(options: &[S], readonly: bool) -> MountOpts {
        let mut flags = MsFlags::empty();
        let mut data: Vec<&str> = Vec::new();
        for opt in options {
            let opt = opt.as_ref();
            let (set, clear) = match opt {
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
                "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "defaults" | "bind" | "rbind" | "private" | "rprivate" | "shared" | "rshared"
                | "slave" | "rslave" | "unbindable" | "runbindable" => {
                    (MsFlags::empty(), MsFlags::empty())
                }
                other => {
                    if !other.is_empty() {
                        data.push(other);
                    }
                    (MsFlags::empty(), MsFlags::empty())
                }
            };
            flags = (flags | set) & !clear;
        }
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        MountOpts {
            flags,
            data: data.join(","),
        }
    }

    /// The data string, or `None` when empty.
    pub fn data(&self) -> Option<&str> {
        (!self.data.is_empty()).then_some(self.data.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_separated() {
        let o = MountOpts::parse(
            &[
                "nosuid",
                "strictatime",
                "mode=755",
                "size=65536k",
                "rprivate",
            ],
            false,
        );
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data(), Some("mode=755,size=65536k"));
    }

    #[test]
    fn later_words_win_and_readonly_forces_ro() {
        let o = MountOpts::parse(&["ro", "rw", "noexec"], false);
        assert_eq!(o.flags, MsFlags::MS_NOEXEC);
        assert_eq!(o.data(), None);
        let o = MountOpts::parse(&["rw"], true);
        assert!(o.flags.contains(MsFlags::MS_RDONLY));
    }
}
