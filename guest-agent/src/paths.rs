//! Resolving a container path inside the container root.
//!
//! The agent mounts and reads files (`/etc/passwd`) in the container root
//! before the process chroots into it. A naive `root.join(path)` would
//! follow an image's absolute symlink (`/var/run -> /run`) out to the
//! guest's own filesystem; [`resolve`] walks the path one component at a
//! time and re-roots every symlink at the container root, the way the
//! process will see it once chrooted.

use std::io;
use std::path::{Component, Path, PathBuf};

/// The kernel's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("too many levels of symbolic links resolving {path} in the container root")]
    Loop { path: String },
    #[error("cannot read symlink {path}")]
    ReadLink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Resolves `path` (absolute within the container) to a host path under
/// `root`, following symlinks as if `root` were `/`. Components that do not
/// exist yet are appended as they are.
pub fn resolve(root: &Path, path: &str) -> Result<PathBuf, PathError> {
    let mut pending: Vec<String> = components(path);
    pending.reverse();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = join(root, &resolved).join(&comp);
        let is_link = std::fs::symlink_metadata(&candidate)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            resolved.push(comp);
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINKS {
            return Err(PathError::Loop { path: path.into() });
        }
        let target = std::fs::read_link(&candidate).map_err(|source| PathError::ReadLink {
            path: candidate.clone(),
            source,
        })?;
        let target = target.to_string_lossy();
        if target.starts_with('/') {
            resolved.clear();
        }
        for c in components(&target).into_iter().rev() {
            pending.push(c);
        }
    }
    Ok(join(root, &resolved))
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn join(root: &Path, comps: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(c);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let root = std::env::temp_dir().join(format!("mu2-paths-{}", std::process::id()));
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        assert_eq!(resolve(&root, "/var/run/x").unwrap(), root.join("run/x"));
        assert_eq!(resolve(&root, "/bin/sh").unwrap(), root.join("usr/bin/sh"));
        assert_eq!(
            resolve(&root, "/usr/escape/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(resolve(&root, "/../../a/./b").unwrap(), root.join("a/b"));
        assert_eq!(resolve(&root, "/").unwrap(), root);
        assert!(matches!(
            resolve(&root, "/loop/x"),
            Err(PathError::Loop { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
