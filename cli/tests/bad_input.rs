//! `mu2 run` on bad input and hostile guests, end to end: a malformed
//! bundle is refused before any VM boots (exit 125, one `mu2:` line naming
//! the field, nothing left behind); text the guest wrote (a StartFailed
//! message, its console) reaches our stderr without a raw escape byte.
//! Run under the VM lock like the other end-to-end tests.

mod common;

use common::*;
use serde_json::json;

const ESC: u8 = 0x1b;

/// Runs the bundle under a fresh id; checks nothing is left of it.
fn run_id(b: &TestBundle, name: &str) -> Output {
    let id = unique_id(name);
    let dir = b.write();
    let mut child = spawn(&id, dir, &[]);
    let out = collect(&mut child, b"");
    assert_nothing_left(&id, dir);
    out
}

#[test]
fn malformed_bundles_are_refused_before_boot() {
    let Some(base) = setup() else { return };
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: [(&str, Edit, &str); 4] = [
        (
            "mem",
            Box::new(|c| c["linux"]["resources"]["memory"] = json!({"limit": -5})),
            "linux.resources.memory.limit",
        ),
        (
            "cpus",
            Box::new(|c| c["linux"]["resources"]["cpu"] = json!({"cpus": "0-4294967295"})),
            "linux.resources.cpu.cpus",
        ),
        (
            "env",
            Box::new(|c| c["process"]["env"] = json!([format!("BIG={}", "x".repeat(2 << 20))])),
            "process.env",
        ),
        (
            "cfg",
            Box::new(|c| c["annotations"] = json!({"pad": "x".repeat(5 << 20)})),
            "bytes mu2 reads",
        ),
    ];
    for (name, edit, field) in cases {
        let mut b = TestBundle::new(&base, &["true"]);
        edit(&mut b.config);
        let out = run_id(&b, name);
        let stderr = out.stderr_str();
        assert_eq!(out.code(), 125, "{name}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(lines[0].starts_with("mu2: "), "{name}: {stderr}");
        assert!(
            lines[0].contains(field),
            "{name}: {stderr} does not name {field}"
        );
        assert!(
            lines[0].len() < 1000,
            "{name}: a {} byte line",
            lines[0].len()
        );
        assert!(out.stdout.is_empty(), "{name}");
    }
}

/// The agent quotes what it failed on in its StartFailed message. It
/// quotes a cwd or an argv[0] in Rust's escaped form already, but a mount
/// point raw: a tmpfs mount whose destination is full of escape sequences
/// (and whose size the kernel refuses) comes back with them, and must reach
/// our stderr escaped.
#[test]
fn a_start_failure_quoting_escapes_is_sanitised() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(&base, &["true"]);
    b.config["process"]["cwd"] = json!("/nonexistent-\u{1b}[2J");
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/mnt-\u{1b}]0;pwned\u{7}-\u{1b}[2J-\u{1b}[31mred",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["size=bogus"]
    }));
    let out = run_id(&b, "esc-start");
    let stderr = out.stderr_str();
    assert_eq!(out.code(), 125, "{stderr}");
    assert!(
        !out.stderr.contains(&ESC),
        "raw ESC on stderr: {:?}",
        stderr
    );
    assert!(
        !out.stderr.contains(&0x07),
        "raw BEL on stderr: {:?}",
        stderr
    );
    assert!(
        stderr.contains("/mnt-\\x1b]0;pwned\\x07-\\x1b[2J-\\x1b[31mred"),
        "{stderr}"
    );
}

/// A root process writes escape sequences to the kernel log (which goes to
/// the console), then powers the VM off before it reports an exit: mu2
/// prints the console tail, escaped.
#[test]
fn a_console_tail_full_of_escapes_is_sanitised() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(
        &base,
        &[
            "sh",
            "-c",
            "mknod /dev/kmsg c 1 11 && \
             printf '<0>mu2-escape-test \\033]0;pwned\\007\\033[2J\\033[31mred\\n' >/dev/kmsg && \
             echo o >/proc/sysrq-trigger; sleep 60",
        ],
    );
    // A privileged container: /proc/sysrq-trigger is read-only in the test
    // bundle, as under runc; making and writing /dev/kmsg and the sysrq
    // need these capabilities and the device policy's leave.
    b.config["linux"]["readonlyPaths"] = json!([]);
    let caps = json!([
        "CAP_MKNOD",
        "CAP_SYS_ADMIN",
        "CAP_SYSLOG",
        "CAP_DAC_OVERRIDE"
    ]);
    b.config["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps
    });
    let devices = b.config["linux"]["resources"]["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut devices = devices;
    devices.push(json!({"allow": true, "type": "c", "major": 1, "minor": 11, "access": "rwm"}));
    b.config["linux"]["resources"]["devices"] = json!(devices);
    let out = run_id(&b, "esc-console");
    let stderr = out.stderr_str();
    assert_eq!(out.code(), 125, "{stderr}");
    assert!(
        stderr.contains("ended before its process reported an exit"),
        "{stderr}"
    );
    assert!(
        !out.stderr.contains(&ESC),
        "raw ESC on stderr: {:?}",
        stderr
    );
    assert!(
        !out.stderr.contains(&0x07),
        "raw BEL on stderr: {:?}",
        stderr
    );
    assert!(
        stderr.contains("mu2-escape-test \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred"),
        "{stderr}"
    );
}

/// The smallest memory limit accepted (docs/architecture.md) boots and
/// runs a shell under it; one byte less is refused before boot.
#[test]
fn the_smallest_memory_limit_runs() {
    let Some(base) = setup() else { return };
    let mut b = TestBundle::new(&base, &["sh", "-c", "echo hi from a small guest"]);
    b.config["linux"]["resources"] = json!({"memory": {"limit": mu2_oci::MIN_MEMORY_LIMIT}});
    let out = run_id(&b, "mem-floor");
    assert_eq!(out.code(), 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "hi from a small guest\n");
    b.config["linux"]["resources"] = json!({"memory": {"limit": mu2_oci::MIN_MEMORY_LIMIT - 1}});
    let out = run_id(&b, "mem-below");
    assert_eq!(out.code(), 125);
    assert!(out.stderr_str().contains("linux.resources.memory.limit"));
}
