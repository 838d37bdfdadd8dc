//! The jail plan: everything the jailer does, decided on the host and sent
//! to `mu2-jailer` as JSON on its stdin.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::config::{JailConfig, Rlimits, IDS_PER_VM};
use super::{JailError, JailRequest, JailResources};

/// The dynamic loader that lists a program's libraries.
pub const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    /// Inside the jail.
    pub target: PathBuf,
    pub dir: bool,
    pub readonly: bool,
    /// Through the VM's user namespace: host ids 0..65535 of the files
    /// become the VM's block, which is what QEMU runs as.
    pub idmap: bool,
    /// A kernel or initrd: must be a regular file with one link.
    pub input: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
    /// Mode 0600 owned by the VM (e.g. /dev/kvm), else 0666 root.
    pub vm_owned: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    /// The host directory the jail's tmpfs is mounted on.
    pub root: PathBuf,
    /// First host uid and gid of the VM's block.
    pub first_id: u32,
    pub id_count: u32,
    pub binds: Vec<Bind>,
    pub devices: Vec<Device>,
    /// Writable tmpfs directories owned by the VM (the QMP socket's).
    pub vm_dirs: Vec<PathBuf>,
    /// The program, inside the jail.
    pub program: PathBuf,
    /// argv, from argv[0].
    pub argv: Vec<String>,
    pub keep_fds: Vec<i32>,
    pub rlimits: Rlimits,
    /// The read end of the owner's lifeline, instead of dying with the
    /// parent: the jailer kills the program when every write end is closed
    /// (a pooled VM, whose owner changes when it is leased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifeline: Option<i32>,
}

/// The writable directory of the VM inside its jail (QMP socket).
pub const RUN_DIR: &str = "/run";

fn inside(p: &Path) -> Result<(), JailError> {
    let ok = p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && p != Path::new("/");
    if ok {
        Ok(())
    } else {
        Err(JailError::Input(format!(
            "jail path {} is not a plain absolute path",
            p.display()
        )))
    }
}

impl Plan {
    pub(crate) fn build(
        cfg: &JailConfig,
        req: &JailRequest,
        program: &Path,
        system: &[PathBuf],
        libs: &[PathBuf],
        res: &JailResources,
    ) -> Result<Plan, JailError> {
        let mut binds = Vec::new();
        let mut seen = BTreeSet::new();
        let mut add = |b: Bind| -> Result<(), JailError> {
            inside(&b.target)?;
            if !seen.insert(b.target.clone()) {
                return Err(JailError::Input(format!(
                    "{} is bound twice in the jail",
                    b.target.display()
                )));
            }
            binds.push(b);
            Ok(())
        };
        for p in system.iter().chain(libs) {
            let source = p.canonicalize().map_err(|source| JailError::Io {
                what: format!("cannot resolve {}", p.display()),
                source,
            })?;
            add(Bind {
                source,
                target: p.clone(),
                dir: false,
                readonly: true,
                idmap: false,
                input: false,
            })?;
        }
        for (host, target) in &req.inputs {
            add(Bind {
                source: host.clone(),
                target: target.clone(),
                dir: false,
                readonly: true,
                idmap: false,
                input: true,
            })?;
        }
        for (host, target, ro) in &req.shares {
            add(Bind {
                source: host.clone(),
                target: target.clone(),
                dir: true,
                readonly: *ro,
                idmap: true,
                input: false,
            })?;
        }
        let mut devices = vec![
            Device {
                path: "/dev/null".into(),
                major: 1,
                minor: 3,
                vm_owned: false,
            },
            Device {
                path: "/dev/zero".into(),
                major: 1,
                minor: 5,
                vm_owned: false,
            },
            Device {
                path: "/dev/urandom".into(),
                major: 1,
                minor: 9,
                vm_owned: false,
            },
        ];
        if req.kvm {
            devices.push(Device {
                path: "/dev/kvm".into(),
                major: 10,
                minor: 232,
                vm_owned: true,
            });
        }
        let mut argv = vec![program.to_string_lossy().into_owned()];
        argv.extend(req.args.iter().cloned());
        Ok(Plan {
            id: req.id.clone(),
            root: res.dir.clone(),
            first_id: res.first_id,
            id_count: IDS_PER_VM,
            binds,
            devices,
            vm_dirs: vec![RUN_DIR.into()],
            program: program.to_path_buf(),
            argv,
            keep_fds: req.keep_fds.clone(),
            rlimits: cfg.rlimits,
            lifeline: req.lifeline,
        })
    }

