//! The VMM jail (issue 4, docs/jailer.md) against the real `mu2-jailer`,
//! the real QEMU and the installed guest image: what a running QEMU is
//! confined to, QMP inside the jail, the release of the jail however the
//! VM ends, a probe program that tries what a compromised QEMU would try,
//! and the refusals of bad inputs.
//!
//! Needs root, the host's jail configuration (`/etc/mu2/config.toml` with a
//! `uid_range`, written by scripts/install) and, for the probe and the
//! guest-exit test, the bundles of scripts/build-test-bundles.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use mu2_microvm::jail::{self, JailConfig, JailError, JailMode, JailRequest};
use mu2_microvm::record::{self, Filter, GcOptions, OwnerKind, RecordDir};
use mu2_microvm::{cgroup, GuestImage, Vm, VmError, VmSpec};

mod common;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// --- set-up ------------------------------------------------------------------

fn is_root() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: the jail tests need root");
        return false;
    }
    true
}

fn image() -> Option<GuestImage> {
    is_root().then(|| GuestImage::locate(None).expect("guest image installed (scripts/install)"))
}

/// The host's jail configuration with this build's jailer.
fn jail_config() -> JailConfig {
    match common::jail_mode() {
        JailMode::Jailed(c) => {
            assert!(
                c.ids.is_some(),
                "the jail tests need `uid_range` under [jail] in {} (scripts/install)",
                c.source.display()
            );
            c
        }
        JailMode::Disabled { source, .. } => {
            panic!(
                "the jail is disabled in {}: nothing to test",
                source.display()
            )
        }
    }
}

use common::spec;

fn unique_id(tag: &str) -> String {
    format!("jt-{tag}-{}", std::process::id())
}

/// Where scripts/build-test-bundles put its output.
fn bundles() -> PathBuf {
    std::env::var_os("MU2_TEST_BUNDLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/bundles"))
}

/// The busybox bundle's rootfs (scripts/build-test-bundles).
fn busybox_rootfs() -> PathBuf {
    let rootfs = bundles().join("busybox/rootfs");
    assert!(
        rootfs.join("bin/busybox").is_file(),
        "no busybox bundle in {} (run scripts/build-test-bundles)",
        bundles().display()
    );
    rootfs.canonicalize().unwrap()
}

/// A Run of `args` in the busybox rootfs shared as `rootfs`.
fn busybox_run(args: &[&str]) -> mu2_protocol::Run {
    use mu2_protocol::{Process, Root, Run};
    Run {
        root: Root {
            share_tag: "rootfs".into(),
            readonly: true,
            share_subdir: None,
        },
        process: Process {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            no_new_privileges: true,
            ..Default::default()
        },
        hostname: "jail-test".into(),
        mounts: vec![],
        memory_limit_bytes: None,
        pids_limit: None,
        masked_paths: vec![],
        readonly_paths: vec![],
        sysctls: vec![],
        device_rules: vec![],
        rootfs_propagation: None,
    }
}

fn probe_path() -> PathBuf {
    let p = bundles().join("jail-probe");
    assert!(
        p.is_file(),
        "no jail probe at {} (run scripts/build-test-bundles)",
        p.display()
    );
    p.canonicalize().unwrap()
}

// --- VMs: at most two booting at a time --------------------------------------

const MAX_VMS: usize = 2;
static VM_SLOTS: Mutex<usize> = Mutex::new(0);
static VM_SLOT_FREED: Condvar = Condvar::new();

/// Held by a test while it has a VM (or a helper process with one).
struct VmPermit;

fn vm_permit() -> VmPermit {
    let mut n = VM_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    while *n >= MAX_VMS {
        n = VM_SLOT_FREED.wait(n).unwrap_or_else(|e| e.into_inner());
    }
    *n += 1;
    VmPermit
}

impl Drop for VmPermit {
    fn drop(&mut self) {
        *VM_SLOTS.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        VM_SLOT_FREED.notify_one();
    }
}

// --- reading /proc ------------------------------------------------------------

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

/// The value of `Name:` in a /proc status file.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in status:\n{status}"))
        .trim()
}

