//! End to end: a private containerd (Debian's, started here on its own
//! socket, root and state under a temp dir) drives containerd-shim-mu2-v1
//! through `ctr`, and runc through the same containerd is the oracle.
//!
//! Needs root, containerd, ctr, runc, QEMU and the installed guest image;
//! the image is built from the busybox test bundle's rootfs by
//! scripts/build-test-image and imported (no registry is reachable). Every
//! test boots at most two VMs at a time, except the parallel test, which
//! runs alone. After each test: no QEMU, shim, task, container, mount or
//! state directory of that test is left.

mod common;
use common::ctd::*;
use common::{procs, tail, CpuHogs};

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` under runc, then under mu2, and compares what ctr reports.
fn parity(ctd: &Containerd, name: &str, opts: &[&str], cmd: &[&str], stdin: &[u8]) -> (Out, Out) {
    let want = ctd.run(RUNC, &ctd.id(&format!("{name}-runc")), opts, cmd, stdin);
    let got = ctd.run(MU2, &ctd.id(&format!("{name}-mu2")), opts, cmd, stdin);
    assert_eq!(
        got.code(),
        want.code(),
        "{name}: exit code; mu2 stderr: {}\nrunc stderr: {}\ncontainerd log:\n{}",
        got.err(),
        want.err(),
        tail(&ctd.log(), 30)
    );
    (want, got)
}

fn same_output(ctd: &Containerd, name: &str, opts: &[&str], cmd: &[&str], stdin: &[u8]) {
    let (want, got) = parity(ctd, name, opts, cmd, stdin);
    assert_eq!(got.out(), want.out(), "{name}: stdout");
    assert_eq!(got.err(), want.err(), "{name}: stderr");
}

#[test]
fn ctr_run_matches_runc() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    same_output(&ctd, "echo", &[], &["echo", "hello", "world"], b"");
    for code in ["0", "3", "255"] {
        same_output(
            &ctd,
            &format!("exit{code}"),
            &[],
            &["sh", "-c", &format!("exit {code}")],
            b"",
        );
    }
    same_output(
        &ctd,
        "stderr",
        &[],
        &["sh", "-c", "echo out; echo err >&2; echo out2"],
        b"",
    );
    same_output(
        &ctd,
        "env",
        &["--env", "FOO=bar baz"],
        &["sh", "-c", "echo \"$FOO\""],
        b"",
    );
    same_output(&ctd, "cwd", &["--cwd", "/tmp"], &["pwd"], b"");
    same_output(&ctd, "user", &["--user", "1000:1000"], &["id"], b"");
    same_output(
        &ctd,
        "large",
        &[],
        &["sh", "-c", "seq 1 200000; seq 1 1000 >&2"],
        b"",
    );
    same_output(
        &ctd,
        "stdin",
        &["-i"],
        &["sh", "-c", "wc -c; echo done"],
        &vec![b'x'; 300_000],
    );
    // A missing binary: both fail, runc at create, mu2 at start.
    let (_, got) = parity(&ctd, "missing", &[], &["/nonexistent-binary"], b"");
    assert!(
        got.err().contains("not found") || got.err().contains("no such file"),
        "{}",
        got.err()
    );
    ctd.assert_nothing_left();
}

#[test]
fn read_only_root_matches_runc() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    same_output(
        &ctd,
        "readonly",
        &["--read-only"],
        &[
            "sh",
            "-c",
            "touch /x 2>/dev/null && echo wrote || echo refused",
        ],
        b"",
    );
    ctd.assert_nothing_left();
}

/// Capabilities, seccomp, mount options, masked and read-only paths, the
/// device policy and the cgroup, as containerd's default spec and ctr's
/// flags set them: the same under mu2 (inside the guest) as under runc.
#[test]
fn security_settings_match_runc() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    // The default spec: 14 capabilities, masked and read-only paths,
    // "deny all devices" then runc's allowed ones, no cgroup mount.
    same_output(
        &ctd,
        "confined",
        &[],
        &[
            "sh",
            "-c",
            "grep Cap /proc/self/status; \
             wc -c < /proc/timer_list; ls /proc/acpi /sys/firmware; \
             echo 1 > /proc/sys/vm/drop_caches; \
             maj=$(cut -d: -f1 /sys/class/virtio-ports/vport0p1/dev 2>/dev/null || echo 246); \
             mknod /dev/port1 c $maj 1 && echo made; cat /dev/port1; \
             echo x > /dev/null && echo null works; \
             echo $$ > /sys/fs/cgroup/cgroup.procs; mount -t cgroup2 none /mnt; \
             mu2-probe keyctl",
        ],
        b"",
    );
    // containerd's default seccomp profile: keyctl is denied.
    same_output(
        &ctd,
        "seccomp",
        &["--seccomp"],
        &[
            "sh",
            "-c",
            "mu2-probe keyctl; grep '^Seccomp:' /proc/self/status",
        ],
        b"",
    );
    same_output(
        &ctd,
        "capadd",
        &["--cap-add", "CAP_SYS_ADMIN", "--cap-drop", "CAP_KILL"],
        &["grep", "Cap", "/proc/self/status"],
        b"",
    );
    // A user gets no capability without the ambient set ctr cannot give.
    same_output(
        &ctd,
        "capuser",
        &["--user", "1000:1000", "--cap-add", "CAP_NET_BIND_SERVICE"],
        &["sh", "-c", "grep Cap /proc/self/status; mu2-probe bind 80"],
        b"",
    );
    let host = tempfile::tempdir().unwrap();
    let script = host.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bind = format!(
        "type=bind,src={},dst=/m,options=rbind:ro:nosuid:nodev:noexec",
        host.path().display()
    );
    same_output(
        &ctd,
        "mountopts",
        &[
            "--mount",
            &bind,
            "--mount",
            "type=tmpfs,src=tmpfs,dst=/t,options=nosuid:noexec:nodev:size=4m",
        ],
        &[
            "sh",
            "-c",
            "awk '$5 == \"/m\" || $5 == \"/t\" {print $5, $6}' /proc/self/mountinfo; \
             touch /m/x; /m/run.sh; cat /m/run.sh; \
             cp /bin/busybox /t/bb && /t/bb true; echo end",
        ],
        b"",
    );
    ctd.assert_nothing_left();
}

#[test]
fn exec_runs_in_its_own_vm() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let id = ctd.id("exec");
    let o = ctd.ctr(&[
        "run",
        "-d",
        "--runtime",
        MU2,
        IMAGE,
        &id,
        "sh",
        "-c",
        "echo task > /tmp/mark; sleep 600",
    ]);
    assert_eq!(o.code(), 0, "{}", o.err());
    wait_status(&ctd, &id, "RUNNING", Duration::from_secs(60));
    let e = ctd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "test -e /tmp/mark && echo seen || echo unseen; ps -o args | grep -c '^sleep 600$'; true",
    ]);
    assert_eq!(e.code(), 0, "exec: {}\n{}", e.err(), tail(&ctd.log(), 30));
    let lines: Vec<_> = e.out().lines().map(str::to_string).collect();
    assert_eq!(
        lines[0],
        "unseen",
        "the exec saw the task's write: {}",
        e.out()
    );
    // The task's sleep is in another VM.
    assert_eq!(
        lines[1],
        "0",
        "the exec saw the task's processes: {}",
        e.out()
    );
    let e = ctd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        &id,
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(e.code(), 7, "{}", e.err());
    let k = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(k.code(), 0, "{}", k.err());
    wait_status(&ctd, &id, "STOPPED", Duration::from_secs(30));
    assert_eq!(ctd.ctr(&["tasks", "rm", &id]).code(), 0);
    assert_eq!(ctd.ctr(&["containers", "rm", &id]).code(), 0);
    ctd.assert_nothing_left();
}

/// The VMM of a running containerd task is jailed: every thread filtered,
/// without privileges, as a host uid of the configured range, in its own
/// namespaces, with the jail as its root; its exec's VMM too.
#[test]
fn a_running_tasks_vmm_is_jailed() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let id = ctd.id("jailed");
    let o = ctd.ctr(&["run", "-d", "--runtime", MU2, IMAGE, &id, "sleep", "600"]);
    assert_eq!(o.code(), 0, "{}", o.err());
    wait_status(&ctd, &id, "RUNNING", Duration::from_secs(60));
    let pid = task_pid(&ctd, &id);
    let threads: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        threads.len() > 1,
        "QEMU {pid} has {} thread(s)",
        threads.len()
    );
    for t in &threads {
        let status = std::fs::read_to_string(t.join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in {}", t.display()))
                .to_string()
        };
        assert_eq!(field("Seccomp:"), "2", "{}", t.display());
        assert_eq!(field("NoNewPrivs:"), "1", "{}", t.display());
        for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(cap), "0000000000000000", "{cap} of {}", t.display());
        }
        for ids in ["Uid:", "Gid:"] {
            let v: Vec<u64> = field(ids)
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            assert!(v.iter().all(|&x| x >= 65536 && x == v[0]), "{ids} {v:?}");
        }
    }
    for ns in ["mnt", "pid", "net", "ipc", "uts", "user"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "QEMU shares the host's {ns} namespace");
    }
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(root.join("guest/vmlinux").is_file());
    // The image, bound into the jail; a VM leased from the pool has it
    // attached under its share's `root/` (docs/pool.md).
    assert!(
        root.join("shares/rootfs/bin/busybox").is_file()
            || root.join("shares/rootfs/root/bin/busybox").is_file()
    );
    for host in ["etc/passwd", "run/containerd", "tmp", "root", "var"] {
        assert!(
            !root.join(host).exists(),
            "{host} is reachable from the jail"
        );
    }
    cleanup_task(&ctd, &id);
    ctd.assert_nothing_left();
}

#[test]
fn sigkill_of_qemu_publishes_the_exit() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let id = ctd.id("qkill");
    let runner = ctd.run_rm(&id, &["sleep", "600"]).spawn().unwrap();
    wait_status(&ctd, &id, "RUNNING", Duration::from_secs(60));
    let pid = task_pid(&ctd, &id);
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        cmdline.contains("qemu-system"),
        "task pid {pid} is not a VMM: {cmdline}"
    );
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = collect(runner, None, "ctr run of a killed vm");
    assert_eq!(out.code(), 137, "{}", out.err());
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "exit took {:?}",
        t0.elapsed()
    );
    ctd.assert_nothing_left();
}

#[test]
fn sigkill_of_the_shim_then_cleanup_leaves_nothing() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let id = ctd.id("shimkill");
    let o = ctd.ctr(&["run", "-d", "--runtime", MU2, IMAGE, &id, "sleep", "600"]);
    assert_eq!(o.code(), 0, "{}", o.err());
    wait_status(&ctd, &id, "RUNNING", Duration::from_secs(60));
    let shim = procs()
        .into_iter()
        .find(|p| {
            p.1.contains("containerd-shim-mu2-v1")
                && p.1.contains(&id)
                && p.1.contains(&ctd.sock().display().to_string())
        })
        .expect("the task's shim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim.0 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd runs the shim's delete action and drops the task.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctd.ctr(&["tasks", "ls"]).out().contains("RUNNING") {
        assert!(
            Instant::now() < deadline,
            "task still running after its shim died"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ctd.ctr(&["tasks", "rm", &id]);
    let _ = ctd.ctr(&["containers", "rm", &id]);
    ctd.assert_nothing_left();
}

/// The shim daemon of task `id` (its `-id` argument is exactly `id`).
fn shim_of(ctd: &Containerd, id: &str) -> Option<u32> {
    let sock = ctd.sock().display().to_string();
    procs().into_iter().find_map(|(pid, cmd)| {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let is_it = cmd.contains("containerd-shim-mu2-v1")
            && cmd.contains(&sock)
            && args.windows(2).any(|w| w[0] == "-id" && w[1] == id);
        is_it.then_some(pid)
    })
}

/// A dead shim's cleanup is exact: when the shim of task `web` is
/// SIGKILLed, containerd's delete action for `web` ends web's VM and
/// removes its cgroups, jail, uid claim and record, while task `web.1`
/// (which `web` is a prefix of) keeps its VM, cgroups, jail and record,
/// and still answers.
#[test]
fn a_dead_shims_cleanup_spares_the_task_its_name_prefixes() {
    use mu2_microvm::record::{Record, RecordDir};
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let web = ctd.id("web");
    let web1 = format!("{web}.1");
    for id in [&web, &web1] {
        let o = ctd.ctr(&["run", "-d", "--runtime", MU2, IMAGE, id, "sleep", "600"]);
        assert_eq!(o.code(), 0, "{id}: {}", o.err());
        wait_status(&ctd, id, "RUNNING", Duration::from_secs(90));
    }
    let records =
        RecordDir::for_mode(&mu2_microvm::jail::JailMode::load().expect("mu2 configuration"));
    let of = |container: &str| -> Vec<Record> {
        records
            .list()
            .into_iter()
            .filter_map(|i| i.record.ok())
            .filter(|r| r.owner.container.as_deref() == Some(container))
            .collect()
    };
    let (web_rec, web1_rec) = (of(&web), of(&web1));
    assert_eq!(
        (web_rec.len(), web1_rec.len()),
        (1, 1),
        "{web_rec:?} {web1_rec:?}"
    );
    let (web_rec, web1_rec) = (&web_rec[0], &web1_rec[0]);
    // What each VM holds on the host.
    let held = |r: &Record| -> Vec<PathBuf> {
        let mut v = r.cgroups.clone();
        if let Some(j) = &r.jail {
            v.push(j.dir.clone());
            v.extend(j.claim.clone());
        }
        v
    };
    assert!(held(web1_rec).iter().all(|p| p.exists()));
    assert!(held(web_rec).iter().all(|p| p.exists()));
    let web_vmm = web_rec.vmm.clone().expect("web's VMM");
    let web1_vmm = web1_rec.vmm.clone().expect("web.1's VMM");

    let shim = shim_of(&ctd, &web).expect("web's shim");
    assert_ne!(shim_of(&ctd, &web1), Some(shim));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd runs the delete action for `web`.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !of(&web).is_empty() || held(web_rec).iter().any(|p| p.exists()) {
        assert!(
            Instant::now() < deadline,
            "web's VM was not cleaned up: {:?}\n{}",
            of(&web),
            tail(&ctd.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!web_vmm.is_alive(), "web's VMM survived");

    // web.1 is untouched, and answers.
    assert_eq!(of(&web1).as_slice(), std::slice::from_ref(web1_rec));
    for p in held(web1_rec) {
        assert!(p.exists(), "{} of web.1 was removed", p.display());
    }
    assert!(web1_vmm.is_alive(), "web.1's VMM was killed");
    let e = ctd.ctr(&["tasks", "exec", "--exec-id", "e1", &web1, "echo", "alive"]);
    assert_eq!(e.code(), 0, "{}\n{}", e.err(), tail(&ctd.log(), 30));
    assert_eq!(e.out(), "alive\n");

    cleanup_task(&ctd, &web1);
    let _ = ctd.ctr(&["tasks", "rm", &web]);
    let _ = ctd.ctr(&["containers", "rm", &web]);
    ctd.assert_nothing_left();
}

#[test]
fn parallel_runs_all_succeed() {
    let Some(ctd) = Containerd::start(true) else {
        return;
    };
    const N: usize = 8;
    let runners: Vec<_> = (0..N)
        .map(|i| {
            let id = ctd.id(&format!("par{i}"));
            ctd.run_rm(
                &id,
                &[
                    "sh",
                    "-c",
                    &format!("echo run {i}; head -c 16 /dev/urandom | od -An -tx1"),
                ],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    let mut randoms = std::collections::HashSet::new();
    for (i, r) in runners.into_iter().enumerate() {
        let o = collect(r, None, "parallel ctr run");
        assert_eq!(
            o.code(),
            0,
            "run {i}: {}\n{}",
            o.err(),
            tail(&ctd.log(), 30)
        );
        let mut lines = o.out().lines().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(lines.len(), 2, "run {i}: {}", o.out());
        assert_eq!(lines[0], format!("run {i}"));
        assert!(
            randoms.insert(lines.remove(1)),
            "two VMs read the same random bytes"
        );
    }
    ctd.assert_nothing_left();
}

#[test]
fn pause_resume_metrics_kill_and_delete_a_detached_task() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let events = ctd.events();
    let id = ctd.id("created");
    let o = ctd.ctr(&[
        "containers",
        "create",
        "--runtime",
        MU2,
        IMAGE,
        &id,
        "sleep",
        "600",
    ]);
    assert_eq!(o.code(), 0, "{}", o.err());
    // `ctr tasks start` would run it; here the task is only created, then
    // killed and deleted.
    let o = ctd.ctr(&["tasks", "start", "-d", &id]);
    assert_eq!(o.code(), 0, "{}", o.err());
    wait_status(&ctd, &id, "RUNNING", Duration::from_secs(60));
    // Pause freezes the VMM's cgroup; metrics read it; resume thaws it.
    let p = ctd.ctr(&["tasks", "pause", &id]);
    assert_eq!(p.code(), 0, "{}", p.err());
    wait_status(&ctd, &id, "PAUSED", Duration::from_secs(10));
    let m = ctd.ctr(&["tasks", "metrics", &id]);
    assert_eq!(m.code(), 0, "{}", m.err());
    let usage = m
        .out()
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage_in_bytes"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no memory usage in the metrics: {}", m.out()));
    assert!(usage > 0);
    let r = ctd.ctr(&["tasks", "resume", &id]);
    assert_eq!(r.code(), 0, "{}", r.err());
    wait_status(&ctd, &id, "RUNNING", Duration::from_secs(10));
    let topics = events.wait_for(&id, "/tasks/resumed", 1, Duration::from_secs(30));
    let paused = topics.iter().position(|t| t == "/tasks/paused");
    let resumed = topics.iter().position(|t| t == "/tasks/resumed");
    assert!(paused.is_some() && paused < resumed, "{topics:?}");
    // An exec in its own VM, then kill --all ends the task and the exec.
    let e = ctd.ctr(&[
        "tasks",
        "exec",
        "-d",
        "--exec-id",
        "bg",
        &id,
        "sleep",
        "600",
    ]);
    assert_eq!(e.code(), 0, "{}", e.err());
    let k = ctd.ctr(&["tasks", "kill", "--all", "-s", "SIGKILL", &id]);
    assert_eq!(k.code(), 0, "{}", k.err());
    wait_status(&ctd, &id, "STOPPED", Duration::from_secs(30));
    events.wait_for(&id, "/tasks/exit", 2, Duration::from_secs(30));
    cleanup_task(&ctd, &id);
    ctd.assert_nothing_left();
}

#[test]
fn oom_kill_publishes_task_oom_before_the_exit() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let events = ctd.events();
    let opts = ["--memory-limit", "67108864"];
    let cmd = ["mu2-probe", "alloc", "200"];
    let (want, got) = parity(&ctd, "oom", &opts, &cmd, b"");
    assert_eq!(want.code(), 137, "runc: {}", want.err());
    assert_eq!(got.code(), 137, "mu2: {}", got.err());
    for rt in ["runc", "mu2"] {
        let id = ctd.id(&format!("oom-{rt}"));
        let topics = events.wait_for(&id, "/tasks/delete", 1, Duration::from_secs(30));
        assert!(
            topics.iter().any(|t| t == "/tasks/oom"),
            "{rt}: no /tasks/oom: {topics:?}"
        );
        if rt == "mu2" {
            let oom = topics.iter().position(|t| t == "/tasks/oom").unwrap();
            let exit = topics.iter().position(|t| t == "/tasks/exit").unwrap();
            assert!(oom < exit, "mu2: /tasks/oom after /tasks/exit: {topics:?}");
        }
    }
    // A process that ends on its own within its limit is no OOM.
    let id = ctd.id("nooom-mu2");
    let o = ctd.run(MU2, &id, &opts, &["mu2-probe", "alloc", "8"], b"");
    assert_eq!(o.code(), 0, "{}", o.err());
    let topics = events.wait_for(&id, "/tasks/delete", 1, Duration::from_secs(30));
    assert!(!topics.iter().any(|t| t == "/tasks/oom"), "{topics:?}");
    ctd.assert_nothing_left();
}

/// Exactly one exit per process (init: `id` is the container id).
fn assert_one_exit_each(events: &[TaskEvent], processes: &[&str], rt: &str) {
    for p in processes {
        let n = events
            .iter()
            .filter(|e| e.topic == "/tasks/exit" && e.body["id"] == *p)
            .count();
        assert_eq!(n, 1, "{rt}: {n} exits of {p}: {events:#?}");
    }
}

#[test]
fn events_come_in_containerd_order() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let events = ctd.events();
    // One `ctr run --rm`.
    let mut runs = Vec::new();
    for (rt, runtime) in [("runc", RUNC), ("mu2", MU2)] {
        let id = ctd.id(&format!("order-{rt}"));
        let o = ctd.run(runtime, &id, &[], &["sh", "-c", "echo hi; exit 3"], b"");
        assert_eq!(o.code(), 3, "{rt}: {}", o.err());
        let topics = events.wait_for(&id, "/tasks/delete", 1, Duration::from_secs(30));
        assert_one_exit_each(&events.task_events(&id), &[&id], rt);
        runs.push(topics);
    }
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    assert_eq!(runs[0], want, "runc's order changed");
    assert_eq!(runs[1], want, "mu2's order");
    // A detached task with execs one after another, then killed.
    const EXECS: [&str; 3] = ["e1", "e2", "e3"];
    let mut runs = Vec::new();
    for (rt, runtime) in [("runc", RUNC), ("mu2", MU2)] {
        let id = ctd.id(&format!("xorder-{rt}"));
        let o = ctd.ctr(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            IMAGE,
            &id,
            "sleep",
            "600",
        ]);
        assert_eq!(o.code(), 0, "{rt}: {}", o.err());
        wait_status(&ctd, &id, "RUNNING", Duration::from_secs(60));
        // ctr deletes each exec the moment its Wait returns: its TaskExit
        // must be out by then (a shim that queued it later lost it, on a
        // loaded host: so both cores are kept busy meanwhile).
        let hogs = CpuHogs::start(2);
        for exec in EXECS {
            let e = ctd.ctr(&[
                "tasks",
                "exec",
                "--exec-id",
                exec,
                &id,
                "sh",
                "-c",
                "exit 5",
            ]);
            assert_eq!(e.code(), 5, "{rt}: {}", e.err());
        }
        drop(hogs);
        let k = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
        assert_eq!(k.code(), 0, "{rt}: {}", k.err());
        wait_status(&ctd, &id, "STOPPED", Duration::from_secs(30));
        assert_eq!(ctd.ctr(&["tasks", "rm", &id]).code(), 0);
        assert_eq!(ctd.ctr(&["containers", "rm", &id]).code(), 0);
        let topics = events.wait_for(&id, "/tasks/delete", 1, Duration::from_secs(30));
        let evs = events.task_events(&id);
        let mut processes = vec![id.as_str()];
        processes.extend(EXECS);
        assert_one_exit_each(&evs, &processes, rt);
        for exec in EXECS {
            let exec_exit = evs
                .iter()
                .find(|e| e.topic == "/tasks/exit" && e.body["id"] == exec)
                .unwrap();
            assert_eq!(exec_exit.body["exit_status"], 5, "{rt}: {exec_exit:?}");
        }
        runs.push(topics);
    }
    let mut want = vec!["/tasks/create", "/tasks/start"];
    for _ in EXECS {
        want.extend(["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]);
    }
    want.extend(["/tasks/exit", "/tasks/delete"]);
    assert_eq!(runs[0], want, "runc's order changed");
    assert_eq!(runs[1], want, "mu2's order");
    ctd.assert_nothing_left();
}

#[test]
fn log_uri_file_matches_runc() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let cmd = ["sh", "-c", "echo out; echo err >&2; seq 1 2000; echo end"];
    let mut logs = Vec::new();
    for (rt, runtime) in [("runc", RUNC), ("mu2", MU2)] {
        let log = ctd.dir.path().join(format!("logs/{rt}/task.log"));
        // Appended to, not truncated.
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "before\n").unwrap();
        let uri = format!("file://{}", log.display());
        let id = ctd.id(&format!("log-{rt}"));
        let o = ctd.run(runtime, &id, &["--log-uri", &uri], &cmd, b"");
        assert_eq!(o.code(), 0, "{rt}: {}\n{}", o.err(), tail(&ctd.log(), 30));
        assert_eq!(o.out(), "", "{rt}: ctr printed the task's output");
        let text = std::fs::read_to_string(&log).unwrap();
        // stdout and stderr are copied apart: only their lines' order
        // within each stream is kept.
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert_eq!(lines[0], "before", "{rt}");
        lines.sort();
        logs.push(lines);
    }
    let mut want: Vec<String> = ["before", "out", "err", "end"]
        .iter()
        .map(|s| s.to_string())
        .chain((1..=2000).map(|n| n.to_string()))
        .collect();
    want.sort();
    // runc's shim copies the two streams into the file from two goroutines
    // and has been seen to miss stderr's only line on a loaded host: it is
    // held to a subset, mu2 to the whole.
    assert!(
        logs[0].iter().all(|l| want.contains(l)),
        "runc's log file has lines the command never wrote"
    );
    assert_eq!(
        logs[1], want,
        "mu2's log file is not what the command wrote"
    );
    ctd.assert_nothing_left();
}

/// A `ctr run --rm` in the background whose stdout lines arrive on a
/// channel.
struct Background {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Background {
    fn start(ctd: &Containerd, runtime: &str, id: &str, cmd: &[&str]) -> Background {
        let mut args = vec!["run", "--rm", "--runtime", runtime, IMAGE, id];
        args.extend_from_slice(cmd);
        let mut c = ctd.cmd(&args);
        c.stderr(Stdio::null());
        let mut child = c.spawn().expect("spawn ctr run");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Background { child, lines }
    }

    fn expect_line(&self, want: &str, within: Duration) {
        let got = self.lines.recv_timeout(within);
        assert_eq!(got.as_deref(), Ok(want));
    }

    /// Waits for ctr to exit; returns its exit code.
    fn wait(mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("ctr run did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn signals_from_ctr_match_runc() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    for (rt, runtime) in [("runc", RUNC), ("mu2", MU2)] {
        // SIGKILL of a task that ignores nothing: 128 + 9.
        let id = ctd.id(&format!("sigkill-{rt}"));
        let run = Background::start(&ctd, runtime, &id, &["sleep", "600"]);
        wait_status(&ctd, &id, "RUNNING", Duration::from_secs(60));
        let k = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
        assert_eq!(k.code(), 0, "{rt}: {}", k.err());
        assert_eq!(run.wait(Duration::from_secs(30)), 137, "{rt}: SIGKILL");
        // SIGTERM caught by a trap: the trap's status.
        let id = ctd.id(&format!("sigterm-{rt}"));
        let run = Background::start(
            &ctd,
            runtime,
            &id,
            &[
                "sh",
                "-c",
                "trap 'exit 7' TERM; echo ready; while :; do sleep 1; done",
            ],
        );
        run.expect_line("ready", Duration::from_secs(60));
        let k = ctd.ctr(&["tasks", "kill", "-s", "SIGTERM", &id]);
        assert_eq!(k.code(), 0, "{rt}: {}", k.err());
        assert_eq!(run.wait(Duration::from_secs(30)), 7, "{rt}: SIGTERM");
    }
    ctd.assert_nothing_left();
}

#[test]
fn writable_root_and_null_io_match_runc() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    same_output(
        &ctd,
        "write",
        &[],
        &[
            "sh",
            "-c",
            "echo kept > /written; mkdir -p /etc/new; echo x > /etc/new/f; cat /written /etc/new/f",
        ],
        b"",
    );
    // Each run has its own snapshot: the last run's writes are gone.
    same_output(
        &ctd,
        "fresh",
        &[],
        &[
            "sh",
            "-c",
            "test -e /written && echo seen || echo unseen; test -e /etc/new && echo seen || echo unseen",
        ],
        b"",
    );
    let (want, got) = parity(
        &ctd,
        "nullio",
        &["--null-io"],
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        b"",
    );
    assert_eq!(want.code(), 3);
    assert_eq!((got.out(), got.err()), (String::new(), String::new()));
    assert_eq!((want.out(), want.err()), (String::new(), String::new()));
    ctd.assert_nothing_left();
}

#[test]
fn log_uri_binary_matches_runc() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    // containerd's logger contract: output on fds 3 and 4, fd 5 closed once
    // ready, the query as arguments, only two variables in the environment.
    let logger = ctd.dir.path().join("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\n\
         dir=$2\n\
         { echo \"$1\"; /usr/bin/env | /usr/bin/sort; } > \"$dir/meta\"\n\
         exec 5>&-\n\
         /bin/cat <&3 > \"$dir/out\" &\n\
         /bin/cat <&4 > \"$dir/err\"\n\
         wait\n",
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cmd = ["sh", "-c", "echo out; echo err >&2; seq 1 2000"];
    let mut seen = Vec::new();
    for (rt, runtime) in [("runc", RUNC), ("mu2", MU2)] {
        let dir = ctd.dir.path().join(format!("binlog-{rt}"));
        std::fs::create_dir_all(&dir).unwrap();
        let uri = format!("binary://{}?dir={}", logger.display(), dir.display());
        let id = ctd.id(&format!("binlog-{rt}"));
        let o = ctd.run(runtime, &id, &["--log-uri", &uri], &cmd, b"");
        assert_eq!(o.code(), 0, "{rt}: {}\n{}", o.err(), tail(&ctd.log(), 30));
        assert_eq!(o.out(), "", "{rt}: ctr printed the task's output");
        // runc's shim SIGTERMs the logger at Delete: its cats finish the
        // copy.
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(read("out").ends_with("\n2000\n") && read("err") == "err\n") {
            assert!(
                Instant::now() < deadline,
                "{rt}: the logger did not get all the output: {:?} {:?}",
                tail(&read("out"), 2),
                read("err")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let meta = read("meta");
        assert!(
            meta.starts_with("dir\n")
                && meta.contains(&format!("\nCONTAINER_ID={id}\n"))
                && meta.contains("\nCONTAINER_NAMESPACE=default\n"),
            "{rt}: logger arguments or environment: {meta}"
        );
        seen.push((meta.replace(&id, "ID"), read("out"), read("err")));
    }
    assert_eq!(
        seen[1], seen[0],
        "mu2's logger got other output than runc's"
    );
    assert!(seen[1].1.starts_with("out\n1\n"), "{:?}", seen[1].1);
    assert_eq!(seen[1].2, "err\n");
    ctd.assert_nothing_left();
}

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);

/// Sets the window size of the terminal `fd` is a side of.
fn set_winsize(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points
    // at a live local; `fd` is open for the call.
    unsafe { tiocswinsz(std::os::fd::AsRawFd::as_raw_fd(&fd), &ws) }.expect("TIOCSWINSZ");
}

/// `ctr run -t` on a pseudo-terminal of ours, as from an interactive shell.
struct TtyRun {
    child: Child,
    master: std::os::fd::OwnedFd,
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl TtyRun {
    fn start(ctd: &Containerd, args: &[&str], rows: u16, cols: u16) -> TtyRun {
        use std::os::unix::process::CommandExt;
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
        let slave = std::fs::File::from(pty.slave);
        let mut c = ctd.cmd(args);
        c.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: between fork and exec the closure only makes async-signal-
        // safe system calls (setsid, ioctl) on fd 0, which is the slave.
        unsafe {
            c.pre_exec(|| {
                // Its own session with the slave as controlling terminal.
                nix::unistd::setsid()?;
                tiocsctty(0, 0)?;
                Ok(())
            });
        }
        let child = c.spawn().expect("spawn ctr run -t");
        // Our copies of the slave went with `c`: the master reads EIO once
        // ctr is gone.
        drop(c);
        let reader = std::fs::File::from(pty.master.try_clone().unwrap());
        let (tx, chunks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        TtyRun {
            child,
            master: pty.master,
            chunks,
            seen: Vec::new(),
        }
    }

    /// The non-empty lines the terminal showed so far, without "\r".
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.seen)
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Reads until the terminal showed `n` complete non-empty lines.
    fn wait_lines(&mut self, n: usize, within: Duration, what: &str) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let complete = {
                let text = String::from_utf8_lossy(&self.seen).into_owned();
                let upto = text.rfind('\n').map_or("", |i| &text[..i]);
                upto.split('\n')
                    .filter(|l| !l.trim_end_matches('\r').is_empty())
                    .count()
            };
            if complete >= n {
                return self.lines();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(c) => self.seen.extend_from_slice(&c),
                Err(_) => panic!(
                    "{what}: no {n} lines within {within:?}; the terminal showed {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsFd;
        set_winsize(self.master.as_fd(), rows, cols);
        // ctr leads the terminal's foreground group, so the kernel already
        // sent it SIGWINCH; one more only repeats the same ResizePty.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGWINCH,
        );
    }

    fn type_line(&self, line: &str) {
        let mut m = std::fs::File::from(self.master.try_clone().unwrap());
        m.write_all(line.as_bytes()).unwrap();
        m.write_all(b"\n").unwrap();
    }

    /// Waits for ctr to exit; returns its exit code and all it showed.
    fn wait(mut self, within: Duration) -> (i32, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ctr run -t did not exit within {within:?}; the terminal showed {:?}",
                    String::from_utf8_lossy(&self.seen)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // What is left in the pty after the exit.
        while let Ok(c) = self.chunks.recv_timeout(Duration::from_millis(500)) {
            self.seen.extend_from_slice(&c);
        }
        (
            status.code().unwrap_or(-1),
            String::from_utf8_lossy(&self.seen).into_owned(),
        )
    }
}

#[test]
fn tty_and_resize_match_runc() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    // ctr (1.6, Linux) puts no consoleSize in the spec: the first size is
    // the ResizePty it sends right after Start, which may come after the
    // process started. The process waits for it (bounded), shows it, waits
    // for a line, waits (bounded) for the size to change, shows it again.
    let script = "i=0; while [ \"$(mu2-probe winsize)\" = '0 0' ] && [ $i -lt 100 ]; \
                  do sleep 0.1; i=$((i+1)); done; \
                  s=$(mu2-probe winsize); echo \"size $s\"; read x; \
                  i=0; while [ \"$(mu2-probe winsize)\" = \"$s\" ] && [ $i -lt 100 ]; \
                  do sleep 0.1; i=$((i+1)); done; \
                  echo \"size $(mu2-probe winsize)\"; tty";
    let mut seen = Vec::new();
    for (rt, runtime) in [("runc", RUNC), ("mu2", MU2)] {
        let id = ctd.id(&format!("tty-{rt}"));
        let args = [
            "run",
            "-t",
            "--rm",
            "--runtime",
            runtime,
            IMAGE,
            &id,
            "sh",
            "-c",
            script,
        ];
        let mut run = TtyRun::start(&ctd, &args, 33, 111);
        let first = run.wait_lines(1, Duration::from_secs(120), rt);
        assert_eq!(
            first,
            ["size 33 111"],
            "{rt}: first size\n{}",
            tail(&ctd.log(), 30)
        );
        run.resize(40, 120);
        std::thread::sleep(Duration::from_secs(1));
        run.type_line("go");
        let (code, shown) = run.wait(Duration::from_secs(60));
        assert_eq!(
            code,
            0,
            "{rt}: ctr run -t exit; the terminal showed {shown:?}\n{}",
            tail(&ctd.log(), 30)
        );
        // The pty echoes the typed line; the rest is the process's output
        // with "\r\n" line ends.
        let lines: Vec<String> = shown
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.is_empty() && l != "go")
            .collect();
        assert_eq!(lines.len(), 3, "{rt}: the terminal showed {shown:?}");
        assert_eq!(lines[0], "size 33 111", "{rt}: {shown:?}");
        assert_eq!(lines[1], "size 40 120", "{rt}: resize; {shown:?}");
        assert!(lines[2].starts_with("/dev/pts/"), "{rt}: tty: {shown:?}");
        seen.push(lines[..2].to_vec());
    }
    assert_eq!(seen[1], seen[0], "mu2's terminal differs from runc's");
    ctd.assert_nothing_left();
}

/// The task writes all its output and exits while ctr does not read: every
/// byte still reaches ctr, and the exit is 0 only then. (Seen before:
/// 69,632 of 4,194,304 bytes, and exit 0 — silent truncation.)
#[test]
fn output_queued_when_the_task_exits_reaches_a_late_reader() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let id = ctd.id("late");
    let mut run = ctd
        .run_rm(&id, &["sh", "-c", "head -c 4194304 /dev/zero"])
        .spawn()
        .unwrap();
    let mut out = run.stdout.take().unwrap();
    std::thread::sleep(Duration::from_secs(10));
    let mut got = Vec::new();
    out.read_to_end(&mut got).unwrap();
    let o = collect(run, None, "ctr run");
    assert_eq!(got.len(), 4 << 20, "{}", tail(&ctd.log(), 30));
    assert_eq!(o.code(), 0, "{}", o.err());
    ctd.assert_nothing_left();
}
