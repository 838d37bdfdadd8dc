//! The guest is hostile: a replacement agent (test-bundles/hostile-agent,
//! in an initramfs of the test's own) breaks the protocol in every way we
//! know, and `mu2 run` must end it within its deadlines, stay bounded in
//! memory, say what happened in one line, and leave nothing behind. Its
//! modes answer the host's Identity where they are meant to misbehave
//! later; two misbehave at the Identity itself, and one (`stale-clock`)
//! plays a VM restored from an old template, whose clock the Identity
//! must set before the container runs.
//!
//! The deadlines are the operator's `[timeouts]`: the tests run under a
//! config file of their own with short ones (ready 20 s, reply 5 s, drain
//! 3 s) beside the host's jail settings.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{assert_nothing_left, collect, setup, unique_id, TestBundle};

const READY: u64 = 20;
const REPLY: u64 = 5;
const DRAIN: u64 = 3;

/// One newc cpio entry.
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        0u32, // ino
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn guest_dir() -> PathBuf {
    std::env::var_os("MU2_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(mu2_microvm::guest::DEFAULT_GUEST_DIR))
}

/// A guest image whose agent is the hostile one in `mode`: the real kernel,
/// the real initramfs with a second archive appended (the kernel unpacks
/// them in order, so the later `/sbin/mu2-guest-agent` wins).
fn hostile_guest(mode: &str) -> PathBuf {
    let base = guest_dir();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-guest-{mode}"));
    std::fs::create_dir_all(&dir).unwrap();
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    let kernel = KERNEL.get_or_init(|| {
        let k = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-vmlinux");
        std::fs::copy(base.join("vmlinux"), &k).unwrap();
        k
    });
    // The jail wants a kernel with one link: a copy per image.
    std::fs::copy(kernel, dir.join("vmlinux")).unwrap();
    if base.join("manifest").exists() {
        std::fs::copy(base.join("manifest"), dir.join("manifest")).unwrap();
    }
    let agent = std::env::var_os("MU2_TEST_BUNDLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/bundles"))
        .join("hostile-agent");
    let agent = std::fs::read(&agent).unwrap_or_else(|e| {
        panic!(
            "no hostile agent at {} (scripts/build-test-bundles): {e}",
            agent.display()
        )
    });
    let mut initrd = std::fs::read(base.join("initrd.img")).unwrap();
    while !initrd.len().is_multiple_of(4) {
        initrd.push(0);
    }
    let mut extra = Vec::new();
    cpio_entry(&mut extra, "etc", 0o040755, b"");
    cpio_entry(&mut extra, "etc/mu2-hostile", 0o100644, mode.as_bytes());
    cpio_entry(&mut extra, "sbin", 0o040755, b"");
    cpio_entry(&mut extra, "sbin/mu2-guest-agent", 0o100755, &agent);
    cpio_entry(&mut extra, "TRAILER!!!", 0, b"");
    initrd.extend_from_slice(&extra);
    std::fs::write(dir.join("initrd.img"), initrd).unwrap();
    dir
}

/// The host's config with short deadlines.
fn config() -> &'static Path {
    static CONFIG: OnceLock<PathBuf> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let host = mu2_microvm::jail::config::config_path();
        let text = std::fs::read_to_string(&host).unwrap_or_default();
        // Our [timeouts] replace any of the host's.
        let mut kept = String::new();
        let mut skipping = false;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                skipping = t == "[timeouts]";
            }
            if !skipping {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        kept.push_str(&format!(
            "\n[timeouts]\nready = \"{READY}s\"\nreply = \"{REPLY}s\"\ndrain = \"{DRAIN}s\"\n"
        ));
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-config.toml");
        std::fs::write(&p, kept).unwrap();
        p
    })
}

struct Hostile {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
    peak_rss_kib: u64,
}

/// Runs `true` in a VM whose agent is hostile in `mode`.
fn run_hostile(mode: &str) -> Option<Hostile> {
    run_hostile_with(mode, &["true"])
}

/// Runs `args` in a VM whose agent is hostile in `mode`.
fn run_hostile_with(mode: &str, args: &[&str]) -> Option<Hostile> {
    let base = setup()?;
    let guest = hostile_guest(mode);
    let bundle = TestBundle::new(&base, args);
    let dir = bundle.write();
    let id = unique_id(&format!("hostile-{mode}"));
    let start = Instant::now();
    let mut child = common::mu2()
        .arg("run")
        .arg("--id")
        .arg(&id)
        .arg("--guest-dir")
        .arg(&guest)
        .arg(dir)
        .env("MU2_CONFIG", config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mu2");
    // mu2's own memory, sampled while it deals with the guest.
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if status.contains("State:\tZ") {
                break;
            }
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    });
    let out = collect(&mut child, b"");
    let took = start.elapsed();
    let peak_rss_kib = sampler.join().unwrap();
    assert_nothing_left(&id, dir);
    Some(Hostile {
        code: out.code(),
        stdout: out.stdout_str(),
        stderr: out.stderr_str(),
        took,
        peak_rss_kib,
    })
}

