//! Malformed bundles, one per row: each is refused by `mu2_oci::load` with
//! an error that names the config.json field (or the file) at fault, before
//! anything could start. Fast: no VM, only a temp bundle per row.

use std::path::Path;

use mu2_oci::{load, BundleError, MAX_CONFIG_BYTES};
use serde_json::{json, Value};

/// A config.json like the test bundle's, valid as it is.
fn base() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "true"],
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "mu2",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro"]}
        ],
        "linux": {"resources": {
            "memory": {"limit": 67108864},
            "cpu": {"quota": 100000, "period": 100000},
            "pids": {"limit": 100}
        }}
    })
}

fn bundle_with(config: &[u8]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("rootfs")).unwrap();
    std::fs::create_dir(d.path().join("data")).unwrap();
    std::fs::write(d.path().join("a-file"), "x").unwrap();
    std::fs::write(d.path().join("config.json"), config).unwrap();
    d
}

/// `base()` changed by `edit`.
fn with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut c = base();
    edit(&mut c);
    serde_json::to_vec(&c).unwrap()
}

/// `base()` with a field of its own (ignored, but parsed) nested `depth`
/// arrays deep.
fn nested(depth: usize) -> Vec<u8> {
    let mut text = serde_json::to_string(&base()).unwrap();
    text.pop();
    text.push_str(&format!(
        r#","x-extra":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    ));
    text.into_bytes()
}

fn big(n: usize) -> String {
    "x".repeat(n)
}

/// (case, config.json bytes, what the error must name)
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        // Resources: what the issue found, then their neighbours.
        (
            "negative memory limit",
            with(|c| c["linux"]["resources"]["memory"]["limit"] = json!(-5)),
            "linux.resources.memory.limit",
        ),
        (
            "memory limit below the floor",
            with(|c| c["linux"]["resources"]["memory"]["limit"] = json!(1 << 20)),
            "linux.resources.memory.limit",
        ),
        (
            "memory limit of one byte",
            with(|c| c["linux"]["resources"]["memory"]["limit"] = json!(1)),
            "linux.resources.memory.limit",
        ),
        (
            "memory limit above any VM",
            with(|c| c["linux"]["resources"]["memory"]["limit"] = json!(1i64 << 50)),
            "linux.resources.memory.limit",
        ),
        (
            "memory limit as a string",
            with(|c| c["linux"]["resources"]["memory"]["limit"] = json!("64m")),
            "linux.resources.memory.limit",
        ),
        (
            "memory limit beyond i64",
            with(|c| c["linux"]["resources"]["memory"]["limit"] = json!(1e30)),
            "linux.resources.memory.limit",
        ),
        (
            "negative reservation",
            with(|c| c["linux"]["resources"]["memory"]["reservation"] = json!(-9)),
            "linux.resources.memory.reservation",
        ),
        (
            "swap below the memory limit",
            with(|c| c["linux"]["resources"]["memory"]["swap"] = json!(1 << 20)),
            "linux.resources.memory.swap",
        ),
        (
            "swappiness above 100",
            with(|c| c["linux"]["resources"]["memory"]["swappiness"] = json!(200)),
            "linux.resources.memory.swappiness",
        ),
        (
            "cpuset of 4 billion CPUs",
            with(|c| c["linux"]["resources"]["cpu"]["cpus"] = json!("0-4294967295")),
            "linux.resources.cpu.cpus",
        ),
        (
            "cpuset naming CPU 9000",
            with(|c| c["linux"]["resources"]["cpu"]["cpus"] = json!("9000")),
            "linux.resources.cpu.cpus",
        ),
        (
            "cpuset that is not a list",
            with(|c| c["linux"]["resources"]["cpu"]["cpus"] = json!("all")),
            "linux.resources.cpu.cpus",
        ),
        (
            "cpuset range backwards",
            with(|c| c["linux"]["resources"]["cpu"]["cpus"] = json!("3-1")),
            "linux.resources.cpu.cpus",
        ),
        (
            "cpuset with an empty entry",
            with(|c| c["linux"]["resources"]["cpu"]["cpus"] = json!("0,,1")),
            "linux.resources.cpu.cpus",
        ),
        (
            "memory nodes beyond any host",
            with(|c| c["linux"]["resources"]["cpu"]["mems"] = json!("0-99999")),
            "linux.resources.cpu.mems",
        ),
        (
            "negative CPU quota",
            with(|c| c["linux"]["resources"]["cpu"]["quota"] = json!(-7)),
            "linux.resources.cpu.quota",
        ),
        (
            "CPU quota below 1 ms",
            with(|c| c["linux"]["resources"]["cpu"]["quota"] = json!(10)),
            "linux.resources.cpu.quota",
        ),
        (
            "CPU period of 1 µs",
            with(|c| c["linux"]["resources"]["cpu"]["period"] = json!(1)),
            "linux.resources.cpu.period",
        ),
        (
            "CPU period above 1 s",
            with(|c| c["linux"]["resources"]["cpu"]["period"] = json!(5_000_000)),
            "linux.resources.cpu.period",
        ),
        (
            "negative CPU shares",
            with(|c| c["linux"]["resources"]["cpu"]["shares"] = json!(-1)),
            "linux.resources.cpu.shares",
        ),
        (
            "negative pids limit",
            with(|c| c["linux"]["resources"]["pids"]["limit"] = json!(-3)),
            "linux.resources.pids.limit",
        ),
        (
            "pids as a number",
            with(|c| c["linux"]["resources"]["pids"] = json!(5)),
            "linux.resources.pids",
        ),
        // Sizes: the request must fit in one frame, the file in the bound.
        (
            "2 MiB environment variable",
            with(|c| c["process"]["env"] = json!([format!("A={}", big(2 << 20))])),
            "process.env",
        ),
        (
            "environment of 5000 entries",
            with(|c| {
                c["process"]["env"] =
                    json!((0..5000).map(|i| format!("V{i}=1")).collect::<Vec<_>>())
            }),
            "process.env",
        ),
        (
            "2 MiB of arguments",
            with(|c| c["process"]["args"] = json!(["sh", big(2 << 20)])),
            "process.args",
        ),
        (
            "5000 tmpfs mounts",
            with(|c| {
                c["mounts"] = json!((0..5000).map(|i| json!({"destination": format!("/m{i}"), "type": "tmpfs", "source": "tmpfs"})).collect::<Vec<_>>())
            }),
            "mounts",
        ),
        (
            "mount options of 1.5 MiB",
            with(|c| c["mounts"][1]["options"] = json!([big(3 << 19)])),
            "mounts",
        ),
        (
            "5000 additional groups",
            with(|c| {
                c["process"]["user"]["additionalGids"] = json!((0..5000).collect::<Vec<u32>>())
            }),
            "process.user.additionalGids",
        ),
        (
            "config.json above the maximum",
            with(|c| c["annotations"] = json!({"pad": big(MAX_CONFIG_BYTES as usize)})),
            "config.json is",
        ),
        // The process.
        (
            "no process",
            with(|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("process")
                    .map(drop)
                    .unwrap()
            }),
            "process",
        ),
        (
            "null process",
            with(|c| c["process"] = Value::Null),
            "process",
        ),
        (
            "empty args",
            with(|c| c["process"]["args"] = json!([])),
            "process.args",
        ),
        (
            "empty args[0]",
            with(|c| c["process"]["args"] = json!([""])),
            "process.args",
        ),
        (
            "no args",
            with(|c| {
                c["process"]
                    .as_object_mut()
                    .unwrap()
                    .remove("args")
                    .map(drop)
                    .unwrap()
            }),
            "process.args",
        ),
        (
            "args not strings",
            with(|c| c["process"]["args"] = json!(["sh", 5])),
            "process.args",
        ),
        (
            "NUL in an argument",
            with(|c| c["process"]["args"] = json!(["sh", "a\u{0}b"])),
            "process.args",
        ),
        (
            "env entry without =",
            with(|c| c["process"]["env"] = json!(["NOEQUALS"])),
            "process.env",
        ),
        (
            "NUL in the environment",
            with(|c| c["process"]["env"] = json!(["A=\u{0}"])),
            "process.env",
        ),
        (
            "env as a string",
            with(|c| c["process"]["env"] = json!("PATH=/bin")),
            "process.env",
        ),
        (
            "relative cwd",
            with(|c| c["process"]["cwd"] = json!("tmp")),
            "process.cwd",
        ),
        (
            "empty cwd",
            with(|c| c["process"]["cwd"] = json!("")),
            "process.cwd",
        ),
        (
            "NUL in cwd",
            with(|c| c["process"]["cwd"] = json!("/a\u{0}b")),
            "process.cwd",
        ),
        (
            "uid as a name",
            with(|c| c["process"]["user"]["uid"] = json!("root")),
            "process.user.uid",
        ),
        (
            "negative uid",
            with(|c| c["process"]["user"]["uid"] = json!(-1)),
            "process.user.uid",
        ),
        (
            "uid above u32",
            with(|c| c["process"]["user"]["uid"] = json!(1u64 << 32)),
            "process.user.uid",
        ),
        (
            "user as a string",
            with(|c| c["process"]["user"] = json!("root")),
            "process.user",
        ),
        (
            "terminal as a string",
            with(|c| c["process"]["terminal"] = json!("yes")),
            "process.terminal",
        ),
        (
            "negative console height",
            with(|c| c["process"]["consoleSize"] = json!({"height": -1, "width": 80})),
            "process.consoleSize.height",
        ),
        (
            "noNewPrivileges as a string",
            with(|c| c["process"]["noNewPrivileges"] = json!("true")),
            "process.noNewPrivileges",
        ),
        (
            "unknown rlimit",
            with(|c| {
                c["process"]["rlimits"] = json!([{"type": "RLIMIT_FOO", "hard": 1, "soft": 1}])
            }),
            "process.rlimits[0].type",
        ),
        (
            "rlimit in lower case",
            with(|c| c["process"]["rlimits"] = json!([{"type": "nofile", "hard": 1, "soft": 1}])),
            "process.rlimits[0].type",
        ),
        (
            "rlimit soft above hard",
            with(|c| {
                c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 20}])
            }),
            "process.rlimits[0]",
        ),
        (
            "rlimit set twice",
            with(
                |c| c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 1}, {"type": "RLIMIT_NOFILE", "hard": 20, "soft": 2}]),
            ),
            "process.rlimits[1]",
        ),
        (
            "negative rlimit",
            with(|c| {
                c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": -1, "soft": 1}])
            }),
            "process.rlimits[0].hard",
        ),
        (
            "rlimits as an object",
            with(|c| c["process"]["rlimits"] = json!({"RLIMIT_NOFILE": 1})),
            "process.rlimits",
        ),
        // Mounts.
        (
            "relative mount destination",
            with(|c| c["mounts"][1]["destination"] = json!("tmp")),
            "mounts[1]",
        ),
        (
            "empty mount destination",
            with(|c| c["mounts"][1]["destination"] = json!("")),
            "mounts[1]",
        ),
        (
            "NUL in a mount destination",
            with(|c| c["mounts"][1]["destination"] = json!("/t\u{0}mp")),
            "mounts[].destination",
        ),
        (
            "mount type nfs",
            with(|c| {
                c["mounts"][1] = json!({"destination": "/x", "type": "nfs", "source": "srv:/x"})
            }),
            "mounts[1]",
        ),
        (
            "mount without a type",
            with(|c| c["mounts"][1] = json!({"destination": "/x", "source": "none"})),
            "mounts[1]",
        ),
        (
            "bind mount without a source",
            with(|c| {
                c["mounts"][2]
                    .as_object_mut()
                    .unwrap()
                    .remove("source")
                    .map(drop)
                    .unwrap()
            }),
            "mounts[2]",
        ),
        (
            "bind mount with an empty source",
            with(|c| c["mounts"][2]["source"] = json!("")),
            "mounts[2]",
        ),
        (
            "bind mount of a missing path",
            with(|c| c["mounts"][2]["source"] = json!("/nonexistent-mu2-test")),
            "mounts[2]",
        ),
        (
            "bind mount of a device",
            with(|c| c["mounts"][2]["source"] = json!("/dev/null")),
            "mounts[2]",
        ),
        (
            "NUL in a mount option",
            with(|c| c["mounts"][1]["options"] = json!(["size=1m\u{0}"])),
            "mounts[].options",
        ),
        (
            "mount options not strings",
            with(|c| c["mounts"][1]["options"] = json!([1])),
            "mounts[1].options[0]",
        ),
        (
            "mounts as an object",
            with(|c| c["mounts"] = json!({"/tmp": "tmpfs"})),
            "mounts",
        ),
        (
            "40 bind mounts",
            with(|c| {
                c["mounts"] = json!((0..40).map(|i| json!({"destination": format!("/b{i}"), "type": "bind", "source": if i % 2 == 0 { "data" } else { "rootfs" }, "options": [if i < 20 { "ro" } else { "rw" }, format!("x{i}")]})).collect::<Vec<_>>())
            }),
            "mounts[",
        ),
        // The root.
        (
            "empty root path",
            with(|c| c["root"]["path"] = json!("")),
            "root.path",
        ),
        (
            "missing rootfs",
            with(|c| c["root"]["path"] = json!("nope")),
            "rootfs",
        ),
        (
            "rootfs that is a file",
            with(|c| c["root"]["path"] = json!("a-file")),
            "rootfs",
        ),
        (
            "root as a string",
            with(|c| c["root"] = json!("rootfs")),
            "root",
        ),
        (
            "root without a path",
            with(|c| c["root"] = json!({"readonly": true})),
            "root",
        ),
        // The hostname.
        (
            "hostname of 100 bytes",
            with(|c| c["hostname"] = json!(big(100))),
            "hostname",
        ),
        (
            "NUL in the hostname",
            with(|c| c["hostname"] = json!("a\u{0}b")),
            "hostname",
        ),
        (
            "hostname as a number",
            with(|c| c["hostname"] = json!(7)),
            "hostname",
        ),
        // The document.
        (
            "ociVersion as a number",
            with(|c| c["ociVersion"] = json!(1.0)),
            "ociVersion",
        ),
        ("not JSON", b"{ not json".to_vec(), "config.json"),
        ("empty file", Vec::new(), "config.json"),
        ("a JSON array", b"[]".to_vec(), "config.json"),
        (
            "trailing garbage",
            [serde_json::to_vec(&base()).unwrap(), b" }{".to_vec()].concat(),
            "config.json",
        ),
        (
            "invalid UTF-8 in a string",
            serde_json::to_vec(&base())
                .unwrap()
                .into_iter()
                .flat_map(|b| if b == b'T' { vec![0xff, 0xfe] } else { vec![b] })
                .collect(),
            "process.env",
        ),
        (
            "args nested 200 arrays deep",
            with(|c| {
                c["process"]["args"] =
                    serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100)))
                        .unwrap()
            }),
            "process.args[0]",
        ),
    ]
}

