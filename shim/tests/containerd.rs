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

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/mu2/busybox:test";
const MU2: &str = "io.containerd.mu2.v1";
const RUNC: &str = "io.containerd.runc.v2";
/// Longest any one ctr command may take.
const CTR_DEADLINE: Duration = Duration::from_secs(180);

/// Tests take it shared; the parallel test (more than two VMs) exclusive.
static VM_BUDGET: RwLock<()> = RwLock::new(());

fn image_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bundles = std::env::var_os("MU2_TEST_BUNDLES")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("build/bundles"));
        let rootfs = bundles.join("busybox/rootfs");
        assert!(
            rootfs.is_dir(),
            "no test rootfs at {} (run scripts/build-test-bundles)",
            rootfs.display()
        );
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mu2-busybox-image.tar");
        let st = Command::new(root.join("scripts/build-test-image"))
            .arg(&rootfs)
            .arg(&out)
            .status()
            .expect("run scripts/build-test-image");
        assert!(st.success(), "scripts/build-test-image failed");
        out
    })
}

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the containerd tests need root");
    }
    for bin in ["containerd", "ctr", "runc", "qemu-system-x86_64"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        if !found {
            return Some("containerd, ctr, runc or qemu-system-x86_64 is not installed");
        }
    }
    None
}

struct Out {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Out {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Waits for a child with a deadline, feeding `stdin` and collecting output.
fn collect(mut child: Child, stdin: Option<Vec<u8>>, what: &str) -> Out {
    if let (Some(input), Some(mut cin)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = cin.write_all(&input);
        });
    }
    let mut cout = child.stdout.take().unwrap();
    let mut cerr = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = cout.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = cerr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + CTR_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: no answer within {CTR_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    _budget: Box<dyn std::any::Any>,
}

impl Containerd {
    fn start(exclusive: bool) -> Option<Containerd> {
        if let Some(why) = skip_reason() {
            eprintln!("skipping: {why}");
            return None;
        }
        let budget: Box<dyn std::any::Any> = if exclusive {
            Box::new(VM_BUDGET.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            Box::new(VM_BUDGET.read().unwrap_or_else(|e| e.into_inner()))
        };
        let image = image_tar();
        let dir = tempfile::Builder::new()
            .prefix("mu2-ctd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[debug]\n  level = \"info\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-mu2-v1"))
            .parent()
            .unwrap()
            .to_path_buf();
        let path = std::env::join_paths(
            std::iter::once(shim_dir)
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let ctd = Containerd {
            child: Some(child),
            dir,
            _budget: budget,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ctd.ctr(&["version"]).code() != 0 {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let imp = ctd.ctr(&["images", "import", image.to_str().unwrap()]);
        assert_eq!(imp.code(), 0, "image import: {}", imp.err());
        Some(ctd)
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(self.sock()).args(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn ctr(&self, args: &[&str]) -> Out {
        collect(
            self.cmd(args).spawn().expect("spawn ctr"),
            None,
            &format!("ctr {args:?}"),
        )
    }

    fn ctr_in(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut c = self.cmd(args);
        c.stdin(Stdio::piped());
        collect(
            c.spawn().expect("spawn ctr"),
            Some(stdin.to_vec()),
            &format!("ctr {args:?}"),
        )
    }

    /// `ctr run --rm` of IMAGE under `runtime`.
    fn run(&self, runtime: &str, id: &str, opts: &[&str], cmd: &[&str], stdin: &[u8]) -> Out {
        let mut args = vec!["run", "--rm", "--runtime", runtime];
        args.extend_from_slice(opts);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        if stdin.is_empty() {
            self.ctr(&args)
        } else {
            self.ctr_in(&args, stdin)
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Nothing of ours is left: no QEMU, no shim, no task, no container, no
    /// mount, no task state directory.
    fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "left behind: {left:#?}\ncontainerd log tail:\n{}",
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let sock = self.sock().display().to_string();
        let state = self.dir.path().join("state").display().to_string();
        for p in procs() {
            let is_ours = p.1.contains(&sock) || p.1.contains(&state);
            if is_ours && (p.1.contains("qemu-system") || p.1.contains("containerd-shim-mu2")) {
                left.push(format!("process {} {}", p.0, p.1));
            }
        }
        // QEMU names VMs after their container ids, which carry our prefix.
        for p in procs() {
            if p.1.contains("qemu-system") && p.1.contains(&format!("mu2-{}", self.prefix())) {
                left.push(format!("vm {} {}", p.0, p.1));
            }
        }
        for what in [["tasks", "ls", "-q"], ["containers", "ls", "-q"]] {
            let o = self.ctr(&what);
            if !o.out().trim().is_empty() {
                left.push(format!("{}: {}", what[0], o.out().trim()));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in mounts.lines() {
            if l.contains(&state) {
                left.push(format!("mount {l}"));
            }
        }
        let tasks = self
            .dir
            .path()
            .join("state/io.containerd.runtime.v2.task/default");
        if let Ok(rd) = std::fs::read_dir(&tasks) {
            for e in rd.flatten() {
                left.push(format!("state dir {}", e.path().display()));
            }
        }
        left
    }

    /// Container ids of this containerd start with it.
    fn prefix(&self) -> String {
        let name = self.dir.path().file_name().unwrap().to_string_lossy();
        name.trim_start_matches("mu2-ctd-")
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect()
    }

    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test may leave shims (daemons, not containerd's children)
        // and their VMs, which die with them.
        let sock = self.sock().display().to_string();
        for (pid, cmd) in procs() {
            if cmd.contains("containerd-shim-mu2-v1") && cmd.contains(&sock) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Some(mut c) = self.child.take() {
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
        // The snapshotter's mounts under root must go before the dir.
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in mounts.lines() {
            if let Some(mp) = l.split(' ').nth(4) {
                if mp.starts_with(&root) {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// (pid, command line) of every process.
fn procs() -> Vec<(u32, String)> {
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

/// Polls `ctr tasks ls` until the task shows `status`.
fn wait_status(ctd: &Containerd, id: &str, status: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let o = ctd.ctr(&["tasks", "ls"]);
        if o.out()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not {status} within {within:?}: {}\n{}",
            o.out(),
            tail(&ctd.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn task_pid(ctd: &Containerd, id: &str) -> i32 {
    let o = ctd.ctr(&["tasks", "ls"]);
    o.out()
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for {id} in {}", o.out()))
}

fn cleanup_task(ctd: &Containerd, id: &str) {
    let _ = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    let _ = ctd.ctr(&["tasks", "rm", "-f", id]);
    let _ = ctd.ctr(&["containers", "rm", id]);
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

#[test]
fn sigkill_of_qemu_publishes_the_exit() {
    let Some(ctd) = Containerd::start(false) else {
        return;
    };
    let id = ctd.id("qkill");
    let runner = ctd
        .cmd(&["run", "--rm", "--runtime", MU2, IMAGE, &id, "sleep", "600"])
        .spawn()
        .unwrap();
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

#[test]
fn parallel_runs_all_succeed() {
    let Some(ctd) = Containerd::start(true) else {
        return;
    };
    const N: usize = 4;
    let runners: Vec<_> = (0..N)
        .map(|i| {
            let id = ctd.id(&format!("par{i}"));
            ctd.cmd(&[
                "run",
                "--rm",
                "--runtime",
                MU2,
                IMAGE,
                &id,
                "sh",
                "-c",
                &format!("echo run {i}; head -c 16 /dev/urandom | od -An -tx1"),
            ])
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
    let k = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(k.code(), 0, "{}", k.err());
    wait_status(&ctd, &id, "STOPPED", Duration::from_secs(30));
    cleanup_task(&ctd, &id);
    ctd.assert_nothing_left();
}