/// (comm, ppid) of a live process.
fn stat_of(pid: u32) -> Option<(String, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let ppid = s[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// Whether `pid` is a live (not zombie) process named `comm`.
fn alive_as(pid: u32, comm: &str) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    field(&status, "Name") == comm && !field(&status, "State").starts_with('Z')
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first id of the block whose claim file names VM `id`.
fn claim_of(cfg: &JailConfig, id: &str) -> Option<u32> {
    std::fs::read_dir(&cfg.claim_dir)
        .ok()?
        .flatten()
        .find_map(|e| {
            let owner = std::fs::read_to_string(e.path()).ok()?;
            if owner != id {
                return None;
            }
            e.file_name().to_str()?.parse().ok()
        })
}

fn exists_nofollow(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Nothing of VM `id` remains: no QEMU, no jail directory, no id claim, no
/// cgroup, no record.
fn assert_nothing_left(cfg: &JailConfig, id: &str) {
    assert!(qemu_of(id).is_empty(), "a QEMU of {id} survived");
    let dir = jail::jail_dir(cfg, id);
    assert!(!exists_nofollow(&dir), "{} survived", dir.display());
    assert_eq!(claim_of(cfg, id), None, "a claim file still names {id}");
    for d in cgroup::paths_for(id) {
        assert!(!d.exists(), "cgroup {} survived", d.display());
    }
    let records = RecordDir::for_mode(&JailMode::Jailed(cfg.clone()));
    assert!(
        records.read(id).unwrap().is_none(),
        "the record of {id} survived"
    );
}

const NO_CAPS: &str = "0000000000000000";
const CAP_FIELDS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// Checks one /proc status: unprivileged as host uid/gid `first`, no
/// capability, no_new_privs.
fn assert_unprivileged(what: &str, status: &str, first: u32) {
    let ids = vec![first.to_string(); 4].join("\t");
    assert_eq!(field(status, "Uid"), ids, "{what}: uids");
    assert_eq!(field(status, "Gid"), ids, "{what}: gids");
    assert_eq!(field(status, "Groups"), "", "{what}: supplementary groups");
    for cap in CAP_FIELDS {
        assert_eq!(field(status, cap), NO_CAPS, "{what}: {cap}");
    }
    assert_eq!(field(status, "NoNewPrivs"), "1", "{what}: NoNewPrivs");
}

// --- a. a running QEMU ----------------------------------------------------------

#[test]
fn running_qemu_is_confined() {
    let Some(img) = image() else { return };
    let _permit = vm_permit();
    let cfg = jail_config();
    let range = cfg.ids.unwrap();
    let id = unique_id("confined");
    let vm = Vm::launch(&spec(
        &id,
        &img.kernel,
        &img.initrd,
        JailMode::Jailed(cfg.clone()),
    ))
    .expect("jailed vm ready");
    assert!(vm.jailed());
    let pid = vm.pid();
    assert_eq!(qemu_of(&id), vec![pid]);

    // Its jail directory and its block of host ids.
    let dir = vm.jail_dir().expect("a jail dir").to_path_buf();
    assert_eq!(dir, cfg.jail_root.join(&id));
    assert!(dir.is_dir());
    let first = claim_of(&cfg, &id).expect("a claim file in the claim dir names the VM");
    assert!(
        first >= range.first
            && first - range.first + 65535 <= range.last - range.first
            && (first - range.first).is_multiple_of(65536),
        "block {first} is not one of {range:?}"
    );
    assert!(jail::ids::is_claimed(&cfg.claim_dir, first));

    // Every thread: seccomp filter, no_new_privs, no capability, the
    // VM's own host uid and gid.
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        let what = format!("qemu thread {}", t.file_name().to_string_lossy());
        assert_eq!(field(&status, "Seccomp"), "2", "{what}");
        assert_unprivileged(&what, &status, first);
        threads += 1;
    }
    assert!(threads > 1, "qemu runs vcpu and io threads");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    // Under TCG, no transparent huge pages (they only cost there).
    let want_thp = if mu2_microvm::AccelChoice::Auto.resolve() == mu2_microvm::Accel::Tcg {
        "0"
    } else {
        "1"
    };
    assert_eq!(field(&status, "THP_enabled"), want_thp, "THP_enabled");
    // PID 1 of its own pid namespace.
    let nspid: Vec<&str> = field(&status, "NSpid").split_whitespace().collect();
    assert_eq!(nspid, [pid.to_string().as_str(), "1"], "NSpid");

    // Namespaces of its own.
    for ns in ["mnt", "pid", "net", "ipc", "uts", "user"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "qemu shares the host's {ns} namespace");
    }

    // Rlimits.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    for (name, value) in [
        ("Max open files", "4096"),
        ("Max processes", "512"),
        ("Max file size", "68719476736"),
        ("Max core file size", "0"),
    ] {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in limits"));
        let v: Vec<&str> = line[name.len()..].split_whitespace().collect();
        assert_eq!(&v[..2], [value, value], "{line}");
    }

    // Its root is the jail: only what the VM needs.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let names: BTreeSet<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = [
        "dev", "guest", "lib", "lib64", "proc", "run", "shares", "usr",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want, "the jail's root");
    assert!(root.join("guest/vmlinux").is_file());
    assert!(root.join("guest/initrd.img").is_file());
    assert!(root.join("shares/rootfs").is_dir());
    let devs: BTreeSet<String> = std::fs::read_dir(root.join("dev"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        devs,
        ["null", "urandom", "zero"]
            .into_iter()
            .map(String::from)
            .collect(),
        "the jail's /dev (TCG: no /dev/kvm)"
    );
    for host in [
        "etc/passwd",
        "etc/shadow",
        "etc",
        "run/containerd",
        "run/mu2",
        "sys",
        "root",
        "home",
        "tmp",
        "var",
        "work",
        "usr/bin/sh",
        "usr/bin/bash",
        // The jail's /proc: its own pid namespace, pids only.
        "proc/sys",
        "proc/kcore",
        "proc/mounts",
    ] {
        assert!(
            !exists_nofollow(&root.join(host)),
            "/{host} is reachable in the jail"
        );
    }
    // Its /proc shows QEMU alone (PID 1), nothing of the host.
    let procs: BTreeSet<String> = std::fs::read_dir(root.join("proc"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        procs,
        ["1", "self", "thread-self"]
            .into_iter()
            .map(String::from)
            .collect(),
        "the jail's /proc"
    );

    // Mounts: the root a read-only tmpfs, everything read-only but the
    // VM's /run and its /proc (pids only), nothing setuid, the share
    // id-mapped.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mut seen_root = false;
    let mut seen_share = false;
    let mut seen_proc = false;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ").expect("mountinfo line");
        let f: Vec<&str> = left.split_whitespace().collect();
        let (point, opts) = (f[4], f[5].split(',').collect::<Vec<_>>());
        let fstype = right.split_whitespace().next().unwrap();
        assert!(opts.contains(&"nosuid"), "{line}");
        if point != "/run" && point != "/proc" {
            assert!(opts.contains(&"ro"), "writable mount in the jail: {line}");
        }
        if point == "/proc" {
            let sb: Vec<&str> = right
                .split_whitespace()
                .nth(2)
                .unwrap()
                .split(',')
                .collect();
            assert_eq!(fstype, "proc", "{line}");
            assert!(sb.contains(&"subset=pid"), "{line}");
            assert!(
                opts.contains(&"noexec") && opts.contains(&"nodev"),
                "{line}"
            );
            seen_proc = true;
        }
        if point == "/" {
            assert_eq!(fstype, "tmpfs", "{line}");
            seen_root = true;
        }
        if point == "/shares/rootfs" {
            assert!(opts.contains(&"idmapped"), "{line}");
            seen_share = true;
        }
    }
    assert!(
        seen_root && seen_share && seen_proc,
        "mountinfo:\n{mountinfo}"
    );

    // No environment; no fd of the host's files.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.is_empty(),
        "environment: {:?}",
        String::from_utf8_lossy(&environ)
    );
    let mut fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let n: u32 = e.file_name().to_str().unwrap().parse().unwrap();
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue; // closed meanwhile
        };
        let link = link.to_string_lossy().into_owned();
        for host in [
            "/etc", "/home", "/root", "/work", "/tmp", "/var", "/sys", "/run/mu2",
        ] {
            assert!(!link.starts_with(host), "qemu fd {n} -> {link}");
        }
        fds.push((n, link));
    }
    fds.sort();
    let link_of = |n: u32| fds.iter().find(|(f, _)| *f == n).map(|(_, l)| l.as_str());
    assert_eq!(link_of(0), Some("/dev/null"), "fds: {fds:?}");
    assert_eq!(link_of(1), Some("/dev/null"), "fds: {fds:?}");
    assert!(
        link_of(2).is_some_and(|l| l.starts_with("pipe:")),
        "fds: {fds:?}"
    );

    // In its own cgroup.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!("/mu2/{id}")), "{cgroups}");
    let cgroup_dirs = cgroup::paths_for(&id);
    assert!(cgroup_dirs.iter().all(|d| d.is_dir()));

    // Its parent, the jailer: ours, and unprivileged too.
    let (_, jailer) = stat_of(pid).unwrap();
    let (comm, jailer_parent) = stat_of(jailer).unwrap();
    assert_eq!(comm, "mu2-jailer");
    assert_eq!(jailer_parent, std::process::id());
    // (Checked last, so that a failure there hides none of the rest.)
    let jstatus = std::fs::read_to_string(format!("/proc/{jailer}/status")).unwrap();

    drop(vm);
    assert!(!alive_as(pid, "qemu-system-x86"), "qemu survived its Vm");
    assert!(
        !alive_as(jailer, "mu2-jailer"),
        "the jailer survived its Vm"
    );
    assert!(!jail::ids::is_claimed(&cfg.claim_dir, first));
    assert!(!cfg.claim_dir.join(first.to_string()).exists());
    assert_nothing_left(&cfg, &id);

    // The jailer, while it supervised QEMU: its uid, no capability (the
    // bounding set included), no_new_privs.
    assert_unprivileged("the jailer", &jstatus, first);
}

