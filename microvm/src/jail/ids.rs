//! Claiming a block of host ids for one VM.
//!
//! A claim is an `flock`ed file `<claim_dir>/<first uid>` whose content names
//! the VM. The lock, not the file, is the claim: the open file is inherited
//! by the jailer, which lives exactly as long as QEMU, so a crashed owner
//! releases its block when its VMM dies, with nobody cleaning up. Dropping a
//! claim unlinks the file; a file left by a crash is unlocked, so the next
//! launch that needs the block takes it over.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::config::IdRange;
use super::JailError;

#[derive(Debug)]
pub struct IdClaim {
    /// First host uid (and gid) of the block.
    pub first: u32,
    path: PathBuf,
    file: File,
}

impl IdClaim {
    /// Claims a free block of `range` for VM `owner`.
    pub fn acquire(range: IdRange, dir: &Path, owner: &str) -> Result<IdClaim, JailError> {
        super::safe_dir(dir)?;
        let blocks = range.blocks();
        // Start where the VM's name hashes to, so that concurrent launches
        // rarely contend for the same file.
        let start = owner
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % blocks;
        for i in 0..blocks {
            let first = range.block((start + i) % blocks);
            if let Some(claim) = Self::try_block(dir, first, owner)? {
                return Ok(claim);
            }
        }
        Err(JailError::NoFreeIds {
            range: format!("{}-{}", range.first, range.last),
            blocks,
        })
    }

    fn try_block(dir: &Path, first: u32, owner: &str) -> Result<Option<IdClaim>, JailError> {
        let path = dir.join(first.to_string());
        let io_err = |source| JailError::Io {
            what: format!("claim file {}", path.display()),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err)?;
        if !super::sys::try_lock(file.as_raw_fd()).map_err(io_err)? {
            return Ok(None);
        }
        // Another owner may have unlinked the file between our open and our
        // lock; then our lock guards nothing.
        let ours = file.metadata().map_err(io_err)?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
            _ => return Ok(None),
        }
        let mut f = &file;
        f.set_len(0).map_err(io_err)?;
        f.write_all(owner.as_bytes()).map_err(io_err)?;
        Ok(Some(IdClaim { first, path, file }))
    }

    /// The claim's open file, to be inherited by the jailer.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for IdClaim {
    fn drop(&mut self) {
        // Unlink while still holding the lock: a waiter that opened the old
        // file sees it unlinked and moves on.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove claim {}: {e}", self.path.display());
            }
        }
    }
}

/// Whether the block starting at `first` is claimed by a live VMM.
pub fn is_claimed(dir: &Path, first: u32) -> bool {
    let path = dir.join(first.to_string());
    let Ok(f) = File::open(&path) else {
        return false;
    };
    !matches!(super::sys::try_lock(f.as_raw_fd()), Ok(true))
}

/// Removes the unlocked claim files whose VM name `matches` (left by a
/// crashed owner); returns how many.
pub fn remove_left_behind(dir: &Path, matches: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let path = e.path();
        let Ok(f) = File::open(&path) else { continue };
        if !matches(&std::fs::read_to_string(&path).unwrap_or_default()) {
            continue;
        }
        if matches!(super::sys::try_lock(f.as_raw_fd()), Ok(true))
            && std::fs::remove_file(&path).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// A claim whose owner is gone (its file unlocked), now locked by us; its
/// VM name, and the means to remove it.
pub struct StaleClaim {
    pub owner: String,
    path: PathBuf,
    _file: File,
}

impl StaleClaim {
    /// Unlinks the claim file (still locked by us).
    pub fn remove(self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }
}

/// Claims in `dir` that no live VMM holds.
pub fn stale_claims(dir: &Path) -> Vec<StaleClaim> {
    let mut stale = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        else {
            continue;
        };
        if !matches!(super::sys::try_lock(f.as_raw_fd()), Ok(true)) {
            continue;
        }
        let owner = std::fs::read_to_string(&path).unwrap_or_default();
        // An empty file is being claimed right now (created, not yet
        // written): leave it to its claimer.
        if owner.is_empty() {
            continue;
        }
        stale.push(StaleClaim {
            owner,
            path,
            _file: f,
        });
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(blocks: u32) -> IdRange {
        IdRange {
            first: 200_000,
            last: 200_000 + blocks * super::super::config::IDS_PER_VM - 1,
        }
    }

    #[test]
    fn blocks_are_exclusive_and_released_on_drop() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let a = IdClaim::acquire(range(2), dir.path(), "a").unwrap();
        let b = IdClaim::acquire(range(2), dir.path(), "b").unwrap();
        assert_ne!(a.first, b.first);
        assert!(is_claimed(dir.path(), a.first));
        let e = IdClaim::acquire(range(2), dir.path(), "c").unwrap_err();
        assert!(matches!(e, JailError::NoFreeIds { blocks: 2, .. }), "{e}");
        let freed = a.first;
        drop(a);
        assert!(!is_claimed(dir.path(), freed));
        assert!(!dir.path().join(freed.to_string()).exists());
        let c = IdClaim::acquire(range(2), dir.path(), "c").unwrap();
        assert_eq!(c.first, freed);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(freed.to_string())).unwrap(),
            "c"
        );
    }

    #[test]
    fn a_dead_owners_claim_is_stale_and_a_live_one_is_not() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let live = IdClaim::acquire(range(3), dir.path(), "live").unwrap();
        // What a SIGKILLed owner leaves: the file, no lock.
        std::fs::write(dir.path().join("9999"), "dead").unwrap();
        let stale = stale_claims(dir.path());
        assert_eq!(
            stale.iter().map(|s| s.owner.as_str()).collect::<Vec<_>>(),
            ["dead"]
        );
        assert!(stale.into_iter().all(StaleClaim::remove));
        assert!(!dir.path().join("9999").exists());
        assert!(is_claimed(dir.path(), live.first));
        assert_eq!(remove_left_behind(dir.path(), |o| o == "live"), 0);
    }
}
