//! `mu2 check`: what this host offers mu2, one line per fact.
//!
//! The jail comes last and is never quiet: a jail the operator disabled
//! prints DISABLED (VMs still run, so the check passes); a jail without a
//! uid range, a host that cannot jail, a policy that does not parse or a
//! missing jailer fail the check, since every launch would fail.

use std::path::Path;
use std::process::Command;

use mu2_microvm::jail::{self, JailMode};
use mu2_microvm::{accel, GuestImage};

/// Prints the report; false when mu2 cannot run VMs here.
pub fn check(guest_dir: Option<&Path>) -> bool {
    let mut ok = true;
    let verdict = accel::probe(Path::new("/"));
    println!("accel: {:?} ({})", verdict.accel, verdict.reason);
    match Command::new(mu2_microvm::spec::DEFAULT_QEMU)
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => println!(
            "qemu: {}",
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
        ),
        _ => {
            println!("qemu: qemu-system-x86_64 not found (apt-get install qemu-system-x86)");
            ok = false;
        }
    }
    match GuestImage::locate(guest_dir) {
        Ok(g) => println!("guest image: {}", g.dir.display()),
        Err(e) => {
            println!("guest image: {e}");
            ok = false;
        }
    }
    match accel::host_tsc_khz() {
        Some(khz) => println!("host tsc: {khz} kHz"),
        None => println!("host tsc: unknown (TCG guests calibrate it themselves)"),
    }
    ok &= check_templates();
    ok &= check_pool();
    ok &= check_jail();
    ok
}

/// The pool's line: off, not serving (VMs restore or boot), or what it
/// holds. Only a broken config fails: a host without a pool works.
fn check_pool() -> bool {
    use mu2_microvm::pool::{client, PoolConfig, PoolMode};
    let cfg = match PoolConfig::load() {
        Ok(c) => c,
        Err(e) => {
            println!("pool: {}", mu2_microvm::describe_error(&e));
            return false;
        }
    };
    let PoolMode::Use { socket, .. } = cfg.mode() else {
        println!("pool: off (VMs restore from templates or boot)");
        return true;
    };
    match client::status(&socket, std::time::Duration::from_secs(2)) {
        Err(e) => println!(
            "pool: none serves {} ({e}): VMs restore from templates or boot; start `mu2 pool serve` (or the mu2-pool unit)",
            socket.display()
        ),
        Ok(s) => {
            let warm: u32 = s.shapes.iter().map(|sh| sh.warm).sum();
            let target: u32 = s.shapes.iter().map(|sh| sh.target).sum();
            let shared = s.shapes.iter().filter(|sh| sh.shared_template).count();
            println!(
                "pool: pid {} serves {} ({warm} of {target} warm VMs in {} shapes, {shared} with a shared template of {} MiB in all; {} of {} MiB; {} leases)",
                s.pid,
                socket.display(),
                s.shapes.len(),
                s.template_kib >> 10,
                s.warm_mib,
                s.budget_mib,
                s.leases
            );
        }
    }
    true
}

/// The templates' line: off, or the directory, how many verify and how
/// much state they hold against the budget. A broken config fails.
fn check_templates() -> bool {
    use mu2_microvm::template::{Store, TemplateMode};
    match TemplateMode::load() {
        Err(e) => {
            println!("templates: {}", mu2_microvm::describe_error(&e));
            false
        }
        Ok(TemplateMode::Off) => {
            println!("templates: off (every VM boots cold)");
            true
        }
        Ok(TemplateMode::Use {
            dir,
            build,
            max_bytes,
        }) => {
            let store = match Store::open(&dir) {
                Ok(s) => s,
                Err(e) => {
                    println!(
                        "templates: {}: {}; VMs boot cold",
                        dir.display(),
                        mu2_microvm::describe_error(&e)
                    );
                    return true;
                }
            };
            let all = store.list();
            let good: Vec<_> = all.iter().filter_map(|(_, m)| m.as_ref().ok()).collect();
            let bytes: u64 = good.iter().map(|m| m.state_bytes).sum();
            println!(
                "templates: on in {} ({} usable, {} unusable; {} of {} MiB; {})",
                dir.display(),
                good.len(),
                all.len() - good.len(),
                bytes >> 20,
                max_bytes >> 20,
                if build {
                    "built on first use"
                } else {
                    "never built on a request: mu2 template build"
                }
            );
            true
        }
    }
}

/// The jail's lines; false when the jail would refuse every launch.
fn check_jail() -> bool {
    let mode = match JailMode::load() {
        Ok(m) => m,
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            println!("jail: {e}{cause}; every launch will fail");
            return false;
        }
    };
    println!("{}", mode.describe());
    let cfg = match mode {
        JailMode::Disabled { .. } => return true,
        JailMode::Jailed(cfg) => cfg,
    };
    let mut ok = cfg.ids.is_some();
    match jail::probe_host() {
        Ok(()) => println!("jail host: seccomp and mnt, pid, ipc, uts, net, user namespaces"),
        Err(e) => {
            println!("jail host: {e}");
            ok = false;
        }
    }
    let policy = jail::seccomp::POLICY_JSON;
    match (
        jail::seccomp::syscall_names(policy),
        jail::seccomp::enosys_names(policy),
    ) {
        (Ok(allowed), Ok(enosys)) => println!(
            "jail seccomp: {} syscalls allowed, {} failing with ENOSYS ({})",
            allowed.len(),
            enosys.len(),
            jail::seccomp::POLICY_PATH
        ),
        (Err(e), _) | (_, Err(e)) => {
            println!("jail seccomp: {e}");
            ok = false;
        }
    }
    let jailer = cfg.jailer_path();
    if jailer.is_file() {
        println!("jailer: {}", jailer.display());
    } else {
        println!(
            "jailer: {} not found (run scripts/install)",
            jailer.display()
        );
        ok = false;
    }
    ok
}