// --- b. QMP ----------------------------------------------------------------------

/// Sends one QMP command; returns its `return`, skipping events.
fn qmp(r: &mut BufReader<UnixStream>, w: &mut UnixStream, cmd: &str) -> serde_json::Value {
    writeln!(w, "{{\"execute\":\"{cmd}\"}}").unwrap();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "QMP closed");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(ret) = v.get("return") {
            return ret.clone();
        }
        assert!(v.get("error").is_none(), "{cmd}: {line}");
    }
}

/// Sockets under `dir` whose name contains `needle` (not following
/// symlinks).
fn sockets_named(dir: &Path, needle: &str, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_socket() && e.file_name().to_string_lossy().contains(needle) {
            out.push(e.path());
        } else if t.is_dir() && depth > 0 {
            sockets_named(&e.path(), needle, depth - 1, out);
        }
    }
}

/// The lines of a /proc/net/unix listing that listen (`__SO_ACCEPTCON`) on
/// `path`.
fn listening<'a>(table: &'a str, path: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 8
                && f[7] == path
                && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
        })
        .collect()
}

#[test]
fn qmp_answers_on_the_jail_socket() {
    let Some(img) = image() else { return };
    let _permit = vm_permit();
    let cfg = jail_config();
    let id = unique_id("qmp");
    let vm = Vm::launch(&spec(
        &id,
        &img.kernel,
        &img.initrd,
        JailMode::Jailed(cfg.clone()),
    ))
    .expect("jailed vm ready");
    let first = claim_of(&cfg, &id).unwrap();
    let path = vm.qmp_path().expect("a jailed VM has a QMP socket");
    assert_eq!(
        path,
        PathBuf::from(format!("/proc/{}/root/run/qmp.sock", vm.pid()))
    );
    // QEMU made it, as the VM's uid, in its private /run.
    let m = std::fs::symlink_metadata(&path).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), first);

    let mut w = UnixStream::connect(&path).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(w.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    assert!(greeting.contains("\"QMP\""), "greeting: {greeting}");
    assert_eq!(
        qmp(&mut r, &mut w, "qmp_capabilities"),
        serde_json::json!({})
    );
    let st = qmp(&mut r, &mut w, "query-status");
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["running"], true, "{st}");

    // The socket exists only inside the jail: the host's jail directory is
    // an empty mount point, no host directory holds a QMP socket, and the
    // socket is bound in the VM's network namespace, not the host's.
    let dir = vm.jail_dir().unwrap();
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "{} is not empty on the host",
        dir.display()
    );
    let mut found = Vec::new();
    for d in ["/run", "/tmp", "/var/run", "/var/tmp", "/dev/shm"] {
        sockets_named(Path::new(d), "qmp", 6, &mut found);
        sockets_named(Path::new(d), &id, 6, &mut found);
    }
    assert!(found.is_empty(), "QMP sockets on the host: {found:?}");
    // (Our connection's server end shows the path in our namespace too: it
    // belongs to the connecting side's namespace; only listeners count.)
    let vm_unix = std::fs::read_to_string(format!("/proc/{}/net/unix", vm.pid())).unwrap();
    assert_eq!(listening(&vm_unix, "/run/qmp.sock").len(), 1, "{vm_unix}");
    let host_unix = std::fs::read_to_string("/proc/self/net/unix").unwrap();
    let host_qmp = listening(&host_unix, "/run/qmp.sock");
    assert!(
        host_qmp.is_empty(),
        "QMP listens in the host's network namespace: {host_qmp:?}"
    );
    drop((r, w));
    drop(vm);
    assert_nothing_left(&cfg, &id);
}

