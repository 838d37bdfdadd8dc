//! `mu2 run` leasing from the pool (`mu2 pool serve`, microvm::pool): leased
//! VMs answer and are strangers to each other; a pool killed mid-lease or
//! mid-refill leaves running tasks alone and nothing after `mu2 gc`; a pool
//! that is down, slow or empty costs a fallback, never the request. Each
//! test runs a pool of its own (socket, directory and, where it matters,
//! template directory in a temp dir, beside the host's configuration).

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use mu2_microvm::pool::server::Status;
use mu2_microvm::pool::wire::{self, Request, Response, WIRE_VERSION};
use mu2_microvm::record::{Owner, OwnerKind, RecordDir};

const LEASED: &str = "leased from the pool";
/// Longest a pool may take to have its warm VMs (a template build on a
/// loaded host included).
const WARM_DEADLINE: Duration = Duration::from_secs(120);

struct Pool {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Pool {
    /// A pool configured with `extra` lines in its `[pool]` table (and
    /// `templates` a table of its own when given), not started.
    fn new(pool_extra: &str, templates: Option<&str>) -> Pool {
        let dir = tempfile::Builder::new()
            .prefix("mu2-pool-test-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("pool.sock");
        let host =
            std::fs::read_to_string(mu2_microvm::jail::config::config_path()).unwrap_or_default();
        let templates = templates
            .map(|t| format!("[templates]\n{t}\n"))
            .unwrap_or_default();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "{host}\n{templates}[pool]\nsocket = \"{}\"\ndir = \"{}\"\n{pool_extra}\n",
                socket.display(),
                dir.path().join("pool").display()
            ),
        )
        .unwrap();
        Pool {
            dir,
            config,
            socket,
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("pool.log")).unwrap();
        let child = mu2()
            .env("MU2_CONFIG", &self.config)
            .env("MU2_LOG", "info")
            .env_remove("MU2_POOL")
            .args(["pool", "serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pool.log")).unwrap_or_default()
    }

    fn status(&self) -> Option<Status> {
        mu2_microvm::pool::client::status(&self.socket, Duration::from_secs(5)).ok()
    }

    /// Waits until `test` holds of the pool's status.
    fn wait_for(&mut self, what: &str, test: impl Fn(&Status) -> bool) -> Status {
        let end = Instant::now() + WARM_DEADLINE;
        loop {
            if let Some(s) = self.status() {
                if test(&s) {
                    return s;
                }
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "the pool exited ({st}) before it had {what}\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < end,
                "the pool never had {what}: {:?}\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_warm(&mut self, n: u32) -> Status {
        self.wait_for(&format!("{n} warm VMs"), |s| {
            s.shapes.iter().map(|sh| sh.warm).sum::<u32>() >= n
        })
    }

    /// `mu2 run` of `bundle` with this pool's config, logging at info.
    fn spawn_run(&self, bundle: &TestBundle) -> Child {
        mu2()
            .env("MU2_CONFIG", &self.config)
            .env("MU2_LOG", "info")
            .env_remove("MU2_POOL")
            .args(["run", "--id", &unique_id("pool")])
            .arg(bundle.write())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn run(&self, bundle: &TestBundle) -> Output {
        let mut child = self.spawn_run(bundle);
        collect(&mut child, b"")
    }

    fn kill(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
            wait_deadline(&mut c, Duration::from_secs(60));
        }
    }

    fn gc(&self) -> String {
        let out = mu2()
            .env("MU2_CONFIG", &self.config)
            .arg("gc")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Nothing of VMs of pool `pid` is left: no QEMU, record, jail,
    /// cgroup or share directory.
    fn assert_nothing_left_of(&self, pid: u32) {
        let prefix = format!("mu2p-{pid}-");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = processes_with(&format!("mu2-{prefix}"));
            if procs.is_empty() {
                break;
            }
            assert!(Instant::now() < end, "VMs left behind: {procs:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mode = mu2_microvm::jail::JailMode::load().unwrap();
        let records = RecordDir::for_mode(&mode);
        for r in records.list() {
            assert!(!r.id.starts_with(&prefix), "record {} left behind", r.id);
            assert!(
                r.record.as_ref().map_or(true, |r| r.owner.pid != pid),
                "a record of pool {pid} left behind: {}",
                r.id
            );
        }
        if let mu2_microvm::jail::JailMode::Jailed(cfg) = &mode {
            for e in std::fs::read_dir(&cfg.jail_root)
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(!name.starts_with(&prefix), "jail {name} left behind");
            }
        }
        for d in std::fs::read_dir("/sys/fs/cgroup/mu2")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = d.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(&prefix), "cgroup {name} left behind");
        }
        let vms = self.dir.path().join("pool/vms");
        let left: Vec<_> = std::fs::read_dir(&vms)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "share directories left behind: {left:?}");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(&prefix),
            "a mount of pool {pid} left behind"
        );
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.kill(nix::sys::signal::Signal::SIGTERM);
    }
}