    /// The plan as `mu2-jailer` reads it on its stdin: JSON, then
    /// [`Plan::validate`]d. Never panics, whatever the bytes.
    pub fn parse(json: &[u8]) -> Result<Plan, JailError> {
        let plan: Plan = serde_json::from_slice(json)
            .map_err(|e| JailError::Input(format!("malformed plan: {e}")))?;
        plan.validate()?;
        Ok(plan)
    }

    /// Re-checks, inside the jailer, what the host side promised.
    pub fn validate(&self) -> Result<(), JailError> {
        if !super::valid_id(&self.id) {
            return Err(JailError::Input(format!("invalid jail id {:?}", self.id)));
        }
        if self.first_id == 0
            || self.id_count == 0
            || self.first_id.checked_add(self.id_count).is_none()
        {
            return Err(JailError::Input(format!(
                "invalid id block {}+{}",
                self.first_id, self.id_count
            )));
        }
        if !self.root.is_absolute() {
            return Err(JailError::Input(format!(
                "jail root {} is relative",
                self.root.display()
            )));
        }
        for b in &self.binds {
            inside(&b.target)?;
            if !b.source.is_absolute() {
                return Err(JailError::Input(format!(
                    "{} is relative",
                    b.source.display()
                )));
            }
        }
        for d in &self.devices {
            inside(&d.path)?;
        }
        for d in &self.vm_dirs {
            inside(d)?;
        }
        inside(&self.program)?;
        if self.argv.is_empty() {
            return Err(JailError::Input("empty argv".into()));
        }
        Ok(())
    }
}

/// The shared libraries (and the loader) `files` need, from the loader's
/// own `--list`; cached per file for the life of the process.
pub fn libraries(files: &[PathBuf]) -> Result<Vec<PathBuf>, JailError> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Vec<PathBuf>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut all = BTreeSet::new();
    for f in files {
        let cached = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(f)
            .cloned();
        let libs = match cached {
            Some(l) => l,
            None => {
                let l = list_libraries(f)?;
                cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(f.clone(), l.clone());
                l
            }
        };
        all.extend(libs);
    }
    for f in files {
        all.remove(f);
    }
    Ok(all.into_iter().collect())
}