// --- c. release, whichever way the VM ends ---------------------------------------

mod jail_released_on_every_end {
    use super::*;

    const OWNER_ENV: &str = "MU2_JAIL_TEST_OWNER";

    fn launch(cfg: &JailConfig, id: &str, img: &GuestImage) -> (Vm, u32, u32) {
        let vm = Vm::launch(&spec(
            id,
            &img.kernel,
            &img.initrd,
            JailMode::Jailed(cfg.clone()),
        ))
        .expect("jailed vm ready");
        let first = claim_of(cfg, id).expect("claim");
        let (_, jailer) = stat_of(vm.pid()).unwrap();
        assert!(alive_as(jailer, "mu2-jailer"));
        (vm, first, jailer)
    }

    /// The guest runs a process and powers off: QEMU exits 0 by itself.
    #[test]
    fn guest_exit() {
        let Some(img) = image() else { return };
        let _permit = vm_permit();
        let cfg = jail_config();
        let id = unique_id("exit");
        let mut s = spec(&id, &img.kernel, &img.initrd, JailMode::Jailed(cfg.clone()));
        s.shares[0].host_path = busybox_rootfs();
        let mut vm = Vm::launch(&s).expect("jailed vm ready");
        let first = claim_of(&cfg, &id).unwrap();
        let (_, jailer) = stat_of(vm.pid()).unwrap();
        let qemu = vm.pid();
        let _stdio = vm.take_stdio();
        let exit = common::run_to_exit(&mut vm, busybox_run(&["/bin/true"]));
        assert_eq!(exit.status, 0, "{exit:?}");
        // Powered off: QEMU, then the jailer, end with status 0.
        let status = vm.finish(Duration::from_secs(60)).expect("reaped");
        assert!(status.success(), "jailer status {status}");
        assert!(!alive_as(qemu, "qemu-system-x86"));
        assert!(!alive_as(jailer, "mu2-jailer"));
        drop(vm);
        assert!(!jail::ids::is_claimed(&cfg.claim_dir, first));
        assert_nothing_left(&cfg, &id);
    }

