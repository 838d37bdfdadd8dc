//! A template held in memory, for a pool: its guest RAM in a sealed memfd
//! that every clone maps copy-on-write, Kata-style (docs/templates.md,
//! "Shared templates").
//!
//! The template's VM boots with its RAM in the memfd, mapped shared
//! (`memory-backend-file,share=on`), and is saved with `x-ignore-shared`:
//! the stream holds the device state only (tens of KB). Once that VM is
//! gone, both memfds are sealed against any write, resize or further seal.
//! A clone maps the RAM privately (`share=off`) — it shares the template's
//! pages until it writes one — and loads the device state over QMP
//! (`-incoming defer`, the capability, `migrate-incoming`).
//!
//! QEMU 7.2 opens a memory backend's file read-write even for a private
//! mapping; on a sealed memfd that open succeeds, but no write, truncate,
//! hole punch or shared writable mapping can reach the pages: a clone's
//! QEMU, however compromised, cannot change what later clones start from.
//! That is why this lives in a process's memory (the pool's) and not in a
//! file of the template directory, which nothing could seal.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mu2_protocol::Ready;
use nix::fcntl::{FallocateFlags, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use super::{io_err, Key, Store, TemplateError};
use crate::spec::VmSpec;
use crate::vm::{Start, Vm, VmError};

/// Largest device state accepted: the RAM is not in it (a microvm's is
/// ~60 KB; what is more is not the stream we asked for).
const MAX_DEVICE_STATE: u64 = 64 << 20;
/// The seals of both memfds once the template's VM is gone.
const SEALS: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);
/// How long sealing waits for the last shared mapping (the template's
/// QEMU, reaped already) to go.
const SEAL_WAIT: Duration = Duration::from_secs(2);

/// What a pool says of a shared template it hands out (its two memfds ride
/// on the message).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedInfo {
    pub key: String,
    pub memory_mib: u32,
    pub protocol_version: u32,
    pub agent_version: String,
    pub kernel_release: String,
    pub uptime_ns: u64,
}

/// A template whose RAM and device state are sealed memfds of this process.
pub struct SharedTemplate {
    key: Key,
    ready: Ready,
    memory_mib: u32,
    ram: OwnedFd,
    state: OwnedFd,
}