fn assert_ended(h: &Hostile, want: &str, within: Duration) {
    assert_eq!(h.code, 125, "{}", h.stderr);
    // One line says what happened (log lines and a console tail may
    // surround it).
    assert!(
        h.stderr
            .lines()
            .any(|l| l.starts_with("mu2: ") && l.contains(want)),
        "want a \"mu2: …{want}…\" line in: {}",
        h.stderr
    );
    assert!(
        h.took < within,
        "took {:?}, more than {within:?}: {}",
        h.took,
        h.stderr
    );
}

/// Boot (a TCG boot on a loaded host) plus `deadline`, with room to kill.
fn bound(deadline: u64) -> Duration {
    Duration::from_secs(READY + deadline + 15)
}

#[test]
fn a_ready_frame_trickled_byte_by_byte_does_not_stretch_the_deadline() {
    // The whole frame would arrive after ~35 s: a per-read timeout would
    // let it through; the deadline is on the frame.
    let Some(h) = run_hostile("stall-ready") else {
        return;
    };
    assert_ended(&h, &format!("was not ready within {READY}s"), bound(0));
}

#[test]
fn an_agent_that_never_answers_its_identity_is_killed_at_the_reply_deadline() {
    let Some(h) = run_hostile("silent-after-ready") else {
        return;
    };
    assert_ended(
        &h,
        &format!("did not answer Identified after Identity within {REPLY}s"),
        bound(REPLY),
    );
}

#[test]
fn an_agent_that_cannot_apply_its_identity_runs_nothing() {
    let Some(h) = run_hostile("refuse-identity") else {
        return;
    };
    assert_ended(
        &h,
        "did not take its identity: its agent could not apply it (Setup): cannot apply the host's identity",
        bound(REPLY),
    );
}

#[test]
fn a_guest_clock_years_behind_is_set_to_the_hosts_before_the_container_runs() {
    // A VM restored from an old template has the template's clock; the
    // hostile agent plays one (2001) and hands over to the real agent, so
    // without the Identity's clock step `date` says 2001.
    let before = now_ns();
    let Some(h) = run_hostile_with("stale-clock", &["date", "+%s"]) else {
        return;
    };
    let after = now_ns();
    assert_eq!(h.code, 0, "{}", h.stderr);
    let guest: u64 = h
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{:?}", h.stdout));
    assert!(
        before / 1_000_000_000 <= guest + 1 && guest <= after / 1_000_000_000 + 1,
        "guest clock {guest} s, host {} to {} s",
        before / 1_000_000_000,
        after / 1_000_000_000
    );
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn an_agent_silent_after_run_is_killed_at_the_reply_deadline() {
    let Some(h) = run_hostile("silent-after-run") else {
        return;
    };
    assert_ended(
        &h,
        &format!("did not answer Prepared after Run within {REPLY}s"),
        bound(REPLY),
    );
}

#[test]
fn a_flood_of_frames_is_cut_off_and_memory_stays_bounded() {
    let Some(h) = run_hostile("flood") else {
        return;
    };
    assert_ended(
        &h,
        "sent Prepared where Started after Start was expected",
        bound(REPLY),
    );
    assert!(
        h.peak_rss_kib < 64 * 1024,
        "mu2 grew to {} KiB under a flood",
        h.peak_rss_kib
    );
}

#[test]
fn an_oversized_frame_breaks_the_protocol_before_anything_is_allocated() {
    let Some(h) = run_hostile("oversized") else {
        return;
    };
    assert_ended(&h, "exceeds the maximum", bound(REPLY));
    assert!(h.peak_rss_kib < 64 * 1024, "{} KiB", h.peak_rss_kib);
}

#[test]
fn an_exit_out_of_turn_is_refused() {
    let Some(h) = run_hostile("exit-out-of-turn") else {
        return;
    };
    assert_ended(
        &h,
        "sent Exit (status 0) where Prepared after Run was expected",
        bound(REPLY),
    );
}

#[test]
fn a_forged_exit_counting_bytes_never_sent_is_cut_short() {
    let Some(h) = run_hostile("forge-exit") else {
        return;
    };
    assert_ended(
        &h,
        "was cut short: 10 of 1073741824 bytes arrived",
        bound(REPLY + DRAIN),
    );
}

#[test]
fn a_guest_without_a_timer_is_booted_again_then_refused() {
    let Some(h) = run_hostile("no-timer") else {
        return;
    };
    // Three boots, each powering off at once.
    assert_ended(
        &h,
        "had no timer after 3 boots",
        Duration::from_secs(3 * READY + 15),
    );
}
