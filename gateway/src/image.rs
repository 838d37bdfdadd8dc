//! A route's image made ready: unpacked once, and the process the route
//! runs in it mapped to what every VM of the route needs.
//!
//! The process is written as a runtime spec — runc's defaults (mounts,
//! namespaces, masked paths, capabilities) with the image's config and the
//! route's settings on top — and handed to [`mu2_oci::plan`], the same
//! mapping `mu2 run` and the shim use: the rootfs becomes a read-only 9p
//! share that the guest overlays with a tmpfs (a request's writes die with
//! its VM), the memory limit sizes the guest, and anything a VM would
//! refuse is refused here, at start-up, not on the first request.
//!
//! `containerd:REF` images are exported from containerd's content store
//! into an OCI layout first ([`crate::containerd`]).

use std::path::{Path, PathBuf};

use mu2_oci::layout::{self, LayoutError, RunConfig};
use mu2_oci::{BundleError, Plan};

use crate::config::{ImageRef, Route, UserSpec};

/// The PATH a process gets when its image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The guest's hostname.
pub const HOSTNAME: &str = "mu2";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("route {route} (line {line}): cannot load image {image}")]
    Layout {
        route: String,
        line: usize,
        image: String,
        #[source]
        source: LayoutError,
    },
    #[error("route {route} (line {line}): cannot read image containerd:{reference}")]
    Containerd {
        route: String,
        line: usize,
        reference: String,
        #[source]
        source: Box<crate::containerd::ContainerdError>,
    },
    #[error("route {route} (line {line}): no command: the route sets none and the image has no Entrypoint or Cmd")]
    NoCommand { route: String, line: usize },
    #[error("route {route} (line {line}): user {user:?}: {reason}")]
    User {
        route: String,
        line: usize,
        user: String,
        reason: String,
    },
    #[error("route {route} (line {line}): the process cannot run in a vm")]
    Plan {
        route: String,
        line: usize,
        #[source]
        source: BundleError,
    },
}

/// What every request of a route starts from.
#[derive(Debug, Clone)]
pub struct RoutePlan {
    /// The manifest digest of the image.
    pub digest: String,
    pub rootfs: PathBuf,
    /// The VM's shape and the agent's Run, with the image's environment;
    /// each request adds the route's and CGI's.
    pub plan: Plan,
}

fn create_dir(d: &Path) -> std::io::Result<&Path> {
    std::fs::create_dir_all(d)?;
    Ok(d)
}

/// A numeric id, or a name looked up in the `file` (passwd or group
/// format) of the rootfs: field 3 of the line whose field 1 is the name.
fn lookup(rootfs: &Path, file: &str, name: &str) -> Result<(u32, Option<u32>), String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok((n, None));
    }
    let text = std::fs::read_to_string(rootfs.join("etc").join(file))
        .map_err(|e| format!("not numeric, and /etc/{file} of the image cannot be read: {e}"))?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            let id = f[2]
                .parse()
                .map_err(|_| format!("/etc/{file} has a bad id for {name:?}"))?;
            return Ok((id, f[3].parse().ok()));
        }
    }
    Err(format!("no {name:?} in the image's /etc/{file}"))
}

/// `USER[:GROUP]` as uid and gid (a user's primary group when no group
/// is named).
pub fn resolve_user(rootfs: &Path, u: &UserSpec) -> Result<(u32, u32), String> {
    let (uid, primary) = lookup(rootfs, "passwd", &u.user)?;
    let gid = match &u.group {
        Some(g) => lookup(rootfs, "group", g)?.0,
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The runtime spec of the route's process in `rootfs`.
fn spec(
    route: &Route,
    rootfs: &Path,
    cfg: &RunConfig,
) -> Result<oci_spec::runtime::Spec, ImageError> {
    let args: Vec<String> = match &route.command {
        Some(c) => c.clone(),
        None => cfg
            .entrypoint
            .iter()
            .flatten()
            .chain(cfg.cmd.iter().flatten())
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        return Err(ImageError::NoCommand {
            route: route.path.clone(),
            line: route.line,
        });
    }
    let mut env = cfg.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let user = route.user.clone().or_else(|| {
        cfg.user
            .as_deref()
            .filter(|u| !u.is_empty())
            .and_then(|u| UserSpec::parse(u).ok())
    });
    let (uid, gid) = match &user {
        Some(u) => resolve_user(rootfs, u).map_err(|reason| ImageError::User {
            route: route.path.clone(),
            line: route.line,
            user: match &u.group {
                Some(g) => format!("{}:{g}", u.user),
                None => u.user.clone(),
            },
            reason,
        })?,
        None => (0, 0),
    };
    let cwd = cfg
        .working_dir
        .clone()
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    // runc's defaults, with ours on top.
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default())
        .expect("the default spec serializes");
    v["process"]["terminal"] = false.into();
    v["process"]["args"] = args.into();
    v["process"]["env"] = env.into();
    v["process"]["cwd"] = cwd.into();
    v["process"]["user"] = serde_json::json!({"uid": uid, "gid": gid});
    v["process"]["noNewPrivileges"] = true.into();
    v["root"] = serde_json::json!({"path": rootfs, "readonly": false});
    v["hostname"] = HOSTNAME.into();
    if let Some(m) = route.memory {
        v["linux"]["resources"]["memory"] = serde_json::json!({"limit": m});
    }
    serde_json::from_value(v).map_err(|e| ImageError::Plan {
        route: route.path.clone(),
        line: route.line,
        source: BundleError::Malformed {
            path: rootfs.to_path_buf(),
            field: String::new(),
            reason: e.to_string(),
        },
    })
}

/// Where `containerd:REF` images are read from.
#[derive(Debug, Clone)]
pub struct ContainerdSource<'a> {
    pub address: &'a Path,
    pub namespace: &'a str,
}