    /// QEMU crashes (SIGKILL from outside): the jailer ends with the same
    /// signal, and the Vm releases everything.
    #[test]
    fn qemu_crash() {
        let Some(img) = image() else { return };
        let _permit = vm_permit();
        let cfg = jail_config();
        let id = unique_id("crash");
        let (mut vm, first, jailer) = launch(&cfg, &id, &img);
        let qemu = vm.pid();
        kill(Pid::from_raw(qemu as i32), Signal::SIGKILL).unwrap();
        let status = vm.finish(Duration::from_secs(10)).expect("reaped");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "jailer status {status}"
        );
        assert!(!alive_as(qemu, "qemu-system-x86"));
        assert!(!alive_as(jailer, "mu2-jailer"));
        drop(vm);
        assert!(!jail::ids::is_claimed(&cfg.claim_dir, first));
        assert_nothing_left(&cfg, &id);
    }

    /// The owner drops the Vm: the jailer kills QEMU and both are reaped.
    #[test]
    fn vm_dropped() {
        let Some(img) = image() else { return };
        let _permit = vm_permit();
        let cfg = jail_config();
        let id = unique_id("drop");
        let (vm, first, jailer) = launch(&cfg, &id, &img);
        let qemu = vm.pid();
        drop(vm);
        assert!(!alive_as(qemu, "qemu-system-x86"));
        assert!(!alive_as(jailer, "mu2-jailer"));
        assert!(!jail::ids::is_claimed(&cfg.claim_dir, first));
        assert_nothing_left(&cfg, &id);
    }

    /// Not a test: the owner process of `owner_killed_*` (re-executed with
    /// OWNER_ENV = the VM id). Launches a jailed VM, prints
    /// "owner qemu=<pid> jailer=<pid>" and sleeps until killed. Ignored in
    /// a normal run, where it would have nothing to do.
    #[test]
    #[ignore = "the owner process of owner_killed_*, run by them"]
    fn owner_helper() {
        let id = std::env::var(OWNER_ENV).expect("run by owner_killed_* only");
        let id = id.as_str();
        let img = GuestImage::locate(None).unwrap();
        let vm = Vm::launch(&spec(
            id,
            &img.kernel,
            &img.initrd,
            JailMode::Jailed(jail_config()),
        ))
        .expect("jailed vm ready");
        let (_, jailer) = stat_of(vm.pid()).unwrap();
        println!("owner qemu={} jailer={jailer}", vm.pid());
        std::io::stdout().flush().unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Runs `owner_helper` in a child process, SIGKILLs it once its VM is
    /// up (with `stop_qemu`, once QEMU is SIGSTOPped: it can then do
    /// nothing by itself), and checks what the crash leaves.
    fn owner_killed(mode: &str, stop_qemu: bool) {
        let Some(_img) = image() else { return };
        let _permit = vm_permit();
        let cfg = jail_config();
        let id = unique_id(&format!("owner-{mode}"));
        let mut owner = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "jail_released_on_every_end::owner_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(OWNER_ENV, &id)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = owner.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // libtest's "test ... " may precede it on the same line.
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(at) = line.find("owner qemu=") {
                    let _ = tx.send(line[at + "owner ".len()..].to_string());
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(l) => l,
            Err(e) => {
                let _ = owner.kill();
                let _ = owner.wait();
                panic!("the owner process never reported its VM ({e})");
            }
        };
        let pids: Vec<u32> = line
            .split_whitespace()
            .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
            .collect();
        let (qemu, jailer) = (pids[0], pids[1]);
        let first = claim_of(&cfg, &id).expect("claim");
        assert!(alive_as(qemu, "qemu-system-x86") && alive_as(jailer, "mu2-jailer"));
        assert!(jail::ids::is_claimed(&cfg.claim_dir, first));
        if stop_qemu {
            kill(Pid::from_raw(qemu as i32), Signal::SIGSTOP).unwrap();
            assert!(wait_until(Duration::from_secs(5), || {
                std::fs::read_to_string(format!("/proc/{qemu}/status"))
                    .is_ok_and(|st| field(&st, "State").starts_with('T'))
            }));
        }

        // The owner dies without cleaning up.
        owner.kill().unwrap();
        let _ = owner.wait();
        let jailer_gone = wait_until(Duration::from_secs(5), || !alive_as(jailer, "mu2-jailer"));
        let qemu_gone = wait_until(Duration::from_secs(15), || {
            !alive_as(qemu, "qemu-system-x86")
        });
        let evidence = if qemu_gone {
            String::new()
        } else {
            let st = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap_or_default();
            format!(
                "QEMU {qemu} still runs 15 s after its owner died (jailer gone: {jailer_gone}, QEMU {}, {}, claim held: {})",
                field(&st, "State"),
                st.lines().find(|l| l.starts_with("PPid")).unwrap_or(""),
                jail::ids::is_claimed(&cfg.claim_dir, first),
            )
        };
        if !qemu_gone {
            // Do not leave it running whatever the verdict.
            let _ = kill(Pid::from_raw(qemu as i32), Signal::SIGKILL);
            wait_until(Duration::from_secs(10), || {
                !alive_as(qemu, "qemu-system-x86")
            });
        }
        let claimed_after = jail::ids::is_claimed(&cfg.claim_dir, first);
        // What a crash leaves (the jail dir, the unlocked claim file, the
        // cgroups) is in the VM's record, whose owner is now dead; the
        // collection (`mu2 gc`, the shim's delete action, or a launch,
        // which another test may run meanwhile) takes it apart.
        let records = RecordDir::for_mode(&JailMode::Jailed(cfg.clone()));
        if let Some(r) = records.read(&id).unwrap() {
            assert!(r.abandoned(), "the dead owner's record is not abandoned");
            assert_eq!(r.owner.kind, OwnerKind::Test);
        }
        let opts = GcOptions {
            wait: record::GC_WAIT,
            dry_run: false,
        };
        wait_until(Duration::from_secs(20), || {
            let report = records.collect(&Filter::Id(id.clone()), &opts);
            report.entries.iter().all(|e| e.kept.is_none()) && records.read(&id).unwrap().is_none()
        });
        assert!(qemu_gone, "{evidence}");
        assert!(jailer_gone, "the jailer survived its owner");
        assert!(!claimed_after, "the ids stay claimed after the VMM died");
        assert_nothing_left(&cfg, &id);
        assert!(records.read(&id).unwrap().is_none(), "its record stayed");
    }

    /// The owner dies while the guest runs (its agent powers the VM off
    /// on the control channel's EOF, if nothing else ends QEMU first).
    #[test]
    fn owner_killed_running() {
        owner_killed("running", false);
    }

    /// The owner dies while QEMU is stopped: neither the guest nor QEMU
    /// can end it, only the kernel (the jailer's death must take QEMU
    /// with it). Stands for a hostile guest, or a compromised QEMU, that
    /// ignores its host going away.
    #[test]
    fn owner_killed_qemu_unresponsive() {
        owner_killed("stopped", true);
    }
}

// --- d. the probe ------------------------------------------------------------------

struct Probe {
    status: ExitStatus,
    stderr: String,
}

/// Runs `jail-probe <args>` in a jail of its own under QEMU's seccomp
/// policy; checks the jail is released after.
fn run_probe(args: &[&str]) -> Probe {
    run_probe_with(args, vec![])
}

/// [`run_probe`] with shares: (host dir, jail path, read-only).
fn run_probe_with(args: &[&str], shares: Vec<(PathBuf, PathBuf, bool)>) -> Probe {
    let cfg = jail_config();
    let id = unique_id(&format!("probe-{}", args[0]));
    let req = JailRequest {
        id: id.clone(),
        program: probe_path(),
        args: args.iter().map(|a| a.to_string()).collect(),
        inputs: vec![],
        system_files: vec![],
        shares,
        keep_fds: vec![],
        cgroup_procs: vec![],
        kvm: false,
        huge_pages: false,
        start_deadline: Duration::from_secs(10),
        lifeline: None,
    };
    let mut j = jail::spawn(&cfg, &req).expect("jailed probe");
    let first = j.resources.first_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = j.jailer.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(j.jailer.id() as i32), Signal::SIGTERM);
            let _ = j.jailer.wait();
            panic!("the probe {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut e) = j.stderr.take() {
        e.read_to_string(&mut stderr).unwrap();
    }
    drop(j);
    assert!(!jail::ids::is_claimed(&cfg.claim_dir, first));
    assert_nothing_left(&cfg, &id);
    eprintln!("probe {args:?}: {status}, stderr {stderr:?}");
    Probe { status, stderr }
}

/// The probe was killed by the seccomp filter before the call returned.
fn assert_killed_by_seccomp(p: &Probe, attempt: &str) {
    assert_eq!(
        p.status.signal(),
        Some(libc::SIGSYS),
        "{attempt} was not killed by the filter: {}, stderr {:?}",
        p.status,
        p.stderr
    );
    assert!(
        !p.stderr.contains("returned"),
        "{attempt} returned: {:?}",
        p.stderr
    );
}

