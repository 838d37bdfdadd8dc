//! `containerd:REF` images: read from containerd's content store through
//! its API (Images.Get, Content.Read over its socket) and written out as an
//! OCI image layout, which [`mu2_oci::layout`] then opens and unpacks like
//! any other — one reader of manifests, one unpacker.
//!
//! Only what is needed is copied: the image's target, the linux/amd64
//! manifest of an index, the config; the layers only when the manifest's
//! rootfs is not already in the cache. Every blob is checked against its
//! digest and size by the layout reader. The export lives in the cache
//! directory and is removed once the image is open.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
use serde::Deserialize;
use tonic::Request;

/// containerd's socket when `[containerd] address` is not set.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// Largest manifest, index or config read whole.
const MAX_JSON_BYTES: i64 = 4 << 20;

const MT_INDEX: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {address}")]
    Connect {
        address: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("containerd ({address}, namespace {namespace}): no image {reference}: {message}")]
    NoImage {
        address: PathBuf,
        namespace: String,
        reference: String,
        message: String,
    },
    #[error("containerd: cannot read blob {digest}: {message}")]
    Read { digest: String, message: String },
    #[error("containerd: blob {digest}: {reason}")]
    Malformed { digest: String, reason: String },
    #[error("cannot write the export of {reference} to {dir}")]
    Write {
        reference: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start an async runtime for containerd's API")]
    Runtime(#[source] std::io::Error),
}

#[derive(Debug, Clone, Deserialize)]
struct Desc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
}

struct Store {
    content: ContentClient<tonic::transport::Channel>,
    namespace: String,
}

impl Store {
    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(ns) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", ns);
        }
        r
    }

    /// Copies blob `digest` (of `size` bytes, at most `max`) into `out`.
    async fn copy(
        &mut self,
        digest: &str,
        size: i64,
        max: Option<i64>,
        out: &mut dyn Write,
    ) -> Result<(), ContainerdError> {
        let read_err = |message: String| ContainerdError::Read {
            digest: digest.to_string(),
            message,
        };
        if max.is_some_and(|m| size > m) || size < 0 {
            return Err(ContainerdError::Malformed {
                digest: digest.to_string(),
                reason: format!("its size {size} is out of bounds"),
            });
        }
        let req = self.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        });
        let mut stream = self
            .content
            .read(req)
            .await
            .map_err(|s| read_err(s.message().to_string()))?
            .into_inner();
        let mut got: i64 = 0;
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| read_err(s.message().to_string()))?
        {
            got += chunk.data.len() as i64;
            if got > size {
                return Err(read_err(format!("more than its {size} bytes")));
            }
            out.write_all(&chunk.data)
                .map_err(|e| read_err(e.to_string()))?;
        }
        Ok(())
    }

    async fn small(&mut self, d: &Desc) -> Result<Vec<u8>, ContainerdError> {
        let mut v = Vec::new();
        self.copy(&d.digest, d.size, Some(MAX_JSON_BYTES), &mut v)
            .await?;
        Ok(v)
    }
}

fn blob_file(dir: &Path, digest: &str) -> Result<PathBuf, ContainerdError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(dir.join("blobs/sha256").join(h))
        }
        _ => Err(ContainerdError::Malformed {
            digest: digest.to_string(),
            reason: "not a sha256 digest".into(),
        }),
    }
}

/// Writes image `reference` of containerd at `address` as an OCI layout at
/// `dir`, tagged `reference`. `cached(manifest digest)`: whether that
/// manifest's rootfs is unpacked already (its layers are then not copied).
pub fn export(
    address: &Path,
    namespace: &str,
    reference: &str,
    dir: &Path,
    cached: &dyn Fn(&str) -> bool,
) -> Result<(), ContainerdError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ContainerdError::Runtime)?;
    rt.block_on(export_async(address, namespace, reference, dir, cached))
}

async fn export_async(
    address: &Path,
    namespace: &str,
    reference: &str,
    dir: &Path,
    cached: &dyn Fn(&str) -> bool,
) -> Result<(), ContainerdError> {
    let channel = containerd_client::connect(address)
        .await
        .map_err(|source| ContainerdError::Connect {
            address: address.to_path_buf(),
            source,
        })?;
    let mut store = Store {
        content: ContentClient::new(channel.clone()),
        namespace: namespace.to_string(),
    };
    let no_image = |message: String| ContainerdError::NoImage {
        address: address.to_path_buf(),
        namespace: namespace.to_string(),
        reference: reference.to_string(),
        message,
    };
    let req = store.request(GetImageRequest {
        name: reference.to_string(),
    });
    let image = ImagesClient::new(channel)
        .get(req)
        .await
        .map_err(|s| no_image(s.message().to_string()))?
        .into_inner()
        .image
        .ok_or_else(|| no_image("no image in the answer".into()))?;
    let target = image
        .target
        .ok_or_else(|| no_image("the image has no target".into()))?;
    let write_err = |source| ContainerdError::Write {
        reference: reference.to_string(),
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(write_err)?;
    let save = |d: &str, bytes: &[u8]| -> Result<(), ContainerdError> {
        std::fs::write(blob_file(dir, d)?, bytes).map_err(write_err)
    };
    let top = Desc {
        media_type: target.media_type.clone(),
        digest: target.digest.clone(),
        size: target.size,
        platform: None,
    };
    let bytes = store.small(&top).await?;
    save(&top.digest, &bytes)?;
    let parse = |d: &Desc, b: &[u8]| -> Result<Manifest, ContainerdError> {
        serde_json::from_slice(b).map_err(|e| ContainerdError::Malformed {
            digest: d.digest.clone(),
            reason: e.to_string(),
        })
    };
    let mut manifest_desc = top.clone();
    let mut manifest = parse(&top, &bytes)?;
    if MT_INDEX.contains(&top.media_type.as_str())
        || MT_INDEX.contains(&manifest.media_type.as_str())
        || !manifest.manifests.is_empty()
    {
        let inner = manifest
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .cloned()
            .ok_or_else(|| ContainerdError::Malformed {
                digest: top.digest.clone(),
                reason: "the index has no linux/amd64 manifest".into(),
            })?;
        let b = store.small(&inner).await?;
        save(&inner.digest, &b)?;
        manifest = parse(&inner, &b)?;
        manifest_desc = inner;
    }
    if let Some(c) = &manifest.config {
        let b = store.small(c).await?;
        save(&c.digest, &b)?;
    }
    if !cached(&manifest_desc.digest) {
        for l in &manifest.layers {
            let path = blob_file(dir, &l.digest)?;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(write_err)?);
            store.copy(&l.digest, l.size, None, &mut f).await?;
            f.flush().map_err(write_err)?;
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": target.media_type,
            "digest": target.digest,
            "size": target.size,
            "annotations": HashMap::from([(mu2_oci::layout::REF_NAME, reference)]),
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).map_err(write_err)?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(write_err)?;
    Ok(())
}
