//! Choosing the accelerator: KVM where it can boot a stock guest, else TCG.
//!
//! On the project's machines `/dev/kvm` exists but belongs to a
//! paravirtualised (PVM) KVM that cannot run a stock kernel: the guest
//! crawls for a minute and dies with an "emulation failure". So the probe
//! does not trust `/dev/kvm` alone; it asks for hardware virtualisation in
//! the CPU flags (vmx/svm) and for the vendor module (kvm_intel/kvm_amd).
//! It reads a few small files — milliseconds — and its verdict is cached
//! for the life of the process. The operator can force either choice.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// Whether QEMU keeps transparent huge pages. With KVM they back the
    /// guest's pages and are worth it; under TCG the soft MMU maps 4 KiB
    /// pages anyway and they only cost (see `sys::no_huge_pages`).
    pub fn huge_pages(self) -> bool {
        self == Accel::Kvm
    }
}

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown accelerator {0:?}: expected auto, kvm or tcg")]
pub struct AccelParseError(String);

impl std::str::FromStr for AccelChoice {
    type Err = AccelParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(AccelParseError(other.to_string())),
        }
    }
}

impl AccelChoice {
    pub fn resolve(self) -> Accel {
        match self {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto => probe_cached(),
        }
    }
}

/// Why the probe decided as it did, for `mu2 check` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub accel: Accel,
    pub reason: String,
}

fn probe_cached() -> Accel {
    static VERDICT: OnceLock<Accel> = OnceLock::new();
    *VERDICT.get_or_init(|| probe(Path::new("/")).accel)
}

/// Probes the host rooted at `root` (a parameter so tests can fake a host).
pub fn probe(root: &Path) -> Verdict {
    let tcg = |reason: &str| Verdict {
        accel: Accel::Tcg,
        reason: reason.to_string(),
    };
    if fs::metadata(root.join("dev/kvm")).is_err() {
        return tcg("no /dev/kvm");
    }
    let cpuinfo = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    if !has_virt_flag(&cpuinfo) {
        return tcg(
            "the CPU flags show no vmx or svm (a paravirtualised KVM cannot boot a stock guest)",
        );
    }
    let vendor = ["kvm_intel", "kvm_amd"]
        .iter()
        .find(|m| root.join("sys/module").join(m).exists());
    match vendor {
        Some(m) => Verdict {
            accel: Accel::Kvm,
            reason: format!("/dev/kvm with hardware virtualisation ({m})"),
        },
        None => tcg("/dev/kvm is not backed by kvm_intel or kvm_amd"),
    }
}

fn has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo. Under TCG the guest
/// TSC runs at the host's rate, and telling the guest kernel so
/// (`tsc_early_khz`) skips a PIT calibration that intermittently fails
/// under emulation and leaves the boot hanging.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz(&cpuinfo)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(kvm: bool, flags: &str, module: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("dev")).unwrap();
        fs::create_dir_all(d.path().join("proc")).unwrap();
        fs::create_dir_all(d.path().join("sys/module/kvm")).unwrap();
        if kvm {
            fs::write(d.path().join("dev/kvm"), "").unwrap();
        }
        fs::write(
            d.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {flags} sse2\n"),
        )
        .unwrap();
        if let Some(m) = module {
            fs::create_dir_all(d.path().join("sys/module").join(m)).unwrap();
        }
        d
    }

    #[test]
    fn kvm_needs_device_flag_and_vendor_module() {
        let h = fake_host(true, "vmx", Some("kvm_intel"));
        assert_eq!(probe(h.path()).accel, Accel::Kvm);
        let h = fake_host(true, "svm", Some("kvm_amd"));
        assert_eq!(probe(h.path()).accel, Accel::Kvm);
    }

    #[test]
    fn paravirtualised_kvm_falls_back_to_tcg() {
        // The project's machines: /dev/kvm, no vmx flag, kvm_pvm loaded.
        let h = fake_host(true, "hypervisor", Some("kvm_pvm"));
        assert_eq!(probe(h.path()).accel, Accel::Tcg);
        let h = fake_host(true, "vmx", Some("kvm_pvm"));
        assert_eq!(probe(h.path()).accel, Accel::Tcg);
        let h = fake_host(false, "vmx", Some("kvm_intel"));
        assert_eq!(probe(h.path()).accel, Accel::Tcg);
    }

    #[test]
    fn choice_parses_and_forces() {
        assert_eq!("tcg".parse::<AccelChoice>().unwrap().resolve(), Accel::Tcg);
        assert_eq!("kvm".parse::<AccelChoice>().unwrap().resolve(), Accel::Kvm);
        assert!("xen".parse::<AccelChoice>().is_err());
    }

    #[test]
    fn cpu_mhz_to_khz() {
        assert_eq!(
            parse_cpu_mhz("model name\t: x\ncpu MHz\t\t: 2793.436\n"),
            Some(2_793_436)
        );
        assert_eq!(parse_cpu_mhz("nothing"), None);
    }
}
