//! Templates: a VM saved at agent-ready, resumed by its clones instead of
//! a cold boot (DESIGN.md, "Pool and templates"; docs/templates.md).
//!
//! A template is taken from a VM booted like any other (jailed, in its own
//! cgroup, with a record) and stopped at Ready, before its agent received
//! anything — so before any 9p share is mounted (a mounted share blocks
//! migration) and before its identity: the clone gets its own
//! ([`crate::identity`]). Its QEMU migrates to a file through a QMP
//! channel; a clone is started with the request's own command line (its own
//! shares, channels and jail) plus `-incoming fd:N` on that file, opened
//! read-only by the host. The guest RAM travels in the stream: QEMU 7.2
//! (Debian 12) cannot map a template's RAM file copy-on-write without
//! opening it writable, and a clone able to write the template could reach
//! every later clone. The pool's templates are not files but sealed memfds
//! its clones map copy-on-write ([`shared`]).
//!
//! On disk, under the configured directory (default `/run/mu2/templates`,
//! root-only): `<key>/state` (the stream) and `<key>/meta.json` (what it is,
//! its length and XXH3-128 checksum, the agent's Ready). The key is a hash of
//! everything the saved state depends on: this format, mu2's version, the
//! QEMU binary, kernel and initrd (path, size, mtime, inode), memory,
//! vCPUs, accelerator, translation cache, console mode, jail or not, and the
//! share tags (a share's host path is not part of the saved state). A
//! template is built into a fresh directory and renamed into place, so a
//! reader sees all of one or none; it is verified (length and checksum)
//! before use; a stale, corrupt or failing template is removed with a log
//! line and the request boots cold — never fails because of a template.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mu2_protocol::Ready;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::jail::config::ConfigError;
use crate::qmp::{Qmp, QmpError};
use crate::spec::{Share, VmSpec};
use crate::vm::{Start, Vm, VmError};

mod shared;
pub use shared::{is_sealed, SharedInfo, SharedTemplate};

/// Where templates live unless configured otherwise.
pub const DEFAULT_TEMPLATE_DIR: &str = "/run/mu2/templates";
/// `off` turns templates off for this process, `on` on (whatever the
/// config file says).
pub const TEMPLATES_ENV: &str = "MU2_TEMPLATES";
/// Bumped whenever what a template holds or how it is keyed changes.
const FORMAT: u32 = 1;
/// Largest saved state accepted (a 64 GiB guest's RAM could be more, but a
/// template is of an idle VM: its kernel, initramfs and agent).
const MAX_STATE_BYTES: u64 = 4 << 30;
/// How often a template's migration is polled.
const POLL: Duration = Duration::from_millis(10);
/// How often a deferred clone is asked whether it runs (a refill waits on
/// it, a request does not).
const RESUME_POLL: Duration = Duration::from_millis(2);

/// Whether a VM may come from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateMode {
    /// Always a cold boot.
    Off,
    /// Resume from the template in `dir`; build it first when missing and
    /// `build` is set (lazily, on the request that finds it missing).
    Use {
        dir: PathBuf,
        build: bool,
        /// Most bytes of saved state the directory holds: the oldest
        /// templates are removed to make room for a new one.
        max_bytes: u64,
    },
}

/// The default budget of saved state (each template of a 256 MiB guest
/// is about 70 MB, on tmpfs: memory).
pub const DEFAULT_MAX_MIB: u64 = 1024;

#[derive(Debug, Deserialize, Default)]
struct File_ {
    #[serde(default)]
    templates: Section,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Section {
    enabled: Option<bool>,
    dir: Option<PathBuf>,
    build: Option<bool>,
    max_mib: Option<u64>,
}

impl TemplateMode {
    /// The `[templates]` table of the host's config file (on by default),
    /// then [`TEMPLATES_ENV`].
    pub fn load() -> Result<TemplateMode, ConfigError> {
        let path = crate::jail::config::config_path();
        Ok(Self::parse(&path, &crate::config::read(&path)?)?.with_env())
    }

