//! Harness for the end-to-end tests of `mu2 run`: real QEMU, the installed
//! guest image, bundles from `scripts/build-test-bundles`.
//!
//! Every run gets a unique VM id; after it, [`assert_nothing_left`] checks
//! that no QEMU of that id survives and that no mount, socket file or
//! directory carries its id. Runs have a hard deadline: a hung VM fails the
//! test instead of hanging the suite.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a single `mu2 run` may take before the test fails.
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// None (after saying why) when the tests cannot run here.
pub fn setup() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: mu2 end-to-end tests need root (QEMU, 9p shares)");
        return None;
    }
    let bundles = std::env::var_os("MU2_TEST_BUNDLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/bundles"));
    let base = bundles.join("busybox");
    assert!(
        base.join("config.json").is_file(),
        "no test bundle at {} (run scripts/build-test-bundles)",
        base.display()
    );
    Some(base)
}

/// The kernel release the guest image's manifest names (the image tests
/// run against: `MU2_GUEST_DIR` or the installed one).
pub fn guest_kernel_release() -> String {
    let image = mu2_microvm::GuestImage::locate(None).expect("a guest image");
    let manifest = std::fs::read_to_string(image.dir.join("manifest")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("kernel_release="))
        .unwrap_or_else(|| panic!("no kernel_release in {}/manifest", image.dir.display()))
        .to_string()
}

/// A bundle in a temp dir: a config.json of our own whose root points at
/// the shared busybox rootfs (read-only to the VM).
pub struct TestBundle {
    pub dir: tempfile::TempDir,
    pub config: Value,
}

impl TestBundle {
    pub fn new(base: &Path, args: &[&str]) -> TestBundle {
        let text = std::fs::read_to_string(base.join("config.json")).unwrap();
        let mut config: Value = serde_json::from_str(&text).unwrap();
        let rootfs = base.join("rootfs").canonicalize().unwrap();
        config["root"]["path"] = Value::String(rootfs.display().to_string());
        config["root"]["readonly"] = Value::Bool(false);
        config["process"]["args"] = serde_json::json!(args);
        config["process"]["terminal"] = Value::Bool(false);
        let dir = tempfile::Builder::new()
            .prefix("mu2-test-")
            .tempdir()
            .unwrap();
        TestBundle { dir, config }
    }

    pub fn write(&self) -> &Path {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
        self.dir.path()
    }
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status.code().expect("mu2 exited by a signal")
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

pub fn unique_id(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn mu2() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mu2"))
}

/// Spawns `mu2 run --id ID [extra] BUNDLE`.
pub fn spawn(id: &str, bundle: &Path, extra: &[&str]) -> Child {
    mu2()
        .arg("run")
        .arg("--id")
        .arg(id)
        .args(extra)
        .arg(bundle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mu2")
}

/// Runs the bundle with `stdin` as input; checks that nothing is left.
pub fn run_with(bundle: &TestBundle, stdin: &[u8], extra: &[&str]) -> Output {
    let id = unique_id("run");
    let dir = bundle.write();
    let mut child = spawn(&id, dir, extra);
    let out = collect(&mut child, stdin);
    assert_nothing_left(&id, dir);
    out
}

pub fn run(bundle: &TestBundle) -> Output {
    run_with(bundle, b"", &[])
}

/// Feeds stdin, collects stdout and stderr, enforces the deadline.
pub fn collect(child: &mut Child, stdin: &[u8]) -> Output {
    let mut cin = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = cin.write_all(&input);
    });
    let mut cout = child.stdout.take().unwrap();
    let mut cerr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = cout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = cerr.read_to_end(&mut v);
        v
    });
    let status = wait_deadline(child, RUN_DEADLINE);
    let _ = feeder.join();
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

pub fn wait_deadline(child: &mut Child, deadline: Duration) -> ExitStatus {
    let end = Instant::now() + deadline;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mu2 run did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line mentions `needle`.
pub fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push((pid, cmd));
            }
        }
    }
    found
}

/// No QEMU of VM `id`, no mount of the bundle or the id, no file named
/// after the id in the places a runtime keeps state, no cgroup, jail or
/// record of it (where the host's configuration keeps them).
pub fn assert_nothing_left(id: &str, bundle: &Path) {
    let mode = mu2_microvm::jail::JailMode::load().expect("the mu2 configuration");
    assert_nothing_left_with(id, bundle, &mode);
}

/// [`assert_nothing_left`], with the jail and record directories of `mode`.
pub fn assert_nothing_left_with(id: &str, bundle: &Path, mode: &mu2_microvm::jail::JailMode) {
    // QEMU may take a moment to be reaped after mu2 exits if it was killed.
    let end = Instant::now() + Duration::from_secs(5);
    let needle = format!("mu2-{id}");
    loop {
        let procs = processes_with(&needle);
        if procs.is_empty() {
            break;
        }
        assert!(Instant::now() < end, "VM processes left behind: {procs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for dir in mu2_microvm::cgroup::paths_for(id) {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    if let mu2_microvm::jail::JailMode::Jailed(cfg) = mode {
        let left = mu2_microvm::jail::leftovers(cfg, id);
        assert!(left.is_empty(), "jail of {id} left behind: {left:?}");
    }
    let records = mu2_microvm::record::RecordDir::for_mode(mode);
    let record = records.record_path(id);
    assert!(
        std::fs::symlink_metadata(&record).is_err(),
        "record {} left behind",
        record.display()
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let b = bundle.display().to_string();
    for line in mountinfo.lines() {
        assert!(
            !line.contains(id) && !line.contains(&b),
            "mount left behind: {line}"
        );
    }
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    assert!(
        !unix.lines().any(|l| l.contains(id)),
        "socket left behind for {id}"
    );
    for dir in ["/tmp", "/run", "/run/mu2", "/var/run"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(!name.contains(id), "{dir}/{name} left behind");
            }
        }
    }
}

/// Runs the same bundle under runc, the reference runtime, with stdin
/// from /dev/null. The root is made read-only for runc, so that the shared
/// test rootfs is never written; tests compare what does not write to it.
pub fn runc(bundle: &TestBundle) -> Output {
    let dir = tempfile::Builder::new()
        .prefix("mu2-runc-")
        .tempdir()
        .unwrap();
    let mut config = bundle.config.clone();
    config["root"]["readonly"] = Value::Bool(true);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let id = unique_id("runc");
    let mut child = Command::new("runc")
        .arg("run")
        .arg("--bundle")
        .arg(dir.path())
        .arg(&id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runc");
    let out = collect(&mut child, b"");
    let _ = Command::new("runc")
        .args(["delete", "--force", &id])
        .stderr(Stdio::null())
        .status();
    out
}

/// Threads spinning on every core asked for, until dropped: the busy host
/// that concurrency tests run on.
pub struct CpuHogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuHogs {
    pub fn start(n: usize) -> CpuHogs {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
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
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