/// Loads (unpacking once, under `cache`) the route's image and maps its
/// process.
pub fn prepare(
    route: &Route,
    cache: &Path,
    containerd: &ContainerdSource<'_>,
) -> Result<RoutePlan, ImageError> {
    let exported;
    let (dir, tag) = match &route.image {
        ImageRef::Layout { dir, tag } => (dir.as_path(), tag.clone()),
        ImageRef::Containerd { reference } => {
            let err = |source| ImageError::Containerd {
                route: route.path.clone(),
                line: route.line,
                reference: reference.clone(),
                source: Box::new(source),
            };
            exported = tempfile::Builder::new()
                .prefix(".containerd-")
                .tempdir_in(create_dir(cache).map_err(|e| {
                    err(crate::containerd::ContainerdError::Write {
                        reference: reference.clone(),
                        dir: cache.to_path_buf(),
                        source: e,
                    })
                })?)
                .map_err(|e| {
                    err(crate::containerd::ContainerdError::Write {
                        reference: reference.clone(),
                        dir: cache.to_path_buf(),
                        source: e,
                    })
                })?;
            let cached = |digest: &str| {
                digest
                    .strip_prefix("sha256:")
                    .is_some_and(|hex| cache.join(hex).join("rootfs").is_dir())
            };
            crate::containerd::export(
                containerd.address,
                containerd.namespace,
                reference,
                exported.path(),
                &cached,
            )
            .map_err(err)?;
            (exported.path(), Some(reference.clone()))
        }
    };
    let image = layout::open(dir, tag.as_deref(), cache).map_err(|source| ImageError::Layout {
        route: route.path.clone(),
        line: route.line,
        image: match &route.image {
            ImageRef::Containerd { reference } => format!("containerd:{reference}"),
            ImageRef::Layout { .. } => format!(
                "oci:{}{}",
                dir.display(),
                tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
            ),
        },
        source,
    })?;
    let spec = spec(route, &image.rootfs, &image.config)?;
    let bundle = image.rootfs.parent().unwrap_or(&image.rootfs);
    let plan = mu2_oci::plan(&spec, bundle).map_err(|source| ImageError::Plan {
        route: route.path.clone(),
        line: route.line,
        source,
    })?;
    Ok(RoutePlan {
        digest: image.digest,
        rootfs: image.rootfs,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn route(command: Option<Vec<&str>>, user: Option<&str>, memory: Option<u64>) -> Route {
        Route {
            path: "/t".into(),
            image: ImageRef::Layout {
                dir: "/x".into(),
                tag: None,
            },
            command: command.map(|c| c.into_iter().map(String::from).collect()),
            env: BTreeMap::new(),
            user: user.map(|u| UserSpec::parse(u).unwrap()),
            timeout: Duration::from_secs(1),
            memory,
            max_body: 1,
            warm: 0,
            concurrency: 1,
            queue: 0,
            queue_timeout: Duration::from_secs(1),
            line: 7,
        }
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nweb:x:50:\n").unwrap();
        d
    }

    #[test]
    fn the_spec_takes_the_image_config_and_the_route() {
        let r = rootfs();
        let cfg = RunConfig {
            entrypoint: Some(vec!["/bin/sh".into()]),
            cmd: Some(vec!["-c".into(), "echo".into()]),
            env: Some(vec!["A=1".into()]),
            working_dir: Some("/srv".into()),
            user: Some("www".into()),
        };
        let s = spec(&route(None, None, Some(64 << 20)), r.path(), &cfg).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_deref().unwrap(), ["/bin/sh", "-c", "echo"]);
        assert_eq!(p.env().as_deref().unwrap()[0], DEFAULT_PATH);
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!((p.user().uid(), p.user().gid()), (33, 34));
        let plan = mu2_oci::plan(&s, r.path()).unwrap();
        assert_eq!(plan.run.memory_limit_bytes, Some(64 << 20));
        assert_eq!(plan.memory_mib, 64 + mu2_oci::GUEST_OVERHEAD_MIB);
        assert!(plan.shares[0].readonly);
        // The route's command and user win.
        let s = spec(
            &route(Some(vec!["/cgi"]), Some("www:web"), None),
            r.path(),
            &cfg,
        )
        .unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_deref().unwrap(), ["/cgi"]);
        assert_eq!((p.user().uid(), p.user().gid()), (33, 50));
        let s = spec(
            &route(Some(vec!["/cgi"]), Some("7:8"), None),
            r.path(),
            &cfg,
        )
        .unwrap();
        let u = s.process().as_ref().unwrap().user().clone();
        assert_eq!((u.uid(), u.gid()), (7, 8));
    }

    #[test]
    fn missing_commands_and_users_are_errors() {
        let r = rootfs();
        let e = spec(&route(None, None, None), r.path(), &RunConfig::default()).unwrap_err();
        assert!(matches!(e, ImageError::NoCommand { line: 7, .. }), "{e}");
        let e = spec(
            &route(Some(vec!["/x"]), Some("nobody"), None),
            r.path(),
            &RunConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nobody"), "{e}");
        let mut c = route(None, None, None);
        c.image = ImageRef::Containerd {
            reference: "docker.io/x:1".into(),
        };
        let nowhere = ContainerdSource {
            address: Path::new("/nonexistent/containerd.sock"),
            namespace: "default",
        };
        let cache = tempfile::tempdir().unwrap();
        let e = prepare(&c, cache.path(), &nowhere).unwrap_err();
        let text = mu2_microvm::describe_error(&e);
        assert!(text.contains("cannot connect to containerd"), "{text}");
    }
}
