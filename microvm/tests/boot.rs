//! Component tests of `microvm` against the real QEMU and the installed
//! guest image (TCG on the project's machines).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mu2_microvm::record::{OwnerKind, RecordDir, RecordError, State};
use mu2_microvm::{cgroup, GuestImage, Vm, VmError, VmSpec};

mod common;

fn image() -> Option<GuestImage> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: microvm boot tests need root");
        return None;
    }
    Some(GuestImage::locate(None).expect("guest image installed (scripts/install)"))
}

fn spec(id: &str, kernel: &Path, initrd: &Path) -> VmSpec {
    common::spec(id, kernel, initrd, common::jail_mode())
}

fn qemu_of(id: &str) -> Vec<u32> {
    let needle = format!("mu2-{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .split('\0')
                .any(|a| a == needle)
                .then_some(pid)
        })
        .collect()
}

#[test]
fn boots_to_agent_ready_and_is_reaped_on_drop() {
    let Some(img) = image() else { return };
    let id = format!("boot-{}", std::process::id());
    let vm = Vm::launch(&spec(&id, &img.kernel, &img.initrd)).expect("vm ready");
    assert_eq!(vm.ready().protocol_version, mu2_protocol::PROTOCOL_VERSION);
    assert!(vm.ready().kernel_release.ends_with("-amd64"));
    assert!(vm.ready().uptime_ns > 0);
    let pid = vm.pid();
    assert_eq!(qemu_of(&id), vec![pid]);
    // QEMU's own seccomp sandbox (-sandbox on,...) holds on every thread.
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        assert!(
            status.contains("\nSeccomp:\t2\n"),
            "thread {:?}: {status}",
            t.file_name()
        );
        assert!(
            status.contains("\nNoNewPrivs:\t1\n"),
            "thread {:?}",
            t.file_name()
        );
        threads += 1;
    }
    assert!(threads > 1, "qemu runs vcpu and io threads");
    // Under TCG, no transparent huge pages (they only cost there).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let tcg = mu2_microvm::AccelChoice::Auto.resolve() == mu2_microvm::Accel::Tcg;
    assert!(
        status.contains(if tcg {
            "\nTHP_enabled:\t0\n"
        } else {
            "\nTHP_enabled:\t1\n"
        }),
        "tcg {tcg}: {status}"
    );
    // The VMM runs in its own host cgroup, with the limits of its spec.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("/mu2/{id}")),
        "qemu is not in its cgroup: {cgroups}"
    );
    let stats = vm.stats().unwrap();
    assert!(
        stats.memory_usage_bytes > 0 && stats.cpu_usage_ns > 0,
        "{stats:?}"
    );
    assert_eq!(
        stats.memory_limit_bytes,
        (256 + cgroup::VMM_OVERHEAD_MIB) << 20
    );
    let dirs = vm.cgroup_dirs().to_vec();
    assert!(dirs.iter().all(|d| d.is_dir()));
    // Its record names this process as the owner, QEMU and the cgroups.
    let s = spec(&id, &img.kernel, &img.initrd);
    let records = RecordDir::for_mode(&s.jail);
    let r = records.read(&id).unwrap().expect("the running VM's record");
    assert_eq!(r.owner.pid, std::process::id());
    assert_eq!(r.owner.kind, OwnerKind::Test);
    assert_eq!(r.vmm.as_ref().map(|v| v.qemu.pid), Some(pid));
    assert_eq!(r.state(), State::Running);
    assert_eq!(r.cgroups, dirs);
    // The id is taken host-wide: a second VM of the same id is refused,
    // naming the owner, and the first is untouched.
    match Vm::launch(&s) {
        Err(VmError::Record {
            source: RecordError::InUse { owner, .. },
            ..
        }) => assert!(owner.contains(&format!("test pid {}", std::process::id()))),
        Err(e) => panic!("expected the id in use, got {e}"),
        Ok(_) => panic!("a second VM got a running VM's id"),
    }
    assert_eq!(qemu_of(&id), vec![pid]);
    assert!(dirs.iter().all(|d| d.is_dir()));
    drop(vm);
    assert!(qemu_of(&id).is_empty(), "qemu survived its Vm");
    for d in dirs {
        assert!(!d.exists(), "cgroup {} survived its Vm", d.display());
    }
    assert!(records.read(&id).unwrap().is_none(), "the record survived");
}

