//! What the containerd and CRI tests share: skipping, process listing,
//! starting and stopping a private containerd, and what mu2 must not leave
//! behind (VMM cgroups, jails).
#![allow(dead_code)] // each test file uses its own subset

pub mod ctd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the tests of `what` cannot run here, if they cannot.
pub fn skip_reason(what: &str) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(format!("the {what} tests need root"));
    }
    for bin in ["containerd", "ctr", "runc", "qemu-system-x86_64"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        if !found {
            return Some("containerd, ctr, runc or qemu-system-x86_64 is not installed".into());
        }
    }
    None
}

/// (pid, command line) of every process.
pub fn procs() -> Vec<(u32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&c).replace('\0', " ");
            v.push((pid, s));
        }
    }
    v
}

/// The last `n` non-blank lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts containerd with `config` (written to `dir/config.toml`), logging
/// to `dir/containerd.log`, with this build's shim first in its PATH.
/// The busybox test rootfs (`scripts/build-test-bundles`, found through
/// `MU2_TEST_BUNDLES`).
pub fn test_rootfs() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bundles = std::env::var_os("MU2_TEST_BUNDLES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("build/bundles"));
    let rootfs = bundles.join("busybox/rootfs");
    assert!(
        rootfs.is_dir(),
        "no test rootfs at {} (run scripts/build-test-bundles)",
        rootfs.display()
    );
    rootfs
}

pub fn spawn_containerd(dir: &Path, config: &str) -> Child {
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-mu2-v1"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(shim_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let mut cmd = Command::new("containerd");
    // A mu2 configuration of this containerd's own (its shims read it).
    let mu2_config = dir.join("mu2.toml");
    if mu2_config.is_file() {
        cmd.env("MU2_CONFIG", mu2_config);
    }
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd")
}

/// Stops containerd (SIGTERM, then SIGKILL after 10 s) and detaches the
/// mounts it left under `dir`, deepest first, so that `dir` can go.
pub fn stop_containerd(child: Option<Child>, dir: &Path) {
    if let Some(mut c) = child {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    let root = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for mp in points {
        let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// What mu2 left of the VMs whose names `is_ours`: their VMM cgroups (in
/// the v2 tree and every v1 hierarchy), their jails (directories and id
/// claims, from the host's jail configuration) and their records.
pub fn vm_leftovers(is_ours: impl Fn(&str) -> bool) -> Vec<String> {
    let cg = PathBuf::from("/sys/fs/cgroup");
    let roots = std::iter::once(cg.clone()).chain(
        std::fs::read_dir(&cg)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    let mut left = Vec::new();
    for root in roots {
        for e in std::fs::read_dir(root.join("mu2"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().is_dir() && is_ours(&e.file_name().to_string_lossy()) {
                left.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    let Ok(mode) = mu2_microvm::jail::JailMode::load() else {
        return left;
    };
    if let mu2_microvm::jail::JailMode::Jailed(cfg) = &mode {
        for p in mu2_microvm::jail::leftovers_matching(cfg, &is_ours) {
            left.push(format!("jail {}", p.display()));
        }
    }
    for r in mu2_microvm::record::RecordDir::for_mode(&mode).list() {
        if is_ours(&r.id) {
            left.push(format!("record {}", r.path.display()));
        }
    }
    left
}

/// Threads that keep cores busy until dropped: races show up under load.
pub struct CpuHogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuHogs {
    pub fn start(n: usize) -> CpuHogs {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    x
                })
            })
            .collect();
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
