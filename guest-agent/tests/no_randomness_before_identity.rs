//! A template is snapshotted at the agent's Ready, and whatever init and
//! the agent drew from an RNG before the host's Identity is the same in
//! every clone (docs/agent-protocol.md). This keeps the sources of that
//! path — init, and the agent's main, serve loop and port discovery — free
//! of the ways to draw randomness: a crude source scan (code, not
//! comments), meant to make a change on that path think twice.

use std::path::Path;

/// What draws random bytes, or makes a std map whose `RandomState` does.
const FORBIDDEN: &[&str] = &[
    "HashMap",
    "HashSet",
    "RandomState",
    "getrandom",
    "urandom",
    "/dev/random",
    "boot_id",
    "uuid",
    "rand::",
];

fn scan(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for word in FORBIDDEN {
            if code.contains(word) {
                found.push(format!(
                    "{}:{}: {word}: {}",
                    file.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

#[test]
fn init_and_the_agent_before_identity_draw_no_randomness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("../init/src"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    assert!(files.len() >= 5, "init's sources: {files:?}");
    for f in ["main.rs", "lib.rs", "ports.rs"] {
        files.push(root.join("src").join(f));
    }
    let found: Vec<String> = files.iter().flat_map(|f| scan(f)).collect();
    assert!(
        found.is_empty(),
        "randomness on the path to Identity (use BTreeMap/BTreeSet, no RNG):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_sees_what_it_looks_for() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.rs");
    std::fs::write(
        &f,
        "// a HashMap in a comment is fine\nlet m: std::collections::HashMap<u8, u8> = Default::default();\n",
    )
    .unwrap();
    let found = scan(&f);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(":2: HashMap"), "{found:?}");
}
