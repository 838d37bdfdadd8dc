//! The host cgroup of one VMM: its limits, its statistics, pause and resume.
//!
//! Every QEMU mu2 starts runs in a cgroup of its own, `mu2/<vm id>`, under
//! the root of each hierarchy: memory (guest RAM plus the VMM's own
//! overhead), CPU (a CFS quota of vCPUs + 1 for QEMU's I/O thread), pids,
//! and the freezer that pauses the whole VM. QEMU joins it between fork and
//! exec (writing 0 to `cgroup.procs` moves the writer), so every thread it
//! ever creates is inside. The cgroup is removed once QEMU is reaped; what
//! an owner that died left is removed through the VM's record
//! ([`crate::record`]), never by matching names.
//!
//! Both layouts are handled: the unified v2 hierarchy, and the v1
//! per-controller hierarchies that some hosts (these among them) still
//! mount. The layout is read from /proc/self/mountinfo.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Name of the parent cgroup of all VMMs.
pub const PARENT: &str = "mu2";
/// VMM memory beyond guest RAM: TCG translation cache, QEMU itself, the
/// page cache of the kernel and initrd it reads.
pub const VMM_OVERHEAD_MIB: u64 = 256;
/// Most threads and processes a VMM may have (QEMU's 9p worker pool is the
/// largest user).
pub const VMM_PIDS_MAX: u64 = 1024;
/// CFS period.
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy found for the {0} controller")]
    NoController(&'static str),
    #[error("cannot read the cgroup mounts")]
    Mounts(#[source] io::Error),
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {0} already exists")]
    Exists(PathBuf),
    #[error("{dirs:?} are not the cgroups of vm {id}")]
    Adopt { id: String, dirs: Vec<PathBuf> },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the VMM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpu_quota_us: u64,
    pub pids: u64,
}

impl Limits {
    /// Limits for a VM with this much guest RAM and these many vCPUs on
    /// this host.
    pub fn for_vm(memory_mib: u32, vcpus: u32) -> Limits {
        Limits::for_vm_on(memory_mib, vcpus, crate::spec::host_cpus())
    }

    /// Limits for a VM on a host with `host_cpus` CPUs: the CPU cap (vCPUs
    /// plus one for QEMU's I/O thread) never exceeds the host's CPUs, so a
    /// cap means something on a small host.
    pub fn for_vm_on(memory_mib: u32, vcpus: u32, host_cpus: u32) -> Limits {
        let cpus = (u64::from(vcpus) + 1).min(u64::from(host_cpus.max(1)));
        Limits {
            memory_bytes: (u64::from(memory_mib) + VMM_OVERHEAD_MIB) << 20,
            cpu_quota_us: cpus * CPU_PERIOD_US,
            pids: VMM_PIDS_MAX,
        }
    }
}

/// Usage figures of a VMM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    V2(PathBuf),
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
        freezer: PathBuf,
    },
}

/// Reads the cgroup layout from a mountinfo text.
fn layout(mountinfo: &str) -> Result<Layout, CgroupError> {
    let mut v2 = None;
    let mut v1: Vec<(String, PathBuf)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 || pre[3] != "/" {
            continue;
        }
        let mount_point = PathBuf::from(pre[4]);
        match post[0] {
            "cgroup2" => v2 = Some(mount_point),
            "cgroup" => {
                for opt in post[2].split(',') {
                    v1.push((opt.to_string(), mount_point.clone()));
                }
            }
            _ => {}
        }
    }
    let find = |name: &'static str| {
        v1.iter()
            .find(|(o, _)| o == name)
            .map(|(_, p)| p.clone())
            .ok_or(CgroupError::NoController(name))
    };
    // A host whose memory controller is on a v1 hierarchy uses v1 for the
    // VMM; a pure v2 host (or hybrid without v1 memory) uses v2.
    if v1.iter().any(|(o, _)| o == "memory") {
        return Ok(Layout::V1 {
            memory: find("memory")?,
            cpu: find("cpu")?,
            cpuacct: find("cpuacct")?,
            pids: find("pids")?,
            freezer: find("freezer")?,
        });
    }
    // A cgroup2 mount without controllers (a hybrid host's "unified"
    // hierarchy is one) cannot hold a memory limit.
    v2.filter(|p| p.join("cgroup.controllers").exists())
        .map(Layout::V2)
        .ok_or(CgroupError::NoController("memory"))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let t = text.trim();
    Ok(if t == "max" {
        u64::MAX
    } else {
        t.parse().unwrap_or(0)
    })
}

fn keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0))
}