/// (call, return value, errno) of each line the probe wrote.
fn probe_lines(stderr: &str) -> Vec<(String, i64, i32)> {
    stderr
        .lines()
        .map(|l| {
            let (what, rest) = l
                .split_once(" returned ")
                .unwrap_or_else(|| panic!("{l:?}"));
            let (r, e) = rest.split_once(" errno ").unwrap();
            (what.to_string(), r.parse().unwrap(), e.parse().unwrap())
        })
        .collect()
}

mod probe_under_the_jail_is_stopped {
    use super::*;

    /// The probe itself runs under the filter: the kills below are the
    /// filter's verdict on one call, not on the probe.
    #[test]
    fn ok() {
        if !is_root() {
            return;
        }
        let p = run_probe(&["ok"]);
        assert!(p.status.success(), "{}: {:?}", p.status, p.stderr);
        assert_eq!(p.stderr, "ok returned 0 errno 0\n");
    }

    #[test]
    fn ptrace() {
        if !is_root() {
            return;
        }
        assert_killed_by_seccomp(&run_probe(&["ptrace"]), "ptrace(PTRACE_TRACEME)");
    }

    #[test]
    fn mount() {
        if !is_root() {
            return;
        }
        assert_killed_by_seccomp(&run_probe(&["mount"]), "mount");
    }

    #[test]
    fn bpf() {
        if !is_root() {
            return;
        }
        assert_killed_by_seccomp(&run_probe(&["bpf"]), "bpf(BPF_PROG_LOAD)");
    }

    #[test]
    fn kexec_load() {
        if !is_root() {
            return;
        }
        assert_killed_by_seccomp(&run_probe(&["kexec_load"]), "kexec_load");
    }

    /// execve of a file that is in the jail (the probe itself): only the
    /// jailer's own exec of the VMM may pass.
    #[test]
    fn execve() {
        if !is_root() {
            return;
        }
        assert_killed_by_seccomp(&run_probe(&["execve"]), "execve");
    }

    /// A containerd-like socket the test listens on (a path, and an
    /// abstract name like a shim's): the probe cannot reach either. The
    /// allow-list has no `connect` (QEMU only listens, on its QMP socket),
    /// so the one right outcome is the filter killing the probe at the
    /// call, whatever the target; the namespaces behind it (no host path in
    /// the jail, a network namespace of its own for abstract names) are a
    /// second wall this test does not reach.
    #[test]
    fn connect_containerd() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let abstract_name = format!("mu2-jail-test-containerd-{}", std::process::id());
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
            UnixListener::bind_addr(&addr).unwrap()
        };
        abstract_listener.set_nonblocking(true).unwrap();
        // Both work from the host.
        drop(UnixStream::connect(&path).unwrap());
        assert!(listener.accept().is_ok());

        let target = path.to_str().unwrap().to_string();
        let at = format!("@{abstract_name}");
        for target in [
            target.as_str(),
            "/run/containerd/containerd.sock",
            at.as_str(),
        ] {
            let p = run_probe(&["connect-containerd", target]);
            // socket(AF_UNIX) is allowed (QMP needs it) and returned: the
            // kill is connect's.
            assert!(
                !p.stderr.contains("socket returned"),
                "socket(AF_UNIX) failed: {:?}",
                p.stderr
            );
            assert_killed_by_seccomp(&p, &format!("connect to {target}"));
        }
        for l in [&listener, &abstract_listener] {
            match l.accept() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => panic!("the listener was reached from the jail: {other:?}"),
            }
        }
    }

    /// Host files are not in the jail: every open fails with ENOENT.
    #[test]
    fn open_host() {
        if !is_root() {
            return;
        }
        for host in [
            "/etc/shadow",
            "/etc/passwd",
            "/root",
            "/home",
            "/var",
            "/sys/fs/cgroup",
        ] {
            assert!(Path::new(host).exists(), "{host} is missing on the host");
        }
        let p = run_probe(&["open-host"]);
        assert!(p.status.success(), "{}: {:?}", p.status, p.stderr);
        let lines = probe_lines(&p.stderr);
        assert_eq!(lines.len(), 10, "{:?}", p.stderr);
        for (call, r, e) in lines {
            assert_eq!((r, e), (-1, libc::ENOENT), "{call}");
        }
    }
}