#[test]
fn every_malformed_bundle_gets_an_error_naming_its_field() {
    let mut failures = Vec::new();
    let cases = cases();
    for (name, config, needle) in &cases {
        let b = bundle_with(config);
        match load(b.path()) {
            Ok(plan) => failures.push(format!("{name}: accepted ({:?} MiB)", plan.memory_mib)),
            Err(e) => {
                let text = mu2_microvm::describe_error(&e);
                eprintln!("{name}: {text:.300}");
                if !text.contains(needle) {
                    failures.push(format!("{name}: {text:.300} does not name {needle:?}"));
                }
                if text.len() > 2000 {
                    failures.push(format!("{name}: a {} byte message", text.len()));
                }
            }
        }
        // Nothing was made in the bundle.
        let left: Vec<_> = std::fs::read_dir(b.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, ["a-file", "config.json", "data", "rootfs"], "{name}");
    }
    assert!(cases.len() >= 60, "{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Deep nesting where the spec has no field is skipped without recursion:
/// neither an error nor a stack overflow.
#[test]
fn deep_nesting_in_an_unknown_field_is_harmless() {
    let b = bundle_with(&nested(100_000));
    load(b.path()).unwrap();
}

#[test]
fn the_base_config_is_valid() {
    let b = bundle_with(&serde_json::to_vec(&base()).unwrap());
    let p = load(b.path()).unwrap();
    assert_eq!(p.vcpus, 1);
    // Every mount travels, the ones the agent also provides by default too.
    assert_eq!(p.run.mounts.len(), 3);
}

#[test]
fn bad_bundle_directories_are_named() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        load(&d.path().join("nope")),
        Err(BundleError::NotADirectory(_))
    ));
    assert!(matches!(load(d.path()), Err(BundleError::NoConfig(_))));
    // A directory or a FIFO named config.json is no config (and is never
    // opened, so a FIFO cannot hang the load).
    std::fs::create_dir(d.path().join("config.json")).unwrap();
    assert!(matches!(load(d.path()), Err(BundleError::NoConfig(_))));
    std::fs::remove_dir(d.path().join("config.json")).unwrap();
    nix::unistd::mkfifo(
        &d.path().join("config.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(matches!(load(d.path()), Err(BundleError::NoConfig(_))));
    let f = d.path().join("file");
    std::fs::write(&f, "x").unwrap();
    assert!(matches!(load(&f), Err(BundleError::NotADirectory(_))));
    let _ = Path::new("/");
}

/// What the issue saw at the protocol's edge: a request bigger than a frame
/// is refused with the field and both sizes.
#[test]
fn a_request_too_big_for_a_frame_names_the_field_and_the_sizes() {
    let b = bundle_with(&with(|c| {
        c["process"]["env"] = json!([format!("A={}", big(2 << 20))])
    }));
    match load(b.path()) {
        Err(BundleError::TooLarge {
            field,
            field_size,
            size,
            max,
        }) => {
            assert_eq!(field, "process.env");
            assert!(
                field_size > 2 << 20 && size > field_size,
                "{field_size} {size}"
            );
            assert_eq!(max, mu2_protocol::MAX_FRAME_LEN);
        }
        other => panic!("{other:?}"),
    }
}