/// The cgroup(s) of one VMM. Created by [`VmCgroup::create`], removed by
/// [`VmCgroup::remove`] (or on drop).
#[derive(Debug)]
pub struct VmCgroup {
    layout: Layout,
    /// Every directory created, children before parents are irrelevant:
    /// only the per-VM leaves are removed.
    dirs: Vec<PathBuf>,
    /// Open `cgroup.procs` files QEMU writes 0 to before exec.
    procs: Mutex<Vec<OwnedFd>>,
    removed: AtomicBool,
    id: String,
}

impl VmCgroup {
    /// Creates `mu2/<id>` in every hierarchy with `limits`. On error,
    /// whatever was created is removed again.
    pub fn create(id: &str, limits: Limits) -> Result<VmCgroup, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mounts)?;
        let mut cg = VmCgroup {
            layout: layout(&mountinfo)?,
            dirs: Vec::new(),
            procs: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
            id: id.to_string(),
        };
        // On error, `cg` drops and removes the directories made so far.
        cg.make(id, limits)?;
        Ok(cg)
    }

    /// The cgroup VM `id` already has (a VM leased from a pool, whose
    /// cgroup the pool made): `dirs` must be this host's leaves for `id`.
    pub fn adopt(id: &str, dirs: &[PathBuf]) -> Result<VmCgroup, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mounts)?;
        let layout = layout(&mountinfo)?;
        let expected = paths_for(id);
        if dirs.is_empty() || dirs.iter().any(|d| !expected.contains(d) || !d.is_dir()) {
            return Err(CgroupError::Adopt {
                id: id.to_string(),
                dirs: dirs.to_vec(),
            });
        }
        Ok(VmCgroup {
            layout,
            dirs: dirs.to_vec(),
            procs: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
            id: id.to_string(),
        })
    }

    /// Lets go of the cgroup without removing it: its VM went to another
    /// owner, who removes it.
    pub fn disown(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn leaf(&mut self, root: &Path, id: &str) -> Result<PathBuf, CgroupError> {
        let parent = root.join(PARENT);
        if let Err(source) = fs::create_dir(&parent) {
            if source.kind() != io::ErrorKind::AlreadyExists {
                return Err(CgroupError::Create {
                    path: parent,
                    source,
                });
            }
        }
        let dir = parent.join(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::Exists(dir))
            }
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
        if !self.dirs.contains(&dir) {
            self.dirs.push(dir.clone());
        }
        Ok(dir)
    }

    fn open_procs(&mut self, dir: &Path) -> Result<(), CgroupError> {
        let path = dir.join("cgroup.procs");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| CgroupError::Write {
                path,
                value: String::new(),
                source,
            })?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f.into());
        Ok(())
    }

    fn make(&mut self, id: &str, l: Limits) -> Result<(), CgroupError> {
        match self.layout.clone() {
            Layout::V2(root) => {
                // Controllers must be enabled on the way down.
                write(&root.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
                let dir = self.leaf(&root, id)?;
                write(
                    &root.join(PARENT).join("cgroup.subtree_control"),
                    "+memory +cpu +pids",
                )?;
                write(&dir.join("memory.max"), &l.memory_bytes.to_string())?;
                let _ = write(&dir.join("memory.swap.max"), "0");
                write(
                    &dir.join("cpu.max"),
                    &format!("{} {CPU_PERIOD_US}", l.cpu_quota_us),
                )?;
                write(&dir.join("pids.max"), &l.pids.to_string())?;
                self.open_procs(&dir)?;
            }
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
            } => {
                let mut roots = vec![memory.clone(), cpu.clone()];
                for r in [&cpuacct, &pids, &freezer] {
                    if !roots.contains(r) {
                        roots.push(r.clone());
                    }
                }
                for root in &roots {
                    let dir = self.leaf(root, id)?;
                    self.open_procs(&dir)?;
                }
                let m = memory.join(PARENT).join(id);
                write(
                    &m.join("memory.limit_in_bytes"),
                    &l.memory_bytes.to_string(),
                )?;
                let c = cpu.join(PARENT).join(id);
                write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&c.join("cpu.cfs_quota_us"), &l.cpu_quota_us.to_string())?;
                let p = pids.join(PARENT).join(id);
                write(&p.join("pids.max"), &l.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// The raw fds of the `cgroup.procs` files, for the child to join.
    pub(crate) fn procs_fds(&self) -> Vec<RawFd> {
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|f| f.as_raw_fd())
            .collect()
    }

    /// The cgroup directories (one on v2, one per hierarchy on v1).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Caps the VMM's CPU time at `quota` µs per `period` µs (`None`: no
    /// cap), as containerd's Update asks.
    pub fn set_cpu_quota(&self, quota: Option<(u64, u64)>) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2(root) => {
                let value = match quota {
                    Some((q, p)) => format!("{q} {p}"),
                    None => format!("max {CPU_PERIOD_US}"),
                };
                write(&root.join(PARENT).join(&self.id).join("cpu.max"), &value)
            }
            Layout::V1 { cpu, .. } => {
                let dir = cpu.join(PARENT).join(&self.id);
                match quota {
                    Some((q, p)) => {
                        // The quota first when it shrinks below the old
                        // period's, the period first otherwise: either
                        // order may be refused, so try both.
                        let try_write = || -> Result<(), CgroupError> {
                            write(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
                            write(&dir.join("cpu.cfs_quota_us"), &q.to_string())
                        };
                        try_write().or_else(|_| {
                            write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                            write(&dir.join("cpu.cfs_period_us"), &p.to_string())
                        })
                    }
                    None => write(&dir.join("cpu.cfs_quota_us"), "-1"),
                }
            }
        }
    }

    /// The VMM's CPU weight, given as cgroup v1 shares (2..=262144; on v2
    /// converted to `cpu.weight` as runc does).
    pub fn set_cpu_shares(&self, shares: u64) -> Result<(), CgroupError> {
        let shares = shares.clamp(2, 262_144);
        match &self.layout {
            Layout::V2(root) => {
                let weight = 1 + ((shares - 2) * 9999) / 262_142;
                write(
                    &root.join(PARENT).join(&self.id).join("cpu.weight"),
                    &weight.to_string(),
                )
            }
            Layout::V1 { cpu, .. } => write(
                &cpu.join(PARENT).join(&self.id).join("cpu.shares"),
                &shares.to_string(),
            ),
        }
    }

    /// The VMM's CPU cap as (quota µs, period µs); `None` when uncapped.
    pub fn cpu_quota(&self) -> Result<Option<(u64, u64)>, CgroupError> {
        let read = |p: PathBuf| {
            fs::read_to_string(&p)
                .map(|s| s.trim().to_string())
                .map_err(|source| CgroupError::Read { path: p, source })
        };
        match &self.layout {
            Layout::V2(root) => {
                let v = read(root.join(PARENT).join(&self.id).join("cpu.max"))?;
                let mut it = v.split_whitespace();
                let (q, p) = (it.next().unwrap_or("max"), it.next().unwrap_or("100000"));
                Ok(q.parse().ok().zip(p.parse().ok()))
            }
            Layout::V1 { cpu, .. } => {
                let dir = cpu.join(PARENT).join(&self.id);
                let q: i64 = read(dir.join("cpu.cfs_quota_us"))?.parse().unwrap_or(-1);
                let p: u64 = read(dir.join("cpu.cfs_period_us"))?.parse().unwrap_or(0);
                Ok((q > 0).then_some((q as u64, p)))
            }
        }
    }

    /// Stops every thread of the VMM: the VM is paused.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Lets the VMM run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2(_) => write(
                &self.dirs[0].join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            ),
            Layout::V1 { freezer, .. } => {
                let id = self.dirs[0].file_name().unwrap_or_default();
                write(
                    &freezer.join(PARENT).join(id).join("freezer.state"),
                    if frozen { "FROZEN" } else { "THAWED" },
                )
            }
        }
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match &self.layout {
            Layout::V2(_) => {
                let d = &self.dirs[0];
                Ok(Stats {
                    cpu_usage_ns: keyed(&d.join("cpu.stat"), "usage_usec")? * 1000,
                    memory_usage_bytes: read_u64(&d.join("memory.current"))?,
                    memory_limit_bytes: read_u64(&d.join("memory.max"))?,
                    pids_current: read_u64(&d.join("pids.current"))?,
                })
            }
            Layout::V1 {
                memory,
                cpuacct,
                pids,
                ..
            } => {
                let id = self.dirs[0].file_name().unwrap_or_default();
                let m = memory.join(PARENT).join(id);
                Ok(Stats {
                    cpu_usage_ns: read_u64(&cpuacct.join(PARENT).join(id).join("cpuacct.usage"))?,
                    memory_usage_bytes: read_u64(&m.join("memory.usage_in_bytes"))?,
                    memory_limit_bytes: read_u64(&m.join("memory.limit_in_bytes"))?,
                    pids_current: read_u64(&pids.join(PARENT).join(id).join("pids.current"))?,
                })
            }
        }
    }

    /// Removes the cgroup directories. The VMM must be gone (reaped); a
    /// cgroup whose last task just exited can take a moment to empty, so
    /// this retries briefly.
    pub fn remove(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // A frozen cgroup must be thawed for its dying tasks to leave.
        let _ = self.thaw();
        for dir in &self.dirs {
            if let Err(e) = rmdir_retrying(dir, RMDIR_PATIENCE) {
                log::warn!("cgroup {} could not be removed: {e}", dir.display());
            }
        }
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// How long a reaped VMM's cgroup may take to empty.
const RMDIR_PATIENCE: Duration = Duration::from_secs(2);

/// Removes a cgroup directory; its last tasks may take a moment to leave.
fn rmdir_retrying(dir: &Path, within: Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e),
        }
    }
}