#[test]
fn pause_freezes_the_vmm_and_resume_lets_it_run() {
    let Some(img) = image() else { return };
    let id = format!("pause-{}", std::process::id());
    let vm = Vm::launch(&spec(&id, &img.kernel, &img.initrd)).expect("vm ready");
    vm.pause().unwrap();
    // Give the freezer a moment to catch every thread, then no CPU at all.
    std::thread::sleep(Duration::from_millis(300));
    let before = vm.stats().unwrap().cpu_usage_ns;
    std::thread::sleep(Duration::from_millis(700));
    let after = vm.stats().unwrap().cpu_usage_ns;
    assert_eq!(before, after, "a paused VMM used CPU");
    vm.resume().unwrap();
    // The guest's timer ticks use CPU again once it runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vm.stats().unwrap().cpu_usage_ns == after {
        assert!(
            std::time::Instant::now() < deadline,
            "the VMM never resumed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dirs = vm.cgroup_dirs().to_vec();
    drop(vm);
    assert!(qemu_of(&id).is_empty());
    assert!(dirs.iter().all(|d| !d.exists()));
}

#[test]
fn a_kernel_panic_is_an_early_exit_with_the_console_tail() {
    let Some(img) = image() else { return };
    // An initramfs without /init: the kernel panics, and panic=-1 plus
    // -no-reboot end QEMU.
    let dir = tempfile::tempdir().unwrap();
    let initrd = cpio(dir.path(), &[]);
    let id = format!("panic-{}", std::process::id());
    let err = match Vm::launch(&spec(&id, &img.kernel, &initrd)) {
        Err(e) => e,
        Ok(_) => panic!("a guest without init became ready"),
    };
    match &err {
        VmError::ExitedEarly { console, .. } => {
            assert!(console.contains("Kernel panic"), "console tail: {console}")
        }
        other => panic!("expected ExitedEarly, got {other}"),
    }
    assert!(qemu_of(&id).is_empty());
}

#[test]
fn a_guest_that_never_gets_ready_is_killed_at_the_deadline() {
    let Some(img) = image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let busybox = PathBuf::from("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox-static is installed by scripts/install-deps"
    );
    let initrd = cpio(
        dir.path(),
        &[(
            "init",
            "#!/bin/busybox sh\n/bin/busybox echo mu2-test: stalling forever\nwhile :; do /bin/busybox sleep 1; done\n",
        )],
    );
    let id = format!("stall-{}", std::process::id());
    let mut s = spec(&id, &img.kernel, &initrd);
    s.deadlines.ready = Duration::from_secs(45);
    let err = match Vm::launch(&s) {
        Err(e) => e,
        Ok(_) => panic!("a stalling guest became ready"),
    };
    match &err {
        VmError::NotReady { console, .. } => {
            assert!(
                console.contains("stalling forever"),
                "console tail: {console}"
            )
        }
        other => panic!("expected NotReady, got {other}"),
    }
    assert!(qemu_of(&id).is_empty(), "qemu survived the deadline");
    assert!(cgroup::paths_for(&id).iter().all(|d| !d.exists()));
    assert!(RecordDir::for_mode(&s.jail).read(&id).unwrap().is_none());
}

#[test]
fn an_invalid_spec_starts_nothing() {
    let Some(img) = image() else { return };
    let mut s = spec("bad,id", &img.kernel, &img.initrd);
    assert!(matches!(Vm::launch(&s), Err(VmError::Spec(_))));
    s.id = "ok".into();
    s.memory_mib = 1;
    assert!(matches!(Vm::launch(&s), Err(VmError::Spec(_))));
}

/// Builds a newc initramfs in `dir` holding busybox and the given
/// executable files.
fn cpio(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    if !files.is_empty() {
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    }
    for (name, text) in files {
        let p = root.join(name);
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = dir.join("initrd.img");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 > {}",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio failed");
    out
}
