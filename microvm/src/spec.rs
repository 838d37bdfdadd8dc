//! `VmSpec`: everything needed to start one single-use microVM.

use std::path::PathBuf;

use crate::accel::Accel;
use crate::deadlines::Deadlines;
use crate::jail::JailMode;
use crate::record::Owner;

/// The QEMU binary, looked up in PATH, unless configured otherwise.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Guest RAM when config.json sets no memory limit.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Smallest guest RAM given to a VM: Debian's kernel with our initramfs
/// runs out of memory loading its modules at 100 MiB and boots from about
/// 104 MiB (TCG, 6.1.0-57); this leaves room for the agent and a process.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Largest guest RAM a spec may ask for.
pub const MAX_MEMORY_MIB: u32 = 64 * 1024;
/// Most vCPUs a spec may ask for.
pub const MAX_VCPUS: u32 = 64;

/// The CPUs this process may run on (its affinity, and its cgroup's CPU
/// quota): what vCPUs and the VMM's CPU cap are clamped to. More vCPUs than
/// host CPUs only adds contention (Kata clamps the same way).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}
/// TCG translation-cache size: QEMU's default costs ~240 MiB RSS per VM.
/// Swept on a leased `true` (docs/pool.md): 8 MiB doubles the request's
/// time (the cache flushes), 16 MiB costs ~12%, 32 and 64 MiB are alike —
/// and equal in memory, since only the part a VM fills is resident; 64
/// leaves room for requests that run more code.
pub const DEFAULT_TB_SIZE_MIB: u32 = 64;
/// Most 9p shares a VM may have.
pub const MAX_SHARES: usize = 32;

/// A host directory exported to the guest over virtio-9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The 9p mount tag the guest mounts it by.
    pub tag: String,
    pub host_path: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Names the VM in QEMU's `-name` and in logs: `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    pub shares: Vec<Share>,
    /// Every wait on the guest, the jailer and QEMU ends by these.
    pub deadlines: Deadlines,
    pub tb_size_mib: u32,
    /// Verbose guest console (`mu2.debug=1`) echoed to our stderr.
    pub debug: bool,
    /// The jail QEMU runs in (docs/jailer.md), or its explicit absence.
    pub jail: JailMode,
    /// Who owns the VM, for its record ([`crate::record`]).
    pub owner: Owner,
    /// Whether the VM may be resumed from a template ([`crate::template`]).
    pub templates: crate::template::TemplateMode,
    /// Whether the VM may be leased from the pool ([`crate::pool`]).
    pub pool: crate::pool::PoolMode,
    /// A directory the VM makes and owns: created just after its record
    /// names it, removed with the record (a pooled VM's share, see
    /// [`crate::pool`]).
    pub owned_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "invalid vm id {0:?}: use 1-64 characters of A-Z a-z 0-9 _ . -, not starting with a dot"
    )]
    Id(String),
    #[error("guest memory of {0} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB")]
    Memory(u32),
    #[error("{0} vCPUs is outside 1..={MAX_VCPUS}")]
    Vcpus(u32),
    #[error("invalid 9p share tag {0:?}: use 1-31 characters of a-z 0-9 _ . -")]
    ShareTag(String),
    #[error("9p share tag {0:?} is used twice")]
    DuplicateTag(String),
    #[error("{0} shares is more than {MAX_SHARES}")]
    TooManyShares(usize),
    #[error("share path {0} is not an absolute path to a directory")]
    SharePath(PathBuf),
}

impl VmSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        // The id names the jail directory and cgroups: one rule for all.
        let id_ok = crate::jail::valid_id(&self.id);
        if !id_ok {
            return Err(SpecError::Id(self.id.clone()));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::Memory(self.memory_mib));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(SpecError::Vcpus(self.vcpus));
        }
        if self.shares.len() > MAX_SHARES {
            return Err(SpecError::TooManyShares(self.shares.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.shares {
            // Tags end up inside QEMU's comma-separated option syntax.
            let tag_ok = !s.tag.is_empty()
                && s.tag.len() <= 31
                && s.tag
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            if !tag_ok {
                return Err(SpecError::ShareTag(s.tag.clone()));
            }
            if !seen.insert(&s.tag) {
                return Err(SpecError::DuplicateTag(s.tag.clone()));
            }
            if !s.host_path.is_absolute() || !s.host_path.is_dir() {
                return Err(SpecError::SharePath(s.host_path.clone()));
            }
        }
        Ok(())
    }
}

/// Where the jail puts the kernel and initrd, and the shares.
pub const JAIL_KERNEL: &str = "/guest/vmlinux";
pub const JAIL_INITRD: &str = "/guest/initrd.img";
pub const JAIL_SHARES: &str = "/shares";

impl VmSpec {
    /// The same spec with the paths QEMU sees inside its jail.
    pub fn jail_view(&self) -> VmSpec {
        let mut v = self.clone();
        v.kernel = JAIL_KERNEL.into();
        v.initrd = JAIL_INITRD.into();
        for s in &mut v.shares {
            s.host_path = PathBuf::from(JAIL_SHARES).join(&s.tag);
        }
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec() -> VmSpec {
        VmSpec {
            id: "t1".into(),
            qemu: "qemu-system-x86_64".into(),
            kernel: "/guest/vmlinux".into(),
            initrd: "/guest/initrd.img".into(),
            memory_mib: 256,
            vcpus: 1,
            accel: Accel::Tcg,
            shares: vec![Share {
                tag: "rootfs".into(),
                host_path: "/".into(),
                readonly: true,
            }],
            deadlines: Deadlines::default(),
            tb_size_mib: DEFAULT_TB_SIZE_MIB,
            debug: false,
            jail: JailMode::Disabled {
                source: "/test".into(),
                record_dir: crate::record::DEFAULT_RECORD_DIR.into(),
            },
            owner: Owner::this_process(crate::record::OwnerKind::Test),
            templates: crate::template::TemplateMode::Off,
            pool: crate::pool::PoolMode::Off,
            owned_dir: None,
        }
    }

    #[test]
    fn valid_spec_passes() {
        spec().validate().unwrap();
    }

    #[test]
    fn bad_fields_are_refused() {
        let mut s = spec();
        s.id = "a,b".into();
        assert!(matches!(s.validate(), Err(SpecError::Id(_))));
        for bad in [".", "..", ".hidden"] {
            s.id = bad.into();
            assert!(matches!(s.validate(), Err(SpecError::Id(_))), "{bad}");
        }
        let mut s = spec();
        s.memory_mib = 8;
        assert_eq!(s.validate(), Err(SpecError::Memory(8)));
        let mut s = spec();
        s.vcpus = 0;
        assert_eq!(s.validate(), Err(SpecError::Vcpus(0)));
        let mut s = spec();
        s.shares[0].tag = "root,fs".into();
        assert!(matches!(s.validate(), Err(SpecError::ShareTag(_))));
        let mut s = spec();
        s.shares.push(s.shares[0].clone());
        assert!(matches!(s.validate(), Err(SpecError::DuplicateTag(_))));
        let mut s = spec();
        s.shares[0].host_path = "relative".into();
        assert!(matches!(s.validate(), Err(SpecError::SharePath(_))));
    }
}