/// The hierarchy roots of this host's layout.
fn roots() -> Vec<PathBuf> {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    match layout(&mi) {
        Ok(Layout::V2(root)) => vec![root],
        Ok(Layout::V1 {
            memory,
            cpu,
            cpuacct,
            pids,
            freezer,
        }) => {
            let mut v = vec![memory, cpu, cpuacct, pids, freezer];
            v.dedup();
            v
        }
        Err(_) => Vec::new(),
    }
}

/// Thaws the cgroup directory `dir` of a VMM, whichever layout it is in
/// (v2 `cgroup.freeze`, v1 `freezer.state`; the other file is absent): a
/// frozen task does not die of SIGKILL until it is thawed.
pub(crate) fn thaw_dir(dir: &Path) {
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
}

/// Removes the cgroup directory of a VMM that is gone, retrying for up to
/// `within` while its last tasks leave.
pub(crate) fn remove_dir(dir: &Path, within: Duration) -> io::Result<()> {
    rmdir_retrying(dir, within)
}

/// Every cgroup directory a VM of this id would have, whether or not it
/// exists (for leak checks).
pub fn paths_for(id: &str) -> Vec<PathBuf> {
    roots()
        .into_iter()
        .map(|r| r.join(PARENT).join(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HOST: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const COMOUNTED: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn v1_hierarchies_are_found_per_controller() {
        match layout(V1_HOST).unwrap() {
            Layout::V1 { memory, cpu, .. } => {
                assert_eq!(memory, PathBuf::from("/sys/fs/cgroup/memory"));
                assert_eq!(cpu, PathBuf::from("/sys/fs/cgroup/cpu"));
            }
            other => panic!("{other:?}"),
        }
        match layout(COMOUNTED).unwrap() {
            Layout::V1 { cpu, cpuacct, .. } => assert_eq!(cpu, cpuacct),
            other => panic!("{other:?}"),
        }
    }

    /// A mount table whose only cgroup hierarchy is a cgroup2 mount at
    /// `dir`.
    fn v2_host_at(dir: &Path) -> String {
        format!(
            "25 30 0:22 / {} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
            dir.display()
        )
    }

    #[test]
    fn a_unified_host_uses_v2() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(
            layout(&v2_host_at(d.path())).unwrap(),
            Layout::V2(d.path().to_path_buf())
        );
    }

    /// The same table, but the mount point is not a cgroup2 root (no
    /// `cgroup.controllers`): there is no usable hierarchy.
    #[test]
    fn a_cgroup2_mount_without_controllers_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            layout(&v2_host_at(d.path())),
            Err(CgroupError::NoController("memory"))
        ));
        assert!(matches!(
            layout(&v2_host_at(Path::new("/nonexistent-mu2-cgroup"))),
            Err(CgroupError::NoController("memory"))
        ));
    }

    #[test]
    fn no_cgroups_is_an_error() {
        assert!(layout("").is_err());
        let partial = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert!(matches!(
            layout(partial),
            Err(CgroupError::NoController("cpu"))
        ));
    }

    #[test]
    fn limits_leave_room_for_the_vmm() {
        let l = Limits::for_vm_on(256, 2, 8);
        assert_eq!(l.memory_bytes, (256 + VMM_OVERHEAD_MIB) << 20);
        assert_eq!(l.cpu_quota_us, 3 * CPU_PERIOD_US);
    }

    #[test]
    fn the_cpu_cap_never_exceeds_the_host() {
        assert_eq!(
            Limits::for_vm_on(256, 64, 2).cpu_quota_us,
            2 * CPU_PERIOD_US
        );
        assert_eq!(Limits::for_vm_on(256, 1, 2).cpu_quota_us, 2 * CPU_PERIOD_US);
        assert_eq!(Limits::for_vm_on(256, 1, 1).cpu_quota_us, CPU_PERIOD_US);
        assert_eq!(Limits::for_vm_on(256, 1, 0).cpu_quota_us, CPU_PERIOD_US);
        let here = crate::spec::host_cpus();
        assert!(Limits::for_vm(256, 64).cpu_quota_us <= u64::from(here) * CPU_PERIOD_US);
    }
}
