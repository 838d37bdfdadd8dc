//! `mu2 check` reports the jail, and `mu2 run` fails closed without one:
//! each case points `MU2_CONFIG` at a config file of its own.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use mu2_microvm::jail::config::{CONFIG_ENV, DEFAULT_CONFIG};
use mu2_microvm::jail::JailMode;

/// A config file in a temp dir (removed when dropped).
struct Config {
    dir: tempfile::TempDir,
}

impl Config {
    fn new(text: &str) -> Config {
        let dir = tempfile::Builder::new()
            .prefix("mu2-config-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        Config { dir }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("config.toml")
    }
}

fn check_with(config: &Path) -> (Output, String) {
    let out = mu2()
        .arg("check")
        .env(CONFIG_ENV, config)
        .output()
        .expect("run mu2 check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

/// The report's `jail:` line.
fn jail_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("jail:"))
        .unwrap_or_else(|| panic!("no jail line in:\n{text}"))
}

#[test]
fn a_disabled_jail_is_reported_loudly() {
    let c = Config::new("[jail]\nenabled = false\n");
    let (_, text) = check_with(&c.path());
    let line = jail_line(&text);
    assert!(line.contains("DISABLED"), "{text}");
    assert!(line.contains(&c.path().display().to_string()), "{text}");
    // Nothing else about a jail that does not exist.
    assert!(!text.contains("jailer:"), "{text}");
}

#[test]
fn a_jail_without_a_uid_range_is_reported_and_fails_the_check() {
    for text in [
        "",
        "[jail]\n",
        "# nothing yet\n[jail]\nrlimit_nofile = 1024\n",
    ] {
        let c = Config::new(text);
        let (out, report) = check_with(&c.path());
        let line = jail_line(&report);
        assert!(line.contains("NOT CONFIGURED"), "{text:?}: {report}");
        assert!(line.contains("uid_range"), "{text:?}: {report}");
        assert_eq!(out.status.code(), Some(1), "{text:?}: {report}");
    }
    // No file at all is the same: the jail fails closed.
    let c = Config::new("");
    let missing = c.dir.path().join("absent.toml");
    let (out, report) = check_with(&missing);
    assert!(jail_line(&report).contains("NOT CONFIGURED"), "{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
}

#[test]
fn a_malformed_config_is_reported_and_fails_the_check() {
    let c = Config::new("[jail]\nuid_rnage = \"1000000000-1099999999\"\n");
    let (out, report) = check_with(&c.path());
    let line = jail_line(&report);
    assert!(line.contains("malformed"), "{report}");
    assert!(line.contains("uid_rnage"), "{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
}

#[test]
fn the_installed_config_is_reported_with_its_range() {
    let path = Path::new(DEFAULT_CONFIG);
    let range = match JailMode::load_from(path) {
        Ok(JailMode::Jailed(c)) => c.ids,
        _ => None,
    };
    let Some(range) = range else {
        eprintln!("skipping: {DEFAULT_CONFIG} sets no uid_range (scripts/install writes one)");
        return;
    };
    let (_, text) = check_with(path);
    let line = jail_line(&text);
    assert!(line.starts_with("jail: enabled ("), "{text}");
    assert!(
        line.contains(&format!("uids {}-{}", range.first, range.last)),
        "{text}"
    );
    assert!(text.contains("\njailer: "), "{text}");
    // The policy's syscalls are counted: a policy that allowed nothing
    // would kill QEMU at its first syscall.
    let allowed: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("jail seccomp: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no syscall count in:\n{text}"));
    assert!(allowed > 0, "{text}");
}

#[test]
fn run_without_a_uid_range_fails_closed_and_leaves_nothing() {
    let Some(base) = setup() else { return };
    let c = Config::new("[jail]\n");
    let b = TestBundle::new(&base, &["true"]);
    let dir = b.write();
    let id = unique_id("nojail");
    let mut child = {
        let mut cmd = mu2();
        cmd.arg("run")
            .arg("--id")
            .arg(&id)
            .arg(dir)
            .env(CONFIG_ENV, c.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("spawn mu2")
    };
    let out = collect(&mut child, b"");
    let err = out.stderr_str();
    assert_eq!(out.code(), 125, "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout_str());
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("mu2: "), "{err}");
    assert!(err.contains("uid_range"), "{err}");
    assert!(err.contains(&c.path().display().to_string()), "{err}");

    assert_nothing_left(&id, dir);
    let JailMode::Jailed(cfg) = JailMode::load_from(&c.path()).unwrap() else {
        panic!("an empty [jail] is not a disabled jail")
    };
    let left = mu2_microvm::jail::leftovers(&cfg, &id);
    assert!(left.is_empty(), "jail of {id} left behind: {left:?}");
}