fn ok(out: &Output) -> String {
    assert_eq!(out.code(), 0, "{}", out.stderr_str());
    out.stdout_str()
}

/// User and system CPU of process `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn leased_vms_answer_and_are_strangers_with_the_hosts_clock() {
    strangers(2, LEASED, true);
}

/// The same with warm VMs cloned from the template file (no shared
/// template: each loads its RAM from the stream).
#[test]
fn leased_clones_of_the_template_file_are_strangers_with_the_hosts_clock() {
    strangers(2, LEASED, false);
}

/// The same of two clones the lessees restore themselves from the pool's
/// shared template (a pool that keeps no warm VM hands it out on a miss).
#[test]
fn clones_of_the_pools_shared_template_are_strangers_with_the_hosts_clock() {
    strangers(0, "restored from the pool's shared template", true);
}

/// Two requests at once through a pool of `warm` VMs (cloned from a
/// `shared` template or from the template file), each of which must say
/// `how` it got its VM: they answer from their own images, with their own
/// random bytes and boot_id, the host's clock, and neither sees the other's
/// files or processes.
fn strangers(warm: u32, how: &str, shared: bool) {
    let Some(base) = setup() else { return };
    let mut pool = Pool::new(
        &format!(
            "warm = {warm}\nshared_templates = {shared}\nshapes = [{{ memory_mib = 256, vcpus = 1 }}]"
        ),
        None,
    );
    pool.start();
    if shared {
        pool.wait_for("its shared template", |s| {
            s.shapes.iter().any(|sh| sh.shared_template)
        });
    }
    pool.wait_warm(warm);
    if !shared {
        let s = pool.status().unwrap();
        assert!(!s.shapes[0].shared_template && s.template_kib == 0, "{s:?}");
    }
    // Warm long enough that a clock left as restored would be behind; and
    // a warm VM that settled waits stopped: its QEMU takes next to no CPU
    // meanwhile (a running idle guest takes ~35 ms a second).
    std::thread::sleep(Duration::from_secs(2));
    let warm_qemus: Vec<u32> = processes_with(&format!("mu2-mu2p-{}-", pool.pid()))
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu-system"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(warm_qemus.len(), warm as usize, "{warm_qemus:?}");
    let before: Vec<u64> = warm_qemus.iter().map(|p| cpu_ticks(*p)).collect();
    std::thread::sleep(Duration::from_secs(2));
    for (p, b) in warm_qemus.iter().zip(before) {
        let used = cpu_ticks(*p) - b;
        assert!(
            used <= 2,
            "warm VM's QEMU {p} used {used} ticks of CPU in 2 s"
        );
    }
    let script = "mu2-probe urandom 16; mu2-probe getrandom 16; \
                  cat /proc/sys/kernel/random/boot_id; date +%s; \
                  echo $MARK > /tmp/mark; sleep 3 & sleep 1; ls /tmp; \
                  ps -o args | grep -c '^sleep 3'; cat /etc/mu2-test-image; wait";
    // The image the lessee attaches is the request's: a file only its
    // rootfs has.
    let image = tempfile::tempdir().unwrap();
    let root = image.path().join("rootfs");
    std::process::Command::new("cp")
        .args(["-a"])
        .arg(base.join("rootfs"))
        .arg(&root)
        .status()
        .unwrap();
    std::fs::write(root.join("etc/mu2-test-image"), "the request's image\n").unwrap();
    // Both leases at once on a busy host (both cores spinning), with the
    // pool refilling behind them.
    let hogs = CpuHogs::start(2);
    let runs: Vec<(u64, Output, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = ["one", "two"]
            .iter()
            .map(|mark| {
                let pool = &pool;
                let base = &base;
                let root = &root;
                s.spawn(move || {
                    let mut b = TestBundle::new(base, &["sh", "-c", script]);
                    b.config["root"]["path"] = root.display().to_string().into();
                    b.config["process"]["env"]
                        .as_array_mut()
                        .unwrap()
                        .push(format!("MARK={mark}").into());
                    let before = now_s();
                    let out = pool.run(&b);
                    (before, out, now_s())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(hogs);
    let mut seen = Vec::new();
    for (before, out, after) in &runs {
        assert!(out.stderr_str().contains(how), "{}", out.stderr_str());
        let text = ok(out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        let date: u64 = lines[3].parse().unwrap();
        assert!(
            *before <= date + 1 && date <= *after + 1,
            "guest date {date} outside the host's {before}..={after}: {text}"
        );
        assert_eq!(lines[4], "mark", "{text}");
        assert_eq!(lines[5], "1", "{text}");
        assert_eq!(lines[6], "the request's image", "{text}");
        seen.push((
            lines[0].to_string(),
            lines[1].to_string(),
            lines[2].to_string(),
        ));
    }
    assert_ne!(seen[0].0, seen[1].0, "/dev/urandom is the same in both");
    assert_ne!(seen[0].1, seen[1].1, "getrandom is the same in both");
    assert_ne!(seen[0].2, seen[1].2, "boot_id is the same in both");
    let s = pool.status().unwrap();
    if warm == 0 {
        assert_eq!(s.shapes[0].template_handouts, 2, "{s:?}");
    } else {
        assert_eq!(s.leases, 2, "{s:?}");
        assert_eq!(s.shapes[0].hits, 2, "{s:?}");
    }
    // The pool refills behind the leases.
    pool.wait_warm(warm);
    let pid = pool.pid();
    pool.kill(nix::sys::signal::Signal::SIGTERM);
    assert!(!pool.socket.exists(), "the socket stays after SIGTERM");
    pool.assert_nothing_left_of(pid);
}

#[test]
fn killing_the_pool_spares_leased_vms_and_leaves_nothing_after_gc() {
    let Some(base) = setup() else { return };
    let mut pool = Pool::new("warm = 1\nshapes = [{ memory_mib = 256, vcpus = 1 }]", None);
    pool.start();
    pool.wait_warm(1);
    let pid = pool.pid();

    // A task leased before the pool dies runs to its end, output whole.
    let task = TestBundle::new(&base, &["sh", "-c", "sleep 4; seq 1 20000 | tail -n 1"]);
    let mut child = pool.spawn_run(&task);
    pool.wait_for("a lease", |s| s.leases == 1);
    pool.kill(nix::sys::signal::Signal::SIGKILL);
    let out = collect(&mut child, b"");
    assert_eq!(ok(&out), "20000\n");
    assert!(out.stderr_str().contains(LEASED), "{}", out.stderr_str());

    // With the pool dead (its socket left behind), a request restores or
    // boots: a fallback, not an error.
    let out = pool.run(&TestBundle::new(&base, &["echo", "fallback"]));
    assert_eq!(ok(&out), "fallback\n");
    assert!(!out.stderr_str().contains(LEASED), "{}", out.stderr_str());
    pool.gc();
    pool.assert_nothing_left_of(pid);

    // Mid-lease: a lessee holds the VM's fds when the pool dies, before it
    // took the VM over; it then lets go. The VM ends with its last
    // lifeline, and `mu2 gc` takes the rest apart.
    pool.start();
    pool.wait_warm(1);
    let pid = pool.pid();
    let conn = UnixStream::connect(&pool.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let image = mu2_microvm::GuestImage::locate(None).unwrap();
    let shape = mu2_microvm::pool::wire::ShapeKey {
        memory_mib: 256,
        vcpus: 1,
        tb_size_mib: mu2_microvm::spec::DEFAULT_TB_SIZE_MIB,
        debug: false,
        accel: format!("{:?}", mu2_microvm::AccelChoice::Auto.resolve()),
        qemu: mu2_microvm::spec::DEFAULT_QEMU.into(),
        kernel: image.kernel.clone(),
        initrd: image.initrd.clone(),
        share_tag: "rootfs".into(),
    };
    wire::send(
        &conn,
        &Request::Lease {
            version: WIRE_VERSION,
            shape: Box::new(shape),
            owner: Box::new(Owner::this_process(OwnerKind::Test)),
        },
        &[],
    )
    .unwrap();
    let (answer, fds) = wire::recv::<Response>(&conn, 8).unwrap();
    let Response::Leased { info, .. } = answer else {
        panic!("no lease: {answer:?}\n{}", pool.log());
    };
    assert_eq!(fds.len(), 8);
    let vm = info.id.clone();
    assert!(vm.starts_with(&format!("mu2p-{pid}-")), "{vm}");
    assert_eq!(processes_with(&format!("mu2-{vm}")).len(), 1);
    pool.kill(nix::sys::signal::Signal::SIGKILL);
    // Our copy of its lifeline keeps it alive, unless a launch elsewhere
    // on the host (a test beside this one) collected its record, whose
    // owner is dead now: a lessee would then fail to take it over and
    // fall back. Either way, nothing of it may be left in the end.
    std::thread::sleep(Duration::from_millis(500));
    let alive = processes_with(&format!("mu2-{vm} ")).len();
    assert!(alive <= 1);
    drop(fds);
    drop(conn);
    let gc = pool.gc();
    if alive == 1 {
        assert!(gc.contains(&vm), "{gc}");
    }
    pool.assert_nothing_left_of(pid);
}

#[test]
fn a_pool_killed_mid_refill_leaves_nothing_after_gc() {
    let Some(_) = setup() else { return };
    // An empty template directory: the pool's first refill builds the
    // template, a cold boot of seconds, and is killed in the middle.
    let templates = tempfile::tempdir().unwrap();
    let tdir = templates.path().join("t");
    let mut pool = Pool::new(
        "warm = 1\nshapes = [{ memory_mib = 256, vcpus = 1 }]",
        Some(&format!("dir = \"{}\"", tdir.display())),
    );
    pool.start();
    let pid = pool.pid();
    let end = Instant::now() + WARM_DEADLINE;
    let building = || {
        std::fs::read_dir(&tdir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".build-"))
    };
    while !building() {
        assert!(Instant::now() < end, "no template build\n{}", pool.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let builder = format!("-{pid}");
    let end = Instant::now() + Duration::from_secs(30);
    while processes_with("mu2-tpl-")
        .iter()
        .all(|(_, c)| !c.contains(&builder))
    {
        assert!(Instant::now() < end, "no template VM\n{}", pool.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    pool.kill(nix::sys::signal::Signal::SIGKILL);
    // The template VM dies with the pool (its jailer's parent death
    // signal): wait for that, bounded, so that the gc below is the "next"
    // one (a gc racing a dying VMM keeps its record for the one after).
    let end = Instant::now() + Duration::from_secs(30);
    let template_vm = || {
        processes_with("mu2-tpl-")
            .into_iter()
            .filter(|(_, c)| c.contains(&builder))
            .collect::<Vec<_>>()
    };
    while !template_vm().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = template_vm();
    assert!(
        left.is_empty(),
        "the template VM outlived the pool: {left:?}"
    );
    // What gc did (and kept, and why) goes with any failure below.
    let report = pool.gc();
    eprintln!("mu2 gc after the kill:\n{report}");
    pool.assert_nothing_left_of(pid);
    assert!(!building(), "the template build is left after gc");
}

#[test]
fn a_pool_that_is_down_slow_or_empty_costs_only_a_fallback() {
    let Some(base) = setup() else { return };
    let b = TestBundle::new(&base, &["echo", "answered"]);

    // Down: nothing listens on the socket.
    let pool = Pool::new("lease_timeout = \"300ms\"", None);
    let out = pool.run(&b);
    assert_eq!(ok(&out), "answered\n");
    assert!(!out.stderr_str().contains(LEASED));

    // Slow: it accepts and never answers; the lease gives up after its
    // timeout and the request goes on.
    let listener = UnixListener::bind(&pool.socket).unwrap();
    let hold = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(1).flatten().collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let t0 = Instant::now();
    let out = pool.run(&b);
    assert_eq!(ok(&out), "answered\n");
    assert!(
        out.stderr_str().contains("the pool did not answer"),
        "{}",
        out.stderr_str()
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    hold.join().unwrap();
    std::fs::remove_file(&pool.socket).unwrap();

    // Empty: a pool with no warm VMs answers a miss, with its shared
    // template once it has one; the lessee restores from that itself.
    let mut pool = Pool::new("warm = 0\nlease_timeout = \"2s\"", None);
    pool.start();
    let s = pool.wait_for("its shared template", |s| {
        s.shapes.iter().any(|sh| sh.shared_template)
    });
    assert!(s.template_kib >= 256 << 10, "{s:?}");
    assert_eq!(s.shapes[0].warm, 0, "{s:?}");
    let out = pool.run(&b);
    assert_eq!(ok(&out), "answered\n");
    let log = out.stderr_str();
    assert!(
        log.contains("pool miss") && log.contains("restored from the pool's shared template"),
        "{log}"
    );
    let s = pool.status().unwrap();
    assert_eq!(s.shapes[0].misses, 1, "{s:?}");
    assert_eq!(s.shapes[0].template_handouts, 1, "{s:?}");
    assert_eq!(s.leases, 0);
    let pid = pool.pid();
    pool.kill(nix::sys::signal::Signal::SIGTERM);
    pool.assert_nothing_left_of(pid);
}

/// The shapes a bundle asks for are the pool's to learn: a miss of a new
/// shape makes it keep that shape warm, and the next request leases.
#[test]
fn a_missed_shape_is_learned_and_then_leased() {
    let Some(base) = setup() else { return };
    let mut pool = Pool::new("warm = 1\nshapes = []\nlearn = true", None);
    pool.start();
    pool.wait_for("an answer", |_| true);
    let mut b = TestBundle::new(&base, &["echo", "shaped"]);
    b.config["linux"]["resources"]["memory"]["limit"] = (192u64 << 20).into();
    let out = pool.run(&b);
    assert_eq!(ok(&out), "shaped\n");
    assert!(
        out.stderr_str().contains("pool miss"),
        "{}",
        out.stderr_str()
    );
    let s = pool.wait_warm(1);
    assert_eq!(s.shapes.len(), 1, "{s:?}");
    // The guest gets the limit plus the agent's own room: not the
    // default shape, whatever the mapping adds.
    assert_ne!(s.shapes[0].memory_mib, 256, "{s:?}");
    let out = pool.run(&b);
    assert_eq!(ok(&out), "shaped\n");
    assert!(out.stderr_str().contains(LEASED), "{}", out.stderr_str());
}
