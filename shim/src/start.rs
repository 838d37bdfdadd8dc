//! The shim binary's `start` action, beyond spawning the server: what
//! containerd 1.6 expects of it.
//!
//! - The bundle's `address` file holds the server's address, exactly,
//!   written atomically before the address is printed: a restarted
//!   containerd reads it to reconnect to a shim that outlived it, and the
//!   server reads it at exit to remove its socket. (containerd-shim 0.11
//!   writes it only when the socket already existed.)
//! - stdin holds the task's options as a protobuf `Any`, or nothing. mu2
//!   honours `shim_cgroup` — field 9 of `containerd.linux.runc.CreateOptions`
//!   (what containerd's `WithShimCgroup` gives a runtime not named
//!   `io.containerd.runc.*`), or field 3 of `containerd.runc.v1.Options` —
//!   by moving the server into that cgroup, as runc's shim does.
//! - The server's `oom_score_adj` is containerd's plus one (capped at 1000),
//!   so the kernel's OOM killer prefers the shim over containerd.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};

/// Most bytes of options read from stdin.
const MAX_OPTIONS: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot write {path}")]
    Address {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the task options on stdin")]
    Options(#[source] io::Error),
    #[error("malformed task options: {0}")]
    Malformed(String),
    #[error("invalid shim cgroup {0:?}: an absolute path without `..`")]
    CgroupPath(String),
    #[error("cannot move the shim (pid {pid}) into cgroup {path}")]
    Cgroup {
        pid: u32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<StartError> for containerd_shim::Error {
    fn from(e: StartError) -> Self {
        containerd_shim::Error::Other(crate::error::describe(&e))
    }
}

/// Writes `address` into `dir/address` atomically (temp file, rename).
pub fn write_address(dir: &Path, address: &str) -> Result<(), StartError> {
    let path = dir.join("address");
    let tmp = dir.join(".address");
    let err = |source| StartError::Address {
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(&tmp, address).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The shim cgroup the options name, if any.
pub fn shim_cgroup(options: &[u8]) -> Result<Option<String>, StartError> {
    if options.is_empty() {
        return Ok(None);
    }
    let any = Any::parse_from_bytes(options).map_err(|e| StartError::Malformed(e.to_string()))?;
    let field = match any.type_url.rsplit('/').next().unwrap_or_default() {
        "containerd.linux.runc.CreateOptions" => 9,
        "containerd.runc.v1.Options" => 3,
        _ => return Ok(None),
    };
    let mut is = CodedInputStream::from_bytes(&any.value);
    let mut found = None;
    let malformed =
        |e: containerd_shim::protos::protobuf::Error| StartError::Malformed(e.to_string());
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(malformed)? {
        if tag >> 3 == field && tag & 7 == 2 {
            found = Some(is.read_string().map_err(malformed)?);
        } else {
            containerd_shim::protos::protobuf::rt::skip_field_for_tag(tag, &mut is)
                .map_err(malformed)?;
        }
    }
    Ok(found.filter(|s| !s.is_empty()))
}

/// Reads the options containerd gave the `start` action.
pub fn read_options(stdin: impl Read) -> Result<Vec<u8>, StartError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_OPTIONS)
        .read_to_end(&mut buf)
        .map_err(StartError::Options)?;
    Ok(buf)
}

/// Moves `pid` into cgroup `path`: on v2 the one hierarchy, on v1 every
/// mounted hierarchy where the cgroup exists (at least one must).
pub fn join_cgroup(pid: u32, path: &str, fs_root: &Path) -> Result<(), StartError> {
    let rel = path.trim_start_matches('/');
    if !path.starts_with('/') || rel.split('/').any(|c| c == ".." || c == ".") {
        return Err(StartError::CgroupPath(path.to_string()));
    }
    let mut dirs = Vec::new();
    if fs_root.join("cgroup.controllers").exists() {
        dirs.push(fs_root.join(rel));
    } else if let Ok(rd) = std::fs::read_dir(fs_root) {
        for e in rd.flatten() {
            let d = e.path().join(rel);
            if d.is_dir() && !e.path().is_symlink() {
                dirs.push(d);
            }
        }
    }
    let mut joined = false;
    let mut last = None;
    for d in dirs {
        match std::fs::write(d.join("cgroup.procs"), pid.to_string()) {
            Ok(()) => joined = true,
            Err(e) => last = Some((d, e)),
        }
    }
    match (joined, last) {
        (true, _) => Ok(()),
        (false, Some((path, source))) => Err(StartError::Cgroup { pid, path, source }),
        (false, None) => Err(StartError::Cgroup {
            pid,
            path: fs_root.join(rel),
            source: io::Error::from(io::ErrorKind::NotFound),
        }),
    }
}

/// Sets `pid`'s oom_score_adj to `parent`'s plus one.
pub fn adjust_oom_score(pid: u32, parent: u32) {
    let read = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/oom_score_adj"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    if let Some(score) = read(parent) {
        let score = (score + 1).min(1000);
        if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), score.to_string()) {
            log::warn!("cannot set the shim's oom_score_adj: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Vec<u8> {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }

    /// A string field as protobuf writes it.
    fn field(n: u32, s: &str) -> Vec<u8> {
        let mut v = vec![((n << 3) | 2) as u8, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn finds_the_shim_cgroup_in_either_options_type() {
        let mut create = vec![0x08, 1]; // no_pivot_root = true
        create.extend(field(9, "/containerd/shim"));
        create.extend(field(13, "/criu"));
        assert_eq!(
            shim_cgroup(&any("containerd.linux.runc.CreateOptions", create)).unwrap(),
            Some("/containerd/shim".into())
        );
        assert_eq!(
            shim_cgroup(&any(
                "types.containerd.io/containerd.runc.v1.Options",
                field(3, "/x")
            ))
            .unwrap(),
            Some("/x".into())
        );
        assert_eq!(
            shim_cgroup(&any("other.Type", field(9, "/y"))).unwrap(),
            None
        );
        assert_eq!(shim_cgroup(&[]).unwrap(), None);
        assert!(shim_cgroup(&[0xff, 0xff, 0xff]).is_err());
        let mut bad = any("containerd.runc.v1.Options", vec![0x1a, 50, b'x']);
        assert!(shim_cgroup(&bad).is_err());
        bad.truncate(1);
        assert!(shim_cgroup(&bad).is_err());
    }

    #[test]
    fn joins_v1_and_v2_hierarchies_and_refuses_odd_paths() {
        let d = tempfile::tempdir().unwrap();
        let v2 = d.path().join("v2");
        std::fs::create_dir_all(v2.join("containerd/shim")).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory").unwrap();
        join_cgroup(42, "/containerd/shim", &v2).unwrap();
        assert_eq!(
            std::fs::read_to_string(v2.join("containerd/shim/cgroup.procs")).unwrap(),
            "42"
        );
        let v1 = d.path().join("v1");
        for h in ["memory", "devices"] {
            std::fs::create_dir_all(v1.join(h).join("containerd/shim")).unwrap();
        }
        std::fs::create_dir_all(v1.join("pids")).unwrap();
        join_cgroup(7, "/containerd/shim", &v1).unwrap();
        assert_eq!(
            std::fs::read_to_string(v1.join("devices/containerd/shim/cgroup.procs")).unwrap(),
            "7"
        );
        assert!(join_cgroup(7, "/nope", &v1).is_err());
        assert!(matches!(
            join_cgroup(7, "/a/../b", &v1),
            Err(StartError::CgroupPath(_))
        ));
        assert!(matches!(
            join_cgroup(7, "rel", &v1),
            Err(StartError::CgroupPath(_))
        ));
    }

    #[test]
    fn the_address_file_is_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        write_address(d.path(), "unix:///run/containerd/s/abc").unwrap();
        write_address(d.path(), "unix:///run/containerd/s/def").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("address")).unwrap(),
            "unix:///run/containerd/s/def"
        );
        assert!(!d.path().join(".address").exists());
    }
}
