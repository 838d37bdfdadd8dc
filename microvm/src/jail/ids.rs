//! Claiming a block of host ids for one VM.
//!
//! A claim is an `flock`ed file `<claim_dir>/<first uid>` whose content names
//! the VM. The lock, not the file, is the claim: the open file is inherited
//! by the jailer, which lives exactly as long as QEMU, so a crashed owner
//! releases its block when its VMM dies, with nobody cleaning up. Dropping a
//! claim unlinks the file; a file left by a crash is unlocked, so the next
//! launch that needs the block takes it over, and the collection of the
//! VM's record ([`crate::record`]) unlinks it ([`release_left_behind`]),
//! matching the VM id exactly.

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
    /// Another process took the claim over: dropping leaves the file.
    disowned: bool,
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
        Ok(Some(IdClaim {
            first,
            path,
            file,
            disowned: false,
        }))
    }

    /// The claim's open file, to be inherited by the jailer.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// The claim file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl IdClaim {
    /// Lets go of the claim without releasing it: its VM changed hands,
    /// and the jailer's inherited fd keeps the lock.
    pub(crate) fn disown(mut self) {
        self.disowned = true;
    }
}

impl Drop for IdClaim {
    fn drop(&mut self) {
        if self.disowned {
            return;
        }
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

/// What became of a claim file left behind by VM `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftClaim {
    /// It was there, unlocked and naming `id`: now unlinked.
    Released,
    /// There is no such file.
    Absent,
    /// The file names another VM now (the block was taken over).
    NotOurs,
    /// It names `id` and a live process holds its lock (a jailer).
    Held,
}

/// Releases the claim file `path` of VM `id` if no process holds it any
/// more; a claim is never released while it is locked, nor when it names
/// another VM.
pub fn release_left_behind(path: &Path, id: &str) -> LeftClaim {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return LeftClaim::Absent;
    };
    if !names(&f, id) {
        return LeftClaim::NotOurs;
    }
    if !matches!(super::sys::try_lock(f.as_raw_fd()), Ok(true)) {
        return LeftClaim::Held;
    }
    // Locked by us now; the file may have been unlinked (and the path
    // reused) since our open: only unlink the very file we hold.
    let same = match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    // Re-read under the lock: a claimer rewrites the file only while
    // holding it.
    if !same || !names(&f, id) {
        return LeftClaim::NotOurs;
    }
    match std::fs::remove_file(path) {
        Ok(()) => LeftClaim::Released,
        Err(e) if e.kind() == io::ErrorKind::NotFound => LeftClaim::Absent,
        Err(e) => {
            log::warn!("cannot remove claim {}: {e}", path.display());
            LeftClaim::Held
        }
    }
}

/// Whether the open claim file names exactly VM `id`.
fn names(f: &File, id: &str) -> bool {
    use std::io::{Read, Seek};
    let mut f = f;
    let mut text = String::new();
    f.rewind().is_ok() && f.take(256).read_to_string(&mut text).is_ok() && text == id
}

/// The claim files in `dir` that name exactly VM `id` (for a VM whose
/// owner died before it could record which block it took).
pub fn claims_naming(dir: &Path, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(e.path())
        else {
            continue;
        };
        if names(&f, id) {
            found.push(e.path());
        }
    }
    found
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
    fn a_left_claim_is_released_only_unlocked_and_only_if_it_names_the_vm() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let live = IdClaim::acquire(range(3), dir.path(), "web").unwrap();
        assert_eq!(
            claims_naming(dir.path(), "web"),
            [live.path().to_path_buf()]
        );
        // Held by a live process: stays.
        assert_eq!(release_left_behind(live.path(), "web"), LeftClaim::Held);
        assert!(live.path().exists());
        // What a SIGKILLed owner leaves: the file, no lock.
        let dead = dir.path().join("9999");
        std::fs::write(&dead, "web.1").unwrap();
        // Names are matched exactly, never as prefixes.
        assert!(claims_naming(dir.path(), "web.").is_empty());
        assert_eq!(
            claims_naming(dir.path(), "web.1"),
            std::slice::from_ref(&dead)
        );
        assert_eq!(release_left_behind(&dead, "web"), LeftClaim::NotOurs);
        assert!(dead.exists());
        assert_eq!(release_left_behind(&dead, "web.1"), LeftClaim::Released);
        assert!(!dead.exists());
        assert_eq!(release_left_behind(&dead, "web.1"), LeftClaim::Absent);
        assert!(is_claimed(dir.path(), live.first));
    }
}
