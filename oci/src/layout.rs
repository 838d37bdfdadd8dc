//! OCI image layouts (image-spec `image-layout.md`), as umoci, skopeo and
//! buildah write them: `index.json` → a manifest → its config and layers,
//! unpacked into a rootfs directory.
//!
//! [`open`] picks the manifest by its `org.opencontainers.image.ref.name`
//! (following one nested index, for linux/amd64), checks every blob it
//! reads against its digest and size (the layers while they are unpacked),
//! and unpacks the layers in order, honouring whiteouts (`.wh.NAME` and the
//! opaque `.wh..wh..opq`), into `CACHE/<manifest digest>/rootfs`. The
//! unpack happens in a temporary directory renamed into place when
//! complete, so a crash never leaves half a rootfs that a later start
//! would take; an image already unpacked is reused as it is. Entries are
//! unpacked by the `tar` crate's `unpack_in`, which refuses paths that
//! leave the rootfs (`..`, through symlinks); whiteouts are resolved by the
//! same rule here. Layers may be plain tar or gzip'd tar; zstd is refused.
//!
//! The rootfs is meant to be shared read-only with the VMs that use it.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Largest index, manifest or image config read.
pub const MAX_JSON_BYTES: u64 = 4 << 20;
/// The annotation that names a manifest in an index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const LAYER_TAR: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];
const LAYER_GZIP: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is larger than {max} bytes")]
    TooBig { path: PathBuf, max: u64 },
    #[error("{path} is not valid: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("image layout {dir}: {reason}")]
    NoManifest { dir: PathBuf, reason: String },
    #[error("blob {digest} of {dir} does not match its digest or size")]
    Digest { dir: PathBuf, digest: String },
    #[error("invalid digest {0:?} (only sha256 is supported)")]
    BadDigest(String),
    #[error("layer {digest}: media type {media_type:?} is not supported")]
    MediaType { digest: String, media_type: String },
    #[error("cannot unpack layer {digest} into {dir}")]
    Unpack {
        digest: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest}: entry {path:?} leaves the rootfs")]
    Escape { digest: String, path: String },
    #[error("cannot prepare the image cache {dir}")]
    Cache {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

/// The parts of an image's config a process is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
}

/// An image unpacked and ready to share.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest's digest, `sha256:…`.
    pub digest: String,
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    pub config: RunConfig,
}

