//! What the boot and jail tests share: the spec of a small test VM and the
//! host's jail configuration with this build's jailer.

use std::path::Path;

use mu2_microvm::jail::JailMode;
use mu2_microvm::record::{Owner, OwnerKind};
use mu2_microvm::spec::{DEFAULT_READY_TIMEOUT, DEFAULT_TB_SIZE_MIB};
use mu2_microvm::{AccelChoice, Share, VmSpec};

/// A 256 MiB, 1-vCPU VM with a read-only rootfs share of /usr/share/doc.
pub fn spec(id: &str, kernel: &Path, initrd: &Path, jail: JailMode) -> VmSpec {
    VmSpec {
        id: id.into(),
        qemu: "qemu-system-x86_64".into(),
        kernel: kernel.into(),
        initrd: initrd.into(),
        memory_mib: 256,
        vcpus: 1,
        accel: AccelChoice::Auto.resolve(),
        shares: vec![Share {
            tag: "rootfs".into(),
            host_path: "/usr/share/doc".into(),
            readonly: true,
        }],
        ready_timeout: DEFAULT_READY_TIMEOUT,
        tb_size_mib: DEFAULT_TB_SIZE_MIB,
        debug: false,
        jail,
        owner: Owner::this_process(OwnerKind::Test),
    }
}

/// The host's jail configuration (scripts/install writes it), with this
/// build's jailer.
pub fn jail_mode() -> JailMode {
    match JailMode::load().expect("mu2 configuration") {
        JailMode::Jailed(mut c) => {
            c.jailer = Some(env!("CARGO_BIN_EXE_mu2-jailer").into());
            JailMode::Jailed(c)
        }
        disabled => disabled,
    }
}
