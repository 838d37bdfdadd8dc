//! The private containerd the shim's end-to-end tests drive: started on
//! its own socket, root and state under a temp dir, with this build's shim
//! first in its PATH and the busybox test image imported; `ctr` against it;
//! `ctr events` collected; and what mu2 must not leave behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use super::{procs, tail};

pub const IMAGE: &str = "docker.io/mu2/busybox:test";
pub const MU2: &str = "io.containerd.mu2.v1";
pub const RUNC: &str = "io.containerd.runc.v2";
/// Longest any one ctr command may take.
pub const CTR_DEADLINE: Duration = Duration::from_secs(180);

/// Tests take it shared; the parallel test (more than two VMs) exclusive.
static VM_BUDGET: RwLock<()> = RwLock::new(());

pub fn image_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let rootfs = super::test_rootfs();
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

pub struct Out {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Out {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Waits for a child with a deadline, feeding `stdin` and collecting output.
pub fn collect(mut child: Child, stdin: Option<Vec<u8>>, what: &str) -> Out {
    if let (Some(input), Some(mut cin)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = cin.write_all(&input);
        });
    }
    // A stream the caller took (and reads itself) collects as empty.
    let cout = child.stdout.take();
    let cerr = child.stderr.take();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut c) = cout {
            let _ = c.read_to_end(&mut v);
        }
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut c) = cerr {
            let _ = c.read_to_end(&mut v);
        }
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

pub struct Containerd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    _budget: Box<dyn std::any::Any>,
}

impl Containerd {
    pub fn start(exclusive: bool) -> Option<Containerd> {
        Self::start_with(exclusive, "")
    }