    /// This mode as [`TEMPLATES_ENV`] overrides it.
    pub fn with_env(self) -> TemplateMode {
        match std::env::var(TEMPLATES_ENV).as_deref() {
            Ok("off") => TemplateMode::Off,
            Ok("on") if self == TemplateMode::Off => TemplateMode::Use {
                dir: DEFAULT_TEMPLATE_DIR.into(),
                build: true,
                max_bytes: DEFAULT_MAX_MIB << 20,
            },
            _ => self,
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<TemplateMode, ConfigError> {
        let malformed = |message: String| ConfigError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let file: File_ = toml::from_str(text).map_err(|e| malformed(e.message().to_string()))?;
        let t = file.templates;
        if t.enabled == Some(false) {
            return Ok(TemplateMode::Off);
        }
        let dir = t.dir.unwrap_or_else(|| DEFAULT_TEMPLATE_DIR.into());
        if !dir.is_absolute() {
            return Err(malformed(format!(
                "templates.dir: {} is not an absolute path",
                dir.display()
            )));
        }
        let max_mib = t.max_mib.unwrap_or(DEFAULT_MAX_MIB);
        if max_mib == 0 || max_mib > 1 << 30 {
            return Err(malformed(format!(
                "templates.max_mib: {max_mib} is not in 1..={}",
                1u64 << 30
            )));
        }
        Ok(TemplateMode::Use {
            dir,
            build: t.build.unwrap_or(true),
            max_bytes: max_mib << 20,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("template {key} is unusable: {why}")]
    Corrupt { key: String, why: String },
    #[error("template VM")]
    Vm(#[from] VmError),
    #[error("template VM {id}: QMP")]
    Qmp {
        id: String,
        #[source]
        source: QmpError,
    },
    #[error("template VM {id}: migration {status}: {message}")]
    Migration {
        id: String,
        status: String,
        message: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TemplateError {
    let what = what.into();
    move |source| TemplateError::Io { what, source }
}

/// What a template's saved state depends on, hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn of(spec: &VmSpec) -> Result<Key, TemplateError> {
        let mut h = Sha256::new();
        let mut line = |s: String| {
            h.update(s.as_bytes());
            h.update(b"\n");
        };
        line(format!(
            "mu2-template {FORMAT} {}",
            env!("CARGO_PKG_VERSION")
        ));
        let qemu = crate::vm::find_program(&spec.qemu).map_err(|e| TemplateError::Io {
            what: e,
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        for (what, p) in [
            ("qemu", qemu.as_path()),
            ("kernel", spec.kernel.as_path()),
            ("initrd", spec.initrd.as_path()),
        ] {
            let m = fs::metadata(p).map_err(io_err(format!("cannot stat {}", p.display())))?;
            line(format!(
                "{what} {} {} {} {} {}",
                p.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            ));
        }
        line(format!(
            "memory {} vcpus {} accel {:?} tb {} debug {} jailed {}",
            spec.memory_mib,
            spec.vcpus,
            spec.accel,
            spec.tb_size_mib,
            spec.debug,
            matches!(spec.jail, crate::jail::JailMode::Jailed(_))
        ));
        for s in &spec.shares {
            line(format!("share {}", s.tag));
        }
        let digest = h.finalize();
        Ok(Key(digest.iter().map(|b| format!("{b:02x}")).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key as [`Key::as_str`] wrote it (64 lowercase hex digits).
    pub fn from_hex(s: &str) -> Result<Key, String> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Key(s.to_string()))
        } else {
            Err(format!("{s:?} is not a template key"))
        }
    }
}

/// A template's `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: u32,
    pub key: String,
    pub state_bytes: u64,
    pub state_xxh3: String,
    pub protocol_version: u32,
    pub agent_version: String,
    pub kernel_release: String,
    pub uptime_ns: u64,
    /// Boot to Ready of the template's VM, and the save, in milliseconds.
    pub boot_ms: u64,
    pub save_ms: u64,
    pub created_unix: u64,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub shares: Vec<String>,
}

impl Meta {
    pub(crate) fn ready(&self) -> Ready {
        Ready {
            protocol_version: self.protocol_version,
            agent_version: self.agent_version.clone(),
            kernel_release: self.kernel_release.clone(),
            uptime_ns: self.uptime_ns,
        }
    }
}

/// The templates of one directory.
pub struct Store {
    dir: PathBuf,
    max_bytes: u64,
}

/// A verified template, its state file open.
pub struct Template {
    pub key: Key,
    pub meta: Meta,
    pub state: File,
}

impl Store {
    /// The directory, made root-only if missing.
    pub fn open(dir: &Path) -> Result<Store, TemplateError> {
        crate::jail::safe_dir(dir).map_err(|e| TemplateError::Io {
            what: crate::describe_error(&e),
            source: io::Error::other("unsafe template directory"),
        })?;
        let store = Store {
            dir: dir.to_path_buf(),
            max_bytes: DEFAULT_MAX_MIB << 20,
        };
        store.sweep();
        Ok(store)
    }

    /// Removes what builds and removals of processes that died left
    /// (`.build-KEY-PID`, `.gone-KEY-PID`).
    fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(".build-") || name.starts_with(".gone-")) {
                continue;
            }
            let dead = name
                .rsplit('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if dead {
                log::info!("templates: removing {name}, left by a process that died");
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// The budget of saved state ([`TemplateMode::Use`]'s `max_bytes`).
    pub fn with_budget(mut self, max_bytes: u64) -> Store {
        self.max_bytes = max_bytes;
        self
    }

    /// Removes the oldest templates until `room` more bytes fit the budget.
    fn make_room(&self, room: u64) {
        // Sizes and ages only: nothing here needs a checksum.
        let mut all: Vec<(u64, String, u64)> = self
            .keys()
            .into_iter()
            .map(|key| match self.meta(&key) {
                Ok(m) => (m.created_unix, key.0, m.state_bytes),
                // Unusable: first to go.
                Err(_) => (0, key.0, 0),
            })
            .collect();
        all.sort();
        let mut total: u64 = all.iter().map(|t| t.2).sum();
        for (_, key, bytes) in all {
            if total.saturating_add(room) <= self.max_bytes {
                break;
            }
            if let Ok(k) = Key::from_hex(&key) {
                log::info!(
                    "templates: removing {key} ({bytes} bytes) to stay within {} MiB",
                    self.max_bytes >> 20
                );
                self.discard(&k);
                total -= bytes;
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(key.as_str())
    }

    /// The keys of the templates here (whatever state they are in).
    fn keys(&self) -> Vec<Key> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut keys: Vec<Key> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| Key::from_hex(&e.file_name().to_string_lossy()).ok())
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    }

    /// The `meta.json` of `key`, of this format and key (a missing one is
    /// an I/O error of kind NotFound).
    fn meta(&self, key: &Key) -> Result<Meta, TemplateError> {
        let dir = self.path(key);
        let text = fs::read(dir.join("meta.json")).map_err(|source| TemplateError::Io {
            what: format!("cannot read {}/meta.json", dir.display()),
            source,
        })?;
        let corrupt = |why: String| TemplateError::Corrupt {
            key: key.as_str().to_string(),
            why,
        };
        let meta: Meta =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("meta.json: {e}")))?;
        if meta.format != FORMAT || meta.key != key.as_str() {
            return Err(corrupt("meta.json is of another format or key".into()));
        }
        Ok(meta)
    }

    /// The template of `key`, verified: `Ok(None)` when there is none.
    pub fn find(&self, key: &Key) -> Result<Option<Template>, TemplateError> {
        let dir = self.path(key);
        let meta = match self.meta(key) {
            Ok(m) => m,
            Err(TemplateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let corrupt = |why: String| TemplateError::Corrupt {
            key: key.as_str().to_string(),
            why,
        };
        let mut state = File::open(dir.join("state"))
            .map_err(|e| corrupt(format!("cannot open its state: {e}")))?;
        let len = state
            .metadata()
            .map_err(|e| corrupt(format!("cannot stat its state: {e}")))?
            .len();
        if len != meta.state_bytes {
            return Err(corrupt(format!(
                "its state has {len} bytes, meta.json says {}",
                meta.state_bytes
            )));
        }
        let sum =
            xxh3_of(&mut state).map_err(|e| corrupt(format!("cannot read its state: {e}")))?;
        if sum != meta.state_xxh3 {
            return Err(corrupt("its state does not match its checksum".into()));
        }
        Ok(Some(Template {
            key: key.clone(),
            meta,
            state,
        }))
    }

    /// Removes the template of `key` (whatever state it is in).
    pub fn discard(&self, key: &Key) {
        let dir = self.path(key);
        // Renamed first, so that no reader sees half of it.
        let gone = self
            .dir
            .join(format!(".gone-{}-{}", key.as_str(), std::process::id()));
        if fs::rename(&dir, &gone).is_ok() {
            let _ = fs::remove_dir_all(&gone);
        }
    }

    /// Every template here: its key and meta, or why it is unusable.
    pub fn list(&self) -> Vec<(String, Result<Meta, TemplateError>)> {
        self.keys()
            .into_iter()
            .map(|key| {
                let r = match self.find(&key) {
                    Ok(Some(t)) => Ok(t.meta),
                    Ok(None) => Err(TemplateError::Corrupt {
                        key: key.0.clone(),
                        why: "no meta.json".into(),
                    }),
                    Err(e) => Err(e),
                };
                (key.0, r)
            })
            .collect()
    }

    /// The build lock of `key`, if no other process holds it.
    fn try_lock(&self, key: &Key) -> Result<Option<nix::fcntl::Flock<File>>, TemplateError> {
        let path = self.dir.join(format!("{}.lock", key.as_str()));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(TemplateError::Io {
                what: format!("cannot lock {}", path.display()),
                source: e.into(),
            }),
        }
    }

    /// Builds the template of `spec` (whose key is `key`) and returns it
    /// verified. `None` when another process is building it.
    pub fn build(&self, spec: &VmSpec, key: &Key) -> Result<Option<Template>, TemplateError> {
        let Some(_lock) = self.try_lock(key)? else {
            return Ok(None);
        };
        // Built while we waited for nothing? (The lock is not held between
        // a build's rename and its release.)
        if let Ok(Some(t)) = self.find(key) {
            return Ok(Some(t));
        }
        let work = self
            .dir
            .join(format!(".build-{}-{}", key.as_str(), std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir(&work).map_err(io_err(format!("cannot create {}", work.display())))?;
        let r = self.build_in(spec, key, &work);
        let _ = fs::remove_dir_all(&work);
        r.map(Some)
    }

    fn build_in(&self, spec: &VmSpec, key: &Key, work: &Path) -> Result<Template, TemplateError> {
        let state_path = work.join("state");
        let state = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&state_path)
            .map_err(io_err(format!("cannot create {}", state_path.display())))?;
        let taken = take(spec, key, work, None, &state)?;
        drop(state);
        let (ready, boot, save_time) = (taken.ready, taken.boot, taken.save);
        let mut f = File::open(&state_path)
            .map_err(io_err(format!("cannot open {}", state_path.display())))?;
        let state_bytes = f
            .metadata()
            .map_err(io_err(format!("cannot stat {}", state_path.display())))?
            .len();
        if state_bytes == 0 || state_bytes > MAX_STATE_BYTES {
            return Err(TemplateError::Corrupt {
                key: key.as_str().into(),
                why: format!("the saved state has {state_bytes} bytes"),
            });
        }
        let state_xxh3 =
            xxh3_of(&mut f).map_err(io_err(format!("cannot read {}", state_path.display())))?;
        let meta = Meta {
            format: FORMAT,
            key: key.as_str().into(),
            state_bytes,
            state_xxh3,
            protocol_version: ready.protocol_version,
            agent_version: ready.agent_version,
            kernel_release: ready.kernel_release,
            uptime_ns: ready.uptime_ns,
            boot_ms: boot.as_millis() as u64,
            save_ms: save_time.as_millis() as u64,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            shares: spec.shares.iter().map(|s| s.tag.clone()).collect(),
        };
        let meta_path = work.join("meta.json");
        let mut m = File::create(&meta_path)
            .map_err(io_err(format!("cannot create {}", meta_path.display())))?;
        m.write_all(&serde_json::to_vec_pretty(&meta).expect("meta serialises"))
            .map_err(io_err(format!("cannot write {}", meta_path.display())))?;
        drop(m);
        let dest = self.path(key);
        // Whatever is there is stale or corrupt (find said so).
        self.discard(key);
        self.make_room(state_bytes);
        fs::rename(work, &dest).map_err(io_err(format!(
            "cannot rename {} to {}",
            work.display(),
            dest.display()
        )))?;
        log::info!(
            "template {}: built ({} MiB, {} vCPUs, shares {:?}; boot {boot:?}, save {save_time:?}, {state_bytes} bytes)",
            key.as_str(),
            spec.memory_mib,
            spec.vcpus,
            meta.shares
        );
        // Checked as it was written: open it, do not hash it again.
        let state = File::open(dest.join("state"))
            .map_err(io_err(format!("cannot open {}/state", dest.display())))?;
        Ok(Template {
            key: key.clone(),
            meta,
            state,
        })
    }
}

/// What taking a template's VM gave.
struct Taken {
    ready: Ready,
    boot: Duration,
    save: Duration,
}

/// Boots the template VM of `spec` (its id `tpl-KEY12-PID`, each share an
/// empty directory under `work`, `ram` its guest RAM when a memfd), saves
/// it into `state` at Ready and kills it: when this returns, the VM is
/// gone.
fn take(
    spec: &VmSpec,
    key: &Key,
    work: &Path,
    ram: Option<std::os::fd::RawFd>,
    state: &File,
) -> Result<Taken, TemplateError> {
    let empty = work.join("empty");
    fs::create_dir(&empty).map_err(io_err(format!("cannot create {}", empty.display())))?;
    let mut tspec = spec.clone();
    tspec.id = format!("tpl-{}-{}", &key.as_str()[..12], std::process::id());
    tspec.templates = TemplateMode::Off;
    tspec.pool = crate::pool::PoolMode::Off;
    tspec.owned_dir = None;
    tspec.shares = spec
        .shares
        .iter()
        .map(|s| Share {
            tag: s.tag.clone(),
            host_path: empty.clone(),
            readonly: true,
        })
        .collect();
    let t0 = Instant::now();
    let mut vm = Vm::boot(&tspec, &Start::Template { ram })?;
    let boot = t0.elapsed();
    let ready = vm.ready().clone();
    let t1 = Instant::now();
    let saved = save(&mut vm, &tspec, state, ram.is_some());
    let save_time = t1.elapsed();
    // Saved and stopped (or failed): the template's own VM ends here.
    vm.kill();
    drop(vm);
    let _ = fs::remove_dir(&empty);
    saved?;
    Ok(Taken {
        ready,
        boot,
        save: save_time,
    })
}

/// The migration capability that leaves RAM backed by a shared file out of
/// the stream: set on the template's VM and on each of its clones.
fn ignore_shared(q: &mut Qmp, timeout: Duration) -> Result<(), QmpError> {
    q.execute(
        "migrate-set-capabilities",
        serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
        timeout,
    )
    .map(|_| ())
}

/// Migrates the template's VM, running, into `state`; QEMU stops it at the
/// end of the migration. `without_ram`: its RAM is a shared file, left out
/// of the stream.
fn save(vm: &mut Vm, spec: &VmSpec, state: &File, without_ram: bool) -> Result<(), TemplateError> {
    let id = spec.id.clone();
    let qmp_err = |source| TemplateError::Qmp {
        id: id.clone(),
        source,
    };
    let stream = vm.take_qmp().expect("a template VM has a QMP channel");
    let timeout = spec.deadlines.reply;
    let mut q = Qmp::connect(stream, timeout).map_err(qmp_err)?;
    if without_ram {
        ignore_shared(&mut q, timeout).map_err(qmp_err)?;
    }
    use std::os::fd::AsFd;
    q.pass_fd("state", state.as_fd(), timeout)
        .map_err(qmp_err)?;
    q.execute("migrate", serde_json::json!({"uri": "fd:state"}), timeout)
        .map_err(qmp_err)?;
    let deadline = Instant::now() + timeout;
    loop {
        // Every poll within the one deadline of the save.
        let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
        let r = q
            .execute("query-migrate", serde_json::json!({}), left)
            .map_err(qmp_err)?;
        let status = r.get("status").and_then(|s| s.as_str()).unwrap_or("");
        match status {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(TemplateError::Migration {
                    id,
                    status: status.into(),
                    message: mu2_protocol::text::sanitize(
                        r.get("error-desc").and_then(|s| s.as_str()).unwrap_or(""),
                        512,
                    ),
                })
            }
            _ if Instant::now() >= deadline => {
                return Err(TemplateError::Migration {
                    id,
                    status: mu2_protocol::text::sanitize(status, 64),
                    message: format!("not completed within {timeout:?}"),
                })
            }
            _ => std::thread::sleep(POLL),
        }
    }
}

fn xxh3_of(f: &mut File) -> io::Result<String> {
    use std::io::Seek;
    f.rewind()?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    f.rewind()?;
    Ok(format!("{:032x}", h.digest128()))
}

/// Resumes a clone of `t` for `spec`.
pub fn restore(spec: &VmSpec, t: &Template) -> Result<Vm, VmError> {
    Vm::launch_once(
        spec,
        &Start::Restore {
            state: &t.state,
            ready: t.meta.ready(),
            ram: None,
        },
    )
}

/// Brings a clone in over its QMP channel: with `state` (a clone started
/// with `-incoming defer`), the capability its template was saved with and
/// `migrate-incoming` from that inherited fd; then QMP is polled until the
/// guest runs (QEMU resumes it by itself: the template was running when
/// saved). A stream QEMU cannot load ends QEMU, which reads here as QMP
/// closing. Returns the QMP session.
pub(crate) fn resume(
    id: &str,
    stream: std::os::unix::net::UnixStream,
    state: Option<std::os::fd::RawFd>,
    timeout: Duration,
) -> Result<Qmp, VmError> {
    let failed = |what: &str, e: QmpError| VmError::Resume {
        id: id.to_string(),
        why: format!("{what}: {e}"),
    };
    let deadline = Instant::now() + timeout;
    let mut q = Qmp::connect(stream, timeout).map_err(|e| failed("QMP", e))?;
    if let Some(state) = state {
        ignore_shared(&mut q, timeout).map_err(|e| failed("setting x-ignore-shared", e))?;
        q.execute(
            "migrate-incoming",
            serde_json::json!({"uri": format!("fd:{state}")}),
            timeout,
        )
        .map_err(|e| failed("migrate-incoming", e))?;
    }
    let want = "running";
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
        let r = q
            .execute("query-status", serde_json::json!({}), left)
            .map_err(|e| failed("query-status", e))?;
        let status = r.get("status").and_then(|s| s.as_str()).unwrap_or("");
        match status {
            s if s == want => return Ok(q),
            "inmigrate" | "prelaunch" | "finish-migrate" | "restore-vm" => {}
            other => {
                return Err(VmError::Resume {
                    id: id.to_string(),
                    why: format!(
                        "the clone is {} after its incoming migration (want {want})",
                        mu2_protocol::text::sanitize(other, 64)
                    ),
                })
            }
        }
        if Instant::now() >= deadline {
            return Err(VmError::Resume {
                id: id.to_string(),
                why: format!("not {want} within {timeout:?}"),
            });
        }
        std::thread::sleep(RESUME_POLL);
    }
}

/// [`crate::Vm::launch`]'s template path: a clone of the spec's template,
/// built first if missing and allowed; `Ok(None)` (after a log line)
/// whenever the caller should boot cold instead. Errors are what a cold
/// boot would meet as well: the host could not set a VM up, or the
/// template's VM — a cold boot of this very guest — broke its boot
/// contract (a second boot would only meet the same guest and double the
/// wait).
pub(crate) fn restore_or_build(
    spec: &VmSpec,
    dir: &Path,
    build: bool,
    max_bytes: u64,
) -> Result<Option<Vm>, VmError> {
    let id = &spec.id;
    let t0 = Instant::now();
    let Some((store, key, t)) = find_or_build(spec, dir, build, max_bytes)? else {
        return Ok(None);
    };
    let found_in = t0.elapsed();
    match restore(spec, &t) {
        Ok(vm) => {
            log::info!(
                "vm {id}: restored from template {} (find {found_in:?}, restore {:?})",
                key.as_str(),
                vm.boot_time()
            );
            Ok(Some(vm))
        }
        // The host could not set the clone up (jail, cgroup, record,
        // spawn): a cold boot needs the same, and the template is not at
        // fault.
        Err(e) if host_side(&e) => Err(e),
        Err(e) => {
            log::warn!(
                "vm {id}: restoring template {} failed ({}); template removed, booting",
                key.as_str(),
                crate::describe_error(&e)
            );
            store.discard(&key);
            Ok(None)
        }
    }
}

/// The verified template of `spec`'s key, built first if missing and
/// `build` allows: `Ok(None)` (after a log line) when there is none to
/// use; errors as [`restore_or_build`]'s.
pub(crate) fn find_or_build(
    spec: &VmSpec,
    dir: &Path,
    build: bool,
    max_bytes: u64,
) -> Result<Option<(Store, Key, Template)>, VmError> {
    let id = &spec.id;
    let opened = Key::of(spec).and_then(|key| Ok((key, Store::open(dir)?.with_budget(max_bytes))));
    let (key, store) = match opened {
        Ok(x) => x,
        Err(e) => {
            log::warn!(
                "vm {id}: no template ({}); booting",
                crate::describe_error(&e)
            );
            return Ok(None);
        }
    };
    let found = match store.find(&key) {
        Ok(t) => t,
        Err(e) => {
            log::warn!(
                "vm {id}: {}; removed, will be rebuilt",
                crate::describe_error(&e)
            );
            store.discard(&key);
            None
        }
    };
    let t = match found {
        Some(t) => t,
        None if !build => {
            log::info!("vm {id}: no template {}; booting", key.as_str());
            return Ok(None);
        }
        None => match store.build(spec, &key) {
            Ok(Some(t)) => t,
            Ok(None) => {
                log::info!(
                    "vm {id}: template {} is being built by another process; booting",
                    key.as_str()
                );
                return Ok(None);
            }
            // The template's VM is a cold boot of this very guest on this
            // host: what failed it (the host's jail, cgroups or records;
            // a guest that breaks its boot contract) would fail a cold
            // boot too. Only a QEMU that exits may be the template's doing.
            Err(TemplateError::Vm(e)) if !matches!(e, VmError::ExitedEarly { .. }) => {
                return Err(e)
            }
            Err(e) => {
                log::warn!(
                    "vm {id}: building template {} failed ({}); booting",
                    key.as_str(),
                    crate::describe_error(&e)
                );
                return Ok(None);
            }
        },
    };
    Ok(Some((store, key, t)))
}

/// Failed before QEMU ran: the host's part of a VM.
pub(crate) fn host_side(e: &VmError) -> bool {
    matches!(
        e,
        VmError::Spec(_)
            | VmError::Cgroup { .. }
            | VmError::Record { .. }
            | VmError::Channel { .. }
            | VmError::Jail { .. }
            | VmError::Spawn { .. }
            | VmError::Pidfd { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_turns_templates_off_or_moves_them() {
        let p = Path::new("/etc/mu2/config.toml");
        assert_eq!(
            TemplateMode::parse(p, "").unwrap(),
            TemplateMode::Use {
                dir: DEFAULT_TEMPLATE_DIR.into(),
                build: true,
                max_bytes: DEFAULT_MAX_MIB << 20,
            }
        );
        assert_eq!(
            TemplateMode::parse(p, "[templates]\nenabled = false\n").unwrap(),
            TemplateMode::Off
        );
        assert_eq!(
            TemplateMode::parse(
                p,
                "[templates]\ndir = \"/srv/t\"\nbuild = false\nmax_mib = 100\n"
            )
            .unwrap(),
            TemplateMode::Use {
                dir: "/srv/t".into(),
                build: false,
                max_bytes: 100 << 20,
            }
        );
        for bad in [
            "[templates]\ndir = \"rel\"\n",
            "[templates]\nenabld = true\n",
            "[templates]\nenabled = 1\n",
            "[templates]\nmax_mib = 0\n",
        ] {
            assert!(TemplateMode::parse(p, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_follows_what_the_state_depends_on() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("vmlinux");
        let i = d.path().join("initrd.img");
        fs::write(&k, b"kernel").unwrap();
        fs::write(&i, b"initrd").unwrap();
        let mut s = crate::spec::tests::spec();
        s.qemu = "/bin/true".into();
        s.kernel = k.clone();
        s.initrd = i;
        let base = Key::of(&s).unwrap();
        assert_eq!(base, Key::of(&s).unwrap());
        assert_eq!(base.as_str().len(), 64);
        let mut other = s.clone();
        other.shares[0].host_path = "/srv".into();
        other.shares[0].readonly = false;
        other.id = "another".into();
        assert_eq!(
            base,
            Key::of(&other).unwrap(),
            "host paths and ids do not matter"
        );
        let mut m = s.clone();
        m.memory_mib = 512;
        assert_ne!(base, Key::of(&m).unwrap());
        let mut m = s.clone();
        m.shares.push(Share {
            tag: "vol0".into(),
            host_path: "/".into(),
            readonly: true,
        });
        assert_ne!(base, Key::of(&m).unwrap());
        std::thread::sleep(Duration::from_millis(10));
        fs::write(&k, b"kernel2").unwrap();
        assert_ne!(base, Key::of(&s).unwrap(), "a new kernel is a new key");
    }

    #[test]
    fn a_damaged_template_is_found_corrupt_and_discarded() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let key = Key("ab".repeat(32));
        assert!(store.find(&key).unwrap().is_none());
        let dir = d.path().join(key.as_str());
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("state"), b"QEVM....").unwrap();
        let mut f = File::open(dir.join("state")).unwrap();
        let meta = Meta {
            format: FORMAT,
            key: key.as_str().into(),
            state_bytes: 8,
            state_xxh3: xxh3_of(&mut f).unwrap(),
            protocol_version: 3,
            agent_version: "a".into(),
            kernel_release: "k".into(),
            uptime_ns: 1,
            boot_ms: 1,
            save_ms: 1,
            created_unix: 1,
            memory_mib: 256,
            vcpus: 1,
            shares: vec!["rootfs".into()],
        };
        fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        assert!(store.find(&key).unwrap().is_some());
        fs::write(dir.join("state"), b"QEVM...!").unwrap();
        let e = store.find(&key).err().expect("a changed byte is caught");
        assert!(e.to_string().contains("checksum"), "{e}");
        fs::write(dir.join("state"), b"QEVM").unwrap();
        let e = store.find(&key).err().expect("a truncated state is caught");
        assert!(e.to_string().contains("4 bytes"), "{e}");
        fs::write(dir.join("meta.json"), b"{").unwrap();
        assert!(store.find(&key).is_err());
        store.discard(&key);
        assert!(!dir.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "nothing left");
    }

    #[test]
    fn what_dead_builders_left_is_swept_and_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        let dead = d
            .path()
            .join(format!(".build-{}-99999999", "cd".repeat(32)));
        let live = d
            .path()
            .join(format!(".build-{}-{}", "cd".repeat(32), std::process::id()));
        fs::create_dir_all(dead.join("empty")).unwrap();
        fs::create_dir(&live).unwrap();
        Store::open(d.path()).unwrap();
        assert!(!dead.exists());
        assert!(live.exists());
    }

    fn fake(store: &Store, c: &str, bytes: usize, created_unix: u64) -> Key {
        let key = Key(c.repeat(64));
        let dir = store.dir().join(key.as_str());
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("state"), vec![7u8; bytes]).unwrap();
        let mut f = File::open(dir.join("state")).unwrap();
        let meta = Meta {
            format: FORMAT,
            key: key.as_str().into(),
            state_bytes: bytes as u64,
            state_xxh3: xxh3_of(&mut f).unwrap(),
            protocol_version: 3,
            agent_version: "a".into(),
            kernel_release: "k".into(),
            uptime_ns: 1,
            boot_ms: 1,
            save_ms: 1,
            created_unix,
            memory_mib: 256,
            vcpus: 1,
            shares: vec!["rootfs".into()],
        };
        fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        key
    }

    #[test]
    fn the_oldest_templates_make_room_within_the_budget() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap().with_budget(3000);
        let old = fake(&store, "a", 1000, 10);
        let mid = fake(&store, "b", 1000, 20);
        let new = fake(&store, "c", 1000, 30);
        store.make_room(0);
        assert_eq!(store.list().len(), 3, "within the budget: nothing goes");
        store.make_room(1500);
        let left: Vec<String> = store.list().into_iter().map(|(k, _)| k).collect();
        assert_eq!(left, vec![new.as_str().to_string()], "{left:?}");
        assert!(store.find(&old).unwrap().is_none());
        assert!(store.find(&mid).unwrap().is_none());
    }
}
