//! `mu2 run` from templates (microvm::template): clones are strangers to
//! each other and to their template's clock, and a damaged template costs a
//! log line and a cold boot, never the request. Each test has a template
//! directory of its own (a config file naming it, plus the host's).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

struct Templates {
    _dir: tempfile::TempDir,
    templates: PathBuf,
    config: PathBuf,
}

impl Templates {
    fn new() -> Templates {
        let dir = tempfile::Builder::new()
            .prefix("mu2-tpl-test-")
            .tempdir()
            .unwrap();
        let templates = dir.path().join("templates");
        let host =
            std::fs::read_to_string(mu2_microvm::jail::config::config_path()).unwrap_or_default();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!("{host}\n[templates]\ndir = \"{}\"\n", templates.display()),
        )
        .unwrap();
        Templates {
            _dir: dir,
            templates,
            config,
        }
    }

    /// `mu2 run` of `bundle` with this template directory, logging at info.
    fn run(&self, bundle: &TestBundle) -> Output {
        let id = unique_id("tpl");
        let dir = bundle.write();
        let mut child = mu2()
            .env("MU2_CONFIG", &self.config)
            .env("MU2_LOG", "info")
            .env_remove("MU2_TEMPLATES")
            // The template path itself, not a pool's lease.
            .env("MU2_POOL", "off")
            .args(["run", "--id", &id])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = collect(&mut child, b"");
        assert_nothing_left(&id, dir);
        out
    }

    /// The one template built here: its directory.
    fn only(&self) -> PathBuf {
        let all: Vec<PathBuf> = std::fs::read_dir(&self.templates)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !name(p).starts_with('.'))
            .collect();
        assert_eq!(all.len(), 1, "{all:?}");
        all[0].clone()
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const RESTORED: &str = "restored from template";

fn ok(out: &Output) -> String {
    assert_eq!(out.code(), 0, "{}", out.stderr_str());
    out.stdout_str()
}

#[test]
fn two_clones_of_one_template_are_strangers_with_the_hosts_clock() {
    let Some(base) = setup() else { return };
    let t = Templates::new();
    // The first run builds the template (and runs from a clone of it).
    let first = t.run(&TestBundle::new(&base, &["true"]));
    ok(&first);
    assert!(
        first.stderr_str().contains("built"),
        "{}",
        first.stderr_str()
    );
    assert!(
        first.stderr_str().contains(RESTORED),
        "{}",
        first.stderr_str()
    );
    let tpl = t.only();
    // Old enough that its saved clock is visibly behind the host's.
    std::thread::sleep(Duration::from_secs(3));

    let script = "mu2-probe urandom 16; mu2-probe getrandom 16; \
                  cat /proc/sys/kernel/random/boot_id; date +%s; \
                  echo $MARK > /tmp/mark; sleep 3 & sleep 1; ls /tmp; \
                  ps -o args | grep -c '^sleep 3'; wait";
    let clones: Vec<(u64, Output, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = ["one", "two"]
            .iter()
            .map(|mark| {
                let t = &t;
                let base = &base;
                s.spawn(move || {
                    let mut b = TestBundle::new(base, &["sh", "-c", script]);
                    b.config["process"]["env"]
                        .as_array_mut()
                        .unwrap()
                        .push(format!("MARK={mark}").into());
                    let before = now_s();
                    let out = t.run(&b);
                    (before, out, now_s())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = Vec::new();
    for (before, out, after) in &clones {
        assert!(out.stderr_str().contains(RESTORED), "{}", out.stderr_str());
        let text = ok(out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        let date: u64 = lines[3].parse().unwrap();
        // Within a second of the host (date runs after the restore and the
        // reads before it, within the run's own span).
        assert!(
            *before <= date + 1 && date <= *after + 1,
            "guest date {date} outside the host's {before}..={after}: {text}"
        );
        // Its own /tmp and processes only: one mark file, one sleep.
        assert_eq!(lines[4], "mark", "{text}");
        assert_eq!(lines[5], "1", "{text}");
        seen.push((
            lines[0].to_string(),
            lines[1].to_string(),
            lines[2].to_string(),
        ));
    }
    assert_ne!(
        seen[0].0, seen[1].0,
        "/dev/urandom is the same in both clones"
    );
    assert_ne!(seen[0].1, seen[1].1, "getrandom is the same in both clones");
    assert_ne!(seen[0].2, seen[1].2, "boot_id is the same in both clones");
    assert_eq!(seen[0].0.len(), 32);
    // Both came from the same template, still there and unchanged.
    assert_eq!(t.only(), tpl);
}

#[test]
fn a_damaged_template_is_skipped_with_a_log_line_and_rebuilt() {
    let Some(base) = setup() else { return };
    let t = Templates::new();
    let b = TestBundle::new(&base, &["echo", "hello"]);
    assert_eq!(ok(&t.run(&b)), "hello\n");
    let tpl = t.only();
    let meta = std::fs::read(tpl.join("meta.json")).unwrap();

    // A flipped byte in the middle of the state: caught by its checksum,
    // removed, rebuilt, and the request answers from the new one.
    let state = tpl.join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();
    let out = t.run(&b);
    assert_eq!(ok(&out), "hello\n");
    let err = out.stderr_str();
    assert!(err.contains("does not match its checksum"), "{err}");
    assert!(err.contains("built") && err.contains(RESTORED), "{err}");
    assert_ne!(std::fs::read(t.only().join("meta.json")).unwrap(), meta);

    // A state that passes the checks but that QEMU cannot load (its
    // checksum rewritten to match): the restore fails, the template is
    // removed, the request boots cold and still answers.
    let tpl = t.only();
    let state = tpl.join("state");
    let garbage = b"QEVM\0\0\0\x03garbage that is no migration stream".to_vec();
    std::fs::write(&state, &garbage).unwrap();
    let meta_path = tpl.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["state_bytes"] = garbage.len().into();
    meta["state_xxh3"] = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&garbage)).into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let out = t.run(&b);
    assert_eq!(ok(&out), "hello\n");
    let err = out.stderr_str();
    assert!(
        err.contains("failed") && err.contains("template removed, booting"),
        "{err}"
    );
    assert!(!err.contains(RESTORED), "{err}");
    assert!(!tpl.exists(), "the failing template is gone");
    let left: Vec<String> = std::fs::read_dir(&t.templates)
        .unwrap()
        .flatten()
        .map(|e| name(&e.path()))
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The first requests of a shape arrive together on a busy host: one of
/// them builds the template (under its lock), the others boot cold or
/// restore, every one answers, one template results, nothing is left.
#[test]
fn concurrent_first_requests_build_one_template_under_load() {
    let Some(base) = setup() else { return };
    let t = Templates::new();
    let hogs = CpuHogs::start(2);
    let outs: Vec<(usize, Output)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|n| {
                let (t, base) = (&t, &base);
                s.spawn(move || {
                    let b = TestBundle::new(base, &["sh", "-c", &format!("echo {n}")]);
                    (n, t.run(&b))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(hogs);
    let mut builds = 0;
    for (n, out) in &outs {
        assert_eq!(ok(out), format!("{n}\n"));
        let err = out.stderr_str();
        builds += err.matches(": built (").count();
        assert!(
            err.contains(RESTORED) || err.contains("being built by another process; booting"),
            "neither restored nor told to boot cold: {err}"
        );
    }
    assert_eq!(builds, 1, "one build for four first requests");
    t.only();
}