    /// [`Containerd::start`] whose shims read the host's mu2 configuration
    /// with `mu2_extra` (TOML tables) appended.
    pub fn start_with(exclusive: bool, mu2_extra: &str) -> Option<Containerd> {
        if let Some(why) = super::skip_reason("containerd") {
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
        if !mu2_extra.is_empty() {
            let host = std::fs::read_to_string(mu2_microvm::jail::config::config_path())
                .unwrap_or_default();
            std::fs::write(d.join("mu2.toml"), format!("{host}\n{mu2_extra}")).unwrap();
        }
        let child = super::spawn_containerd(d, &config);
        let ctd = Containerd {
            child: Some(child),
            dir,
            _budget: budget,
        };
        ctd.await_serving();
        let imp = ctd.ctr(&["images", "import", image.to_str().unwrap()]);
        assert_eq!(imp.code(), 0, "image import: {}", imp.err());
        Some(ctd)
    }

    fn await_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ctr(&["version"]).code() != 0 {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("containerd runs").id()
    }

    /// Stops containerd (SIGTERM, as a service manager would) and starts it
    /// again on the same config, socket, root and state; the shims run on.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() {
                assert!(Instant::now() < deadline, "containerd did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let config = std::fs::read_to_string(self.dir.path().join("config.toml")).unwrap();
        let old_log = self.dir.path().join("containerd.log");
        let _ = std::fs::rename(&old_log, self.dir.path().join("containerd.log.0"));
        self.child = Some(super::spawn_containerd(self.dir.path(), &config));
        self.await_serving();
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(self.sock()).args(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `ctr run --rm --runtime io.containerd.mu2.v1 IMAGE ID CMD…`, not
    /// yet spawned.
    pub fn run_rm(&self, id: &str, cmd: &[&str]) -> Command {
        let mut args = vec!["run", "--rm", "--runtime", MU2, IMAGE, id];
        args.extend_from_slice(cmd);
        self.cmd(&args)
    }

    pub fn ctr(&self, args: &[&str]) -> Out {
        collect(
            self.cmd(args).spawn().expect("spawn ctr"),
            None,
            &format!("ctr {args:?}"),
        )
    }

    pub fn ctr_in(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut c = self.cmd(args);
        c.stdin(Stdio::piped());
        collect(
            c.spawn().expect("spawn ctr"),
            Some(stdin.to_vec()),
            &format!("ctr {args:?}"),
        )
    }

    /// `ctr run --rm` of IMAGE under `runtime`.
    pub fn run(&self, runtime: &str, id: &str, opts: &[&str], cmd: &[&str], stdin: &[u8]) -> Out {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Nothing of ours is left: no QEMU, no shim, no task, no container, no
    /// mount, no task state directory.
    pub fn assert_nothing_left(&self) {
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

    pub fn leftovers(&self) -> Vec<String> {
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
        // The VMMs' cgroups and jails.
        let prefix = self.prefix();
        left.extend(super::vm_leftovers(|name| name.starts_with(&prefix)));
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
    pub fn prefix(&self) -> String {
        let name = self.dir.path().file_name().unwrap().to_string_lossy();
        name.trim_start_matches("mu2-ctd-")
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect()
    }

    pub fn id(&self, name: &str) -> String {
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
        // The snapshotter's mounts under root must go before the dir.
        super::stop_containerd(self.child.take(), self.dir.path());
    }
}

/// Polls `ctr tasks ls` until the task shows `status`.
pub fn wait_status(ctd: &Containerd, id: &str, status: &str, within: Duration) {
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

pub fn task_pid(ctd: &Containerd, id: &str) -> i32 {
    let o = ctd.ctr(&["tasks", "ls"]);
    o.out()
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for {id} in {}", o.out()))
}

pub fn cleanup_task(ctd: &Containerd, id: &str) {
    let _ = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    let _ = ctd.ctr(&["tasks", "rm", "-f", id]);
    let _ = ctd.ctr(&["containers", "rm", id]);
}

/// `ctr events` running in the background on the test's containerd: every
/// line it printed, collected by a reader thread. Killed when dropped.
pub struct EventLog {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// One task event of `ctr events`: its topic and its JSON body.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    pub topic: String,
    pub body: serde_json::Value,
}

impl Containerd {
    /// Starts `ctr events` and returns once it is subscribed (it printed the
    /// event of a namespace this creates and removes).
    pub fn events(&self) -> EventLog {
        let mut child = self.cmd(&["events"]).spawn().expect("spawn ctr events");
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                sink.lock().unwrap().push(l);
            }
        });
        let log = EventLog { child, lines };
        let ns = format!("ready-{}", self.prefix());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = self.ctr(&["namespaces", "create", &ns]);
            assert_eq!(o.code(), 0, "{}", o.err());
            let _ = self.ctr(&["namespaces", "rm", &ns]);
            std::thread::sleep(Duration::from_millis(200));
            if log.lines().iter().any(|l| l.contains("/namespaces/create")) {
                return log;
            }
            assert!(Instant::now() < deadline, "ctr events did not subscribe");
        }
    }
}

impl EventLog {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The `/tasks/*` events of container `id`, in the order printed.
    pub fn task_events(&self, id: &str) -> Vec<TaskEvent> {
        self.lines()
            .iter()
            .filter_map(|l| {
                let topic = l.split_whitespace().find(|w| w.starts_with("/tasks/"))?;
                let json = &l[l.find('{')?..];
                let body: serde_json::Value = serde_json::from_str(json).ok()?;
                (body["container_id"] == id).then(|| TaskEvent {
                    topic: topic.to_string(),
                    body,
                })
            })
            .collect()
    }

    pub fn topics(&self, id: &str) -> Vec<String> {
        self.task_events(id).into_iter().map(|e| e.topic).collect()
    }

    /// Waits until `id` had `count` events of `topic`; returns its topics.
    pub fn wait_for(&self, id: &str, topic: &str, count: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let topics = self.topics(id);
            if topics.iter().filter(|t| *t == topic).count() >= count {
                return topics;
            }
            assert!(
                Instant::now() < deadline,
                "no {count} {topic} for {id} within {within:?}: {topics:?}\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