/// The hex of a `sha256:` digest, checked.
fn sha256_hex(digest: &str) -> Result<&str, LayoutError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(LayoutError::BadDigest(digest.to_string())),
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, LayoutError> {
    let read_err = |source| LayoutError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = fs::File::open(path).map_err(read_err)?;
    let mut v = Vec::new();
    f.take(max + 1).read_to_end(&mut v).map_err(read_err)?;
    if v.len() as u64 > max {
        return Err(LayoutError::TooBig {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(v)
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, b: &[u8]) -> Result<T, LayoutError> {
    serde_json::from_slice(b).map_err(|e| LayoutError::Malformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, LayoutError> {
    Ok(dir.join("blobs/sha256").join(sha256_hex(digest)?))
}

/// A small blob, read whole and checked against its descriptor.
fn read_blob(dir: &Path, d: &Descriptor) -> Result<(PathBuf, Vec<u8>), LayoutError> {
    let path = blob_path(dir, &d.digest)?;
    let b = read_bounded(&path, MAX_JSON_BYTES)?;
    let hex = format!("{:x}", Sha256::digest(&b));
    if b.len() as u64 != d.size || hex != sha256_hex(&d.digest)? {
        return Err(LayoutError::Digest {
            dir: dir.to_path_buf(),
            digest: d.digest.clone(),
        });
    }
    Ok((path, b))
}

fn is_index(media_type: &str) -> bool {
    media_type == MT_INDEX || media_type == MT_DOCKER_LIST
}

/// The manifest `tag` names in the layout (following one nested index).
fn select(dir: &Path, tag: Option<&str>) -> Result<(Descriptor, Manifest), LayoutError> {
    let index_path = dir.join("index.json");
    let index: Index = parse(&index_path, &read_bounded(&index_path, MAX_JSON_BYTES)?)?;
    let no = |reason: String| LayoutError::NoManifest {
        dir: dir.to_path_buf(),
        reason,
    };
    let found: Vec<&Descriptor> = match tag {
        Some(t) => index
            .manifests
            .iter()
            .filter(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    let desc = match (found.as_slice(), tag) {
        ([one], _) => (*one).clone(),
        ([], Some(t)) => return Err(no(format!("no manifest is tagged {t:?}"))),
        ([], None) => return Err(no("index.json lists no manifest".into())),
        (_, Some(t)) => return Err(no(format!("more than one manifest is tagged {t:?}"))),
        (_, None) => return Err(no("index.json lists several manifests: name a tag".into())),
    };
    let (path, b) = read_blob(dir, &desc)?;
    let m: Manifest = parse(&path, &b)?;
    if !(is_index(&desc.media_type) || is_index(&m.media_type) || !m.manifests.is_empty()) {
        return Ok((desc, m));
    }
    let inner = m
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| no(format!("index {} has no linux/amd64 manifest", desc.digest)))?
        .clone();
    let (path, b) = read_blob(dir, &inner)?;
    Ok((inner, parse(&path, &b)?))
}

/// Opens image `tag` of the layout at `dir`, unpacking it under `cache`
/// unless it already is.
pub fn open(dir: &Path, tag: Option<&str>, cache: &Path) -> Result<Image, LayoutError> {
    let (desc, manifest) = select(dir, tag)?;
    let config_desc = manifest.config.ok_or_else(|| LayoutError::Malformed {
        path: blob_path(dir, &desc.digest).unwrap_or_default(),
        reason: "the manifest has no config".into(),
    })?;
    let (path, b) = read_blob(dir, &config_desc)?;
    let config: ConfigFile = parse(&path, &b)?;
    let hex = sha256_hex(&desc.digest)?;
    let cache_err = |source| LayoutError::Cache {
        dir: cache.to_path_buf(),
        source,
    };
    let done = cache.join(hex);
    let image = Image {
        digest: desc.digest.clone(),
        rootfs: done.join("rootfs"),
        config: config.config.unwrap_or_default(),
    };
    if image.rootfs.is_dir() {
        return Ok(image);
    }
    fs::create_dir_all(cache).map_err(cache_err)?;
    let tmp = cache.join(format!(".tmp-{hex}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(cache_err)?;
    }
    let rootfs = tmp.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(cache_err)?;
    let unpacked = manifest
        .layers
        .iter()
        .try_for_each(|l| unpack_layer(dir, l, &rootfs));
    if let Err(e) = unpacked {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, &done) {
        Ok(()) => Ok(image),
        // Another gateway unpacked the same image first: theirs is as good.
        Err(_) if image.rootfs.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(image)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(cache_err(e))
        }
    }
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// `path` (relative, from a tar entry) under `root`: `Err` if it leaves
/// the root, `Ok(None)` if its parent does not exist (nothing to remove).
#[allow(clippy::result_unit_err)]
fn inside(root: &Path, path: &Path) -> Result<Option<PathBuf>, ()> {
    let mut out = root.to_path_buf();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(()),
        }
    }
    let Some(parent) = out.parent() else {
        return Err(());
    };
    if fs::symlink_metadata(parent).is_err() {
        return Ok(None);
    }
    // The parent must not be reached through a symlink out of the root.
    let parent = parent.canonicalize().map_err(|_| ())?;
    let root = root.canonicalize().map_err(|_| ())?;
    if parent.starts_with(root) {
        Ok(Some(out))
    } else {
        Err(())
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn unpack_layer(dir: &Path, layer: &Descriptor, rootfs: &Path) -> Result<(), LayoutError> {
    let digest = layer.digest.clone();
    let path = blob_path(dir, &digest)?;
    let file = fs::File::open(&path).map_err(|source| LayoutError::Read {
        path: path.clone(),
        source,
    })?;
    let mut hashing = Hashing {
        inner: io::BufReader::new(file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let unpack_err = |source| LayoutError::Unpack {
        digest: digest.clone(),
        dir: rootfs.to_path_buf(),
        source,
    };
    let mt = layer.media_type.as_str();
    if LAYER_TAR.contains(&mt) {
        unpack_tar(&mut hashing, rootfs, &digest)?;
    } else if LAYER_GZIP.contains(&mt) {
        let mut gz = flate2::read::GzDecoder::new(&mut hashing);
        unpack_tar(&mut gz, rootfs, &digest)?;
        io::copy(&mut gz, &mut io::sink()).map_err(unpack_err)?;
    } else {
        return Err(LayoutError::MediaType {
            digest,
            media_type: mt.to_string(),
        });
    }
    // The rest of the blob (tar's padding) counts towards its digest.
    io::copy(&mut hashing, &mut io::sink()).map_err(unpack_err)?;
    let hex = format!("{:x}", hashing.hash.finalize());
    if hashing.bytes != layer.size || hex != sha256_hex(&digest)? {
        return Err(LayoutError::Digest {
            dir: dir.to_path_buf(),
            digest,
        });
    }
    Ok(())
}

fn unpack_tar<R: Read>(r: R, rootfs: &Path, digest: &str) -> Result<(), LayoutError> {
    let unpack_err = |source| LayoutError::Unpack {
        digest: digest.to_string(),
        dir: rootfs.to_path_buf(),
        source,
    };
    let escape = |p: &Path| LayoutError::Escape {
        digest: digest.to_string(),
        path: p.display().to_string(),
    };
    let mut archive = tar::Archive::new(r);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // What this layer itself put in place: an opaque directory hides only
    // the layers below.
    let mut ours: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(unpack_err)? {
        let mut entry = entry.map_err(unpack_err)?;
        let path = entry.path().map_err(unpack_err)?.into_owned();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == ".wh..wh..opq" {
            let parent = path.parent().unwrap_or(Path::new(""));
            let Some(target) = inside(rootfs, &parent.join("x")).map_err(|()| escape(&path))?
            else {
                continue;
            };
            let target = target.parent().expect("joined above").to_path_buf();
            if let Ok(rd) = fs::read_dir(&target) {
                for e in rd.flatten() {
                    let rel = parent.join(e.file_name());
                    if !ours.contains(&rel) {
                        remove_any(&e.path()).map_err(unpack_err)?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let victim = path.with_file_name(hidden);
            if let Some(target) = inside(rootfs, &victim).map_err(|()| escape(&path))? {
                remove_any(&target).map_err(unpack_err)?;
            }
            continue;
        }
        let unpacked = entry.unpack_in(rootfs).map_err(unpack_err)?;
        if !unpacked {
            return Err(escape(&path));
        }
        let clean: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        ours.insert(clean);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Writes an image layout of `layers` (each a list of (path, content
    /// or None for a directory)) tagged `tag`.
    struct Layout {
        dir: tempfile::TempDir,
    }

    fn blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
        let hex = format!("{:x}", Sha256::digest(bytes));
        let p = dir.join("blobs/sha256");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len() as u64)
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            match content {
                Some(c) => {
                    let mut h = header(tar::EntryType::Regular, c.len() as u64);
                    b.append_data(&mut h, path, *c).unwrap();
                }
                None => {
                    let mut h = header(tar::EntryType::Directory, 0);
                    b.append_data(&mut h, path, io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    impl Layout {
        fn new(layers: &[Vec<u8>], tag: &str, config: serde_json::Value) -> Layout {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let layers: Vec<_> = layers
                .iter()
                .map(|l| {
                    let (digest, size) = blob(d, l);
                    json!({"mediaType": LAYER_TAR[0], "digest": digest, "size": size})
                })
                .collect();
            let (cd, cs) = blob(d, config.to_string().as_bytes());
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                "layers": layers,
            });
            let (md, ms) = blob(d, manifest.to_string().as_bytes());
            let index = json!({
                "schemaVersion": 2,
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": md, "size": ms, "annotations": {REF_NAME: tag}}],
            });
            fs::write(d.join("index.json"), index.to_string()).unwrap();
            fs::write(d.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
            Layout { dir }
        }
    }

    #[test]
    fn layers_unpack_in_order_with_whiteouts() {
        let l1 = tar_of(&[
            ("bin", None),
            ("bin/a", Some(b"one")),
            ("bin/gone", Some(b"x")),
            ("etc", None),
            ("etc/old", Some(b"old")),
        ]);
        let l2 = tar_of(&[
            ("bin/a", Some(b"two")),
            ("bin/.wh.gone", Some(b"")),
            ("etc/new", Some(b"new")),
            ("etc/.wh..wh..opq", Some(b"")),
        ]);
        let config = json!({"architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/a"], "WorkingDir": "/tmp", "User": "1:2"},
            "rootfs": {"type": "layers", "diff_ids": []}});
        let layout = Layout::new(&[l1, l2], "v1", config);
        let cache = tempfile::tempdir().unwrap();
        let img = open(layout.dir.path(), Some("v1"), cache.path()).unwrap();
        let r = &img.rootfs;
        assert_eq!(fs::read(r.join("bin/a")).unwrap(), b"two");
        assert!(!r.join("bin/gone").exists());
        assert!(
            !r.join("etc/old").exists(),
            "the opaque dir hides lower layers"
        );
        assert_eq!(fs::read(r.join("etc/new")).unwrap(), b"new");
        assert_eq!(img.config.cmd.as_deref().unwrap(), ["/bin/a"]);
        assert_eq!(img.config.env.as_deref().unwrap(), ["PATH=/bin"]);
        assert_eq!(img.config.user.as_deref(), Some("1:2"));
        assert_eq!(img.config.working_dir.as_deref(), Some("/tmp"));
        assert!(img.rootfs.starts_with(cache.path()));
        assert!(img
            .rootfs
            .to_string_lossy()
            .contains(sha256_hex(&img.digest).unwrap()));
        // Opened again: the same directory, not unpacked anew.
        fs::write(r.join("marker"), b"").unwrap();
        let again = open(layout.dir.path(), Some("v1"), cache.path()).unwrap();
        assert_eq!(again.rootfs, img.rootfs);
        assert!(again.rootfs.join("marker").exists());
        // One manifest: found without a tag too.
        let untagged = open(layout.dir.path(), None, cache.path()).unwrap();
        assert_eq!(untagged.digest, img.digest);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let cache = tempfile::tempdir().unwrap();
        let layout = Layout::new(&[tar_of(&[("a", Some(b"1"))])], "v1", json!({}));
        let e = open(layout.dir.path(), Some("v2"), cache.path()).unwrap_err();
        assert!(
            e.to_string().contains("no manifest is tagged \"v2\""),
            "{e}"
        );
        // A layer whose bytes changed.
        let blobs = layout.dir.path().join("blobs/sha256");
        let mut tampered = false;
        for e in fs::read_dir(&blobs).unwrap().flatten() {
            let b = fs::read(e.path()).unwrap();
            if b.len() > 1000 {
                let mut b = b;
                b[600] ^= 1;
                fs::write(e.path(), b).unwrap();
                tampered = true;
            }
        }
        assert!(tampered);
        let e = open(layout.dir.path(), Some("v1"), cache.path()).unwrap_err();
        assert!(matches!(e, LayoutError::Digest { .. }), "{e}");
        // Nothing half-unpacked is left for a later open.
        let left: Vec<_> = fs::read_dir(cache.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
        let e = open(Path::new("/nonexistent-mu2-layout"), None, cache.path()).unwrap_err();
        assert!(matches!(e, LayoutError::Read { .. }), "{e}");
    }

    #[test]
    fn whiteouts_cannot_reach_outside() {
        let cache = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("victim"), b"keep").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut h, "link", outside.path()).unwrap();
        let mut h = header(tar::EntryType::Regular, 0);
        b.append_data(&mut h, "link/.wh.victim", io::empty())
            .unwrap();
        let layout = Layout::new(&[b.into_inner().unwrap()], "v1", json!({}));
        let e = open(layout.dir.path(), Some("v1"), cache.path()).unwrap_err();
        assert!(matches!(e, LayoutError::Escape { .. }), "{e}");
        assert!(outside.path().join("victim").exists());
    }
}