/// On a writable share (id-mapped: what the jailed VMM creates belongs to
/// host root), the VMM itself cannot make anything privileged: setuid and
/// setgid modes fail with EPERM (the policy's qemu_eperm filter), a file
/// capability with EPERM (no CAP_SETFCAP), a trusted.* xattr with EPERM
/// (no CAP_SYS_ADMIN); a plain chmod and a user.* xattr work.
#[test]
fn the_vmm_cannot_make_privileged_files_on_a_writable_share() {
    if !is_root() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let p = run_probe_with(
        &["share-modes", "/shares/w"],
        vec![(host.path().to_path_buf(), "/shares/w".into(), false)],
    );
    assert!(p.status.success(), "{}: {:?}", p.status, p.stderr);
    let got: Vec<(String, i64, i32)> = probe_lines(&p.stderr);
    let calls: Vec<&str> = got.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(
        calls,
        [
            "create f 0644",
            "chmod f 04755",
            "chmod f 02755",
            "chmod f 0755",
            "create s 04755",
            "mknod p 04644",
            "setxattr security.capability",
            "setxattr trusted.mu2",
            "setxattr user.mu2"
        ]
    );
    let result = |call: &str| {
        got.iter()
            .find(|(c, _, _)| c == call)
            .map(|&(_, r, e)| (r, e))
            .unwrap()
    };
    assert!(result("create f 0644").0 >= 0, "{:?}", p.stderr);
    for refused in [
        "chmod f 04755",
        "chmod f 02755",
        "create s 04755",
        "mknod p 04644",
        "setxattr security.capability",
        "setxattr trusted.mu2",
    ] {
        assert_eq!(result(refused), (-1, libc::EPERM), "{refused}");
    }
    assert_eq!(result("chmod f 0755"), (0, 0));
    assert_eq!(result("setxattr user.mu2"), (0, 0));

    // On the host: root's file, mode 0755, only the user xattr.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let f = host.path().join("f");
    let meta = std::fs::symlink_metadata(&f).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the share's id map");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert!(!host.path().join("s").exists() && !host.path().join("p").exists());
    let xattr = |name: &str| {
        let (path, name) = (
            std::ffi::CString::new(f.to_str().unwrap()).unwrap(),
            std::ffi::CString::new(name).unwrap(),
        );
        let mut buf = [0u8; 64];
        // SAFETY: NUL-terminated strings and a live buffer of that length.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    };
    assert_eq!(xattr("security.capability"), None);
    assert_eq!(xattr("trusted.mu2"), None);
    assert_eq!(xattr("user.mu2").as_deref(), Some(&b"v"[..]));
}

// --- e. failing closed -----------------------------------------------------------

/// Launches `s`, which must fail jailing; returns the jail error.
fn launch_refused(s: &VmSpec) -> JailError {
    match Vm::launch(s) {
        Ok(_) => panic!("vm {} launched", s.id),
        Err(VmError::Jail { id, source }) => {
            assert_eq!(id, s.id);
            source
        }
        Err(other) => panic!(
            "vm {}: not a jail error: {}",
            s.id,
            mu2_microvm::describe_error(&other)
        ),
    }
}

#[test]
fn fails_closed_and_leaves_nothing() {
    let Some(img) = image() else { return };
    let cfg = jail_config();
    let jailed = JailMode::Jailed(cfg.clone());

    // No uid range: every launch fails, naming the file and the key.
    let source = Path::new("/etc/mu2/jail-test-without-range.toml");
    let JailMode::Jailed(mut unconfigured) =
        JailMode::parse(source, "[jail]\n# no uid_range\n").unwrap()
    else {
        panic!("a config without `enabled = false` is a jail")
    };
    unconfigured.jailer = cfg.jailer.clone();
    let id = unique_id("noconf");
    let s = spec(
        &id,
        &img.kernel,
        &img.initrd,
        JailMode::Jailed(unconfigured),
    );
    let err = Vm::launch(&s).err().expect("launch without a uid range");
    let msg = mu2_microvm::describe_error(&err);
    assert!(
        matches!(&err, VmError::Jail { source: JailError::NotConfigured(p), .. } if p == source),
        "{msg}"
    );
    assert!(
        msg.contains(&source.display().to_string()) && msg.contains("uid_range"),
        "{msg}"
    );
    assert_nothing_left(&cfg, &id);

    let tmp = tempfile::tempdir().unwrap();
    // A kernel given through a symlink.
    let link = tmp.path().join("vmlinux-link");
    std::os::unix::fs::symlink(&img.kernel, &link).unwrap();
    let id = unique_id("symlink");
    match launch_refused(&spec(&id, &link, &img.initrd, jailed.clone())) {
        JailError::Input(m) => assert!(m.contains("symlink"), "{m}"),
        other => panic!("{}", mu2_microvm::describe_error(&other)),
    }
    assert_nothing_left(&cfg, &id);

    // A kernel with a second hard link.
    let copy = tmp.path().join("vmlinux");
    std::fs::copy(&img.kernel, &copy).unwrap();
    std::fs::hard_link(&copy, tmp.path().join("vmlinux-2")).unwrap();
    let id = unique_id("hardlink");
    match launch_refused(&spec(&id, &copy, &img.initrd, jailed.clone())) {
        JailError::Input(m) => assert!(m.contains("hard link"), "{m}"),
        other => panic!("{}", mu2_microvm::describe_error(&other)),
    }
    assert_nothing_left(&cfg, &id);

    // A share reached through a symlinked directory.
    std::fs::create_dir_all(tmp.path().join("real/share")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
    let id = unique_id("sharelink");
    let mut s = spec(&id, &img.kernel, &img.initrd, jailed.clone());
    s.shares[0].host_path = tmp.path().join("link/share");
    match launch_refused(&s) {
        JailError::Input(m) => assert!(m.contains("symlink"), "{m}"),
        other => panic!("{}", mu2_microvm::describe_error(&other)),
    }
    assert_nothing_left(&cfg, &id);

    // A jail directory that already exists is not ours: refused, and left
    // as it was.
    let id = unique_id("exists");
    let dir = jail::jail_dir(&cfg, &id);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&cfg.jail_root)
            .unwrap();
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    }
    let marker = dir.join("operator-file");
    std::fs::write(&marker, "mine").unwrap();
    match launch_refused(&spec(&id, &img.kernel, &img.initrd, jailed.clone())) {
        JailError::Exists(d) => assert_eq!(d, dir),
        other => panic!("{}", mu2_microvm::describe_error(&other)),
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "mine");
    assert!(qemu_of(&id).is_empty());
    assert_eq!(claim_of(&cfg, &id), None, "a refused launch kept its ids");
    for d in cgroup::paths_for(&id) {
        assert!(!d.exists(), "cgroup {} survived", d.display());
    }
    std::fs::remove_file(&marker).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    assert_nothing_left(&cfg, &id);
}