impl SharedTemplate {
    /// Boots the template VM of `spec` with its RAM in a fresh memfd,
    /// saves its device state into another and seals both. `store` only
    /// lends the empty share directories a template VM exports (a work
    /// directory its sweep collects if this process dies).
    pub fn build(store: &Store, spec: &VmSpec) -> Result<SharedTemplate, TemplateError> {
        let key = Key::of(spec)?;
        let bytes = u64::from(spec.memory_mib) << 20;
        let ram = memfd("mu2-template-ram")?;
        let file = File::from(ram);
        file.set_len(bytes)
            .map_err(io_err("cannot size the template's RAM"))?;
        // Every page exists before any clone maps it: a clone's fault on a
        // hole would otherwise allocate the page in the template (charged
        // to the clone's cgroup on top of its own copy), and the template
        // would grow with every clone's first touch.
        nix::fcntl::fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, bytes as i64).map_err(
            |e| TemplateError::Io {
                what: format!("cannot allocate {} MiB of template RAM", spec.memory_mib),
                source: e.into(),
            },
        )?;
        let ram = OwnedFd::from(file);
        let state = File::from(memfd("mu2-template-state")?);
        // Named as the sweep expects: the builder's pid last.
        let work = store.dir.join(format!(
            ".build-shared-{}-{}",
            key.as_str(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir(&work).map_err(io_err(format!("cannot create {}", work.display())))?;
        let taken = super::take(spec, &key, &work, Some(ram.as_raw_fd()), &state);
        let _ = std::fs::remove_dir_all(&work);
        let taken = taken?;
        let state_bytes = state
            .metadata()
            .map_err(io_err("cannot stat the template's device state"))?
            .len();
        if state_bytes == 0 || state_bytes > MAX_DEVICE_STATE {
            return Err(TemplateError::Corrupt {
                key: key.as_str().into(),
                why: format!("the saved device state has {state_bytes} bytes"),
            });
        }
        let state = OwnedFd::from(state);
        seal(ram.as_fd(), "RAM")?;
        seal(state.as_fd(), "device state")?;
        log::info!(
            "template {}: built in memory ({} MiB, {} vCPUs; boot {:?}, save {:?}, {state_bytes} bytes of device state)",
            key.as_str(),
            spec.memory_mib,
            spec.vcpus,
            taken.boot,
            taken.save
        );
        Ok(SharedTemplate {
            key,
            ready: taken.ready,
            memory_mib: spec.memory_mib,
            ram,
            state,
        })
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The template's RAM memfd (tests check its seals).
    pub fn ram(&self) -> BorrowedFd<'_> {
        self.ram.as_fd()
    }

    /// Host memory the template's RAM holds, in bytes.
    pub fn resident_bytes(&self) -> u64 {
        nix::sys::stat::fstat(self.ram.as_raw_fd())
            .map(|st| st.st_blocks as u64 * 512)
            .unwrap_or(0)
    }

    /// What a lessee needs to restore from this template itself (a pool
    /// miss): its description and copies of both memfds.
    pub fn handout(&self) -> io::Result<(SharedInfo, [OwnedFd; 2])> {
        let info = SharedInfo {
            key: self.key.as_str().to_string(),
            memory_mib: self.memory_mib,
            protocol_version: self.ready.protocol_version,
            agent_version: self.ready.agent_version.clone(),
            kernel_release: self.ready.kernel_release.clone(),
            uptime_ns: self.ready.uptime_ns,
        };
        Ok((info, [self.ram.try_clone()?, self.state.try_clone()?]))
    }

    /// A template handed out by a pool, for `spec`: refused unless it is
    /// of `spec`'s key, both memfds carry every seal, and the RAM is the
    /// guest's size.
    pub fn adopt(
        spec: &VmSpec,
        info: SharedInfo,
        ram: OwnedFd,
        state: OwnedFd,
    ) -> Result<SharedTemplate, String> {
        let key = Key::of(spec).map_err(|e| crate::describe_error(&e))?;
        if info.key != key.as_str() {
            return Err(format!(
                "a template of another key ({})",
                mu2_protocol::text::sanitize(&info.key, 80)
            ));
        }
        if info.memory_mib != spec.memory_mib {
            return Err(format!("a template of {} MiB", info.memory_mib));
        }
        if !is_sealed(ram.as_fd()) || !is_sealed(state.as_fd()) {
            return Err("a template that is not sealed".into());
        }
        let size = |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_raw_fd()).map(|st| st.st_size as u64);
        match size(&ram) {
            Ok(n) if n == u64::from(spec.memory_mib) << 20 => {}
            other => return Err(format!("template RAM of {other:?} bytes")),
        }
        match size(&state) {
            Ok(n) if n > 0 && n <= MAX_DEVICE_STATE => {}
            other => return Err(format!("a device state of {other:?} bytes")),
        }
        Ok(SharedTemplate {
            key,
            ready: Ready {
                protocol_version: info.protocol_version,
                agent_version: mu2_protocol::text::sanitize(&info.agent_version, 64),
                kernel_release: mu2_protocol::text::sanitize(&info.kernel_release, 128),
                uptime_ns: info.uptime_ns,
            },
            memory_mib: info.memory_mib,
            ram,
            state,
        })
    }

    /// A clone for `spec` (of this template's key); `lifeline`: a warm VM
    /// for a pool, which lives by that pipe.
    pub fn restore(&self, spec: &VmSpec, lifeline: Option<RawFd>) -> Result<Vm, VmError> {
        // A description of its own, at offset 0, read-only.
        let state =
            File::open(format!("/proc/self/fd/{}", self.state.as_raw_fd())).map_err(|source| {
                VmError::Channel {
                    id: spec.id.clone(),
                    source,
                }
            })?;
        let ram = Some(self.ram.as_raw_fd());
        let ready = self.ready.clone();
        let how = match lifeline {
            Some(lifeline) => Start::Warm {
                state: &state,
                ready,
                ram,
                lifeline,
            },
            None => Start::Restore {
                state: &state,
                ready,
                ram,
            },
        };
        Vm::launch_once(spec, &how)
    }
}

fn memfd(name: &str) -> Result<OwnedFd, TemplateError> {
    let cname = std::ffi::CString::new(name).expect("no NUL in a memfd name");
    memfd_create(
        &cname,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(|e| TemplateError::Io {
        what: format!("cannot create the memfd {name}"),
        source: e.into(),
    })
}

/// Seals `fd` against writes, resizes and further seals. The template's
/// QEMU is reaped, but a shared writable mapping still counted makes the
/// kernel answer EBUSY: retried for a moment.
fn seal(fd: BorrowedFd<'_>, what: &str) -> Result<(), TemplateError> {
    let deadline = Instant::now() + SEAL_WAIT;
    loop {
        match nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(SEALS)) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                return Err(TemplateError::Io {
                    what: format!("cannot seal the template's {what}"),
                    source: io::Error::from(e),
                })
            }
        }
    }
}

/// The seals on `fd`.
fn seals(fd: BorrowedFd<'_>) -> io::Result<SealFlag> {
    let raw = nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)?;
    Ok(SealFlag::from_bits_truncate(raw))
}

/// Whether `fd` carries every seal a shared template needs.
pub fn is_sealed(fd: BorrowedFd<'_>) -> bool {
    seals(fd).map(|s| s.contains(SEALS)).unwrap_or(false)
}
