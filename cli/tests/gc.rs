//! `mu2 ps` and `mu2 gc` after a `mu2 run` that was SIGKILLed while its VM
//! ran paused (its VMM's cgroup frozen), jailed and unjailed: the record
//! shows the dead owner, and the collection (which thaws and kills a VMM
//! that outlived its owner) leaves nothing (no QEMU, jailer, record, jail
//! directory, uid claim or cgroup). Each case has a config file of its own (`MU2_CONFIG`)
//! with a private record directory, so that no other launch on the host
//! collects the record first.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use mu2_microvm::jail::config::CONFIG_ENV;
use mu2_microvm::jail::JailMode;
use mu2_microvm::record::{OwnerKind, ProcId, RecordDir, State};

struct Setup {
    dir: tempfile::TempDir,
    mode: JailMode,
}

impl Setup {
    /// A config with a private record directory: jailed as the host's
    /// configuration says, or with the jail disabled.
    fn new(jailed: bool) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("mu2-gc-")
            .tempdir()
            .unwrap();
        let records = dir.path().join("vms");
        let jail = if jailed {
            let JailMode::Jailed(host) = JailMode::load().expect("the host's mu2 configuration")
            else {
                panic!("the jailed case needs the host's jail enabled (scripts/install)")
            };
            let r = host.ids.expect("a uid_range in the host's configuration");
            format!(
                "uid_range = \"{}-{}\"\njail_root = \"{}\"\nclaim_dir = \"{}\"\n",
                r.first,
                r.last,
                host.jail_root.display(),
                host.claim_dir.display()
            )
        } else {
            "enabled = false\n".to_string()
        };
        let text = format!(
            "[jail]\n{jail}[vms]\nrecord_dir = \"{}\"\n",
            records.display()
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let mode = JailMode::load_from(&path).unwrap();
        assert_eq!(mode.record_dir(), records);
        Setup { dir, mode }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn mu2(&self, args: &[&str]) -> Output {
        let out = mu2()
            .args(args)
            .env(CONFIG_ENV, self.config())
            .output()
            .expect("run mu2");
        assert_eq!(
            out.status.code(),
            Some(0),
            "mu2 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `mu2 ps`'s line for VM `id`.
    fn ps_line(&self, id: &str) -> Option<String> {
        let out = self.mu2(&["ps"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.starts_with("VM "), "no header: {text}");
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .map(str::to_string)
    }
}

/// Freezes the cgroup directories (v1 freezer or v2 `cgroup.freeze`).
fn freeze(dirs: &[PathBuf]) {
    let mut frozen = false;
    for d in dirs {
        frozen |= std::fs::write(d.join("freezer.state"), "FROZEN").is_ok();
        frozen |= std::fs::write(d.join("cgroup.freeze"), "1").is_ok();
    }
    assert!(frozen, "no freezer in {dirs:?}");
}

fn sigkilled_run_is_collected_by_gc(jailed: bool) {
    let Some(base) = setup() else { return };
    let s = Setup::new(jailed);
    let records = RecordDir::for_mode(&s.mode);
    let bundle = TestBundle::new(&base, &["sh", "-c", "echo up; exec sleep 600"]);
    let dir = bundle.write();
    let id = unique_id(if jailed { "gc-jailed" } else { "gc-unjailed" });
    let mut run = mu2()
        .args(["run", "--id", &id])
        .arg(dir)
        .env(CONFIG_ENV, s.config())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let owner = run.id();
    // The process runs in the guest once it says so.
    let stdout = run.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(RUN_DEADLINE) {
        Ok(line) if line == "up\n" => {}
        other => {
            let _ = run.kill();
            let _ = run.wait();
            panic!("vm {id} never ran its process: {other:?}");
        }
    }

    // Running: the record names `mu2 run` and its VMM.
    let record = records.read(&id).unwrap().expect("the running VM's record");
    assert_eq!(record.state(), State::Running);
    assert_eq!(record.owner.kind, OwnerKind::Run);
    assert_eq!(record.owner.pid, owner);
    let vmm = record.vmm.clone().unwrap();
    assert_eq!(vmm.jailer.is_some(), jailed);
    assert_eq!(record.jail.is_some(), jailed);
    assert!(!record.cgroups.is_empty());
    let line = s.ps_line(&id).expect("mu2 ps lists the vm");
    assert!(line.contains(&format!("run {owner}")), "{line}");
    assert!(line.contains(&vmm.qemu.pid.to_string()), "{line}");
    assert!(line.contains("running"), "{line}");

    // Paused (the VMM's cgroup frozen), then the owner dies without
    // cleaning up: the kernel's SIGKILL for the orphans (their parent-death
    // signal) waits for a thaw that only the collector gives.
    freeze(&record.cgroups);
    run.kill().unwrap();
    run.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let vmm_outlived_owner = vmm.is_alive();
    eprintln!("the frozen VMM outlived its owner: {vmm_outlived_owner}");
    let line = s.ps_line(&id).expect("the record outlives its owner");
    assert!(line.contains("owner dead"), "{line}");
    assert!(
        record.cgroups.iter().all(|d| d.exists()),
        "the crash left no cgroups to collect: the test proves nothing"
    );

    let out = s.mu2(&["gc", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&format!("vm {id} ")), "{text}");
    assert!(text.contains("would remove"), "{text}");
    assert!(records.read(&id).unwrap().is_some(), "a dry run collected");

    let out = s.mu2(&["gc"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("vm {id} ")))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = lines[0];
    assert!(!line.contains("record kept"), "{line}");
    assert!(
        line.contains("cgroups") && line.contains("record"),
        "{line}"
    );
    if jailed {
        assert!(line.contains("jail ") && line.contains("claim "), "{line}");
    }
    if vmm_outlived_owner {
        assert!(line.contains("killed qemu"), "{line}");
    }
    assert!(!ProcId::is_alive(&vmm.qemu), "QEMU survived");
    assert!(
        vmm.jailer.is_none_or(|j| !j.is_alive()),
        "the jailer survived"
    );
    assert_nothing_left_with(&id, dir, &s.mode);
    for d in &record.cgroups {
        assert!(!Path::new(d).exists(), "cgroup {} left", d.display());
    }
    // Nothing more to do.
    let out = s.mu2(&["gc"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nothing to collect\n");
}

#[test]
fn a_sigkilled_jailed_run_is_listed_as_owner_dead_and_gc_leaves_nothing() {
    sigkilled_run_is_collected_by_gc(true);
}

#[test]
fn a_sigkilled_unjailed_run_is_listed_as_owner_dead_and_gc_leaves_nothing() {
    sigkilled_run_is_collected_by_gc(false);
}