/// The jailer itself refuses a bind source with a symlink in any of its
/// components (openat2 RESOLVE_NO_SYMLINKS), even when the host side's
/// check was passed: a directory swapped for a link between the check and
/// the mount is not followed. The plan is handed to mu2-jailer directly.
#[test]
fn the_jailer_refuses_a_symlink_anywhere_in_a_bind_source() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("real")).unwrap();
    std::fs::write(tmp.path().join("real/file"), "x").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let bind = |source: PathBuf| jail::plan::Bind {
        source,
        target: "/f".into(),
        dir: false,
        readonly: true,
        idmap: false,
        input: false,
    };
    let plan = |source: PathBuf| jail::Plan {
        id: "jt-symlink".into(),
        root: root.clone(),
        first_id: 1_999_000_000,
        id_count: 65536,
        binds: vec![bind(source)],
        devices: vec![jail::plan::Device {
            path: "/dev/null".into(),
            major: 1,
            minor: 3,
            vm_owned: false,
        }],
        vm_dirs: vec![],
        program: "/f".into(),
        argv: vec!["/f".into()],
        keep_fds: vec![],
        rlimits: Default::default(),
        lifeline: None,
    };
    let run = |p: jail::Plan| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mu2-jailer"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(&p).unwrap().as_bytes())
            .unwrap();
        c.wait_with_output().unwrap()
    };
    let out = run(plan(tmp.path().join("link/file")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("without following a symlink"), "{err}");
    assert!(out.stdout.is_empty());
    // The same plan through the real directory gets past the binds (it
    // then fails to exec /f, a non-executable file: exit 125 too, but
    // for that reason).
    let out = run(plan(tmp.path().join("real/file")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("symlink"), "{err}");
    assert!(err.contains("cannot execute /f"), "{err}");
    // Nothing of either attempt stays mounted on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root.display().to_string()));
}

// --- a shared template: sealed RAM, clones copy-on-write ----------------------

/// XXH3 of everything `fd` holds, read through a description of our own.
fn digest_of(fd: std::os::fd::BorrowedFd<'_>) -> u128 {
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.digest128();
        }
        h.update(&buf[..n]);
    }
}

/// What a compromised clone's QEMU would try on the template it maps: every
/// descriptor it holds of the template's RAM refuses writes, a resize and a
/// shared writable mapping. Returns how many it holds.
fn assert_template_unwritable_from(qemu: u32) -> usize {
    use std::os::fd::AsRawFd;
    let mut held = 0;
    for e in std::fs::read_dir(format!("/proc/{qemu}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if !target.to_string_lossy().contains("mu2-template-ram") {
            continue;
        }
        held += 1;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(e.path())
            .expect("QEMU's memfd opens read-write (its seals stop writes, not opens)");
        let eperm = |r: std::io::Result<()>, what: &str| match r {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            other => panic!("{what} on the template's RAM: {other:?}, want EPERM"),
        };
        eperm(f.write_all(b"planted").map(|_| ()), "write");
        eperm(f.set_len(4096), "truncate");
        // SAFETY: a mapping request on a valid fd; a success is unmapped
        // at once (and fails the test).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // SAFETY: the mapping just made, 4096 bytes.
            unsafe { libc::munmap(p, 4096) };
            panic!("a shared writable mapping of the template's RAM was allowed");
        }
    }
    held
}

#[test]
fn a_shared_template_is_sealed_and_its_clones_map_it_copy_on_write() {
    use mu2_microvm::template::{is_sealed, SharedTemplate, Store};
    let Some(img) = image() else { return };
    let _permit = vm_permit();
    let cfg = jail_config();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("templates")).unwrap();
    let rootfs = busybox_rootfs();
    let spec_of = |id: &str| {
        let mut s = spec(id, &img.kernel, &img.initrd, JailMode::Jailed(cfg.clone()));
        s.shares[0].host_path = rootfs.clone();
        s
    };
    let t = SharedTemplate::build(&store, &spec_of(&unique_id("shtpl"))).expect("built");
    assert!(is_sealed(t.ram()), "the template's RAM is not sealed");
    // Every page exists before a clone maps it (none is allocated in the
    // template on a clone's behalf).
    assert!(
        t.resident_bytes() >= 256 << 20,
        "template RAM holds {} bytes",
        t.resident_bytes()
    );
    let before = digest_of(t.ram());
    let mut ids = Vec::new();
    for n in 0..2 {
        let id = unique_id(&format!("shclone{n}"));
        // Restore includes the clone's identity: it answers, so it resumed.
        let mut vm = t.restore(&spec_of(&id), None).expect("clone ready");
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", vm.pid())).unwrap();
        let ram: Vec<&str> = maps
            .lines()
            .filter(|l| l.contains("/memfd:mu2-template-ram"))
            .collect();
        assert_eq!(ram.len(), 1, "the clone's QEMU maps: {ram:?}");
        assert!(
            ram[0].split_whitespace().nth(1) == Some("rw-p"),
            "the template's RAM is not mapped private: {}",
            ram[0]
        );
        assert!(assert_template_unwritable_from(vm.pid()) >= 1);
        // The guest writes plenty of its memory (64 MiB into a tmpfs file), and
        // runs to its end.
        let _stdio = vm.take_stdio();
        let mut run = busybox_run(&["/bin/sh", "-c", "yes mu2 | head -c 67108864 > /tmp/fill"]);
        // Written to the overlay's upper layer, in guest memory.
        run.root.readonly = false;
        let exit = common::run_to_exit(&mut vm, run);
        assert_eq!(exit.status, 0, "{exit:?}");
        drop(vm);
        ids.push(id);
    }
    assert_eq!(
        digest_of(t.ram()),
        before,
        "a clone's writes reached the template"
    );
    ids.push(format!(
        "tpl-{}-{}",
        &t.key().as_str()[..12],
        std::process::id()
    ));
    drop(t);
    for id in &ids {
        assert_nothing_left(&cfg, id);
    }
}
