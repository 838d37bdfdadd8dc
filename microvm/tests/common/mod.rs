//! What the boot and jail tests share: the spec of a small test VM and the
//! host's jail configuration with this build's jailer.

use std::path::Path;

use mu2_microvm::jail::JailMode;
use mu2_microvm::record::{Owner, OwnerKind};
use mu2_microvm::spec::DEFAULT_TB_SIZE_MIB;
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
        deadlines: mu2_microvm::Deadlines::default(),
        tb_size_mib: DEFAULT_TB_SIZE_MIB,
        debug: false,
        jail,
        owner: Owner::this_process(OwnerKind::Test),
        templates: mu2_microvm::template::TemplateMode::Off,
        pool: mu2_microvm::pool::PoolMode::Off,
        owned_dir: None,
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

/// Runs `run` to its end in `vm` as the shim and `mu2 run` do — Run,
/// Prepared, Start, Started, Exit — and acknowledges the exit (the test
/// reads no output: it has none to wait for). Panics on anything else.
#[allow(dead_code)]
pub fn run_to_exit(vm: &mut mu2_microvm::Vm, run: mu2_protocol::Run) -> mu2_protocol::Exit {
    use mu2_microvm::AgentEvent;
    use mu2_protocol::{GuestMsg, HostMsg};
    let deadline = || Some(std::time::Instant::now() + std::time::Duration::from_secs(120));
    let sender = vm.sender();
    sender.send(&HostMsg::Run(Box::new(run))).unwrap();
    for (request, want) in [(Some(HostMsg::Start), "Prepared"), (None, "Started")] {
        match vm.next_event(deadline()) {
            Some(AgentEvent::Msg(GuestMsg::Prepared { .. })) if want == "Prepared" => {}
            Some(AgentEvent::Msg(GuestMsg::Started { .. })) if want == "Started" => {}
            other => panic!(
                "{want} expected, got {other:?}; console:\n{}",
                vm.console_tail(20)
            ),
        }
        if let Some(r) = request {
            sender.send(&r).unwrap();
        }
    }
    sender
        .send(&HostMsg::StdinClose { total_bytes: 0 })
        .unwrap();
    match vm.next_event(deadline()) {
        Some(AgentEvent::Msg(GuestMsg::Exit(e))) => {
            sender.send(&HostMsg::ExitAck).unwrap();
            e
        }
        other => panic!(
            "Exit expected, got {other:?}; console:\n{}",
            vm.console_tail(20)
        ),
    }
}