fn list_libraries(file: &Path) -> Result<Vec<PathBuf>, JailError> {
    let out = Command::new(LOADER)
        .arg("--list")
        .arg(file)
        .env_clear()
        .output()
        .map_err(|source| JailError::Io {
            what: format!("cannot run {LOADER} --list {}", file.display()),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static program: nothing to load.
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || out.stdout.is_empty()
        {
            return Ok(Vec::new());
        }
        return Err(JailError::Host(format!(
            "{LOADER} --list {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_list(&text))
}

/// Absolute paths in `ld.so --list` output ("name => /path (0x..)" or
/// "/path (0x..)"); the vDSO and unresolved names carry none.
pub fn parse_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = match l.split_once("=>") {
                Some((_, r)) => r.trim(),
                None => l,
            };
            let path = rest.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::JailMode;

    #[test]
    fn loader_output_is_parsed() {
        let t = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n\tlibmissing.so => not found\n";
        assert_eq!(
            parse_list(t),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn jail_paths_must_be_plain() {
        // `.` components vanish in Path::components, so "/a/./b" is "/a/b".
        for ok in ["/guest/vmlinux", "/a/./b"] {
            assert!(inside(Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in ["relative", "/", "/a/../etc"] {
            assert!(inside(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn qemu_libraries_are_found() {
        let l = libraries(&[PathBuf::from("/usr/bin/true")]).unwrap();
        assert!(l.iter().any(|p| p.ends_with("libc.so.6")), "{l:?}");
        assert!(l.iter().any(|p| p == Path::new(LOADER)), "{l:?}");
    }

    fn request(kvm: bool) -> JailRequest {
        JailRequest {
            id: "p1".into(),
            program: "/usr/bin/true".into(),
            args: vec!["-x".into()],
            inputs: vec![("/k".into(), "/guest/vmlinux".into())],
            system_files: vec![],
            shares: vec![("/s".into(), "/shares/rootfs".into(), true)],
            keep_fds: vec![9],
            cgroup_procs: vec![],
            kvm,
            huge_pages: kvm,
            start_deadline: std::time::Duration::from_secs(10),
            lifeline: None,
        }
    }

    fn build(req: &JailRequest) -> Result<Plan, JailError> {
        let JailMode::Jailed(cfg) =
            JailMode::parse(Path::new("/c"), "[jail]\nuid_range = \"100000-165535\"\n").unwrap()
        else {
            panic!()
        };
        let res = JailResources {
            dir: "/run/mu2/jail/p1".into(),
            first_id: 100000,
            claim: None,
            disowned: false,
        };
        let plan = Plan::build(&cfg, req, Path::new("/usr/bin/true"), &[], &[], &res)?;
        // Nothing to release: the directory was never made.
        std::mem::forget(res);
        Ok(plan)
    }

    #[test]
    fn kvm_node_only_when_the_vm_uses_kvm() {
        let devs = |kvm| -> Vec<PathBuf> {
            build(&request(kvm))
                .unwrap()
                .devices
                .into_iter()
                .map(|d| d.path)
                .collect()
        };
        assert_eq!(
            devs(false),
            ["/dev/null", "/dev/zero", "/dev/urandom"].map(PathBuf::from)
        );
        let with = build(&request(true)).unwrap();
        let kvm = with
            .devices
            .iter()
            .find(|d| d.path == Path::new("/dev/kvm"))
            .unwrap();
        assert!(kvm.vm_owned && kvm.major == 10 && kvm.minor == 232);
    }

    #[test]
    fn plan_binds_inputs_read_only_and_shares_id_mapped() {
        let p = build(&request(false)).unwrap();
        p.validate().unwrap();
        let k = p
            .binds
            .iter()
            .find(|b| b.target == Path::new("/guest/vmlinux"))
            .unwrap();
        assert!(k.readonly && k.input && !k.idmap && !k.dir);
        let s = p
            .binds
            .iter()
            .find(|b| b.target == Path::new("/shares/rootfs"))
            .unwrap();
        assert!(s.readonly && s.idmap && s.dir);
        assert_eq!(p.argv, ["/usr/bin/true", "-x"]);
        assert_eq!((p.first_id, p.id_count), (100000, IDS_PER_VM));
        assert_eq!(p.keep_fds, [9]);
    }

    #[test]
    fn a_path_bound_twice_or_outside_plain_paths_is_refused() {
        let mut r = request(false);
        r.shares.push(("/t".into(), "/guest/vmlinux".into(), true));
        assert!(matches!(build(&r), Err(JailError::Input(_))));
        let mut r = request(false);
        r.inputs[0].1 = "/guest/../etc/passwd".into();
        assert!(matches!(build(&r), Err(JailError::Input(_))));
        let mut p = build(&request(false)).unwrap();
        p.id = "..".into();
        assert!(p.validate().is_err());
    }

    /// What `mu2-jailer` reads: a built plan round-trips through JSON, the
    /// fuzz target's seed (a real QEMU plan) parses, and bad bytes are an
    /// input error, not a panic.
    #[test]
    fn plans_parse_as_the_jailer_reads_them() {
        let p = build(&request(true)).unwrap();
        let json = serde_json::to_vec(&p).unwrap();
        assert_eq!(Plan::parse(&json).unwrap(), p);
        let seed = include_bytes!("../../../fuzz/corpus/jail_plan/seed-qemu-plan.json");
        let seed = Plan::parse(seed).unwrap();
        assert_eq!(seed.program, Path::new("/usr/bin/qemu-system-x86_64"));
        for bad in [&b""[..], b"{", b"[]", b"\xff", br#"{"id": 5}"#] {
            assert!(
                matches!(Plan::parse(bad), Err(JailError::Input(_))),
                "{bad:?}"
            );
        }
        let mut bad = p.clone();
        bad.binds[0].target = "/a/../b".into();
        let json = serde_json::to_vec(&bad).unwrap();
        assert!(matches!(Plan::parse(&json), Err(JailError::Input(_))));
    }
}
